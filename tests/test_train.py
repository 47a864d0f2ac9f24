"""Training: the model presets, the exact Bayes floor, the loop, checkpoints, the CLI."""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from simkernel import bayes, make_world  # noqa: E402
from simkernel import model as model_mod  # noqa: E402
from simkernel import runs  # noqa: E402
from simkernel import train as tr  # noqa: E402
from simkernel.constants import MODEL_NAMES  # noqa: E402
from simkernel.sampling import sample_corpus  # noqa: E402
from simkernel.sampling import write_corpus
from simkernel.store import FolderBusy  # noqa: E402

from cli_helpers import ok, run  # noqa: E402

WORLD = dict(n_concepts=3, n_states=6, n_symbols=8, concentration=0.1)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    world = make_world("random", 0, **WORLD)
    return write_corpus(world, tmp_path_factory.mktemp("c") / "corpus", 40, 256, seed=0)


def cfg_for(corpus_dir, **kw):
    base = dict(corpus=tr.corpus_identity(corpus_dir), model="tiny", block_size=32, batch_size=8,
                lr=3e-3, warmup_steps=10, max_steps=40, eval_every=10, eval_docs=4, eval_blocks=32,
                target_gap=1e-6, patience=1000, ckpt_every=10, seed=0, device="cpu")
    base.update(kw)
    return tr.TrainConfig(**base)


def train_collect(cfg, corpus_dir, run_dir, **kw):
    losses = {}
    run_dir.mkdir(parents=True, exist_ok=True)
    res = tr.train(cfg, corpus_dir, run_dir, progress=lambda s, info: losses.__setitem__(s, info["loss"]), **kw)
    return res, losses


# ---------------------------------------------------------------------- model
def test_model_presets():
    assert tuple(model_mod.MODEL_PRESETS) == MODEL_NAMES
    m = model_mod.build_model("tiny", 12)
    assert m.config.n_layer == 2 and m.config.n_embd == 64 and m.config.n_head == 4
    assert model_mod.context_length(m) == 256 and m.config.vocab_size == 12
    assert model_mod.model_config("cpu", 12).n_positions == 512
    assert model_mod.model_config("ginc-12", 50).n_embd == 768
    with pytest.raises(ValueError, match="unknown model preset"):
        model_mod.build_model("huge", 12)


