"""ICL evaluation of a trained model against exact Bayes, the theory kernel and the
label-frequency baseline: the comparison code checked against known answers (stubs whose
logits are the exact Bayes log-predictive, or the kernel estimate computed here from kernel.py
alone), tie-fair scores against values computed here from label counts and kernel signs,
context skipping, the kernel's memory guard, and the icl-eval and plot icl commands end to end
on a tiny run folder."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from simkernel import bayes, convergence, kernel, make_world, metrics  # noqa: E402
from simkernel import icl_eval  # noqa: E402
from simkernel.metrics import compare, restrict  # noqa: E402
from simkernel.sampling import sample_prompt_set  # noqa: E402
from simkernel import model as model_mod  # noqa: E402
from simkernel import train as tr  # noqa: E402
from simkernel.sampling import write_corpus  # noqa: E402

from cli_helpers import ok, run  # noqa: E402

WORLD = dict(n_concepts=3, n_states=6, n_symbols=8, concentration=0.1)


class BayesStub:
    """The call interface evaluate uses (model(input_ids=x).logits, config.n_positions), with
    logits = log of the exact Bayes posterior predictive of the whole row (every position)."""

    def __init__(self, world, n_positions=10_000):
        self.world = world
        self.config = SimpleNamespace(n_positions=n_positions)
        self.calls = []

    def __call__(self, input_ids):
        x = input_ids.cpu().numpy()
        self.calls.append(x.shape)
        with np.errstate(divide="ignore"):
            lp = np.log(bayes.posterior_predictive(self.world, x))
        logits = torch.as_tensor(lp, dtype=torch.float64)[:, None, :].expand(x.shape[0], x.shape[1], -1)
        return SimpleNamespace(logits=logits)


class KernelStub(BayesStub):
    """logits = log of the theory kernel's normalised estimate after the demonstrations in the
    row, computed from kernel.py's public functions and the prompt layout parsed from the row
    itself (not through convergence.kernel_estimates): Σ of the pretraining inputs with
    ridge 0.01, belief features.  Uniform at n = 0."""

    def __init__(self, world, example_length, seed):
        super().__init__(world)
        self.k = example_length
        sample = kernel.input_distribution(world, example_length, None, n_samples=20_000, seed=seed)
        self.km = kernel.fit_kernel(kernel.features(world, sample.x), sample.weights, ridge=0.01,
                                    exact=sample.exact)

    def kernel_values(self, x):
        """(K(x_test, x_i) (B, n), demonstration labels (B, n)) of prompt rows x (B, T)."""
        B, T = x.shape
        k = self.k
        n = (T - (k - 1)) // (k + 1)
        assert T == icl_eval.prompt_length(n, k)
        demos = x[:, :n * (k + 1)].reshape(B, n, k + 1)
        psi_d = kernel.features(self.world, demos[:, :, :k - 1].reshape(B * n, k - 1)).reshape(B, n, -1)
        psi_t = kernel.features(self.world, x[:, n * (k + 1):])
        return self.km.gram(psi_t[:, None, :], psi_d)[:, 0, :], demos[:, :, k - 1]

    def estimate(self, x):
        """(B, L) the normalised estimate after the demonstrations of rows x (uniform at n = 0)."""
        if x.shape[1] == icl_eval.prompt_length(0, self.k):
            return np.full((x.shape[0], len(self.world.labels)), 1.0 / len(self.world.labels))
        kv, y = self.kernel_values(x)
        return kernel.to_distribution(kernel.estimates(kv, y, self.world.labels, "normalised"), "normalised")[:, -1]

    def __call__(self, input_ids):
        x = input_ids.cpu().numpy()
        B, T = x.shape
        logits = np.full((B, self.world.n_symbols), -np.inf)
        with np.errstate(divide="ignore"):
            logits[:, self.world.labels] = np.log(self.estimate(x))
        out = torch.as_tensor(logits, dtype=torch.float64)[:, None, :].expand(B, T, -1)
        return SimpleNamespace(logits=out)


class Uniform(BayesStub):
    """A model predicting the uniform distribution over the vocabulary."""

    def __call__(self, input_ids):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.world.n_symbols))


def top(x, rtol=1e-9):
    """(B, L) bool: the scores within rtol (relative) of the row's maximum, written out here
    rather than taken from simkernel.metrics.  Scores are non-negative."""
    return x >= x.max(-1, keepdims=True) * (1 - rtol)


def label_counts(labels, world):
    """(B, L) how often each label of world.labels occurs among the demonstrations (B, n)."""
    return np.stack([(labels == c).sum(1) for c in world.labels], 1)


def by(rows, metric, concepts=None):
    return {r["n_demos"]: r for r in rows if r["metric"] == metric and (concepts is None or r["concepts"] == concepts)}


@pytest.fixture(scope="module")
def world():
    return make_world("random", 0, **WORLD)


def test_bayes_stub_gets_tv_zero_and_agreement_one(world):
    stub = BayesStub(world)
    rows, info = icl_eval.evaluate(stub, world, [0, 1, 3, 8], example_length=3, n_prompts=40, seed=1)
    assert info["skipped_n"] == [] and info["groups"] == ["prior"]
    tv, agree = by(rows, "tv_bayes"), by(rows, "agree_bayes")
    acc_m, acc_b = by(rows, "acc_model"), by(rows, "acc_bayes")
    assert sorted(tv) == [0, 1, 3, 8]
    for n in tv:
        assert tv[n]["mean"] < 1e-6  # float32 logits and tv[n]["n_prompts"] == 40
        assert agree[n]["mean"] == 1.0
        assert acc_m[n]["mean"] == acc_b[n]["mean"]
    # every prompt went to the model at its truncated length: n (k + 1) + k - 1 symbols
    assert sorted({s[1] for s in stub.calls}) == [icl_eval.prompt_length(n, 3) for n in (0, 1, 3, 8)]


def test_wrong_model_is_far_from_bayes(world):
    """A model predicting the uniform distribution: TV = TV(uniform, Bayes) exactly."""
    rows, _ = icl_eval.evaluate(Uniform(world), world, [2], example_length=3, n_prompts=30, seed=2)
    prompts = sample_prompt_set(world, 30, 2, 3, seed=2)
    p = restrict(bayes.icl_curve(world, prompts).predictive[:, 2], world.labels)
    expect = 0.5 * np.abs(p - 1 / len(world.labels)).sum(-1).mean()
    assert by(rows, "tv_bayes")[2]["mean"] == pytest.approx(expect, rel=1e-6)


def test_kernel_stub_gets_tv_kernel_zero(world):
    """A model that returns exactly the theory kernel's estimate: tv_kernel 0, its distance to
    Bayes is the kernel's (tv_bayes == tv_kernel_bayes), and its agreement with the kernel is
    the mean of 1/m over prompts whose estimate ties among m labels: each side breaks its ties
    independently, so two identical m-way ties agree with probability 1/m."""
    stub = KernelStub(world, 3, seed=4)
    rows, info = icl_eval.evaluate(stub, world, [0, 1, 2, 5, 12], example_length=3, n_prompts=30, seed=4)
    assert info["kernel"]["skipped"] == {} and info["kernel"]["options"]["features"] == "belief"
    assert info["kernel"]["sigma"]["prior"]["exact"] is True
    tv_k, agree_k = by(rows, "tv_kernel"), by(rows, "agree_kernel")
    assert sorted(tv_k) == [1, 2, 5, 12]                   # no kernel estimate without demonstrations
    assert sorted(by(rows, "tv_frequency")) == [1, 2, 5, 12]
    assert 0 in by(rows, "tv_bayes")
    prompts = sample_prompt_set(world, 30, 12, 3, seed=4)
    ties = 0
    for n in tv_k:
        m = top(stub.estimate(prompts.truncated(n).tokens)).sum(1)
        ties += (m > 1).sum()
        assert tv_k[n]["mean"] < 1e-6 and tv_k[n]["n_prompts"] == 30
        assert agree_k[n]["mean"] == pytest.approx((1 / m).mean(), rel=1e-12)
        assert by(rows, "tv_bayes")[n]["mean"] == pytest.approx(by(rows, "tv_kernel_bayes")[n]["mean"], abs=1e-6)
        assert by(rows, "acc_model")[n]["mean"] == pytest.approx(by(rows, "acc_kernel")[n]["mean"], rel=1e-12)
    assert ties > 0                                        # the tie rule was exercised
    # the averaged estimator is not a distribution: the model is away from it
    assert by(rows, "tv_kernel_averaged")[12]["mean"] > 1e-3


def test_tv_kernel_matches_convergence_on_the_same_prompts(world):
    """A uniform model against the kernel: the tv evaluate reports equals the one computed from
    convergence.run_seed's theory estimates on the same prompts (same sampler call and seed);
    tv_kernel_bayes equals converge's own tv of the kernel against Bayes, for every estimator;
    acc_kernel is the 1/m-weighted accuracy of the estimate's top set, and the uniform model
    agrees with any estimate with probability 1/L."""
    N, B, seed = 6, 25, 3
    rows, _ = icl_eval.evaluate(Uniform(world), world, [1, 3, N], example_length=3, n_prompts=B, seed=seed)
    res = convergence.run_seed(world, N, 3, B, seed=seed, kernels=("theory",))
    L = len(world.labels)
    assert set(kernel.ESTIMATORS) == {"normalised", "averaged", "clipped"}
    for est in kernel.ESTIMATORS:
        e = res.estimates[("theory", est)]                                          # (B, N, L)
        conv_tv = compare(res.bayes, e, res.y_test)["tv"]                           # (B, N)
        for n in (1, 3, N):
            expect = 0.5 * np.abs(e[:, n - 1] - 1 / L).sum(-1).mean()
            assert by(rows, icl_eval.kernel_metric("tv_kernel", est))[n]["mean"] == pytest.approx(expect, abs=1e-6)
            assert by(rows, icl_eval.kernel_metric("tv_kernel_bayes", est))[n]["mean"] == pytest.approx(
                conv_tv[:, n - 1].mean(), rel=1e-9, abs=1e-12)
            t = top(e[:, n - 1])
            acc = (t[np.arange(B), res.y_test] / t.sum(1)).mean()
            assert by(rows, icl_eval.kernel_metric("acc_kernel", est))[n]["mean"] == pytest.approx(acc, rel=1e-12)
            assert by(rows, icl_eval.kernel_metric("agree_kernel", est))[n]["mean"] == pytest.approx(1 / L, rel=1e-12)


def test_kernel_skipped_with_a_reason(world, monkeypatch):
    """When the kernel's features would not fit in memory, the model-vs-Bayes rows stay and
    the kernel rows go, with the reason recorded."""
    monkeypatch.setattr(kernel, "FEATURE_MEMORY_LIMIT", 0)
    rows, info = icl_eval.evaluate(BayesStub(world), world, [0, 2], example_length=3, n_prompts=8)
    # the label frequencies need no features: they stay beside the Bayes rows, with their direction
    assert {r["metric"] for r in rows} == set(icl_eval.BASE_METRICS) | set(icl_eval.FREQUENCY_METRICS) | \
        {"dir_frequency"}
    assert {r["n_demos"] for r in rows if r["metric"] in icl_eval.FREQUENCY_METRICS + ("dir_frequency",)} == {2}
    assert "GiB" in info["kernel"]["skipped"]["prior"] and info["kernel"]["sigma"] == {}
    _, info = icl_eval.evaluate(BayesStub(world), world, [0], example_length=3, n_prompts=4)
    assert "needs a demonstration" in info["kernel"]["skipped"]["prior"]


def test_frequency_baseline_equals_an_independent_count(world):
    """tv_frequency_bayes, acc_frequency and agree_frequency against numpy on label counts and
    exact Bayes of the same prompts (posterior_predictive of the truncated rows, restricted to
    the labels); counts tie often at small n, and each tie among m labels scores 1/m."""
    ns, B, seed = [1, 2, 3, 6], 40, 5
    rows, _ = icl_eval.evaluate(BayesStub(world), world, [0] + ns, example_length=3, n_prompts=B, seed=seed)
    prompts = sample_prompt_set(world, B, ns[-1], 3, seed=seed)
    y = np.searchsorted(world.labels, prompts.y_test)
    ties = 0
    for n in ns:
        counts = label_counts(prompts.labels[:, :n], world)                            # (B, L) integers
        freq = counts / n
        p = restrict(bayes.posterior_predictive(world, prompts.truncated(n).tokens), world.labels)
        ok = np.isfinite(p).all(-1)
        tv = 0.5 * np.abs(freq - p).sum(-1)[ok]
        assert by(rows, "tv_frequency_bayes")[n]["mean"] == pytest.approx(tv.mean(), rel=1e-12)
        assert by(rows, "tv_frequency_bayes")[n]["n_prompts"] == ok.sum()
        # the model is exact Bayes up to float32 logits
        assert by(rows, "tv_frequency")[n]["mean"] == pytest.approx(tv.mean(), abs=1e-6)
        tf = counts == counts.max(1, keepdims=True)                                    # exact: integers
        ties += (tf.sum(1) > 1).sum()
        acc = tf[np.arange(B), y] / tf.sum(1)
        assert by(rows, "acc_frequency")[n]["mean"] == pytest.approx(acc.mean(), rel=1e-12)
        tp = top(p[ok])
        agree = (tf[ok] & tp).sum(1) / (tf[ok].sum(1) * tp.sum(1))
        assert by(rows, "agree_frequency")[n]["mean"] == pytest.approx(agree.mean(), rel=1e-12)
    assert ties > 0
    # the lowest-index argmax would score differently on these prompts
    counts = label_counts(prompts.labels[:, :2], world)
    assert by(rows, "acc_frequency")[2]["mean"] != pytest.approx((counts.argmax(1) == y).mean())


def test_acc_kernel_at_one_demonstration_counts_a_uniform_estimate_as_a_tie(world):
    """With one demonstration every theory estimate is e(y_1) where K(x_test, x_1) > 0 and a
    tie among all L labels where K <= 0 (normalised, clipped: no positive mass; averaged: the
    negative score clipped to 0).  acc_kernel is then [y = y_1] or 1/L, in every estimator;
    the lowest-index argmax would give [y = label 0] on the tied prompts."""
    B, seed = 60, 6
    rows, _ = icl_eval.evaluate(Uniform(world), world, [1], example_length=3, n_prompts=B, seed=seed)
    prompts = sample_prompt_set(world, B, 1, 3, seed=seed)
    kv, y1 = KernelStub(world, 3, seed=seed).kernel_values(prompts.tokens)
    pos = kv[:, 0] > 0
    assert 0 < pos.sum() < B                               # both cases occur in this world
    L = len(world.labels)
    expect = np.where(pos, (y1[:, 0] == prompts.y_test).astype(float), 1 / L).mean()
    lowest = np.where(pos, y1[:, 0] == prompts.y_test, prompts.y_test == world.labels[0]).mean()
    assert expect != pytest.approx(lowest)
    for est in kernel.ESTIMATORS:
        assert by(rows, icl_eval.kernel_metric("acc_kernel", est))[1]["mean"] == pytest.approx(expect, rel=1e-12)


def test_crafted_kernel_ties_score_one_over_m(world, monkeypatch):
    """Kernel estimates with exact ties among m = 1, 2, 3 and L labels (written over the real
    ones): acc_kernel is the mean of [y in the tie] / m, agree_kernel with a model that puts
    its mass on label 0 is [0 in the tie] / m."""
    real = icl_eval.kernel_estimates
    L, B = len(world.labels), 24
    sizes = np.array([1, 2, 3, L] * (B // 4))

    def crafted(*args, **kwargs):
        est, info = real(*args, **kwargs)
        out = np.zeros(est[("theory", "normalised")].shape)                            # (B, N, L)
        for b, m in enumerate(sizes):
            out[b, :, (b + np.arange(m)) % L] = 1.0 / m
        return {key: (out if key[0] == "theory" else e) for key, e in est.items()}, info

    class First(BayesStub):
        def __call__(self, input_ids):
            logits = torch.full((*input_ids.shape, self.world.n_symbols), -30.0)
            logits[..., self.world.labels[0]] = 0.0
            return SimpleNamespace(logits=logits)

    monkeypatch.setattr(icl_eval, "kernel_estimates", crafted)
    rows, _ = icl_eval.evaluate(First(world), world, [2], example_length=3, n_prompts=B, seed=7)
    prompts = sample_prompt_set(world, B, 2, 3, seed=7)
    y = np.searchsorted(world.labels, prompts.y_test)
    in_tie = np.array([(y[b] - b) % L < m for b, m in enumerate(sizes)])
    has_0 = np.array([(0 - b) % L < m for b, m in enumerate(sizes)])
    for est in kernel.ESTIMATORS:
        assert by(rows, icl_eval.kernel_metric("acc_kernel", est))[2]["mean"] == pytest.approx(
            (in_tie / sizes).mean(), rel=1e-12)
        assert by(rows, icl_eval.kernel_metric("agree_kernel", est))[2]["mean"] == pytest.approx(
            (has_0 / sizes).mean(), rel=1e-12)


def corr_rows(a, b):
    """np.corrcoef per row of a, b (B, L); NaN where a row of either has zero variance."""
    out = np.full(len(a), np.nan)
    for i, (u, v) in enumerate(zip(a, b)):
        if np.isfinite(u).all() and np.isfinite(v).all() and np.ptp(u) > 0 and np.ptp(v) > 0:
            out[i] = np.corrcoef(u, v)[0, 1]
    return out


def synthetic(B=12, L=4, n=3, seed=0):
    """A curve over V = L + 1 symbols (symbol 0 the delimiter, labels 1..L), kernel and frequency
    estimates (B, n, L), all random distributions; the last prompt has no exact Bayes answer."""
    rng = np.random.default_rng(seed)
    pred = rng.dirichlet(np.ones(L + 1), size=(B, n + 1))
    pred[-1] = np.nan
    curve = SimpleNamespace(predictive=pred, oracle=rng.dirichlet(np.ones(L + 1), size=B))
    kest = {("theory", "normalised"): rng.dirichlet(np.ones(L), size=(B, n)),
            ("frequency", "normalised"): rng.dirichlet(np.ones(L), size=(B, n))}
    return curve, kest, np.arange(1, L + 1), rng.integers(0, L, size=B)


def test_direction_metrics_against_corrcoef():
    """dir_kernel, dir_frequency and dir_gap through prompt_metrics, on synthetic arrays, against
    np.corrcoef per prompt of (model − Bayes) with (kernel − Bayes) and (frequencies − Bayes);
    NaN where Bayes is undefined."""
    curve, kest, labels, y = synthetic()
    n = 3
    p = restrict(curve.predictive[:, n], labels)
    q = np.random.default_rng(1).dirichlet(np.ones(4), size=len(y))
    per = icl_eval.prompt_metrics(q, curve, n, y, labels, kest)
    k, f = kest[("theory", "normalised")][:, n - 1], kest[("frequency", "normalised")][:, n - 1]
    want_k, want_f = corr_rows(q - p, k - p), corr_rows(q - p, f - p)
    assert np.isnan(want_k[-1]) and np.isfinite(want_k[:-1]).all()
    np.testing.assert_allclose(per["dir_kernel"], want_k, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(per["dir_frequency"], want_f, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(per["dir_gap"], want_k - want_f, rtol=1e-12, atol=1e-12)
    assert list(per)[-3:] == list(icl_eval.DIRECTION_METRICS)
    # no direction without demonstrations
    assert not set(icl_eval.DIRECTION_METRICS) & set(icl_eval.prompt_metrics(q, curve, 0, y, labels, kest))


def test_direction_metrics_known_answers_and_constant_departures():
    """A model equal to the kernel: dir_kernel 1.  A model equal to Bayes plus half the label
    frequencies' departure: dir_frequency 1.  A model equal to Bayes (a constant, zero departure)
    or frequencies equal to Bayes: NaN, and mean_ci leaves those prompts out of the row."""
    curve, kest, labels, y = synthetic()
    n, B = 2, len(y)
    p = restrict(curve.predictive[:, n], labels)
    k, f = kest[("theory", "normalised")][:, n - 1], kest[("frequency", "normalised")][:, n - 1]
    ok = np.isfinite(p).all(-1)
    per = icl_eval.prompt_metrics(k.copy(), curve, n, y, labels, kest)
    np.testing.assert_allclose(per["dir_kernel"][ok], 1.0, atol=1e-12)
    per = icl_eval.prompt_metrics(np.where(ok[:, None], p + 0.5 * (f - p), 1 / 4), curve, n, y, labels, kest)
    np.testing.assert_allclose(per["dir_frequency"][ok], 1.0, atol=1e-12)
    # the first half of the prompts: the model is exact Bayes
    q = np.where((np.arange(B) < B // 2)[:, None], p, f)
    per = icl_eval.prompt_metrics(q, curve, n, y, labels, kest)
    assert np.isnan(per["dir_kernel"][:B // 2]).all() and np.isnan(per["dir_gap"][:B // 2]).all()
    assert np.isfinite(per["dir_kernel"][B // 2:-1]).all()
    m, _lo, _hi, cnt = metrics.mean_ci(per["dir_kernel"])
    assert cnt == B - B // 2 - 1 and m == pytest.approx(np.mean(corr_rows(f - p, k - p)[B // 2:-1]))
    # frequencies that equal Bayes have no direction: dir_frequency and dir_gap NaN, dir_kernel kept
    kest2 = dict(kest)
    kest2[("frequency", "normalised")] = kest[("frequency", "normalised")].copy()
    kest2[("frequency", "normalised")][:, n - 1] = np.where(ok[:, None], p, 1 / 4)
    per = icl_eval.prompt_metrics(f, curve, n, y, labels, kest2)
    assert np.isnan(per["dir_frequency"]).all() and np.isnan(per["dir_gap"]).all()
    assert np.isfinite(per["dir_kernel"][:-1]).all()
    # two labels: departures of distributions are ±(a, −a), so the correlation is ±1
    a = icl_eval.departure_correlation(np.array([[0.1, -0.1], [0.2, -0.2]]), np.array([[0.3, -0.3], [-0.1, 0.1]]))
    np.testing.assert_allclose(a, [1.0, -1.0])


def test_direction_rows_of_stub_models(world):
    """Through evaluate: a model that returns the theory kernel's estimate has dir_kernel 1 on
    every prompt where the kernel departs from Bayes; a model that is exact Bayes (float32
    logits) has no departure, so no direction: rows with n_prompts 0."""
    rows, _ = icl_eval.evaluate(KernelStub(world, 3, seed=4), world, [2, 5], example_length=3, n_prompts=20, seed=4)
    for n in (2, 5):
        r = by(rows, "dir_kernel")[n]
        assert r["n_prompts"] >= 15 and r["mean"] == pytest.approx(1.0, abs=1e-6)
        assert by(rows, "dir_gap")[n]["mean"] == pytest.approx(1.0 - by(rows, "dir_frequency")[n]["mean"], abs=1e-6)
    rows, _ = icl_eval.evaluate(BayesStub(world), world, [2], example_length=3, n_prompts=10, seed=4)
    for m in icl_eval.DIRECTION_METRICS:
        assert by(rows, m)[2]["n_prompts"] == 0


def test_baseline_series_has_its_own_style():
    """Every label-frequency metric is drawn, and no baseline series shares a (colour, line
    style, marker) with a kernel or model series."""
    from simkernel.plots.icl import _ICL_SERIES

    drawn = {s[1]: s for s in _ICL_SERIES}
    assert set(icl_eval.FREQUENCY_METRICS) <= set(drawn)
    base = {(c, ls, mk) for _p, m, c, ls, _w, mk, _l in _ICL_SERIES if m in icl_eval.FREQUENCY_METRICS}
    rest = {(c, ls, mk) for _p, m, c, ls, _w, mk, _l in _ICL_SERIES if m not in icl_eval.FREQUENCY_METRICS}
    assert not base & rest and not {c for c, _ls, _mk in base} & {c for c, _ls, _mk in rest}


def test_model_predictive_rows_sum_to_one(world):
    torch.manual_seed(0)
    m = model_mod.build_model("tiny", world.n_symbols, n_positions=32).eval()
    toks = np.random.default_rng(0).integers(0, world.n_symbols, size=(7, 11))
    q = icl_eval.model_predictive(m, toks, world.labels, batch_size=3)
    assert q.shape == (7, len(world.labels))
    np.testing.assert_allclose(q.sum(-1), 1.0, atol=1e-9)
    # the same as the full softmax restricted and renormalised
    full = torch.softmax(m(input_ids=torch.as_tensor(toks)).logits[:, -1].double(), -1).detach().numpy()
    r = full[:, world.labels]
    np.testing.assert_allclose(q, r / r.sum(-1, keepdims=True), atol=1e-6)


def test_context_skip_and_id_ood(world):
    from dataclasses import replace

    stub = BayesStub(world, n_positions=icl_eval.prompt_length(4, 3))
    rows, info = icl_eval.evaluate(stub, world, [0, 4, 5, 16], example_length=3, n_prompts=10)
    assert info["skipped_n"] == [5, 16] and sorted(by(rows, "tv_bayes")) == [0, 4]
    with pytest.raises(ValueError, match="longer than the model's context"):
        icl_eval.evaluate(BayesStub(world, n_positions=1), world, [0, 2], example_length=3, n_prompts=5)
    assert icl_eval.default_concepts(world) == ["prior"]
    # a world with a prior-0 concept: id and ood groups, compared with the same exact answer
    p = world.prior.copy()
    p[-1] = 0.0
    w2 = replace(world, prior=p / p.sum())
    assert icl_eval.default_concepts(w2) == ["id", "ood"]
    rows, info = icl_eval.evaluate(BayesStub(w2), w2, [0, 2], example_length=3, n_prompts=12)
    assert {r["concepts"] for r in rows} == {"id", "ood"}
    assert by(rows, "agree_bayes", "ood")[2]["mean"] == 1.0
    assert by(rows, "tv_bayes", "ood")[2]["mean"] < 1e-6


# ---------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("icl")
    world = make_world("random", 0, **WORLD)
    corpus = write_corpus(world, root / "corpus", 8, 128, seed=0)
    cfg = tr.TrainConfig(corpus=tr.corpus_identity(corpus), model="tiny", block_size=32, batch_size=4,
                         lr=3e-3, warmup_steps=2, max_steps=4, eval_every=2, eval_docs=2, eval_blocks=4,
                         ckpt_every=100, device="cpu", model_overrides={"n_positions": 48})
    d = tr.prepare_run_dir(root / "runs", cfg, {"command": "train", "train": cfg.hashed(),
                                                "corpus_dir": str(corpus)})
    tr.train(cfg, corpus, d)
    return d


def test_cli_end_to_end(run_dir, tmp_path):
    out = tmp_path / "out"
    res = ok(["icl-eval", "--run", run_dir, "--n-demos", "0,1,2,4,16", "--n-prompts", "20", "--out", out,
              "--device", "cpu"])
    assert "skipped n = 16" in res.output            # 16 * 4 + 2 > 48
    assert "TV(model,kernel)" in res.output
    for f in ("icl_vs_bayes.csv", "icl_vs_bayes.json", "icl_vs_bayes.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0
    rows = list(csv.DictReader(open(out / "icl_vs_bayes.csv")))
    assert list(rows[0]) == ["n_demos", "concepts", "metric", "mean", "ci_low", "ci_high", "n_prompts"]
    assert {int(r["n_demos"]) for r in rows} == {0, 1, 2, 4}
    assert {r["metric"] for r in rows} == set(icl_eval.METRICS)
    for r in rows:
        assert float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"])
    assert not any(r["metric"] in icl_eval.KERNEL_METRICS + icl_eval.FREQUENCY_METRICS
                   for r in rows if r["n_demos"] == "0")
    meta = json.loads((out / "icl_vs_bayes.json").read_text())
    assert meta["config"]["command"] == "icl-eval" and meta["skipped_n"] == [16] and meta["context"] == 48
    assert meta["seed"] == 0 and "torch" in meta["versions"]
    assert meta["kernel"]["options"]["kernel"] == "theory" and meta["kernel"]["skipped"] == {}


def test_cli_plot_icl_redraws_from_the_tables(run_dir, tmp_path):
    out = tmp_path / "out"
    ok(["icl-eval", "--run", run_dir, "--n-demos", "0,1,2", "--n-prompts", "6", "--out", out, "--device", "cpu"])
    png = out / "icl_vs_bayes.png"
    png.unlink()
    r = ok(["plot", "icl", out])
    assert png.is_file() and png.stat().st_size > 0 and str(png) in r.output
    ok(["plot", "icl", out, "--out", tmp_path / "elsewhere" / "deeper"])
    assert (tmp_path / "elsewhere" / "deeper" / "icl_vs_bayes.png").is_file()
    # no csv: one error line, non-zero exit, nothing created
    (tmp_path / "empty").mkdir()
    r = run(["plot", "icl", tmp_path / "empty", "--out", tmp_path / "nothing"])
    msg = r.stderr.strip()
    assert r.exit_code == 2 and len(msg.splitlines()) == 1 and msg.startswith("error: ")
    assert "icl_vs_bayes.csv" in msg and not (tmp_path / "nothing").exists()


def test_figure_has_a_row_of_panels_per_concept_group(tmp_path):
    """In- and out-of-distribution prompts get their own row of panels; the kernel series is
    drawn where present, and a table without it (an older run) still draws."""
    from matplotlib.image import imread
    from simkernel.plots import plot_icl_vs_bayes

    def rows(groups, metrics):
        return [{"n_demos": n, "concepts": g, "metric": m, "mean": 0.5, "ci_low": 0.4, "ci_high": 0.6,
                 "n_prompts": 10} for g in groups for m in metrics for n in (0, 1, 2, 4)]
    one = imread(plot_icl_vs_bayes(rows(["prior"], icl_eval.METRICS), tmp_path / "one.png"))
    two = imread(plot_icl_vs_bayes(rows(["id", "ood"], icl_eval.METRICS), tmp_path / "two.png"))
    assert two.shape[0] > 1.6 * one.shape[0] and two.shape[1] == one.shape[1]
    plot_icl_vs_bayes(rows(["prior"], icl_eval.BASE_METRICS), tmp_path / "old.png")
    # a table written before the label-frequency baseline and the clipped estimator
    before = icl_eval.BASE_METRICS + tuple(icl_eval.kernel_metric(m, e) for e in ("normalised", "averaged")
                                           for m in ("tv_kernel", "agree_kernel", "acc_kernel", "tv_kernel_bayes"))
    old = imread(plot_icl_vs_bayes(rows(["prior"], before), tmp_path / "before.png"))
    assert old.shape == one.shape and not np.array_equal(old, one)      # the baseline is drawn
    with pytest.raises(ValueError, match="lacks column 'concepts'"):
        plot_icl_vs_bayes([{"n_demos": 1, "metric": "tv_bayes", "mean": 0, "ci_low": 0, "ci_high": 0,
                            "n_prompts": 1}], tmp_path / "bad.png")


def test_cli_default_out_is_the_run_folder(run_dir):
    ok(["icl-eval", "--run", run_dir, "--n-demos", "1,2", "--n-prompts", "5", "--device", "cpu"])
    assert (run_dir / "icl_vs_bayes.png").is_file()


@pytest.mark.parametrize("case", ["missing", "no_checkpoint", "bad_n", "no_world"])
def test_cli_bad_input_one_line(case, tmp_path, run_dir):
    if case == "missing":
        args, needle, code = ["--run", tmp_path / "nope"], "does not exist", 2
    elif case == "no_checkpoint":
        (tmp_path / "empty").mkdir()
        args, needle, code = ["--run", tmp_path / "empty"], "has no checkpoint", 2
    elif case == "bad_n":
        args, needle, code = ["--run", run_dir, "--n-demos", "1,-2"], "negative", 2
    else:
        import shutil
        d = tmp_path / "copy"
        shutil.copytree(run_dir / "checkpoint", d / "checkpoint")
        args, needle, code = ["--run", d], "world.npz", 2
    r = run(["icl-eval", *args, "--out", tmp_path / "o"])
    msg = r.stderr.strip()
    assert r.exit_code == code and len(msg.splitlines()) == 1 and msg.startswith("error: ") and needle in msg, msg
    assert not (tmp_path / "o").exists()


def test_icl_experiment_config_plans_its_run():
    """experiments/icl_id_ood.toml trains its model when missing and evaluates it through icl_eval.run."""
    import importlib.util
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("experiments_run", root / "experiments" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    command, options, train, out = mod.plan(tomllib.loads((root / "experiments" / "icl_id_ood.toml").read_text()),
                                            "icl_id_ood")
    assert command == "icl-eval" and out == root / "figures" / "icl_id_ood" and options["n_demos"][-1] == 48
    assert train["preset"] == "ginc" and train["model"] == "tiny"
