"""simkernel.strategies: the candidate predictors (the in-context n-gram rule against brute-force
counting) and the attribution of a model to them (known mixture weights recovered on held-out
prompts, an exact-Bayes "model" attributed to bayes, one-line errors)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simkernel import World, make_world
from simkernel import strategies as S
from simkernel.sampling import sample_prompt_set


# ---------------------------------------------------------------------- the n-gram rule
def brute_ngram(row, labels, order, alpha):
    """The rule from its definition, one position at a time: count what followed the last
    order-1 symbols of ``row`` anywhere inside ``row``, add alpha to each label, normalise."""
    row, labels = list(row), list(labels)
    c = order - 1
    context = row[len(row) - c:] if c else []
    counts = [0.0] * len(labels)
    for t in range(c, len(row)):
        if row[t - c:t] == context and row[t] in labels:
            counts[labels.index(row[t])] += 1
    tot = sum(counts) + alpha * len(labels)
    if tot == 0:
        return [1.0 / len(labels)] * len(labels)
    return [(n + alpha) / tot for n in counts]


HAND = np.array([[1, 2, 3, 0, 3, 2, 4, 0, 1, 2]])
LABELS = np.array([3, 4, 5])


@pytest.mark.parametrize("order, alpha, expected", [
    (2, 0.0, [0.5, 0.5, 0.0]),                # after 2 came 3 once and 4 once
    (3, 0.0, [1.0, 0.0, 0.0]),                # after (1, 2) came 3 only
    (3, 0.5, [1.5 / 2.5, 0.5 / 2.5, 0.5 / 2.5]),
    (1, 1.0, [3 / 6, 2 / 6, 1 / 6]),          # no context: label counts of the row (3 twice, 4 once)
    (4, 0.0, [1 / 3, 1 / 3, 1 / 3]),          # (0, 1, 2) never occurred before: uniform
])
def test_ngram_on_a_hand_made_prompt(order, alpha, expected):
    got = S.ngram(HAND, LABELS, order=order, alpha=alpha)[0]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    np.testing.assert_allclose(got, brute_ngram(HAND[0], LABELS, order, alpha), atol=1e-12)


def test_ngram_matches_brute_force_counting_on_sampled_prompts():
    world = make_world("random", seed=3, n_symbols=5)
    prompts = sample_prompt_set(world, 40, 6, 3, seed=1)
    for order, alpha in ((2, 1.0), (3, 0.25), (1, 0.5), (5, 0.0)):
        got = S.ngram(prompts.tokens, world.labels, order, alpha)
        want = np.array([brute_ngram(r, world.labels, order, alpha) for r in prompts.tokens])
        np.testing.assert_allclose(got, want, atol=1e-12)
    # the per-n curve cuts the prompt to its first n demonstrations, then x_test
    curve = S.ngram_predictive(prompts, world.labels, [0, 3, 6], order=3, alpha=0.5)
    for j, n in enumerate((0, 3, 6)):
        want = np.array([brute_ngram(r, world.labels, 3, 0.5) for r in prompts.truncated(n).tokens])
        np.testing.assert_allclose(curve[:, j], want, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(0, 12), st.integers(1, 5), st.floats(0.0, 3.0), st.integers(0, 2**31 - 1))
def test_ngram_is_a_distribution_and_counts_like_brute_force(P, T, order, alpha, seed):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 4, size=(P, T))
    labels = np.array([1, 2, 3])
    got = S.ngram(tokens, labels, order, alpha)
    assert got.shape == (P, 3) and (got >= 0).all()
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-12)
    want = np.array([brute_ngram(r, labels, order, alpha) for r in tokens]).reshape(P, 3)
    np.testing.assert_allclose(got, want, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 5), st.integers(0, 2**31 - 1))
def test_a_convex_mixture_of_distributions_is_a_distribution(J, seed):
    rng = np.random.default_rng(seed)
    comps = rng.dirichlet(np.ones(4), size=(J, 7))
    w = rng.dirichlet(np.ones(J))
    mix = S.blend(w, comps)
    np.testing.assert_allclose(mix.sum(-1), 1.0, atol=1e-12)
    fit = S.fit_mixture(mix, comps)
    assert (fit >= 0).all() and fit.sum() == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------------- every predictor
@pytest.fixture(scope="module")
def world():
    return make_world("random", seed=1)


@pytest.fixture(scope="module")
def preds(world):
    prompts = sample_prompt_set(world, 240, 16, 3, seed=0)
    return prompts, S.predictors(world, prompts, names=S.PREDICTORS, ns=[2, 16])


def test_every_predictor_is_a_distribution_over_the_labels(world, preds):
    prompts, got = preds
    assert tuple(got) == S.PREDICTORS
    for name, p in got.items():
        assert p.shape == (240, 2, world.labels.size), name
        ok = np.isfinite(p).all(-1)
        assert ok.mean() > 0.9, name
        np.testing.assert_allclose(p[ok].sum(-1), 1.0, atol=1e-9, err_msg=name)
        assert (p[ok] >= 0).all(), name
    # the n-gram rule here is the module's own function on the cut prompts
    np.testing.assert_allclose(got["ngram"][:, 0], S.ngram(prompts.truncated(2).tokens, world.labels), atol=0)


def test_unseen_concepts_get_bayes_over_the_pretraining_concepts_only():
    base = make_world("random", seed=2, n_concepts=5)
    prior = np.array([0.5, 0.5, 0.0, 0.0, 0.0])       # concepts 2..4 never seen in pretraining
    w = World.from_arrays(prior, base.start, base.transition, base.emission, base.delimiter, base.labels,
                          base.restart)
    prompts = sample_prompt_set(w, 60, 24, 3, seed=4, concepts="ood")
    got = S.predictors(w, prompts, names=("bayes", "oracle", "ngram"))
    ok = np.isfinite(got["bayes"]).all(-1)[:, 0]
    # memorising Bayes stays with the seen concepts, so it cannot reach the unseen concept's oracle
    tv_bayes = 0.5 * np.abs(got["bayes"] - got["oracle"]).sum(-1)[ok, 0]
    assert tv_bayes.mean() > 0.1


# ---------------------------------------------------------------------- attribution
def _row(rows, predictor, metric, concepts="all"):
    (r,) = [r for r in rows if r["predictor"] == predictor and r["metric"] == metric and r["concepts"] == concepts]
    return r


def test_an_exact_bayes_model_is_attributed_to_bayes_on_seen_concepts(preds):
    _prompts, got = preds
    p = {k: v[:, 1] for k, v in got.items()}
    ok = np.isfinite(p["bayes"]).all(-1)
    p = {k: v[ok] for k, v in p.items()}
    rows = S.attribute(p["bayes"], p, concepts=["seen"] * ok.sum(), n_boot=50, tags={"n_demos": 16})
    assert set(rows[0]) == set(S.COLUMNS) | {"n_demos"}
    assert _row(rows, "bayes", "tv", "seen")["mean"] < 1e-12
    assert _row(rows, "bayes", "agree", "seen")["mean"] == 1.0
    w = _row(rows, "bayes", "weight", "seen")
    assert w["mean"] > 0.99 and w["ci_low"] > 0.95
    assert _row(rows, "mixture", "tv", "seen")["mean"] < 1e-4
    # every other predictor is further from the model than the mixture
    for name in ("kernel", "frequency", "ngram"):
        assert _row(rows, name, "tv", "seen")["mean"] > 0.05


def test_the_mixture_fit_recovers_known_weights_on_held_out_prompts(preds):
    _prompts, got = preds
    p = {k: v[:, 1] for k, v in got.items()}
    ok = np.isfinite(p["bayes"]).all(-1)
    p = {k: v[ok] for k, v in p.items()}
    truth = np.array([0.5, 0.1, 0.15, 0.25])                     # MIXTURE_OF order
    clean = S.blend(truth, np.stack([p[c] for c in S.MIXTURE_OF]))
    # a noisy model around the mixture: the fit must find the weights, not just interpolate
    rng = np.random.default_rng(0)
    model = np.stack([rng.dirichlet(400 * row + 1e-3) for row in clean])
    worlds = np.arange(model.shape[0]) % 4                        # four pseudo-worlds: cluster bootstrap
    rows = S.attribute(model, p, worlds=worlds, n_boot=100, seed=1)
    for c, t in zip(S.MIXTURE_OF, truth):
        r = _row(rows, c, "weight")
        assert abs(r["mean"] - t) < 0.05, (c, r)
        assert r["ci_low"] - 0.02 <= t <= r["ci_high"] + 0.02, (c, r)
        assert r["n_worlds"] == 4
    mix_tv = _row(rows, "mixture", "tv")["mean"]
    assert mix_tv < min(_row(rows, c, "tv")["mean"] for c in S.MIXTURE_OF)
    # and exactly, without noise: on the held-out half the fitted mixture is the model
    exact = S.attribute(clean, p, n_boot=0)
    assert _row(exact, "mixture", "tv")["mean"] < 1e-5


def test_split_keeps_every_world_on_both_sides():
    worlds = np.repeat([7, 8, 9], [2, 5, 10])
    sel = S.split_prompts(worlds.size, worlds, 0.5, seed=3)
    for w in (7, 8, 9):
        assert sel[worlds == w].any() and (~sel[worlds == w]).any()


# ---------------------------------------------------------------------- bad input
def test_an_unknown_predictor_is_a_one_line_error(world):
    prompts = sample_prompt_set(world, 4, 2, 3, seed=0)
    with pytest.raises(ValueError) as e:
        S.predictors(world, prompts, names=("bayes", "bayse"))
    msg = str(e.value)
    assert "\n" not in msg and "'bayse'" in msg and "allowed: " + ", ".join(S.PREDICTORS) in msg
    m = np.full((4, world.labels.size), 1.0 / world.labels.size)
    with pytest.raises(ValueError, match="unknown predictor 'induction'"):
        S.attribute(m, {"induction": m})
    with pytest.raises(ValueError, match="needs at least one demonstration"):
        S.predictors(world, prompts, names=("kernel",), ns=[0])
    with pytest.raises(ValueError, match="concepts must be 'seen' or 'unseen'"):
        S.attribute(m, {"bayes": m}, concepts=["seen", "new", "seen", "seen"], mixture_of=("bayes",))
