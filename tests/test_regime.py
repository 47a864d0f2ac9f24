"""The asymptotic laws of the kernel estimators and ``simkernel regime``.

Independent computations: the averaged estimator's covariance by enumerating every pair of
demonstrations (exact at n = 2); the normalised one's delta-method covariance against multinomial
draws of the demonstration counts at large n; the folded-normal mean against numerical
integration; the label frequencies' law in closed form (a multinomial); and the regime path
(i.i.d. lookups, exact Bayes from per-example log-likelihoods) against the prompt path (the same
demonstrations assembled into token prompts, run through ``bayes.icl_curve`` and
``kernel.kernel_values``).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkernel import bayes, kernel, make_world, regime
from simkernel.kernel import InputSample
from simkernel.metrics import restrict
from simkernel.sampling import prompt_layout, sample_prompt_set

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def synthetic(seed: int, U=2, M=3, L=3, positive=True):
    """A demonstration law q (M, L) and kernel rows (U, M) with no world behind them."""
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.ones(M * L)).reshape(M, L)
    w = q.sum(1)
    sample = InputSample(np.zeros((M, 1), np.int32), w, True, q / w[:, None], np.full(M, -1))
    kv = rng.uniform(0.2, 2.0, (U, M)) if positive else rng.normal(0.5, 1.0, (U, M))
    return kv, sample


def tiny_world(seed: int, **kw):
    opts = dict(n_concepts=2, n_states=3, n_symbols=4, concentration=1.0, restart=True)
    opts.update(kw)
    return make_world("random", seed=seed, **opts)


# ---------------------------------------------------------------------- the laws
@SETTINGS
@given(seed=st.integers(0, 10_000))
def test_averaged_covariance_is_exact_at_n_2_by_enumerating_every_pair(seed):
    """The averaged estimator is a mean of i.i.d. vectors z = e(y) K(x*, x): n · Cov(f_n) = Cov(z)
    at every n.  Enumerate every pair of demonstrations (n = 2) with its probability: 2 · E[(f_2 −
    f)(f_2 − f)ᵀ] equals the law's covariance (positive kernel: the clip at 0 is inactive)."""
    kv, s = synthetic(seed)
    law = kernel.asymptotic_laws(kv, s, ("averaged",))["averaged"]
    q = s.joint.reshape(-1)
    M, L = s.joint.shape
    for u in range(kv.shape[0]):
        z = np.zeros((M * L, L))
        for i in range(M * L):
            z[i, i % L] = kv[u, i // L]
        f = q @ z
        cov = np.zeros((L, L))
        for i, j in itertools.product(range(M * L), repeat=2):
            d = (z[i] + z[j]) / 2 - f
            cov += q[i] * q[j] * np.outer(d, d)
        np.testing.assert_allclose(2 * cov, law.cov[u], atol=1e-12)
        np.testing.assert_allclose(law.limit[u], f, atol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 10_000), L=st.integers(2, 5))
def test_label_frequencies_have_the_multinomial_law(seed, L):
    """K ≡ 1: every form is the label frequencies, whose covariance is diag(p) − ppᵀ with p the
    label marginal (closed form), and c = ½ √(2/π) Σ_c √(p_c (1 − p_c))."""
    _, s = synthetic(seed, M=4, L=L)
    p = s.joint.sum(0)
    for est in ("averaged", "normalised", "clipped"):
        law = kernel.asymptotic_laws(np.ones((1, 4)), s, (est,))[est]
        np.testing.assert_allclose(law.cov[0], np.diag(p) - np.outer(p, p), atol=1e-12)
        np.testing.assert_allclose(law.tv_coef[0], 0.5 * math.sqrt(2 / math.pi) * np.sqrt(p * (1 - p)).sum(),
                                   rtol=1e-12)


