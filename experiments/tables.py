#!/usr/bin/env python
"""The README's experiment tables, made from the committed results in ``figures/<name>/`` (so
the numbers in the docs cannot drift from the files; ``tests/test_docs.py`` checks that
the README holds exactly what this prints).

    python experiments/tables.py            # print every table
    python experiments/tables.py table3     # one of: table3, summary:<experiment>, bias,
                                            # phenomena, references, report,
                                            # report-checks, report-findings, report-time,
                                            # strategies-seen, strategies-unseen, strategies-time
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The paper's Table 3 (Appendix C), n = 1..128.
PAPER = {"distance": [1.322, 0.942, 0.519, 0.218, 0.163, 0.085, 0.093, 0.083],
         "accuracy": [0.337, 0.532, 0.745, 0.901, 0.926, 0.968, 0.961, 0.964]}
NS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
SUMMARY_EXPERIMENTS = ("paper_c_table3", "sigma_ablation", "floor_epsilon", "ginc", "ginc_ood")
PHENOMENA = ("order", "labels", "prior", "retrieval", "shift")


def load(name: str):
    folder = ROOT / "figures" / name
    with open(folder / "convergence.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    meta = json.loads((folder / "convergence.json").read_text())
    by = {(r["n_demos"], r["kernel"], r["estimator"], r["metric"]): r for r in rows}
    return by, meta


def _per_world(meta, kernel, metric, n):
    """Each world's own mean of one metric at n (the JSON's per_world block, primary estimator)."""
    pw = meta["per_world"]
    j = pw["n"].index(n)
    return [v[kernel][metric][j] for w, v in pw.items() if w not in ("n", "estimator")]


def table3() -> str:
    """The paper's Table 3 against paper-c over its worlds: the mean over worlds and the range of
    the worlds' own means, for the normalised theory estimate."""
    by, meta = load("paper_c_table3")
    W = meta["n_worlds"]

    def mean(metric, n, kernel="theory", est="normalised"):
        return float(by[(str(n), kernel, est, metric)]["mean"])

    def span(metric, n, kernel="theory"):
        v = _per_world(meta, kernel, metric, n)
        return f"{min(v):.2f}–{max(v):.2f}"

    head = "| n | " + " | ".join(map(str, NS)) + " |"
    lines = [head, "| --- |" + " --- |" * len(NS),
             "| L1 distance, paper | " + " | ".join(f"{v:.3f}" for v in PAPER["distance"]) + " | |",
             f"| L1 distance, ours (mean of {W} worlds) | " + " | ".join(f"{mean('l1', n):.3f}" for n in NS) + " |",
             "| L1 distance, ours (range over worlds) | " + " | ".join(span("l1", n) for n in NS) + " |",
             "| L1 distance, label frequencies | " + " | ".join(f"{mean('l1', n, 'frequency'):.3f}" for n in NS) + " |",
             "| \"accuracy\", paper | " + " | ".join(f"{v:.3f}" for v in PAPER["accuracy"]) + " | |",
             f"| agreement with exact Bayes, ours (mean of {W} worlds) | " + " | ".join(f"{mean('agree', n):.3f}" for n in NS) + " |",
             "| agreement, ours (range over worlds) | " + " | ".join(span("agree", n) for n in NS) + " |",
             "| accuracy vs `y_test`, ours | " + " | ".join(f"{mean('acc', n):.3f}" for n in NS) + " |",
             "| exact Bayes accuracy vs `y_test` | " + " | ".join(f"{float(by[(str(n), 'bayes', '-', 'acc')]['mean']):.3f}" for n in NS) + " |"]
    return "\n".join(lines)


def summary(name: str) -> str:
    """Per kernel and estimator: TV to exact Bayes at the largest n, and the exact floor (the
    limit's TV to the oracle), mean ± 95% CI (over worlds when there are several)."""
    by, meta = load(name)
    n_max = max(int(k[0]) for k in by if k[0] != "inf")
    kernels = [k for k in ("theory", "oracle", "similarity", "frequency") if ("inf", k, "normalised", "tv") in by]
    unit = f"{meta['n_worlds']} worlds" if meta["n_worlds"] > 1 else "prompts"

    def cell(n, k, e, m):
        r = by.get((n, k, e, m))
        if r is None:
            return "–"
        half = (float(r["ci_high"]) - float(r["ci_low"])) / 2
        return f"{float(r['mean']):.3f} ± {half:.3f}"

    lines = [f"| kernel | TV to Bayes at n = {n_max}, normalised | floor (n = ∞), normalised | "
             f"TV at n = {n_max}, averaged | floor, averaged |", "| --- | --- | --- | --- | --- |"]
    for k in kernels:
        lines.append(f"| {k} | {cell(str(n_max), k, 'normalised', 'tv')} | {cell('inf', k, 'normalised', 'tv')} | "
                     f"{cell(str(n_max), k, 'averaged', 'tv')} | {cell('inf', k, 'averaged', 'tv')} |")
    lines.append(f"\n(95% CI over {unit}; the floor is the exact limit's TV to the oracle.)")
    return "\n".join(lines)


