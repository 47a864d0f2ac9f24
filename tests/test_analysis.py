"""The analysis on arrays with known answers: reconstruction, attention profile, correlations,
ridge probes, the held-out head selection, and tie-fair scoring (a tie among m labels scores
1/m) on hand-built attention and hand-counted majority votes.  The capture itself is tested in
test_capture, the end-to-end runs on a trained model in test_alignment."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simkernel import analysis as A
from simkernel.capture import Capture
from simkernel.prompts import Example, collate


# ---------------------------------------------------------------------- hand-built batches
def top(x, rtol=1e-9):
    """(..., C) bool: the scores within rtol (relative) of the maximum (scores >= 0), written
    out here rather than taken from simkernel.metrics."""
    return x >= x.max(-1, keepdims=True) * (1 - rtol)


def fair(a, b):
    """Expected [a's argmax == b's argmax] under uniform tie-breaks, by enumerating every pair
    of choices from the top sets a, b (..., C) bool."""
    out = np.zeros(a.shape[:-1])
    for idx in np.ndindex(*a.shape[:-1]):
        pairs = [(i, j) for i in np.flatnonzero(a[idx]) for j in np.flatnonzero(b[idx])]
        out[idx] = sum(i == j for i, j in pairs) / len(pairs)
    return out


def batch_of(demo_labels, gold, C, span=2):
    """Unpadded prompts whose demonstrations carry ``demo_labels`` (B, n), each a span of
    ``span`` tokens ending on its label, then a 2-token test input."""
    demo_labels = np.asarray(demo_labels)
    B, n = demo_labels.shape
    spans = np.stack([np.arange(n) * span, np.arange(n) * span + span], 1)
    ex = [Example(np.arange(n * span + 2) % 7 + 1, spans, spans[:, 1] - 1, demo_labels[b], int(gold[b]))
          for b in range(B)]
    return collate(ex, np.arange(C) + 10)


def head_value(res, reference, layer=0, head=0, split="all"):
    return next(r for r in res.heads if (r["measure"], r["reference"], r["layer"], r["head"], r["split"])
                == ("agree", reference, layer, head, split))


def layout(B=6, n=5, span=3, C=3, seed=0):
    """B unpadded prompts of n demonstrations of ``span`` tokens each, then a 2-token test
    input; labels drawn at random.  Returns a PromptBatch (no padding)."""
    rng = np.random.default_rng(seed)
    T = n * span + 2
    spans = np.stack([np.arange(n) * span, np.arange(n) * span + span], 1)
    ex = [Example(rng.integers(0, 50, T), spans, spans[:, 1] - 1, rng.integers(0, C, n), int(rng.integers(0, C)))
          for _ in range(B)]
    return collate(ex, np.arange(C) + 10)


def test_head_on_the_labels_of_one_class_reconstructs_that_class():
    batch = layout(B=8, n=6, C=3)
    B, T = batch.input_ids.shape
    attn = np.zeros((B, 1, 3, T))
    for b in range(B):
        for c in range(3):
            on = batch.label_pos[b][batch.demo_labels[b] == c]
            if on.size:                                    # head c attends only to class-c labels
                attn[b, 0, c, on] = 1.0 / on.size
            else:
                attn[b, 0, c, -1] = 1.0
    w = A.demo_weights(attn, batch.spans, batch.label_pos, "max")
    rec = A.reconstruct(w, batch.demo_labels, 3)                          # (B, 1, 3)
    for c in range(3):
        has = (batch.demo_labels == c).any(1)
        assert (rec[has, 0, c] == c).all()


def test_uniform_attention_reconstructs_the_majority_label():
    batch = layout(B=30, n=7, C=3, seed=3)
    B, T = batch.input_ids.shape
    attn = np.full((B, 2, 2, T), 1.0 / T)
    counts = np.stack([(batch.demo_labels == c).sum(1) for c in range(3)], 1)
    majority = counts.argmax(1)                                           # ties: lowest class, as documented
    for how in A.WEIGHTS:
        rec = A.reconstruct(A.demo_weights(attn, batch.spans, batch.label_pos, how), batch.demo_labels, 3)
        assert (rec == majority[:, None, None]).all()
    # weights without layer / head axes: (B, n)
    np.testing.assert_array_equal(A.reconstruct(np.ones((B, 7)), batch.demo_labels, 3), majority)


def test_demo_weights_max_label_mean_on_known_values():
    spans = np.array([[[0, 3], [3, 6]]])
    label_pos = np.array([[2, 5]])
    attn = np.array([0.1, 0.5, 0.05, 0.0, 0.2, 0.15, 0.0])[None, None, None, :]
    np.testing.assert_allclose(A.demo_weights(attn, spans, label_pos, "max")[0, 0, 0], [0.5, 0.2])
    np.testing.assert_allclose(A.demo_weights(attn, spans, label_pos, "label")[0, 0, 0], [0.05, 0.15])
    np.testing.assert_allclose(A.demo_weights(attn, spans, label_pos, "mean")[0, 0, 0], [0.65 / 3, 0.35 / 3])
    with pytest.raises(ValueError, match="unknown weight 'sum'; allowed: max, label, mean"):
        A.demo_weights(attn, spans, label_pos, "sum")


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 6), st.integers(2, 4))
def test_label_vote_is_invariant_to_the_order_of_demonstrations(seed, n, C):
    rng = np.random.default_rng(seed)
    w = rng.random((3, 2, 2, n))
    y = rng.integers(0, C, (3, n))
    perm = rng.permutation(n)
    np.testing.assert_allclose(A.label_votes(w, y, C), A.label_votes(w[..., perm], y[:, perm], C))
    # the vote is the total weight on each class
    np.testing.assert_allclose(A.label_votes(w, y, C).sum(-1), w.sum(-1))


def test_attention_profile_interpolates_and_ends_on_the_label():
    # one prompt, one demonstration of 3 tokens with attention 0, 0.3, 0.6: linear in position
    attn = np.zeros((1, 1, 1, 4))
    attn[0, 0, 0, :3] = [0.0, 0.3, 0.6]
    prof = A.attention_profile(attn, np.array([[[0, 3]]]), length=7)
    np.testing.assert_allclose(prof[0, 0], np.linspace(0, 0.6, 7), atol=1e-12)
    # a one-token span is constant, and spans are averaged
    attn2 = np.zeros((1, 1, 1, 5))
    attn2[0, 0, 0, 3] = 0.8
    prof2 = A.attention_profile(np.concatenate([attn2, attn2]), np.array([[[3, 4]], [[0, 1]]]), length=5)
    np.testing.assert_allclose(prof2[0, 0], np.full(5, 0.4))


def test_probe_on_one_hot_values_scores_one_and_on_noise_near_chance():
    rng = np.random.default_rng(0)
    B, n, C, d = 60, 6, 4, 8
    y = rng.integers(0, C, (B, n))
    vec = np.zeros((B, n, 1, 2, 1, d))
    vec[:, :, 0, 0, 0, :C] = np.eye(C)[y]                                 # layer 0: the label, one-hot
    vec[:, :, 0, 1, 0] = rng.normal(size=(B, n, d))                       # layer 1: noise
    train, test = A.split_indices(B, 40, 20, seed=1)
    acc = A.probe_accuracy(vec, y, train, test, C)
    assert acc[0, 0, 0] == 1.0
    assert acc[0, 1, 0] < 0.5


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.integers(3, 30), st.integers(2, 12), st.sampled_from([1e-3, 0.01, 1.0]))
def test_ridge_fit_matches_the_stacked_least_squares_closed_form(seed, N, d, lam):
    """Ridge with an unpenalised intercept = least squares on [X_c; √λ I] W = [T_c; 0] (both
    the primal form, d <= N, and the dual form, d > N)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, d))
    y = rng.integers(0, 3, N)
    w, b = A.ridge_fit(x, y, 3, lam)
    t = np.eye(3)[y]
    xc, tc = x - x.mean(0), t - t.mean(0)
    ref = np.linalg.lstsq(np.vstack([xc, np.sqrt(lam) * np.eye(d)]), np.vstack([tc, np.zeros((d, 3))]),
                          rcond=None)[0]
    np.testing.assert_allclose(w, ref, atol=1e-8, rtol=1e-6)
    np.testing.assert_allclose(b, t.mean(0) - x.mean(0) @ ref, atol=1e-8)


