"""The simulator's ground truth for the measurements (prompt layout, standalone inputs, the
exact, kernel, oracle and label-frequency references as distributions), heads scored against
them tie-fairly with undefined Bayes rows left out, and `simkernel measure` end to end on a
tiny trained model."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from simkernel import World, alignment, bayes, kernel, make_world
from simkernel.analysis import analyse, split_indices
from simkernel.capture import Capture
from simkernel.metrics import restrict
from simkernel.prompts import collate
from simkernel.sampling import sample_prompt_set

from cli_helpers import ok, run

WORLD = dict(n_concepts=3, n_states=6, n_symbols=8, concentration=0.1)


@pytest.fixture(scope="module")
def world():
    return make_world("random", 0, **WORLD)


@pytest.fixture(scope="module")
def prompts(world):
    return sample_prompt_set(world, 40, 6, 3, seed=2)


def test_examples_carry_the_sampler_layout(world, prompts):
    ex = alignment.examples_from_prompts(world, prompts)
    for b, e in enumerate(ex):
        assert (e.spans[:, 1] - 1 == e.label_pos).all()
        # the token at each label position is that demonstration's label, by index
        np.testing.assert_array_equal(world.labels[e.demo_labels], e.input_ids[e.label_pos])
        assert world.labels[e.gold] == prompts.y_test[b]
        # a span holds x_i then y_i: k tokens, and the delimiter follows it
        assert ((e.spans[:, 1] - e.spans[:, 0]) == 3).all()
        assert (e.input_ids[e.spans[:, 1]] == world.delimiter).all()


def test_standalone_batch_indexes_every_input(world, prompts):
    alone, inv = alignment.standalone_batch(world, prompts)
    assert alone.n_demos == 0 and inv.shape == (40, 7)
    for b in range(40):
        for j, (s, e) in enumerate(prompts.x_spans):
            row = alone.input_ids[inv[b, j]][alone.attention_mask[inv[b, j]] == 1]
            np.testing.assert_array_equal(row, prompts.tokens[b, s:e])


def test_references_equal_independent_computations(world, prompts):
    truth = alignment.ground_truth(world, prompts, seed=0)
    B, n, L = 40, 6, len(world.labels)
    assert set(truth.references) == {"bayes", "kernel", "oracle", "frequency"}
    assert all(r.shape == (B, L) for r in truth.references.values())
    # exact Bayes: the posterior predictive after the whole prompt, restricted to the labels
    p = restrict(bayes.posterior_predictive(world, prompts.tokens), world.labels)
    np.testing.assert_allclose(truth.references["bayes"], p, rtol=1e-12, atol=1e-15)
    # the oracle: P(y | x_test, true concept), x_test scored alone from the concept's start
    o = restrict(bayes.oracle_predictive(world, prompts.x_test(), prompts.concepts), world.labels)
    np.testing.assert_allclose(truth.references["oracle"], o, rtol=1e-9, atol=1e-12)
    # the label frequencies: counts of the demonstrations' labels over n
    counts = np.stack([(prompts.labels == c).sum(1) for c in world.labels], 1)
    np.testing.assert_allclose(truth.references["frequency"], counts / n, rtol=1e-12, atol=1e-15)
    # the theory kernel: K from kernel.py's public pieces, then the normalised vote
    k = 3
    sample = kernel.input_distribution(world, k, None, n_samples=20_000, seed=0)
    km = kernel.fit_kernel(kernel.features(world, sample.x), sample.weights, ridge=0.01, exact=sample.exact)
    xs = [prompts.tokens[:, s:e] for s, e in prompts.x_spans]
    psi = np.stack([kernel.features(world, x) for x in xs], 1)                  # (B, n + 1, D)
    K = np.einsum("bd,de,bne->bn", psi[:, -1], km.precision, psi[:, :-1])
    np.testing.assert_allclose(truth.kernels["theory"], K, rtol=1e-9, atol=1e-12)
    # the normalised estimator Σ_i e(y_i) K_i / Σ_i K_i, clipped at 0 and renormalised; uniform
    # where Σ_i K_i <= 0 (dividing by it would reverse the vote)
    den = K.sum(1, keepdims=True)
    votes = np.clip(np.stack([(K * (prompts.labels == c)).sum(1) for c in world.labels], 1) / den, 0, None)
    expect = np.where(den > 0, votes / votes.sum(1, keepdims=True), 1 / L)
    np.testing.assert_allclose(truth.references["kernel"], expect, rtol=1e-9, atol=1e-12)


def impossible_world():
    """A world whose out-of-distribution concept (prior 0) alone emits symbol 7, so prompts
    drawn from it that contain 7 have no Bayes predictive."""
    w = make_world("random", 0, **WORLD)
    e = w.emission.copy()
    e[:2, :, 7] = 0.0
    e /= e.sum(-1, keepdims=True)
    prior = w.prior.copy()
    prior[-1] = 0.0
    return World.from_arrays(prior / prior.sum(), w.start, w.transition, e, w.delimiter, w.labels,
                             restart=w.restart)


def test_heads_against_the_references_leave_undefined_bayes_out_and_ties_count_one_over_m():
    """ground_truth's references fed to analysis.analyse with hand-built attention: an even
    head is the majority vote, so its agreement with 'frequency' is the mean of 1/m over its
    m-way ties and equals the majority baseline; prompts without a Bayes predictive (NaN rows)
    are left out of every 'bayes' score and nowhere else."""
    w = impossible_world()
    pr = sample_prompt_set(w, 40, 6, 3, seed=2, concepts="ood")
    truth = alignment.ground_truth(w, pr, seed=0)
    undefined = np.isnan(truth.references["bayes"]).any(-1)
    assert 0 < undefined.sum() < 40
    assert not any(np.isnan(truth.references[r]).any() for r in ("kernel", "oracle", "frequency"))
    batch = collate(alignment.examples_from_prompts(w, pr), w.labels)
    B, T = batch.input_ids.shape
    cap = Capture(np.full((B, 1, 1, T), 1 / T, np.float32), np.zeros((B, len(w.labels))))
    res = analyse(cap, batch, references=truth.references, n_select=20, n_report=20)
    head = {(r["reference"], r["split"]): r for r in res.heads if r["measure"] == "agree"}
    assert head[("bayes", "all")]["n_examples"] == B - undefined.sum()
    assert head[("frequency", "all")]["n_examples"] == head[("kernel", "all")]["n_examples"] == B
    counts = np.stack([(pr.labels == c).sum(1) for c in w.labels], 1)
    m = (counts == counts.max(1, keepdims=True)).sum(1)
    assert (m > 1).any()
    assert head[("frequency", "all")]["value"] == pytest.approx((1 / m).mean(), abs=1e-12)
    _, rep = split_indices(B, 20, 20, 0)
    assert res.summary["majority_baseline"]["frequency"] == pytest.approx((1 / m[rep]).mean(), abs=1e-12)
    assert res.summary["majority_baseline"]["bayes"] == pytest.approx(head[("bayes", "report")]["value"], abs=1e-12)


# ---------------------------------------------------------------------- the command
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def train_tiny(root, corpus, seed=0):
    from simkernel import train as tr

    cfg = tr.TrainConfig(corpus=tr.corpus_identity(corpus), model="tiny", block_size=48, batch_size=8,
                         lr=3e-3, warmup_steps=2, max_steps=30, eval_every=10, eval_docs=2, eval_blocks=4,
                         ckpt_every=100, device="cpu", model_overrides={"n_positions": 64}, seed=seed)
    d = tr.prepare_run_dir(root / "runs", cfg, {"command": "train", "train": cfg.hashed(), "corpus_dir": str(corpus)})
    tr.train(cfg, corpus, d)
    return d


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from simkernel.sampling import write_corpus

    root = tmp_path_factory.mktemp("measure")
    corpus = write_corpus(make_world("random", 0, **WORLD), root / "corpus", 16, 256, seed=0)
    return train_tiny(root, corpus)


@pytest.fixture(scope="module")
def run_dir2(run_dir):
    """A second training seed of run_dir's world and corpus."""
    return train_tiny(run_dir.parent.parent, run_dir.parent.parent / "corpus", seed=1)


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_measure_end_to_end(run_dir, tmp_path, monkeypatch):
    from simkernel.analysis import HEAD_COLUMNS, PROBE_COLUMNS

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "m"
    res = ok(["measure", "--checkpoint", run_dir / "checkpoint" / "model", "--n-prompts", "60", "--n-demos", "8",
              "--n-select", "40", "--n-report", "20", "--out", out, "--device", "cpu", "--figures"])
    assert "best head (agreement with the model): layer" in res.output
    assert "heads chosen on 40 prompts, scored on 20 held-out prompts" in res.output
    top = res.output.split("held-out values:\n")[1].splitlines()
    assert "pears theory" in top[0] and len(top[1].split()) == 2 + 7       # layer, head, 7 columns
    for f in ("heads.csv", "best.csv", "profile.csv", "probes.csv", "measure.json", "attention_profile.png",
              "head_scores.png", "probes.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0
        assert (tmp_path / "figures" / "measure" / f).is_file()
    heads, best, probes = read(out / "heads.csv"), read(out / "best.csv"), read(out / "probes.csv")
    assert tuple(heads[0]) == HEAD_COLUMNS and tuple(probes[0]) == PROBE_COLUMNS
    refs = {r["reference"] for r in best}
    assert {"model", "gold", "bayes", "kernel", "oracle", "frequency", "theory", "similarity",
            "model_similarity"} <= refs
    # each chosen head's held-out score is that head's report-split row of the heads table
    for b in best:
        row = [h for h in heads if (h["measure"], h["reference"], h["layer"], h["head"], h["split"])
               == (b["measure"], b["reference"], b["layer"], b["head"], "report")]
        assert float(row[0]["value"]) == pytest.approx(float(b["report"]), nan_ok=True)
    assert {int(r["offset"]) for r in probes} == {-1, 0, 1, 2, 3}
    meta = json.loads((out / "measure.json").read_text())
    assert meta["seed"] == 0 and meta["config"]["n_demos"] == 8 and "torch" in meta["versions"]
    assert meta["summary"]["n_select"] == 40 and meta["summary"]["n_report"] == 20


def test_measure_rejects_prompts_beyond_the_context_and_missing_runs(run_dir, tmp_path):
    res = run(["measure", "--checkpoint", run_dir, "--n-demos", "16", "--out", tmp_path / "x"])
    assert res.exit_code != 0
    assert "longer than the model's context (64); allowed: --n-demos <= 15" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    res = run(["measure", "--checkpoint", tmp_path / "nope"])
    assert res.exit_code != 0 and "does not exist" in res.stderr


def test_plot_measure_redraws_from_the_tables_alone(run_dir, tmp_path):
    out = tmp_path / "m"
    ok(["measure", "--checkpoint", run_dir, "--n-prompts", "20", "--n-demos", "4", "--out", out, "--device", "cpu"])
    (out / "head_scores.png").unlink()
    res = ok(["plot", "measure", out, "--out", tmp_path / "redrawn"])
    for f in ("attention_profile.png", "head_scores.png", "probes.png"):
        assert (tmp_path / "redrawn" / f).stat().st_size > 0
    assert "head_scores.png" in res.output
    (tmp_path / "empty").mkdir()
    res = run(["plot", "measure", tmp_path / "empty"])
    assert res.exit_code != 0 and "has no heads.csv" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_measure_library_call_prints_what_the_command_printed_and_writes_references(run_dir, tmp_path):
    """One run folder: summary_lines() holds every line `simkernel measure` prints before its
    'wrote' line, then the reference votes and the verdict; write() adds references.csv and
    references.png beside the four tables; the clipped theory kernel's vote is the one recomputed
    from the ground truth."""
    from simkernel.analysis import REFERENCE_COLUMNS, label_votes
    from simkernel.metrics import tie_agreement

    args = dict(n_prompts=40, n_demos=6, n_select=25, n_report=15, device="cpu")
    res = alignment.run(run_dir, **args)
    lines = res.summary_lines()
    cli = ok(["measure", "--checkpoint", run_dir, "--n-prompts", "40", "--n-demos", "6", "--n-select", "25",
              "--n-report", "15", "--out", tmp_path / "cli", "--device", "cpu"]).output.splitlines()
    assert cli[-1].startswith("wrote") and lines[:len(cli) - 1] == cli[:-1]
    # the references block: per target (model, bayes, gold) a line per reference vote, then the verdict
    start = next(i for i, line in enumerate(lines) if line.startswith("  target  head"))
    end = next(i for i, line in enumerate(lines) if line.startswith("verdict (bayes): kernel-regression head "))
    shown = [(w[0], w[3]) if w[0] in ("model", "bayes", "gold") else (None, w[0])
             for w in (line.split() for line in lines[start + 1:end])]
    refs = ["uniform", "theory_clipped", "similarity", "model_similarity", "shuffled", "best"]
    assert [r for _, r in shown] == refs * 3 and [t for t, _ in shown if t] == ["model", "bayes", "gold"]
    written = res.write(tmp_path / "m", copy_to=tmp_path / "fig")
    names = {p.name for p in written if p.parent == tmp_path / "m"}
    assert {"heads.csv", "best.csv", "profile.csv", "probes.csv", "references.csv", "measure.json",
            "references.png", "head_scores.png"} <= names and "pooled.csv" not in names
    assert {p.name for p in written if p.parent == tmp_path / "fig"} == names
    refs = read(tmp_path / "m" / "references.csv")
    assert tuple(refs[0]) == REFERENCE_COLUMNS
    meta = json.loads((tmp_path / "m" / "measure.json").read_text())
    assert meta["config"]["out"] == str(tmp_path / "m") and "references.csv" in meta["tables"]
    assert meta["summary"]["verdict"]["target"] == "bayes"
    # the theory kernel clipped at 0, as a_i, on the report prompts
    from simkernel.icl_eval import run_paths
    world = World.load(run_paths(run_dir)[1])
    shared = alignment.prompted(world, 40, 6, 3, seed=0)
    _, rep = split_indices(40, 25, 15, 0)
    K = np.clip(shared.truth.kernels["theory"], 0, None)[rep]
    expect = tie_agreement(label_votes(K, shared.batch.demo_labels[rep], len(world.labels)),
                           shared.truth.references["bayes"][rep])
    np.testing.assert_allclose(res.result.paired["bayes"]["theory_clipped"], expect, atol=1e-12)


def test_measure_several_seeds_on_the_same_prompts_pooled_over_runs(run_dir, run_dir2, tmp_path):
    """Two training seeds: both measured on the same prompts (the model-free reference votes
    agree), each in its own folder; pooled.csv is the mean of the runs' mean paired differences
    with a t-interval over the 2 runs (recomputed with scipy's t quantile)."""
    from scipy.stats import t as student

    from simkernel.analysis import REFERENCE_COLUMNS

    stages = []
    res = alignment.run([run_dir, run_dir2 / "checkpoint" / "model"], n_prompts=40, n_demos=6, n_select=25,
                        n_report=15, device="cpu", progress=stages.append)
    assert stages == list(alignment.MEASURE_STAGES) * 2 and len(res.runs) == 2
    a, b = (r.result for r in res.runs)
    for target in ("bayes", "gold", "kernel"):
        for ref in ("uniform", "theory_clipped", "similarity", "best"):
            np.testing.assert_array_equal(a.paired[target][ref], b.paired[target][ref])
    for row in res.pooled:
        means = [np.nanmean(r.result.paired[row["target"]]["head"] - r.result.paired[row["target"]][row["reference"]])
                 for r in res.runs]
        half = student.ppf(0.975, 1) * np.std(means, ddof=1) / np.sqrt(2)
        assert row["difference"] == pytest.approx(np.mean(means), abs=1e-12)
        assert (row["lo"], row["hi"]) == pytest.approx((np.mean(means) - half, np.mean(means) + half), abs=1e-12)
        assert row["n_runs"] == 2 and row["unit"] == "runs"
    lines = res.summary_lines()
    assert sum(line.startswith("== run ") for line in lines) == 2
    assert "== pooled over 2 runs" in "\n".join(lines)
    verdict = next(line for line in lines if line.startswith("pooled verdict (bayes): "))
    assert verdict.split(": ")[1].split(" (")[0] in ("detected", "not detected", "mixed")
    assert "fewer than 3 training seeds" in verdict
    out = tmp_path / "m"
    res.write(out)
    for r in res.runs:
        assert tuple(read(out / r.name / "references.csv")[0]) == REFERENCE_COLUMNS
        assert (out / r.name / "head_scores.png").stat().st_size > 0
    rows = read(out / "references.csv")
    assert tuple(rows[0]) == alignment.RUN_REFERENCE_COLUMNS and {r["run"] for r in rows} == {r.name for r in res.runs}
    assert tuple(read(out / "pooled.csv")[0]) == alignment.POOLED_COLUMNS
    meta = json.loads((out / "measure.json").read_text())
    assert meta["summary"]["verdict"]["n_runs"] == 2 and set(meta["runs"]) == {r.name for r in res.runs}
    assert (out / "references.png").stat().st_size > 0 and not (out / "heads.csv").exists()


def test_measure_refuses_runs_of_another_world_and_repeated_runs(run_dir, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    (tmp_path / "c2").mkdir()
    make_world("random", 1, **WORLD).save(tmp_path / "c2" / "world.npz")
    cfg = json.loads((other / "config.json").read_text())
    cfg["corpus_dir"] = str(tmp_path / "c2")
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"^checkpoint: run .*other' was trained on another world"):
        alignment.run([run_dir, other], n_prompts=10, n_demos=4, device="cpu")
    with pytest.raises(ValueError, match=r"^checkpoint lists the run .* twice; allowed: distinct run folders"):
        alignment.run([run_dir, run_dir / "checkpoint" / "model"], n_prompts=10, n_demos=4, device="cpu")
    with pytest.raises(ValueError, match="checkpoint is an empty list"):
        alignment.run([], device="cpu")
