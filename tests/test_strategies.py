"""simkernel.strategies: the candidate predictors (the in-context n-gram rule against brute-force
counting) and the attribution of a model to them (known mixture weights recovered on held-out
prompts, an exact-Bayes "model" attributed to bayes, one-line errors)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simkernel import World, make_world
from simkernel import attribution as A
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
    got = A.ngram(HAND, LABELS, order=order, alpha=alpha)[0]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    np.testing.assert_allclose(got, brute_ngram(HAND[0], LABELS, order, alpha), atol=1e-12)


def test_ngram_matches_brute_force_counting_on_sampled_prompts():
    world = make_world("random", seed=3, n_symbols=5)
    prompts = sample_prompt_set(world, 40, 6, 3, seed=1)
    for order, alpha in ((2, 1.0), (3, 0.25), (1, 0.5), (5, 0.0)):
        got = A.ngram(prompts.tokens, world.labels, order, alpha)
        want = np.array([brute_ngram(r, world.labels, order, alpha) for r in prompts.tokens])
        np.testing.assert_allclose(got, want, atol=1e-12)
    # the per-n curve cuts the prompt to its first n demonstrations, then x_test
    curve = A.ngram_predictive(prompts, world.labels, [0, 3, 6], order=3, alpha=0.5)
    for j, n in enumerate((0, 3, 6)):
        want = np.array([brute_ngram(r, world.labels, 3, 0.5) for r in prompts.truncated(n).tokens])
        np.testing.assert_allclose(curve[:, j], want, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(0, 12), st.integers(1, 5), st.floats(0.0, 3.0), st.integers(0, 2**31 - 1))
def test_ngram_is_a_distribution_and_counts_like_brute_force(P, T, order, alpha, seed):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 4, size=(P, T))
    labels = np.array([1, 2, 3])
    got = A.ngram(tokens, labels, order, alpha)
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
    mix = A.blend(w, comps)
    np.testing.assert_allclose(mix.sum(-1), 1.0, atol=1e-12)
    fit = A.fit_mixture(mix, comps)
    assert (fit >= 0).all() and fit.sum() == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------------- every predictor
@pytest.fixture(scope="module")
def world():
    return make_world("random", seed=1)


@pytest.fixture(scope="module")
def preds(world):
    prompts = sample_prompt_set(world, 240, 16, 3, seed=0)
    return prompts, A.predictors(world, prompts, names=A.PREDICTORS, ns=[2, 16])


def test_every_predictor_is_a_distribution_over_the_labels(world, preds):
    prompts, got = preds
    assert tuple(got) == A.PREDICTORS
    for name, p in got.items():
        assert p.shape == (240, 2, world.labels.size), name
        ok = np.isfinite(p).all(-1)
        assert ok.mean() > 0.9, name
        np.testing.assert_allclose(p[ok].sum(-1), 1.0, atol=1e-9, err_msg=name)
        assert (p[ok] >= 0).all(), name
    # the n-gram rule here is the module's own function on the cut prompts
    np.testing.assert_allclose(got["ngram"][:, 0], A.ngram(prompts.truncated(2).tokens, world.labels), atol=0)


def test_unseen_concepts_get_bayes_over_the_pretraining_concepts_only():
    base = make_world("random", seed=2, n_concepts=5)
    prior = np.array([0.5, 0.5, 0.0, 0.0, 0.0])       # concepts 2..4 never seen in pretraining
    w = World.from_arrays(prior, base.start, base.transition, base.emission, base.delimiter, base.labels,
                          base.restart)
    prompts = sample_prompt_set(w, 60, 24, 3, seed=4, concepts="ood")
    got = A.predictors(w, prompts, names=("bayes", "oracle", "ngram"))
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
    rows = A.attribute(p["bayes"], p, concepts=["seen"] * ok.sum(), n_boot=50, tags={"n_demos": 16})
    assert set(rows[0]) == set(A.COLUMNS) | {"n_demos"}
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
    truth = np.array([0.45, 0.1, 0.15, 0.2, 0.1])                # MIXTURE_OF order
    clean = A.blend(truth, np.stack([p[c] for c in A.MIXTURE_OF]))
    # a noisy model around the mixture: the fit must find the weights, not just interpolate
    rng = np.random.default_rng(0)
    model = np.stack([rng.dirichlet(400 * row + 1e-3) for row in clean])
    worlds = np.arange(model.shape[0]) % 4                        # four pseudo-worlds: cluster bootstrap
    rows = A.attribute(model, p, worlds=worlds, n_boot=100, seed=1)
    for c, t in zip(A.MIXTURE_OF, truth):
        r = _row(rows, c, "weight")
        assert abs(r["mean"] - t) < 0.05, (c, r)
        assert r["ci_low"] - 0.02 <= t <= r["ci_high"] + 0.02, (c, r)
        assert r["n_worlds"] == 4
    mix_tv = _row(rows, "mixture", "tv")["mean"]
    assert mix_tv < min(_row(rows, c, "tv")["mean"] for c in A.MIXTURE_OF)
    # and exactly, without noise: on the held-out half the fitted mixture is the model
    exact = A.attribute(clean, p, n_boot=0)
    assert _row(exact, "mixture", "tv")["mean"] < 1e-5


def test_split_keeps_every_world_on_both_sides():
    worlds = np.repeat([7, 8, 9], [2, 5, 10])
    sel = A.split_prompts(worlds.size, worlds, 0.5, seed=3)
    for w in (7, 8, 9):
        assert sel[worlds == w].any() and (~sel[worlds == w]).any()


# ---------------------------------------------------------------------- bad input
def test_an_unknown_predictor_is_a_one_line_error(world):
    prompts = sample_prompt_set(world, 4, 2, 3, seed=0)
    with pytest.raises(ValueError) as e:
        A.predictors(world, prompts, names=("bayes", "bayse"))
    msg = str(e.value)
    assert "\n" not in msg and "'bayse'" in msg and "allowed: " + ", ".join(A.PREDICTORS) in msg
    m = np.full((4, world.labels.size), 1.0 / world.labels.size)
    with pytest.raises(ValueError, match="unknown predictor 'induction'"):
        A.attribute(m, {"induction": m})
    with pytest.raises(ValueError, match="needs at least one demonstration"):
        A.predictors(world, prompts, names=("kernel",), ns=[0])
    with pytest.raises(ValueError, match="concepts must be 'seen' or 'unseen'"):
        A.attribute(m, {"bayes": m}, concepts=["seen", "new", "seen", "seen"], mixture_of=("bayes",))


# ---------------------------------------------------------------------- unseen concepts
def test_unseen_concepts_are_new_prior_zero_concepts_of_the_same_generator():
    from simkernel.presets import with_unseen
    from simkernel.sampling import sample_corpus

    base = make_world("random", seed=0, n_concepts=3, concentration=0.5, smoothing=0.01)
    w = with_unseen(base, 2, seed=0)
    assert w.n_concepts == 5 and w.prior[3:].tolist() == [0.0, 0.0] and np.array_equal(w.prior[:3], base.prior)
    for f in ("start", "transition", "emission"):
        np.testing.assert_array_equal(getattr(w, f)[:3], getattr(base, f)[:3])
        # the new concepts are none of the pretraining ones (the salt keeps seed 0 from redrawing them)
        for j in (3, 4):
            assert all(not np.allclose(getattr(w, f)[j], getattr(base, f)[k]) for k in range(3)), f
    assert np.array_equal(w.labels, base.labels) and w.delimiter == base.delimiter and w.restart == base.restart
    assert (w.start[3:] >= 0.01 / w.n_states - 1e-12).all()          # the preset's smoothing applies to them too
    assert w.meta["unseen"] == {"n_unseen": 2, "seed": 0, "seen": 3}
    np.testing.assert_array_equal(with_unseen(base, 2, seed=0).emission, w.emission)
    assert not np.allclose(with_unseen(base, 2, seed=1).emission[3:], w.emission[3:])
    # documents (pretraining) never come from them; prompts can
    assert set(sample_corpus(w, 60, 20, seed=0).concepts) <= {0, 1, 2}
    assert set(sample_prompt_set(w, 20, 2, 3, seed=0, concepts="ood").concepts) == {3, 4}
    with pytest.raises(ValueError, match="random preset's recipe"):
        with_unseen(make_world("ginc-small", 0), 2)
    with pytest.raises(ValueError, match="n_unseen must be"):
        with_unseen(base, 0)


def test_exact_bayes_is_further_from_the_oracle_on_unseen_concepts():
    from simkernel.presets import with_unseen

    w = with_unseen(make_world("random", seed=1, n_concepts=3), 3, seed=0)
    tvs = {}
    for group in ("id", "ood"):
        prompts = sample_prompt_set(w, 150, 12, 3, seed=2, concepts=group)
        got = A.predictors(w, prompts, names=("bayes", "oracle"), ns=[12])
        d = 0.5 * np.abs(got["bayes"] - got["oracle"]).sum(-1)[:, 0]
        tvs[group] = np.nanmean(d)
    assert tvs["ood"] > tvs["id"] + 0.05, tvs


# ---------------------------------------------------------------------- a trained run along training
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny model trained 12 steps on a world with 2 unseen concepts, snapshots on a log scale."""
    pytest.importorskip("torch")
    from simkernel import train as tr
    from simkernel.presets import with_unseen

    world = with_unseen(make_world("random", 0, n_concepts=3, n_states=6, n_symbols=8, concentration=0.3), 2, seed=0)
    cfg = tr.TrainConfig(corpus=tr.sampled_corpus({"test": "with_unseen"}, 30, 128, 0), model="tiny", block_size=32,
                         batch_size=8, lr=3e-3, warmup_steps=2, max_steps=12, eval_every=6, eval_docs=2,
                         eval_blocks=8, target_gap=1e-6, patience=1000, ckpt_every=6, device="cpu",
                         snapshot_steps="log")
    res = tr.run(cfg, tmp_path_factory.mktemp("runs"), world=world)
    assert res.reason == "max_steps"
    return res.run_dir, world