def test_correlations_match_scipy_and_are_nan_for_constant_rows():
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(1)
    a = rng.random((5, 9))
    b = np.round(rng.random((5, 9)), 1)                                   # ties, for Spearman
    for i in range(5):
        assert A.row_correlation(a[i], b[i]) == pytest.approx(pearsonr(a[i], b[i])[0], abs=1e-12)
        assert A.row_correlation(a[i], b[i], "spearman") == pytest.approx(spearmanr(a[i], b[i])[0], abs=1e-12)
    assert np.isnan(A.row_correlation(a[0], np.full(9, 0.3)))
    # a head's mean within-prompt correlation leaves out the constant prompts
    w = np.stack([a[0], a[1], np.ones(9)])[:, None, None, :]              # (3 prompts, L=1, H=1, n)
    target = np.stack([b[0], -b[0], b[1]])
    expect = 0.5 * (pearsonr(a[0], b[0])[0] + pearsonr(a[1], -b[0])[0])
    assert A.head_correlation(w, target)[0, 0] == pytest.approx(expect, abs=1e-12)


# ---------------------------------------------------------------------- held-out selection
@settings(max_examples=50, deadline=None)
@given(st.integers(2, 2000), st.integers(1, 900), st.integers(1, 400), st.integers(0, 2**31))
def test_split_is_disjoint_and_scaled_down_in_proportion(n, n_select, n_report, seed):
    sel, rep = A.split_indices(n, n_select, n_report, seed)
    assert np.intersect1d(sel, rep).size == 0
    assert sel.size >= 1 and rep.size >= 1
    assert sel.max() < n and rep.max() < n
    if n >= n_select + n_report:
        assert (sel.size, rep.size) == (n_select, n_report)
    else:
        assert sel.size + rep.size == n


