"""The n = 1..N experiment: the exact Bayesian predictive against the theory's kernel
estimators, on the same prompts, from one forward pass and one cumulative pass per prompt, with
the label-frequency baseline, the exact n -> ∞ limit of every estimate, and worlds as the unit
of the confidence intervals.

- :func:`run` is ``simkernel converge`` as a library call: worlds x prompt seeds -> a
  :class:`Convergence` (tidy rows, fits, per-concept floors, info).  It writes nothing.
- :func:`run_seed` is one (world, prompt seed); :func:`summarise` turns seeds into rows.
- The kernel side alone (``KernelSet``, ``kernel_values``, ``kernel_estimates``) lives in
  ``kernel``, shared with ``icl_eval`` and ``alignment``.

Nothing here prints or writes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import bayes, kernel
from .metrics import compare, fit_power_law, restrict, tie_agreement, tv, world_ci  # noqa: F401 (restrict: re-exported)
from .sampling import sample_prompt_set
from .store import provenance, world_summary
from .validate import check_ints
from .world import World

from .constants import (CONVERGENCE_COLUMNS, DEFAULT_N_SAMPLES, DEFAULT_RIDGE, FIT_N_MIN, FLOOR_COLUMNS,  # noqa: F401
                        KERNELS)
# the kernel pipeline lives in kernel.py; these names stay importable from here
from .kernel import (CONSTANT_RTOL, FEATURE_MEMORY_LIMIT, KernelSet, check_names, kernel_estimates,  # noqa: F401
                     kernel_spread, kernel_values)
#: Per n and (kernel, estimator), against exact Bayes (tv_limit: against the estimate's own n -> ∞ limit).
METRICS = ("l1", "tv", "kl", "agree", "acc", "tv_limit")
#: At n = inf: the limit against the oracle (l1 .. acc), against exact Bayes at the largest n
#: (tv_bayes), and the Monte Carlo standard error of the limit on the TV scale (limit_se).
LIMIT_METRICS = ("l1", "tv", "kl", "agree", "acc", "tv_bayes", "limit_se")
#: Metrics that are shares or probabilities (their intervals are clipped to [0, 1]; every
#: metric's lower end is clipped at 0).
BOUNDED = ("agree", "acc", "nonpositive_sum")
COLUMNS = CONVERGENCE_COLUMNS
#: The headline world of converge: GINC's construction, small, with the delimiter restart, where
#: the theory kernel varies within a prompt (docs/theory.md §19).
DEFAULT_PRESET = "ginc-small"
DEFAULT_N_DEMOS = tuple(range(1, 257))
#: What :meth:`Convergence.write` publishes.
FILES = ("convergence.csv", "floors.csv", "convergence.json", "convergence.png", "convergence.pdf")
#: The clipped estimator's per-concept floor needs K between all pairs of inputs: skipped above
#: this many inputs in a concept's sample.
CLIPPED_FLOOR_LIMIT = 4000
#: The estimators whose oracle-kernel floor the ridge identity bounds (``identity_bound``).
IDENTITY_ESTIMATORS = ("averaged", "normalised")
#: The ridge identity needs P(y | x, θ) = Uψ(x) exactly; a larger L1 residual over a concept's
#: inputs leaves its identity_bound NaN (round-off is ~1e-15).
LINEARITY_TOL = 1e-8


@dataclass
class SeedResult:
    """One (world, prompt seed): B prompts, N demonstrations, L labels.

    bayes    (B, N, L): exact posterior predictive over the labels with n = 1..N demonstrations
    oracle   (B, L): P(y | x_test, true concept) over the labels, x_test starting as a
             demonstration deep in a prompt does (the concept's start in a restart world)
    known    (B, N, L): P(y | the prompt, true concept); equal to ``oracle`` in a restart world
    y_test   (B,) index of the gold label in world.labels; concepts (B,); world int
    estimates {(kernel, estimator): (B, N, L) distribution over the labels}
    limits    {(kernel, estimator): (B, L) the n -> ∞ limit as a distribution}
    limit_se  {(kernel, estimator): (B,) its Monte Carlo standard error on the TV scale (0 exact)}
    nonpositive {kernel: (B, N) bool Σ_{i<=n} K(x_test, x_i) <= 0}; nonpositive_limit {kernel: (B,)}
    spread   {kernel: (B, 3) per prompt: coefficient of variation, distinct values, share of the
             most common value, of K(x_test, x_i) over the N demonstrations}
    info: Σ per kernel, impossible prompts, restart
    """

    bayes: np.ndarray
    oracle: np.ndarray
    known: np.ndarray
    y_test: np.ndarray
    concepts: np.ndarray
    world: int = 0
    estimates: dict = field(default_factory=dict)
    limits: dict = field(default_factory=dict)
    limit_se: dict = field(default_factory=dict)
    nonpositive: dict = field(default_factory=dict)
    nonpositive_limit: dict = field(default_factory=dict)
    spread: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


METRIC_DESCRIPTIONS = {
    "l1": "L1 distance over the label set to the exact posterior (= 2 x TV); our reading of the paper's "
          "undefined 'distance'",
    "tv": "total variation to the exact posterior",
    "kl": "KL(exact || estimate mixed with 1e-6 uniform)",
    "agree": "argmax == argmax of the exact posterior; a tie among m labels scores 1/m",
    "acc": "argmax == y_test; a tie among m labels scores 1/m",
    "tv_limit": "total variation between the estimate and its own n -> ∞ limit (the sampling term)",
    "nonpositive_sum": "share of prompts with Σ_i K(x_test, x_i) <= 0 (estimator '-'); the normalised "
                       "estimate is then the uniform distribution",
    "tv_bayes": "n = inf only: total variation between the limit and exact Bayes at the largest n",
    "limit_se": "n = inf only: Monte Carlo standard error of the limit (TV scale; 0 when exact)"}
NOTES = {
    "fit_note": "amplitude * n^slope + floor fitted to the mean TV between each estimate and its exact n -> ∞ "
                "limit over n_range (the sampling term; the central limit theorem gives slope -1/2 once n is "
                "large against the rare inputs that carry the kernel's variance); degenerate: the fit sits on "
                "a bound of its search and measures nothing",
    "per_world_note": "with several worlds: each world's own means of l1, tv, agree and acc (primary estimator; "
                      "kernel 'bayes': its accuracy) at the n listed under 'n', the spread behind the intervals "
                      "over worlds",
    "ci": "95%: mean of the world means ± t(0.975, W-1) · sd / √W when n_worlds > 1 (worlds are the unit; "
          "prompts within a world are pooled over its prompt seeds), else mean ± 1.96 · sd / √n over prompts; "
          "clipped to the metric's range (>= 0; <= 1 for agree, acc, nonpositive_sum)",
    "limit_rows": "n_demos = inf: the exact n -> ∞ limit of each estimate, scored against the oracle "
                  "P(y | x_test, true concept) (what exact Bayes tends to once the concept is identified); "
                  "l1/tv against the oracle is the bias floor",
    "reference_rows": {"bayes": "the exact posterior's own accuracy against y_test (estimator '-'; at inf, the "
                                "oracle's)",
                       "bayes-vs-oracle": "the exact posterior scored against the oracle",
                       "bayes-vs-known": "restart-free worlds only: the exact posterior against the concept-known "
                                         "predictive P(y | prompt, true concept), the concept-identification term"}}
#: The dtypes of the result's tables (``results.Table``; a column not named is a string).
CONVERGENCE_DTYPES = {"n_demos": "int", "mean": "float", "ci_low": "float", "ci_high": "float", "n_prompts": "int",
                      "n_worlds": "int"}
FLOOR_DTYPES = {"concept": "int", "prior": "float", "floor_tv": "float", "floor_se": "float", "exact": "bool",
                "eta": "float", "eps": "float", "eps_span": "float", "span_dim": "int", "eta2_eps": "float",
                "eta2_eps_span": "float", "identity_bound": "float"}
#: fits.csv: one row per kernel and estimator (:meth:`Convergence.fit_rows`).
FIT_COLUMNS = ("kernel", "estimator", "slope", "amplitude", "floor", "degenerate", "metric", "with_floor")
FIT_DTYPES = {"slope": "float", "amplitude": "float", "floor": "float", "degenerate": "bool", "with_floor": "bool"}
#: CSV values keep this many significant digits: far below the CI widths, and the tables (the
#: figure's only source) stay small.
DIGITS = 6


def _rounded(rows, columns):
    return [dict(r, **{c: float(f"{r[c]:.{DIGITS}g}") for c in columns}) for r in rows]


@dataclass
class Convergence:
    """What :func:`run` returns.  rows: tidy dicts with ``COLUMNS``; fits: 'kernel/estimator' ->
    the power-law fit of the mean TV between the estimate and its limit; floors: per world and
    concept rows with ``FLOOR_COLUMNS``; info: spreads, warnings, Σ, ε_θ rank correlations, ...;
    meta: the config, seeds, versions and everything else of ``convergence.json``."""

    rows: list
    fits: dict
    floors: list
    info: dict
    results: list = field(default_factory=list, repr=False)
    meta: dict = field(default_factory=dict)

    def write(self, out) -> list:
        """Publish ``FILES`` into the folder ``out`` (created if needed): convergence.csv, floors.csv,
        convergence.json and the figure as .png and .pdf, all complete before any is renamed in."""
        from pathlib import Path

        from .plots import plot_convergence
        from .store import check_results_dir, publish, write_csv, write_json

        out = check_results_dir(Path(out))
        rows, floors = self.rounded()
        meta = dict(self.meta, config=dict(self.meta.get("config", {}), out=str(out)))
        title = meta.get("title", "")
        return publish(out, {
            "convergence.csv": lambda p: write_csv(p, rows, COLUMNS),
            "floors.csv": lambda p: write_csv(p, floors, FLOOR_COLUMNS),
            "convergence.json": lambda p: write_json(p, meta),
            # one drawing makes both: the pdf lands beside the png in the temp folder
            "convergence.png": lambda p: plot_convergence(rows, meta["fits"], p, p.with_suffix(".pdf"), title=title),
            "convergence.pdf": lambda p: None})

    def summary_lines(self) -> list[str]:
        """What ``simkernel converge`` prints: the setting, :func:`summary_lines`, the bias-term
        correlation and the impossible prompts (the warnings are in ``info["warnings"]``)."""
        cfg, info = self.meta["config"], self.info
        n_w, seeds = info["n_worlds"], cfg["seeds"]
        ns = sorted({r["n_demos"] for r in self.rows if r["n_demos"] != float("inf")})
        kernels, estimators = tuple(cfg["kernels"]), tuple(cfg["estimators"])
        out = [self.meta.get("world_repr", "") + (f" x {n_w} worlds (seeds {', '.join(map(str, info['worlds']))})"
                                                   if n_w > 1 else ""),
               f"{cfg['n_prompts']} prompts x {len(seeds)} seed{'s' if len(seeds) > 1 else ''} "
               f"({', '.join(map(str, seeds))}){' per world' if n_w > 1 else ''}, example length "
               f"{cfg['example_length']}, concepts {cfg['concepts']}, {cfg['features']} features, n = {cfg['n_demos']}, "
               f"limits {'exact' if info['limits_exact'] else 'from %d Monte Carlo inputs' % cfg['n_samples']}"]
        out += summary_lines(self.rows, self.fits, ns, kernels, estimators, info)
        bt = info.get("bias_term", {}).get("averaged") if "averaged" in estimators else None
        # the theory's bias term bounds the averaged estimator (population least squares, §9)
        if bt and bt.get("n_pairs", 0) >= 10 and math.isfinite(bt.get("rho", float("nan"))):
            out.append(f"exact theory floor (averaged) against η²ε_θ over {bt['n_pairs']} (world, concept) pairs: "
                       f"Spearman {bt['rho']:.2f} (p = {bt['p_value']:.2g}); with ε_θ on the span of each "
                       f"concept's inputs {bt['rho_span']:.2f} (p = {bt['p_value_span']:.2g})")
        bad = self.meta["impossible_prompts"]
        if bad["total"]:
            out.append(f"prompts impossible under the pretraining mixture (left out where undefined): "
                       f"{bad['total']} of {bad['of']}")
        return out

    def rounded(self) -> tuple[list, list]:
        """(rows, floors) with their floats at ``DIGITS`` significant digits, as written."""
        return (_rounded(self.rows, ("mean", "ci_low", "ci_high")),
                _rounded(self.floors, ("floor_tv", "floor_se", "eta", "eps", "eps_span", "eta2_eps",
                                       "eta2_eps_span", "identity_bound")))

    def fit_rows(self) -> list[dict]:
        """One row per kernel and estimator with ``FIT_COLUMNS``: the power-law fit of the mean TV
        between the estimate and its limit (``meta['fits']``, as convergence.json holds it)."""
        return [dict(kernel=k.split("/")[0], estimator=k.split("/")[1], **{c: f.get(c) for c in FIT_COLUMNS[2:]})
                for k, f in self.meta["fits"].items()]

    def tables(self) -> dict:
        """The result protocol's tables: convergence.csv (main), floors.csv ('floors') and the
        derived fits.csv ('fits', written by the sweep, not by :meth:`write`)."""
        from .results import Table, label_dtype

        rows, floors = self.rounded()
        floor_dtypes = dict(FLOOR_DTYPES, world=label_dtype(r["world"] for r in floors))
        return {None: Table("convergence.csv", COLUMNS, CONVERGENCE_DTYPES, rows),
                "floors": Table("floors.csv", FLOOR_COLUMNS, floor_dtypes, floors),
                "fits": Table("fits.csv", FIT_COLUMNS, FIT_DTYPES, self.fit_rows())}


# ---------------------------------------------------------------------- one (world, seed)
def run_seed(world: World, n_max: int, example_length: int, n_prompts: int, seed: int = 0,
             kernels=KERNELS, estimators=kernel.ESTIMATORS, features: str = "belief", concepts="prior",
             n_samples: int = DEFAULT_N_SAMPLES, ridge: float = DEFAULT_RIDGE, progress=None, kernel_set: KernelSet | None = None,
             world_id: int = 0) -> SeedResult:
    """Sample prompts (``concepts``: 'prior', 'id', 'ood' or a concept index; see
    sampling.sample_prompt_set), compute the exact Bayes curve for n = 1..n_max, every requested
    kernel estimate and its exact n -> ∞ limit."""
    check_names(kernels, estimators)
    tick = progress or (lambda _msg: None)
    labels = world.labels
    prompts = sample_prompt_set(world, n_prompts, n_max, example_length, seed=seed, concepts=concepts)
    tick("exact Bayes")
    curve = bayes.icl_curve(world, prompts)
    ks = kernel_set or KernelSet(world, example_length, features, n_samples, ridge, seed)
    label_index = np.full(world.n_symbols, -1)
    label_index[labels] = np.arange(len(labels))
    if world.restart:
        oracle = restrict(curve.oracle, labels)
    else:   # x_test as a demonstration deep inside a prompt starts (the kernel's target)
        oracle = restrict(bayes.oracle_predictive(ks.ew, prompts.x_test(), prompts.concepts), labels)
    res = SeedResult(bayes=restrict(curve.predictive[:, 1:], labels), oracle=oracle,
                     known=restrict(curve.known[:, 1:], labels), y_test=label_index[prompts.y_test],
                     concepts=prompts.concepts, world=world_id)
    res.info["impossible_prompts"] = int(np.isnan(curve.predictive[:, -1]).any(axis=-1).sum())
    res.info["restart"] = bool(world.restart)
    res.info["limits_exact"] = world_inputs_enumerable(world, example_length)
    values, info = kernel_values(world, prompts, kernels, features=features, n_samples=n_samples, ridge=ridge,
                                 seed=seed, progress=progress, kernel_set=ks, limits_for=estimators)
    for kname, kv in values.items():
        res.nonpositive[kname] = np.cumsum(kv, axis=1) <= 0
        res.nonpositive_limit[kname] = ~(info["limit_den"][kname] > 0)
        res.spread[kname] = kernel_spread(kv)
        for e in estimators:
            res.estimates[(kname, e)] = kernel.to_distribution(kernel.estimates(kv, prompts.labels, labels, e), e)
            lm = info["limits"][(kname, e)]
            res.limits[(kname, e)] = kernel.to_distribution(lm.scores, e)
            res.limit_se[(kname, e)] = lm.se.sum(axis=-1) / 2
    res.info.update({k: v for k, v in info.items() if k not in ("limits", "limit_den")})
    return res


# ---------------------------------------------------------------------- per-concept floors
def concept_floors(ks: KernelSet, concepts, kernels=KERNELS, estimators=kernel.ESTIMATORS,
                   world_label=0) -> list[dict]:
    """The exact bias floor of every (kernel, estimator) for each concept θ: the mean over
    x* ~ q_θ (the concept's demonstration inputs, enumerated or sampled) of TV(limit(x*),
    P(y | x*, θ)), with the theory's bias ingredients for the theory kernel: η = max ‖ψ(x)‖₂ over
    θ's inputs, ε_θ = ρ(Σ_pre⁻¹ − Σ_θ⁻¹) and ε_θ restricted to the span of θ's features
    (:func:`kernel.epsilon_theta`).  The linear estimators use the population moments (no Gram
    matrix over all pairs); ``clipped`` needs one and is computed only up to CLIPPED_FLOOR_LIMIT
    inputs.

    ``identity_bound`` (oracle kernel, averaged and normalised estimators, belief features; NaN
    on every other row): the bound the ridge identity puts on ``floor_tv``, the same weighted mean
    over x* ~ q_θ of :func:`identity_bounds` of δ(x*) = ``kernel.ridge_bias_bound``
    (docs/theory.md §18).  Rows with ``FLOOR_COLUMNS``."""
    out = []
    for c in concepts:
        con = ks.concept(c, need_psi=True, need_pred="similarity" in kernels)
        s = con.sample
        w, J = s.weights, s.joint                                         # (M,), (M, L)
        oracle = s.label_probs
        M = len(w)
        delta = None                                                      # (M,) δ(x*) per input
        if "oracle" in kernels and ks.features == "belief" and set(estimators) & set(IDENTITY_ESTIMATORS):
            readout = kernel.belief_readout(ks.ew, c)                     # (L, D)
            if np.abs(con.psi @ readout.T - oracle).sum(axis=1).max(initial=0.0) <= LINEARITY_TOL:
                delta = kernel.ridge_bias_bound(con.model, con.psi, readout)
        extra = {"eta": float(np.linalg.norm(con.psi, axis=1).max()), "eps": np.nan, "eps_span": np.nan,
                 "span_dim": -1}
        pre = ks.theory()
        if pre.form == "dense" and con.model.form == "dense":
            basis = kernel.support_basis(con.psi)
            extra.update(eps=kernel.epsilon_theta(pre, con.model),
                         eps_span=kernel.epsilon_theta(pre, con.model, basis), span_dim=int(basis.shape[1]))
        for kn in kernels:
            if kn in ("theory", "oracle"):
                model = ks.theory() if kn == "theory" else con.model
                A = model.precision_times(np.concatenate([con.psi.T @ J, (con.psi.T @ w)[:, None]], axis=1))
                lin = con.psi @ A                                          # (M, L+1)
            elif kn == "similarity":
                lin = con.pred @ np.concatenate([con.pred.T @ J, (con.pred.T @ w)[:, None]], axis=1)
            else:
                lin = np.broadcast_to(np.concatenate([J.sum(0), [1.0]]), (M, J.shape[1] + 1))
            for e in estimators:
                if e == "clipped":
                    if M > CLIPPED_FLOOR_LIMIT:
                        continue
                    demo = {"n": M, "psi": con.psi, "pred": con.pred}
                    G = np.clip(ks.gram(kn, demo, demo, c), 0.0, None)
                    scores = kernel.ratio(G @ J, (G @ w)[:, None])
                elif e == "averaged":
                    scores = lin[:, :-1]
                else:
                    scores = kernel.ratio(lin[:, :-1], lin[:, -1:])
                d = tv(kernel.to_distribution(scores, e), oracle, axis=1)
                floor = float(w @ d)
                se = 0.0 if s.exact else float(d.std(ddof=1) / np.sqrt(M)) if M > 1 else np.nan
                row = {"world": world_label, "concept": int(c), "prior": float(ks.world.prior[c]), "kernel": kn,
                       "estimator": e, "floor_tv": floor, "floor_se": se, "exact": bool(s.exact)}
                row.update(extra)
                row["eta2_eps"] = row["eta"] ** 2 * row["eps"]
                row["eta2_eps_span"] = row["eta"] ** 2 * row["eps_span"]
                row["identity_bound"] = (float(w @ identity_bounds(delta, e))
                                         if kn == "oracle" and delta is not None and e in IDENTITY_ESTIMATORS
                                         else float("nan"))
                out.append(row)
    return out


def identity_bounds(delta: np.ndarray, estimator: str) -> np.ndarray:
    """Per test input, the bound that the ridge identity with Σ_θ* puts on TV(to_distribution(
    limit, estimator), oracle), from δ (U,) = ``kernel.ridge_bias_bound`` >= ‖f_∞ − oracle‖₁:
    averaged δ/2; normalised min(δ/(1 − δ), 1), 1 where δ >= 1.  (U,).  Derivation in
    docs/theory.md §18: the normalised scores g = f_∞/m_∞ sum to 1, so clipping their negative
    part and renormalising does not increase ‖g − oracle‖₁ <= 2δ/(1 − δ), and TV is half of it.

    The averaged estimate is not renormalised, so its TV to the oracle can exceed 1: its bound
    keeps δ/2 uncapped (a cap at 1 would not be a bound once δ >= 2)."""
    delta = np.asarray(delta, np.float64)
    if estimator == "averaged":
        return delta / 2
    if estimator == "normalised":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(delta < 1, np.minimum(delta / (1 - delta), 1.0), 1.0)
    raise ValueError(f"estimator {estimator!r} has no ridge-identity bound; allowed: {', '.join(IDENTITY_ESTIMATORS)}")


def bias_term_correlation(floors: list[dict], kernel_name: str = "theory") -> dict:
    """Spearman rank correlation over (world, concept) pairs between the exact floor of each
    estimator of ``kernel_name`` and the theory's bias term η²ε_θ (full and span-restricted).
    {estimator: {'n_pairs', 'rho', 'p_value', 'rho_span', 'p_value_span'}}; NaN with < 4 pairs."""
    from scipy.stats import spearmanr

    out = {}
    for e in sorted({r["estimator"] for r in floors if r["kernel"] == kernel_name}):
        sel = [r for r in floors if r["kernel"] == kernel_name and r["estimator"] == e
               and np.isfinite(r["floor_tv"])]
        entry = {"n_pairs": len(sel)}
        for key, col in (("", "eta2_eps"), ("_span", "eta2_eps_span")):
            x = np.array([r[col] for r in sel], float)
            y = np.array([r["floor_tv"] for r in sel], float)
            ok = np.isfinite(x) & np.isfinite(y)
            # floors at round-off level (a kernel exact in the limit) have no ranks to compare
            if ok.sum() >= 4 and np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 1e-9:
                rho, p = spearmanr(x[ok], y[ok])
                entry["rho" + key], entry["p_value" + key] = float(rho), float(p)
            else:
                entry["rho" + key], entry["p_value" + key] = float("nan"), float("nan")
        out[e] = entry
    return out


# ---------------------------------------------------------------------- tidy tables
def summarise(results: list[SeedResult], n_demos, n_fit_min: int = FIT_N_MIN) -> tuple[list[dict], dict]:
    """Pool the prompts of every seed; for each requested n, every (kernel, estimator) and every
    metric: the mean and a 95% CI with worlds as the unit (metrics.world_ci; over prompts when
    there is one world).  Rows at n_demos = inf hold the exact limits.  Reference rows: kernel
    'bayes' (the exact posterior's own accuracy; at inf the oracle's), 'bayes-vs-oracle' (Bayes
    scored against the oracle) and, in restart-free worlds, 'bayes-vs-known' (against the
    concept-known predictive: the concept-identification term).

    Returns (rows with ``COLUMNS``, fits): fits maps 'kernel/estimator' to the power-law fit
    (metrics.PowerLaw.as_dict) of the mean TV between the estimate and its limit over
    n = n_fit_min..N."""
    n_demos = np.asarray(sorted(set(int(n) for n in n_demos)))
    cat = lambda get: np.concatenate([get(r) for r in results])  # noqa: E731
    bayes_all, oracle_all, y_all = cat(lambda r: r.bayes), cat(lambda r: r.oracle), cat(lambda r: r.y_test)
    worlds = cat(lambda r: np.full(len(r.y_test), r.world))
    N = bayes_all.shape[1]
    rows, fits = [], {}

    def add(kname, est, per_prompt, ns=n_demos, inf=False):
        for metric, arr in per_prompt.items():
            arr = np.asarray(arr, np.float64)
            if arr.ndim == 1:
                arr = arr[:, None]
            m, lo, hi, cnt, nw = world_ci(arr, worlds)
            # a t-interval over a few worlds can leave the metric's range: clip it to the range
            lo = np.maximum(lo, 0.0)
            if metric in BOUNDED:
                hi = np.minimum(hi, 1.0)
            for j, n in enumerate([np.inf] if inf else ns):
                col = 0 if inf or arr.shape[1] == 1 else n - 1
                rows.append(dict(n_demos=float("inf") if inf else int(n), estimator=est, kernel=kname, metric=metric,
                                 mean=float(m[col]), ci_low=float(lo[col]), ci_high=float(hi[col]),
                                 n_prompts=int(cnt[col]), n_worlds=int(nw[col])))

    fit_n = np.arange(1, N + 1)
    keys = list(results[0].estimates)
    for key in keys:
        q = cat(lambda r: r.estimates[key])
        lim = cat(lambda r: r.limits[key])
        per = compare(bayes_all, q, y_all)
        per["tv_limit"] = tv(q, lim[:, None])
        add(key[0], key[1], per)
        mean_tv = np.nanmean(per["tv_limit"], axis=0)
        lo = min(max(1, n_fit_min), max(1, N - 3))
        # an exact limit leaves no floor to fit; a Monte Carlo one leaves its own error
        exact = all(r.info.get("limits_exact", True) for r in results)
        fit = fit_power_law(fit_n[lo - 1:], mean_tv[lo - 1:], floor=not exact)
        fits[f"{key[0]}/{key[1]}"] = fit.as_dict(metric="tv_limit", n_range=[int(lo), int(N)],
                                                 with_floor=not exact)
        inf = compare(oracle_all, lim, y_all)
        inf["tv_bayes"] = tv(bayes_all[:, -1], lim)
        inf["limit_se"] = cat(lambda r: r.limit_se[key])
        add(key[0], key[1], inf, inf=True)
    for kname in results[0].nonpositive:
        add(kname, "-", {"nonpositive_sum": cat(lambda r: r.nonpositive[kname]).astype(float)})
        add(kname, "-", {"nonpositive_sum": cat(lambda r: r.nonpositive_limit[kname]).astype(float)}, inf=True)
    from .metrics import tie_accuracy
    add("bayes", "-", {"acc": tie_accuracy(bayes_all, y_all)})
    add("bayes", "-", {"acc": tie_accuracy(oracle_all, y_all)}, inf=True)
    vs = compare(np.broadcast_to(oracle_all[:, None], bayes_all.shape), bayes_all, y_all)
    add("bayes-vs-oracle", "-", {k: vs[k] for k in ("l1", "tv", "kl", "agree")})
    if not all(r.info.get("restart", True) for r in results):
        known = cat(lambda r: r.known)
        vk = compare(known, bayes_all, y_all)
        add("bayes-vs-known", "-", {k: vk[k] for k in ("l1", "tv", "kl", "agree")})
    return rows, fits


def spread_summary(results: list[SeedResult]) -> dict:
    """Per kernel, over every prompt: the median coefficient of variation, median number of
    distinct values and median modal share of K(x_test, x_i) within a prompt, and the share of
    prompts where the kernel is constant (one value)."""
    out = {}
    for kname in results[0].spread:
        sp = np.concatenate([r.spread[kname] for r in results])
        out[kname] = {"median_cv": float(np.median(sp[:, 0])), "median_distinct": float(np.median(sp[:, 1])),
                      "median_modal_share": float(np.median(sp[:, 2])),
                      "constant_fraction": float(np.mean(sp[:, 1] == 1))}
    return out


def spread_warnings(spread: dict) -> list[str]:
    """One line per kernel (other than 'frequency') that is constant, or nearly so, within the
    prompts: its estimate is then the label frequencies."""
    out = []
    for kname, s in spread.items():
        if kname == "frequency":
            continue
        if s["constant_fraction"] >= 0.5 or s["median_modal_share"] >= 0.95:
            out.append(f"the {kname} kernel is constant within prompts (one value in "
                       f"{s['constant_fraction']:.0%} of them; median share of the most common value "
                       f"{s['median_modal_share']:.2f}): its estimate is the label frequencies")
    return out


# ---------------------------------------------------------------------- the whole experiment
def _worlds(worlds, world_labels, world_source, preset, world_seeds, overrides, world_file):
    """(worlds, labels, source) of :func:`run`: the worlds given, or built by ``resolve_worlds``."""
    if worlds is None:
        from .presets import resolve_worlds

        worlds, world_labels, world_source, _ = resolve_worlds(preset, world_seeds, overrides, world_file,
                                                               default=DEFAULT_PRESET)
    elif preset is not None or overrides or world_file is not None:
        raise ValueError("worlds are given; preset, overrides and world_file describe worlds to build instead")
    worlds = [worlds] if isinstance(worlds, World) else list(worlds)
    if not worlds:
        raise ValueError("worlds is empty: give at least one world")
    return worlds, world_labels, world_source


def _n_samples(world: World, example_length: int, n_samples):
    """``n_samples``, or the default where the world's inputs can be enumerated (else an error)."""
    if n_samples is not None:
        return n_samples
    if not world_inputs_enumerable(world, example_length):
        V = world.n_symbols
        raise ValueError(f"n_samples is required: this world's {V}^{example_length - 1} = "
                         f"{V ** (example_length - 1):,} inputs are too many to enumerate (limit "
                         f"{kernel.EXACT_LIMIT:,}); give n_samples=N Monte Carlo inputs for Σ and the limits, "
                         f"e.g. {DEFAULT_N_SAMPLES}")
    return DEFAULT_N_SAMPLES


def per_world_means(results: list[SeedResult], ns, labels, kernels, estimators) -> dict:
    """Each world's own means at the powers of two, the largest n and the limit (the spread behind
    an interval over worlds): {"n": [...], "estimator": e, world: {kernel: {metric: [...]}}}."""
    shown = sorted({n for n in ns if n & (n - 1) == 0} | {ns[-1]})
    est = "normalised" if "normalised" in estimators else estimators[0]
    per_world = {"n": shown + ["inf"], "estimator": est}
    for wi, wl in enumerate(labels):
        wrows, _ = summarise([r for r in results if r.world == wi], shown)
        got = {(r["n_demos"], r["kernel"], r["metric"]): r["mean"] for r in wrows if r["estimator"] in (est, "-")}
        per_world[str(wl)] = {
            k: {m: [got.get((n, k, m)) for n in shown + [float("inf")]] for m in ("l1", "tv", "agree", "acc")}
            for k in (*kernels, "bayes")}
    return per_world


def run(worlds=None, n_demos=DEFAULT_N_DEMOS, example_length: int = 3, n_prompts: int = 200, seeds=(0,),
        kernels=KERNELS, estimators=kernel.ESTIMATORS, features: str = "belief", concepts="prior",
        n_samples: int | None = None, ridge: float = DEFAULT_RIDGE, world_labels=None, floors: bool = True,
        world_source=None, progress=None, *, preset: str | None = None, world_seeds=(0,), overrides=None,
        world_file=None) -> Convergence:
    """``simkernel converge`` as a library call.

    The worlds: ``worlds`` (a World or a list of Worlds), or else ``preset`` (default
    ``ginc-small``, the headline world) built at each of ``world_seeds`` with ``overrides``, or
    ``world_file``.  n_demos: the n to report (prompts hold max(n) demonstrations); seeds: prompt
    seeds, each run in every world (the first also draws the Monte Carlo inputs of Σ where those
    are sampled); n_samples: Monte Carlo inputs for Σ and the limits, required when the
    V^(k-1) inputs are more than ``EXACT_LIMIT``; world_labels: a name per world for the
    floors table (default: its world seed, else its index).  ``progress(message, done)`` is
    called before each stage, ``done`` the number of finished (world, seed) runs;
    ``world_source`` is recorded as the config's world (how the worlds were made).  Returns a
    :class:`Convergence` (``meta`` is the JSON); writes nothing (see :meth:`Convergence.write`)."""
    t0 = time.perf_counter()
    worlds, world_labels, world_source = _worlds(worlds, world_labels, world_source, preset, world_seeds, overrides,
                                                 world_file)
    for w in worlds:
        check_concepts(concepts, w)
    n_samples = _n_samples(worlds[0], example_length, n_samples)
    ns = check_ints("n_demos", n_demos, 1)
    seeds = check_ints("seeds", seeds, 0, distinct=True)
    kernels, estimators = tuple(kernels), tuple(estimators)
    check_names(kernels, estimators)
    labels = list(world_labels) if world_labels is not None else [w.meta.get("seed", i) for i, w in enumerate(worlds)]
    if len(set(map(str, labels))) != len(labels):
        labels = list(range(len(worlds)))
    tick = progress or (lambda _msg, _done: None)
    results, floor_rows, sigma = [], [], {}
    for wi, (world, wl) in enumerate(zip(worlds, labels)):
        ks = KernelSet(world, example_length, features, n_samples, ridge, seeds[0])
        for s in seeds:
            done = len(results)
            res = run_seed(world, ns[-1], example_length, n_prompts, seed=s, kernels=kernels, estimators=estimators,
                           features=features, concepts=concepts, n_samples=n_samples, ridge=ridge,
                           progress=lambda m, wl=wl, s=s, done=done: tick(f"world {wl}, seed {s}: {m}", done),
                           kernel_set=ks, world_id=wi)
            results.append(res)
            sigma[f"{wl}/{s}"] = {k: v for k, v in res.info.items() if k in ("theory", "oracle")}
        if floors:
            # every concept, those no prompt drew included: a floor needs no prompts
            tick(f"world {wl}: floors per concept", len(results))
            floor_rows += concept_floors(ks, range(world.n_concepts), kernels, estimators, world_label=wl)
    rows, fits = summarise(results, ns)
    spread = spread_summary(results)
    per_world = per_world_means(results, ns, labels, kernels, estimators) if len(worlds) > 1 else {}
    impossible = {f"{labels[r.world]}/{s}": int(r.info.get("impossible_prompts", 0))
                  for r, s in zip(results, [s for _ in worlds for s in seeds])}
    info = {"spread": spread, "warnings": spread_warnings(spread), "sigma": sigma, "per_world": per_world,
            "impossible_prompts": impossible, "n_worlds": len(worlds), "worlds": labels,
            "restart": [bool(w.restart) for w in worlds],
            "limits_exact": world_inputs_enumerable(worlds[0], example_length),
            "bias_term": bias_term_correlation(floor_rows) if floor_rows and "theory" in kernels else {}}
    if not all(w.restart for w in worlds):
        info["warnings"].append("a restart-free world breaks the theory's Assumption 1 (the hidden state runs on "
                                "through the delimiter): kernels and limits use the inputs as they occur after a "
                                "delimiter, and 'bayes-vs-known' is the concept-identification term")
    config = {"command": "converge", "world": world_source if world_source is not None else
              [w.meta for w in worlds], "n_demos": ns, "example_length": example_length, "n_prompts": n_prompts,
              "seeds": seeds, "world_labels": labels, "concepts": concepts, "estimators": list(estimators),
              "kernels": list(kernels), "features": features, "ridge": ridge, "n_samples": n_samples}
    config["n_demos"] = bayes.format_n_demos(ns)
    config["world_seeds"] = labels if world_source is not None and "preset" in world_source else None
    meta = provenance(config, {"prompt": seeds, "world": labels}, extra_packages=("matplotlib",))
    meta.update(title=_title(worlds, world_source, example_length, n_prompts, seeds, concepts, features),
                world=world_summary(worlds[0]), world_repr=repr(worlds[0]), n_worlds=len(worlds), fits=fits,
                spread=spread,
                warnings=info["warnings"], sigma=sigma, per_world=per_world, limits_exact=info["limits_exact"],
                bias_term=info["bias_term"],
                impossible_prompts={"per_world_seed": impossible, "total": sum(impossible.values()),
                                    "of": n_prompts * len(seeds) * len(worlds)},
                elapsed_s=round(time.perf_counter() - t0, 3), columns=list(COLUMNS),
                floor_columns=list(FLOOR_COLUMNS), metrics=METRIC_DESCRIPTIONS, **NOTES)
    return Convergence(rows, fits, floor_rows, info, results, meta)


def check_concepts(concepts, world: World) -> None:
    """``concepts`` ('prior', 'id', 'ood' or a concept index) must name concepts of ``world``."""
    if isinstance(concepts, (int, np.integer)) and not isinstance(concepts, bool):
        if not 0 <= concepts < world.n_concepts:
            raise ValueError(f"concepts={concepts} is not a concept of this world; allowed: prior, id, ood or "
                             f"0..{world.n_concepts - 1}")
    elif concepts in ("id", "ood"):
        if not np.any(world.prior > 0 if concepts == "id" else world.prior == 0):
            raise ValueError(f"concepts={concepts}: the world has no {'in' if concepts == 'id' else 'out-of'}-"
                             f"distribution concepts (prior {'> 0' if concepts == 'id' else '= 0'})")
    elif concepts != "prior":
        raise ValueError(f"concepts must be prior, id, ood or a concept index, got {concepts!r}")


def _title(worlds, source, example_length, n_prompts, seeds, concepts, features) -> str:
    """The figure's title: where the worlds came from and the sampling behind every curve."""
    from pathlib import Path

    world, n_w = worlds[0], len(worlds)
    source = source or {}
    name = source.get("preset") or Path(source.get("file", "world")).name
    many = f" x {n_w} worlds" if n_w > 1 else ""
    return (f"{name}{many}: K={world.n_concepts} concepts, S={world.n_states} states, V={world.n_symbols} "
            f"symbols, {len(world.labels)} labels{'' if world.restart else ', no restart'}; k={example_length}, "
            f"{n_prompts} prompts x {len(seeds)} seed{'s' if len(seeds) > 1 else ''}{' per world' if n_w > 1 else ''}, "
            f"concepts {concepts}, {features} features")


def world_inputs_enumerable(world: World, example_length: int) -> bool:
    """True when the V^(k-1) inputs are enumerated (Σ and the limits exact), else Monte Carlo."""
    return world.n_symbols ** (example_length - 1) <= kernel.EXACT_LIMIT


# ---------------------------------------------------------------------- the printed summary
def _shown_ns(ns) -> list[int]:
    """The n printed in the table: the powers of two among the requested n, and the largest
    (every requested n when there are at most 10)."""
    if len(ns) <= 10:
        return list(ns)
    shown = [n for n in ns if n & (n - 1) == 0]
    if ns[-1] not in shown:
        shown.append(ns[-1])
    return shown


def _cell(r, digits: int = 3) -> str:
    """mean ± CI half-width of a row (or n/a)."""
    if r is None or not math.isfinite(r["mean"]):
        return "n/a"
    half = (r["ci_high"] - r["ci_low"]) / 2
    return f"{r['mean']:.{digits}f} ± {half:.{digits}f}" if math.isfinite(half) else f"{r['mean']:.{digits}f}"


def _share(r) -> str:
    return "n/a" if r is None or not math.isfinite(r["mean"]) else f"{100 * r['mean']:.0f}%"


def primary_estimator(estimators) -> str:
    """The estimator of the printed tables and the figure: normalised when computed (the
    theory's ŷ = Σ y_i K / Σ K), else the first one."""
    return "normalised" if "normalised" in estimators else estimators[0]


def summary_lines(rows, fits, ns, kernels, estimators, info=None) -> list[str]:
    """The printed summary (numbers straight from the tidy rows, fits and info of
    ``convergence.run``):

    1. the within-prompt spread of each kernel (does it do more than count labels?);
    2. per shown n and at n = ∞ (the exact limit, against the oracle): TV to exact Bayes of every
       kernel with the primary estimator, beside exact Bayes' own distance to the oracle;
    3. the same for the tie-fair argmax agreement;
    4. per kernel and estimator: the floor (the limit's TV to exact Bayes at the largest n and to
       the oracle), the fitted slope of TV(estimate_n, limit), and the share of prompts whose
       kernel sum is <= 0."""
    by = {(r["n_demos"], r["kernel"], r["estimator"], r["metric"]): r for r in rows}
    inf = float("inf")
    est = primary_estimator(estimators)
    n_worlds = max((r.get("n_worlds", 1) for r in rows), default=1)
    unit = "worlds (prompts within worlds)" if n_worlds > 1 else "prompts"
    out = []
    spread = (info or {}).get("spread", {})
    if spread:
        parts = [f"{k} CV {s['median_cv']:.2f}, {s['median_distinct']:.0f} distinct values"
                 for k, s in spread.items() if k != "frequency"]
        if parts:
            out.append(f"K(x_test, x_i) within a prompt at n = {ns[-1]} (medians over prompts): " + "; ".join(parts))
    known = any(r["kernel"] == "bayes-vs-known" for r in rows)
    w = 15
    head = "".join(f"{k:>{w}}" for k in kernels)
    shown = _shown_ns(ns)
    out.append(f"TV to the exact posterior, {est} estimator (mean ± 95% CI over {unit}); "
               f"n = ∞: the exact limit against the oracle")
    out.append(f"{'n':>5}{head}{'Bayes-oracle':>{w}}" + (f"{'Bayes-known':>{w}}" if known else ""))
    for n in shown + [inf]:
        cells = "".join(f"{_cell(by.get((n, k, est, 'tv'))):>{w}}" for k in kernels)
        ref = "" if n == inf else f"{_cell(by.get((n, 'bayes-vs-oracle', '-', 'tv'))):>{w}}"
        if known and n != inf:
            ref += f"{_cell(by.get((n, 'bayes-vs-known', '-', 'tv'))):>{w}}"
        out.append(f"{'∞' if n == inf else n:>5}{cells}{ref}")
    out.append(f"argmax agreement with the exact posterior, {est} estimator (a tie among m labels scores 1/m)")
    out.append(f"{'n':>5}{head}{'Bayes acc':>{w}}")
    for n in shown + [inf]:
        cells = "".join(f"{_cell(by.get((n, k, est, 'agree'))):>{w}}" for k in kernels)
        out.append(f"{'∞' if n == inf else n:>5}{cells}{_cell(by.get((n, 'bayes', '-', 'acc'))):>{w}}")
    n_max = ns[-1]
    lo = next((f.get("n_range", [1])[0] for f in fits.values()), 1)
    out.append(f"exact limits (n → ∞): floor = TV(limit, exact Bayes at n = {n_max}) and TV(limit, oracle); "
               f"slope of TV(estimate_n, limit) over n = {lo}..{n_max} (central limit: -0.5); Σ_i K <= 0")
    out.append(f"{'kernel':<11} {'estimator':<10} {'floor vs Bayes':>15} {'vs oracle':>15} {'slope':>7}  "
               f"{'Σ K <= 0 at n = 1 / ' + str(n_max) + ' / ∞'}")
    for kn in kernels:
        for e in estimators:
            f = fits.get(f"{kn}/{e}", {})
            slope = f.get("slope", float("nan"))
            s_txt = f"{slope:>7.3f}" if math.isfinite(slope) else f"{'n/a':>7}"
            if f.get("degenerate"):
                s_txt += " (degenerate fit)"
            nonpos = "" if kn == "frequency" else " / ".join(
                _share(by.get((n, kn, "-", "nonpositive_sum"))) for n in (1, n_max, inf))
            out.append(f"{kn:<11} {e:<10} {_cell(by.get((inf, kn, e, 'tv_bayes'))):>15} "
                       f"{_cell(by.get((inf, kn, e, 'tv'))):>15} {s_txt}  {nonpos}".rstrip())
    return out