@pytest.mark.parametrize("est", ["normalised", "clipped", "averaged"])
def test_delta_method_covariance_matches_multinomial_draws_at_large_n(est):
    """√n (estimate_n − limit) over 40,000 draws of the demonstration counts (multinomial over the
    (x, y) cells, n = 4000; a kernel with negative values, so the clip and the renormalisation both
    act) has the covariance the law predicts: every entry within 5 standard errors of its Monte
    Carlo estimate plus 3% (the O(1/n) remainder of the delta method)."""
    kv, s = synthetic(37, U=1, M=4, L=3, positive=False)      # K < 0 for two inputs; one label's limit < 0
    law = kernel.asymptotic_laws(kv, s, (est,))[est]
    n, R = 4000, 40_000
    rng = np.random.default_rng(0)
    counts = rng.multinomial(n, s.joint.reshape(-1), size=R).reshape(R, 4, 3)
    k = kv[0] if est != "clipped" else np.clip(kv[0], 0, None)
    num = np.einsum("rml,m->rl", counts, k)
    raw = num / n if est == "averaged" else num / np.einsum("rml,m->r", counts, k)[:, None]
    d = np.sqrt(n) * (kernel.to_distribution(raw, est) - law.limit[0])
    emp = np.cov(d.T)
    se = np.sqrt((np.einsum("ri,rj->rij", d, d).var(0)) / R)
    assert np.all(np.abs(emp - law.cov[0]) <= 5 * se + 0.03 * np.abs(law.cov[0]).max()), (emp, law.cov[0])
    # and the mean TV it implies
    tv = 0.5 * np.abs(d).sum(1).mean()
    assert abs(tv - law.tv_coef[0]) < 0.03 * law.tv_coef[0], (tv, law.tv_coef[0])


def test_limit_equals_kernel_limits():
    """The law's limit is the exact limit ``kernel.limits`` computes (as a distribution)."""
    kv, s = synthetic(5, U=3, M=5, L=4, positive=False)
    lims = kernel.limits(kv, s)
    laws = kernel.asymptotic_laws(kv, s)
    for est in kernel.ESTIMATORS:
        want = kernel.to_distribution(lims[est].scores, est)
        ok = np.isfinite(laws[est].limit).all(1)
        np.testing.assert_allclose(laws[est].limit[ok], want[ok], atol=1e-12)


@pytest.mark.parametrize("mu,sd,n", [(0.0, 1.0, 1), (0.3, 0.5, 4), (-0.2, 2.0, 100), (0.05, 0.0, 9)])
def test_folded_normal_mean_against_numerical_integration(mu, sd, n):
    from scipy import integrate, stats

    got = kernel.folded_tv(np.array([[mu, -mu / 2]]), np.array([[sd, sd / 3]]), n)[0]
    want = 0.0
    for m, s in ((mu, sd), (-mu / 2, sd / 3)):
        s_n = s / math.sqrt(n)
        if s_n == 0:
            want += abs(m)
        else:
            want += integrate.quad(lambda z: abs(m + s_n * z) * stats.norm.pdf(z), -12, 12, limit=200)[0]
    assert got == pytest.approx(0.5 * want, rel=1e-7, abs=1e-12)


# ---------------------------------------------------------------------- exact Bayes by lookups
@SETTINGS
@given(seed=st.integers(0, 10_000), k=st.sampled_from([2, 3]), n_labels=st.sampled_from([0, 2]))
def test_example_loglik_sums_give_icl_curve(seed, k, n_labels):
    """In a restart world the log-likelihood of a prompt under θ is the sum of its examples'
    log P(x, y, delimiter | θ) plus log P(x_test | θ): the posterior and predictive from those sums
    equal ``bayes.icl_curve`` (a forward pass over the whole prompt) at every n."""
    world = tiny_world(seed, n_labels=n_labels)
    prompts = sample_prompt_set(world, 5, 6, k, seed=seed)
    curve = bayes.icl_curve(world, prompts)
    B, N = prompts.tokens.shape[0], prompts.n_demos
    xs = np.stack([prompts.tokens[:, a:a + k - 1] for a in prompts.x_spans[:-1, 0]], axis=1)      # (B, N, k-1)
    table = bayes.example_loglik(world, xs.reshape(-1, k - 1), np.arange(world.n_symbols))
    table = table.reshape(B, N, world.n_concepts, world.n_symbols)
    ll = np.take_along_axis(table, prompts.labels[:, :, None, None].astype(int), axis=3)[..., 0]  # (B, N, K)
    fx = bayes.forward(world, prompts.x_test(), prefixes=False)
    cum = np.concatenate([np.zeros((B, 1, world.n_concepts)), np.cumsum(ll, axis=1)], axis=1) + fx.final[:, None]
    post = np.exp(bayes.log_posterior_weights(world, cum))
    np.testing.assert_allclose(post, curve.posterior, atol=1e-10)