def test_selection_never_reports_on_the_examples_it_selected_with():
    """Head 1 is perfect on the selection split and useless on the report split; head 0 is the
    other way round.  Selection must pick head 1 and report its held-out score, 0."""
    B = 100
    sel, rep = A.split_indices(B, 70, 30, seed=4)
    hits = np.zeros((B, 1, 2))
    hits[sel, 0, 1] = 1.0
    hits[rep, 0, 0] = 1.0
    c = A.select_head(hits, sel, rep)
    assert (c.layer, c.head, c.select_score, c.report_score) == (0, 1, 1.0, 0.0)
    with pytest.raises(ValueError, match="overlap"):
        A.select_head(hits, sel, np.append(rep, sel[0]))


def test_analyse_reports_the_chosen_head_on_held_out_prompts_only():
    batch = layout(B=50, n=6, C=3, seed=7)
    B, T = batch.input_ids.shape
    attn = np.full((B, 2, 3, T), 1.0 / T)
    for b in range(B):                                     # layer 1 head 2 attends to class-1 labels
        on = batch.label_pos[b][batch.demo_labels[b] == 1]
        if on.size:
            attn[b, 1, 2] = 0.0
            attn[b, 1, 2, on] = 1.0 / on.size
    # the model "predicts" class 1 whenever a class-1 demonstration exists
    has1 = (batch.demo_labels == 1).any(1)
    logp = np.log(np.where(np.arange(3)[None] == np.where(has1, 1, 0)[:, None], 0.9, 0.05))
    res = A.analyse(Capture(attn, logp), batch, n_select=35, n_report=15, seed=0)
    best = {(r["measure"], r["reference"]): r for r in res.best}
    assert (best[("agree", "model")]["layer"], best[("agree", "model")]["head"]) == (1, 2)
    sel, rep = A.split_indices(B, 35, 15, seed=0)
    # the head's vote: its top set (a tie where it attends evenly and two labels are as frequent)
    vote = top(A.label_votes(A.demo_weights(attn, batch.spans, batch.label_pos), batch.demo_labels, 3)[:, 1, 2])
    pred = np.eye(3, dtype=bool)[np.where(has1, 1, 0)]
    gold = np.eye(3, dtype=bool)[batch.gold]
    assert best[("agree", "model")]["report"] == pytest.approx(fair(vote[rep], pred[rep]).mean())
    t2 = res.summary["table2"]
    assert t2["reconstructed_accuracy"] == pytest.approx(fair(vote[rep], gold[rep]).mean())
    assert t2["icl_accuracy"] == pytest.approx((np.where(has1, 1, 0)[rep] == batch.gold[rep]).mean())
    assert head_value(res, "model", 1, 2, "report")["value"] == pytest.approx(best[("agree", "model")]["report"])
    counts = np.stack([(batch.demo_labels == c).sum(1) for c in range(3)], 1)
    majority = counts == counts.max(1, keepdims=True)
    assert (majority[rep].sum(1) > 1).any()                # ties occur on the report prompts
    assert res.summary["majority_baseline"]["gold"] == pytest.approx(fair(majority[rep], gold[rep]).mean())
    prof = {(r["layer"], r["head"], r["position"]): r["attention"] for r in res.profile}
    assert len(prof) == 2 * 3 * 30 and all(r["is_label"] == (r["position"] == 29) for r in res.profile)


