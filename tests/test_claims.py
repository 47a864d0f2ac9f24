"""simkernel.claims: every rule on synthetic tables with known answers (no sweeps here).

The synthetic builders below (``regime_worlds``, ``floors_frame``, ``map_rows``, ``phenomenon``,
...) make combined sweep tables shaped like ``sweep.SweepResult.table(...)``, with the columns'
real dtypes; tests/test_report.py builds its page from them too.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkernel import claims, metrics
from simkernel.claims import base, c1, c2, c3, c4, c5, c6, c7

ROOT = Path(__file__).resolve().parents[1]
BAND = 0.1


# ---------------------------------------------------------------------- regime tables (C1, C4)
def regime_start(ns, ratio, band=BAND) -> float:
    """The first n from which measured / predicted stays within 1 ± band (the spec's definition)."""
    inside = np.abs(np.asarray(ratio) - 1) <= band
    for i in range(len(ns)):
        if inside[i:].all():
            return float(ns[i])
    return math.nan


def log_slope(ns, v) -> float:
    return float(np.polyfit(np.log(ns), np.log(v), 1)[0])


def summarise(world, ns, measured, predicted, *, kernel="theory", estimator="normalised", crossover=math.nan,
              crossover_pred=math.nan, floor=0.01, floor_frequency=0.2):
    """A regime_worlds.csv row from one world's measured and predicted mean TV(estimate_n, limit)."""
    ns, measured, predicted = (np.asarray(a, float) for a in (ns, measured, predicted))
    ratio = measured / predicted
    r0 = regime_start(ns, ratio)
    reached = math.isfinite(r0)
    judged = reached and ns[-1] >= 4 * r0
    last = ns >= ns[-1] / 4
    trend = log_slope(ns[last], ratio[last])
    return {"world": world, "kernel": kernel, "estimator": estimator, "n_max": int(ns[-1]), "regime_n": r0,
            "reached": reached, "judged": judged,
            "slope": log_slope(ns[ns >= r0], measured[ns >= r0]) if judged else math.nan,
            "slope_window": log_slope(ns[ns >= 4], measured[ns >= 4]), "ratio_max": float(ratio[-1]),
            "ratio_trend": trend, "diverging": bool(ratio[-1] > 1 + BAND and trend > 0.05),
            "c_pred": float(predicted[0]), "crossover": crossover, "crossover_lo": crossover * 0.8,
            "crossover_hi": crossover * 1.25, "crossover_pred": crossover_pred, "floor": floor,
            "floor_frequency": floor_frequency, "band": BAND}


def regime_worlds(rows, family="ginc-small"):
    """A combined worlds table: the job and grid columns in front of the summary rows."""
    out = [{"job": f"j{family}{r['world']}", "preset": family, "world_seed": int(r["world"]), "status": "done",
            "error": None, **r} for r in rows]
    return pd.DataFrame(out)


def flat_then_root(n_max, knee=500.0, c=1.0, noise=0.0, rng=None):
    """(ns, measured, predicted): the error is flat until n = knee, then c / √n; predicted c / √n."""
    ns = 2.0 ** np.arange(0, int(math.log2(n_max)) + 1)
    pred = c / np.sqrt(ns)
    meas = c / np.sqrt(np.maximum(ns, knee))
    if noise:
        meas = meas * np.exp(noise * rng.standard_normal(ns.size))
    return ns, meas, pred


def c1_worlds(n_max, n_worlds=6, knee=500.0, seed=0, family="ginc-small"):
    rng = np.random.default_rng(seed)
    rows = []
    for w in range(n_worlds):
        ns, m, p = flat_then_root(n_max, knee, noise=0.01, rng=rng)
        rows.append(summarise(w, ns, m, p))
        rows.append(summarise(w, ns, p, p, kernel="frequency"))
    return regime_worlds(rows, family)


def c1_rows(worlds_table):
    """A regime.csv-like main table for the figure: tv_limit, its prediction and the ratio."""
    rows = []
    for _, r in worlds_table.iterrows():
        ns, m, p = flat_then_root(r["n_max"])
        for n, mm, pp in zip(ns, m, p):
            for metric, v in (("tv_limit", mm), ("tv_limit_pred", pp), ("ratio", mm / pp), ("tv_bayes", mm + 0.1),
                              ("tv_bayes_pred", pp + 0.1), ("diff_frequency", 0.1 - math.log10(n) / 10)):
                rows.append({"job": r["job"], "preset": r["preset"], "world_seed": r["world_seed"], "status": "done",
                             "error": None, "world": r["world"], "n_demos": float(n), "kernel": r["kernel"],
                             "estimator": r["estimator"], "metric": metric, "mean": v, "ci_low": v * 0.9,
                             "ci_high": v * 1.1, "n_prompts": 1000})
    return pd.DataFrame(rows)


def test_c1_flat_until_500_then_root_n_is_not_reached_at_256_and_supported_at_8192():
    short = c1.verdict(c1_worlds(256))
    assert short.families["ginc-small"]["verdict"] == base.NOT_REACHED
    assert "not reached by n = 256" in short.families["ginc-small"]["text"]
    assert short.verdict == base.NOT_REACHED
    # the old rule's window slope over n = 4..256 is flat: shown, not judged
    window = short.numbers["ginc-small: slope over n = 4..256, pre-asymptotic window, not judged (normalised)"]
    assert abs(window[0]) < 0.05
    long = c1.verdict(c1_worlds(8192))
    assert long.families["ginc-small"]["verdict"] == base.SUPPORTED
    m, lo, hi = long.numbers["ginc-small: slope past the regime's start, theory kernel (normalised)"]
    assert -0.6 <= lo < m < hi <= -0.4


def test_c1_slope_far_from_half_past_the_regime_is_refuted():
    rows = []
    for w in range(5):
        ns = 2.0 ** np.arange(0, 14)
        pred = 1.0 / np.sqrt(ns)
        rows.append(dict(summarise(w, ns, pred, pred), slope=-1.0 + 0.01 * w))   # a planted rate n^-1
    c = c1.verdict(regime_worlds(rows))
    assert c.verdict == base.REFUTED and "outside the band" in c.text


def test_c1_three_diverging_worlds_refute():
    rows = []
    for w in range(5):
        ns = 2.0 ** np.arange(0, 12)
        pred = 1.0 / np.sqrt(ns)
        meas = pred * (1 + np.where(ns > 64, np.log(ns / 64), 0.0)) if w < 3 else pred   # a biased limit
        rows.append(summarise(w, ns, meas, pred))
    table = regime_worlds(rows)
    assert table["diverging"].sum() == 3
    c = c1.verdict(table)
    assert c.verdict == base.REFUTED and "3 worlds diverge" in c.text


def test_c1_two_worlds_are_inconclusive_and_say_why():
    c = c1.verdict(c1_worlds(8192, n_worlds=2))
    assert c.verdict == base.INCONCLUSIVE and "only 2 worlds" in c.text


def test_c1_families_that_disagree_make_the_overall_word_mixed():
    t = pd.concat([c1_worlds(8192, family="ginc-small"), c1_worlds(256, family="paper-c")], ignore_index=True)
    c = c1.verdict(t, c1_rows(t))
    assert {f: v["verdict"] for f, v in c.families.items()} == {"ginc-small": base.SUPPORTED,
                                                                  "paper-c": base.NOT_REACHED}
    assert c.verdict == base.MIXED
    assert set(c.plot["families"]) == {"ginc-small", "paper-c"}
    curve = c.plot["families"]["ginc-small"]["curves"]["theory/normalised"]
    assert curve["n"][-1] == 8192 and len(curve["ratio"]) == len(curve["n"])


def test_c1_failed_jobs_are_ignored_and_reported():
    t = c1_worlds(8192)
    bad = pd.DataFrame([{"job": "jx", "preset": "ginc-small", "world_seed": 9, "status": "failed",
                         "error": "ValueError: boom"}])
    c = c1.verdict(pd.concat([t, bad], ignore_index=True))
    assert c.verdict == base.SUPPORTED
    assert "1 job did not finish" in c.text and "boom" in c.text


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(-1.2, 0.0), min_size=3, max_size=10), st.randoms(use_true_random=False))
def test_c1_verdict_invariant_to_row_order(slopes, rnd):
    rows = []
    for w, s in enumerate(slopes):
        ns = 2.0 ** np.arange(0, 12)
        pred = 1.0 / np.sqrt(ns)
        rows.append(dict(summarise(w, ns, pred, pred), slope=s))
    t = regime_worlds(rows)
    idx = list(t.index)
    rnd.shuffle(idx)
    a, b = c1.verdict(t), c1.verdict(t.loc[idx])
    assert a.verdict == b.verdict
    key = "ginc-small: slope past the regime's start, theory kernel (normalised)"
    np.testing.assert_allclose(a.numbers[key], b.numbers[key], equal_nan=True)


