#!/usr/bin/env python
"""The module table of docs/architecture.md, read from the source so it cannot go stale.

For every module of ``simkernel/`` it lists the first sentence of the module docstring, the
package modules it imports at the top (what importing it loads) and those it imports inside
functions (loaded only when that function runs: torch, Numba and matplotlib stay out of
``simkernel --help`` this way). Imports under ``if TYPE_CHECKING:`` load nothing and are left out. ``tests/test_docs.py`` checks that docs/architecture.md holds
exactly what this prints.

    python docs/gen_import_graph.py            # print the table
    python docs/gen_import_graph.py --write    # rewrite it in docs/architecture.md
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "simkernel"
PAGE = ROOT / "docs" / "architecture.md"
BEGIN = "<!-- docs/gen_import_graph.py: begin -->"
END = "<!-- docs/gen_import_graph.py: end -->"
#: The data-flow order of the design (docs/architecture.md); modules not listed here follow it.
ORDER = ("constants", "store", "world", "presets", "sampling", "bayes", "kernel", "metrics", "convergence",
         "model", "train", "icl_eval", "prompts", "capture", "analysis", "alignment", "textdata", "llm",
         "plots", "options", "cli")


def modules() -> list[str]:
    names = [p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"]
    # a subpackage (claims/) is one module: its files' imports together, its __init__'s docstring
    names += [p.parent.name for p in PACKAGE.glob("*/__init__.py")]
    return [m for m in ORDER if m in names] + sorted(set(names) - set(ORDER))


def _files(module: str) -> list[tuple[Path, int]]:
    """(source file, its depth below simkernel/) of a module: one file, or a subpackage's files."""
    single = PACKAGE / f"{module}.py"
    return [(single, 0)] if single.is_file() else [(f, 1) for f in sorted((PACKAGE / module).glob("*.py"))]


def _targets(node: ast.AST, names: set[str], depth: int = 0) -> set[str]:
    """The package modules one import statement loads (``depth`` 1: the statement sits in a
    subpackage, whose own relative imports load nothing else)."""
    out = set()
    if isinstance(node, ast.ImportFrom):
        mod = node.module or ""
        if (node.level and node.level - depth == 1) or (node.level == 0 and (mod == "simkernel"
                                                                            or mod.startswith("simkernel."))):
            base = mod.split(".", 1)[1] if mod.startswith("simkernel.") else ("" if mod == "simkernel" else mod)
            if base:
                out.add(base.split(".")[0])
            else:                                   # from . import x, y
                out |= {a.name for a in node.names if a.name in names}
    elif isinstance(node, ast.Import):
        for a in node.names:
            if a.name.startswith("simkernel."):
                out.add(a.name.split(".")[1])
    return out & names


def imports(module: str, names: set[str]) -> tuple[set[str], set[str]]:
    """(top-level imports, imports inside functions) of one module, among the package's modules."""
    top, lazy = set(), set()

    def visit(node, in_function, depth):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue                            # annotations only: loads nothing at run time
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (lazy if in_function else top).update(_targets(child, names, depth))
            visit(child, inner, depth)

    for path, depth in _files(module):
        visit(ast.parse(path.read_text()), False, depth)
    top.discard(module)
    lazy -= top | {module}
    return top, lazy


def job(module: str) -> str:
    """The first sentence of the module docstring, in Markdown."""
    path = PACKAGE / f"{module}.py"
    path = path if path.is_file() else PACKAGE / module / "__init__.py"
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    text = " ".join(doc.split("\n\n", 1)[0].split())
    m = re.match(r"(.+?)\.(\s|$)", text)
    sentence = m.group(1) if m else text
    return sentence.replace("``", "`").replace("|", "\\|")


def graph() -> dict[str, tuple[set[str], set[str]]]:
    names = set(modules())
    return {m: imports(m, names) for m in modules()}


def table() -> str:
    def cell(mods):
        return ", ".join(f"`{m}`" for m in modules() if m in mods) or "–"

    lines = ["| module | its job (the docstring's first sentence) | imports | imports inside functions |",
             "| --- | --- | --- | --- |"]
    for m, (top, lazy) in graph().items():
        page = next((f"api/{m}{x}" for x in (".md", "/index.md") if (ROOT / "docs" / f"api/{m}{x}").is_file()), None)
        link = f"[`{m}`]({page})" if page else f"`{m}`"
        lines.append(f"| {link} | {job(m)} | {cell(top)} | {cell(lazy)} |")
    return "\n".join(lines)


def block() -> str:
    return f"{BEGIN}\n{table()}\n{END}"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--write"]:
        text = PAGE.read_text()
        start, end = text.index(BEGIN), text.index(END) + len(END)
        PAGE.write_text(text[:start] + block() + text[end:])
        print(f"wrote the module table into {PAGE.relative_to(ROOT)}")
    elif not argv:
        print(block())
    else:
        print("usage: python docs/gen_import_graph.py [--write]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