# ---------------------------------------------------------------------- ties
def even_heads(batch, tie_sets):
    """Attention (B, 1, H, T): head h puts equal weight on the label token of one demonstration
    of every class in tie_sets[h][b] and the rest on the last token (outside every span)."""
    B, T = batch.input_ids.shape
    attn = np.zeros((B, 1, len(tie_sets), T), np.float32)
    for h, sets in enumerate(tie_sets):
        for b, S in enumerate(sets):
            w = 1.0 / (len(S) + 1)
            for c in S:
                attn[b, 0, h, batch.label_pos[b][np.flatnonzero(batch.demo_labels[b] == c)[0]]] = w
            attn[b, 0, h, -1] = 1.0 - w * len(S)
    return attn


def test_a_head_tie_among_m_labels_scores_one_over_m():
    """Head h weighs one demonstration of each of classes 0..h equally: its vote ties among
    m = h + 1 labels that hold the gold label, so its agreement with gold is 1/m; against a
    reference tied on {0, 1} it is |{0..h} ∩ {0, 1}| / (2m)."""
    C, B = 4, 6
    batch = batch_of(np.tile(np.arange(C), (B, 1)), np.zeros(B), C)
    attn = even_heads(batch, [[range(m)] * B for m in range(1, C + 1)])
    pair = np.tile([0.4, 0.4, 0.1, 0.1], (B, 1))
    logp = np.log(np.tile([0.7, 0.1, 0.1, 0.1], (B, 1)))
    res = A.analyse(Capture(attn, logp), batch, references={"pair": pair}, n_select=3, n_report=3)
    for h in range(C):
        m = h + 1
        assert head_value(res, "gold", head=h)["value"] == pytest.approx(1 / m, abs=1e-15)
        assert head_value(res, "model", head=h)["value"] == pytest.approx(1 / m, abs=1e-15)
        assert head_value(res, "pair", head=h)["value"] == pytest.approx(min(m, 2) / (2 * m), abs=1e-15)
    # the lowest-index argmax (still what reconstruct shows) would credit every head with 1
    w = A.demo_weights(attn, batch.spans, batch.label_pos)
    assert (A.reconstruct(w, batch.demo_labels, C) == 0).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31), st.integers(2, 5))
def test_head_agreement_is_the_expected_value_of_random_tie_breaks(seed, C):
    """Random tie sets on both sides (the head's vote, built from attention; the reference, as
    (B, C) scores): each prompt scores the fraction of equal pairs of tie-break choices."""
    rng = np.random.default_rng(seed)
    B = 5
    batch = batch_of(np.stack([rng.permutation(C) for _ in range(B)]), rng.integers(0, C, B), C)

    def subsets():
        return [np.flatnonzero(rng.random(C) < 0.5) if rng.random() < 0.8 else np.arange(C) for _ in range(B)]

    head_sets = [S if S.size else np.array([0]) for S in subsets()]
    ref_sets = subsets()
    ref = np.zeros((B, C))
    for b, S in enumerate(ref_sets):
        ref[b, S] = 1.0                                    # an empty set: an all-zero row, a tie everywhere
    attn = even_heads(batch, [head_sets])
    res = A.analyse(Capture(attn, np.zeros((B, C))), batch, references={"r": ref}, n_select=2, n_report=3)
    a = np.zeros((B, C), bool)
    for b, S in enumerate(head_sets):
        a[b, S] = True
    b_sets = ref > 0
    b_sets[~b_sets.any(1)] = True
    assert head_value(res, "r")["value"] == pytest.approx(fair(a, b_sets).mean(), abs=1e-12)
    # the model's distribution is uniform: a tie among all C labels, 1/C with any reference
    assert res.summary["model_matches"]["r"] == pytest.approx(1 / C, abs=1e-12)
    assert res.summary["model_accuracy"] == pytest.approx(1 / C, abs=1e-12)