def test_save_load_roundtrip_and_eager_attention(tmp_path):
    torch.manual_seed(0)
    m = model_mod.build_model("tiny", 10).eval()
    x = torch.randint(0, 10, (2, 12))
    model_mod.save_model(m, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    m2 = model_mod.load_model(tmp_path / "m")
    assert torch.equal(m(input_ids=x).logits, m2(input_ids=x).logits)
    m3 = model_mod.load_model(tmp_path / "m", attn_implementation="eager")
    out = m3(input_ids=x, output_attentions=True)
    assert out.attentions[0].shape == (2, 4, 12, 12)
    torch.testing.assert_close(out.logits, m(input_ids=x).logits, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- the floor
def test_floor_one_concept_offset_zero():
    world = make_world("random", 1, n_concepts=1)
    blocks = sample_corpus(world, 5, 40, seed=3).tokens.reshape(5, 40).astype(np.int64)
    loss = tr.bayes_block_loss(world, blocks, np.zeros(5, dtype=np.int64))
    ll = bayes.log_likelihood(world, blocks)[:, 0]
    ll0 = bayes.log_likelihood(world, blocks[:, :1])[:, 0]
    np.testing.assert_allclose(loss.sum(axis=1), -(ll - ll0), rtol=1e-10)
    np.testing.assert_allclose(loss.mean(axis=1), -(ll - ll0) / 39, rtol=1e-10)


@pytest.mark.parametrize("restart", [True, False])
def test_floor_at_offset_matches_brute_force_over_prefixes(restart):
    """For a block at offset t the floor marginalises the t symbols before it: compare with
    summing P(prefix + block) over every prefix, each scored from the start."""
    world = make_world("random", 2, n_concepts=2, n_states=3, n_symbols=3, restart=restart)
    block = np.array([1, 0, 2, 2, 1], dtype=np.int64)
    for t in (0, 1, 3):
        prefixes = np.array(list(itertools.product(range(3), repeat=t)), dtype=np.int64).reshape(3 ** t, t)

        def log_marginal(n):        # log P(block[:n] at offset t), mixture over concepts
            seqs = np.concatenate([prefixes, np.repeat(block[None, :n], len(prefixes), 0)], axis=1)
            ll = bayes.log_likelihood(world, seqs)                         # (P, K)
            per_k = np.logaddexp.reduce(ll, axis=0)                        # (K,)
            return np.logaddexp.reduce(np.log(world.prior) + per_k)

        loss = tr.bayes_block_loss(world, block[None], np.array([t]))[0]
        expect = [-(log_marginal(j + 1) - log_marginal(j)) for j in range(1, len(block))]
        np.testing.assert_allclose(loss, expect, rtol=1e-9, atol=1e-12)


def test_block_sampler_stays_inside_documents(corpus_dir):
    from simkernel.sampling import read_corpus
    corpus = read_corpus(corpus_dir)
    s = tr.BlockSampler(corpus, 32)
    b1, b2 = s.batch(0, 5, 0, 64), s.batch(0, 5, 0, 64)
    assert np.array_equal(b1, b2) and b1.shape == (64, 32)
    assert not np.array_equal(b1, s.batch(0, 6, 0, 64)) and not np.array_equal(b1, s.batch(0, 5, 1, 64))
    windows = np.lib.stride_tricks.sliding_window_view(corpus.tokens.reshape(40, 256), 32, axis=1)
    windows = windows.reshape(-1, 32)                   # every block inside one document
    for row in b1:
        assert (windows == row).all(axis=1).any()
    with pytest.raises(ValueError, match="longer than every document"):
        tr.BlockSampler(corpus, 257)


# ---------------------------------------------------------------------- the loop
@pytest.fixture(scope="module")
def trained(corpus_dir, tmp_path_factory):
    cfg = cfg_for(corpus_dir, max_steps=150, eval_every=50, ckpt_every=1000)
    return cfg, *train_collect(cfg, corpus_dir, tmp_path_factory.mktemp("run"))


def test_tiny_model_overfits_a_tiny_corpus(tmp_path):
    world = make_world("random", 0, **WORLD)
    corpus = write_corpus(world, tmp_path / "small", 2, 64, seed=0)
    cfg = cfg_for(corpus, max_steps=120, eval_every=60, ckpt_every=1000, lr=1e-2)
    res, losses = train_collect(cfg, corpus, tmp_path / "run")
    first = np.mean([losses[s] for s in range(1, 4)])
    last = np.mean([losses[s] for s in range(111, 121)])
    assert first > 1.5                      # starts near uniform over 8 symbols
    assert last < 0.5 * first, (first, last)
    assert res.reason == "max_steps" and res.step == 120
    rows = [json.loads(x) for x in (res.run_dir / runs.METRICS).read_text().splitlines()]
    assert [r["step"] for r in rows] == [60, 120]
    assert (res.run_dir / runs.DONE).is_file()
    assert (res.run_dir / runs.CHECKPOINT / "model" / "model.safetensors").is_file()


def test_trained_model_learns(trained):
    cfg, res, losses = trained
    rows = [json.loads(x) for x in (res.run_dir / runs.METRICS).read_text().splitlines()]
    assert [r["step"] for r in rows] == [50, 100, 150]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] and rows[-1]["gap"] < 0.3


def test_trained_loss_never_below_the_floor(trained, corpus_dir):
    cfg, res, _ = trained
    world = make_world("random", 0, **WORLD)
    ev = tr.make_eval_set(world, 256, cfg.block_size, 8, 64, seed=11)
    net = model_mod.load_model(res.run_dir / runs.CHECKPOINT / "model")
    with torch.no_grad():
        x = torch.as_tensor(ev.blocks)
        logits = net(input_ids=x).logits
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none").numpy()
    diff = (nll - ev.bayes_loss).mean(axis=1)          # per block
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    assert diff.mean() > -3 * se, (diff.mean(), se)
    assert nll.mean() > ev.floor - 3 * se


def test_resume_equals_uninterrupted(corpus_dir, tmp_path):
    cfg = cfg_for(corpus_dir, max_steps=30, ckpt_every=7)
    full, full_losses = train_collect(cfg, corpus_dir, tmp_path / "a")
    part, part_losses = train_collect(cfg, corpus_dir, tmp_path / "b", stop_after=17)
    assert part.reason == "interrupted" and not (tmp_path / "b" / runs.DONE).exists()
    rest, rest_losses = train_collect(cfg, corpus_dir, tmp_path / "b", resume=True)
    assert set(part_losses) == set(range(1, 18)) and set(rest_losses) == set(range(18, 31))
    joined = {**part_losses, **rest_losses}
    for s in full_losses:
        assert abs(joined[s] - full_losses[s]) <= 1e-6, s
    a = model_mod.load_model(tmp_path / "a" / runs.CHECKPOINT / "model").state_dict()
    b = model_mod.load_model(tmp_path / "b" / runs.CHECKPOINT / "model").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    ma = (tmp_path / "a" / runs.METRICS).read_text().splitlines()
    mb = (tmp_path / "b" / runs.METRICS).read_text().splitlines()
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if k not in ("tokens_per_s", "elapsed_s")} for r in rows]  # noqa: E731
    assert strip(ma) == strip(mb)


def test_target_gap_and_patience_stop(corpus_dir, tmp_path):
    res, _ = train_collect(cfg_for(corpus_dir, target_gap=100.0), corpus_dir, tmp_path / "g")
    assert res.reason == "target_gap" and res.step == 10
    res, _ = train_collect(cfg_for(corpus_dir, lr=1e-9, warmup_steps=0, patience=2, max_steps=100),
                           corpus_dir, tmp_path / "p")
    assert res.reason == "patience" and res.step < 100


def test_device_selection(monkeypatch):
    assert tr.select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tr.select_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        tr.select_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        tr.select_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert tr.select_device("auto").type == "cuda"


def test_lr_schedule():
    cfg = tr.TrainConfig(corpus={}, lr=1.0, warmup_steps=10, max_steps=110, min_lr_frac=0.1)
    assert tr.lr_at(0, cfg) == pytest.approx(0.1) and tr.lr_at(9, cfg) == pytest.approx(1.0)
    assert tr.lr_at(60, cfg) == pytest.approx(0.55) and tr.lr_at(110, cfg) == pytest.approx(0.1)


