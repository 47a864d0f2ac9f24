"""The theory's claims as verdicts on one page: ``simkernel report``.

This module only orchestrates and renders; the claims live in :mod:`simkernel.claims` (one module
per claim: statement, kind, source, scope, evidence from the sweep tables, rule, figure).

- :func:`battery` gives the sweep configs of the verification battery (``quick``: CI-sized);
- :func:`run` runs them through ``sweep.run`` and asks every registered claim for its verdict
  (:func:`claims_from_sweeps`), returning a :class:`Report`;
- :func:`render_markdown` builds the page once, in Markdown (the few elements the browser check
  reads, the verdict table and one ``<section>`` per claim, as raw HTML in it);
  :func:`render_html` renders that Markdown with python-markdown inside a small offline shell
  (inline CSS and script, figures as PNG files beside it);
- :func:`write_report` writes ``index.html``, ``report.md`` (the same Markdown), ``report.json``
  (every claim with its kind, source, scope, families, checks, outside, ...; meta; commands) and
  one figure per claim; :func:`check_in_browser` renders the page in headless Chromium, checks
  every image loaded and the verdict table, and keeps a screenshot.

matplotlib and pandas are imported inside the functions that need them.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from . import claims as claims_mod
from .claims.base import CHECKS, CI_NOTE, FAMILIES, KINDS, OVERALL, OVERALL_RULE, Result, fmt

#: What :meth:`Report.write` publishes besides one figure per claim (and the browser's screenshot).
FILES = ("index.html", "report.md", "report.json")
SCREENSHOT = "screenshot.png"
BROWSER_JSON = "browser_check.json"
#: The battery's sweeps, in the order :func:`run` runs them.
SWEEPS = ("regime", "converge", "phenomena", "strategies", "measure")
#: The trained models of C6 (one world's training seeds); C5's are the strategies map's.
TRAIN_SEEDS = (0, 1, 2)
#: C7's retrieval is judged at a small n, where exact Bayes is still far from the oracle (headroom);
#: the other phenomena at their defaults.
PHENOMENA_N_DEMOS = {"retrieval": 2}
TITLE = "simkernel: the kernel-regression theory of in-context learning, claim by claim"
#: Where :func:`run` puts the report (and its sweeps) unless told: git-ignored, never a tracked folder.
DEFAULT_OUT = "results/report"
#: What a folder a report wrote holds (any one of them): a rerun into it resumes.
REPORT_MARKS = (*FILES, "sweeps", "battery")


# ---------------------------------------------------------------------- the battery
def _train_spec(quick: bool) -> dict:
    """The [train] table of C6: the ginc-small world, where the kernel vote beats the majority
    vote (docs/results/measure.md); quick: the tiny model for a few steps."""
    if quick:
        return {"preset": "ginc-small", "model": "tiny", "max_steps": 30, "eval_every": 15, "batch_size": 16,
                "n_docs": 64, "doc_length": 512}
    # target gap 0.02 nats/token (well inside C6's "near the Bayes loss", 0.05): about 400-700 steps
    # instead of 1,200-1,400 for 0.01
    return {"preset": "ginc-small", "model": "tiny", "max_steps": 3000, "target_gap": 0.02}


def battery(quick: bool = False) -> dict[str, dict]:
    """The sweep configs of the verification battery, {name: config} (``sweep.run``'s dicts):

    regime     C1, C4: every world seed (20; quick 3) of each preset family ('ginc-small' and
               'paper-c', x of two tokens so that the theory kernel varies within a prompt),
               n = 1..256 doubled while a world's regime or crossover is not settled (up to 65536;
               quick: 64 and 1024);
    converge   C2, C3: the same worlds' exact floors (a few n only: the floors are exact);
    phenomena  C7: one job per phenomenon on 10 'ginc-small' worlds (quick: 3 and phenomena's
               quick sizes), retrieval at a small n where exact Bayes has headroom;
    strategies C5: the strategies map (``strategies.DEFAULT_MAP``, quick: ``QUICK_MAP``), one job per
               trained run (K x worlds x sizes x training seeds), every snapshot attributed;
    measure    C6: one job measuring one world's three runs on the same prompts (pooled)."""
    from .constants import PHENOMENA
    from .phenomena import defaults as phenomenon_defaults
    from .strategies import DEFAULT_MAP, QUICK_MAP, sweep_config

    n_worlds = 3 if quick else 20
    worlds = list(range(n_worlds))
    regime = {"command": "regime",
              "options": {"example_length": 3, "n_prompts": 200 if quick else 1000, "n_max": 64 if quick else 256,
                          "n_cap": 1024 if quick else 65536},
              "grid": {"preset": list(FAMILIES), "world_seed": worlds}}
    # the floors are exact (n -> ∞): a few n and prompts, and only what C2 and C3 read
    converge = {"command": "converge",
                "options": {"n_demos": "1,2,4,8", "example_length": 3, "n_prompts": 20 if quick else 50,
                            "seeds": [0], "kernels": ["theory", "oracle", "frequency"],
                            "estimators": ["averaged", "normalised"]},
                "grid": {"preset": list(FAMILIES), "world_seed": worlds}}
    # n_demos per phenomenon: its own default (quick: its quick default) but where a smaller n gives
    # exact Bayes room to move
    n_demos = [PHENOMENA_N_DEMOS.get(n, phenomenon_defaults(n, quick)["n_demos"]) for n in PHENOMENA]
    phen = {"command": "phenomena",
            "options": {"preset": "ginc-small", "world_seeds": [0, 1, 2] if quick else list(range(10)), "seed": 0,
                        "quick": bool(quick)},
            "zip": {"name": list(PHENOMENA), "n_demos": [list(n) if isinstance(n, tuple) else n for n in n_demos]}}
    train = _train_spec(quick)
    smap = QUICK_MAP if quick else DEFAULT_MAP
    strategies = sweep_config(smap, base=smap)
    measure = {"command": "measure",
               "options": {"n_prompts": 100 if quick else 1000, "n_demos": 8 if quick else 16, "example_length": 3,
                           "n_select": 70 if quick else 700, "n_report": 30 if quick else 300, "device": "cpu"},
               "train": dict(train, seeds=list(TRAIN_SEEDS)), "grid": {"seed": [0]}}
    return {"regime": regime, "converge": converge, "phenomena": phen, "strategies": strategies, "measure": measure}