def test_majority_baseline_is_the_expected_value_under_uniform_tie_breaking():
    """Hand-counted majority votes (ties of 2 and 3 labels) against gold and a reference tied
    on {1, 2}: the baseline is the report-split mean of the values written out below."""
    labels = [[0, 0, 1, 2, 0, 1],      # counts (3, 2, 1): {0}
              [0, 1, 1, 2, 1, 2],      # (1, 3, 2): {1}
              [0, 1, 0, 1, 0, 1],      # (3, 3, 0): {0, 1}
              [0, 1, 2, 2, 1, 0],      # (2, 2, 2): {0, 1, 2}
              [2, 2, 1, 1, 0, 0],      # (2, 2, 2): {0, 1, 2}
              [1, 1, 1, 2, 2, 2]]      # (0, 3, 3): {1, 2}
    gold = [0, 0, 1, 2, 0, 0]
    vs_gold = np.array([1, 0, 1 / 2, 1 / 3, 1 / 3, 0])
    vs_pair = np.array([0, 1 / 2, 1 / 4, 1 / 3, 1 / 3, 1 / 2])
    lowest = np.array([1, 0, 0, 0, 1, 0])                  # argmax with the lowest class on ties
    labels, gold = np.array(labels * 2), np.array(gold * 2)
    vs_gold, vs_pair, lowest = np.tile(vs_gold, 2), np.tile(vs_pair, 2), np.tile(lowest, 2)
    batch = batch_of(labels, gold, 3)
    B, T = batch.input_ids.shape
    pair = np.tile([0.2, 0.4, 0.4], (B, 1))
    cap = Capture(np.full((B, 1, 1, T), 1 / T, np.float32), np.log(np.tile([0.5, 0.3, 0.2], (B, 1))))
    res = A.analyse(cap, batch, references={"pair": pair}, n_select=6, n_report=6, seed=1)
    _, rep = A.split_indices(B, 6, 6, seed=1)
    base = res.summary["majority_baseline"]
    assert base["gold"] == pytest.approx(vs_gold[rep].mean(), abs=1e-12)
    assert base["pair"] == pytest.approx(vs_pair[rep].mean(), abs=1e-12)
    assert base["gold"] != pytest.approx(lowest[rep].mean())
    # the model always says 0: the majority vote agrees with it on [0 in the tie] / m
    assert base["model"] == pytest.approx(np.tile([1, 0, 1 / 2, 1 / 3, 1 / 3, 0], 2)[rep].mean(), abs=1e-12)
    # a head attending evenly over the whole prompt is the majority vote
    assert head_value(res, "gold", split="report")["value"] == pytest.approx(base["gold"], abs=1e-12)


def test_undefined_references_are_left_out():
    """A (B,) reference of -1 and a (B, C) reference with a NaN row leave those examples out of
    the heads table, the model's matches and the baseline; an index reference scores exactly as
    its one-hot scores; a reference of another shape is refused."""
    rng = np.random.default_rng(0)
    B, C = 10, 3
    batch = batch_of(rng.integers(0, C, (B, 6)), rng.integers(0, C, B), C)
    T = batch.input_ids.shape[1]
    idx = rng.integers(0, C, B)
    idx[[1, 4]] = -1
    scores = np.eye(C)[idx]
    scores[[1, 4]] = np.nan
    cap = Capture(rng.random((B, 2, 2, T)).astype(np.float32), np.log(rng.dirichlet(np.ones(C), B)))
    res = A.analyse(cap, batch, references={"idx": idx, "scores": scores}, n_select=5, n_report=5)
    for r in (r for r in res.heads if r["reference"] == "idx" and r["split"] == "all"):
        assert r["n_examples"] == B - 2
        twin = next(t for t in res.heads if (t["reference"], t["layer"], t["head"], t["split"], t["measure"])
                    == ("scores", r["layer"], r["head"], "all", r["measure"]))
        assert twin["value"] == r["value"] and twin["n_examples"] == B - 2
    keep = idx >= 0
    assert res.summary["model_matches"]["idx"] == pytest.approx(
        (cap.label_probs.argmax(1) == idx)[keep].mean(), abs=1e-12)
    assert res.summary["model_matches"]["scores"] == res.summary["model_matches"]["idx"]
    for bad in (idx[:-1], np.zeros((B, C + 1)), idx.astype(float), np.full(B, C)):
        with pytest.raises(ValueError, match="reference"):
            A.analyse(cap, batch, references={"bad": bad}, n_select=5, n_report=5)


def test_probe_accuracy_is_tie_fair():
    """An all-zero value vector predicts the intercept, the class means: with two classes
    equally frequent in training they tie, and each test example scores 1/2 (the
    lowest-index argmax would score 1 on class 0 and 0 on class 1)."""
    y_train = np.array([0, 1] * 10)
    y_test = np.array([0, 1, 1, 1])
    acc = A.ridge_accuracy(np.zeros((20, 3)), y_train, np.zeros((4, 3)), y_test, 2)
    assert acc == pytest.approx(0.5, abs=1e-12)