def test_example_loglik_refuses_a_restart_free_world():
    with pytest.raises(ValueError, match="restart world"):
        bayes.example_loglik(tiny_world(0, restart=False), np.zeros((1, 2), np.int32))


# ---------------------------------------------------------------------- the regime path = the prompt path
@pytest.mark.parametrize("seed", [0, 7])
def test_regime_path_equals_the_prompt_path(seed):
    """Rebuild each prompt's demonstrations from its stream (regime.demo_stream / draw_demos),
    assemble them into token prompts and score them the slow way: exact Bayes by the forward pass
    over the whole prompt, the kernel values and estimates by kernel_values / estimates, and the
    limits by kernel.limits.  Every per-prompt TV at every grid n equals the regime's to 1e-9."""
    world = tiny_world(seed, n_concepts=3, n_symbols=5)
    k, P, N = 3, 6, 16
    run = regime.simulate_world(world, label=seed, example_length=k, n_prompts=P, n_max=N, n_cap=N, seed=seed)
    assert run.ns == [1, 2, 4, 8, 16]
    ks = kernel.KernelSet(world, k)
    base = sample_prompt_set(world, P, 0, k, seed=seed)
    L = len(world.labels)
    tokens = np.zeros((P, N * (k + 1) + k - 1), np.int32)
    labels = np.zeros((P, N), np.int32)
    for b in range(P):
        s = ks.concept(int(base.concepts[b])).sample
        cum = np.cumsum(s.joint.reshape(-1))
        cum /= cum[-1]
        idx = regime.draw_demos(regime.demo_stream(seed, seed, b), cum, N)
        for i, j in enumerate(idx):
            m, c = divmod(int(j), L)
            tokens[b, i * (k + 1):i * (k + 1) + k - 1] = s.x[m]
            tokens[b, i * (k + 1) + k - 1] = world.labels[c]
            tokens[b, i * (k + 1) + k] = world.delimiter
            labels[b, i] = world.labels[c]
        tokens[b, N * (k + 1):] = base.x_test()[b]
    prompts = prompt_layout(tokens, N, k, labels, base.y_test, base.concepts)
    curve = bayes.icl_curve(world, prompts)
    b_n = restrict(curve.predictive[:, 1:], world.labels)
    values, info = kernel.kernel_values(world, prompts, ("theory", "frequency"), kernel_set=ks,
                                        limits_for=("normalised", "averaged"))
    for j, n in enumerate(run.ns):
        want_o = 0.5 * np.abs(b_n[:, n - 1] - run.oracle).sum(1)
        np.testing.assert_allclose(run.tv_oracle[j], want_o, atol=1e-9)
        for (kn, e), sr in run.series.items():
            q = kernel.to_distribution(kernel.estimates(values[kn], prompts.labels, world.labels, e), e)[:, n - 1]
            lim = kernel.to_distribution(info["limits"][(kn, e)].scores, e)
            np.testing.assert_allclose(sr.tv_bayes[j], 0.5 * np.abs(q - b_n[:, n - 1]).sum(1), atol=1e-9)
            np.testing.assert_allclose(sr.tv_limit[j], 0.5 * np.abs(q - lim).sum(1), atol=1e-9)