def to_toml(config: dict) -> str:
    """A sweep config as TOML (what ``simkernel sweep`` reads): top-level scalars, then one table
    per nested dict.  Values: str, bool, int, float, lists of them."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, np.integer)):
            return str(int(v))
        if isinstance(v, float):
            return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else "nan"
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{_key(k)} = {value(x)}" for k, x in v.items()) + " }"
        raise ValueError(f"config value {v!r} has no TOML form; allowed: str, bool, int, float, lists, tables")

    def _key(k):
        k = str(k)
        return k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else json.dumps(k)

    lines = [f"{_key(k)} = {value(v)}" for k, v in config.items() if not isinstance(v, dict)]
    for k, v in config.items():
        if isinstance(v, dict):
            lines += ["", f"[{_key(k)}]"] + [f"{_key(a)} = {value(b)}" for a, b in v.items()]
    return "\n".join(lines) + "\n"


def default_commands(quick: bool, out, sweeps_dir) -> dict:
    """{claim or '*': [shell commands]} that reproduce the report and each claim's sweeps."""
    out, sweeps_dir = Path(out), Path(sweeps_dir)
    flag = " --quick" if quick else ""
    # the sweeps' folder is named only when it is not the default, so the line reruns this very report
    sweeps_flag = "" if sweeps_dir == out / "sweeps" else f" --sweeps {sweeps_dir}"
    cmds = {"*": [f"simkernel report{flag} --out {out}{sweeps_flag}"]}
    for c in claims_mod.REGISTRY:
        cmds[c.id] = [f"simkernel sweep {out / 'battery' / (key + '.toml')} --out {sweeps_dir / key}"
                      for key in c.sweeps]
    return cmds


# ---------------------------------------------------------------------- from sweeps to claims
def _read_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _table(res, name=None):
    try:
        return res.table(name)
    except (ValueError, OSError, KeyError):
        return None


def _measure_info(res) -> tuple[dict, dict]:
    """(measure.json of the finished job, {run name: final gap}) of a measure sweep."""
    done = [j for j in res.jobs if j.get("status") == "done"]
    if not done:
        return {}, {}
    meta = _read_json(Path(done[0]["folder"]) / "measure.json")
    runs = meta.get("runs") if isinstance(meta.get("runs"), dict) else {
        "run": {"run": (meta.get("config") or {}).get("run")}}
    gaps = {}
    for name, r in runs.items():
        d = _read_json(Path(str(r.get("run"))) / "done.json") if r.get("run") else {}
        if "gap" in d:
            gaps[name] = float(d["gap"])
    return meta, gaps


def claims_from_sweeps(results: dict, sizes: dict | None = None) -> list[Result]:
    """Every registered claim's result from the battery's ``sweep.SweepResult`` s ({name:
    result}; a missing sweep makes its claims inconclusive, saying so); ``sizes``: the strategies
    map's [sizes] (their names in C5)."""
    tables, info, missing = {}, {}, {}
    for key, res in results.items():
        for name in res.tables:
            tables[key if name is None else f"{key}.{name}"] = _table(res, name)
        if not any(j.get("status") == "done" for j in res.jobs):
            err = next((j.get("error") for j in res.jobs if j.get("error")), "no job finished")
            missing[key] = f"the {key} sweep has no finished job: {err}"
    for key in SWEEPS:
        missing.setdefault(key, f"the {key} sweep did not run")
    if "strategies" in results:
        info["strategies.sizes"] = sizes
    if "measure" in results:
        info["measure.json"], info["measure.gaps"] = _measure_info(results["measure"])
    return claims_mod.judge_all(tables, info, missing)