# ---------------------------------------------------------------------- reference votes
def lp_best_agreement(target_top, labels, C):
    """The best tie-fair agreement of any vote Σ_i a_i e(y_i), a >= 0, with a target whose top
    set is ``target_top`` (C,) bool, by brute force over the vote's possible top sets S: S is
    reachable iff the LP  v_c = t (c in S), v_c <= t - 1 (c not in S), a >= 0, t >= 0  is
    feasible (scipy.optimize.linprog), and then scores |S ∩ T| / (|S| |T|)."""
    from scipy.optimize import linprog

    n = len(labels)
    E = np.eye(C)[labels].T                                          # (C, n): v = E a
    best = 0.0
    for mask in range(1, 2 ** C):
        S = np.array([(mask >> c) & 1 for c in range(C)], bool)
        A = np.hstack([E, -np.ones((C, 1))])                          # v_c - t
        res = linprog(np.zeros(n + 1), A_ub=A[~S] if (~S).any() else None,
                      b_ub=-np.ones((~S).sum()) if (~S).any() else None, A_eq=A[S], b_eq=np.zeros(S.sum()),
                      bounds=[(0, None)] * (n + 1), method="highs")
        if res.status == 0:
            best = max(best, (S & target_top).sum() / (S.sum() * target_top.sum()))
    return best


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 5), st.integers(2, 4))
def test_best_agreement_is_the_linear_programs_optimum_and_bounds_every_vote(seed, n, C):
    """The closed form (1/m where the target's m top labels meet the demonstrations' labels, 1/C
    where they do not) equals the brute-force LP optimum; it is >= the vote of non-negative
    least squares (scipy.optimize.nnls) and of random, sparse and all-zero weights."""
    from scipy.optimize import nnls

    rng = np.random.default_rng(seed)
    B = 6
    y = rng.integers(0, C, (B, n))
    target = rng.integers(0, 3, (B, C)).astype(float)                # integer scores: ties are frequent
    target[0] = np.nan                                                # undefined
    got = A.best_agreement(target, y, C)
    assert np.isnan(got[0])
    for b in range(1, B):
        T = top(target[b])
        assert got[b] == pytest.approx(lp_best_agreement(T, y[b], C), abs=1e-12)
        present = np.zeros(C, bool)
        present[y[b]] = True
        assert got[b] == pytest.approx(1 / T.sum() if (T & present).any() else 1 / C, abs=1e-12)
        a = nnls(np.eye(C)[y[b]].T, target[b] / target[b].sum() if target[b].sum() else np.ones(C) / C)[0]
        candidates = [a, rng.random(n), rng.random(n) * (rng.random(n) < 0.4), np.zeros(n)]
        for w in candidates:
            v = A.label_votes(w[None], y[b][None], C)[0]
            assert fair(top(v)[None], T[None])[0] <= got[b] + 1e-12
    # the weights attaining it are non-negative and score exactly the bound
    w = A.best_weights(target, y, C)
    assert (w >= 0).all()
    from simkernel.metrics import tie_agreement
    np.testing.assert_allclose(tie_agreement(A.label_votes(w, y, C), target)[1:], got[1:], atol=0)


def brute_shuffled(w, y, target, C):
    """E over every permutation π of the fair agreement of Σ_i w_π(i) e(y_i) with the target
    (itertools, one prompt)."""
    import itertools

    T = top(target)
    scores = [fair(top(A.label_votes(w[list(p)][None], y[None], C))[0][None], T[None])[0]
              for p in itertools.permutations(range(len(w)))]
    return np.mean(scores)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 5), st.integers(2, 4))
def test_shuffled_control_is_the_average_over_every_permutation(seed, n, C):
    """With n! <= n_perm the control is exact: the mean over all permutations of the weights,
    counted here with itertools (weights rounded so that the vote ties sometimes).  It is also
    the mean of the heads whose weights are the permutations of one vector (an exchangeable
    family); constant weights are their own control and the uniform vote."""
    import itertools

    rng = np.random.default_rng(seed)
    B = 4
    y = rng.integers(0, C, (B, n))
    target = rng.integers(0, 3, (B, C)).astype(float)
    w = np.round(rng.random((B, n)), 1)
    got = A.shuffled_agreement(w, y, target, C, n_perm=120)
    for b in range(B):
        assert got[b] == pytest.approx(brute_shuffled(w[b], y[b], target[b], C), abs=1e-12)
    perms = list(itertools.permutations(range(n)))
    family = np.stack([w[:, list(p)] for p in perms], 1)             # (B, n!, n): heads on the 2nd axis
    from simkernel.metrics import tie_agreement
    heads = tie_agreement(A.label_votes(family, y, C), target[:, None, :])
    np.testing.assert_allclose(heads.mean(1), got, atol=1e-12)
    np.testing.assert_allclose(A.shuffled_agreement(family, y, target, C, n_perm=120),
                               np.repeat(got[:, None], len(perms), 1), atol=1e-12)
    # exchangeable weights: constant within each prompt
    flat = np.full((B, n), 0.3)
    uniform = tie_agreement(A.label_votes(np.ones((B, n)), y, C), target)
    np.testing.assert_allclose(A.shuffled_agreement(flat, y, target, C), uniform, atol=0)
    np.testing.assert_allclose(A.shuffled_agreement(flat, y, target, C, n_perm=3), uniform, atol=0)


