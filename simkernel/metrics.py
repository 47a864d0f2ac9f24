"""Scores, intervals and fits shared by every experiment (pure numpy; scipy only for the fit
and the t quantile).  Nothing here knows about worlds or models.

- :func:`restrict`: a distribution over symbols -> over a label set.
- :func:`compare`: per-prompt distances (l1, tv, kl) of an estimate from a reference and its
  tie-fair agreement / accuracy.
- Ties: an argmax tie among m labels (scores within ``TIE_RTOL`` of the top, relatively) gets
  credit 1/m (:func:`top_set`, :func:`tie_agreement`, :func:`tie_accuracy`).  The score is
  then the expected score of a uniformly random tie-break, so it no longer depends on
  rounding noise (the thread count, the order of a sum) where a kernel is constant or two
  labels have the same count.
- :func:`mean_ci` (over prompts) and :func:`world_ci` (worlds as the unit, prompts within
  worlds).
- Over units (worlds, seeds, pairs): :func:`unit_ci` (t), :func:`log_ci` (geometric),
  :func:`ratio_ci` and :func:`spearman_ci` (cluster bootstrap over units), and
  :func:`paired_difference`; :func:`tv` and :func:`clip01`, written once.
- :func:`fit_power_law`: d(n) = a n^slope + floor, flagged when it lands on a bound.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np

#: Two scores tie when they differ by at most this much relative to the larger magnitude.
TIE_RTOL = 1e-9
#: KL(reference || estimate) mixes the estimate with this much of the uniform distribution, so
#: an estimate with a zero where the reference has mass gives a large but finite KL.
KL_MIX = 1e-6
#: Names of the per-prompt scores of :func:`compare`.
SCORES = ("l1", "tv", "kl", "agree", "acc")
#: Bounds of the power-law fit (slope) and of its amplitude and floor (natural logs).
SLOPE_BOUNDS = (-3.0, 0.0)
_LOG_BOUNDS = ((-50.0, -40.0), (50.0, 5.0))
NAN = float("nan")


def restrict(p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A distribution over symbols (..., V) -> over the label set (..., L), renormalised
    (NaN rows where the labels have no mass)."""
    q = p[..., labels]
    s = q.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return q / s


# ---------------------------------------------------------------------- ties
def top_set(scores: np.ndarray) -> np.ndarray:
    """(..., L) bool: the labels whose score ties the maximum, i.e. score >= max - TIE_RTOL *
    |max| (an all-zero row ties everywhere).  A row with a NaN has an empty set."""
    s = np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(s).all(axis=-1, keepdims=True)
    safe = np.where(ok, s, 0.0)
    top = safe.max(axis=-1, keepdims=True)
    return ok & (safe >= top - TIE_RTOL * np.abs(top))


def tie_agreement(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Expected [argmax q == argmax p] when each side breaks its ties uniformly at random:
    |T(q) ∩ T(p)| / (|T(q)| |T(p)|), T the :func:`top_set`.  q, p broadcastable (..., L);
    NaN where either row is undefined.  A tie among m labels on one side against a unique top
    inside it scores 1/m."""
    tq, tp = top_set(q), top_set(p)
    nq, npp = tq.sum(axis=-1), tp.sum(axis=-1)
    both = (tq & tp).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((nq > 0) & (npp > 0), both / (nq * npp), np.nan)


def tie_accuracy(q: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Expected [argmax q == y] under a uniform tie-break: [y ∈ T(q)] / |T(q)|.  q (B, ..., L),
    y (B,) label indices (broadcast over q's middle axes); NaN where q is undefined or y < 0."""
    tq = top_set(q)
    y = np.asarray(y).reshape((-1,) + (1,) * (tq.ndim - 2))
    yb = np.broadcast_to(y, tq.shape[:-1])
    hit = np.take_along_axis(tq, np.clip(yb, 0, tq.shape[-1] - 1)[..., None], axis=-1)[..., 0]
    n = tq.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n > 0) & (yb >= 0), hit / n, np.nan)


def onehot_scores(index: np.ndarray, n_classes: int) -> np.ndarray:
    """(B,) class indices -> (B, C) scores whose top set is that class (NaN rows for -1)."""
    index = np.asarray(index)
    out = np.zeros(index.shape + (n_classes,))
    ok = index >= 0
    out[ok, index[ok]] = 1.0
    out[~ok] = np.nan
    return out


