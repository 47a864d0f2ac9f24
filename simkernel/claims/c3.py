"""C3: the bias floor obeys Theorem 1's bound floor <= η²ε_θ, tested as an inequality.

Evidence: ``floors.csv`` of the converge sweep, theory kernel: per (world, concept) pair the exact
floor and η²ε_θ.  One violation refutes a bound; the slack log10(η²ε_θ / floor) says how loose it
is.  The rank correlation of the two is a secondary, derived reading (a bound need not rank).
"""

from __future__ import annotations

import math

import numpy as np

from ..metrics import spearman_ci
from ..plots.style import FAMILY_COLOURS, MARK_COLOUR, REFERENCE_COLOUR
from .base import (INCONCLUSIVE, MIN_UNITS, NAN, REFUTED, SUPPORTED, Claim, ci_text, done, failed_note,
                   families_of, few, fmt, of_family, overall)

ID = "C3"
TITLE = "The bias floor obeys Theorem 1's bound: floor <= η²ε_θ in every (world, concept) pair"
KIND = "bound"
SOURCE = ("Theorem 1: the bias term η²·ε_θ, ε_θ = inf_l ρ(Σ⁻¹_pretrain,l − Σ⁻¹_θ,l), η = sup ‖T_o‖_F "
          "(THEORY.md §5); the rank correlation is a derived reading")
SCOPE = ("restart (Assumption 1)", "demonstrations i.i.d. from θ*")
ESTIMATOR = "averaged"
#: A floor may exceed its bound by this relative amount (rounding) without violating it.
BOUND_RTOL = 1e-9
#: World-cluster bootstrap resamples of the rank correlation.
N_BOOT = 2000
RULE = (f"Per preset family, every (world, concept) pair of floors.csv with the theory kernel and the {ESTIMATOR} "
        f"estimator (the one the bound is about): the exact floor TV(limit, oracle) against η²ε_θ.  Refuted by one "
        f"pair with floor > η²ε_θ (1 + {BOUND_RTOL:g}); supported when every pair holds in >= {MIN_UNITS} worlds; "
        f"inconclusive otherwise.  Reported beside it: the slack log10(η²ε_θ / floor) (median and minimum over the "
        f"pairs), the same for the normalised estimator and for ε restricted to the span of the inputs that occur, "
        f"and, as a secondary reading, the Spearman correlation of floor and η²ε_θ with a 95% percentile interval "
        f"from {N_BOOT} resamples of whole worlds (\"ρ < hi with 95% confidence\").")


def bound_test(floor, bound, tol: float = BOUND_RTOL) -> dict:
    """{'pairs', 'violations' (bool array), 'slack' (log10 bound / floor; inf where the floor is
    0), 'median', 'min'} over the pairs where both are finite."""
    floor, bound = np.asarray(floor, float), np.asarray(bound, float)
    ok = np.isfinite(floor) & np.isfinite(bound)
    f, b = floor[ok], bound[ok]
    viol = f > b * (1 + tol)
    with np.errstate(divide="ignore", invalid="ignore"):
        slack = np.where(f > 0, np.log10(np.where(b > 0, b, np.nan) / np.where(f > 0, f, 1.0)), np.inf)
    fin = slack[np.isfinite(slack)]
    return {"ok": ok, "pairs": int(ok.sum()), "violations": viol, "slack": slack,
            "median": float(np.median(slack)) if slack.size else NAN,
            "min": float(fin.min()) if fin.size else (math.inf if slack.size else NAN)}