def test_run_id_ignores_device_not_values(corpus_dir):
    a = cfg_for(corpus_dir)
    assert a.run_id() == cfg_for(corpus_dir, device="cuda", compile=True).run_id()
    assert a.run_id() != cfg_for(corpus_dir, lr=1e-3).run_id()


# ---------------------------------------------------------------------- CLI
TRAIN = ["train", "--model", "tiny", "--block-size", 32, "--batch-size", 4, "--max-steps", 6,
         "--eval-every", 3, "--ckpt-every", 3, "--device", "cpu"]


def snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def unchanged(folder, before):
    """Every file that was there is still there, byte for byte (a new config.json may appear)."""
    now = snapshot(folder)
    return all(now.get(p) == data for p, data in before.items())


def test_cli_train_then_not_retrained(corpus_dir, tmp_path):
    r = ok([*TRAIN, "--corpus", corpus_dir, "--runs-dir", tmp_path / "runs"])
    assert "stopped at step 6 by max_steps" in r.output and "gap" in r.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    before = snapshot(run_dir)
    r = ok([*TRAIN, "--corpus", corpus_dir, "--runs-dir", tmp_path / "runs"])
    assert "already trained" in r.output and str(run_dir) in r.output
    assert snapshot(run_dir) == before
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["train"]["model"] == "tiny"


def test_cli_samples_its_own_corpus(tmp_path):
    r = ok([*TRAIN, "--preset", "random", "--n-docs", 4, "--doc-length", 64, "--runs-dir", tmp_path / "runs"])
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "corpus" / "tokens.npy").is_file() and "stopped at step" in r.output


def _interrupted_run(corpus_dir, tmp_path):
    # the config the CLI builds from TRAIN (every other field at its default)
    cfg = tr.TrainConfig(corpus=tr.corpus_identity(corpus_dir), model="tiny", block_size=32, batch_size=4,
                         max_steps=6, eval_every=3, ckpt_every=3, device="cpu")
    run_dir = tmp_path / "runs" / cfg.run_id()
    run_dir.mkdir(parents=True)
    tr.train(cfg, corpus_dir, run_dir, stop_after=3)
    return run_dir


@pytest.mark.parametrize("args, message", [
    (["--corpus", "{tmp}/nope"], "does not exist"),
    (["--corpus", "{empty}"], "empty"),
    (["--corpus", "{corpus}", "--block-size", "300"], "block size 300 must be in 2..256"),
    (["--corpus", "{corpus}", "--model", "huge"], "'huge' is not one of"),
    (["--corpus", "{corpus}", "--target-gap", "0"], "target gap must be > 0"),
    (["--corpus", "{corpus}", "--target-gap", "-1"], "target gap must be > 0"),
    (["--corpus", "{corpus}", "--device", "tpu"], "unknown device"),
    (["--corpus", "{corpus}", "--preset", "random"], "cannot be combined with --preset"),
    (["--corpus", "{corpus}", "--resume"], "no checkpoint"),
])
def test_cli_bad_input_one_line(args, message, corpus_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    np.save(empty / "tokens.npy", np.zeros(0, dtype=np.uint8))
    np.save(empty / "offsets.npy", np.zeros(2, dtype=np.int64))
    np.save(empty / "concepts.npy", np.zeros(1, dtype=np.int64))
    (empty / "meta.json").write_text("{}")
    args = [a.format(tmp=tmp_path, empty=empty, corpus=corpus_dir) for a in args]
    argv = [*TRAIN, *args, "--runs-dir", tmp_path / "runs"]
    r = run(argv)
    assert r.exit_code != 0
    err = r.stderr.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("model.safetensors"))


def test_cli_interrupted_run_needs_resume_then_continues(corpus_dir, tmp_path):
    run_dir = _interrupted_run(corpus_dir, tmp_path)
    before = snapshot(run_dir)
    r = run([*TRAIN, "--corpus", corpus_dir, "--runs-dir", tmp_path / "runs"])
    assert r.exit_code == 1 and "--resume" in r.stderr and snapshot(run_dir) == before
    r = ok([*TRAIN, "--corpus", corpus_dir, "--runs-dir", tmp_path / "runs", "--resume"])
    assert "stopped at step 6" in r.output


def test_cli_resume_corrupt_or_mismatched_checkpoint(corpus_dir, tmp_path):
    run_dir = _interrupted_run(corpus_dir, tmp_path)
    ck = run_dir / runs.CHECKPOINT
    weights = ck / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    before = snapshot(run_dir)
    r = run([*TRAIN, "--corpus", corpus_dir, "--runs-dir", tmp_path / "runs", "--resume"])
    assert r.exit_code == 1 and "corrupt" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert unchanged(run_dir, before)

    run_dir = _interrupted_run(corpus_dir, tmp_path / "again")
    cfg_file = run_dir / runs.CHECKPOINT / "train_config.json"
    saved = json.loads(cfg_file.read_text())
    saved["batch_size"] = 99
    cfg_file.write_text(json.dumps(saved))
    before = snapshot(run_dir)
    r = run([*TRAIN, "--corpus", corpus_dir, "--runs-dir", tmp_path / "again" / "runs", "--resume"])
    assert r.exit_code == 1 and "does not match" in r.stderr and "--batch-size: checkpoint 99 vs now 4" in r.stderr
    assert unchanged(run_dir, before)


