"""C2: a bias floor that does not vanish with n (Σ_pretrain), and the Σ_θ* identity as a code check.

Evidence: the exact n -> ∞ floor TV(limit, oracle) of the theory kernel with Σ_pretrain
(``floors.csv`` of the converge sweep), weighted over each world's concepts by their pretraining
prior.  That Σ_θ* removes the floor follows from the algebra (with linear belief features, Σ_θ*
gives the oracle up to the ridge): it is checked against the bound the ridge puts on it
(``identity_bound``), as an identity check, not as evidence.
"""

from __future__ import annotations

import math

import numpy as np

from ..metrics import unit_ci
from ..plots.style import FAMILY_COLOURS, GUIDE_GREY
from .base import (FAILED, INCONCLUSIVE, MIN_UNITS, NAN, PASSED, REFUTED, SUPPORTED, Claim, ci_text, done,
                   failed_note, families_of, few, fmt, of_family, overall)

ID = "C2"
TITLE = "The kernel estimate's n -> ∞ limit differs from the exact posterior by a bias floor (Σ_pretrain)"
KIND = "asymptotic"
SOURCE = ("Theorem 1's \"bias term η²·ε_θ that does NOT vanish with n\" (THEORY.md §5); that a floor exists is a "
          "derived reading")
SCOPE = ("restart (Assumption 1)", "demonstrations i.i.d. from θ*")
#: A floor below this (TV) is no floor.
FLOOR_MIN = 1e-3
#: floor_tv may exceed identity_bound by this much (rounding) and still pass.
IDENTITY_TOL = 1e-12
ESTIMATOR = "averaged"
ALSO = ("normalised",)
RULE = (f"Per world, the exact floor TV(limit, oracle) of the theory kernel's {ESTIMATOR} estimate with Σ_pretrain "
        f"(the estimator the bias term is about), weighted over the concepts by their pretraining prior (concepts "
        f"with prior 0 left out); per preset family, supported when the 95% t-interval over worlds lies above "
        f"{FLOOR_MIN:g} (a floor exists), refuted when it lies below {FLOOR_MIN:g} (no floor), inconclusive when it "
        f"straddles it or with < {MIN_UNITS} worlds.  Identity check (not evidence): with Σ_θ* (kernel 'oracle') "
        f"floor_tv <= identity_bound + {IDENTITY_TOL:g} in every (world, concept) pair and estimator of floors.csv, "
        f"where identity_bound is the bound the ridge puts on it (averaged: E min(δ/2, 1); normalised: "
        f"E min(2δ/(1-δ), 1), δ from kernel.ridge_bias_bound).")


def world_floor(fl, kernel: str, estimator: str, world: str = "world") -> dict:
    """{world: prior-weighted mean floor over the concepts with prior > 0}."""
    s = fl[(fl["kernel"] == kernel) & (fl["estimator"] == estimator)]
    out = {}
    for w, g in s.groupby(world, sort=True):
        p = g["prior"].to_numpy(float)
        v = g["floor_tv"].to_numpy(float)
        ok = np.isfinite(v) & (p > 0)
        if ok.any():
            out[w] = float((p[ok] * v[ok]).sum() / p[ok].sum())
    return out


def identity_check(floors, family: str = "preset") -> dict:
    """The Σ_θ* identity check over every oracle-kernel (world, concept) pair of ``floors``:
    {'name', 'verdict': 'passed' | 'failed', 'text'}; failed names the worst pair.  Without the
    ``identity_bound`` column (an older sweep) the check says so and does not pass."""
    name = "Σ_θ* removes the floor up to the ridge (kernel 'oracle': floor_tv <= identity_bound)"
    if floors is None or floors.empty:
        return {"name": name, "verdict": FAILED, "text": "not checked: no floors table"}
    if "identity_bound" not in floors.columns:
        return {"name": name, "verdict": FAILED, "text": "not checked: floors.csv has no identity_bound column "
                                                         "(a converge sweep older than the check); rerun it"}
    o = floors[floors["kernel"] == "oracle"]
    bound, floor = o["identity_bound"].to_numpy(float), o["floor_tv"].to_numpy(float)
    ok = np.isfinite(bound) & np.isfinite(floor)
    if not ok.any():
        return {"name": name, "verdict": FAILED, "text": "not checked: no oracle row has a finite identity_bound"}
    excess = np.where(ok, floor - bound, -np.inf)
    bad = excess > IDENTITY_TOL
    ests = sorted(set(o["estimator"][ok]))
    fams = list(dict.fromkeys(o[family])) if family in o.columns else []
    slack = bound[ok] - floor[ok]
    if bad.any():
        i = int(np.argmax(excess))
        row = o.iloc[i]
        where = (f"{row[family]} " if family in o.columns else "") + f"world {row['world']}, concept {row['concept']}"
        return {"name": name, "verdict": FAILED,
                "text": f"{int(bad.sum())} of {int(ok.sum())} pairs exceed their bound; worst: {where} "
                        f"({row['estimator']}): floor {fmt(row['floor_tv'])} > bound {fmt(row['identity_bound'])}"}
    return {"name": name, "verdict": PASSED,
            "text": f"all {int(ok.sum())} oracle (world, concept) pairs{' of ' + ', '.join(map(str, fams)) if fams else ''}"
                    f" ({', '.join(ests)}) lie within their bound (smallest margin {fmt(slack.min())})"
                    + (f"; {int((~ok).sum())} rows without a bound" if (~ok).any() else "")}