def verdict(floors, *, family: str = "preset", estimator: str = ESTIMATOR, x: str = "eta2_eps", n_boot: int = N_BOOT,
            seed: int = 0):
    """C3 from the converge sweep's ``floors`` table (floor_tv, eta2_eps, eta2_eps_span per world
    and concept; the theory kernel's rows)."""
    floors_all, floors = floors, done(floors)
    families, parts, numbers, plot = {}, [], {}, {"families": {}, "estimator": estimator, "x": x}
    for fam in families_of(floors, family):
        fl = of_family(floors, fam, family)
        fl = fl[fl["kernel"] == "theory"]
        for e, col in ((estimator, x), (estimator, "eta2_eps_span"), ("normalised", x)):
            s = fl[fl["estimator"] == e]
            if col not in s.columns or s.empty:
                continue
            b = bound_test(s["floor_tv"].to_numpy(float), s[col].to_numpy(float))
            label = f"η²ε_θ{' (span)' if col.endswith('span') else ''}"
            numbers[f"{fam}: pairs within {label} ({e}), share"] = (
                1 - b["violations"].mean() if b["pairs"] else NAN, NAN, NAN)
            numbers[f"{fam}: slack log10({label} / floor), median ({e})"] = (b["median"], NAN, NAN)
            numbers[f"{fam}: slack log10({label} / floor), minimum ({e})"] = (b["min"], NAN, NAN)
            if (e, col) != (estimator, x):
                continue
            ok = b["ok"]
            worlds = s["world"].to_numpy()[ok]
            W = len(set(worlds))
            xs, ys = s[col].to_numpy(float)[ok], s["floor_tv"].to_numpy(float)[ok]
            rho = spearman_ci(xs, ys, worlds, n_boot, seed)
            numbers[f"{fam}: Spearman(η²ε_θ, floor), secondary ({e})"] = rho[:3]
            n_bad = int(b["violations"].sum())
            if n_bad:
                bad = np.flatnonzero(b["violations"])
                i = int(bad[np.argmax(ys[bad] - xs[bad])])           # the largest violation
                v = REFUTED
                why = (f"{n_bad} of {b['pairs']} pairs violate the bound, e.g. world {worlds[i]}, concept "
                       f"{s['concept'].to_numpy()[ok][i]}: floor {fmt(ys[i])} > {fmt(xs[i])}")
            elif W < MIN_UNITS:
                v, why = INCONCLUSIVE, few(W)
            else:
                v, why = SUPPORTED, f"the bound holds in all {b['pairs']} pairs of {W} worlds"
            eq = (f"; ρ < {fmt(rho[2], 2)} with 95% confidence" if math.isfinite(rho[2]) else "")
            txt = (f"{fam}: {why}; slack log10(η²ε_θ / floor) median {fmt(b['median'])}, minimum {fmt(b['min'])} "
                   f"({e} estimator); Spearman {ci_text(rho)} (secondary{eq})")
            families[fam] = {"verdict": v, "text": txt,
                             "short": f"{b['pairs'] - n_bad}/{b['pairs']} pairs hold; slack ≥ 10^{fmt(b['min'], 2)}"}
            parts.append({"name": fam, "verdict": v, "text": txt})
            plot["families"][fam] = {"x": xs.tolist(), "y": ys.tolist(), "rho": list(rho[:3]),
                                     "violations": b["violations"].tolist()}
    note = failed_note(floors_all)
    text = ("; ".join(f["text"] for f in families.values()) or "no floors") + (f"; {note}" if note else "")
    reference = ("the normalised estimator's floors and the span-restricted bound beside the averaged one: "
                 + "; ".join(f"{k} {ci_text(v)}" for k, v in numbers.items()
                             if "(normalised)" in k or "(span)" in k))
    return CLAIM.result(overall(families), families, text, reference=reference, numbers=numbers, parts=parts,
                        plot=plot)


def judge(tables: dict, info: dict):
    return verdict(tables["converge.floors"])


def draw(result, fig) -> None:
    """The exact floor against η²ε_θ per (world, concept) pair, log-log, with the line
    floor = η²ε_θ (a pair above it violates the bound)."""
    plot = result.plot
    if not plot.get("families"):
        raise ValueError("no data for a figure")
    ax = fig.subplots()
    lo, hi = math.inf, -math.inf
    for i, (fam, d) in enumerate(plot["families"].items()):
        xs, ys = np.array(d["x"], float), np.array(d["y"], float)
        pos = (xs > 0) & (ys > 0)
        ax.plot(xs[pos], ys[pos], "o", ms=3.5, alpha=0.6, color=FAMILY_COLOURS[i % len(FAMILY_COLOURS)],
                label=f"{fam}: Spearman {ci_text(d['rho'])}")
        bad = np.array(d.get("violations", []), bool)
        if bad.any():
            ax.plot(xs[bad & pos], ys[bad & pos], "x", ms=7, color=MARK_COLOUR)
        if pos.any():
            lo, hi = min(lo, xs[pos].min(), ys[pos].min()), max(hi, xs[pos].max(), ys[pos].max())
    if math.isfinite(lo):
        ax.plot([lo, hi], [lo, hi], "-", color=REFERENCE_COLOUR, lw=0.8, label="floor = η²ε_θ (the bound)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("η²ε_θ (Theorem 1's bias term)")
    ax.set_ylabel(f"exact floor TV(limit, oracle), {plot.get('estimator', ESTIMATOR)}")
    ax.legend(fontsize=7, frameon=False)
    ax.grid(True, alpha=0.3)


CLAIM = Claim(ID, TITLE, KIND, SOURCE, SCOPE, RULE, reads=("converge.floors",), judge=judge, draw=draw)