# ---------------------------------------------------------------------- floors (C2, C3)
def floors_frame(family, n_worlds, floor_pre, floor_own, rng=None, x_of=None, concepts=4, bound=0.5):
    """floors.csv rows: per world and concept, the theory and oracle floors (averaged and
    normalised) with the oracle's identity_bound, and the label frequencies' floor; eta2_eps =
    x_of(floor, w, c) when given (else random, far above the floor)."""
    rng = rng or np.random.default_rng(0)
    rows = []
    for w in range(n_worlds):
        for c in range(concepts):
            fp, fo = float(floor_pre(w, c)), float(floor_own(w, c))
            x = float(x_of(fp, w, c)) if x_of is not None else float(rng.lognormal(5, 1))
            for k, f in (("theory", fp), ("oracle", fo), ("frequency", 0.3)):
                for e in ("averaged", "normalised") if k != "frequency" else ("normalised",):
                    rows.append({"job": f"j{family}{w}", "preset": family, "world_seed": w, "status": "done",
                                 "error": None, "world": w, "concept": c, "prior": 1.0 / concepts, "kernel": k,
                                 "estimator": e, "floor_tv": f, "floor_se": 0.0, "exact": True, "eta": 1.0,
                                 "eps": x, "eps_span": x, "span_dim": 10, "eta2_eps": x, "eta2_eps_span": x,
                                 "identity_bound": bound if k == "oracle" else math.nan})
    return pd.DataFrame(rows)