def bias() -> str:
    """The rank correlation of the exact theory floor with η²ε_θ in the floor_epsilon sweep."""
    _by, meta = load("floor_epsilon")
    bt = meta["bias_term"]
    parts = []
    for e in ("averaged", "normalised", "clipped"):
        b = bt[e]
        parts.append(f"| {e} | {b['n_pairs']} | {b['rho']:.2f} (p = {b['p_value']:.2g}) | "
                     f"{b['rho_span']:.2f} (p = {b['p_value_span']:.2g}) |")
    return "\n".join(["| estimator | (world, concept) pairs | Spearman: floor vs η²ε_θ | with ε_θ on the span |",
                      "| --- | --- | --- | --- |", *parts])


def phenomena() -> str:
    """Each phenomenon's verdict, its worlds and its wall time, from figures/phenomena_<name>/."""
    rows = ["| phenomenon | worlds | verdict | wall time |", "| --- | --- | --- | --- |"]
    for name in PHENOMENA:
        meta = json.loads((ROOT / "figures" / f"phenomena_{name}" / f"{name}.json").read_text())
        rows.append(f"| `{name}` | {meta['n_worlds']} | {meta['verdict']['text']} | {meta['elapsed_s']:.0f} s |")
    return "\n".join(rows)


def references(name: str = "measure_ginc_small") -> str:
    """The chosen head against each reference vote, pooled over training seeds (pooled.csv)."""
    with open(ROOT / "figures" / name / "pooled.csv", newline="") as f:
        pooled = list(csv.DictReader(f))
    cols = list(pooled[0])
    out = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for r in pooled:
        out.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    return "\n".join(out)


def _report(name: str) -> dict:
    return json.loads((ROOT / "figures" / name / "report.json").read_text())


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def report(name: str = "report") -> str:
    """Each claim of the published report (figures/<name>/report.json): its kind, statement, the
    word of every preset family with its short reading, and the overall word."""
    meta = _report(name)
    fams = list(dict.fromkeys(f for c in meta["claims"] for f in c.get("families", {})))
    rows = ["| claim | kind | statement | " + " | ".join(fams) + " | overall |",
            "| --- | --- | --- | " + " | ".join("---" for _ in fams) + " | --- |"]
    for c in meta["claims"]:
        cells = []
        for f in fams:
            got = c.get("families", {}).get(f)
            cells.append("–" if got is None else f"**{got['verdict']}**" + (f": {_md_cell(got['short'])}"
                                                                              if got.get("short") else ""))
        rows.append(f"| {c['claim']} | {c.get('kind', '')} | {_md_cell(c['title'])} | " + " | ".join(cells)
                    + f" | **{c['verdict']}** |")
    return "\n".join(rows)


def report_checks(name: str = "report") -> str:
    """The identity checks of the published report (a failure is a bug in the code, not evidence)."""
    meta = _report(name)
    rows = ["| claim | check | result | numbers |", "| --- | --- | --- | --- |"]
    for c in meta["claims"]:
        for ch in c.get("checks", []):
            rows.append(f"| {c['claim']} | {_md_cell(ch['name'])} | **{ch['verdict']}** | {_md_cell(ch['text'])} |")
    return "\n".join(rows)


def report_time(name: str = "report") -> str:
    """Where the published report's computation went: per sweep, its jobs and their summed wall
    time in worker seconds (kept by each sweep across resumes; 2 workers run at once)."""
    meta = _report(name)["meta"]
    rows = ["| sweep | jobs | worker seconds | share |", "| --- | ---: | ---: | ---: |"]
    sweeps = meta.get("sweeps", {})
    total = sum(float(v.get("job_s", 0.0)) for v in sweeps.values()) or 1.0
    for key, v in sweeps.items():
        rows.append(f"| {key} | {v['jobs'].get('done', 0)} | {float(v.get('job_s', 0.0)):,.0f} | "
                    f"{float(v.get('job_s', 0.0)) / total:.0%} |")
    return "\n".join(rows)


def report_findings(name: str = "report") -> str:
    """One paragraph per claim of the published report: each family's word and the sentence it
    rests on, and the settings outside the claim's assumptions."""
    meta = _report(name)
    out = []
    for c in meta["claims"]:
        fams = c.get("families", {})
        text = "; ".join(f"{f}: **{v['verdict']}**, {v['text']}" for f, v in fams.items()) or c.get("text", "")
        out.append(f"- **{c['claim']}** ({c.get('kind', '')}). {text}")
        for o in c.get("outside", []):
            out.append(f"  Outside the claim's assumptions ({o['why']}): {o['text']}.")
    return "\n".join(out)