def test_batching_and_seeds(monkeypatch):
    """The same seed gives the same rows whatever the block size (to rounding); another seed other rows."""
    world = tiny_world(2)
    a = regime.run(worlds=world, n_prompts=40, n_max=64, n_cap=64, seed=1)
    monkeypatch.setattr(regime, "BLOCK", 7)
    b = regime.run(worlds=world, n_prompts=40, n_max=64, n_cap=64, seed=1)
    c = regime.run(worlds=world, n_prompts=40, n_max=64, n_cap=64, seed=2)
    key = lambda rows: [(r["metric"], r["n_demos"], r["kernel"], r["estimator"]) for r in rows]  # noqa: E731
    mean = lambda rows: np.array([r["mean"] for r in rows])  # noqa: E731
    assert key(a.rows) == key(b.rows) == key(c.rows)
    # the same draws; only the order of a few floating-point sums differs with the block size
    np.testing.assert_allclose(mean(a.rows), mean(b.rows), rtol=1e-12, atol=1e-15)
    assert not np.allclose(mean(a.rows), mean(c.rows), rtol=1e-3)


def test_prediction_matches_simulation_at_large_n():
    """On a tiny world at n = 4096 (2,000 prompts) the measured mean TV to the limit over the
    prediction c/√n has a 95% interval containing 1 for every estimator and the frequencies."""
    world = tiny_world(4, n_concepts=2, n_states=3, n_symbols=5)
    res = regime.run(worlds=world, n_prompts=2000, n_max=4096, n_cap=4096, seed=3,
                     estimators=("normalised", "averaged", "clipped"))
    rows = [r for r in res.rows if r["metric"] == "ratio" and r["n_demos"] == 4096]
    assert len(rows) == 4
    for r in rows:
        assert r["ci_low"] <= 1.0 <= r["ci_high"], r
        assert r["ci_high"] - r["ci_low"] < 0.15, r


def test_grid_extends_until_settled_and_never_past_the_cap():
    world = tiny_world(1)
    res = regime.run(worlds=world, n_prompts=300, n_max=2, n_cap=512, seed=0)
    ns = sorted({r["n_demos"] for r in res.rows if math.isfinite(r["n_demos"])})
    assert ns[0] == 1 and ns[-1] <= 512
    assert ns[-1] > 2                               # n = 2 cannot settle a 4x window
    for w in res.worlds:
        assert w["n_max"] == ns[-1]
        if w["judged"]:
            assert w["n_max"] >= regime.MIN_WINDOW * w["regime_n"]


def test_bad_input_is_one_line():
    with pytest.raises(ValueError, match="restart world"):
        regime.run(worlds=tiny_world(0, restart=False), n_prompts=5)
    with pytest.raises(ValueError, match="n_cap must be >= n_max"):
        regime.run(worlds=tiny_world(0), n_max=64, n_cap=32)
    with pytest.raises(ValueError, match="unknown kernel 'similarity'"):
        regime.run(worlds=tiny_world(0), kernels=("similarity",))
    with pytest.raises(ValueError, match="enumerable inputs"):
        regime.run("paper-c", example_length=4, n_prompts=5)


# ---------------------------------------------------------------------- the rules on synthetic curves
def test_regime_start_on_a_curve_flat_until_500_then_inverse_square_root():
    """Measured flat at c/√500 until n = 500, then c/√n; predicted c/√n: the ratio is √(n/500)
    below 500 and 1 past it, so the regime begins at the first grid n >= 500·0.81 (within 10%)."""
    ns = 2.0 ** np.arange(0, 14)
    measured = np.where(ns < 500, 1 / np.sqrt(500), 1 / np.sqrt(ns))
    ratio = measured / (1 / np.sqrt(ns))
    start = regime.regime_start(ns, ratio, 0.1)
    assert start == 512
    assert regime.regime_start(ns[ns <= 256], ratio[ns <= 256], 0.1) != regime.regime_start(ns, ratio, 0.1)
    assert math.isnan(regime.regime_start(ns[ns <= 256], ratio[ns <= 256], 0.1))
    win = ns >= start
    assert regime.log_slope(ns[win], measured[win]) == pytest.approx(-0.5, abs=1e-9)


