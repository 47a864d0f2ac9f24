"""C6: some attention heads regress: they beat the uniform vote and their own shuffled weights, and
their weights follow the kernel.

Evidence: ``simkernel measure`` over training seeds (one pooled job): its pooled verdict
(alignment.POOLED_RULE) and each run's held-out correlation of the chosen head's weights with the
theory kernel.
"""

from __future__ import annotations

import math

from ..constants import NEAR_BAYES_GAP
from ..metrics import unit_ci
from ..plots.style import PREDICTOR_COLOURS, REFERENCE_COLOUR
from .base import (INCONCLUSIVE, MIN_UNITS, NAN, REFUTED, SUPPORTED, Claim, as_float, ci_text, done, few, fmt,
                   overall)

ID = "C6"
TITLE = ("Some attention heads reconstruct the prediction beyond the uniform vote and correlate with the kernel "
         "(with the shuffled-weights control)")
KIND = "finite-n"
SOURCE = ("the paper's reconstruction: kernel weight a_i = the maximum attention within demonstration i's span, "
          "prediction argmax_c Σ_i a_i [y_i = c] (THEORY.md §7; Table 2)")
SCOPE = ("models trained near the Bayes loss", f">= {MIN_UNITS} training seeds",
         "a world where the kernel vote beats the majority vote (THEORY.md §9: the attention test needs power)")
TARGET, KERNEL = "bayes", "theory"
RULE = ("From simkernel measure over training seeds (measure.json): supported when its pooled verdict is 'detected' "
        "(alignment.POOLED_RULE: the head chosen by agreement with exact Bayes beats the uniform vote and its own "
        "weights shuffled within each prompt, in every run and in the t-interval over runs) and the 95% "
        "t-interval over runs of the held-out within-prompt Pearson correlation with the theory kernel "
        "K(x_test, x_i) of the head chosen (on the selection prompts) for that correlation lies above 0; refuted "
        "when the pooled verdict is 'not detected' or that correlation's interval lies below 0; inconclusive "
        f"otherwise ('mixed'), with < {MIN_UNITS} training seeds, or when a run's validation loss is more than "
        f"{NEAR_BAYES_GAP:g} nats/token above the Bayes floor (a model far from the Bayes loss is not the claim's "
        f"model).")
_REFS = {"uniform": "uniform vote", "shuffled": "shuffled weights", "theory_clipped": "clipped theory kernel",
         "similarity": "prediction similarity", "best": "best non-negative weights"}


def _measure_runs(meta: dict) -> dict:
    """{run name: its best.csv rows} from a measure.json (several runs, or one)."""
    if "runs" in meta and isinstance(meta["runs"], dict):
        return {name: r.get("best", []) for name, r in meta["runs"].items()}
    if "best" in meta:
        return {"run": meta["best"]}
    return {}


