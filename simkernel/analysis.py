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

The only simkernel import is ``metrics`` (pure numpy); scipy is imported only for ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .metrics import onehot_scores, tie_accuracy, tie_agreement

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
def split_indices(n_examples: int, n_select: int = 700, n_report: int = 300, seed: int = 0):
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


# ---------------------------------------------------------------------- one analysis
#: offsets from each label token whose keys and values the probes read: the token before the
#: label, the label, and the three after it (what measure_model and llm ask capture for)
PROBE_OFFSETS = (-1, 0, 1, 2, 3)
HEAD_COLUMNS = ("layer", "head", "measure", "reference", "split", "value", "n_examples")
PROFILE_COLUMNS = ("layer", "head", "position", "attention", "is_label")
PROBE_COLUMNS = ("vector", "target", "offset", "layer", "head", "accuracy", "n_train", "n_test")
BEST_COLUMNS = ("measure", "reference", "layer", "head", "select", "report", "n_select", "n_report")


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
    """

    heads: list
    best: list
    profile: list
    probes: list
    summary: dict


def _head_rows(rows, per_example, measure, reference, splits):
    """per_example (B, L, H) -> rows of split means."""
    for split, idx in splits.items():
        m = _nanmean0(per_example[idx])
        count = np.isfinite(per_example[idx]).sum(0)
        for (layer, head), v in np.ndenumerate(m):
            rows.append({"layer": layer, "head": head, "measure": measure, "reference": reference,
                         "split": split, "value": float(v), "n_examples": int(count[layer, head])})


def analyse(cap: Capture, batch: PromptBatch, *, references=None, kernels=None, how: str = "max",
            n_select: int = 700, n_report: int = 300, seed: int = 0, profile_length: int = 30,
            probe_targets=None, probe_lambda: float = PROBE_LAMBDA) -> Analysis:
    """Every measurement of one captured batch.

    references  {name: (B,) class index (-1: undefined) or (B, C) scores (NaN rows:
                undefined)}: predictions each head's vote Σ_i a_i e(y_i) is compared with, by
                tie-fair agreement (:func:`reference_scores`; undefined examples are left
                out); 'model' (the model's label distribution) and 'gold' (when every test
                label is known) are always included
    kernels     {name: (B, n) weights}: kernels each head's a_i are correlated with within a
                prompt (Pearson and Spearman), e.g. 'similarity' (prediction similarity) or,
                in the simulator, the theory's K(x_test, x_i)
    probe_targets {'keys' | 'values': (name, (B, n) class index)}: what each probe predicts;
                default values -> y_i ('label')
    Heads are chosen on a selection split and reported on a disjoint report split
    (:func:`split_indices`); probes train on the selection split and test on the report split.

    summary: model_matches {reference: tie-fair agreement of the model with it} (all
    examples), model_accuracy (= model_matches['gold']), model_accuracy_report (report split),
    majority_baseline {reference: agreement of the uniform-weight vote, i.e. the most
    frequent demonstration label(s), on the report split}, table2 (the head chosen by
    agreement with the model: its held-out agreement and the accuracy of its vote).
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
    weights = demo_weights(cap.attn, batch.spans, batch.label_pos, how)       # (B, L, H, n)
    votes = label_votes(weights, batch.demo_labels, C)                         # (B, L, H, C)
    heads, best = [], []

    def choose(per_example, measure, name):
        c = select_head(per_example, select, report)
        best.append({"measure": measure, "reference": name, "layer": c.layer, "head": c.head,
                     "select": c.select_score, "report": c.report_score,
                     "n_select": c.n_select, "n_report": c.n_report})

    for name, ref in refs.items():
        # NaN where the reference is undefined (e.g. a prompt exact Bayes rules out)
        hits = tie_agreement(votes, ref[:, None, None, :])                     # (B, L, H)
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
    def mean_defined(x):
        ok = np.isfinite(x)
        return float(x[ok].mean()) if ok.any() else None

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
    return Analysis(heads, best, profile, probes, summary)


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