def test_shuffled_control_samples_permutations_when_there_are_too_many():
    """n = 7 (5040 permutations) with 400 drawn: within Monte Carlo error of the exact value;
    a head on one demonstration scores, shuffled, the frequency of the target's label (not the
    majority vote's agreement: the control is the uniform vote only for exchangeable weights)."""
    rng = np.random.default_rng(3)
    B, n, C = 3, 7, 3
    y = rng.integers(0, C, (B, n))
    target = np.eye(C)[rng.integers(0, C, B)]
    w = rng.random((B, n))
    got = A.shuffled_agreement(w, y, target, C, n_perm=400, seed=1)
    for b in range(B):
        assert abs(got[b] - brute_shuffled(w[b], y[b], target[b], C)) < 0.1
    np.testing.assert_array_equal(got, A.shuffled_agreement(w, y, target, C, n_perm=400, seed=1))  # seeded
    one = np.zeros((B, n))
    one[:, 0] = 1.0
    exact = A.shuffled_agreement(one[:, :5], y[:, :5], target, C, n_perm=120)
    freq = np.array([(y[b, :5] == target[b].argmax()).mean() for b in range(B)])
    np.testing.assert_allclose(exact, freq, atol=1e-12)
    with pytest.raises(ValueError, match="n_perm must be >= 1"):
        A.shuffled_agreement(w, y, target, C, n_perm=0)


def test_paired_bootstrap_matches_scipy_and_drops_undefined_prompts():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(0)
    d = rng.choice([-1.0, 0.0, 0.0, 1.0, 0.5], 200)
    mean, lo, hi, count = A.paired_bootstrap(np.append(d, [np.nan, np.nan]), n_boot=20000)
    assert count == 200 and mean == pytest.approx(d.mean())
    ref = bootstrap((d,), np.mean, n_resamples=20000, method="percentile", random_state=1).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.01) and hi == pytest.approx(ref.high, abs=0.01)
    assert A.paired_bootstrap(np.full(5, 0.25)) == (0.25, 0.25, 0.25, 5)
    assert np.isnan(A.paired_bootstrap(np.full(3, np.nan))[0])
    with pytest.raises(ValueError, match="level must be in"):
        A.paired_bootstrap(d, level=1.0)