def test_first_stay_below_interpolates_and_ignores_early_dips():
    ns = np.array([1, 2, 4, 8, 16.0])
    assert regime.first_stay_below(ns, [-1, 1, 1, -1, -1]) == pytest.approx(math.exp(math.log(4) + 0.5 * math.log(2)))
    assert regime.first_stay_below(ns, [-1, -1, -1, -1, -1]) == 1
    assert regime.first_stay_below(ns, [-1, -1, -1, -1, 0.1]) == math.inf


def test_crossover_interval_covers_a_planted_crossing():
    """Per-prompt differences a/√n − b + noise cross 0 at n = (a/b)²; the bootstrap interval over
    prompts holds the crossing of the mean curve and the mean curve's crossing is near the planted
    one."""
    rng = np.random.default_rng(0)
    ns = 2.0 ** np.arange(0, 14)
    a, b = 2.0, 0.05                                   # crossing at 1600
    d = a / np.sqrt(ns) - b + rng.normal(0, 0.05, (400, ns.size))
    est, lo, hi = regime.crossover_ci(ns, d, seed=0)
    assert lo <= est <= hi
    assert 1024 <= est <= 2048


# ---------------------------------------------------------------------- the command and the sweep
def test_cli_writes_files_prints_the_regime_and_refuses_bad_worlds(tmp_path):
    from cli_helpers import ok, run

    out = tmp_path / "reg"
    r = ok(["regime", "--preset", "random", "--set", "n_states=3", "--set", "n_symbols=5", "--world-seed", 1,
            "--world-seed", 2, "--n-prompts", 50, "--n-max", 16, "--n-cap", 64, "--out", out])
    assert sorted(p.name for p in out.iterdir()) == sorted(regime.FILES)
    assert "world 1:" in r.output and "world 2:" in r.output
    assert "theory normalised:" in r.output and r.output.rstrip().splitlines()[-1].startswith("wrote ")
    import csv
    worlds = list(csv.DictReader(open(out / "regime_worlds.csv")))
    assert {w["world"] for w in worlds} == {"1", "2"}
    assert {(w["kernel"], w["estimator"]) for w in worlds} == {("theory", "normalised"), ("theory", "averaged"),
                                                                 ("frequency", "normalised")}
    bad = run(["regime", "--preset", "random", "--set", "restart=false", "--n-prompts", 5, "--out", tmp_path / "x"])
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines() == [bad.output.strip()] and "restart world" in bad.output
    assert not (tmp_path / "x" / "regime.csv").exists()


def test_a_sweep_job_writes_both_tables_and_the_combined_ones_keep_their_types(tmp_path):
    """Two regime jobs through the sweep's job function, then the combined tables: the 'worlds'
    table exists and keeps bools as bools, ints as ints and inf as a float."""
    import pandas as pd

    from simkernel import sweep

    cfg = {"command": "regime", "options": {"preset": "random", "n_prompts": 30, "n_max": 8, "n_cap": 16},
           "grid": {"world_seed": [0, 1]}}
    jobs = sweep.expand(cfg)
    assert [j.options["world_seeds"] for j in jobs] == [[0], [1]]
    out = tmp_path / "sw"
    states = []
    for j in jobs:
        marker = sweep.run_job(j.spec(), str(out / "jobs" / j.key))
        assert marker["status"] == "done", marker
        states.append(marker)
    tables = sweep.combine(out, "regime", jobs, states, ["world_seed"])
    worlds = pd.read_parquet(tables["worlds"])
    assert sorted(worlds["world_seed"].unique().tolist()) == [0, 1]
    assert worlds["judged"].dtype == bool and worlds["reached"].dtype == bool
    assert pd.api.types.is_integer_dtype(worlds["n_max"]) and pd.api.types.is_float_dtype(worlds["crossover"])
    main = pd.read_parquet(tables[None])
    assert main["n_demos"].dtype == float and np.isinf(main["n_demos"]).any()