# ---------------------------------------------------------------------- distances
def compare(p_ref: np.ndarray, q: np.ndarray, y_test: np.ndarray) -> dict:
    """Per-prompt (and per-n) scores of the estimate q against the reference p, both (B, N, L)
    or broadcastable (e.g. p (B, 1, L)), or (B, L):

        l1 = Σ|p − q|, tv = l1 / 2, kl = KL(p || (1 − KL_MIX) q̂ + KL_MIX / L) with q̂ = q
        renormalised (the averaged estimate need not sum to 1), agree = tie_agreement(q, p),
        acc = tie_accuracy(q, y_test)."""
    p_ref, q = np.broadcast_arrays(np.asarray(p_ref, np.float64), np.asarray(q, np.float64))
    L = q.shape[-1]
    l1 = np.abs(p_ref - q).sum(axis=-1)
    mass = q.sum(axis=-1, keepdims=True)
    qn = np.where(mass > 0, q / np.where(mass > 0, mass, 1.0), 1.0 / L)
    qm = (1 - KL_MIX) * qn + KL_MIX / L
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p_ref > 0, p_ref * (np.log(p_ref) - np.log(qm)), 0.0).sum(axis=-1)
    return {"l1": l1, "tv": l1 / 2, "kl": kl, "agree": tie_agreement(q, p_ref),
            "acc": tie_accuracy(q, y_test)}


# ---------------------------------------------------------------------- intervals
def mean_ci(x: np.ndarray, axis: int = 0):
    """Mean and normal-approximation 95% CI over ``axis`` (NaNs dropped): (mean, lo, hi, count)."""
    x = np.asarray(x, np.float64)
    n = np.sum(np.isfinite(x), axis=axis)
    with warnings.catch_warnings():      # an all-NaN column is a NaN mean, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        m = np.nanmean(x, axis=axis)
        sd = np.nanstd(x, axis=axis, ddof=1) if x.shape[axis] > 1 else np.zeros_like(m)
    sd = np.where(n > 1, sd, 0.0)
    half = 1.96 * sd / np.sqrt(np.maximum(n, 1))
    return m, m - half, m + half, n


