"""Where the kernel estimators' central-limit regime begins, and where the kernel overtakes label
counting: ``simkernel regime`` (docs/theory.md §22).

Theorem 1's sampling term is an asymptotic statement: the error of an estimate from n i.i.d.
demonstrations shrinks like n^(-1/2) *once n is large*.  A slope fitted over a fixed window of n
cannot refute it when the window is still pre-asymptotic, so this experiment finds, per world,
where the asymptotic regime begins and judges the rate only past it:

- the exact asymptotic law of every estimator (``kernel.asymptotic_laws``: the covariance of a
  mean of i.i.d. vectors for the averaged estimator, the delta method for the normalised one)
  predicts E TV(estimate_n, limit) ≈ c / √n for each prompt;
- the measured mean TV over prompts, divided by the predicted one, tends to 1; the regime begins
  at the first n from which that ratio stays within 1 ± ``band``;
- the crossover n× at which the kernel's TV to exact Bayes falls below the label frequencies' for
  good, with a bootstrap interval over prompts, beside the one the asymptotic laws predict.

Long prompts are cheap here because the world restarts at every delimiter (Assumption 1): the
demonstrations of a prompt are then i.i.d. draws from q_θ*(x, y) (``kernel.input_distribution``,
exactly the sampler's law: tests/test_limits.py), and exact Bayes after n of them is a sum of
per-example log-likelihoods (``bayes.example_loglik``).  So a prompt of N demonstrations costs
O(N) lookups and no forward pass over the prompt, and n can run to 2^16 and beyond.  The grid of
n is the powers of two up to ``n_max``; while a world's regime has not begun (with a window of
``MIN_WINDOW``x past it) or its crossover is not settled, the grid doubles, up to ``n_cap``.

Restart worlds whose inputs can be enumerated only (both are what the theory's rate is about
and what makes the lookups exact); anything else is a one-line ValueError.  Nothing here prints
or writes; :meth:`Regime.write` publishes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import bayes, kernel
from .constants import (DEFAULT_RIDGE, EXACT_LIMIT, FIT_N_MIN, REGIME_BAND, REGIME_COLUMNS, REGIME_N_CAP, REGIME_N_MAX,
                        REGIME_WORLD_COLUMNS)
from .metrics import bootstrap_counts, mean_ci, restrict, tv
from .sampling import sample_prompt_set
from .store import provenance, world_summary
from .validate import check_choices, check_float, check_int, check_seed, did_you_mean
from .world import World

#: The estimators judged by default: the normalised one (the form in the paper's abstract) and the
#: averaged one (the form the proof averages).
ESTIMATORS = ("normalised", "averaged")
#: The rate is judged only over a window [regime_n, n_max] at least this many times wide.
MIN_WINDOW = 4
#: A world whose measured / predicted ratio ends above 1 + band and still rises by more than this
#: (slope of log ratio on log n over the last MIN_WINDOW x) is diverging: its error does not
#: shrink like the prediction (e.g. a biased limit), the signature that could refute the rate.
DIVERGING_TREND = 0.05
#: Bootstrap resamples of the prompts for the crossover's interval.
N_BOOT = 500
#: Draws handled per block (rows x demonstrations): bounds the memory of one step.
BLOCK = 1 << 19
FILES = ("regime.csv", "regime_worlds.csv", "regime.json", "regime.png")
#: The dtypes of the result's tables (``results.Table``; a column not named is a string; world:
#: int for seeds, str for a world file's label).
ROW_DTYPES = {"n_demos": "int", "mean": "float", "ci_low": "float", "ci_high": "float", "n_prompts": "int"}
WORLD_DTYPES = {"n_max": "int", "regime_n": "float", "reached": "bool", "judged": "bool", "slope": "float",
                "slope_window": "float", "ratio_max": "float", "ratio_trend": "float", "diverging": "bool",
                "c_pred": "float", "crossover": "float", "crossover_lo": "float", "crossover_hi": "float",
                "crossover_pred": "float", "floor": "float", "floor_frequency": "float", "band": "float"}
METRIC_DESCRIPTIONS = {
    "tv_limit": "total variation between the estimate after n demonstrations and its exact n -> ∞ limit",
    "tv_limit_pred": "the asymptotic prediction c / √n of tv_limit from the estimator's exact asymptotic "
                     "covariance (kernel.asymptotic_laws); no interval",
    "ratio": "tv_limit / tv_limit_pred: the ratio of the two means over prompts, delta-method 95% CI; 1 in the "
             "asymptotic regime",
    "tv_bayes": "total variation between the estimate and exact Bayes after n demonstrations",
    "tv_bayes_pred": "the asymptotic prediction of the total variation to the oracle (what exact Bayes tends to): "
                     "the folded normal around the limit (kernel.folded_tv); no interval",
    "diff_frequency": "per prompt, tv_bayes of the kernel estimate minus tv_bayes of the label frequencies "
                      "(paired); < 0: the kernel is closer to exact Bayes",
    "nonpositive_sum": "share of prompts with Σ_i K(x_test, x_i) <= 0 (the normalised estimate is then uniform)",
    "tv_oracle": "kernel 'bayes': total variation between exact Bayes and the oracle P(y | x_test, θ*)",
    "floor": "n = inf: total variation between the limit and the oracle (the bias floor)",
}
WORLD_DESCRIPTIONS = {
    "n_max": "the largest n simulated (the grid doubled from the requested n_max while needed, up to n_cap)",
    "regime_n": "the first n from which measured / predicted stays within 1 ± band (NaN: not reached)",
    "judged": f"reached with a window [regime_n, n_max] at least {MIN_WINDOW}x wide: the rate can be judged",
    "slope": "least-squares slope of log mean tv_limit on log n over [regime_n, n_max] (judged worlds only)",
    "slope_window": f"the same slope over n = {FIT_N_MIN}..n_max, pre-asymptotic stretch included (not judged)",
    "ratio_max": "measured / predicted at n_max",
    "ratio_trend": f"slope of log(ratio) on log n over the last {MIN_WINDOW}x of n",
    "diverging": f"ratio_max > 1 + band and ratio_trend > {DIVERGING_TREND}: the error leaves the prediction upwards",
    "c_pred": "the asymptotic constant: mean tv_limit ≈ c_pred / √n",
    "crossover": "the first n from which the kernel's mean TV to exact Bayes stays below the label frequencies' "
                 "(log-interpolated from the grid; inf: not by n_max)",
    "crossover_lo": "2.5% point of the crossover over bootstrap resamples of the prompts",
    "crossover_hi": "97.5% point (inf: some resamples do not cross by n_max)",
    "crossover_pred": "the crossover of the asymptotic predictions of the two TVs to the oracle (inf: the limits "
                      "favour the label frequencies)",
    "floor": "mean TV(limit, oracle): the estimator's exact bias floor on these prompts",
    "floor_frequency": "the same for the label frequencies",
}


# ---------------------------------------------------------------------- checks
def check_world(world: World, example_length: int) -> None:
    """One-line ValueError unless the world restarts at the delimiter and its V^(k-1) inputs can be
    enumerated (the two things that make the i.i.d. lookups exact)."""
    if not world.restart:
        raise ValueError("regime needs a restart world (the theory's Assumption 1: the delimiter restarts the "
                         "chain, so the demonstrations are i.i.d. given the concept); this world has "
                         "restart=False")
    V, k = world.n_symbols, int(example_length)
    if V ** (k - 1) > EXACT_LIMIT:
        raise ValueError(f"regime needs enumerable inputs: this world's {V}^{k - 1} = {V ** (k - 1):,} inputs exceed "
                         f"{EXACT_LIMIT:,}; use a shorter example_length or a smaller world")


def _grid(n_max: int) -> list[int]:
    """The powers of two below n_max, then n_max."""
    out = [1 << j for j in range(int(math.log2(n_max)) + 1) if (1 << j) < n_max]
    return out + [int(n_max)]


# ---------------------------------------------------------------------- per-world summaries
def delta_ratio_ci(measured: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float]:
    """(r, lo, hi): r = mean(measured) / mean(predicted) over prompts (P,) and its delta-method 95%
    interval, se = sd(measured − r · predicted) / (√P · mean(predicted)).  NaN pairs dropped.
    (Not ``metrics.ratio_ci``, a cluster bootstrap of a ratio of means over units.)"""
    ok = np.isfinite(measured) & np.isfinite(predicted)
    a, c = measured[ok], predicted[ok]
    if a.size == 0 or c.mean() <= 0:
        return math.nan, math.nan, math.nan
    r = float(a.mean() / c.mean())
    if a.size < 2:
        return r, math.nan, math.nan
    se = float(np.std(a - r * c, ddof=1) / (np.sqrt(a.size) * c.mean()))
    return r, r - 1.96 * se, r + 1.96 * se


def regime_start(ns, ratios, band: float = REGIME_BAND) -> float:
    """The first n of ``ns`` (ascending) from which every ratio stays within 1 ± band; NaN when the
    last one is outside (not reached)."""
    ns, ratios = np.asarray(ns, float), np.asarray(ratios, float)
    inside = np.isfinite(ratios) & (np.abs(ratios - 1.0) <= band)
    if not inside.size or not inside[-1]:
        return math.nan
    j = len(inside) - 1
    while j > 0 and inside[j - 1]:
        j -= 1
    return float(ns[j])


def log_slope(ns, values) -> float:
    """Least-squares slope of log(values) on log(ns) (positive, finite points; NaN with < 2)."""
    ns, values = np.asarray(ns, float), np.asarray(values, float)
    ok = np.isfinite(values) & (values > 0) & (ns > 0)
    if ok.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(ns[ok]), np.log(values[ok]), 1)[0])


def first_stay_below(ns, d) -> float:
    """The n from which d (one value per n of the ascending ``ns``) stays < 0: log-interpolated
    between the last n with d >= 0 and the next; inf when the last d is >= 0 (or undefined)."""
    ns, d = np.asarray(ns, float), np.asarray(d, float)
    below = np.isfinite(d) & (d < 0)
    if not below.size or not below[-1]:
        return math.inf
    j = len(below) - 1
    while j > 0 and below[j - 1]:
        j -= 1
    if j == 0:
        return float(ns[0])
    n0, n1, d0, d1 = ns[j - 1], ns[j], d[j - 1], d[j]
    t = d0 / (d0 - d1) if d0 != d1 else 1.0
    return float(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))))


def crossover_ci(ns, diffs: np.ndarray, seed: int = 0, n_boot: int = N_BOOT) -> tuple[float, float, float]:
    """(n×, lo, hi) from per-prompt paired differences diffs (P, G) at the grid ns (G,): n× of the
    mean curve, and the 2.5% / 97.5% points of n× over bootstrap resamples of the prompts
    (inverted-CDF quantiles, so an inf among the resamples stays inf)."""
    ok = np.isfinite(diffs).all(axis=1)
    x = diffs[ok]
    est = first_stay_below(ns, x.mean(axis=0)) if x.size else math.nan
    if x.shape[0] < 2:
        return est, math.nan, math.nan
    curves = bootstrap_counts(x.shape[0], n_boot, seed) @ x / x.shape[0]        # (R, G)
    reps = np.array([first_stay_below(ns, c) for c in curves])
    lo, hi = np.quantile(reps, [0.025, 0.975], method="inverted_cdf")
    return est, float(lo), float(hi)


def predicted_crossover(mu_k, sd_k, mu_f, sd_f, n_hi: float) -> float:
    """The crossover of the asymptotic predictions (``kernel.folded_tv``) of the mean TV to the
    oracle of the kernel estimate (mu_k, sd_k: (P, L)) and of the label frequencies, on a fine log
    grid up to n_hi (inf when the kernel's prediction is not below the frequencies' there)."""
    ns = 2.0 ** np.arange(0.0, math.log2(max(n_hi, 2.0)) + 1e-9, 0.125)
    ok = np.isfinite(mu_k).all(axis=1) & np.isfinite(sd_k).all(axis=1)
    if not ok.any():
        return math.nan
    dk = kernel.folded_tv(mu_k[ok][None], sd_k[ok][None], ns[:, None]).mean(axis=1)
    df = kernel.folded_tv(mu_f[ok][None], sd_f[ok][None], ns[:, None]).mean(axis=1)
    return first_stay_below(ns, dk - df)


# ---------------------------------------------------------------------- one world
@dataclass
class _Series:
    """Per-prompt values at every grid n of one (kernel, estimator)."""

    asym: kernel.Asymptotic | None = None                       # the prompts' asymptotic laws
    tv_limit: list = field(default_factory=list)                # [(P,)] per grid n
    tv_bayes: list = field(default_factory=list)
    nonpositive: list = field(default_factory=list)


@dataclass
class WorldRun:
    """One world's simulation: the grid, per-prompt series per (kernel, estimator) (kernel
    'frequency' with estimator 'normalised' is the label frequencies), exact Bayes against the
    oracle, and the oracle itself (P, L)."""

    label: object
    ns: list
    series: dict
    tv_oracle: list
    oracle: np.ndarray
    n_prompts: int
    elapsed_s: float = 0.0


def demo_stream(seed: int, label, prompt: int) -> np.random.Generator:
    """The random stream of one prompt's demonstrations: a prompt's draws do not depend on how
    prompts are batched, nor on how far the grid extends (later segments continue the stream)."""
    world = int(label) if isinstance(label, (int, np.integer)) else 0
    return np.random.default_rng([check_seed("seed", seed), world, int(prompt), 0x5E61])


def draw_demos(gen: np.random.Generator, cum: np.ndarray, m: int) -> np.ndarray:
    """m demonstrations as flat indices into q_θ*(x, y).reshape(-1) (index = input · L + label),
    by inverting the cumulative law ``cum`` (M·L,) (ending at 1) at uniform draws."""
    return np.minimum(np.searchsorted(cum, gen.random(m), side="right"), len(cum) - 1)


def _bayes_at(world, ll, test_ll, test_pred, labels):
    """Exact Bayes over the labels from the summed example log-likelihoods ll (P, K)."""
    logw = bayes.log_posterior_weights(world, ll + test_ll)                    # (P, K)
    pred = np.einsum("pk,pkv->pv", np.exp(logw), test_pred)
    return restrict(pred, labels)


@dataclass
class _Sums:
    """Running sums over the demonstrations drawn so far, per prompt: label counts ``cnt`` (P, L),
    log-likelihoods ``ll`` (P, K), and per kernel the weighted label sums ``num`` (P, L) and kernel
    sums ``den`` (P,), with their clipped-at-0 twins ``num_pos`` / ``den_pos``."""
    cnt: np.ndarray
    ll: np.ndarray
    num: dict
    den: dict
    num_pos: dict
    den_pos: dict


def _concept_groups(world: World, ks, concepts, x_test, kernels, estimators, series) -> dict:
    """{concept: (prompt rows, cumulative joint (M·L,), log-lik table (M·L, K), {kernel: gram (R, M)})}
    for every concept the prompts drew, filling each series' asymptotic law for those rows."""
    K = world.n_concepts
    groups = {}
    psi_test = ks.psi(x_test) if any(kn in ("theory", "oracle") for kn in kernels) else None
    for c in np.unique(concepts):
        rows = np.flatnonzero(concepts == c)
        con = ks.concept(int(c), need_model="oracle" in kernels)
        s = con.sample
        cum = np.cumsum(s.joint.reshape(-1))
        cum /= cum[-1]
        ll_tab = bayes.example_loglik(world, s.x).transpose(0, 2, 1).reshape(-1, K)   # (M·L, K), joint's order
        gram = {}
        for kn in kernels:
            test = {"n": len(rows), "psi": None if psi_test is None else psi_test[rows], "pred": None}
            demo = {"n": len(s.x), "psi": con.psi, "pred": None}
            gram[kn] = ks.gram(kn, test, demo, int(c))                                # (R, M)
            for e, law in kernel.asymptotic_laws(gram[kn], s, [e for e in estimators]).items():
                _put_law(series[(kn, e)].asym, rows, law)
        _put_law(series[("frequency", "normalised")].asym, rows,
                 kernel.asymptotic_laws(np.ones((1, len(s.x))), s, ("normalised",))["normalised"], broadcast=True)
        groups[int(c)] = (rows, cum, ll_tab, gram)
    return groups