def _count_predictor_calls(monkeypatch):
    calls = []
    real = A.predictors

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(S, "predictors", counted)
    return calls


def test_evaluate_scores_every_checkpoint_on_predictors_computed_once(trained_run, monkeypatch, tmp_path):
    from simkernel.results import Result, read_table

    run_dir, world = trained_run
    assert [s for s, _ in S.run_checkpoints(run_dir)] == [1, 2, 4, 8, 12]      # the final checkpoint is step 12
    calls = _count_predictor_calls(monkeypatch)
    res = S.evaluate(run_dir, n_demos=[2, 6], n_prompts=40, n_boot=10, seed=0, world=world)
    assert len(calls) == 2                                        # once per concept split, for 5 checkpoints
    assert isinstance(res, Result) and res.meta["steps"] == [1, 2, 4, 8, 12] and res.meta["context"] == 32
    table = res.tables()[None]
    assert table.file == "strategies.csv" and table.columns == S.EVAL_COLUMNS
    assert table.spec()["dtypes"] == {**{c: "str" for c in S.EVAL_COLUMNS}, **S.EVAL_DTYPES}
    df = table.frame()
    assert set(df["step"]) == {1, 2, 4, 8, 12} and set(df["n_demos"]) == {2, 6}
    assert set(df["concepts"]) == {"seen", "unseen"}
    assert set(df["predictor"]) == set(A.DEFAULT_PREDICTORS) | {"mixture", "model"}
    assert set(df["metric"]) == set(A.METRICS) | {"weight"} | set(S.REFERENCE_METRICS)
    assert set(df.loc[df["predictor"] == "model", "metric"]) == set(S.REFERENCE_METRICS)
    # every (step, n, split) has the same rows
    assert df.groupby(["step", "n_demos", "concepts"]).size().nunique() == 1
    w = df[df["metric"] == "weight"].groupby(["step", "n_demos", "concepts"])["mean"].sum()
    np.testing.assert_allclose(w, 1.0, atol=1e-5)
    # the predictors' references do not depend on the checkpoint; exact Bayes is further from the oracle unseen
    ref = df[(df["predictor"] == "bayes") & (df["metric"] == "tv_oracle")]
    assert ref.groupby(["n_demos", "concepts"])["mean"].nunique().max() == 1
    at = ref[ref["n_demos"] == 6].set_index("step").groupby("concepts")["mean"].first()
    assert at["unseen"] > at["seen"], at
    # written and read back with its dtypes
    paths = res.write(tmp_path / "out")
    assert sorted(p.name for p in paths) == ["strategies.csv", "strategies.json"]
    back = read_table(tmp_path / "out" / "strategies.csv", table.spec()["dtypes"])
    assert str(back["step"].dtype) == "int64" and str(back["mean"].dtype) == "float64" and len(back) == len(df)
    lines = res.summary_lines()
    assert lines[0].startswith("concepts seen, n = 2") and any(line.split()[0] == "12" for line in lines)