def _strategies(name: str = "strategies"):
    folder = ROOT / "figures" / name
    with open(folder / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, json.loads((folder / "strategies.json").read_text())


def _ci(r) -> str:
    def f(v):
        return f"{float(v) + 0.0:.2f}".replace("-0.00", "0.00")
    return f"{f(r['mean'])} [{f(r['ci_low'])}, {f(r['ci_high'])}]"


def strategies(split: str = "seen", name: str = "strategies") -> str:
    """The published map at its last checkpoint and largest n, one row per K and size: the mean
    gap to the Bayes floor, TV(model, ·) to each single predictor and to the fitted mixture, the
    kernel's mixture weight (95% t-intervals over worlds), and the single predictor nearest the
    model (in bold)."""
    rows, meta = _strategies(name)
    comps = meta["config"]["eval"].get("mixture_of") or ["bayes", "kernel", "frequency", "ngram", "uniform"]
    n = str(max(meta["config"]["eval"]["n_demos"]))
    last = str(max(int(r["step"]) for r in rows))
    by = {(r["k"], r["size"], r["predictor"], r["metric"]): r for r in rows
          if r["step"] == last and r["n_demos"] == n and r["concepts"] == split}
    cells = sorted({(int(k), s) for k, s, _, _ in by}, key=lambda c: (list(meta["config"]["sizes"]).index(c[1]), c[0]))
    head = ["K", "size", "gap (nats/token)"] + [f"TV to {p}" for p in comps] + ["TV to the mixture", "kernel weight",
                                                                                "nearest"]
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---:", "---"] + ["---:"] * (len(head) - 3) + ["---"]) + " |"]
    for k, size in cells:
        get = lambda p, m: by.get((str(k), size, p, m))                  # noqa: E731
        tvs = {p: float(get(p, "tv")["mean"]) for p in comps if get(p, "tv")}
        near = min(tvs, key=tvs.get) if tvs else "-"
        cols = [str(k), size, _ci(get("model", "gap")) if get("model", "gap") else "-"]
        cols += [(f"**{_ci(get(p, 'tv'))}**" if p == near else _ci(get(p, "tv"))) if get(p, "tv") else "-" for p in comps]
        cols += [_ci(get(key, m)) if get(key, m) else "-" for key, m in (("mixture", "tv"), ("kernel", "weight"))]
        cols.append(near)
        out.append("| " + " | ".join(cols) + " |")
    return "\n".join(out)


def strategies_time(name: str = "strategies") -> str:
    """Where the published map's time went: the jobs' summed wall time (worker seconds, kept across
    resumes; two workers run at once), and the parts spent training and attributing."""
    _rows, meta = _strategies(name)
    jobs = meta.get("jobs", [])
    el = meta.get("elapsed_s", {})
    total = float(el.get("jobs_wall", 0)) or 1.0
    out = ["| worker seconds, summed over the jobs | seconds | share |", "| --- | ---: | ---: |",
           f"| every job, start to done marker ({len(jobs)} jobs) | {total:,.0f} | 100% |"]
    for key, label in (("train", "training (the loop and its evaluations)"),
                       ("attribute", "attribution (`strategies.evaluate`)"),
                       ("predictors", "&nbsp;&nbsp;of which the predictors, once per prompt set"),
                       ("model_forward", "&nbsp;&nbsp;of which the models' forward passes, every snapshot")):
        if key in el:
            out.append(f"| {label} | {float(el[key]):,.0f} | {float(el[key]) / total:.0%} |")
    return "\n".join(out)


def _fmt(v: str) -> str:
    try:
        x = float(v)
    except ValueError:
        return v
    return v if x.is_integer() and "." not in v else f"{x:.3f}"


def all_tables() -> dict:
    out = {"table3": table3(), "bias": bias(), "phenomena": phenomena(), "references": references(), "report": report(),
           "report-checks": report_checks(), "report-findings": report_findings(), "report-time": report_time()}
    if (ROOT / "figures" / "strategies" / "summary.csv").is_file():
        out.update({"strategies-seen": strategies("seen"), "strategies-unseen": strategies("unseen"),
                    "strategies-time": strategies_time()})
    for name in SUMMARY_EXPERIMENTS:
        out[f"summary:{name}"] = summary(name)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    tables = all_tables()
    names = argv or list(tables)
    for name in names:
        if name not in tables:
            print(f"error: unknown table {name!r}; allowed: {', '.join(tables)}", file=sys.stderr)
            return 2
        print(f"<!-- experiments/tables.py {name} -->")
        print(tables[name])
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