def bootstrap_counts(size: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, size) multinomial resample counts of ``size`` units, not index arrays (small ints
    and one matrix product: ``counts @ x / size`` is every resample's mean at once), from
    ``np.random.default_rng(seed)``; read-only, so callers can share one draw."""
    counts = np.random.default_rng(seed).multinomial(size, np.full(size, 1.0 / size), size=n_boot)
    counts.setflags(write=False)
    return counts


def _t975(df: int) -> float:
    from scipy.stats import t
    return float(t.ppf(0.975, df))


def world_ci(x: np.ndarray, worlds: np.ndarray):
    """Mean and 95% CI with worlds as the unit: x (P, ...) per prompt, worlds (P,) the world
    of each prompt.  Each world's mean is taken over its prompts (NaNs dropped), then

    - two or more worlds: the mean of the world means ± t_{0.975, W−1} · sd / √W;
    - one world: the normal-approximation CI over its prompts (:func:`mean_ci`).

    Returns (mean, lo, hi, n_prompts, n_worlds), each of shape x.shape[1:]; n_worlds counts the
    worlds with at least one finite value."""
    x = np.asarray(x, np.float64)
    worlds = np.asarray(worlds)
    ids = np.unique(worlds)
    if len(ids) == 1:
        m, lo, hi, n = mean_ci(x, axis=0)
        return m, lo, hi, n, (n > 0).astype(int)
    means = np.stack([mean_ci(x[worlds == w], axis=0)[0] for w in ids])          # (W, ...)
    n_prompts = np.sum(np.isfinite(x), axis=0)
    m, _lo, _hi, W = mean_ci(means, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sd = np.nanstd(means, axis=0, ddof=1)
    tq = np.vectorize(lambda w: _t975(int(w) - 1) if w > 1 else 0.0, otypes=[float])(W)
    half = np.where(W > 1, tq * np.nan_to_num(sd) / np.sqrt(np.maximum(W, 1)), 0.0)
    return m, m - half, m + half, n_prompts, W


# ---------------------------------------------------------------------- intervals over units
def unit_codes(units) -> np.ndarray:
    """Integer codes of the unit labels, in sorted label order (so that a resample does not depend
    on the row order of the table).  Labels keep their type: world 3 and world '3' differ."""
    labels = set(units)
    try:
        ordered = sorted(labels)
    except TypeError:                       # mixed label types: any fixed order will do
        ordered = sorted(labels, key=repr)
    index = {u: i for i, u in enumerate(ordered)}
    return np.array([index[u] for u in units], dtype=np.int64)


def unit_ci(values, units=None, lower: float | None = None, level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, lo, hi, n_units): the t-interval (95% unless ``level`` says otherwise) over units of
    ``values`` (one or more per unit; a unit's values are averaged first), from
    :func:`world_ci`.  NaN values are dropped; lo and hi are NaN with fewer than two units;
    ``lower`` clips lo (a distance stays >= 0)."""
    v = np.asarray(values, np.float64).reshape(-1)
    u = list(range(v.size)) if units is None else list(np.asarray(units).reshape(-1))
    if len(u) != v.size:
        raise ValueError(f"units has {len(u)} entries for {v.size} values; give one unit per value")
    ok = np.isfinite(v)
    v = v[ok]
    u = [x for x, keep in zip(u, ok) if keep]
    if v.size == 0:
        return NAN, NAN, NAN, 0
    ids = unit_codes(u)
    n = int(ids.max()) + 1
    if n < 2:
        return float(v.mean()), NAN, NAN, n
    m, lo, hi, _cnt, _w = world_ci(v[:, None], ids)
    if level != 0.95:
        # the same sd / √W, another t quantile
        from scipy.stats import t
        half = (float(hi[0]) - float(m[0])) * t.ppf((1 + level) / 2, n - 1) / t.ppf(0.975, n - 1)
        lo, hi = np.array([m[0] - half]), np.array([m[0] + half])
    lo0 = float(lo[0]) if lower is None else max(float(lo[0]), lower)
    return float(m[0]), lo0, float(hi[0]), n


def log_ci(values, units=None) -> tuple[float, float, float, int]:
    """The geometric mean of positive ``values`` and the t-interval over units of their logs,
    back on the original scale: (estimate, lo, hi, n_units)."""
    v = np.asarray(values, np.float64).reshape(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lv = np.where(v > 0, np.log(v), NAN)
    m, lo, hi, n = unit_ci(lv, units)
    return math.exp(m) if math.isfinite(m) else NAN, math.exp(lo) if math.isfinite(lo) else NAN, \
        math.exp(hi) if math.isfinite(hi) else NAN, n


def ratio_ci(num, den, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """mean(num) / mean(den) over units (paired arrays, one entry per unit) and its percentile
    bootstrap interval from ``n_boot`` resamples of the units (fixed ``seed``).  NaN where the
    denominator's mean is 0 or fewer than two units."""
    a, b = np.asarray(num, np.float64), np.asarray(den, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size == 0 or b.mean() == 0:
        return NAN, NAN, NAN
    est = float(a.mean() / b.mean())
    if a.size < 2:
        return est, NAN, NAN
    idx = np.random.default_rng(seed).integers(0, a.size, size=(n_boot, a.size))
    with np.errstate(divide="ignore", invalid="ignore"):
        reps = a[idx].mean(1) / b[idx].mean(1)
    reps = reps[np.isfinite(reps)]
    if reps.size < n_boot / 2:
        return est, NAN, NAN
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return est, float(lo), float(hi)


def spearman_ci(x, y, units, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """(rho, lo, hi, n_pairs, n_units): Spearman's rho of the pairs (x, y) and its percentile
    interval from ``n_boot`` resamples of whole units (the pairs of a resampled unit come
    together; :func:`bootstrap_counts` draws the counts).  NaN where undefined (< 4 pairs,
    constant x or y; fewer than half the resamples defined)."""
    from scipy.stats import spearmanr


    x, y = np.asarray(x, float), np.asarray(y, float)
    u = list(np.asarray(units).reshape(-1))
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    inv = unit_codes([v for v, keep in zip(u, ok) if keep])
    P, W = x.size, (int(inv.max()) + 1 if inv.size else 0)

    def rho_of(a, b):
        if a.size < 4 or np.ptp(a) == 0 or np.ptp(b) == 0:
            return NAN
        return float(spearmanr(a, b)[0])

    rho = rho_of(x, y)
    if not math.isfinite(rho) or W < 2:
        return rho, NAN, NAN, P, W
    reps = []
    for c in bootstrap_counts(W, n_boot, seed):
        rep = np.repeat(np.arange(P), c[inv])
        reps.append(rho_of(x[rep], y[rep]))
    reps = np.array(reps)
    good = reps[np.isfinite(reps)]
    if good.size < n_boot / 2:
        return rho, NAN, NAN, P, W
    lo, hi = np.quantile(good, [(1 - level) / 2, (1 + level) / 2])
    return rho, float(lo), float(hi), P, W


def tv(p: np.ndarray, q: np.ndarray, axis: int = -1) -> np.ndarray:
    """Total variation ½ Σ |p − q| over ``axis`` (distributions of the same shape, or
    broadcastable); NaN where either holds a NaN."""
    return 0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum(axis=axis)


def clip01(*xs):
    """Each of ``xs`` (scalars or arrays: a mean and its interval ends) clipped to [0, 1], the range
    of a probability, a TV or an agreement rate: a t-interval can cross 0 or 1."""
    out = tuple(np.clip(x, 0.0, 1.0) if isinstance(x, np.ndarray) else min(1.0, max(0.0, float(x))) for x in xs)
    return out[0] if len(out) == 1 else out


def paired_difference(a, b, units) -> dict:
    """The paired difference a − b (same prompts, same order; a, b and units of shape (P,)) with
    its 95% interval over units (:func:`world_ci`: a t-interval over the unit means, or over
    prompts with a single unit): {'mean', 'ci_low', 'ci_high', 'n_prompts', 'n_worlds',
    'excludes_0', 'units', 'unit_means'} (each unit's mean difference, in sorted unit order).
    All NaN and zero counts when the shapes or units differ."""
    a, b, units = np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(units)
    if a.shape != b.shape or a.shape[:1] != units.shape:
        return {"mean": NAN, "ci_low": NAN, "ci_high": NAN, "n_prompts": 0, "n_worlds": 0, "excludes_0": False,
                "units": [], "unit_means": []}
    d = a - b
    m, lo, hi, cnt, nw = world_ci(d[:, None], units)
    ids = np.unique(units)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = [float(np.nanmean(d[units == u])) for u in ids]
    return {"mean": float(m[0]), "ci_low": float(lo[0]), "ci_high": float(hi[0]), "n_prompts": int(cnt[0]),
            "n_worlds": int(nw[0]), "excludes_0": bool(lo[0] > 0 or hi[0] < 0),
            "units": [u.item() if hasattr(u, "item") else u for u in ids], "unit_means": means}


# ---------------------------------------------------------------------- power laws
class PowerLaw(NamedTuple):
    """d(n) = amplitude · n^slope + floor.  ``degenerate``: the fit is not a measurement (too
    few points, or the slope or amplitude sits on a bound of the search)."""

    slope: float
    floor: float
    amplitude: float

    @property
    def degenerate(self) -> bool:
        if not all(math.isfinite(v) for v in self):
            return True
        lo, hi = SLOPE_BOUNDS
        la = math.log(self.amplitude) if self.amplitude > 0 else -math.inf
        return (abs(self.slope - lo) < 1e-3 or abs(self.slope - hi) < 1e-3
                or not _LOG_BOUNDS[0][0] + 1e-3 < la < _LOG_BOUNDS[1][0] - 1e-3)

    def as_dict(self, **extra) -> dict:
        return dict(slope=self.slope, floor=self.floor, amplitude=self.amplitude,
                    degenerate=self.degenerate, **extra)


def fit_power_law(n: np.ndarray, d: np.ndarray, floor: bool = True) -> PowerLaw:
    """Fit d(n) = a n^slope + floor (a > 0, floor >= 0, -3 <= slope <= 0) by least squares on
    log d; ``floor=False`` fixes the floor at 0 (a straight line on log-log axes, for a distance
    that must vanish, such as an estimate's distance to its exact limit).  NaNs (and
    ``degenerate``) when fewer than 4 positive points."""
    from scipy.optimize import least_squares

    ok = np.isfinite(d) & (np.asarray(d) > 0)
    n, d = np.asarray(n, float)[ok], np.asarray(d, float)[ok]
    if len(n) < 4:
        return PowerLaw(float("nan"), float("nan"), float("nan"))
    ln, ld = np.log(n), np.log(d)
    b0, a0 = np.polyfit(ln, ld, 1)
    if not floor:
        # the bounded line fit; a slope outside [-3, 0] lands on the bound (degenerate)
        fit = least_squares(lambda p: p[0] + p[1] * ln - ld,
                            [min(max(a0, _LOG_BOUNDS[0][0] + 1), _LOG_BOUNDS[1][0] - 1),
                             min(max(b0, SLOPE_BOUNDS[0]), SLOPE_BOUNDS[1])],
                            bounds=([_LOG_BOUNDS[0][0], SLOPE_BOUNDS[0]], [_LOG_BOUNDS[1][0], SLOPE_BOUNDS[1]]))
        return PowerLaw(float(fit.x[1]), 0.0, float(np.exp(fit.x[0])))

    def resid(p):
        la, b, lc = p
        return np.logaddexp(la + b * ln, lc) - ld

    lc0 = np.log(max(d.min() / 4, 1e-12))
    (la_lo, lc_lo), (la_hi, lc_hi) = _LOG_BOUNDS
    fit = least_squares(resid, [min(max(a0, la_lo + 1), la_hi - 1), min(max(b0, SLOPE_BOUNDS[0]), SLOPE_BOUNDS[1]), lc0],
                        bounds=([la_lo, SLOPE_BOUNDS[0], lc_lo], [la_hi, SLOPE_BOUNDS[1], lc_hi]))
    la, b, lc = fit.x
    return PowerLaw(float(b), float(np.exp(lc)), float(np.exp(la)))