def test_evaluate_picks_steps_and_splits(trained_run):
    run_dir, _ = trained_run
    res = S.evaluate(run_dir, n_demos=3, n_prompts=10, n_boot=0, steps=[4, 12], concepts="unseen",
                     predictor_names=("bayes", "ngram", "oracle"), mixture_of=("bayes", "ngram"))
    assert {r["step"] for r in res.rows} == {4, 12} and {r["concepts"] for r in res.rows} == {"unseen"}


def _one_line_error(match, fn, *a, **k):
    with pytest.raises(ValueError, match=match) as e:
        fn(*a, **k)
    assert "\n" not in str(e.value)


def test_evaluate_bad_input_is_one_line_before_anything_runs(trained_run, monkeypatch, tmp_path):
    import json
    import shutil

    run_dir, world = trained_run
    calls = _count_predictor_calls(monkeypatch)
    # prompt_length(8, 3) = 34 > the block size 32 it trained on
    _one_line_error(r"n_demos 8 needs prompts of 34 symbols, beyond the trained context .* at most n = 7",
                    S.evaluate, run_dir, n_demos=[2, 8], n_prompts=10)
    _one_line_error("does not exist", S.evaluate, tmp_path / "nowhere", n_demos=2)
    (tmp_path / "empty").mkdir()
    _one_line_error("has no checkpoint", S.evaluate, tmp_path / "empty", n_demos=2)
    _one_line_error("trained on another world", S.evaluate, run_dir, n_demos=2, world=make_world("random", 5))
    _one_line_error("step 3 is not among the checkpoints", S.evaluate, run_dir, n_demos=2, steps=[3])
    _one_line_error("unknown predictor 'induction'", S.evaluate, run_dir, n_demos=2, predictor_names=("induction",))
    _one_line_error("concepts must be", S.evaluate, run_dir, n_demos=2, concepts=("seen", "new"))
    # a snapshot of a model with another vocabulary: a checkpoint from another world
    from simkernel import model as model_mod
    from simkernel import runs

    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(dict(cfg, corpus_dir=str(other / "corpus"))))
    model_mod.save_model(model_mod.build_model("tiny", 11), other / runs.SNAPSHOTS / runs.snapshot_name(3))
    _one_line_error(r"step 3\) is from another world: its vocabulary has 11 symbols", S.evaluate, other, n_demos=2)
    shutil.rmtree(other / runs.SNAPSHOTS / runs.snapshot_name(3))
    # a world without unseen concepts asked for them
    world.with_prior(np.full(world.n_concepts, 1.0 / world.n_concepts)).save(other / "corpus" / "world.npz")
    _one_line_error("has no unseen concepts", S.evaluate, other, n_demos=2)
    assert calls == []