# ---------------------------------------------------------------------- figures
def draw_figure(result: Result, path) -> Path:
    """Draw ``result``'s figure (its claim's ``draw``) into the PNG ``path``; a claim without
    data gets a placeholder."""
    from matplotlib.figure import Figure

    from .plots.style import NOTE_GREY, save

    fig = Figure(figsize=(9.5, 3.8), layout="constrained")
    try:
        claims_mod.get(result.claim).draw(result, fig)
    except (ValueError, LookupError, TypeError) as e:
        # no data (or data the drawing cannot take): the page still gets a figure, saying why,
        # rather than a long report failing at its last step
        fig.clear()
        fig.set_size_inches(9.5, 3.8)
        ax = fig.subplots()
        ax.text(0.5, 0.5, str(e)[:120] or type(e).__name__, ha="center", va="center", fontsize=11, color=NOTE_GREY,
                wrap=True)
        ax.set_axis_off()
    fig.suptitle(f"{result.claim}: {result.verdict}", fontsize=10)
    return save(fig, path)


# ---------------------------------------------------------------------- the page, in Markdown
def _md(s) -> str:
    """Text safe in Markdown and in the HTML it renders to: &, <, > as entities; the characters
    that would start emphasis, code or a link escaped; one line."""
    s = html.escape(" ".join(str(s).split()), quote=False)
    s = re.sub(r"([\\`*\[\]])", r"\\\1", s)
    return re.sub(r"(?<!\w)_|_(?!\w)", r"\\_", s)


def _cell(s) -> str:
    return _md(s).replace("|", "\\|")


def _vspan(v: str) -> str:
    """A verdict word as a coloured span (raw HTML: the same in the Markdown and the page)."""
    return f'<span class="v {v.replace(" ", "-")}">{html.escape(v)}</span>'


def _families(results) -> list:
    fams = list(dict.fromkeys(f for r in results for f in r.families))
    return [f for f in FAMILIES if f in fams] + [f for f in fams if f not in FAMILIES]


def source_short(source: str) -> str:
    """'§5' / '§5 (derived)' / 'project extension': the headline table's source cell."""
    secs = list(dict.fromkeys(re.findall(r"§\s?(\d+)", source)))
    if "project extension" in source and not secs:
        return "project extension"
    s = ("THEORY.md §" + ", §".join(secs)) if secs else source[:40]
    return s + (" (derived)" if source.startswith("derived reading") else "")


def scope_short(scope) -> str:
    """The assumptions without their parenthesised detail ('restart; demonstrations i.i.d. from θ*')."""
    return "; ".join(dict.fromkeys(s.split(" (")[0].split(":")[0] for s in scope))


def _commands_of(commands: dict, claim: str) -> list[str]:
    got = commands.get(claim, commands.get(claim.split("-")[0], []))
    return [got] if isinstance(got, str) else list(got)