def test_c2_floor_exists_supported_and_identity_check_passes():
    rng = np.random.default_rng(0)
    fl = floors_frame("ginc-small", 8, lambda w, c: 0.15 + 0.02 * rng.random(), lambda w, c: 0.005)
    c = c2.verdict(fl)
    assert c.verdict == base.SUPPORTED and c.kind == "asymptotic"
    assert [ch["verdict"] for ch in c.checks] == [base.PASSED]
    assert c.numbers["ginc-small: floor with Σ_pretrain (averaged)"][1] > c2.FLOOR_MIN


def test_c2_no_floor_is_refuted():
    c = c2.verdict(floors_frame("g", 8, lambda w, c: 1e-5, lambda w, c: 1e-6))
    assert c.verdict == base.REFUTED and "no floor" in c.text


def test_c2_identity_check_fails_when_one_oracle_floor_exceeds_its_bound():
    fl = floors_frame("g", 6, lambda w, c: 0.2, lambda w, c: 0.01, bound=0.02)
    bad = (fl["kernel"] == "oracle") & (fl["world"] == 4) & (fl["concept"] == 2) & (fl["estimator"] == "normalised")
    fl.loc[bad, "floor_tv"] = 0.03
    c = c2.verdict(fl)
    (check,) = c.checks
    assert check["verdict"] == base.FAILED
    assert "world 4, concept 2" in check["text"] and "1 of" in check["text"]
    assert c.verdict == base.SUPPORTED                   # a failed check is a bug, not evidence against C2


def test_c2_identity_check_without_the_column_does_not_pass():
    fl = floors_frame("g", 6, lambda w, c: 0.2, lambda w, c: 0.01).drop(columns="identity_bound")
    (check,) = c2.verdict(fl).checks
    assert check["verdict"] == base.FAILED and "not checked" in check["text"]


def test_c2_prior_weighting_ignores_out_of_distribution_concepts():
    fl = floors_frame("g", 5, lambda w, c: 0.2 if c < 2 else 5.0, lambda w, c: 0.01)
    fl.loc[fl["concept"] >= 2, "prior"] = 0.0
    c = c2.verdict(fl)
    assert c.numbers["g: floor with Σ_pretrain (averaged)"][0] == pytest.approx(0.2)


def test_c3_bound_holding_everywhere_is_supported_with_its_slack():
    fl = floors_frame("g", 5, lambda w, c: 0.1 + 0.01 * w + 0.001 * c, lambda w, c: 0.0,
                      x_of=lambda f, w, c: f * 10 ** (2 + c))
    c = c3.verdict(fl, n_boot=200)
    assert c.verdict == base.SUPPORTED and c.kind == "bound"
    assert c.numbers["g: slack log10(η²ε_θ / floor), minimum (averaged)"][0] == pytest.approx(2.0)
    assert c.numbers["g: slack log10(η²ε_θ / floor), median (averaged)"][0] == pytest.approx(3.5)
    assert "with 95% confidence" in c.text


def test_c3_a_bound_violated_in_one_pair_is_refuted():
    fl = floors_frame("g", 10, lambda w, c: 0.1, lambda w, c: 0.0, x_of=lambda f, w, c: 100.0)
    hit = (fl["world"] == 7) & (fl["concept"] == 1) & (fl["kernel"] == "theory") & (fl["estimator"] == "averaged")
    fl.loc[hit, "eta2_eps"] = 0.05
    c = c3.verdict(fl, n_boot=100)
    assert c.verdict == base.REFUTED
    assert "1 of 40 pairs" in c.text and "world 7, concept 1" in c.text


def test_c3_two_worlds_inconclusive():
    fl = floors_frame("g", 2, lambda w, c: 0.1, lambda w, c: 0.0, x_of=lambda f, w, c: 100.0)
    c = c3.verdict(fl, n_boot=100)
    assert c.verdict == base.INCONCLUSIVE and "only 2 worlds" in c.text


def test_c3_invariant_to_row_order():
    rng = np.random.default_rng(7)
    fl = floors_frame("g", 6, lambda w, c: rng.random(), lambda w, c: 0.0, rng)
    a = c3.verdict(fl, n_boot=200)
    b = c3.verdict(fl.sample(frac=1.0, random_state=3), n_boot=200)
    assert a.verdict == b.verdict
    key = "g: Spearman(η²ε_θ, floor), secondary (averaged)"
    np.testing.assert_allclose(a.numbers[key], b.numbers[key])


