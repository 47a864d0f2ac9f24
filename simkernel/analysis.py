"""Kernel regression read off captured attention: reconstruction, head selection, probes.

Everything here is numpy on the arrays of a :class:`~simkernel.capture.Capture` and the
positions of a :class:`~simkernel.prompts.PromptBatch`, so it runs unchanged on the
simulator's models and on real LLMs.  Each head's weights a_i on the demonstrations give a
label vote Σ_i a_i e(y_i), compared with reference predictions; the weights are also
correlated with reference kernels within each prompt, heads are chosen on one split of the
prompts and reported on a disjoint one, and ridge probes read the labels from keys and values.
Comparisons with the true kernel and the exact posterior live in ``alignment``.

Every argmax comparison (a head's reconstructed vote against a reference, the model against a
reference, the majority vote) is tie-fair (``metrics.tie_agreement``): an argmax tie among m
labels scores 1/m, the expected score of a uniformly random tie-break.  Votes tie often (two
labels with the same number of demonstrations under an even head), and the lowest-index argmax
would credit the first label with every such tie.

Beside the head chosen for each target (a reference prediction: the model, gold, exact Bayes
...) stand reference votes, so that a head's agreement has something to beat and something it
cannot beat: the uniform vote (the majority label), reference weights handed in as (B, n)
arrays (in the simulator the theory kernel clipped at 0 and the prediction similarity, from
``alignment``; on an LLM its own prediction similarity), the head's own weights shuffled within
each prompt (a permutation control), and the best non-negative weights (an upper bound, in
closed form: :func:`best_weights`).  Each head-minus-reference difference on the held-out
prompts gets a paired bootstrap CI; the verdict rule is :data:`VERDICT_RULE`.

The only simkernel import is ``metrics`` (pure numpy); scipy is imported only for ranks.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .constants import N_REPORT, N_SELECT
from .metrics import bootstrap_counts, onehot_scores, tie_accuracy, tie_agreement, top_set

if TYPE_CHECKING:
    from .capture import Capture
    from .prompts import PromptBatch


# ---------------------------------------------------------------------- attention profile
def attention_profile(attn: np.ndarray, spans: np.ndarray, length: int = 30) -> np.ndarray:
    """(L, H, length): the final row's attention over each demonstration span, resampled to
    ``length`` points by linear interpolation and averaged over prompts and demonstrations.

    attn (B, L, H, T), spans (B, n, 2) [start, end).  A span of m tokens is read at m equally
    spaced points of [0, 1] (one token: at 1, so it lands on the label) and interpolated at
    ``length`` equally spaced points; the last point is always the label token (spans end
    with it), the first the demonstration's first input token."""
    if length < 2:
        raise ValueError(f"profile length must be >= 2, got {length}")
    B, L, H, _ = attn.shape
    grid = np.linspace(0.0, 1.0, length)
    total = np.zeros((L, H, length))
    count = 0
    for b in range(B):
        for s, e in spans[b]:
            m = int(e - s)
            seg = attn[b, :, :, s:e].reshape(L * H, m).astype(np.float64)
            if m == 1:
                total += np.repeat(seg, length, axis=1).reshape(L, H, length)
            else:
                x = np.linspace(0.0, 1.0, m)
                # np.interp is 1-d: the interpolation weights are shared by every (layer, head)
                j = np.clip(np.searchsorted(x, grid, side="right") - 1, 0, m - 2)
                w = (grid - x[j]) / (x[j + 1] - x[j])
                total += (seg[:, j] * (1 - w) + seg[:, j + 1] * w).reshape(L, H, length)
            count += 1
    return total / max(count, 1)


# ---------------------------------------------------------------------- reconstruction
WEIGHTS = ("max", "label", "mean")


def demo_weights(attn: np.ndarray, spans: np.ndarray, label_pos: np.ndarray, how: str = "max") -> np.ndarray:
    """(B, L, H, n): each head's weight a_i on demonstration i.

    ``max``: the largest attention within the span [x_i, y_i] (the paper's choice);
    ``label``: the attention on y_i's token; ``mean``: the span's mean attention."""
    if how not in WEIGHTS:
        raise ValueError(f"unknown weight {how!r}; allowed: {', '.join(WEIGHTS)}")
    B, L, H, T = attn.shape
    if how == "label":
        idx = np.broadcast_to(label_pos[:, None, None, :], (B, L, H, label_pos.shape[1]))
        return np.take_along_axis(attn, idx, axis=-1)
    out = np.empty((B, L, H, spans.shape[1]), dtype=np.float64)
    # slices, not a masked copy of attn per demonstration: for GPT-J-6B attn is ~1 GB
    for b in range(B):
        for i, (s, e) in enumerate(spans[b]):
            seg = attn[b, :, :, s:e]
            out[b, :, :, i] = seg.max(-1) if how == "max" else seg.mean(-1)
    return out