def _headline(results, fams) -> list[str]:
    """The verdict table (raw HTML: check_in_browser counts its rows)."""
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in ("claim", "statement", "kind", "source · scope", *fams, "overall"))
    out = [f'<table id="verdicts" data-claims="{len(results)}">', f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    for r in results:
        cells = [f'<a href="#{e(r.claim.lower())}">{e(r.claim)}</a>', e(r.title), e(r.kind),
                 f"{e(source_short(r.source))}<br><small>{e(scope_short(r.scope))}</small>"]
        for fam in fams:
            f = r.families.get(fam)
            if f is None:
                cells.append('<span class="na">–</span>')
            else:
                short = f.get("short") or ""
                cells.append(_vspan(f["verdict"]) + (f"<br><small>{e(short)}</small>" if short else ""))
        cells.append(_vspan(r.verdict))
        out.append(f'<tr data-claim="{e(r.claim)}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out += ["</tbody>", "</table>"]
    return out


def _numbers_table(numbers: dict) -> list[str]:
    out = ["| number | estimate | 95% CI |", "| --- | ---: | ---: |"]
    for name, (est, lo, hi) in numbers.items():
        ci = f"[{fmt(lo)}, {fmt(hi)}]" if math.isfinite(lo) and math.isfinite(hi) else "n/a"
        out.append(f"| {_cell(name)} | {fmt(est)} | {ci} |")
    return out + [""]


def _section(r: Result, commands: dict) -> list[str]:
    out = [f'<section id="{r.claim.lower()}" markdown="1">', "", f"## {r.claim}: {_md(r.title)}", "",
           f"**Verdict: {_vspan(r.verdict)}** · kind: **{r.kind}** · source: {_md(r.source)} · scope: "
           f"{_md('; '.join(r.scope))}", ""]
    # several families: a table of their words and sentences, then whatever the text adds (e.g. failed
    # jobs); one family: its sentence is the text
    joined = "; ".join(f["text"] for f in r.families.values())
    rest = r.text[len(joined):].lstrip("; ") if len(r.families) > 1 and r.text.startswith(joined) else r.text
    if len(r.families) > 1:
        out += ["| preset family | verdict | what it rests on |", "| --- | --- | --- |"]
        out += [f"| {_cell(fam)} | {_vspan(f['verdict'])} | {_cell(f['text'])} |" for fam, f in r.families.items()]
        out.append("")
    if rest:
        out += [_md(rest), ""]
    out += [f"![{r.claim}]({r.figure})", ""]
    if len(r.parts) > len(r.families):
        out += ["| part | verdict | numbers |", "| --- | --- | --- |"]
        out += [f"| {_cell(p['name'])} | {_vspan(p['verdict'])} | {_cell(p['text'])} |" for p in r.parts]
        out.append("")
    if r.numbers:
        out += _numbers_table(r.numbers)
    if r.checks:
        out += ["**Identity checks** (a check of the code: a failure is a bug, not evidence)", ""]
        out += [f"- {_vspan(c['verdict'])} {_md(c['name'])}: {_md(c['text'])}" for c in r.checks]
        out.append("")
    if r.outside:
        out += ["**Outside the claim's assumptions** (reported with their numbers, never counted)", "",
                "| setting | why it is outside | numbers |", "| --- | --- | --- |"]
        out += [f"| {_cell(o['setting'])} | {_cell(o['why'])} | {_cell(o['text'])} |" for o in r.outside]
        out.append("")
    out += [f"*Rule.* {_md(r.rule)}", ""]
    if r.reference:
        out += [f"*Reference.* {_md(r.reference)}", ""]
    cmds = _commands_of(commands, r.claim)
    if cmds:
        out += ["Reproduce:", "", "```bash", *cmds, "```", ""]
    return out + ["</section>", ""]


def render_markdown(results, *, meta: dict, commands: dict) -> str:
    """The page in Markdown: title, the verdict table (one column per preset family, kind,
    source and scope, the overall word), the identity checks apart from the evidence, then one
    section per claim.  :func:`render_html` renders exactly this."""
    results = list(results)
    fams = _families(results)
    title = meta.get("title", TITLE)
    out = [f"# {_md(title)}", ""]
    if meta.get("subtitle"):
        out += [_md(meta["subtitle"]), ""]
    if meta.get("sweeps"):
        out += [_md(verification_line(meta["sweeps"])[0].upper() + verification_line(meta["sweeps"])[1:]) + ".", ""]
    out += [f"**How to read this page.** Each claim states its kind ({', '.join(KINDS)}), its source (the "
            f"paper's words in THEORY.md, or a derived reading, or a project extension) and its scope (the "
            f"assumptions it is made under). The columns {', '.join(fams)} give each preset family's word: "
            f"supported, refuted, inconclusive, not reached (an asymptotic claim whose regime has not begun by the "
            f"largest n: never a refutation), out of scope, or measured (a comparison, whose finding is a number); "
            f"'–': not measured in that family. {_md(CI_NOTE)}. A setting outside a claim's "
            f"assumptions is reported in its section, never counted.", ""]
    out += _headline(results, fams) + ["", _md(OVERALL_RULE[0].upper() + OVERALL_RULE[1:]) + ".", ""]
    checks = [(r.claim, c) for r in results for c in r.checks]
    if checks:
        out += ["## Identity checks (a failure is a bug, not evidence)", "",
                "| claim | check | result | numbers |", "| --- | --- | --- | --- |"]
        out += [f"| [{r}](#{r.lower()}) | {_cell(c['name'])} | {_vspan(c['verdict'])} | {_cell(c['text'])} |"
                for r, c in checks]
        out.append("")
    allc = _commands_of(commands, "*")
    if allc:
        out += ["Everything on this page, in one command:", "", "```bash", *allc, "```", ""]
    for r in results:
        out += _section(r, commands)
    prov = {k: meta.get(k) for k in ("created", "versions", "elapsed_s") if meta.get(k) is not None}
    if prov:
        out += [f'<p class="meta">{html.escape(json.dumps(prov, default=str))}</p>', ""]
    return "\n".join(out)


# ---------------------------------------------------------------------- the page, in HTML
#: Sets data-images-loaded="k/n" on <body> once the page has loaded (k images decoded): what
#: check_in_browser reads back from the dumped DOM.  Inline: the page needs no network.
_LOAD_SCRIPT = ("window.addEventListener('load',function(){var im=document.images,k=0;"
                "for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)k++;}"
                "document.body.setAttribute('data-images-loaded',k+'/'+im.length);});")
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:2em auto;max-width:1150px;
padding:0 1em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}
h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #d0d0d0;padding:.3em .55em;
text-align:left;vertical-align:top}th{background:#f4f4f6}td[align=right]{font-variant-numeric:tabular-nums}
small{color:#444}.v{font-weight:600;padding:.1em .45em;border-radius:3px;white-space:nowrap}
.supported,.passed{background:#dff3e3;color:#14532d}.refuted,.failed{background:#fde2e1;color:#7f1d1d}
.inconclusive,.mixed{background:#fff4d6;color:#713f12}.not-reached{background:#e0ecfb;color:#1e3a8a}
.measured{background:#ece4fb;color:#4c1d95}.out-of-scope,.not-counted{background:#eee;color:#555}
pre{background:#f6f8fa;padding:.7em;overflow-x:auto;font-size:.85em;border:1px solid #e3e3e3}
img{max-width:100%;border:1px solid #eee}.meta{color:#555;font-size:.85em}
"""


def render_html(markdown_text: str, *, title: str = TITLE) -> str:
    """``markdown_text`` (:func:`render_markdown`) rendered by python-markdown (tables, fenced
    code, Markdown inside the raw <section> elements) in an offline shell: inline CSS and load
    script, no external URL."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code", "md_in_html"],
                             output_format="html")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n<script>{_LOAD_SCRIPT}</script>\n"
            f"</head><body>\n{body}\n</body></html>\n")


def _jsonable(obj):
    if isinstance(obj, Result):
        return _jsonable(obj.as_dict())
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_report(results, out, *, meta: dict, commands: dict) -> list[Path]:
    """Publish ``index.html``, ``report.md``, ``report.json`` (claims, meta, commands, the rules)
    and one PNG per claim into the folder ``out``, all complete before any is renamed in
    (``store.publish``).  Returns the paths written."""
    from .store import check_results_dir, publish, write_json

    if not isinstance(results, (list, tuple)) or not results:
        raise ValueError("claims must be a non-empty list of claim results (claims.judge_all(...))")
    bad = next((r for r in results if not isinstance(r, Result)), None)
    if bad is not None:
        raise ValueError(f"claims must hold claims.Result objects, got {type(bad).__name__}")
    names = [r.claim for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"claims has a claim twice: {sorted(n for n in names if names.count(n) > 1)[0]!r}")
    for r in results:
        if r.verdict not in OVERALL:
            raise ValueError(f"claims: {r.claim!r} has verdict {r.verdict!r}; allowed: {', '.join(OVERALL)}")
    out = check_results_dir(Path(out))
    md = render_markdown(results, meta=meta, commands=commands)
    page = render_html(md, title=meta.get("title", TITLE))
    data = _jsonable({"claims": results, "meta": meta, "commands": commands, "ci": CI_NOTE,
                      "overall_rule": OVERALL_RULE, "kinds": list(KINDS), "verdicts": list(OVERALL),
                      "checks": list(CHECKS)})
    writers = {"index.html": lambda p: p.write_text(page, encoding="utf-8"),
               "report.md": lambda p: p.write_text(md, encoding="utf-8"),
               "report.json": lambda p: write_json(p, data)}
    for r in results:
        writers[r.figure] = lambda p, r=r: draw_figure(r, p)
    return publish(out, writers)


# ---------------------------------------------------------------------- the browser check
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str:
    """The path of a Chromium executable, or a one-line ValueError."""
    for name in CHROMIUM_NAMES:
        p = shutil.which(name)
        if p:
            return p
    raise ValueError("chromium not found: apt-get install chromium")


class _PageParser(HTMLParser):
    """What the check reads from the dumped DOM: body attributes, the verdict table's body rows,
    the sections, the images."""

    def __init__(self):
        super().__init__()
        self.body, self.images, self.sections = {}, [], []
        self.in_verdicts = self.in_tbody = False
        self.depth, self.rows, self.claims_attr = 0, 0, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "img":
            self.images.append(a.get("src"))
        elif tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "table":
            if a.get("id") == "verdicts":
                self.in_verdicts, self.depth, self.claims_attr = True, 1, a.get("data-claims")
            elif self.in_verdicts:
                self.depth += 1
        elif self.in_verdicts and tag == "tbody" and self.depth == 1:
            self.in_tbody = True
        elif self.in_verdicts and self.in_tbody and tag == "tr" and self.depth == 1:
            self.rows += 1

    def handle_endtag(self, tag):
        if self.in_verdicts and tag == "table":
            self.depth -= 1
            if self.depth == 0:
                self.in_verdicts = self.in_tbody = False
        elif self.in_verdicts and tag == "tbody" and self.depth == 1:
            self.in_tbody = False


def _png_size(path: Path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return 0, 0
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def check_in_browser(index_html, screenshot_png, *, timeout_s: float = 120, budget_ms: int = 10000,
                     window=(1280, 4000)) -> dict:
    """Render ``index_html`` in headless Chromium: dump the DOM after the load event (the page's
    inline script writes data-images-loaded="k/n" on <body>) and write a screenshot to
    ``screenshot_png``.  Returns {'ok', 'problems', 'images_loaded', 'n_images', 'n_loaded',
    'verdict_rows', 'claims', 'sections', 'screenshot', 'screenshot_bytes', 'screenshot_size',
    'chromium'}; ok when the verdict table has one body row per claim (its data-claims), one
    section per claim, every image loaded, and the screenshot is a PNG of the window's size.
    One-line ValueError when Chromium is missing or the page is not a file."""
    exe = find_chromium()
    index_html = Path(index_html).resolve()
    if not index_html.is_file():
        raise ValueError(f"index_html {str(index_html)!r} is not a file")
    shot = Path(screenshot_png).resolve()
    if not shot.parent.is_dir():
        raise ValueError(f"screenshot_png: folder {str(shot.parent)!r} does not exist")
    url = index_html.as_uri()
    problems = []
    with tempfile.TemporaryDirectory(prefix="simkernel-chromium-") as profile:
        base = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}"]
        try:
            version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            version = ""
        try:
            dom = subprocess.run(base + [f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                                 capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ValueError(f"chromium did not render {str(index_html)!r} within {timeout_s:g} s") from None
        tmp = shot.with_name(f".{shot.name}.{os.getpid()}.tmp.png")
        try:
            subprocess.run(base + [f"--window-size={window[0]},{window[1]}", f"--virtual-time-budget={budget_ms}",
                                   f"--screenshot={tmp}", url], capture_output=True, text=True, timeout=timeout_s)
            if tmp.is_file():
                os.replace(tmp, shot)
        except subprocess.TimeoutExpired:
            problems.append(f"no screenshot within {timeout_s:g} s")
        finally:
            tmp.unlink(missing_ok=True)
    parser = _PageParser()
    parser.feed(dom.stdout or "")
    loaded = parser.body.get("data-images-loaded")
    try:
        k, n = (int(x) for x in str(loaded).split("/"))
    except ValueError:
        k, n = -1, len(parser.images)
    claims = int(parser.claims_attr) if str(parser.claims_attr or "").isdigit() else None
    if not dom.stdout.strip():
        problems.append(f"chromium dumped no DOM (exit {dom.returncode}: {' '.join(dom.stderr.split())[-200:]})")
    if loaded is None:
        problems.append("the page's load event never ran (no data-images-loaded on <body>)")
    elif k != n or n != len(parser.images):
        problems.append(f"images loaded {loaded} (of {len(parser.images)} <img>)")
    if claims is None:
        problems.append('no verdict table (table id="verdicts" with data-claims)')
    elif parser.rows != claims:
        problems.append(f"the verdict table has {parser.rows} rows for {claims} claims")
    if claims is not None and len(parser.sections) != claims:
        problems.append(f"{len(parser.sections)} sections for {claims} claims")
    size = _png_size(shot) if shot.is_file() else (0, 0)
    if size != tuple(window):
        problems.append(f"screenshot {shot.name} missing or not {window[0]}x{window[1]} (got {size[0]}x{size[1]})")
    return {"ok": not problems, "problems": problems, "images_loaded": loaded, "n_images": len(parser.images),
            "n_loaded": k, "verdict_rows": parser.rows, "claims": claims, "sections": len(parser.sections),
            "screenshot": str(shot), "screenshot_bytes": shot.stat().st_size if shot.is_file() else 0,
            "screenshot_size": list(size), "chromium": version or exe, "url": url}


# ---------------------------------------------------------------------- the report
@dataclass
class Report:
    """What :func:`run` returns: the claims' results (C1-C7, :data:`claims.REGISTRY`'s order),
    ``meta`` (config: quick, the battery's sweep configs, out; seeds; versions; per sweep its
    folder, job counts and wall time) and ``commands`` ({claim or '*': shell commands}).
    :meth:`write` publishes the page, the Markdown, the JSON and the figures and (when Chromium
    is there) checks the page in it."""

    claims: list
    meta: dict
    commands: dict = field(default_factory=dict)
    browser: dict | None = None

    def write(self, out, browser: bool | None = None) -> list[Path]:
        """Publish into ``out``: :data:`FILES`, one PNG per claim and ``battery/<sweep>.toml``
        (the configs the commands name); then, unless ``browser`` is False, render the page in
        headless Chromium (:func:`check_in_browser`), keeping ``screenshot.png`` and
        ``browser_check.json``.  ``browser`` None: only when Chromium is installed; True:
        Chromium is required.  A failed check is a one-line ValueError after the files are
        written."""
        from .store import publish, write_json

        out = Path(out)
        paths = write_report(self.claims, out, meta=self.meta, commands=self.commands)
        configs = (self.meta.get("config") or {}).get("battery") or {}
        if configs:
            paths += publish(out / "battery", {f"{k}.toml": lambda p, c=c: p.write_text(to_toml(c))
                                               for k, c in configs.items()})
        if browser is False:
            return paths
        try:
            find_chromium()
        except ValueError:
            if browser:
                raise
            self.browser = {"ok": None, "skipped": "chromium not found: apt-get install chromium"}
            write_json(out / BROWSER_JSON, self.browser)
            return paths + [out / BROWSER_JSON]
        self.browser = check_in_browser(out / "index.html", out / SCREENSHOT)
        write_json(out / BROWSER_JSON, self.browser)
        paths += [out / SCREENSHOT, out / BROWSER_JSON]
        if not self.browser["ok"]:
            raise ValueError(f"the report page failed its browser check: {'; '.join(self.browser['problems'])}")
        return paths

    def summary_lines(self) -> list[str]:
        """What ``simkernel report`` prints: per claim its overall word, each family's word and its
        sentence; the identity checks; then the browser check when it ran."""
        out = []
        w = max(len(r.claim) for r in self.claims) if self.claims else 2
        for r in self.claims:
            fams = "; ".join(f"{fam}: {f['verdict']}" for fam, f in r.families.items())
            out.append(f"{r.claim:<{w}}  {r.verdict:<12}  {r.title} ({fams})")
            out.append(f"{'':<{w}}  {'':<12}  {r.text}")
        counts = {v: sum(r.verdict == v for r in self.claims) for v in OVERALL}
        quick = (self.meta.get("config") or {}).get("quick")
        # a quick report's verdicts rest on few worlds and tiny models: its summary says so
        out.append(("quick report (CI setting, not the published one): " if quick else "")
                   + ", ".join(f"{n} {v}" for v, n in counts.items() if n))
        checks = [(r.claim, c) for r in self.claims for c in r.checks]
        if checks:
            out.append("identity checks: " + "; ".join(f"{r} {c['verdict']}" for r, c in checks))
        sweeps = self.meta.get("sweeps") or {}
        if sweeps:
            out.append(verification_line(sweeps))
        b = self.browser
        if b and b.get("ok") is not None:
            out.append(f"browser check ({b.get('chromium', 'chromium')}): images {b['images_loaded']}, verdict table "
                       f"{b['verdict_rows']} rows, screenshot {b['screenshot']}"
                       + ("" if b["ok"] else f"; PROBLEMS: {'; '.join(b['problems'])}"))
        elif b:
            out.append(f"browser check skipped: {b.get('skipped')}")
        return out


def verification_line(sweeps: dict) -> str:
    """'sweeps verified before any claim was judged: regime 40/40 jobs, ...' from the report's
    meta['sweeps'] (each sweep's ``verified`` record)."""
    bits = []
    for key, v in sweeps.items():
        ver = v.get("verified") or {}
        if not ver:
            continue
        bit = f"{key} {ver['finished_verified']}/{ver['jobs']} jobs"
        if ver.get("rerun_damaged"):
            bit += f" ({len(ver['rerun_damaged'])} rerun because damaged)"
        if ver.get("failed"):
            bit += f" ({len(ver['failed'])} failed)"
        bits.append(bit)
    return ("sweeps verified before any claim was judged (every finished job's outputs against the sha256 its "
            "done marker recorded): " + ", ".join(bits)) if bits else "sweeps not verified"


def check_out(out) -> Path:
    """``out`` as a Path when a report may be written there: a new or empty folder, or one a
    report wrote (it holds one of :data:`REPORT_MARKS`), never the filesystem root, the home
    folder or the current folder.  Else a one-line ValueError naming ``out``."""
    path = Path(out).expanduser()
    full = path.resolve()
    for where, p in (("the filesystem root", Path(full.anchor)), ("the home folder", Path.home().resolve()),
                     ("the current folder", Path.cwd().resolve())):
        if full == p:
            raise ValueError(f"out must be a folder for the report, not {where}, got {str(out)!r}")
    if full.exists() and not full.is_dir():
        raise ValueError(f"out must be a folder, got {str(out)!r} (a file)")
    if full.is_dir() and any(full.iterdir()) and not any((full / m).exists() for m in REPORT_MARKS):
        raise ValueError(f"out must be a new or empty folder or one a report wrote (with index.html, report.json or "
                         f"sweeps/), got {str(out)!r}, which holds other files")
    return path


def run(quick: bool = False, out=DEFAULT_OUT, workers=None, scheduler=None, progress=None, *,
        sweeps_dir=None, notify=None) -> Report:
    """``simkernel report`` as a library call: run the :func:`battery` (quick: CI-sized) through
    ``sweep.run``, one sweep after another into ``sweeps_dir`` (default ``<out>/sweeps``; a rerun
    resumes them, rerunning any job whose outputs are damaged), check every sweep with
    ``sweep.verify`` before any claim is judged, and ask every registered claim for its verdict.
    A sweep whose outputs are still missing or damaged after its run stops the report with a
    one-line ValueError (its tables would be incomplete); jobs that failed with an error stay in
    the tables as error rows, which the claims report.  ``progress(sweep, done, failed, running,
    total)`` is called as jobs finish, ``notify(line)`` for each damaged job found.  Writes
    nothing but the sweeps (:meth:`Report.write` writes the page).  An ``out`` that is not a
    report's folder (:func:`check_out`) is refused before anything runs."""
    from . import sweep
    from .store import provenance

    t0 = time.perf_counter()
    out = check_out(out)
    sweeps_dir = out / "sweeps" if sweeps_dir is None else Path(sweeps_dir)
    configs = battery(quick)
    sweeps_dir.mkdir(parents=True, exist_ok=True)       # each sweep's lock sits beside its folder
    results, info = {}, {}
    for key in SWEEPS:
        cfg = configs[key]
        tick = (lambda *a, key=key: progress(key, *a)) if progress else None
        t1 = time.perf_counter()
        res = sweep.run(cfg, sweeps_dir / key, workers=workers, scheduler=scheduler, progress=tick,
                        notify=(lambda line, key=key: notify(f"{key}: {line}")) if notify else None)
        results[key] = res
        check = sweep.verify(res.out)
        broken = check.of("damaged", "not run", "tables")
        if broken:
            raise ValueError(f"sweep {key} in {str(res.out)!r} is incomplete after its run ({broken[0][2]}"
                             f"{f'; {len(broken) - 1} more' if len(broken) > 1 else ''}); no claim is judged on "
                             f"it: rerun the report to rerun those jobs")
        # job_s: the jobs' own wall times (worker seconds), kept by the sweep across resumes, so that
        # a resumed report still says where the time of its computation went
        info[key] = {"folder": str(res.out), "jobs": res.counts(), "wall_s": round(time.perf_counter() - t1, 1),
                     "job_s": round(sum(float(j.get("wall_s") or 0.0) for j in res.jobs), 1),
                     "verified": {"jobs": check.jobs, "finished_verified": check.verified,
                                  "rerun_damaged": sorted(k for k in res.damaged if any(
                                      j["key"] == k and j["ran"] for j in res.jobs)),
                                  "failed": [line for _k, _kind, line in check.of("failed")]}}
    from .strategies import DEFAULT_MAP, QUICK_MAP

    smap = QUICK_MAP if quick else DEFAULT_MAP
    results_ = claims_from_sweeps(results, smap["sizes"])
    grid = configs["regime"]["grid"]
    seeds = {"world": {p: grid["world_seed"] for p in grid["preset"]},
             "phenomena_world": configs["phenomena"]["options"]["world_seeds"],
             "train": {"seeds": list(TRAIN_SEEDS)}, "strategies": {"worlds": smap["world"]["seeds"],
                                                                   "seeds": smap["train"]["seeds"]}, "prompt": 0}
    meta = provenance({"command": "report", "quick": bool(quick), "out": str(out), "sweeps_dir": str(sweeps_dir),
                       "battery": configs}, seeds,
                      extra_packages=("matplotlib", "pandas", "pyarrow", "dask", "distributed", "torch", "markdown"))
    meta.update(title=TITLE,
                subtitle=(f"{'quick setting (CI-sized: few worlds, tiny models)' if quick else 'default setting'}; "
                          f"{len(grid['world_seed'])} world seeds per preset family for C1-C4, "
                          f"the strategies map ({len(smap['world']['k'])} K x {len(smap['world']['seeds'])} worlds x "
                          f"{len(smap['sizes'])} sizes x {len(smap['train']['seeds'])} training seeds) for C5, "
                          f"{len(TRAIN_SEEDS)} training seeds for C6"),
                sweeps=info, elapsed_s=round(time.perf_counter() - t0, 1))
    return Report(results_, meta, default_commands(quick, out, sweeps_dir))