def _draw(groups: dict, gens, seg: int, L: int, kernels, clipped: bool, sums: _Sums) -> None:
    """Draw ``seg`` more demonstrations for every prompt (in blocks of about ``BLOCK`` draws) and
    add them to ``sums``."""
    for c, (rows, cum, ll_tab, gram) in groups.items():
        step = max(1, BLOCK // max(seg, 1))
        for a in range(0, len(rows), step):
            r = rows[a:a + step]
            drawn = 0
            while drawn < seg:
                m = min(seg - drawn, max(1, BLOCK // len(r)))
                idx = np.stack([draw_demos(gens[b], cum, m) for b in r])
                mi, ci = np.divmod(idx, L)
                flat = (np.arange(len(r))[:, None] * L + ci).reshape(-1)
                sums.cnt[r] += np.bincount(flat, minlength=len(r) * L).reshape(len(r), L)
                sums.ll[r] += ll_tab[idx].sum(axis=1)
                for kn in kernels:
                    kv = np.take_along_axis(gram[kn][a:a + step], mi, axis=1)
                    sums.num[kn][r] += np.bincount(flat, weights=kv.reshape(-1), minlength=len(r) * L).reshape(len(r), L)
                    sums.den[kn][r] += kv.sum(axis=1)
                    if clipped:
                        kp = np.clip(kv, 0.0, None)
                        sums.num_pos[kn][r] += np.bincount(flat, weights=kp.reshape(-1),
                                                           minlength=len(r) * L).reshape(len(r), L)
                        sums.den_pos[kn][r] += kp.sum(axis=1)
                drawn += m


def _record(series: dict, sums: _Sums, n: int, b_n: np.ndarray, P: int) -> None:
    """Append to every series its per-prompt TV to the limit and to exact Bayes ``b_n`` (P, L)
    after ``n`` demonstrations, and where the normalised kernel sum is <= 0."""
    for (kn, e), sr in series.items():
        if kn == "frequency":
            raw = sums.cnt / n
        elif e == "averaged":
            raw = sums.num[kn] / n
        elif e == "normalised":
            raw = kernel.ratio(sums.num[kn], sums.den[kn][:, None])
        else:
            raw = kernel.ratio(sums.num_pos[kn], sums.den_pos[kn][:, None])
        q = kernel.to_distribution(raw, e)
        sr.tv_limit.append(tv(q, sr.asym.limit, axis=1))
        sr.tv_bayes.append(tv(q, b_n, axis=1))
        sr.nonpositive.append((sums.den[kn] <= 0).astype(float) if kn != "frequency" and e == "normalised"
                              else np.zeros(P))


def simulate_world(world: World, *, label=0, example_length: int = 3, n_prompts: int = 1000,
                   n_max: int = REGIME_N_MAX, n_cap: int = REGIME_N_CAP, kernels=("theory",),
                   estimators=ESTIMATORS, band: float = REGIME_BAND, seed: int = 0, ridge: float = DEFAULT_RIDGE,
                   tick=None) -> WorldRun:
    """Simulate ``n_prompts`` prompts of one world at the grid n = 1, 2, 4, ..., extending it by
    doubling past ``n_max`` (up to ``n_cap``) while :func:`_settled` says a judged quantity is not
    settled.  Returns per-prompt series; :func:`world_rows` and :func:`world_summary_rows` tabulate."""
    t0 = time.perf_counter()
    tick = tick or (lambda _m: None)
    k = int(example_length)
    check_world(world, k)
    labels = world.labels
    L, K = len(labels), world.n_concepts
    ks = kernel.KernelSet(world, k, "belief", ridge=ridge, seed=seed)
    prompts = sample_prompt_set(world, n_prompts, 0, k, seed=seed)
    x_test, concepts = prompts.x_test(), prompts.concepts
    P = len(concepts)
    fx = bayes.forward(world, x_test, prefixes=False)
    test_ll, test_pred = fx.final, bayes.next_symbol(world, fx.next_state)       # (P, K), (P, K, V)
    oracle = restrict(test_pred[np.arange(P), concepts], labels)                 # (P, L)

    keys = [(kn, e) for kn in kernels for e in estimators] + [("frequency", "normalised")]
    series = {key: _Series() for key in keys}
    for key in keys:
        series[key].asym = kernel.Asymptotic(np.full((P, L), np.nan), np.full((P, L, L), np.nan), np.full(P, np.nan))
    tick("kernels and asymptotic laws")
    groups = _concept_groups(world, ks, concepts, x_test, kernels, estimators, series)

    gens = [demo_stream(seed, label, b) for b in range(P)]
    sums = _Sums(np.zeros((P, L)), np.zeros((P, K)), {kn: np.zeros((P, L)) for kn in kernels},
                 {kn: np.zeros(P) for kn in kernels}, {kn: np.zeros((P, L)) for kn in kernels},
                 {kn: np.zeros(P) for kn in kernels})
    ns, tv_oracle = [], []
    grid = _grid(int(n_max))
    n_done, j = 0, 0
    while True:
        n = grid[j]
        tick(f"n = {n}")
        _draw(groups, gens, n - n_done, L, kernels, "clipped" in estimators, sums)
        n_done = n
        ns.append(n)
        b_n = _bayes_at(world, sums.ll, test_ll, test_pred, labels)
        tv_oracle.append(tv(b_n, oracle, axis=1))
        _record(series, sums, n, b_n, P)
        if j + 1 < len(grid):
            j += 1
            continue
        run = WorldRun(label, list(ns), series, tv_oracle, oracle, P)
        if n >= n_cap or _settled(run, band):
            break
        grid.append(min(2 * n, int(n_cap)))
        j += 1
    run.elapsed_s = time.perf_counter() - t0
    return run


def _put_law(target: kernel.Asymptotic, rows, law: kernel.Asymptotic, broadcast: bool = False) -> None:
    """Copy one concept's laws into the prompts' arrays (``broadcast``: one law for every row)."""
    pick = (lambda a: np.broadcast_to(a[0], (len(rows),) + a.shape[1:])) if broadcast else (lambda a: a)
    target.limit[rows] = pick(law.limit)
    target.cov[rows] = pick(law.cov)
    target.tv_coef[rows] = pick(law.tv_coef)


def _curves(run: WorldRun, key):
    """(ns, measured mean tv_limit, ratio, predicted) of one (kernel, estimator)."""
    sr = run.series[key]
    ns = np.asarray(run.ns, float)
    meas, ratios, pred = [], [], []
    for n, d in zip(ns, sr.tv_limit):
        p = sr.asym.tv_coef / math.sqrt(n)
        ok = np.isfinite(d) & np.isfinite(p)
        meas.append(float(d[ok].mean()) if ok.any() else math.nan)
        pred.append(float(p[ok].mean()) if ok.any() else math.nan)
        ratios.append(delta_ratio_ci(d, p)[0])
    return ns, np.array(meas), np.array(ratios), np.array(pred)


def _diffs(run: WorldRun, key) -> np.ndarray:
    """(P, G) per-prompt TV(kernel, Bayes) − TV(frequencies, Bayes)."""
    k = np.stack(run.series[key].tv_bayes, axis=1)
    f = np.stack(run.series[("frequency", "normalised")].tv_bayes, axis=1)
    return k - f


def summarise_key(run: WorldRun, key, band: float = REGIME_BAND, seed: int = 0, crossover: bool = True) -> dict:
    """The per-world summary row of one (kernel, estimator) (``REGIME_WORLD_COLUMNS``)."""
    ns, meas, ratios, _pred = _curves(run, key)
    n_max = int(ns[-1])
    r0 = regime_start(ns, ratios, band)
    reached = math.isfinite(r0)
    judged = reached and n_max >= MIN_WINDOW * r0
    win = ns >= (r0 if reached else math.inf)
    last = ns >= n_max / MIN_WINDOW
    trend = log_slope(ns[last], ratios[last]) if last.sum() >= 2 else math.nan
    ratio_max = float(ratios[-1])
    sr = run.series[key]
    oracle = run.oracle
    lim = sr.asym.limit
    row = {"world": run.label, "kernel": key[0], "estimator": key[1], "n_max": n_max, "regime_n": r0,
           "reached": bool(reached), "judged": bool(judged),
           "slope": log_slope(ns[win], meas[win]) if judged else math.nan,
           "slope_window": log_slope(ns[ns >= FIT_N_MIN], meas[ns >= FIT_N_MIN]),
           "ratio_max": ratio_max, "ratio_trend": trend,
           "diverging": bool(math.isfinite(ratio_max) and ratio_max > 1 + band and math.isfinite(trend)
                             and trend > DIVERGING_TREND),
           "c_pred": float(np.nanmean(sr.asym.tv_coef)),
           "floor": float(np.nanmean(tv(lim, oracle, axis=1))),
           "floor_frequency": float(np.nanmean(tv(run.series[("frequency", "normalised")].asym.limit, oracle, axis=1))),
           "band": float(band), "crossover": math.nan, "crossover_lo": math.nan, "crossover_hi": math.nan,
           "crossover_pred": math.nan}
    if crossover and key[0] != "frequency":
        est, lo, hi = crossover_ci(ns, _diffs(run, key), seed=seed)
        fq = run.series[("frequency", "normalised")].asym
        row.update(crossover=est, crossover_lo=lo, crossover_hi=hi,
                   crossover_pred=predicted_crossover(lim - oracle, sr.asym.sd, fq.limit - oracle, fq.sd,
                                                      n_hi=max(64.0 * n_max, 2.0 ** 24)))
    return row


def _settled(run: WorldRun, band: float) -> bool:
    """Whether the grid may stop: every series' regime judged (or diverging), and every kernel's
    crossover either found with the grid at least twice past it or not expected within the cap
    (the asymptotic prediction says the limits favour the frequencies)."""
    for key in run.series:
        s = summarise_key(run, key, band, crossover=False)
        if not (s["judged"] or s["diverging"]):
            return False
        if key[0] == "frequency":
            continue
        ns = np.asarray(run.ns, float)
        n_x = first_stay_below(ns, _diffs(run, key).mean(axis=0))
        if math.isfinite(n_x):
            if ns[-1] < 2 * n_x:
                return False
        else:
            sr, fq = run.series[key].asym, run.series[("frequency", "normalised")].asym
            pred = predicted_crossover(sr.limit - run.oracle, sr.sd, fq.limit - run.oracle, fq.sd, 2.0 ** 30)
            if math.isfinite(pred):
                return False
    return True


def world_rows(run: WorldRun) -> list[dict]:
    """The tidy rows (``REGIME_COLUMNS``) of one world: every metric at every grid n, and the
    floors at n = inf."""
    out = []

    def add(n, kn, e, metric, m, lo, hi, cnt):
        out.append({"world": run.label, "n_demos": float(n), "kernel": kn, "estimator": e, "metric": metric,
                    "mean": float(m), "ci_low": float(lo), "ci_high": float(hi), "n_prompts": int(cnt)})

    def add_ci(n, kn, e, metric, values):
        m, lo, hi, cnt = mean_ci(np.asarray(values, float))
        add(n, kn, e, metric, m, lo, hi, cnt)

    fq = run.series[("frequency", "normalised")]
    for (kn, e), sr in run.series.items():
        for j, n in enumerate(run.ns):
            pred = sr.asym.tv_coef / math.sqrt(n)
            add_ci(n, kn, e, "tv_limit", sr.tv_limit[j])
            ok = np.isfinite(pred)
            add(n, kn, e, "tv_limit_pred", pred[ok].mean() if ok.any() else math.nan, math.nan, math.nan, ok.sum())
            r, lo, hi = delta_ratio_ci(sr.tv_limit[j], pred)
            add(n, kn, e, "ratio", r, lo, hi, int((np.isfinite(sr.tv_limit[j]) & ok).sum()))
            add_ci(n, kn, e, "tv_bayes", sr.tv_bayes[j])
            tb = kernel.folded_tv(sr.asym.limit - run.oracle, sr.asym.sd, n)
            okb = np.isfinite(tb)
            add(n, kn, e, "tv_bayes_pred", tb[okb].mean() if okb.any() else math.nan, math.nan, math.nan, okb.sum())
            if kn != "frequency":
                add_ci(n, kn, e, "diff_frequency", sr.tv_bayes[j] - fq.tv_bayes[j])
                if e == "normalised":
                    add_ci(n, kn, e, "nonpositive_sum", sr.nonpositive[j])
        add_ci(math.inf, kn, e, "floor", tv(sr.asym.limit, run.oracle, axis=1))
    for j, n in enumerate(run.ns):
        add_ci(n, "bayes", "-", "tv_oracle", run.tv_oracle[j])
    return out


# ---------------------------------------------------------------------- the result
@dataclass
class Regime:
    """What :func:`run` returns: ``rows`` (tidy, ``REGIME_COLUMNS``), ``worlds`` (one summary row
    per world x kernel x estimator, ``REGIME_WORLD_COLUMNS``), ``meta`` (regime.json: config,
    seeds, versions, column descriptions, per-world timings) and the per-world simulations."""

    rows: list
    worlds: list
    meta: dict
    runs: list = field(default_factory=list, repr=False)

    def rounded(self) -> tuple[list, list]:
        """(rows, worlds) as written (floats at 6 significant digits)."""
        def rnd(r, cols):
            return {**r, **{c: (float(f"{r[c]:.6g}") if isinstance(r[c], float) and math.isfinite(r[c]) else r[c])
                            for c in cols}}
        return ([rnd(r, ("mean", "ci_low", "ci_high")) for r in self.rows],
                [rnd(r, [c for c in REGIME_WORLD_COLUMNS if isinstance(r.get(c), float)]) for r in self.worlds])

    def tables(self) -> dict:
        """The result protocol's tables: regime.csv (main) and regime_worlds.csv ('worlds')."""
        from .results import Table, label_dtype

        rows, worlds = self.rounded()
        world = label_dtype(r["world"] for r in rows + worlds)
        return {None: Table("regime.csv", REGIME_COLUMNS, dict(ROW_DTYPES, world=world), rows),
                "worlds": Table("regime_worlds.csv", REGIME_WORLD_COLUMNS, dict(WORLD_DTYPES, world=world), worlds)}

    def write(self, out) -> list:
        """Publish ``FILES`` into ``out`` together (``store.publish``: all or none)."""
        from pathlib import Path

        from .plots import plot_regime
        from .store import check_results_dir, publish, write_csv, write_json

        out = check_results_dir(Path(out))
        rows, worlds = self.rounded()
        meta = dict(self.meta, config=dict(self.meta.get("config", {}), out=str(out)))
        return publish(out, {
            "regime.csv": lambda p: write_csv(p, rows, REGIME_COLUMNS),
            "regime_worlds.csv": lambda p: write_csv(p, worlds, REGIME_WORLD_COLUMNS),
            "regime.json": lambda p: write_json(p, meta),
            "regime.png": lambda p: plot_regime(rows, worlds, p, title=meta.get("title", ""))})

    def summary_lines(self) -> list[str]:
        """What ``simkernel regime`` prints: per world, measured / predicted per n for every
        estimator, then where the regime begins, the rate past it and the crossover."""
        out = [self.meta.get("title", "")]
        by = {}
        for r in self.rows:
            by[(r["world"], r["kernel"], r["estimator"], r["metric"], r["n_demos"])] = r
        for wrow in sorted({r["world"] for r in self.worlds}, key=str):
            keys = [(w["kernel"], w["estimator"]) for w in self.worlds if w["world"] == wrow]
            ns = sorted({r["n_demos"] for r in self.rows if r["world"] == wrow and math.isfinite(r["n_demos"])})
            names = [kn if kn == "frequency" else (e if kn == "theory" else f"{kn}/{e}") for kn, e in keys]
            width = max(11, *(len(nm) + 2 for nm in names))
            k0 = keys[0]
            out.append(f"world {wrow}: mean TV(estimate_n, its limit), measured / predicted c/√n (1 in the asymptotic "
                       f"regime); mean TV to exact Bayes of the {k0[0]} kernel ({k0[1]}) and the label frequencies")
            out.append(f"{'':>7}{'measured / predicted':^{width * len(keys)}}{'TV to exact Bayes':^22}".rstrip())
            out.append(f"{'n':>7}" + "".join(f"{nm:>{width}}" for nm in names) + f"{'kernel':>11}{'frequency':>11}")
            for n in ns:
                cells = "".join(f"{by[(wrow, kn, e, 'ratio', n)]['mean']:>{width}.2f}" for kn, e in keys)
                tk = by[(wrow, k0[0], k0[1], "tv_bayes", n)]["mean"]
                tf = by[(wrow, "frequency", "normalised", "tv_bayes", n)]["mean"]
                out.append(f"{int(n):>7}{cells}{tk:>11.3f}{tf:>11.3f}")
            for w in (w for w in self.worlds if w["world"] == wrow):
                name = w["kernel"] if w["kernel"] == "frequency" else f"{w['kernel']} {w['estimator']}"
                if w["judged"]:
                    reg = (f"regime from n = {w['regime_n']:g}: slope {w['slope']:.3f} over n = {w['regime_n']:g}.."
                           f"{w['n_max']}")
                elif w["reached"]:
                    reg = f"regime from n = {w['regime_n']:g} (window too short to judge the rate)"
                else:
                    reg = f"regime not reached by n = {w['n_max']} (ratio {w['ratio_max']:.2f})"
                line = f"  {name}: {reg}; slope over n = {FIT_N_MIN}..{w['n_max']} {w['slope_window']:.3f}"
                if w["kernel"] != "frequency":
                    cx = w["crossover"]
                    ctext = (f"crossover with the label frequencies at n ≈ {cx:.0f} [{w['crossover_lo']:.0f}, "
                             f"{w['crossover_hi']:.0f}]" if math.isfinite(cx) else
                             f"no crossover by n = {w['n_max']}")
                    line += (f"; {ctext} (predicted {w['crossover_pred']:.0f}); floor {w['floor']:.4f} vs "
                             f"{w['floor_frequency']:.4f}")
                out.append(line)
        return out


# ---------------------------------------------------------------------- the command
def run(preset: str | None = "ginc-small", world_seeds=(0,), overrides=None, world_file=None, worlds=None,
        example_length: int = 3, n_prompts: int = 1000, n_max: int = REGIME_N_MAX, n_cap: int = REGIME_N_CAP,
        kernels=("theory",), estimators=ESTIMATORS, band: float = REGIME_BAND, seed: int = 0,
        ridge: float = DEFAULT_RIDGE, progress=None) -> Regime:
    """``simkernel regime`` as a library call.

    Worlds: ``worlds`` (World or list), else ``preset`` at each of ``world_seeds`` with
    ``overrides``, or ``world_file``.  n_prompts per world; the grid n = 1, 2, 4, .., n_max,
    extended by doubling up to n_cap while a world's regime or crossover is not settled.
    kernels: 'theory' and/or 'oracle' (the label frequencies are always computed); estimators:
    any of kernel.ESTIMATORS.  band: the regime begins where measured / predicted stays within
    1 ± band.  ``progress(message, done, total)``.  Returns a :class:`Regime`; writes nothing."""
    from .convergence import DEFAULT_PRESET
    from .presets import resolve_worlds

    t0 = time.perf_counter()
    seed = check_seed("seed", seed)
    for name, v, lo in (("n_prompts", n_prompts, 2), ("n_max", n_max, 1), ("n_cap", n_cap, 1),
                        ("example_length", example_length, 2)):
        check_int(name, v, lo)
    if n_cap < n_max:
        raise ValueError(f"n_cap must be >= n_max ({n_max}), got {n_cap}")
    band = check_float("band", band, 0, 1, lo_open=True, hi_open=True)
    kernels = tuple(kernels)
    bad = [k for k in kernels if k not in ("theory", "oracle")]
    if bad or not kernels:
        # the regime's own message: the label frequencies are not a kernel to ask for
        raise ValueError(f"unknown kernel {bad[0] if bad else kernels!r} for regime; allowed: theory, oracle (the "
                         f"label frequencies are always computed){did_you_mean(bad[0], ('theory', 'oracle')) if bad else ''}")
    estimators = tuple(check_choices("estimators", estimators, kernel.ESTIMATORS))
    if worlds is None:
        worlds, labels, source, _ = resolve_worlds(preset, world_seeds, overrides, world_file, default=DEFAULT_PRESET)
    else:
        worlds = [worlds] if isinstance(worlds, World) else list(worlds)
        source, labels = [w.meta for w in worlds], [w.meta.get("seed", i) for i, w in enumerate(worlds)]
    for w in worlds:
        check_world(w, example_length)
    tick = progress or (lambda _m, _d, _t: None)
    runs, rows, summary = [], [], []
    for i, (w, lab) in enumerate(zip(worlds, labels)):
        r = simulate_world(w, label=lab, example_length=example_length, n_prompts=n_prompts, n_max=n_max,
                           n_cap=n_cap, kernels=kernels, estimators=estimators, band=band, seed=seed, ridge=ridge,
                           tick=lambda m, i=i, lab=lab: tick(f"world {lab}: {m}", i, len(worlds)))
        runs.append(r)
        rows += world_rows(r)
        summary += [summarise_key(r, key, band, seed=seed) for key in r.series]
    config = {"command": "regime", "world": source, "world_seeds": labels, "example_length": example_length,
              "n_prompts": n_prompts, "n_max": n_max, "n_cap": n_cap, "kernels": list(kernels),
              "estimators": list(estimators), "band": band, "seed": seed, "ridge": ridge, "features": "belief"}
    meta = provenance(config, {"prompt": seed, "world": labels}, extra_packages=("matplotlib",))
    meta.update(title=(f"{worlds[0].meta.get('preset', 'world')}: {n_prompts} prompts x {len(worlds)} world"
                       f"{'s' if len(worlds) > 1 else ''}, example length {example_length}, i.i.d. demonstrations "
                       f"(restart world)"),
                world=world_summary(worlds[0]), columns=list(REGIME_COLUMNS), world_columns=list(REGIME_WORLD_COLUMNS),
                metrics=METRIC_DESCRIPTIONS, world_descriptions=WORLD_DESCRIPTIONS, min_window=MIN_WINDOW,
                per_world_s={str(r.label): round(r.elapsed_s, 2) for r in runs},
                elapsed_s=round(time.perf_counter() - t0, 3))
    return Regime(rows, summary, meta, runs)