def test_help_does_not_import_torch_for_train_options():
    import subprocess
    import sys
    code = ("import sys; from simkernel.cli import main; main(['train', '--help'], standalone_mode=False); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr


# ---------------------------------------------------------------------- run(): interruptions, the lock
def _stripped(rows):
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in rows]


def _steps(run_dir):
    return [r["step"] for r in runs.read_metrics(run_dir)]


def _stop_at(k):
    """A progress callback that presses Ctrl-C after step k."""
    def progress(step, info):
        if step == k:
            raise KeyboardInterrupt
    return progress


#: checkpoints at 15 and 30; evaluations every 10 steps
RUN_KW = dict(max_steps=40, ckpt_every=15)


@pytest.fixture(scope="module")
def uninterrupted(corpus_dir, tmp_path_factory):
    res = tr.run(cfg_for(corpus_dir, **RUN_KW), tmp_path_factory.mktemp("whole"), corpus_dir=corpus_dir)
    assert res.status == "trained" and _steps(res.run_dir) == [10, 20, 30, 40]
    return res


def test_run_interrupted_before_a_checkpoint_starts_over_cleanly(corpus_dir, uninterrupted, tmp_path):
    cfg = cfg_for(corpus_dir, **RUN_KW)
    with pytest.raises(runs.Interrupted) as info:
        tr.run(cfg, tmp_path, corpus_dir=corpus_dir, progress=_stop_at(12))
    e = info.value
    assert isinstance(e, KeyboardInterrupt) and e.step == 12 and not e.has_checkpoint
    assert e.run_dir == tmp_path / cfg.run_id() and _steps(e.run_dir) == [10]
    assert str(e) == (f"interrupted at step 12: {str(e.run_dir)!r} holds the config and metrics up to step 10 "
                      f"but no checkpoint yet; call run() again to start over")
    res = tr.run(cfg, tmp_path, corpus_dir=corpus_dir)          # no refusal, no resume=True needed
    assert res.status == "trained" and res.step == 40
    assert _steps(res.run_dir) == [10, 20, 30, 40]              # not 10, 10, 20, ...
    assert _stripped(runs.read_metrics(res.run_dir)) == _stripped(runs.read_metrics(uninterrupted.run_dir))


def test_run_interrupted_after_a_checkpoint_needs_resume(corpus_dir, uninterrupted, tmp_path):
    cfg = cfg_for(corpus_dir, **RUN_KW)
    with pytest.raises(runs.Interrupted) as info:
        tr.run(cfg, tmp_path, corpus_dir=corpus_dir, progress=_stop_at(25))
    e = info.value
    assert (e.step, e.checkpoint_step) == (25, 15) and _steps(e.run_dir) == [10, 20]
    assert str(e).endswith("holds the config and metrics up to step 20 and a checkpoint at step 15; "
                           "call run() again with resume=True to continue")
    before = snapshot(e.run_dir)
    with pytest.raises(runs.CheckpointExists, match="checkpoint at step 15 .*pass resume=True"):
        tr.run(cfg, tmp_path, corpus_dir=corpus_dir)
    assert snapshot(e.run_dir) == before
    res = tr.run(cfg, tmp_path, corpus_dir=corpus_dir, resume=True)
    assert res.status == "trained" and _steps(res.run_dir) == [10, 20, 30, 40]
    assert _stripped(runs.read_metrics(res.run_dir)) == _stripped(runs.read_metrics(uninterrupted.run_dir))


def test_run_already_trained_touches_nothing(corpus_dir, uninterrupted):
    run_dir = uninterrupted.run_dir
    stamps = {p: p.stat().st_mtime_ns for p in [run_dir, *run_dir.rglob("*")]}
    res = tr.run(cfg_for(corpus_dir, **RUN_KW), run_dir.parent, corpus_dir=corpus_dir)
    assert res.status == "already trained" and res.run_dir == run_dir
    assert (res.step, res.reason, res.val_loss, res.gap) == (40, "max_steps", uninterrupted.val_loss,
                                                            uninterrupted.gap)
    assert res.metrics == runs.read_metrics(run_dir)
    assert {p: p.stat().st_mtime_ns for p in [run_dir, *run_dir.rglob("*")]} == stamps


def test_run_arguments_checked_before_writing(corpus_dir, tmp_path):
    world = make_world("random", 0, **WORLD)
    with pytest.raises(ValueError, match="pass corpus_dir="):
        tr.run(cfg_for(corpus_dir), tmp_path / "runs", world=world)
    sampled = cfg_for(corpus_dir, corpus=tr.sampled_corpus({"preset": "random"}, 4, 64, 0))
    with pytest.raises(ValueError, match="pass world="):
        tr.run(sampled, tmp_path / "runs", corpus_dir=corpus_dir)
    other = write_corpus(world, tmp_path / "other", 4, 64, seed=1)
    with pytest.raises(ValueError, match="is not the corpus that cfg.corpus describes"):
        tr.run(cfg_for(corpus_dir), tmp_path / "runs", corpus_dir=other)
    with pytest.raises(runs.NoCheckpoint, match="resume=True, but run .* has no checkpoint"):
        tr.run(cfg_for(corpus_dir), tmp_path / "runs", corpus_dir=corpus_dir, resume=True)
    assert not (tmp_path / "runs").exists()


