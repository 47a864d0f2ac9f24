"""The ICL phenomena (simkernel.phenomena), checked against independent computations:

- order: exact Bayes in a restart world and every kernel estimate are permutation invariant (TV
  < 1e-12, over random worlds); in a hand-built restart-free 2-concept world exact Bayes is not,
  and its predictions on both orders equal a brute-force sum over hidden paths.
- labels: f = 0 leaves the prompts untouched and its per-prompt numbers equal the plain
  prediction bit for bit; f = 1 remaps every demonstration through a derangement of the active
  labels, and the label frequencies then equal the remapped counts.
- prior: the prior sweep's worlds are what they claim, and exact Bayes fails only out of
  distribution.
- retrieval: M = n equals random demonstrations bit for bit; top-n selection by the kernel picks
  the n largest K(x_test, x_j).
- shift: a typo changes exactly one symbol; a shift no concept can emit is a ValueError.
- bad input: one-line ValueErrors naming the argument, before any work, nothing written.
- write(): the three files, the CSV's columns, the JSON's config.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkernel import World, bayes, make_world, phenomena as ph
from simkernel.constants import PHENOMENA
from simkernel.metrics import restrict
from simkernel.sampling import sample_prompts

from conftest import brute_prob

SLOW = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def tv(a, b):
    return 0.5 * np.abs(np.asarray(a) - np.asarray(b)).sum(-1)


# ---------------------------------------------------------------------- names
def test_names_agree_with_constants():
    assert ph.NAMES == PHENOMENA == ("retrieval", "labels", "shift", "order", "prior")
    assert ph.COLUMNS == ("setting", "n_demos", "predictor", "metric", "mean", "ci_low", "ci_high", "n_prompts",
                          "n_worlds")


# ---------------------------------------------------------------------- order
@SLOW
@given(seed=st.integers(0, 10_000), n=st.integers(2, 6))
def test_restart_bayes_and_kernels_are_permutation_invariant(seed, n):
    world = make_world("random", seed, n_concepts=3, n_states=4, n_symbols=6, concentration=0.5, restart=True)
    ctx = ph.context(world, 3)
    prompts = sample_prompts(world, 12, n, 3, seed)
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((12, n)), axis=1)
    a = ph.predict(ctx, prompts)
    b = ph.predict(ctx, ph.permute_demos(prompts, perms))
    for name in ("bayes", "kernel", "clipped", "frequency", "oracle"):
        assert np.nanmax(tv(a[name], b[name])) < ph.INVARIANCE_TOL, name
    # the permuted prompt really is another token sequence (so the test could fail)
    assert not np.array_equal(prompts.tokens, ph.permute_demos(prompts, perms).tokens) or \
        np.all(perms == np.arange(n))


def two_concept_world(restart: bool) -> World:
    """Two concepts over 2 hidden states and symbols {0 = delimiter, 1, 2}: concept 0 sticky,
    concept 1 alternating; both emit 1 mostly from state 0 and 2 mostly from state 1."""
    E = np.array([[0.2, 0.7, 0.1], [0.2, 0.1, 0.7]])
    T = np.array([[[0.9, 0.1], [0.1, 0.9]], [[0.1, 0.9], [0.9, 0.1]]])
    return World.from_arrays([0.5, 0.5], [[0.5, 0.5], [0.5, 0.5]], T, np.stack([E, E]), 0, [1, 2], restart)


def brute_predictive(world, tokens):
    """P(y | tokens) over the labels by enumerating hidden paths: Σ_k π_k P(tokens, y | k) / Σ_k π_k P(tokens | k)."""
    joint = np.array([sum(world.prior[k] * brute_prob(world, k, list(tokens) + [y]) for k in range(2))
                      for y in world.labels])
    return joint / joint.sum()


@pytest.mark.parametrize("restart", [False, True])
def test_order_dependence_of_exact_bayes_by_brute_force(restart):
    world = two_concept_world(restart)
    # k = 2: x is one symbol; [x1 y1 d x2 y2 d x_test]
    from simkernel.sampling import prompt_layout
    tokens = np.array([[1, 1, 0, 2, 2, 0, 1]], dtype=np.int32)
    prompts = prompt_layout(tokens, 2, 2, tokens[:, [1, 4]], np.array([1], np.int32), np.array([0]))
    swapped = ph.permute_demos(prompts, np.array([[1, 0]]))
    assert swapped.tokens.tolist() == [[2, 2, 0, 1, 1, 0, 1]]
    ctx = ph.context(world, 2)
    got_a = ph.predict(ctx, prompts)["bayes"][0, 0]
    got_b = ph.predict(ctx, swapped)["bayes"][0, 0]
    want_a = brute_predictive(world, tokens[0])
    want_b = brute_predictive(world, swapped.tokens[0])
    np.testing.assert_allclose(got_a, want_a, rtol=1e-10)
    np.testing.assert_allclose(got_b, want_b, rtol=1e-10)
    if restart:
        assert tv(want_a, want_b) < 1e-12 and tv(got_a, got_b) < ph.INVARIANCE_TOL
    else:
        # the chain carries its state through the delimiter: the order is visible to exact Bayes
        assert tv(want_a, want_b) > 1e-3
        np.testing.assert_allclose(tv(got_a, got_b), tv(want_a, want_b), rtol=1e-8)


def test_order_run_quick():
    res = ph.run("order", quick=True, world_seeds=(0, 1))
    assert res.verdict["checks"]["passed"]
    assert res.verdict["checks"]["restart_bayes_max_tv"] < ph.INVARIANCE_TOL
    rows = {(r["setting"], r["n_demos"], r["predictor"], r["metric"]): r for r in res.rows}
    n = max(ph.defaults("order", quick=True)["n_demos"])
    # restart-free Bayes is order sensitive on these prompts; the frequency vote is not (counts)
    assert rows[("restart-free", n, "bayes", "tv_perm")]["mean"] > 1e-3
    assert rows[("restart-free", n, "frequency", "tv_perm")]["mean"] == 0.0
    assert {r["n_worlds"] for r in res.rows} == {2}
    assert "model" not in {r["predictor"] for r in res.rows}


# ---------------------------------------------------------------------- labels
def test_label_maps_and_remap():
    world = make_world("ginc-small", 0)
    maps, A, F = ph.label_maps(world, np.random.default_rng(0))
    flip, fmt = maps["flip"], maps["format"]
    assert np.all(flip[A] != A) and sorted(flip[A]) == sorted(A)          # a derangement of A
    assert set(fmt[A]) <= set(F) and not set(F) & set(A) and world.delimiter not in F
    prompts = sample_prompts(world, 10, 8, 3, 0)
    prio = np.random.default_rng(1).random((10, 8))
    assert ph.remap(prompts, flip, 0.0, prio) is prompts
    for f, m in ((0.5, 4), (1.0, 8), (0.3, 2)):
        q = ph.remap(prompts, flip, f, prio)
        changed = (q.labels != prompts.labels).sum(1)
        assert np.all(changed == m)                                       # a derangement changes each one
        np.testing.assert_array_equal(q.tokens[:, q.label_positions], q.labels)
        np.testing.assert_array_equal(np.delete(q.tokens, q.label_positions, axis=1),
                                      np.delete(prompts.tokens, prompts.label_positions, axis=1))
    # nested: what f = 0.5 remaps, f = 1 remaps too
    half, full = ph.remap(prompts, flip, 0.5, prio), ph.remap(prompts, flip, 1.0, prio)
    assert np.all((half.labels != prompts.labels) <= (full.labels != prompts.labels))


def test_labels_f0_is_the_plain_run_bit_for_bit():
    world = make_world("ginc-small", 0)
    res = ph.run("labels", worlds=[world], quick=True, fractions=(0.0, 1.0))
    n, B = res.meta["config"]["n_demos"], res.meta["config"]["n_prompts"]
    prompts = sample_prompts(world, B, n, 3, 0)
    label_set = np.array(res.meta["info"]["maps"]["0"]["label_set"])
    plain = ph.predict(ph.context(world, 3), prompts, label_set)
    y = ph.label_index(label_set, prompts.y_test)
    for mode in ("flip", "format"):
        for name, pred in plain.items():
            got, _ = res.per_prompt[(f"{mode}:0", n, name, "mass_original")]
            np.testing.assert_array_equal(got, pred[np.arange(B), 0, y])
    # exact Bayes itself, independently: the posterior predictive of the whole prompt
    want = restrict(bayes.posterior_predictive(world, prompts.tokens), label_set)[np.arange(B), y]
    np.testing.assert_allclose(res.per_prompt[("flip:0", n, "bayes", "mass_original")][0], want, rtol=1e-9)
    # at f = 1 the label frequencies are the remapped labels' counts
    flip = np.array([int(v) for v in res.meta["info"]["maps"]["0"]["flip"].values()])
    assert flip.size and res.verdict["flip"]["frequency"]["side"] in ("follows the demonstrations", "undecided")
    freq = res.per_prompt[("flip:1", n, "frequency", "mass_remapped")][0]
    mp = {int(a): int(b) for a, b in res.meta["info"]["maps"]["0"]["flip"].items()}
    # every demonstration is remapped at f = 1
    counts = np.array([np.mean([mp.get(int(l), int(l)) == mp.get(int(y0), int(y0)) for l in row])
                       for row, y0 in zip(prompts.labels, prompts.y_test)])
    np.testing.assert_allclose(freq, counts, atol=1e-12)


def test_labels_rows_and_verdict():
    res = ph.run("labels", quick=True, world_seeds=(0, 1))
    rows = {(r["setting"], r["predictor"], r["metric"]): r for r in res.rows}
    # the oracle ignores the demonstrations: the same numbers at every f
    assert rows[("flip:0", "oracle", "mass_original")]["mean"] == rows[("flip:1", "oracle", "mass_original")]["mean"]
    # the kernel vote moves to the remapped labels
    assert rows[("flip:1", "kernel", "mass_remapped")]["mean"] > rows[("flip:0", "kernel", "mass_remapped")]["mean"]
    # format symbols are never a label of the concepts: exact Bayes has no answer there
    assert rows[("format:1", "bayes", "undefined")]["mean"] == 1.0
    assert math.isnan(rows[("format:1", "bayes", "mass_original")]["mean"])
    assert "format" in res.verdict["text"] and "rule" in res.verdict


# ---------------------------------------------------------------------- prior
def test_prior_world():
    world = make_world("random", 0, n_concepts=4)
    w = ph.prior_world(world, 1, 0.1)
    np.testing.assert_allclose(w.prior, [0.3, 0.1, 0.3, 0.3])
    g = make_world("ginc-small", 0)                       # prior (0.5, 0.5, 0, 0)
    np.testing.assert_allclose(ph.prior_world(g, 0, 0.0).prior, [0, 1, 0, 0])
    np.testing.assert_allclose(ph.prior_world(g, 2, 0.2).prior, [0.4, 0.4, 0.2, 0])
    assert ph.default_priors(g, 0)[0] == 0.5 and ph.default_priors(g, 0)[-1] == 0.0


def test_prior_run_quick():
    res = ph.run("prior", quick=True, world_seeds=(0, 1), concepts=[0])
    n = max(res.meta["config"]["n_demos"])
    rows = {(r["setting"], r["n_demos"], r["predictor"], r["metric"]): r for r in res.rows}
    # in distribution exact Bayes finds the concept; out of distribution it cannot
    assert rows[("prior:0.5", n, "bayes", "tv_oracle")]["mean"] < 0.05
    assert rows[("prior:0", n, "bayes", "tv_oracle")]["mean"] > 0.2
    # the floor rows sit at n = inf beside the bias term
    assert rows[("prior:0", math.inf, "kernel", "floor_tv")]["n_prompts"] == 2
    assert rows[("prior:0.5", math.inf, "kernel", "eta2_eps")]["mean"] > 0


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name, kwargs, needle", [
    ("nope", {}, "unknown phenomenon 'nope'; allowed: retrieval, labels, shift, order, prior"),
    ("labels", {"fractions": (0.0, 1.5)}, "fractions must be"),
    ("labels", {"fractions": (-0.1,)}, "fractions must be"),
    ("labels", {"bogus": 1}, "unknown parameter 'bogus' for phenomenon 'labels'; allowed: n_prompts"),
    ("order", {"n_permutations": 0}, "n_permutations must be"),
    ("order", {"world_seeds": ()}, "world_seeds must be"),
    ("prior", {"priors": (0.5, 2.0)}, "priors must be"),
])
def test_bad_input_one_line(name, kwargs, needle, tmp_path):
    with pytest.raises(ValueError) as e:
        ph.run(name, **kwargs)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


# ---------------------------------------------------------------------- write
def test_write_publishes_three_files(tmp_path):
    res = ph.run("order", quick=True, world_seeds=(0,), n_demos=(2,), n_prompts=6)
    out = tmp_path / "o"
    paths = res.write(out)
    assert sorted(p.name for p in paths) == ["order.csv", "order.json", "order.png"]
    with open(out / "order.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == ph.COLUMNS and len(rows) == len(res.rows)
    meta = json.loads((out / "order.json").read_text())
    assert meta["config"]["name"] == "order" and meta["config"]["n_permutations"] == 3
    assert meta["verdict"]["text"] == res.verdict["text"]
    assert (out / "order.png").stat().st_size > 1000
    lines = res.summary_lines()
    assert lines[-1].startswith("verdict: ")
    bad = tmp_path / "file"
    bad.write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        res.write(bad)


# ---------------------------------------------------------------------- retrieval
def test_select_demos():
    rng = np.random.default_rng(0)
    score = rng.normal(size=(5, 12))
    g = rng.gumbel(size=(5, 12))
    near = ph.select_demos(score, 4, 1e-9, g)
    want = np.sort(np.argsort(-score, axis=1)[:, :4], axis=1)
    np.testing.assert_array_equal(near, want)                         # τ -> 0: the n nearest
    rand = ph.select_demos(score, 4, math.inf, g)
    np.testing.assert_array_equal(rand, np.sort(np.argsort(-g, axis=1)[:, :4], axis=1))   # τ = inf: the noise alone
    assert np.all(np.diff(near, axis=1) > 0)                          # pool order, no repeats


def test_retrieval_with_m_equal_n_is_random_bit_for_bit():
    res = ph.run("retrieval", quick=True, world_seeds=(0,), n_demos=5, pool_size=5, n_prompts=10)
    keys = [k for k in res.per_prompt if k[0] == "random"]
    assert keys
    for setting in {k[0] for k in res.per_prompt} - {"random"}:
        for _s, n, pred, metric in keys:
            a, b = res.per_prompt[(setting, n, pred, metric)][0], res.per_prompt[("random", n, pred, metric)][0]
            np.testing.assert_array_equal(a, b)


def test_retrieval_kernel_selection_shows_nearer_demonstrations():
    res = ph.run("retrieval", quick=True, world_seeds=(0, 1))
    n = res.meta["config"]["n_demos"]
    near = res.per_prompt[("kernel:0.1", n, "kernel", "mean_kernel_shown")][0]
    rand = res.per_prompt[("random", n, "kernel", "mean_kernel_shown")][0]
    assert near.mean() > rand.mean()
    assert set(res.verdict) >= {"text", "rule", "kernel", "kernel_bias_shrinks_with_bandwidth"}


# ---------------------------------------------------------------------- shift
def test_shift_inputs():
    world = make_world("ginc-small", 0)
    rng = np.random.default_rng(0)
    x = sample_prompts(world, 50, 0, 4, 0).x_test()                   # x of 3 symbols
    syms = ph.emittable(world)
    typo = ph.shift_inputs(world, x, np.zeros(50, int), "typo", 1.0, rng, syms)
    assert np.all((typo != x).sum(1) == 1) and np.isin(typo[typo != x], syms).all()
    assert np.array_equal(ph.shift_inputs(world, x, np.zeros(50, int), "typo", 0.0, rng, syms), x)
    rare = ph.rare_symbols(world, 4)
    r = ph.shift_inputs(world, x, np.zeros(50, int), "rare", 1.0, rng, rare)
    assert np.isin(r, rare).all()
    t = ph.tempered(world, 1e9)                                       # rows -> uniform over their support
    nz = world.transition > 0
    np.testing.assert_allclose(t.transition[nz], (1.0 / nz.sum(-1, keepdims=True) * np.ones_like(t.transition))[nz])


def test_shift_run_quick():
    res = ph.run("shift", quick=True, world_seeds=(0, 1), kinds=("typo", "rare"), targets=("x_test",))
    rows = {(r["setting"], r["n_demos"], r["predictor"], r["metric"]): r for r in res.rows}
    n = res.meta["config"]["n_demos"]
    # shift 0 is the clean run: the same numbers whatever the kind
    strip = lambda r: {k: v for k, v in r.items() if k != "setting"}  # noqa: E731
    assert strip(rows[("typo/x_test:0", n, "bayes", "acc")]) == strip(rows[("rare/x_test:0", n, "bayes", "acc")])
    # rare symbols at every position: exact Bayes and the oracle lose accuracy against the clean label
    assert rows[("rare/x_test:1", n, "bayes", "acc")]["mean"] < rows[("rare/x_test:0", n, "bayes", "acc")]["mean"]
    assert rows[("rare/x_test:1", n, "bayes", "impossible_x")]["mean"] == 0.0     # reported, not NaN
    assert math.isfinite(rows[("rare/x_test:1", math.inf, "kernel", "floor_tv")]["mean"])


def test_shift_impossible_everywhere_is_a_value_error():
    # one symbol besides the delimiter: no input can be shifted to another possible one
    E = np.array([[[0.5, 0.5]]])
    w = World.from_arrays([1.0], [[1.0]], [[[1.0]]], E, 0, [1], True)
    with pytest.raises(ValueError, match="^kinds .* every shifted input would be impossible"):
        ph.run("shift", worlds=[w], quick=True)


@pytest.mark.parametrize("kwargs, needle", [
    ({"bandwidths": (0.5, 0.0)}, "bandwidths must be"),
    ({"bandwidths": (-1,)}, "bandwidths must be"),
    ({"pool_size": 4, "n_demos": 8}, "pool_size must be >= n_demos (8)"),
])
def test_retrieval_bad_input(kwargs, needle):
    with pytest.raises(ValueError) as e:
        ph.run("retrieval", **kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------- a trained model
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from simkernel import train as tr
    from simkernel.sampling import write_corpus

    root = tmp_path_factory.mktemp("ph")
    world = make_world("ginc-small", 0)
    corpus = write_corpus(world, root / "corpus", 8, 128, seed=0)
    cfg = tr.TrainConfig(corpus=tr.corpus_identity(corpus), model="tiny", block_size=32, batch_size=4, lr=3e-3,
                         warmup_steps=2, max_steps=3, eval_every=3, eval_docs=2, eval_blocks=4, ckpt_every=100,
                         device="cpu", model_overrides={"n_positions": 64})
    d = tr.prepare_run_dir(root / "runs", cfg, {"command": "train", "train": cfg.hashed(), "corpus_dir": str(corpus)})
    tr.train(cfg, corpus, d)
    return d


def test_model_path(run_dir, tmp_path):
    res = ph.run("order", quick=True, run_dir=run_dir, device="cpu", world_seeds=(2, 0), n_prompts=6)
    assert res.meta["config"]["world_seeds"] == [0]                   # only the run's world
    preds = {(r["setting"], r["predictor"]) for r in res.rows}
    assert ("restart", "model") in preds and ("restart-free", "model") not in preds
    assert "share_of_model" in res.verdict and "model" in res.verdict["text"]
    # another world than the run's: one line, before any work, nothing written
    with pytest.raises(ValueError, match="^run_dir .* trained on another world") as e:
        ph.run("labels", quick=True, run_dir=run_dir, device="cpu", world_seeds=(1,))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="n_demos 16 makes prompts of 66 symbols"):
        ph.run("labels", quick=True, run_dir=run_dir, device="cpu", world_seeds=(0,), n_demos=16)


# ---------------------------------------------------------------------- per-world effects and headroom
def effect_dicts(obj, path=()):
    """Every dict inside a verdict that carries world_means, with its path."""
    if isinstance(obj, dict):
        if "world_means" in obj:
            yield path, obj
        for k, v in obj.items():
            yield from effect_dicts(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from effect_dicts(v, path + (i,))


def world_means_of(res, key, minus=None, labels=None):
    """Per world (in the order of its label), the nanmean of the per-prompt values of ``key``
    (minus those of ``minus``), from res.per_prompt alone."""
    x, w = res.per_prompt[key]
    if minus is not None:
        x2, w2 = res.per_prompt[minus]
        np.testing.assert_array_equal(w, w2)
        x = x - x2
    return [float(np.nanmean(x[w == i])) if np.isfinite(x[w == i]).any() else math.nan for i in np.unique(w)]


def check_effects(verdict, seeds):
    """Every effect dict: worlds are the run's world seeds, world_means as long, their mean (NaN
    worlds dropped, as world_ci drops them) is `mean`; n_worlds counts the finite ones."""
    found = list(effect_dicts(verdict))
    assert found
    for path, d in found:
        assert len(d["worlds"]) == len(d["world_means"]), path
        if d["n_prompts"] == 0:
            assert d["worlds"] == [] and math.isnan(d["mean"]), path
            continue
        assert set(d["worlds"]) <= set(seeds), path
        wm = np.array(d["world_means"], float)
        assert d["n_worlds"] == int(np.isfinite(wm).sum()), path
        if np.isfinite(wm).sum() >= 2:
            assert d["mean"] == pytest.approx(np.nanmean(wm), rel=1e-5, abs=1e-9), path
    # a JSON round trip keeps every effect (NaN included)
    back = json.loads(json.dumps(verdict))
    assert json.dumps(back, sort_keys=True) == json.dumps(verdict, sort_keys=True)
    return dict(found)


def check_headroom(verdict, res, key):
    h = verdict["headroom"]
    assert set(h) >= {"mean", "ci_low", "ci_high", "n_worlds", "worlds", "world_means", "n_demos"}
    assert 0.0 <= h["ci_low"] <= h["mean"] <= h["ci_high"] <= 1.0
    assert all(0.0 <= m <= 1.0 for m in h["world_means"])
    np.testing.assert_allclose(h["world_means"], world_means_of(res, key), rtol=1e-5, atol=1e-12)
    return h


def test_retrieval_effects_carry_world_means():
    seeds = (3, 1)
    res = ph.run("retrieval", quick=True, world_seeds=seeds)
    v, n = res.verdict, res.meta["config"]["n_demos"]
    found = check_effects(v, seeds)
    bw = v["bandwidth"]
    for sel in ("kernel", "similarity", "overlap"):
        for pred in ("bayes", "kernel", "frequency"):
            d = v[sel][pred]["tv_oracle_minus_random"]
            assert d["worlds"] == [3, 1]                                  # world index 0 is seed 3
            want = world_means_of(res, (f"{sel}:{bw:g}", n, pred, "tv_oracle"), ("random", n, pred, "tv_oracle"))
            np.testing.assert_allclose(d["world_means"], want, rtol=1e-5, atol=1e-12)
    assert ("kernel", "bayes", "tv_oracle_minus_random") in found
    h = check_headroom(v, res, ("random", n, "bayes", "tv_oracle"))
    assert h["setting"] == "random" and h["n_demos"] == n and h["worlds"] == [3, 1]


def test_labels_effects_and_headroom_from_the_unremapped_prompts():
    """The per-mode effects' world means against per_prompt; the headroom is TV(exact Bayes,
    oracle) of the unremapped prompts, computed independently (posterior_predictive of the whole
    prompt, icl_curve's oracle), the same whether the sweep holds fraction 0 or not."""
    seeds = (0, 1)
    res = ph.run("labels", quick=True, world_seeds=seeds, fractions=(0.0, 1.0))
    v, n, B = res.verdict, res.meta["config"]["n_demos"], res.meta["config"]["n_prompts"]
    check_effects(v, seeds)
    for mode in ("flip", "format"):
        for pred in ("bayes", "kernel", "frequency"):
            if pred not in v[mode]:
                continue
            want = world_means_of(res, (f"{mode}:1", n, pred, "mass_remapped"), (f"{mode}:1", n, pred, "mass_original"))
            np.testing.assert_allclose(v[mode][pred]["world_means"], want, rtol=1e-5, atol=1e-12)
    h = check_headroom(v, res, ("flip:0", n, "bayes", "tv_oracle"))
    want = []
    for wid, s in enumerate(seeds):
        world = make_world("ginc-small", s)
        prompts = sample_prompts(world, B, n, 3, 0)
        label_set = np.array(res.meta["info"]["maps"][str(wid)]["label_set"])
        b = restrict(bayes.posterior_predictive(world, prompts.tokens), label_set)
        o = restrict(bayes.icl_curve(world, prompts).oracle, label_set)
        want.append(float(np.nanmean(tv(b, o))))
    np.testing.assert_allclose(h["world_means"], want, rtol=1e-5, atol=1e-12)
    # without fraction 0 in the sweep the headroom is computed from the same prompts
    res1 = ph.run("labels", quick=True, world_seeds=seeds, fractions=(1.0,), modes=("flip",))
    assert not any(k[0] == "flip:0" for k in res1.per_prompt)
    assert res1.verdict["headroom"]["world_means"] == h["world_means"]
    assert res1.verdict["headroom"]["setting"] == "fraction 0"


def test_shift_prior_and_order_effects_carry_world_means(tmp_path):
    seeds = (0, 1)
    res = ph.run("shift", quick=True, world_seeds=seeds, kinds=("typo",), targets=("x_test",))
    v, n = res.verdict, res.meta["config"]["n_demos"]
    check_effects(v, seeds)
    for pred in ("bayes", "kernel", "frequency"):
        want = world_means_of(res, ("typo/x_test:1", n, pred, "acc"), ("typo/x_test:0", n, pred, "acc"))
        np.testing.assert_allclose(v["typo/x_test"][pred]["shifted_minus_clean"]["world_means"], want,
                                   rtol=1e-5, atol=1e-12)
    h = check_headroom(v, res, ("typo/x_test:0", n, "bayes", "tv_oracle"))
    no0 = ph.run("shift", quick=True, world_seeds=seeds, kinds=("typo",), targets=("x_test",), shifts=(1.0,))
    assert no0.verdict["headroom"]["world_means"] == h["world_means"]

    res = ph.run("prior", quick=True, world_seeds=seeds, concepts=[0])
    v, n = res.verdict, max(res.meta["config"]["n_demos"])
    check_effects(v, seeds)
    values = v["prior_values"]                                         # rank -> [prior]: the same in every world
    first, last = (f"prior:{values[r][0]:.6g}" for r in (min(values), max(values)))
    for pred in ("bayes", "kernel", "frequency"):
        d = v["predictors"][pred]["vs_uniform"][-1]
        np.testing.assert_allclose(d["world_means"], world_means_of(res, (last, n, pred, "tv_oracle"),
                                                                    (first, n, pred, "tv_oracle")), rtol=1e-5,
                                   atol=1e-12)
    h = check_headroom(v, res, (first, n, "bayes", "tv_oracle"))
    assert h["setting"] == first == "prior:0.5"

    res = ph.run("order", quick=True, world_seeds=seeds)
    v, n = res.verdict, max(res.meta["config"]["n_demos"])
    check_effects(v, seeds)
    for key, setting, pred in (("bayes_restart", "restart", "bayes"), ("bayes_restart_free", "restart-free", "bayes"),
                               ("kernel_restart_free", "restart-free", "kernel")):
        np.testing.assert_allclose(v[key]["world_means"], world_means_of(res, (setting, n, pred, "tv_perm")),
                                   rtol=1e-5, atol=1e-15)
    assert "headroom" not in v
    # the written JSON holds them too
    res.write(tmp_path / "o")
    meta = json.loads((tmp_path / "o" / "order.json").read_text())
    assert meta["verdict"]["bayes_restart_free"]["worlds"] == [0, 1]