def verdict(floors, rows=None, *, family: str = "preset", estimator: str = ESTIMATOR, also=ALSO):
    """C2 from the converge sweep's ``floors`` table (floors.csv rows: world, concept, prior,
    kernel, estimator, floor_tv, identity_bound, ...) and, for the reference line, its main
    table ``rows`` (exact Bayes against the oracle at the largest n)."""
    floors_all, floors, rows = floors, done(floors), done(rows)
    families, parts, numbers, plot = {}, [], {}, {"families": {}, "estimator": estimator, "also": list(also)}
    for fam in families_of(floors, family):
        fl = of_family(floors, fam, family)
        fam_plot = {}
        for e in (estimator, *also):
            pre, own = world_floor(fl, "theory", e), world_floor(fl, "oracle", e)
            ws = list(pre)
            t = np.array([pre[w] for w in ws])
            o = np.array([own.get(w, NAN) for w in ws])
            ft, fo = unit_ci(t, ws, lower=0.0), unit_ci(o, ws, lower=0.0)
            numbers[f"{fam}: floor with Σ_pretrain ({e})"] = ft[:3]
            numbers[f"{fam}: floor with Σ_θ*, the identity check ({e})"] = fo[:3]
            fam_plot[e] = {"worlds": [w.item() if hasattr(w, "item") else w for w in ws], "theory": t.tolist(),
                           "oracle": o.tolist()}
            if e != estimator:
                continue
            W = ft[3]
            if W < MIN_UNITS:
                v, why = INCONCLUSIVE, few(W)
            elif ft[1] > FLOOR_MIN:
                v, why = SUPPORTED, f"a floor: the interval lies above {FLOOR_MIN:g}"
            elif ft[2] < FLOOR_MIN:
                v, why = REFUTED, f"no floor: the interval lies below {FLOOR_MIN:g}"
            else:
                v, why = INCONCLUSIVE, f"the interval straddles {FLOOR_MIN:g}"
            txt = f"{fam}: floor {ci_text(ft)} with Σ_pretrain over {W} worlds ({e} estimator; {why})"
            families[fam] = {"verdict": v, "text": txt, "short": f"floor {ci_text(ft)}"}
            parts.append({"name": fam, "verdict": v, "text": txt})
        fq = world_floor(fl, "frequency", "normalised")
        if fq:
            numbers[f"{fam}: floor of the label frequencies (reference)"] = unit_ci(list(fq.values()), list(fq),
                                                                                     lower=0.0)[:3]
        if rows is not None and not rows.empty:
            r = of_family(rows, fam, family)
            r = r[(r["kernel"] == "bayes-vs-oracle") & (r["metric"] == "tv")
                  & np.isfinite(r["n_demos"].to_numpy(float))]
            if not r.empty:
                nmax = float(r["n_demos"].max())
                rr = r[r["n_demos"] == nmax]
                unit = "world_seed" if "world_seed" in rr.columns else "job"
                numbers[f"{fam}: TV(exact Bayes, oracle) at n = {nmax:g} (reference)"] = unit_ci(
                    rr["mean"].to_numpy(float), rr[unit].to_numpy(), lower=0.0)[:3]
        plot["families"][fam] = fam_plot
    check = identity_check(floors, family)
    note = failed_note(floors_all)
    text = ("; ".join(f["text"] for f in families.values()) or "no floors") + (f"; {note}" if note else "")
    refs = [f"{k} {ci_text(v)}" for k, v in numbers.items() if "(reference)" in k]
    reference = ("exact Bayes tends to the oracle (the floor's target) and the label frequencies' limit is "
                 "P(y | θ*) whatever x: " + "; ".join(refs)) if refs else "no reference rows"
    return CLAIM.result(overall(families), families, text, reference=reference, numbers=numbers, parts=parts,
                        plot=plot, checks=[check])


def judge(tables: dict, info: dict):
    return verdict(tables["converge.floors"], tables.get("converge"))


def draw(result, fig) -> None:
    """One panel per estimator: each world's floor with Σ_pretrain beside Σ_θ* (one line per
    world, a colour per family), on a symlog axis."""
    plot = result.plot
    if not plot.get("families"):
        raise ValueError("no data for a figure")
    ests = [plot.get("estimator", ESTIMATOR), *plot.get("also", [])]
    axes = fig.subplots(1, len(ests), squeeze=False)[0]
    for ax, e in zip(axes, ests):
        for i, (fam, d) in enumerate(plot["families"].items()):
            dd = d.get(e)
            if not dd:
                continue
            col = FAMILY_COLOURS[i % len(FAMILY_COLOURS)]
            for t, o in zip(dd["theory"], dd["oracle"]):
                if math.isfinite(t) and math.isfinite(o):
                    ax.plot([0, 1], [t, o], "-o", color=col, alpha=0.35, ms=3)
            ax.plot([], [], "-o", color=col, label=fam)
        ax.axhline(FLOOR_MIN, color=GUIDE_GREY, lw=0.8, ls=":", label=f"{FLOOR_MIN:g}: no floor below")
        ax.set_xticks([0, 1], ["Σ_pretrain (evidence)", "Σ_θ* (identity check)"])
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_ylim(bottom=0)
        ax.set_ylabel(f"exact floor TV(limit, oracle), {e}")
        ax.set_title(f"{e} estimator: one line per world", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, frameon=False)


CLAIM = Claim(ID, TITLE, KIND, SOURCE, SCOPE, RULE, reads=("converge.floors", "converge"), judge=judge, draw=draw)