def test_folder_lock_is_exclusive_and_dies_with_its_process(tmp_path):
    import signal
    import subprocess
    import sys
    with tr.folder_lock(tmp_path) as lock:
        assert lock.read_text().strip() == str(os.getpid())
        with pytest.raises(FolderBusy) as info:          # two opens conflict, even in one process
            with tr.folder_lock(tmp_path):
                pass
        assert info.value.pid == os.getpid() and str(tmp_path) in str(info.value)
    with tr.folder_lock(tmp_path):                          # released on exit
        pass
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from simkernel.train import folder_lock\n"
         f"with folder_lock({str(tmp_path)!r}):\n    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderBusy) as info:
            with tr.folder_lock(tmp_path):
                pass
        assert info.value.pid == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)                  # a crash: no cleanup code runs
        holder.wait(timeout=30)
    with tr.folder_lock(tmp_path):                          # no stale lock
        pass


def _interrupt_cli_at(monkeypatch, k):
    """Make the CLI's training press Ctrl-C after step k (through run(), as a real one would)."""
    real = tr.train

    def train(*a, progress=None, **kw):
        def stop(step, info):
            progress(step, info)
            if step == k:
                raise KeyboardInterrupt
        return real(*a, progress=stop, **kw)

    monkeypatch.setattr(tr, "train", train)


def test_cli_ctrl_c_before_a_checkpoint_then_rerun_starts_over(tmp_path, monkeypatch):
    argv = [*TRAIN, "--ckpt-every", 6, "--target-gap", 1e-6, "--preset", "random", "--n-docs", 4,
            "--doc-length", 64, "--runs-dir", tmp_path / "runs"]
    _interrupt_cli_at(monkeypatch, 4)
    r = run(argv)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert r.exit_code == 130
    assert r.stderr.strip() == (f"error: interrupted at step 4: {str(run_dir)!r} holds the config, the corpus and "
                                f"metrics up to step 3 but no checkpoint yet; rerun the same command to start over")
    monkeypatch.undo()
    r = ok(argv)
    assert "stopped at step 6 by max_steps" in r.output and _steps(run_dir) == [3, 6]


def test_cli_ctrl_c_after_a_checkpoint_then_resume(corpus_dir, tmp_path, monkeypatch):
    argv = [*TRAIN, "--corpus", corpus_dir, "--runs-dir", tmp_path / "runs"]
    _interrupt_cli_at(monkeypatch, 5)
    r = run(argv)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert r.exit_code == 130
    assert r.stderr.strip() == (f"error: interrupted at step 5: {str(run_dir)!r} holds the config and metrics up to "
                                f"step 3 and a checkpoint at step 3; rerun the same command with --resume to continue")
    monkeypatch.undo()
    r = run(argv)
    assert r.exit_code == 1 and r.stderr.strip() == (
        f"error: run {str(run_dir)!r} has a checkpoint at step 3 from an interrupted run; pass --resume "
        f"to continue it, or remove the folder to start again")
    r = ok([*argv, "--resume"])
    assert "stopped at step 6 by max_steps" in r.output and _steps(run_dir) == [3, 6]


def test_cli_refuses_while_the_run_folder_is_in_use(corpus_dir, tmp_path):
    cfg = tr.TrainConfig(corpus=tr.corpus_identity(corpus_dir), model="tiny", block_size=32, batch_size=4,
                         max_steps=6, eval_every=3, ckpt_every=3, device="cpu")     # the config of TRAIN
    run_dir = tmp_path / "runs" / cfg.run_id()
    run_dir.mkdir(parents=True)
    argv = [*TRAIN, "--corpus", corpus_dir, "--runs-dir", tmp_path / "runs"]
    with tr.folder_lock(run_dir):           # another `simkernel train` of the same config
        r = run(argv)
        assert r.exit_code == 1 and r.stderr.strip() == (
            f"error: run folder {str(run_dir)!r} is in use by another process (pid {os.getpid()}); "
            f"wait for it to finish or stop that process (its lock goes when it exits)")
        assert [p.name for p in run_dir.iterdir()] == [".lock"]
    r = ok(argv)
    assert "stopped at step 6 by max_steps" in r.output and _steps(run_dir) == [3, 6]


# ---------------------------------------------------------------------- DDP (torchrun, 2 gloo ranks)
#: evaluated every step, so metrics.jsonl holds rank 0's loss of every step; checkpoints every 3
DDP_TRAIN = ["train", "--model", "tiny", "--block-size", 32, "--batch-size", 4, "--max-steps", 8,
             "--eval-every", 1, "--ckpt-every", 3, "--device", "cpu"]
DDP_STOP = 4        # not a multiple of --ckpt-every: the resume point is the interruption's own checkpoint


def _torchrun(*args, runs_dir, corpus_dir, extra=()):
    """Launch ``args`` (``-m simkernel.cli`` or a script) under torchrun with 2 CPU ranks."""
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args,
           *map(str, DDP_TRAIN), "--corpus", str(corpus_dir), "--runs-dir", str(runs_dir), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _need_torchrun():
    import importlib.util
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    if importlib.util.find_spec("torch.distributed.run") is None:
        pytest.skip("torchrun (torch.distributed.run) is not available")


