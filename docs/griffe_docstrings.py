"""Griffe extension for the API pages: simkernel's docstrings are free-form prose with reST
roles (:func:`run`, :class:`~simkernel.prompts.PromptBatch`) and array shapes in words, not
Google or NumPy sections. mkdocstrings renders them as Markdown (``docstring_style: null``);
this extension only makes that Markdown say what the prose means:

- a role becomes a link to the object when the object is on an API page, and plain code
  otherwise (an *optional* cross-reference: it never fails the build);
- ``a[i][j]`` outside code is escaped, so Markdown does not read it as a reference link;
- a reST ``::`` that opens a literal block becomes ``:``;
- an aligned field table (``loglik     (B, K, L) float64: ...``) becomes a list, and a list
  right after a line of prose gets the blank line Markdown needs before it;
- an attribute documented Sphinx-style, by ``#:`` comment lines just above it, gets that text as
  its docstring (griffe reads only a string below an attribute).

A ``::: simkernel.nope`` block in a page still fails ``mkdocs build --strict``: that check is
mkdocstrings' own and this extension does not touch it.
"""

from __future__ import annotations

import html
import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|obj|exc|const):`(~?)([\w.]+)(?:\(\))?`")
CODE = re.compile(r"(`+)(?:.+?)\1", re.DOTALL)


def _resolve(obj: griffe.Object, target: str) -> str:
    """The full path of ``target`` as seen from ``obj``'s module (or the package), or a guess."""
    module = obj if obj.is_module else obj.module
    package = module.package
    candidates = []
    if target.startswith(package.name + "."):
        candidates.append((package, target[len(package.name) + 1:]))
    candidates += [(module, target), (package, target)]
    if obj.is_class:
        candidates.insert(0, (obj, target))
    elif obj.parent is not None and obj.parent.is_class:
        candidates.insert(0, (obj.parent, target))
    for base, name in candidates:
        try:
            found = base[name]
            if found.is_alias:
                found = found.final_target
            return found.path
        except Exception:        # noqa: BLE001 - not found, or an alias to outside the package
            continue
    return f"{module.path}.{target}"


def _roles(obj: griffe.Object, text: str) -> str:
    def link(m: re.Match) -> str:
        tilde, target = m.groups()
        shown = target.rsplit(".", 1)[-1] if tilde else target
        ident = _resolve(obj, target)
        return f'<autoref identifier="{html.escape(ident)}" optional><code>{html.escape(shown)}</code></autoref>'
    return ROLE.sub(link, text)


def _outside_code(text: str, fix) -> str:
    out, last = [], 0
    for m in CODE.finditer(text):
        out.append(fix(text[last:m.start()]))
        out.append(m.group(0))
        last = m.end()
    out.append(fix(text[last:]))
    return "".join(out)


FIELD = re.compile(r"^([A-Za-z_][\w\[\]]*)(?: {2,}| (?=\())(\S.*)$")
ITEM = re.compile(r"^(?:[-*+]|\d+\.) ")


def _fields(par: list[str]) -> list[str] | None:
    """An aligned field table (``name   (shape) what it is``, continuation lines indented) as a
    Markdown list; None when the paragraph is not one."""
    heads = [ln for ln in par if not ln.startswith(" ")]
    if (not FIELD.match(par[0]) or not all(FIELD.match(ln) for ln in heads) or len(heads) < 2
            or not any(re.match(r"^\S+ {2,}", ln) for ln in heads)):
        return None
    items = []
    for ln in par:
        m = FIELD.match(ln)
        if m:
            items.append(f"- `{m.group(1)}` {m.group(2)}")
        else:
            items[-1] += " " + ln.strip()
    return items


def _lists(par: list[str]) -> list[str]:
    """Blank lines around a list inside a paragraph of prose, as Markdown needs."""
    out, in_list = [], False
    for ln in par:
        item = bool(ITEM.match(ln))
        if out and ((item and not in_list) or (in_list and not item and not ln.startswith(" "))):
            out.append("")
        in_list = item or (in_list and ln.startswith(" "))
        out.append(ln)
    return out


def rewrite(obj: griffe.Object, text: str) -> str:
    """One docstring's text, as Markdown that renders the way the prose reads."""
    paragraphs, par = [], []
    for line in text.split("\n") + [""]:
        if line.strip():
            par.append(line)
        elif par:
            paragraphs.append(par)
            par = []
    out = []
    for par in paragraphs:
        if all(ln.startswith("    ") for ln in par):        # an indented code block: as it is
            out.append("\n".join(par))
            continue
        par = _fields(par) or _lists(par)
        lines = []
        for line in par:
            if line.endswith("::") and not line.endswith(":::"):
                line = line[:-1]
            line = _roles(obj, line)
            lines.append(_outside_code(line, lambda s: s.replace("][", "]\\[")))
        out.append("\n".join(lines))
    return "\n\n".join(out)


def comment_docstring(obj: griffe.Object) -> str | None:
    """The ``#:`` comment lines right above an attribute, joined; None when there are none."""
    try:
        lines = obj.module.lines
    except Exception:        # noqa: BLE001 - no source (a compiled or an inspected module)
        return None
    i, found = (obj.lineno or 0) - 2, []
    while 0 <= i < len(lines) and lines[i].strip().startswith("#:"):
        found.insert(0, lines[i].strip()[2:].strip())
        i -= 1
    return " ".join(found) or None


class SimkernelDocstrings(griffe.Extension):
    """Rewrite every docstring of the package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        seen = set()

        def walk(obj):
            if obj.is_alias or id(obj) in seen:
                return
            seen.add(id(obj))
            if obj.is_attribute and obj.docstring is None and (text := comment_docstring(obj)):
                obj.docstring = griffe.Docstring(text, parent=obj)
            if obj.docstring is not None:
                obj.docstring.value = rewrite(obj, obj.docstring.value)
            for member in obj.members.values():
                walk(member)

        walk(pkg)