def label_votes(weights: np.ndarray, demo_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(..., C): Σ_i a_i [y_i = c].  weights (B, ..., n), demo_labels (B, n)."""
    onehot = np.eye(n_classes)[demo_labels]                                   # (B, n, C)
    return np.einsum("b...n,bnc->b...c", weights, onehot)


def reconstruct(weights: np.ndarray, demo_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(B, ...) the reconstructed prediction argmax_c Σ_i a_i [y_i = c] (ties: lowest class).

    For display only: :func:`analyse` scores the votes themselves (:func:`label_votes`) with
    ``metrics.tie_agreement``, so a tie among m classes scores 1/m instead of crediting the
    lowest class."""
    return label_votes(weights, demo_labels, n_classes).argmax(-1)


def reference_scores(ref, n_examples: int, n_classes: int) -> np.ndarray:
    """A reference prediction -> (B, C) scores whose top set is the predicted class(es).

    ref: (B,) class indices (-1: undefined for that example) or (B, C) scores (e.g. a
    distribution; ties among the top scores are kept, NaN rows are undefined)."""
    ref = np.asarray(ref)
    if ref.shape == (n_examples,):
        if not np.issubdtype(ref.dtype, np.integer):
            raise ValueError(f"a (B,) reference must hold class indices, got dtype {ref.dtype}")
        if (ref >= n_classes).any() or (ref < -1).any():
            raise ValueError(f"reference class indices must be in -1..{n_classes - 1}")
        return onehot_scores(ref, n_classes)
    if ref.shape == (n_examples, n_classes):
        return ref.astype(np.float64)
    raise ValueError(f"a reference must be ({n_examples},) class indices or ({n_examples}, {n_classes}) "
                     f"scores, got shape {ref.shape}")


# ---------------------------------------------------------------------- held-out head selection
def split_indices(n_examples: int, n_select: int = N_SELECT, n_report: int = N_REPORT, seed: int = 0):
    """(select, report): disjoint random index sets.  With fewer than n_select + n_report
    examples both shrink in proportion (at least one each), so the report set is always
    held out from head selection."""
    if n_examples < 2:
        raise ValueError(f"held-out head selection needs at least 2 examples, got {n_examples}")
    want = n_select + n_report
    if n_examples < want:
        n_select = min(max(1, int(round(n_examples * n_select / want))), n_examples - 1)
        n_report = n_examples - n_select
    perm = np.random.default_rng(seed).permutation(n_examples)
    return np.sort(perm[:n_select]), np.sort(perm[n_select:n_select + n_report])


@dataclass
class HeadChoice:
    """The best head chosen on the selection split and its score on the report split."""

    layer: int
    head: int
    select_score: float
    report_score: float
    n_select: int
    n_report: int


def select_head(scores: np.ndarray, select: np.ndarray, report: np.ndarray) -> HeadChoice:
    """scores (B, L, H): a per-example score of every head (a tie-fair agreement in [0, 1], or
    a correlation; nan where undefined).  The head with the best mean on ``select`` (nan
    ignored; ties: the lowest layer, then head), scored on ``report`` only."""
    if np.intersect1d(select, report).size:
        raise ValueError("the selection and report splits overlap")
    sel = _nanmean0(scores[select])
    if not np.isfinite(sel).any():
        raise ValueError("no head has a defined score on the selection split")
    layer, head = np.unravel_index(int(np.nanargmax(sel)), sel.shape)
    return HeadChoice(int(layer), int(head), float(sel[layer, head]),
                      float(_nanmean0(scores[report][:, layer, head])), int(select.size), int(report.size))


def _nanmean0(x: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring nan (nan where every entry is nan), without warnings."""
    ok = np.isfinite(x)
    count = ok.sum(0)
    return np.where(count > 0, np.where(ok, x, 0.0).sum(0) / np.maximum(count, 1), np.nan)


# ---------------------------------------------------------------------- correlations
def _rank(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank)."""
    from scipy.stats import rankdata

    return rankdata(x, axis=-1)


def row_correlation(a: np.ndarray, b: np.ndarray, method: str = "pearson") -> np.ndarray:
    """Correlation along the last axis of ``a`` (..., n) and ``b`` (broadcastable); nan where
    either side is constant.  method: 'pearson' or 'spearman' (Pearson on average ranks)."""
    if method not in ("pearson", "spearman"):
        raise ValueError(f"unknown correlation {method!r}; allowed: pearson, spearman")
    a, b = np.broadcast_arrays(np.asarray(a, float), np.asarray(b, float))
    flat = _constant(a) | _constant(b)
    if method == "spearman":
        a, b = _rank(a), _rank(b)
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    return np.where(flat, np.nan, np.clip(r, -1.0, 1.0))


def _constant(x: np.ndarray) -> np.ndarray:
    """True where the last axis is constant up to rounding."""
    return np.ptp(x, axis=-1) <= 1e-12 * np.abs(x).max(-1, initial=0.0)


def head_correlation(weights: np.ndarray, target: np.ndarray, method: str = "pearson") -> np.ndarray:
    """(L, H): the mean over prompts of the within-prompt correlation between a head's weights
    on the demonstrations, weights (B, L, H, n), and ``target`` (B, n) (e.g. the true kernel
    K(x_test, x_i) or the prediction similarity).  Within-prompt, because a kernel estimator
    only compares the demonstrations of one prompt; prompts where either side is constant
    are left out (nan when all are)."""
    return _nanmean0(row_correlation(weights, target[:, None, None, :], method))


def prediction_similarity(p_test: np.ndarray, p_demos: np.ndarray) -> np.ndarray:
    """(B, n): sim(x_test, x_i) = P(o | x_test)^T P(o | x_i), each distribution from the
    input run alone.  p_test (B, C), p_demos (B, n, C)."""
    return np.einsum("bc,bnc->bn", p_test, p_demos)


# ---------------------------------------------------------------------- probes
#: The probes' ridge (the paper's λ = 0.01).
PROBE_LAMBDA = 0.01


def ridge_fit(x: np.ndarray, y: np.ndarray, n_classes: int, lam: float = PROBE_LAMBDA):
    """(W (d, C), b (C,)): ridge regression from x (N, d) to one-hot(y) (N, C), with an
    unpenalised intercept: W = (X_c^T X_c + λ I)^-1 X_c^T Y_c on centred X_c, Y_c."""
    x = np.asarray(x, np.float64)
    t = np.eye(n_classes)[np.asarray(y)]
    mx, mt = x.mean(0), t.mean(0)
    xc, tc = x - mx, t - mt
    N, d = xc.shape
    if d <= N:
        w = np.linalg.solve(xc.T @ xc + lam * np.eye(d), xc.T @ tc)
    else:       # the dual form: fewer examples than features
        w = xc.T @ np.linalg.solve(xc @ xc.T + lam * np.eye(N), tc)
    return w, mt - mx @ w


def ridge_accuracy(x_train, y_train, x_test, y_test, n_classes: int, lam: float = PROBE_LAMBDA) -> float:
    """Test accuracy of :func:`ridge_fit`'s argmax classifier, tie-fair (a tie among m classes
    that holds the target scores 1/m: e.g. an all-zero input predicts the intercept, and the
    class means tie when the classes are equally frequent)."""
    w, b = ridge_fit(x_train, y_train, n_classes, lam)
    scores = np.asarray(x_test, np.float64) @ w + b
    return float(tie_accuracy(scores, np.asarray(y_test)).mean())


def probe_accuracy(vectors: np.ndarray, targets: np.ndarray, train: np.ndarray, test: np.ndarray,
                   n_classes: int, lam: float = PROBE_LAMBDA, heads_per_kv: int = 1) -> np.ndarray:
    """(O, L, H): ridge-probe test accuracy per offset, layer and head.

    vectors (B, n, O, L, Hkv, d) from :func:`simkernel.capture.capture` (keys or values), targets (B, n) class
    indices (the model's standalone prediction for keys, y_i for values).  The split is by
    prompt (``train`` / ``test`` index the B axis), so no prompt is on both sides.  With
    grouped-query attention a kv head serves ``heads_per_kv`` query heads, which share its
    score."""
    B, n, O, L, Hkv, d = vectors.shape
    ytr, yte = targets[train].reshape(-1), targets[test].reshape(-1)
    vtr, vte = vectors[train], vectors[test]          # index once: each is a copy
    out = np.empty((O, L, Hkv * heads_per_kv))
    for o in range(O):
        for layer in range(L):
            for h in range(Hkv):
                acc = ridge_accuracy(vtr[:, :, o, layer, h].reshape(-1, d), ytr,
                                     vte[:, :, o, layer, h].reshape(-1, d), yte, n_classes, lam)
                out[o, layer, h * heads_per_kv:(h + 1) * heads_per_kv] = acc
    return out


# ---------------------------------------------------------------------- reference votes
#: permutations per prompt of the shuffled control (all n! of them when n! is at most this)
N_PERMUTATIONS = 200
#: paired bootstrap resamples of the report prompts, and the two-sided level of its intervals
N_BOOTSTRAP = 2000
CI_LEVEL = 0.95
#: the reference votes analysis computes itself, from the prompt alone (no simulator):
#: 'uniform' the majority vote, 'shuffled' the head's own weights permuted within each prompt,
#: 'best' the best non-negative weights (an upper bound on every vote)
OWN_REFERENCES = ("uniform", "shuffled", "best")


def best_weights(target: np.ndarray, demo_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(B, n) non-negative weights whose vote has the highest possible tie-fair agreement with
    ``target`` (B, C) scores (NaN rows: undefined), given the demonstrations' labels (B, n).

    With T the target's top set (m = |T|) and P the labels present among the demonstrations, a
    vote v = Σ_i a_i e(y_i), a >= 0, lives on P (v_c = 0 off P) and scores
    |T(v) ∩ T| / (|T(v)| m) <= 1/m, with equality iff T(v) ⊆ T:

    - T ∩ P non-empty: weight 1/count_c on every demonstration of each label c in T ∩ P, so
      every such label gets vote 1 and T(v) = T ∩ P: score 1/m;
    - T ∩ P empty: any non-zero vote has T(v) ⊆ P, disjoint from T, and scores 0, while a = 0
      is a tie among all C labels, 1/C: the optimum is a = 0.

    So :func:`best_agreement` is 1/m where the target's top label(s) occur among the
    demonstrations and 1/C where none does; no head or reference vote can exceed it."""
    demo_labels = np.asarray(demo_labels)
    onehot = np.eye(n_classes, dtype=bool)[demo_labels]                       # (B, n, C)
    counts = onehot.sum(1)                                                    # (B, C)
    keep = top_set(target) & (counts > 0)                                     # T ∩ P
    per = np.where(keep, 1.0 / np.maximum(counts, 1), 0.0)                    # weight per demo of c
    return np.take_along_axis(per, demo_labels, axis=1)


def best_agreement(target: np.ndarray, demo_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(B,) the highest tie-fair agreement with ``target`` (B, C) that any non-negative weights
    on the demonstrations can reach (:func:`best_weights`); NaN where the target is undefined."""
    return tie_agreement(label_votes(best_weights(target, demo_labels, n_classes), demo_labels, n_classes),
                         np.asarray(target, np.float64))


def _permutations(B: int, n: int, n_perm: int, seed: int) -> np.ndarray:
    """(K, B, n) permutations of 0..n-1: all n! of them (the same for every prompt) when
    n! <= n_perm, else n_perm independent uniform draws per prompt."""
    if math.factorial(n) <= n_perm:
        every = np.array(list(itertools.permutations(range(n))), dtype=np.int64).reshape(-1, n)
        return np.broadcast_to(every[:, None, :], (every.shape[0], B, n))
    base = np.broadcast_to(np.arange(n), (n_perm, B, n))
    return np.random.default_rng(seed).permuted(base, axis=-1)


def shuffled_agreement(weights: np.ndarray, demo_labels: np.ndarray, target: np.ndarray, n_classes: int,
                       n_perm: int = N_PERMUTATIONS, seed: int = 0) -> np.ndarray:
    """(B, ...) the permutation control: the tie-fair agreement with ``target`` (B, C) of the
    vote of ``weights`` (B, ..., n) permuted within each prompt, averaged over permutations
    (exactly over all n! of them when n! <= n_perm, else over n_perm seeded draws per prompt,
    shared by the middle axes).  The weights keep their values and lose their link to the
    demonstrations: a head scores above its control only through *which* demonstrations it
    weighs.  Permuting the weights by π is permuting the labels by π⁻¹, which is what is done.

    Constant weights are unchanged by every permutation, so their control is the uniform vote;
    in general it is not (one demonstration at random agrees with the majority label only as
    often as that label occurs)."""
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    weights = np.asarray(weights, np.float64)
    demo_labels = np.asarray(demo_labels)
    B, n = demo_labels.shape
    target = np.asarray(target, np.float64).reshape((B,) + (1,) * (weights.ndim - 2) + (-1,))
    perms = _permutations(B, n, n_perm, seed)
    total = np.zeros(weights.shape[:-1])
    for p in perms:
        total += tie_agreement(label_votes(weights, np.take_along_axis(demo_labels, p, 1), n_classes), target)
    return total / perms.shape[0]


@functools.lru_cache(maxsize=8)
def _boot_counts(size: int, n_boot: int, seed: int) -> np.ndarray:
    """``metrics.bootstrap_counts``, drawn once per (size, n_boot, seed): every reference of a
    measurement is resampled the same way, and the draw dominated the analysis when repeated per
    reference."""
    return bootstrap_counts(size, n_boot, seed)


def paired_bootstrap(diff: np.ndarray, n_boot: int = N_BOOTSTRAP, level: float = CI_LEVEL, seed: int = 0):
    """(mean, lo, hi, count) of per-prompt paired differences ``diff`` (R,) (NaN: left out): the
    mean and its percentile bootstrap interval at ``level`` from ``n_boot`` seeded resamples of
    the prompts with replacement (the head and the reference are resampled together, since the
    difference is taken per prompt).  NaNs when no prompt is defined."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = np.asarray(diff, np.float64).reshape(-1)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    means = _boot_counts(d.size, n_boot, seed) @ d / d.size
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi), int(d.size)


def _reference_weights(reference_weights, B: int, n: int) -> dict:
    """Validated {name: (B, n) float64 non-negative weights}."""
    out = {}
    for name, w in (reference_weights or {}).items():
        if name in OWN_REFERENCES:
            raise ValueError(f"reference_weights[{name!r}]: the name is analysis's own; allowed: a name "
                             f"other than {', '.join(OWN_REFERENCES)}")
        w = np.asarray(w, np.float64)
        if w.shape != (B, n):
            raise ValueError(f"reference_weights[{name!r}] must have shape ({B}, {n}) (prompts, demonstrations), "
                             f"got {w.shape}")
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"reference_weights[{name!r}] must be finite and >= 0 (clip a kernel at 0 first)")
        out[name] = w
    return out


# ---------------------------------------------------------------------- one analysis
#: offsets from each label token whose keys and values the probes read: the token before the
#: label, the label, and the three after it (what measure_model and llm ask capture for)
PROBE_OFFSETS = (-1, 0, 1, 2, 3)
HEAD_COLUMNS = ("layer", "head", "measure", "reference", "split", "value", "n_examples")
PROFILE_COLUMNS = ("layer", "head", "position", "attention", "is_label")
PROBE_COLUMNS = ("vector", "target", "offset", "layer", "head", "accuracy", "n_train", "n_test")
BEST_COLUMNS = ("measure", "reference", "layer", "head", "select", "report", "n_select", "n_report")
#: references.csv: per target prediction and reference vote, the head chosen on the selection
#: split by agreement with that target, against the reference on the report split
REFERENCE_COLUMNS = ("target", "reference", "layer", "head", "head_agreement", "reference_agreement",
                     "difference", "diff_lo", "diff_hi", "n_examples")
#: the target of the verdict: exact Bayes where it is known (the simulator), else the model
VERDICT_TARGETS = ("bayes", "model")
VERDICT_RULE = ("a kernel-regression head is detected when the head chosen on the selection prompts by its "
                "agreement with {target} beats, on the held-out prompts, both the uniform (majority) vote and "
                "its own weights shuffled within each prompt: each paired-bootstrap {level:.0%} CI of head minus "
                "reference lies above 0")


@dataclass
class Analysis:
    """Tidy tables (lists of dicts with the ``*_COLUMNS`` keys) and a summary dict.

    heads    per layer, head, measure ('agree': the tie-fair agreement of the head's vote
             with a reference prediction, or a 'pearson' / 'spearman' correlation with a
             reference kernel), split ('select' / 'report' / 'all')
    best     per measure and reference: the head chosen on the selection split and its
             held-out score on the report split
    profile  the attention profile (layer, head, position 0..length-1; the label is last)
    probes   key / value probe accuracies per offset, layer and head (empty without vectors)
    references  per target (a reference prediction: 'model', 'gold', 'bayes', ...) and
             reference vote ('uniform', the given reference weights, 'shuffled', 'best'): the
             head chosen by agreement with the target against the reference's vote on the
             report split, with a paired bootstrap CI of the difference
    paired   {target: {'head' | reference: (R,) per-prompt agreement on the report split}}: the
             arrays behind ``references`` (not written; pooling over training seeds uses them)
    """

    heads: list
    best: list
    profile: list
    probes: list
    summary: dict
    references: list = field(default_factory=list)
    paired: dict = field(default_factory=dict)


def _head_rows(rows, per_example, measure, reference, splits):
    """per_example (B, L, H) -> rows of split means."""
    for split, idx in splits.items():
        m = _nanmean0(per_example[idx])
        count = np.isfinite(per_example[idx]).sum(0)
        for (layer, head), v in np.ndenumerate(m):
            rows.append({"layer": layer, "head": head, "measure": measure, "reference": reference,
                         "split": split, "value": float(v), "n_examples": int(count[layer, head])})


def _mean_defined(x) -> float | None:
    """The mean of the finite values of ``x``, None when there is none."""
    ok = np.isfinite(x)
    return float(x[ok].mean()) if ok.any() else None


def _probe_rows(cap: Capture, batch: PromptBatch, probe_targets, select, report, C: int, H: int,
                probe_lambda: float) -> list[dict]:
    """probes.csv's rows: per vector (keys, values), offset, layer and head, the held-out accuracy
    of a ridge probe trained on the selection split (:func:`probe_accuracy`)."""
    probes = []
    targets = {"values": ("label", batch.demo_labels)}
    targets.update(probe_targets or {})
    for vector in ("keys", "values"):
        vecs = getattr(cap, vector)
        if vecs is None or vector not in targets:
            continue
        tname, t = targets[vector]
        acc = probe_accuracy(vecs, np.asarray(t), select, report, C, probe_lambda,
                             heads_per_kv=H // vecs.shape[4])
        layer_ids = np.arange(vecs.shape[3]) if cap.layers is None else cap.layers
        for (o, j, head), v in np.ndenumerate(acc):
            probes.append({"vector": vector, "target": tname, "offset": int(cap.offsets[o]),
                           "layer": int(layer_ids[j]), "head": head, "accuracy": float(v),
                           "n_train": int(select.size * batch.n_demos), "n_test": int(report.size * batch.n_demos)})
    return probes


def _model_summary(model, refs: dict, batch: PromptBatch, votes, best: list, select, report, how: str, seed: int,
                   L: int, H: int) -> dict:
    """The model's part of :func:`analyse`'s summary: its agreement with every reference, its
    accuracy, the majority baseline and Table 2 (the head chosen by agreement with the model)."""
    B, C = model.shape[0], batch.n_classes
    mean_defined = _mean_defined
    acc = {name: mean_defined(tie_agreement(model, ref)) for name, ref in refs.items() if name != "model"}
    acc = {name: v for name, v in acc.items() if v is not None}
    gold = refs.get("gold")
    summary = {"n_examples": B, "n_demos": batch.n_demos, "n_classes": C, "layers": L, "heads": H,
               "weight": how, "n_select": int(select.size), "n_report": int(report.size), "seed": seed,
               "model_matches": acc,
               "model_accuracy": acc.get("gold"),
               "model_accuracy_report": (mean_defined(tie_agreement(model[report], gold[report]))
                                         if gold is not None else None)}
    # the vote of a head that weighs every demonstration equally: the majority label(s), the
    # baseline a head's vote has to beat to show it weighs demonstrations at all
    majority = label_votes(np.ones(batch.demo_labels.shape), batch.demo_labels, C)      # (B, C)
    base = {name: mean_defined(tie_agreement(majority[report], ref[report])) for name, ref in refs.items()}
    summary["majority_baseline"] = {name: v for name, v in base.items() if v is not None}
    top = best[0]                                   # chosen by agreement with the model
    summary["table2"] = {"layer": top["layer"], "head": top["head"], "agreement": top["report"],
                         "icl_accuracy": summary["model_accuracy_report"],
                         "reconstructed_accuracy": (mean_defined(tie_agreement(
                             votes[report, top["layer"], top["head"]], gold[report]))
                                                    if gold is not None else None)}
    return summary


def analyse(cap: Capture, batch: PromptBatch, *, references=None, kernels=None, reference_weights=None,
            how: str = "max", n_select: int = N_SELECT, n_report: int = N_REPORT, seed: int = 0, profile_length: int = 30,
            probe_targets=None, probe_lambda: float = PROBE_LAMBDA, n_perm: int = N_PERMUTATIONS,
            n_boot: int = N_BOOTSTRAP) -> Analysis:
    """Every measurement of one captured batch.

    references  {name: (B,) class index (-1: undefined) or (B, C) scores (NaN rows:
                undefined)}: predictions each head's vote Σ_i a_i e(y_i) is compared with, by
                tie-fair agreement (:func:`reference_scores`; undefined examples are left
                out); 'model' (the model's label distribution) and 'gold' (when every test
                label is known) are always included
    kernels     {name: (B, n) weights}: kernels each head's a_i are correlated with within a
                prompt (Pearson and Spearman), e.g. 'similarity' (prediction similarity) or,
                in the simulator, the theory's K(x_test, x_i)
    reference_weights {name: (B, n) weights >= 0}: demonstration weights whose votes stand beside
                each chosen head (e.g. the theory kernel clipped at 0, a prediction
                similarity); the uniform vote, the head's shuffled weights (``n_perm``
                permutations, :func:`shuffled_agreement`) and the best non-negative weights
                (:func:`best_agreement`) are always added
    probe_targets {'keys' | 'values': (name, (B, n) class index)}: what each probe predicts;
                default values -> y_i ('label')
    Heads are chosen on a selection split and reported on a disjoint report split
    (:func:`split_indices`); probes train on the selection split and test on the report split.

    summary: model_matches {reference: tie-fair agreement of the model with it} (all
    examples), model_accuracy (= model_matches['gold']), model_accuracy_report (report split),
    majority_baseline {reference: agreement of the uniform-weight vote, i.e. the most
    frequent demonstration label(s), on the report split}, table2 (the head chosen by
    agreement with the model: its held-out agreement and the accuracy of its vote),
    reference_votes {reference: {target: agreement on the report split}} (uniform, the given
    reference weights, best), head_vs_references {target: the chosen head (layer, head,
    agreement) and per reference its agreement and the head-minus-reference difference with a
    paired bootstrap CI (``n_boot`` resamples, :func:`paired_bootstrap`)}, verdict
    (:data:`VERDICT_RULE` on exact Bayes where given, else the model).  Undefined numbers are
    None in the summary (NaN in the tables).
    """
    B, L, H, _ = cap.attn.shape
    C = batch.n_classes
    select, report = split_indices(B, n_select, n_report, seed)
    splits = {"select": select, "report": report, "all": np.arange(B)}
    model = cap.label_probs                                                    # (B, C)
    refs = {"model": model}
    if (batch.gold >= 0).all():
        refs["gold"] = batch.gold
    refs.update(references or {})
    refs = {name: reference_scores(ref, B, C) for name, ref in refs.items()}   # (B, C) each
    ref_w = _reference_weights(reference_weights, B, batch.n_demos)
    weights = demo_weights(cap.attn, batch.spans, batch.label_pos, how)       # (B, L, H, n)
    votes = label_votes(weights, batch.demo_labels, C)                         # (B, L, H, C)
    heads, best, agree = [], [], {}

    def choose(per_example, measure, name):
        c = select_head(per_example, select, report)
        best.append({"measure": measure, "reference": name, "layer": c.layer, "head": c.head,
                     "select": c.select_score, "report": c.report_score,
                     "n_select": c.n_select, "n_report": c.n_report})

    for name, ref in refs.items():
        # NaN where the reference is undefined (e.g. a prompt exact Bayes rules out)
        hits = tie_agreement(votes, ref[:, None, None, :])                     # (B, L, H)
        agree[name] = hits
        _head_rows(heads, hits, "agree", name, splits)
        choose(hits, "agree", name)
    for name, kern in (kernels or {}).items():
        for method in ("pearson", "spearman"):
            r = row_correlation(weights, np.asarray(kern)[:, None, None, :], method)
            _head_rows(heads, r, method, name, splits)
            if np.isfinite(r[select]).any():
                choose(r, method, name)
    prof = attention_profile(cap.attn, batch.spans, profile_length)
    profile = [{"layer": layer, "head": head, "position": pos, "attention": float(v),
                "is_label": pos == profile_length - 1} for (layer, head, pos), v in np.ndenumerate(prof)]
    probes = _probe_rows(cap, batch, probe_targets, select, report, C, H, probe_lambda)
    summary = _model_summary(model, refs, batch, votes, best, select, report, how, seed, L, H)
    chosen = {b["reference"]: (b["layer"], b["head"]) for b in best if b["measure"] == "agree"}
    ref_rows, paired, ref_summary = _references(weights, batch.demo_labels, C, refs, agree, chosen, ref_w, report,
                                                n_perm, n_boot, seed)
    summary.update(ref_summary)
    return Analysis(heads, best, profile, probes, summary, ref_rows, paired)


def _none(x) -> float | None:
    """A float for the summary, None where undefined (so summaries compare equal)."""
    return float(x) if x is not None and np.isfinite(x) else None


def _references(weights, demo_labels, C, refs, agree, chosen, ref_w, report, n_perm, n_boot, seed):
    """The references table, the per-prompt report-split arrays behind it and the summary's
    reference_votes, head_vs_references and verdict (see :func:`analyse`)."""
    y = demo_labels[report]
    rows, paired, votes_summary, heads_summary = [], {}, {}, {}
    fixed = {"uniform": np.ones(y.shape), **{k: w[report] for k, w in ref_w.items()}}
    for target, ref in refs.items():
        layer, head = chosen[target]
        t = ref[report]
        per = {"head": agree[target][report, layer, head]}
        for name, w in fixed.items():
            per[name] = tie_agreement(label_votes(w, y, C), t)
        per["shuffled"] = shuffled_agreement(weights[report, layer, head], y, t, C, n_perm, seed)
        per["best"] = best_agreement(t, y, C)
        paired[target] = per
        vs = {}
        for name, score in per.items():
            if name == "head":
                continue
            ok = np.isfinite(score) & np.isfinite(per["head"])
            diff, lo, hi, count = paired_bootstrap(np.where(ok, per["head"] - score, np.nan), n_boot, seed=seed)
            ref_mean = float(score[ok].mean()) if ok.any() else float("nan")
            head_mean = float(per["head"][ok].mean()) if ok.any() else float("nan")
            rows.append({"target": target, "reference": name, "layer": layer, "head": head,
                         "head_agreement": head_mean, "reference_agreement": ref_mean, "difference": diff,
                         "diff_lo": lo, "diff_hi": hi, "n_examples": count})
            vs[name] = {"agreement": _none(ref_mean), "difference": _none(diff), "lo": _none(lo), "hi": _none(hi),
                        "n": count}
            if name != "shuffled":               # the shuffled vote is the chosen head's, not the prompt's
                votes_summary.setdefault(name, {})[target] = _none(ref_mean)
        ok = np.isfinite(per["head"])
        heads_summary[target] = {"layer": layer, "head": head,
                                 "agreement": _none(per["head"][ok].mean()) if ok.any() else None, "vs": vs}
    target = next((t for t in VERDICT_TARGETS if t in heads_summary), None)
    verdict = {"target": target, "rule": VERDICT_RULE.format(target=target, level=CI_LEVEL), "detected": None}
    if target is not None:
        vs = heads_summary[target]["vs"]
        beats = [vs[r]["lo"] is not None and vs[r]["lo"] > 0 for r in ("uniform", "shuffled")]
        verdict.update(detected=all(beats), beats_uniform=beats[0], beats_shuffled=beats[1])
    summary = {"reference_votes": votes_summary, "head_vs_references": heads_summary, "verdict": verdict,
               "n_permutations": n_perm, "n_bootstrap": n_boot, "ci_level": CI_LEVEL}
    return rows, paired, summary


# ---------------------------------------------------------------------- printed tables
def best_heads_table(best) -> list[str]:
    """The printed summary: each (measure, reference)'s head chosen on the selection split."""
    lines = [f"  {'measure':<9} {'reference':<17} {'layer':>5} {'head':>4}  {'select':>7}  {'held-out':>8}"]
    for b in best:
        lines.append(f"  {b['measure']:<9} {b['reference']:<17} {b['layer']:>5} {b['head']:>4}  "
                     f"{b['select']:>7.3f}  {b['report']:>8.3f}")
    return lines


TOP_HEAD_COLUMNS = (("agree", "model"), ("agree", "gold"), ("agree", "bayes"), ("agree", "kernel"),
                    ("pearson", "theory"), ("spearman", "theory"), ("pearson", "model_similarity"))


def top_heads_table(heads, k: int = 3) -> list[str]:
    """The k heads whose votes agree best with the model on the selection split, with their
    held-out (report split) agreement and their correlation with the true kernel."""
    val = {(r["measure"], r["reference"], r["layer"], r["head"], r["split"]): r["value"] for r in heads}
    cand = sorted({(r["layer"], r["head"]) for r in heads},
                  key=lambda lh: -val.get(("agree", "model", *lh, "select"), float("-inf")))[:k]
    cols = [c for c in TOP_HEAD_COLUMNS if any((c[0], c[1], *lh, "report") in val for lh in cand)]
    lines = ["  layer head  " + "  ".join(f"{m[:5] + ' ' + r[:10]:>16}" for m, r in cols)]
    for lh in cand:
        lines.append(f"  {lh[0]:>5} {lh[1]:>4}  " + "  ".join(
            f"{val.get((m, r, *lh, 'report'), float('nan')):>16.3f}" for m, r in cols))
    return lines


def format_ci(d, lo, hi) -> str:
    """'+0.123 [+0.045, +0.201]' (nan where undefined): a difference and its interval."""
    def f(v):
        return "nan" if v is None or not np.isfinite(v) else f"{v:+.3f}"

    return f"{f(d)} [{f(lo)}, {f(hi)}]"


def reference_table(summary: dict, targets=("model", "bayes", "gold")) -> list[str]:
    """The printed references: per target (those of ``targets`` in the summary, in that order)
    the head chosen by agreement with it and, per reference vote, the reference's held-out
    agreement, the head's, and head minus reference with its paired bootstrap CI; then the
    verdict and its rule (:data:`VERDICT_RULE`).  From :func:`analyse`'s summary alone."""
    def f(v):
        return "nan" if v is None or not np.isfinite(v) else f"{v:.3f}"

    hv = summary.get("head_vs_references", {})
    lines = [f"reference votes on the {summary['n_report']} held-out prompts beside the head chosen by agreement "
             f"with each target (head minus reference: paired bootstrap {summary['ci_level']:.0%} CI, "
             f"{summary['n_bootstrap']} resamples; shuffled: the head's weights permuted within each prompt, "
             f"best: the best non-negative weights, an upper bound):",
             f"  {'target':<7} {'head':<8} {'reference':<17} {'reference':>9} {'head':>6}  difference [CI]"]
    for target in [t for t in targets if t in hv]:
        h = hv[target]
        for i, (name, v) in enumerate(h["vs"].items()):
            first = f"{target:<7} {'L' + str(h['layer']) + ' H' + str(h['head']):<8}" if i == 0 else " " * 16
            lines.append(f"  {first} {name:<17} {f(v['agreement']):>9} {f(h['agreement']):>6}  "
                         f"{format_ci(v['difference'], v['lo'], v['hi'])}")
    v = summary.get("verdict")
    if v and v.get("target") in hv:
        vs = hv[v["target"]]["vs"]
        word = "detected" if v["detected"] else "not detected"
        u, sh = vs["uniform"], vs["shuffled"]
        lines.append(f"verdict ({v['target']}): kernel-regression head {word}: head minus uniform "
                     f"{format_ci(u['difference'], u['lo'], u['hi'])}, minus shuffled "
                     f"{format_ci(sh['difference'], sh['lo'], sh['hi'])}")
        lines.append(f"  rule: {v['rule']}")
    return lines