@pytest.fixture(scope="module")
def ddp_full(corpus_dir, tmp_path_factory):
    """One uninterrupted 2-rank run (shared by the DDP tests: each launch costs ~20 s of imports)."""
    _need_torchrun()
    runs_dir = tmp_path_factory.mktemp("ddp_full") / "runs"
    proc = _torchrun("-m", "simkernel.cli", runs_dir=runs_dir, corpus_dir=corpus_dir)
    (run_dir,) = runs_dir.iterdir()
    return proc, run_dir


def _metric_rows(run_dir):
    return [{k: v for k, v in json.loads(x).items() if k not in ("tokens_per_s", "elapsed_s")}
            for x in (run_dir / runs.METRICS).read_text().splitlines()]


def test_ddp_two_cpu_ranks(ddp_full):
    """torchrun with 2 gloo ranks on the CPU: one run folder, written once, finished."""
    proc, run_dir = ddp_full
    assert proc.stdout.count("stopped at step 8") == 1
    assert [r["step"] for r in _metric_rows(run_dir)] == list(range(1, 9)) and (run_dir / runs.DONE).is_file()


def test_ddp_resume_equals_uninterrupted(ddp_full, corpus_dir, tmp_path):
    """2 ranks stopped after step 4 (the interruption injected into the real CLI), then
    `--resume`d in fresh processes: every step's loss, the val losses and the final weights
    equal the uninterrupted 2-rank run's."""
    _, full_dir = ddp_full
    script = tmp_path / "interrupted.py"
    script.write_text("import sys\n"
                      "import simkernel.train as tr\n"
                      "from simkernel.cli import main\n"
                      "_train = tr.train\n"
                      f"tr.train = lambda *a, **kw: _train(*a, stop_after={DDP_STOP}, **kw)\n"
                      "main(sys.argv[1:])\n")
    runs_dir = tmp_path / "runs"
    proc = _torchrun(str(script), runs_dir=runs_dir, corpus_dir=corpus_dir)
    assert proc.stdout.count(f"stopped at step {DDP_STOP} by interrupted") == 1
    (run_dir,) = runs_dir.iterdir()
    assert run_dir.name == full_dir.name and not (run_dir / runs.DONE).exists()
    assert [r["step"] for r in _metric_rows(run_dir)] == list(range(1, DDP_STOP + 1))
    proc = _torchrun("-m", "simkernel.cli", runs_dir=runs_dir, corpus_dir=corpus_dir, extra=["--resume"])
    assert proc.stdout.count("stopped at step 8 by max_steps") == 1

    a, b = _metric_rows(full_dir), _metric_rows(run_dir)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 9))
    for ra, rb in zip(a, b):
        for k in ("train_loss", "val_loss", "floor", "gap", "lr"):
            assert abs(ra[k] - rb[k]) <= 1e-6, (ra["step"], k, ra[k], rb[k])
    done_a, done_b = (json.loads((d / runs.DONE).read_text()) for d in (full_dir, run_dir))
    assert (done_a["step"], done_a["reason"]) == (done_b["step"], done_b["reason"]) == (8, "max_steps")
    wa = model_mod.load_model(full_dir / runs.CHECKPOINT / "model").state_dict()
    wb = model_mod.load_model(run_dir / runs.CHECKPOINT / "model").state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------- a finished run is verified before it is trusted
#: a finished run in a few steps: evaluations at 5 and 10, one checkpoint at the end
SMALL_RUN = dict(max_steps=10, eval_every=5, ckpt_every=10)
WEIGHTS = "checkpoint/model/model.safetensors"


@pytest.fixture(scope="module")
def finished(corpus_dir, tmp_path_factory):
    """(config, result) of one finished run, copied by each test that damages it."""
    cfg = cfg_for(corpus_dir, **SMALL_RUN)
    res = tr.run(cfg, tmp_path_factory.mktemp("finished"), corpus_dir=corpus_dir)
    assert res.status == "trained" and res.note == "" and _steps(res.run_dir) == [5, 10]
    return cfg, res


def _copy(finished, tmp_path):
    import shutil
    cfg, res = finished
    run_dir = tmp_path / "runs" / res.run_dir.name
    shutil.copytree(res.run_dir, run_dir)
    return cfg, run_dir


def _flip(path, at=-1):
    """Invert one byte of ``path`` (its size stays the same)."""
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _weights(run_dir):
    return model_mod.load_model(run_dir / runs.CHECKPOINT / "model").state_dict()


def test_done_json_records_what_a_later_run_reuses(finished):
    _, res = finished
    done = json.loads((res.run_dir / runs.DONE).read_text())
    outputs = done["outputs"]
    assert {WEIGHTS, "checkpoint/model/config.json", "checkpoint/state.pt", "checkpoint/train_config.json",
            "checkpoint/step.json", "metrics.jsonl", "config.json"} <= set(outputs)
    assert not any(k.startswith("corpus") or k in ("done.json", ".lock") for k in outputs)
    w = res.run_dir / WEIGHTS
    assert outputs[WEIGHTS]["size"] == w.stat().st_size
    assert outputs[WEIGHTS]["sha256"] == __import__("hashlib").sha256(w.read_bytes()).hexdigest()
    assert outputs == runs.run_outputs(res.run_dir) and runs.verify_run(res.run_dir) == []