def verdict(pooled, measure_meta: dict, *, target: str = TARGET, kernel: str = KERNEL, gaps=None,
            family: str = "ginc-small"):
    """C6 from a measure job's pooled table (pooled.csv rows: target, reference, difference, lo,
    hi, head_agreement, reference_agreement, n_runs), its ``measure.json`` (``summary`` with the
    pooled verdict, ``runs`` with each run's best heads) and ``gaps`` ({run name: final gap to
    the Bayes floor, nats/token}; unknown runs are not checked)."""
    pooled = done(pooled)
    meta = measure_meta or {}
    summary = meta.get("summary") or meta.get("pooled") or {}
    pv = summary.get("verdict", {}) if isinstance(summary, dict) else {}
    word = pv.get("verdict")
    n_runs = int(pv.get("n_runs") or summary.get("n_runs") or 0)
    target = pv.get("target") or target
    numbers, plot = {}, {"bars": [], "target": target}
    if pooled is not None and not pooled.empty:
        p = pooled[pooled["target"] == target]
        for ref, label in _REFS.items():
            row = p[p["reference"] == ref]
            if row.empty:
                continue
            row = row.iloc[0]
            numbers[f"head minus {label} (agreement with {target})"] = (row["difference"], row["lo"], row["hi"])
            plot["bars"].append({"reference": label, "ci": [as_float(row["difference"]), as_float(row["lo"]),
                                                            as_float(row["hi"])],
                                 "head": as_float(row["head_agreement"]), "ref": as_float(row["reference_agreement"])})
        if not p.empty:
            numbers[f"chosen head's agreement with {target} (mean over runs)"] = (
                as_float(p["head_agreement"].iloc[0]), NAN, NAN)
    corr = [(name, as_float(b.get("report"))) for name, best in _measure_runs(meta).items() for b in best
            if b.get("measure") == "pearson" and b.get("reference") == kernel]
    cm, clo, chi, cn = unit_ci([c for _, c in corr], [n for n, _ in corr]) if corr else (NAN, NAN, NAN, 0)
    numbers[f"held-out Pearson(head weights, {kernel} kernel)"] = (cm, clo, chi)
    plot["corr"] = [c for _, c in corr]
    n_units = max(n_runs, cn)
    gaps = {str(k): as_float(g) for k, g in (gaps or {}).items()}
    known = [g for g in gaps.values() if math.isfinite(g)]
    if known:
        numbers["gap to the Bayes floor (nats/token)"] = unit_ci(known)[:3]
    far = sorted(k for k, g in gaps.items() if g > NEAR_BAYES_GAP)
    if word is None:
        v, why = INCONCLUSIVE, "no pooled verdict in measure.json"
    elif n_units < MIN_UNITS:
        v, why = INCONCLUSIVE, few(n_units, "training seeds")
    elif far:
        v, why = INCONCLUSIVE, (f"runs {', '.join(far)} are not near the Bayes loss (gap > {NEAR_BAYES_GAP:g} "
                                f"nats/token)")
    elif word == "not detected" or (math.isfinite(chi) and chi < 0):
        v, why = REFUTED, ("no head beats the uniform vote and its shuffled control" if word == "not detected"
                           else "head weights anti-correlate with the kernel")
    elif word == "detected" and math.isfinite(clo) and clo > 0:
        v, why = SUPPORTED, "a head beats both controls and its weights follow the kernel"
    else:
        v, why = INCONCLUSIVE, (f"pooled verdict {word!r}" if word != "detected" else
                                "the correlation's interval includes 0")
    u = numbers.get(f"head minus uniform vote (agreement with {target})", (NAN,) * 3)
    s = numbers.get(f"head minus shuffled weights (agreement with {target})", (NAN,) * 3)
    text = (f"{n_units} training seeds: pooled verdict {word!r}; head minus uniform vote {ci_text(u)}, minus its "
            f"shuffled weights {ci_text(s)}; held-out Pearson with the {kernel} kernel {ci_text((cm, clo, chi))} "
            f"({why})")
    refs = [b for b in plot["bars"] if b["reference"] in ("uniform vote", "clipped theory kernel",
                                                          "best non-negative weights")]
    reference = (f"agreement with {target} of the reference votes beside the head ({fmt(refs[0]['head'] if refs else NAN)}"
                 "): " + "; ".join(f"{b['reference']} {fmt(b['ref'])}" for b in refs))
    families = {family: {"verdict": v, "text": text, "short": f"pooled {word!r}; Pearson {fmt(cm, 2)}"}}
    return CLAIM.result(overall(families), families, text, reference=reference, numbers=numbers,
                        parts=[{"name": f"target {target}", "verdict": v, "text": text}], plot=plot)


def judge(tables: dict, info: dict):
    return verdict(tables.get("measure.pooled"), info.get("measure.json") or {}, gaps=info.get("measure.gaps"))


def draw(result, fig) -> None:
    """The chosen head minus each reference vote (agreement with exact Bayes, 95% CI) and each
    run's held-out correlation with the kernel."""
    plot = result.plot
    if not (plot.get("bars") or plot.get("corr")):
        raise ValueError("no data for a figure")
    ax, ax2 = fig.subplots(1, 2, width_ratios=[3, 1])
    bars = plot.get("bars", [])
    for i, b in enumerate(bars):
        m, lo, hi = b["ci"]
        ax.errorbar([m], [i], xerr=[[m - lo], [hi - m]] if math.isfinite(lo) else None, fmt="o", capsize=4,
                    color=PREDICTOR_COLOURS["kernel"])
    ax.axvline(0, color=REFERENCE_COLOUR, lw=0.8)
    ax.set_yticks(range(len(bars)), [b["reference"] for b in bars])
    ax.set_xlabel(f"chosen head minus reference vote: agreement with {plot.get('target', TARGET)} (95% CI)")
    ax.grid(True, alpha=0.3)
    corr = plot.get("corr", [])
    ax2.plot([0] * len(corr), corr, "o", color=PREDICTOR_COLOURS["kernel"])
    ax2.axhline(0, color=REFERENCE_COLOUR, lw=0.8)
    ax2.set_xticks([0], ["runs"])
    ax2.set_ylabel("held-out Pearson(head, theory kernel)")
    ax2.grid(True, alpha=0.3)


CLAIM = Claim(ID, TITLE, KIND, SOURCE, SCOPE, RULE, reads=("measure.pooled",), judge=judge, draw=draw,
              families=("ginc-small",))