def test_spearman_ci_resamples_whole_worlds():
    x = np.concatenate([np.arange(4) + 10 * w for w in range(6)]).astype(float)
    y = np.concatenate([np.arange(4) - 10 * w for w in range(6)]).astype(float)
    units = np.repeat(np.arange(6), 4)
    rho, lo, hi, P, W = metrics.spearman_ci(x, y, units, n_boot=400)
    assert (P, W) == (24, 6)
    assert -1 <= lo < hi <= 1 and hi - lo > 0.02
    assert metrics.spearman_ci(np.arange(24.0), np.arange(24.0), units, n_boot=100)[:3] == pytest.approx((1, 1, 1))
    assert math.isnan(metrics.spearman_ci(np.ones(8), np.arange(8), np.arange(8) // 2)[0])


# ---------------------------------------------------------------------- C4
def c4_worlds(crossovers, family="paper-c", n_max=8192, floor=0.01, floor_frequency=0.17):
    rows = []
    for w, x in enumerate(crossovers):
        ns = 2.0 ** np.arange(0, int(math.log2(n_max)) + 1)
        pred = 1 / np.sqrt(ns)
        rows.append(summarise(w, ns, pred, pred, crossover=x, crossover_pred=1.1 * x if math.isfinite(x) else 2e4,
                              floor=floor + 0.001 * w, floor_frequency=floor_frequency))
        rows.append(summarise(w, ns, pred, pred, kernel="frequency"))
    return regime_worlds(rows, family)


def test_c4_crossover_is_a_number_with_its_count_not_a_verdict():
    xs = [1024.0, 2048.0, 1024.0, 2048.0, math.inf]
    c = c4.verdict(c4_worlds(xs))
    assert c.verdict == base.MEASURED and c.kind == "comparison"
    x = c.extra["crossover"]["paper-c"]
    assert set(x) == {"estimate", "ci_low", "ci_high", "worlds_crossed", "worlds", "n_max", "predicted"}
    assert x["estimate"] == pytest.approx(math.sqrt(1024 * 2048))
    assert x["ci_low"] < x["estimate"] < x["ci_high"]
    assert (x["worlds_crossed"], x["worlds"], x["n_max"]) == (4, 5, 8192)
    short = c.families["paper-c"]["short"]
    assert short.startswith("n× ≈ 1,400 [") and "(4/5 worlds by n = 8,192); limit 0.012 vs 0.17" in short
    assert "crossover" in c.as_dict()


def test_c4_no_crossover_says_so_and_few_worlds_are_inconclusive():
    c = c4.verdict(c4_worlds([math.inf] * 4))
    assert c.verdict == base.MEASURED and "no crossover by n = 8,192 (0/4 worlds)" in c.families["paper-c"]["short"]
    assert math.isnan(c.extra["crossover"]["paper-c"]["estimate"])
    assert c4.verdict(c4_worlds([64.0, 128.0])).verdict == base.INCONCLUSIVE


# ---------------------------------------------------------------------- C5
def map_rows(regions, worlds=3, seeds=2, steps=(8, 64), n_max=15):
    """A strategies sweep's combined table: ``regions`` {(k, size): (tv_bayes, tv_kernel,
    w_kernel, gap)} at the last step and n = n_max (world w adds 0.01 w to TV(model, Bayes));
    earlier steps, smaller n and the unseen split get other numbers that must not count."""
    sizes = {"xs": {"n_embd": 32}, "s": {}}
    rows = []
    for (k, size), (tb, tk, wk, gap) in regions.items():
        for w in range(worlds):
            for s in range(seeds):
                for step in steps:
                    for n in (1, n_max):
                        for concepts in ("seen", "unseen"):
                            last = step == steps[-1] and n == n_max and concepts == "seen"
                            vals = {("bayes", "tv"): tb + 0.01 * w if last else 0.9,
                                    ("kernel", "tv"): tk + 0.005 * s if last else 0.1,
                                    ("frequency", "tv"): 0.5, ("ngram", "tv"): 0.4, ("uniform", "tv"): 0.6,
                                    ("kernel", "weight"): wk if last else 0.0, ("bayes", "weight"): 1 - wk,
                                    ("model", "gap"): gap}
                            for (pred, metric), v in vals.items():
                                rows.append({"job": f"{k}{size}{w}{s}",
                                             "train.overrides": json.dumps({"n_concepts": k, "n_unseen": 8}),
                                             "train.world_seed": w, "train.seed": s, "train.model": "tiny",
                                             "train.model_overrides": json.dumps(sizes[size]), "status": "done",
                                             "error": None, "step": step, "n_demos": n, "concepts": concepts,
                                             "predictor": pred, "metric": metric, "mean": v, "ci_low": v,
                                             "ci_high": v, "n_prompts": 100, "n_worlds": 1})
    return pd.DataFrame(rows)


SIZES = {"xs": {"model": "tiny", "n_embd": 32}, "s": {"model": "tiny"}}


def test_c5_is_judged_per_region_and_its_word_is_the_worst():
    near = {(1, "s"): (0.05, 0.2, 0.0, 0.01), (4, "s"): (0.3, 0.1, 0.6, 0.02)}
    c = c5.verdict(map_rows(near), SIZES)
    words = {p["name"]: p["verdict"] for p in c.parts}
    assert words == {"K = 1, size s": base.REFUTED, "K = 4, size s": base.SUPPORTED}
    assert c.verdict == base.REFUTED and "supported in (K = 4, size s)" in c.text
    only = c5.verdict(map_rows({(4, "s"): (0.3, 0.1, 0.6, 0.02)}), SIZES)
    assert only.verdict == base.SUPPORTED
    # nearer the kernel but the kernel carries no weight in the mixture: not supported
    assert c5.verdict(map_rows({(4, "s"): (0.3, 0.1, 0.0, 0.02)}), SIZES).verdict == base.INCONCLUSIVE


def test_c5_judges_only_regions_near_the_bayes_loss_and_reports_the_rest():
    regions = {(1, "xs"): (0.05, 0.2, 0.0, 0.01), (64, "xs"): (0.4, 0.1, 0.5, 0.3)}
    c = c5.verdict(map_rows(regions), SIZES)
    assert [p["name"] for p in c.parts] == ["K = 1, size xs"]
    settings = [o["setting"] for o in c.outside]
    assert "K = 64, size xs" in settings and "K = 1, size xs, unseen concepts" in settings
    assert c.verdict == base.REFUTED                    # the far region's "support" does not count
    far = c5.verdict(map_rows({(64, "xs"): (0.4, 0.1, 0.5, 0.3)}), SIZES)
    assert far.verdict == base.INCONCLUSIVE and "no region of the map is in the claim's scope" in far.text


def test_c5_world_is_the_unit_seeds_averaged_and_needs_three_worlds():
    c = c5.verdict(map_rows({(4, "s"): (0.3, 0.1, 0.6, 0.02)}), SIZES)
    m, lo, hi = c.numbers["K = 4, size s: TV(model, kernel) - TV(model, exact Bayes)"]
    # per world: kernel 0.1025 (seeds 0.1, 0.105) minus Bayes 0.30, 0.31, 0.32
    assert m == pytest.approx(0.1025 - 0.31) and lo < m < hi
    two = c5.verdict(map_rows({(4, "s"): (0.3, 0.1, 0.6, 0.02)}, worlds=2), SIZES)
    assert two.verdict == base.INCONCLUSIVE and "only 2 worlds" in two.text


# ---------------------------------------------------------------------- C6
def pooled_frame(uniform, shuffled, clipped=(-0.3, -0.35, -0.25)):
    rows = []
    for ref, (d, lo, hi) in (("uniform", uniform), ("shuffled", shuffled), ("theory_clipped", clipped),
                             ("best", (-0.6, -0.65, -0.55))):
        rows.append({"job": "j", "seed": 0, "status": "done", "error": None, "target": "bayes", "reference": ref,
                     "n_runs": 3, "unit": "runs", "head_agreement": 0.25, "reference_agreement": 0.25 - d,
                     "difference": d, "lo": lo, "hi": hi, "n_prompts": 900, "runs_above_0": 3, "runs_below_0": 0})
    return pd.DataFrame(rows)


def measure_meta(word, corr, n_runs=3):
    runs = {f"r{i}": {"best": [{"measure": "pearson", "reference": "theory", "layer": 1, "head": 0,
                                "select": c, "report": c}]} for i, c in enumerate(corr)}
    return {"summary": {"n_runs": n_runs, "verdict": {"target": "bayes", "verdict": word, "n_runs": n_runs,
                                                      "runs_detected": n_runs, "rule": "..."}}, "runs": runs}


def test_c6_rules():
    good = pooled_frame((0.07, 0.03, 0.11), (0.1, 0.07, 0.13))
    c = c6.verdict(good, measure_meta("detected", [0.14, 0.15, 0.16]))
    assert c.verdict == base.SUPPORTED and c.kind == "finite-n" and list(c.families) == ["ginc-small"]
    flat = pooled_frame((0.0, -0.02, 0.02), (0.0, -0.02, 0.02))
    assert c6.verdict(flat, measure_meta("not detected", [0.1, 0.12, 0.11])).verdict == base.REFUTED
    assert c6.verdict(flat, measure_meta("mixed", [0.1, 0.12, 0.11])).verdict == base.INCONCLUSIVE
    assert c6.verdict(flat, measure_meta("detected", [0.1, -0.1, 0.02])).verdict == base.INCONCLUSIVE
    c = c6.verdict(flat, measure_meta("detected", [0.14, 0.15], n_runs=2))
    assert c.verdict == base.INCONCLUSIVE and "training seeds" in c.text
    c = c6.verdict(flat, measure_meta("not detected", [0.1, 0.12, 0.11]), gaps={"r0": 0.9, "r1": 0.004})
    assert c.verdict == base.INCONCLUSIVE and "not near the Bayes loss" in c.text


# ---------------------------------------------------------------------- C7
def eff(world_means, worlds=None):
    """A phenomena effect dict with its per-world means (the CI over worlds computed as phenomena does)."""
    v = np.asarray(world_means, float)
    worlds = list(range(v.size)) if worlds is None else worlds
    m, lo, hi, _ = metrics.unit_ci(v, worlds)
    return {"mean": m, "ci_low": lo, "ci_high": hi, "n_prompts": 200 * v.size, "n_worlds": v.size,
            "excludes_0": lo > 0 or hi < 0, "worlds": worlds, "world_means": v.tolist()}


def around(m, n=10, sd=0.01, seed=0):
    return m + sd * np.random.default_rng(seed).standard_normal(n)


HEADROOM = {"mean": 0.12, "ci_low": 0.1, "ci_high": 0.14, "n_prompts": 2000, "n_worlds": 10}


def retrieval_json(b, k, f):
    return {"n_demos": 2, "bandwidth": 0.1, "pool_size": 64, "rule": "r", "headroom": HEADROOM,
            "kernel": {p: {"tv_oracle_minus_random": eff(x)} for p, x in (("bayes", b), ("kernel", k),
                                                                          ("frequency", f))}}


def test_c7_a_kernel_only_effect_counts_against():
    c = c7.verdict("retrieval", retrieval_json(around(0.0, sd=0.01), around(-0.3, seed=1), around(-0.29, seed=2)))
    assert c.verdict == base.REFUTED
    assert "an effect in the kernel without one in exact Bayes" in c.parts[0]["text"]
    assert any(k.endswith("exact Bayes / kernel") for k in c.numbers)            # the finite way round
    assert "headroom TV(exact Bayes, oracle) 0.12 [0.1, 0.14]" in c.parts[0]["text"]


def test_c7_an_effect_the_kernel_misses_counts_against():
    prior = {"n_demos": 256, "rule": "r", "predictors": {
        "bayes": {"vs_uniform": [eff(around(0.0)), eff(around(0.43, seed=1))]},
        "kernel": {"vs_uniform": [eff(around(0.0)), eff(around(0.01, sd=0.003, seed=2))]},
        "frequency": {"vs_uniform": [eff(around(0.0)), eff(around(0.0, seed=3))]}}}
    c = c7.verdict("prior", prior)
    assert c.verdict == base.REFUTED and "misses" in c.text


def test_c7_matching_effect_closer_than_label_counting_is_supported():
    c = c7.verdict("retrieval", retrieval_json(around(-0.2), around(-0.25, seed=1), around(0.0, seed=2)))
    assert c.verdict == base.SUPPORTED
    r = next(v for k, v in c.numbers.items() if k.endswith("kernel / exact Bayes"))
    assert 0.5 <= r[1] <= r[0] <= r[2] <= 2


def test_c7_label_counting_tracking_bayes_better_refutes():
    c = c7.verdict("retrieval", retrieval_json(around(-0.2), around(-0.3, seed=1), around(-0.2, seed=2)))
    assert c.verdict == base.REFUTED and "label counting tracks" in c.text


def test_c7_opposite_signs_refute_and_a_straddle_is_inconclusive():
    assert c7.verdict("retrieval", retrieval_json(around(-0.2), around(0.2, seed=1),
                                                  around(0.0, seed=2))).verdict == base.REFUTED
    c = c7.verdict("retrieval", retrieval_json(around(0.0, sd=0.05), around(0.0, sd=0.05, seed=1),
                                               around(0.0, seed=2)))
    assert c.verdict == base.INCONCLUSIVE


def test_c7_a_setting_null_in_both_is_dropped_on_either_side():
    """A setting where neither exact Bayes nor the kernel moves is consistent: it neither keeps
    the others from supporting nor from refuting the phenomenon."""
    def shift(*settings):
        v = {"n_demos": 16, "shift": 1.0, "rule": "r", "headroom": HEADROOM}
        for i, (b, k, f) in enumerate(settings):
            v[f"kind{i}/x_test"] = {p: {"shifted_minus_clean": eff(x)} for p, x in
                                    (("bayes", b), ("kernel", k), ("frequency", f))}
        return v

    null = (around(0.0, sd=0.05), around(0.0, sd=0.05, seed=1), around(0.0, seed=2))
    good = (around(-0.2), around(-0.25, seed=1), around(0.0, seed=2))
    bad = (around(0.0, sd=0.01), around(-0.3, seed=1), around(0.0, sd=0.001, seed=2))
    c = c7.verdict("shift", shift(good, null))
    assert c.verdict == base.SUPPORTED and "1 not counted" in c.text
    assert [p["verdict"] for p in c.parts] == [base.SUPPORTED, "not counted"]
    assert c7.verdict("shift", shift(bad, null)).verdict == base.REFUTED


def test_unit_ci_at_another_level_is_scipys_t_interval():
    from scipy import stats

    v = np.array([0.3, 0.1, 0.25, 0.4, 0.05])
    for level in (0.95, 0.99, 1 - 0.05 / 6):
        m, lo, hi, n = metrics.unit_ci(v, level=level)
        want = stats.t.interval(level, v.size - 1, loc=v.mean(), scale=stats.sem(v))
        assert n == 5 and m == pytest.approx(v.mean())
        assert (lo, hi) == pytest.approx(want, rel=1e-9)


def test_c7_settings_are_judged_at_a_bonferroni_level():
    """A marginal kernel-only effect refutes a phenomenon with one setting (95%), but not when
    the phenomenon has six settings (each judged at 1 − 0.05/6): one refuting setting among many
    must clear the family-wise bar."""
    z = np.array([-1.5, -1.0, -0.6, -0.3, 0.0, 0.1, 0.3, 0.6, 1.0, 1.4])
    z = (z - z.mean()) / z.std(ddof=1)
    marginal = (0.002 * z, -0.03 + 0.04 * z[::-1], 0.001 * z)          # kernel's 95% CI just excludes 0
    null = (around(0.0, sd=0.05), around(0.0, sd=0.05, seed=1), around(0.0, seed=2))

    def shift(*settings):
        v = {"n_demos": 16, "shift": 1.0, "rule": "r"}
        for i, (b, k, f) in enumerate(settings):
            v[f"kind{i}/x_test"] = {p: {"shifted_minus_clean": eff(x)} for p, x in
                                    (("bayes", b), ("kernel", k), ("frequency", f))}
        return v

    one = c7.verdict("shift", shift(marginal))
    assert one.verdict == base.REFUTED
    six = c7.verdict("shift", shift(marginal, *[null] * 5))
    assert six.verdict != base.REFUTED
    assert any("99.2% CI" in k for k in six.numbers)
    assert "Bonferroni" in six.rule


def test_c7_out_of_scope_settings_never_refute():
    labels = {"n_demos": 16, "fraction": 1.0, "rule": "r",
              "flip": {"bayes": eff(around(-0.38)), "kernel": eff(around(0.37, seed=1)),
                       "frequency": eff(around(0.4, seed=2))},
              "format": {"kernel": eff(around(0.47)), "frequency": eff(around(0.5, seed=1))}}
    c = c7.verdict("labels", labels)
    assert c.verdict != base.REFUTED and c.verdict == base.INCONCLUSIVE
    assert [o["setting"] for o in c.outside] == ["flip, fraction 1.0, n = 16"]
    assert [p["verdict"] for p in c.parts] == ["not counted"]            # format: exact Bayes undefined
    order = {"n_demos": 32, "rule": "r", "bayes_restart_free": eff(around(0.06)),
             "bayes_restart": eff(np.zeros(10)), "kernel_restart_free": eff(np.zeros(10)),
             "checks": {"restart_bayes_max_tv": 1e-15, "kernel_max_tv": 1e-16, "tolerance": 1e-12, "passed": True}}
    c = c7.verdict("order", order)
    assert c.verdict == base.OUT_OF_SCOPE and c.parts == [] and len(c.outside) == 1
    assert [ch["verdict"] for ch in c.checks] == [base.PASSED]
    order["checks"] = dict(order["checks"], kernel_max_tv=0.01, passed=False)
    assert [ch["verdict"] for ch in c7.verdict("order", order).checks] == [base.FAILED]


def test_c7_few_worlds_or_no_world_means_are_inconclusive():
    c = c7.verdict("retrieval", retrieval_json(around(-0.2, n=2), around(-0.25, n=2, seed=1),
                                               around(0.0, n=2, seed=2)))
    assert c.verdict == base.INCONCLUSIVE and "only 2 worlds" in c.text
    v = retrieval_json(around(-0.2), around(-0.25, seed=1), around(0.0, seed=2))
    for d in v["kernel"].values():
        d["tv_oracle_minus_random"].pop("world_means")
    c = c7.verdict("retrieval", v)
    assert c.verdict == base.INCONCLUSIVE and "older phenomena sweep" in c.text


def test_c7_verdicts_table_and_worlds_aligned_by_label():
    # the kernel's worlds come in another order: aligned by label, the answer does not change
    b, k, f = around(-0.2), around(-0.25, seed=1), around(0.0, seed=2)
    v = retrieval_json(b, k, f)
    perm = list(range(10))[::-1]
    v["kernel"]["kernel"]["tv_oracle_minus_random"] = eff(k[perm], perm)
    table = pd.DataFrame([{"job": "j", "name": "retrieval", "status": "done", "error": None, "text": "t",
                           "verdict_json": json.dumps(v)}])
    got = c7.verdicts(table)
    assert list(got) == ["retrieval"] and got["retrieval"].verdict == base.SUPPORTED


# ---------------------------------------------------------------------- base and the registry
def test_overall_word_and_worst():
    fam = lambda *ws: {f"f{i}": {"verdict": w} for i, w in enumerate(ws)}          # noqa: E731
    assert base.overall(fam(base.SUPPORTED, base.SUPPORTED)) == base.SUPPORTED
    assert base.overall(fam(base.SUPPORTED, base.REFUTED)) == base.MIXED
    assert base.overall(fam(base.NOT_REACHED)) == base.NOT_REACHED
    assert base.overall({}) == base.INCONCLUSIVE
    assert base.worst([base.SUPPORTED, base.NOT_REACHED]) == base.NOT_REACHED
    assert base.worst([base.NOT_REACHED, base.REFUTED]) == base.REFUTED


def test_intervals():
    m, lo, hi, n = metrics.unit_ci([1.0, 2.0, 3.0, np.nan], ["a", "b", "c", "d"])
    assert (m, n) == (2.0, 3) and lo < 2 < hi
    m, lo, hi, n = metrics.unit_ci([1.0, 3.0], [5, 5])
    assert m == 2.0 and n == 1 and math.isnan(lo)
    with pytest.raises(ValueError, match="units"):
        metrics.unit_ci([1.0, 2.0], ["a"])
    est, lo, hi = metrics.ratio_ci([2.0, 2.2, 1.8, 2.0], [1.0, 1.1, 0.9, 1.0], n_boot=500)
    assert est == pytest.approx(2.0) and lo <= 2.0 <= hi
    g, lo, hi, n = metrics.log_ci([100.0, 10000.0, 1000.0])
    assert g == pytest.approx(1000.0) and lo < g < hi and n == 3


def test_result_rejects_unknown_words():
    ok = dict(claim="X", title="t", kind="bound", source="s", scope=[], families={}, rule="r", text="t")
    with pytest.raises(ValueError, match="verdict"):
        base.Result(verdict="maybe", **ok)
    with pytest.raises(ValueError, match="kind"):
        base.Result(verdict="supported", **dict(ok, kind="guess"))
    with pytest.raises(ValueError, match="family"):
        base.Result(verdict="supported", **dict(ok, families={"g": {"verdict": "mixed"}}))
    with pytest.raises(ValueError, match="check"):
        base.Result(verdict="supported", checks=[{"name": "c", "verdict": "ok"}], **ok)


def test_registry_holds_every_claim_once_with_its_metadata():
    ids = [c.id for c in claims.REGISTRY]
    assert ids[:6] == ["C1", "C2", "C3", "C4", "C5", "C6"] and len(set(ids)) == len(ids)
    assert [i for i in ids if i.startswith("C7-")] == [f"C7-{n}" for n in c7.PHENOMENA]
    for c in claims.REGISTRY:
        assert c.kind in base.KINDS and c.title and c.rule and c.scope
        assert "§" in c.source or "derived reading" in c.source or "project extension" in c.source
        assert c.reads and claims.get(c.id) is c
    with pytest.raises(ValueError, match="twice"):
        claims.register(claims.REGISTRY[0])
    with pytest.raises(ValueError, match="unknown claim"):
        claims.get("C9")


def test_judge_all_without_tables_says_why():
    got = claims.judge_all({}, {}, {"regime": "the regime sweep did not run"})
    assert [r.claim for r in got] == [c.id for c in claims.REGISTRY]
    c1r = got[0]
    assert c1r.verdict == base.INCONCLUSIVE and "the regime sweep did not run" in c1r.text
    assert set(c1r.families) == set(base.FAMILIES)


def test_claims_import_nothing_of_the_report():
    for path in (ROOT / "simkernel" / "claims").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = (node.module or "").split(".")[0]
                names = {a.name for a in node.names}
                assert mod not in ("report", "sweep", "cli") and not ({"report", "sweep", "cli"} & names
                                                                      and node.level == 2 and not node.module), path


def test_judge_all_reports_a_missing_column_as_inconclusive():
    worlds = c1_worlds(8192).drop(columns="judged")
    got = {r.claim: r for r in claims.judge_all({"regime.worlds": worlds}, {})}
    assert got["C1"].verdict == base.INCONCLUSIVE and "lacks the column 'judged'" in got["C1"].text


# ---------------------------------------------------------------------- figures
@pytest.mark.parametrize("claim", ["C1", "C4"])
def test_the_two_label_frequency_lines_differ_in_style(claim):
    """The label frequencies' measured and predicted lines often coincide: they must not be the
    same grey dashes."""
    from matplotlib.colors import to_hex
    from matplotlib.figure import Figure

    worlds = c1_worlds(8192) if claim == "C1" else c4_worlds([512.0, 1024.0, 2048.0])
    result = (c1 if claim == "C1" else c4).verdict(worlds, c1_rows(worlds))
    fig = Figure()
    claims.get(claim).draw(result, fig)
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    measured = lines["label frequencies: measured"]
    predicted = next(ln for lab, ln in lines.items() if lab.startswith("label frequencies: predicted"))
    look = lambda ln: (ln.get_linestyle(), to_hex(ln.get_color()), ln.get_marker())      # noqa: E731
    assert look(measured)[0] != look(predicted)[0] and look(measured)[1] != look(predicted)[1]
    assert look(measured)[2] not in ("None", "", None)
    assert predicted.get_zorder() > measured.get_zorder()         # the prediction on top, where they coincide