def kernel_head_batch(B=80, n=6, C=3, seed=5):
    """Prompts with one hidden 'good' demonstration whose label is the target: head (0, 1)
    attends to it alone (a kernel whose weight sits on the demonstration that decides), head
    (0, 0) attends evenly (the uniform vote)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, (B, n))
    batch = batch_of(y, np.zeros(B, int), C)
    T = batch.input_ids.shape[1]
    attn = np.full((B, 1, 2, T), 1.0 / T, np.float32)
    good = np.zeros((B, n), bool)
    target = np.zeros((B, C))
    for b in range(B):
        i = rng.integers(n)
        good[b, i] = True
        target[b, y[b, i]] = 1.0
        attn[b, 0, 1] = 0.0
        attn[b, 0, 1, batch.label_pos[b][i]] = 1.0
    return batch, attn, target, good


def test_analyse_reports_every_reference_beside_the_chosen_heads():
    """references.csv rows and the summary against recomputation: head (0, 1) weighs exactly the
    demonstration that decides the target, so it beats the uniform vote and its shuffled weights
    (the verdict detects it); the best bound is >= every head and every reference on every
    prompt; differences are paired (head minus reference per prompt, then the mean)."""
    from simkernel.metrics import tie_agreement

    batch, attn, target, good = kernel_head_batch()
    B, n, C = 80, 6, 3
    rng = np.random.default_rng(1)
    kern = rng.random((B, n))
    kern[:5] = 0.0                                                     # a kernel clipped to nothing: a C-way tie
    res = A.analyse(Capture(attn, np.log(np.full((B, C), 1 / C))), batch, references={"bayes": target},
                    reference_weights={"kern": kern, "oracle_w": good.astype(float)}, n_select=40, n_report=40)
    assert set(res.references[0]) == set(A.REFERENCE_COLUMNS)
    _, rep = A.split_indices(B, 40, 40, 0)
    rows = {(r["target"], r["reference"]): r for r in res.references}
    assert {r for _, r in rows} == {"uniform", "kern", "oracle_w", "shuffled", "best"}
    w = A.demo_weights(attn, batch.spans, batch.label_pos)
    votes = A.label_votes(w, batch.demo_labels, C)
    for target_name, ref in (("bayes", target), ("gold", np.eye(C)[batch.gold])):
        best_row = next(b for b in res.best if (b["measure"], b["reference"]) == ("agree", target_name))
        layer, head = best_row["layer"], best_row["head"]
        h = tie_agreement(votes[rep, layer, head], ref[rep])
        for name, weights in (("uniform", np.ones((B, n))), ("kern", kern), ("oracle_w", good * 1.0)):
            r = tie_agreement(A.label_votes(weights[rep], batch.demo_labels[rep], C), ref[rep])
            row = rows[(target_name, name)]
            assert row["reference_agreement"] == pytest.approx(r.mean(), abs=1e-12)
            assert row["head_agreement"] == pytest.approx(best_row["report"], abs=1e-12)
            assert row["difference"] == pytest.approx((h - r).mean(), abs=1e-12)
            assert row["diff_lo"] <= row["difference"] <= row["diff_hi"] and row["n_examples"] == 40
        # the bound, on every prompt, against every head and every reference
        bound = A.best_agreement(ref, batch.demo_labels, C)
        assert (tie_agreement(votes, ref[:, None, None]) <= bound[:, None, None] + 1e-12).all()
        for name, per in res.paired[target_name].items():
            assert (per <= bound[rep] + 1e-12).all(), name
        assert rows[(target_name, "best")]["diff_hi"] <= 0
    # the uniform reference is the majority baseline; the oracle weights reach the target
    assert rows[("bayes", "uniform")]["reference_agreement"] == pytest.approx(res.summary["majority_baseline"]["bayes"])
    assert rows[("bayes", "oracle_w")]["reference_agreement"] == 1.0
    assert next(b for b in res.best if b["reference"] == "bayes")["head"] == 1
    v = res.summary["verdict"]
    assert v["target"] == "bayes" and v["detected"] and v["beats_uniform"] and v["beats_shuffled"]
    assert "CI of head minus reference lies above 0" in v["rule"]
    hv = res.summary["head_vs_references"]["bayes"]
    assert (hv["layer"], hv["head"]) == (0, 1) and hv["vs"]["uniform"]["lo"] > 0
    assert res.summary["reference_votes"]["kern"]["bayes"] == rows[("bayes", "kern")]["reference_agreement"]
    # an even head alone: no kernel-regression head (its differences with the uniform vote are all 0)
    res0 = A.analyse(Capture(attn[:, :, :1], np.zeros((B, C))), batch, references={"bayes": target},
                     n_select=40, n_report=40)
    z = next(r for r in res0.references if (r["target"], r["reference"]) == ("bayes", "uniform"))
    assert (z["difference"], z["diff_lo"], z["diff_hi"]) == (0.0, 0.0, 0.0)
    assert res0.summary["verdict"]["detected"] is False and res0.summary["verdict"]["target"] == "bayes"
    # without exact Bayes the verdict is on the model
    assert A.analyse(Capture(attn, np.zeros((B, C))), batch, n_select=40, n_report=40).summary["verdict"]["target"] \
        == "model"


def test_reference_weights_are_checked():
    batch, attn, target, _ = kernel_head_batch(B=10)
    cap = Capture(attn, np.zeros((10, 3)))
    for bad, msg in ((np.ones((10, 5)), r"reference_weights\['k'\] must have shape \(10, 6\)"),
                     (-np.ones((10, 6)), r"reference_weights\['k'\] must be finite and >= 0"),
                     (np.full((10, 6), np.nan), r"reference_weights\['k'\] must be finite")):
        with pytest.raises(ValueError, match=msg):
            A.analyse(cap, batch, reference_weights={"k": bad}, n_select=5, n_report=5)
    with pytest.raises(ValueError, match=r"reference_weights\['uniform'\]: the name is analysis's own"):
        A.analyse(cap, batch, reference_weights={"uniform": np.ones((10, 6))}, n_select=5, n_report=5)