def test_run_result_has_the_result_protocol(finished, tmp_path):
    """train.csv as the sweep writes it: one row, typed columns, read back with its dtypes."""
    from simkernel.results import Result, read_table

    _, res = finished
    assert isinstance(res, Result) and res.summary_lines() == [res.summary_line()]
    (table,) = res.tables().values()
    assert table.file == "train.csv" and table.columns == tr.TRAIN_COLUMNS
    (path,) = res.write(tmp_path)
    assert path == tmp_path / "train.csv"
    back = read_table(path, table.spec()["dtypes"])
    assert list(back.columns) == list(tr.TRAIN_COLUMNS) and len(back) == 1
    row = back.iloc[0]
    assert row["run_dir"] == str(res.run_dir) and row["status"] == "trained" and row["step"] == 10
    assert row["gap"] == pytest.approx(res.gap) and row["floor"] == pytest.approx(res.floor)


def test_intact_run_is_already_trained_without_a_note(finished, corpus_dir):
    cfg, res = finished
    again = tr.run(cfg, res.run_dir.parent, corpus_dir=corpus_dir)
    assert again.status == "already trained" and again.note == "" and again.step == 10


@pytest.mark.parametrize("damage, problem", [
    (lambda d: _flip(d / WEIGHTS), f"{WEIGHTS} does not match its recorded sha256"),
    (lambda d: (d / runs.METRICS).unlink(), "metrics.jsonl missing"),
    (lambda d: _flip(d / "checkpoint" / "state.pt", 200), "checkpoint/state.pt does not match its recorded sha256"),
], ids=["weights-byte-flipped", "metrics-deleted", "state-byte-flipped"])
def test_damaged_finished_run_is_trained_again_from_a_clean_start(finished, corpus_dir, tmp_path, damage, problem):
    cfg, run_dir = _copy(finished, tmp_path)
    damage(run_dir)
    assert runs.verify_run(run_dir) == [problem]
    res = tr.run(cfg, run_dir.parent, corpus_dir=corpus_dir, resume=True)      # resume is moot: nothing to trust
    assert res.status == "trained" and res.step == 10 and res.run_dir == run_dir
    assert res.note == f"run {run_dir.name}: {problem}; trained again"
    # from step 0, not on top of the damaged files: the same rows and weights as the first training
    assert _steps(run_dir) == [5, 10]
    assert _stripped(runs.read_metrics(run_dir)) == _stripped(finished[1].metrics)
    a, b = _weights(finished[1].run_dir), _weights(run_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    assert runs.verify_run(run_dir) == []
    again = tr.run(cfg, run_dir.parent, corpus_dir=corpus_dir)
    assert again.status == "already trained" and again.note == ""


def test_verify_run_names_each_damage(finished, tmp_path):
    _, run_dir = _copy(finished, tmp_path)
    assert runs.verify_run(tmp_path / "nowhere") == ["not finished"]
    recorded = json.loads((run_dir / runs.DONE).read_text())["outputs"]
    _flip(run_dir / WEIGHTS)
    (run_dir / "checkpoint" / "step.json").unlink()
    cfg_file = run_dir / "config.json"
    cfg_file.write_bytes(cfg_file.read_bytes()[:-5])
    (run_dir / "icl_vs_bayes.csv").write_text("a later command's table\n")      # not a recorded file: no damage
    assert sorted(runs.verify_run(run_dir)) == sorted([
        f"{WEIGHTS} does not match its recorded sha256", "checkpoint/step.json missing",
        f"config.json is {recorded['config.json']['size'] - 5:,} bytes, recorded {recorded['config.json']['size']:,}"])
    # sizes only: the flipped byte goes unseen, the rest does not
    assert sorted(runs.verify_run(run_dir, hashes=False)) == sorted([
        "checkpoint/step.json missing",
        f"config.json is {recorded['config.json']['size'] - 5:,} bytes, recorded {recorded['config.json']['size']:,}"])
    (run_dir / runs.DONE).write_text("{not json")
    assert runs.verify_run(run_dir) == ["done.json cannot be read (JSONDecodeError)"]
    (run_dir / runs.DONE).unlink()
    assert runs.verify_run(run_dir) == ["not finished"]


def _make_older(run_dir):
    """done.json as runs made before it recorded outputs wrote it."""
    done = json.loads((run_dir / runs.DONE).read_text())
    del done["outputs"]
    (run_dir / runs.DONE).write_text(json.dumps(done))
    return done


def test_older_done_json_is_upgraded_then_verified_fully(finished, corpus_dir, tmp_path):
    cfg, run_dir = _copy(finished, tmp_path)
    old = _make_older(run_dir)
    assert runs.verify_run(run_dir) == []                 # what can be checked without a record passes
    res = tr.run(cfg, run_dir.parent, corpus_dir=corpus_dir)
    assert res.status == "already trained" and res.step == 10
    assert res.note == f"run {run_dir.name}: recorded the hashes of an older run (its done.json had none)"
    done = json.loads((run_dir / runs.DONE).read_text())
    assert done["outputs"] == runs.run_outputs(run_dir) and {k: done[k] for k in old} == old
    assert tr.run(cfg, run_dir.parent, corpus_dir=corpus_dir).note == ""
    # from now on a flipped byte, which the checks without a record cannot see, is caught
    _flip(run_dir / "checkpoint" / "state.pt", 200)
    res = tr.run(cfg, run_dir.parent, corpus_dir=corpus_dir)
    assert res.status == "trained" and "checkpoint/state.pt does not match its recorded sha256" in res.note


def test_older_done_json_with_damaged_files_is_trained_again(finished, corpus_dir, tmp_path):
    cfg, run_dir = _copy(finished, tmp_path)
    _make_older(run_dir)
    w = run_dir / WEIGHTS
    w.write_bytes(w.read_bytes()[:-100])
    (run_dir / runs.METRICS).write_text("")
    assert runs.verify_run(run_dir) == ["metrics.jsonl is empty",
                                        f"{WEIGHTS} has an unreadable header (SafetensorError)"]
    res = tr.run(cfg, run_dir.parent, corpus_dir=corpus_dir)
    assert res.status == "trained" and res.note == (f"run {run_dir.name}: metrics.jsonl is empty; {WEIGHTS} has an "
                                                    f"unreadable header (SafetensorError); trained again")
    assert _steps(run_dir) == [5, 10] and runs.verify_run(run_dir) == []
    assert "outputs" in json.loads((run_dir / runs.DONE).read_text())


def test_cli_warns_when_a_damaged_run_is_trained_again(corpus_dir, tmp_path):
    argv = [*TRAIN, "--corpus", corpus_dir, "--runs-dir", tmp_path / "runs"]
    ok(argv)
    (run_dir,) = (tmp_path / "runs").iterdir()
    _flip(run_dir / WEIGHTS)
    r = ok(argv)
    assert r.stderr.strip() == (f"warning: run {run_dir.name}: {WEIGHTS} does not match its recorded sha256; "
                                f"trained again")
    assert "stopped at step 6 by max_steps" in r.stdout
    r = ok(argv)
    assert "already trained" in r.stdout and "warning" not in r.stderr


# ---------------------------------------------------------------------- snapshots along training
def _snap_steps(run_dir):
    return [s for s, _ in runs.snapshots(run_dir)]


def test_snapshots_on_a_log_scale_kept_on_resume(corpus_dir, tmp_path):
    cfg = cfg_for(corpus_dir, max_steps=20, ckpt_every=5, snapshot_steps="log")
    assert tr.snapshot_steps(cfg) == [1, 2, 4, 8, 16]
    full, _ = train_collect(cfg, corpus_dir, tmp_path / "a")
    assert full.reason == "max_steps" and _snap_steps(tmp_path / "a") == [1, 2, 4, 8, 16]
    for step, folder in runs.snapshots(tmp_path / "a"):
        assert folder.name == f"step-{step:07d}" and folder.parent.name == runs.SNAPSHOTS
        files = {p.name for p in folder.iterdir()}
        assert {"config.json", "model.safetensors"} <= files and not files & {"state.pt", "optimizer.pt"}
    # interrupted after step 6 (checkpoint at 5), then resumed: the snapshots it has are kept as they are
    part, _ = train_collect(cfg, corpus_dir, tmp_path / "b", stop_after=6)
    assert part.reason == "interrupted" and _snap_steps(tmp_path / "b") == [1, 2, 4]
    kept = {s: (f / "model.safetensors").read_bytes() for s, f in runs.snapshots(tmp_path / "b")}
    train_collect(cfg, corpus_dir, tmp_path / "b", resume=True)
    assert _snap_steps(tmp_path / "b") == [1, 2, 4, 8, 16]
    assert all((f / "model.safetensors").read_bytes() == kept[s] for s, f in runs.snapshots(tmp_path / "b") if s in kept)
    # and the resumed run's later snapshots are the uninterrupted run's weights
    a = model_mod.load_model(dict(runs.snapshots(tmp_path / "a"))[16]).state_dict()
    b = model_mod.load_model(dict(runs.snapshots(tmp_path / "b"))[16]).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    # a start from step 0 keeps no snapshot of an earlier start
    train_collect(cfg, corpus_dir, tmp_path / "a", stop_after=2)
    assert _snap_steps(tmp_path / "a") == [1, 2]


def test_snapshots_off_by_default_and_checked(corpus_dir, tmp_path):
    plain = cfg_for(corpus_dir)
    assert plain.snapshot_steps is None and "snapshot_steps" not in plain.hashed() and tr.snapshot_steps(plain) == []
    res, _ = train_collect(cfg_for(corpus_dir, max_steps=4), corpus_dir, tmp_path / "r")
    assert not (tmp_path / "r" / runs.SNAPSHOTS).exists() and runs.snapshots(tmp_path / "r") == []
    listed = cfg_for(corpus_dir, snapshot_steps=[7, 3, 100])
    assert tr.snapshot_steps(listed) == [3, 7] and listed.hashed()["snapshot_steps"] == [3, 7, 100]
    assert listed.run_id() != plain.run_id() != cfg_for(corpus_dir, snapshot_steps="log").run_id()
    for bad in ("linear", [], [0], [2.5], True):
        with pytest.raises(ValueError, match="snapshot_steps must be") as e:
            tr.check_config(cfg_for(corpus_dir, snapshot_steps=bad))
        assert "\n" not in str(e.value)
