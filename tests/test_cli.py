"""The simkernel command line, end to end on tiny worlds (click's CliRunner)."""

import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import simkernel.sampling as sampling
import simkernel.store as store
from simkernel import World, make_world, sample_corpus, sample_prompts
from simkernel.bayes import demo_counts
from cli_helpers import ok, run

TINY = ["--preset", "random", "--set", "n_states=3", "--set", "n_symbols=6"]




def entries(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------- help and version
@pytest.mark.parametrize("cmd", [[], ["world"], ["sample"], ["sample", "corpus"],
                                 ["sample", "prompts"], ["bayes"]])
def test_help(cmd):
    out = ok(cmd + ["--help"]).output
    assert "Usage: simkernel" in out
    if cmd in (["bayes"], ["sample", "prompts"]):
        for opt in ("--preset", "--world", "--set", "--n-prompts", "--n-demos",
                    "--example-length", "--seed", "--concept", "--out"):
            assert opt in out


def test_version_and_no_args():
    assert ok(["--version"]).output.strip() == "simkernel 0.1.0"
    assert "Commands:" in ok([]).output


# ---------------------------------------------------------------------- world
def test_world_build_save_and_check(tmp_path):
    out = tmp_path / "w.npz"
    r = ok(["world", "--world-seed", 3, *TINY, "--out", out])
    # the old name still works (a deprecated alias)
    assert ok(["world", "--seed", 3, *TINY]).output.splitlines()[0] == r.output.splitlines()[0]
    w = World.load(out)
    ref = make_world("random", 3, n_states=3, n_symbols=6)
    assert r.output.splitlines() == [repr(ref), f"wrote {out}"]
    np.testing.assert_array_equal(w.emission, ref.emission)
    prov = w.meta["provenance"]
    assert prov["seed"] == 3 and prov["config"]["world"]["preset"] == "random"
    assert prov["config"]["world"]["options"]["n_states"] == 3
    assert set(prov["versions"]) >= {"numpy", "numba", "simkernel"}
    # --from: validate and re-save
    again = tmp_path / "again.npz"
    r = ok(["world", "--from", out, "--out", again])
    assert r.output.splitlines()[0] == repr(ref)
    np.testing.assert_array_equal(World.load(again).transition, ref.transition)
    assert ok(["world", "--from", out]).output.strip() == repr(ref)    # no --out: nothing written
    assert entries(tmp_path) == ["again.npz", "w.npz"]


def test_world_from_foreign_file(tmp_path):
    ref = make_world("random", 0, n_states=3, n_symbols=5)
    path = tmp_path / "plain.npz"
    np.savez(path, prior=ref.prior, start=ref.start, transition=ref.transition,
             emission=ref.emission, delimiter=0)
    out = ok(["world", "--from", path]).output
    assert "restart=False" in out and "K=4 concepts" in out


# ---------------------------------------------------------------------- sample
def test_sample_corpus(tmp_path):
    out = tmp_path / "corpus"
    r = ok(["sample", "corpus", *TINY, "--world-seed", 2, "--n-docs", 7, "--doc-length", 11,
            "--seed", 4, "--out", out])
    assert f"wrote 7 documents x 11 symbols to {out}" in r.output
    c = sampling.read_corpus(out)
    ref = sample_corpus(make_world("random", 2, n_states=3, n_symbols=6), 7, 11, seed=4)
    np.testing.assert_array_equal(c.tokens, ref.tokens)
    np.testing.assert_array_equal(c.concepts, ref.concepts)
    meta = store.read_meta(out)
    assert meta["seed"] == 4 and meta["config"]["command"] == "sample corpus"
    assert meta["config"]["world"] == {"preset": "random", "seed": 2,
                                       "options": make_world("random", 2, n_states=3, n_symbols=6).meta["options"]}
    # an existing corpus is kept unless --overwrite
    r = run(["sample", "corpus", *TINY, "--n-docs", 3, "--doc-length", 5, "--out", out])
    assert r.exit_code == 2 and "--overwrite" in r.stderr
    assert sampling.read_corpus(out).concepts.size == 7
    ok(["sample", "corpus", *TINY, "--n-docs", 3, "--doc-length", 5, "--out", out, "--overwrite"])
    assert sampling.read_corpus(out).concepts.size == 3
    assert entries(tmp_path) == ["corpus"]


def test_sample_corpus_from_world_file(tmp_path):
    wpath = tmp_path / "w.npz"
    ok(["world", *TINY, "--out", wpath])
    ok(["sample", "corpus", "--world", wpath, "--n-docs", 2, "--doc-length", 3, "--out", tmp_path / "c"])
    assert store.read_meta(tmp_path / "c")["config"]["world"]["file"] == str(wpath)


def test_sample_prompts(tmp_path):
    out = tmp_path / "p.npz"
    r = ok(["sample", "prompts", *TINY, "--n-prompts", 6, "--n-demos", 3, "--example-length", 4,
            "--seed", 9, "--concept", 2, "--out", out])
    assert "wrote 6 prompts of 3 demonstrations" in r.output
    p = sampling.read_prompts(out)
    ref = sample_prompts(make_world("random", 0, n_states=3, n_symbols=6), 6, 3, 4, seed=9, concept=2)
    np.testing.assert_array_equal(p.tokens, ref.tokens)
    np.testing.assert_array_equal(p.y_test, ref.y_test)
    assert (p.concepts == 2).all()
    meta = store.read_prompts_meta(out)
    assert meta["seed"] == 9 and meta["config"]["concept"] == 2 and meta["config"]["example_length"] == 4


# ---------------------------------------------------------------------- bayes
def test_demo_counts():
    assert demo_counts(0) == [0]
    assert demo_counts(5) == [0, 1, 2, 4, 5]
    assert demo_counts(64) == [0, 1, 2, 4, 8, 16, 32, 64]


def test_bayes(tmp_path):
    out = tmp_path / "runs" / "bayes"            # parents are created
    r = ok(["bayes", *TINY, "--n-prompts", 20, "--n-demos", 5, "--example-length", 2,
            "--seed", 1, "--out", out])
    lines = r.output.splitlines()
    assert lines[0] == repr(make_world("random", 0, n_states=3, n_symbols=6))
    assert "P(true concept)" in r.output and "impossible under the pretraining mixture" in r.output
    assert "0 of 20" in r.output
    with open(out / "bayes.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["n_demos", "metric", "mean", "ci_low", "ci_high", "n_prompts"]
    assert sorted({int(x["n_demos"]) for x in rows}) == [0, 1, 2, 4, 5]
    assert {x["metric"] for x in rows} == {"posterior_true", "bayes_accuracy", "oracle_agreement",
                                           "tv_oracle", "oracle_accuracy"}
    for x in rows:
        assert float(x["ci_low"]) <= float(x["mean"]) <= float(x["ci_high"])
        assert int(x["n_prompts"]) == 20
        if x["metric"] != "tv_oracle":
            assert 0 <= float(x["mean"]) <= 1
    meta = json.loads((out / "bayes.json").read_text())
    assert meta["seed"] == 1 and meta["config"]["n_demos"] == 5 and meta["n_impossible"] == 0
    assert meta["versions"] == store.versions()
    assert entries(out) == ["bayes.csv", "bayes.json"]


def test_bayes_metrics_match_a_direct_computation(tmp_path, monkeypatch):
    import simkernel.posterior
    from simkernel import icl_curve
    monkeypatch.setattr(simkernel.posterior, "CHUNK", 5)           # 12 prompts in 3 chunks
    out = tmp_path / "b"
    ok(["bayes", *TINY, "--n-prompts", 12, "--n-demos", 2, "--seed", 3, "--out", out])
    w = make_world("random", 0, n_states=3, n_symbols=6)
    p = sample_prompts(w, 12, 2, 2, seed=3)
    c = icl_curve(w, p)
    with open(out / "bayes.csv") as f:
        got = {(int(x["n_demos"]), x["metric"]): float(x["mean"]) for x in csv.DictReader(f)}
    for n in (0, 1, 2):
        post_true = c.posterior[np.arange(12), n, p.concepts].mean()
        acc = (w.labels[np.argmax(c.predictive[:, n, w.labels], axis=1)] == p.y_test).mean()
        assert got[n, "posterior_true"] == pytest.approx(post_true)
        assert got[n, "bayes_accuracy"] == pytest.approx(acc)
        q, pb = c.oracle[:, w.labels], c.predictive[:, n, w.labels]
        q, pb = q / q.sum(1, keepdims=True), pb / pb.sum(1, keepdims=True)
        assert got[n, "tv_oracle"] == pytest.approx(0.5 * np.abs(pb - q).sum(1).mean())
        assert got[n, "oracle_agreement"] == pytest.approx((pb.argmax(1) == q.argmax(1)).mean())


def test_bayes_counts_impossible_prompts(tmp_path):
    # concept 1 has prior 0 and emits symbol 2, which concept 0 never emits: its prompts have
    # probability 0 under the pretraining mixture, so their posterior is undefined
    wpath = tmp_path / "w.npz"
    World.from_arrays(prior=[1.0, 0.0], start=[[1.0], [1.0]], transition=[[[1.0]], [[1.0]]],
                      emission=[[[0.5, 0.5, 0.0]], [[0.5, 0.0, 0.5]]], delimiter=0).save(wpath)
    out = tmp_path / "b"
    r = ok(["bayes", "--world", wpath, "--concept", 1, "--n-prompts", 8, "--n-demos", 2, "--out", out])
    assert "8 of 8" in r.output
    assert json.loads((out / "bayes.json").read_text())["n_impossible"] == 8


# ---------------------------------------------------------------------- bad input
def _bad_inputs(tmp_path):
    out = tmp_path / "out"
    garbage = tmp_path / "garbage.npz"
    garbage.write_text("not a world")
    afile = tmp_path / "afile"
    afile.write_text("x")
    full = out / "corpus"
    return [
        # (args, text that the message must contain, exit code: 2, each is about what was typed)
        (["world", "--seed", "abc", "--out", out / "w.npz"], "'abc'", 2),
        (["world", "--seed", "1.5", "--out", out / "w.npz"], "'1.5'", 2),
        (["world", "--seed", "-1", "--out", out / "w.npz"], "-1", 2),
        (["world", "--preset", "nope", "--out", out / "w.npz"], "'nope'", 2),
        (["world", "--set", "foo", "--out", out / "w.npz"], "expected NAME=VALUE, got 'foo'", 2),
        (["world", "--set", "bogus=1", "--out", out / "w.npz"], "'bogus'", 2),
        (["world", *TINY[:2], "--set", "n_states=many", "--out", out / "w.npz"], "'many'", 2),
        (["world", "--from", tmp_path / "missing.npz", "--out", out / "w.npz"], "missing.npz", 2),
        (["world", "--from", garbage, "--out", out / "w.npz"], "garbage.npz", 2),
        (["world", "--from", garbage, "--preset", "random"], "--preset", 2),
        (["world", "--out", out / "w.txt"], "'" + str(out / "w.txt") + "'", 2),
        (["world", "--out", out / "missing" / "w.npz"], "does not exist", 2),
        (["world", "--out", afile / "w.npz"], "is not a folder", 2),
        (["bayes", *TINY, "--n-demos", "-1", "--out", out / "b"], "-1", 2),
        (["bayes", *TINY, "--example-length", "1", "--out", out / "b"], "1 is too small", 2),
        (["bayes", *TINY, "--n-prompts", "0", "--out", out / "b"], "0 is too small", 2),
        (["bayes", *TINY, "--concept", "99", "--out", out / "b"], "--concept must be in 0..", 2),
        (["bayes", "--world", tmp_path / "missing.npz", "--out", out / "b"], "missing.npz", 2),
        (["bayes", *TINY, "--world", garbage, "--out", out / "b"], "--preset", 2),
        (["bayes", *TINY, "--out", afile], "is a file", 2),
        (["bayes", *TINY, "--out", afile / "b"], "not a folder", 2),
        (["sample", "prompts", *TINY, "--example-length", "x", "--out", out / "p.npz"], "'x'", 2),
        (["sample", "prompts", *TINY, "--out", out / "missing" / "p.npz"], "does not exist", 2),
        (["sample", "corpus", *TINY, "--n-docs", "0", "--out", full], "0 is too small", 2),
        (["sample", "corpus", "--world", tmp_path / "missing.npz", "--out", full], "missing.npz", 2),
        (["sample", "corpus", *TINY, "--out", afile / "c"], "is not a folder", 2),
        (["sample", "corpus", *TINY, "--out", afile], "is a file", 2),
        (["sample", "nope"], "'nope'", 2),
        (["nope"], "'nope'", 2),
    ]


def test_bad_inputs_give_one_line_and_write_nothing(tmp_path):
    out = tmp_path / "out"
    problems = []
    for args, needle, code in _bad_inputs(tmp_path):
        out.mkdir(exist_ok=True)
        r = run(args)
        msg = r.stderr.strip()
        if (r.exit_code != code or len(msg.splitlines()) != 1 or not msg.startswith("error: ")
                or needle not in msg or r.stdout.strip() or entries(out)
                or (tmp_path / "afile").read_text() != "x"):
            problems.append((args[:2], r.exit_code, msg, r.stdout, entries(out)))
    assert not problems, "\n".join(map(str, problems))


def _leaf_commands():
    """(argv prefix, command) of every command that runs something, subcommands included."""
    import click

    from simkernel.cli import main

    todo, out = [((), main)], []
    while todo:
        path, cmd = todo.pop()
        if isinstance(cmd, click.Group):
            todo += [((*path, name), sub) for name, sub in cmd.commands.items()]
        else:
            out.append((path, cmd))
    return sorted(out, key=lambda pc: pc[0])


def test_every_command_exits_2_on_what_was_typed(tmp_path):
    """In every command, an unknown flag and a malformed number exit with status 2 in one line,
    and so does a value the library rejects as an argument (a named file that is not there, an
    unknown preset option, an index out of range): the same status whichever layer rejects it."""
    import click

    leaves = _leaf_commands()
    assert len(leaves) >= 15
    problems = []

    def check(args, needle=None):
        r = run(args)
        msg = r.stderr.strip()
        if r.exit_code != 2 or len(msg.splitlines()) != 1 or not msg.startswith("error: ") or \
                (needle is not None and needle not in msg):
            problems.append((args, r.exit_code, msg))

    for path, cmd in leaves:
        check([*path, "--no-such-flag"], "--no-such-flag")
        ints = [p for p in cmd.params if isinstance(p, click.Option) and isinstance(p.type, click.ParamType)
                and p.type.name == "integer" and not p.multiple]
        if ints:
            check([*path, ints[0].opts[0], "x"], "'x'")
    missing = tmp_path / "missing"
    for args, needle in [
            (["world", "--set", "n_stats=3"], "did you mean 'n_states'?"),
            (["sample", "prompts", *TINY, "--concept", "99", "--out", tmp_path / "p.npz"], "--concept"),
            (["bayes", *TINY, "--concept", "99", "--out", tmp_path / "b"], "--concept"),
            (["converge", *TINY, "--concepts", "99", "--out", tmp_path / "c"], "--concepts"),
            (["regime", "--set", "bogus=1", "--out", tmp_path / "r"], "'bogus'"),
            (["phenomena", "labels", "--quick", "--param", "fractions=0,2", "--out", tmp_path / "ph"], "fractions"),
            (["train", "--corpus", missing], "missing"),
            (["icl-eval", "--run", missing], "missing"),
            (["measure", "--checkpoint", missing], "missing"),
            (["plot", "convergence", missing], "missing"),
            (["plot", "sweep", missing, "--x", "n_demos", "--y", "tv"], "missing"),
            (["sweep", tmp_path / "missing.toml"], "missing.toml"),
            (["sweep", tmp_path, "--verify", "--out", tmp_path / "s"], "once")]:
        check(args, needle)
    assert not problems, "\n".join(map(str, problems))
    assert entries(tmp_path) == []


def test_a_value_error_is_about_arguments_where_it_was_raised():
    """The rule behind the exit status: a ValueError raised by a check (simkernel.validate, a
    library run()'s own checks at its top, a check_* function) is about the arguments (2); one
    raised deeper, inside a computation, is a failure of the run (1)."""
    from simkernel.cli.common import checking_arguments, is_argument_error
    from simkernel.validate import check_int

    def caught(f):
        try:
            f()
        except ValueError as e:
            return e
        raise AssertionError("no ValueError")

    assert is_argument_error(caught(lambda: check_int("n_prompts", 0, 1)))
    assert not is_argument_error(caught(lambda: int("x")))          # raised outside simkernel
    assert not is_argument_error(ValueError("never raised"))

    def inside():
        with checking_arguments():
            int("x")
    assert is_argument_error(caught(inside))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root can write into read-only folders")
def test_unwritable_out(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        for args in (["world", "--out", ro / "w.npz"], ["bayes", *TINY, "--out", ro / "b"],
                     ["sample", "corpus", *TINY, "--out", ro / "c"]):
            r = run(args)
            assert r.exit_code == 2 and "not writable" in r.stderr, (args, r.stderr)
    finally:
        ro.chmod(0o700)


def test_unwritable_out_simulated(tmp_path, monkeypatch):
    # the same check as above, for any user: creating the probe file fails
    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(store.tempfile, "TemporaryFile", denied)
    for args in (["world", "--out", tmp_path / "w.npz"], ["bayes", *TINY, "--out", tmp_path / "b"],
                 ["sample", "corpus", *TINY, "--out", tmp_path / "c"],
                 ["sample", "prompts", *TINY, "--out", tmp_path / "p.npz"]):
        r = run(args)
        assert r.exit_code == 2, (args, r.stderr)
        assert r.stderr.strip() == (f"error: cannot write {str(args[-1])!r}: folder {str(tmp_path)!r} "
                                    f"is not writable (Permission denied)")
    assert entries(tmp_path) == []


def test_interrupted_corpus_leaves_nothing(tmp_path, monkeypatch):
    real = sampling.sample_corpus
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("simulated failure in chunk 2")
        return real(*a, **k)

    monkeypatch.setattr(sampling, "sample_corpus", flaky)
    monkeypatch.setattr(store, "CHUNK_TOKENS", 20)          # 2 documents of 10 per chunk
    r = run(["sample", "corpus", *TINY, "--n-docs", 6, "--doc-length", 10, "--out", tmp_path / "c"])
    assert r.exit_code == 1 and r.stderr.strip() == "error: simulated failure in chunk 2"
    assert entries(tmp_path) == []


def test_ctrl_c_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sampling, "sample_corpus", interrupted)
    r = run(["sample", "corpus", *TINY, "--n-docs", 6, "--doc-length", 10, "--out", tmp_path / "c"])
    assert r.exit_code == 130 and r.stderr.strip().startswith("error: interrupted")
    assert entries(tmp_path) == []


def test_failed_bayes_writes_nothing(tmp_path, monkeypatch):
    import simkernel.posterior

    def broken(*a, **k):
        raise ValueError("row 0 has probability 0 under every concept")

    monkeypatch.setattr(simkernel.posterior, "icl_curve", broken)
    r = run(["bayes", *TINY, "--n-prompts", 4, "--n-demos", 1, "--out", tmp_path / "runs" / "b"])
    assert r.exit_code == 1 and "probability 0" in r.stderr
    assert entries(tmp_path) == []


# ---------------------------------------------------------------------- startup
def test_cli_never_imports_torch(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from simkernel.cli import main
        for args in (["--help"], ["world", "--preset", "random", "--out", r"{tmp_path / 'w.npz'}"],
                     ["bayes", "--preset", "random", "--n-prompts", "2", "--n-demos", "1",
                      "--out", r"{tmp_path / 'b'}"]):
            assert main(args, standalone_mode=False) == 0, args
        heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
        assert not heavy, heavy
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")


def test_every_prompt_impossible_warns_nothing(tmp_path):
    """A world whose out-of-distribution concept emits a symbol no in-distribution concept can:
    every prompt from it has probability 0 under the pretraining mixture.  `bayes` and `converge`
    say so in one line and raise no numpy RuntimeWarning (mean of an empty slice, 0/0)."""
    import warnings

    import numpy as np
    from simkernel import World

    # concept 0 (prior 1) emits symbols 0 and 1; concept 1 (prior 0) emits 0 and 2
    emission = np.array([[[0.5, 0.5, 0.0]], [[0.5, 0.0, 0.5]]])
    world = World.from_arrays([1.0, 0.0], [[1.0], [1.0]], [[[1.0]], [[1.0]]], emission, 0, [1, 2])
    path = tmp_path / "w.npz"
    world.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        r = ok(["bayes", "--world", path, "--concept", 1, "--n-prompts", 6, "--n-demos", 4, "--out", tmp_path / "b"])
        assert "6 of 6" in r.output
        r = ok(["converge", "--world", path, "--concepts", "ood", "--n-prompts", 6, "--n-demos", "1..4",
                "--out", tmp_path / "c"])
        assert "6 of 6" in r.output


def test_plain_progress_lines_when_not_on_a_terminal(tmp_path, monkeypatch):
    """Outside a terminal (a batch job, a log file) a long command prints plain progress lines
    on stderr as it goes, stdout keeps only the results, and 'none' silences them."""
    monkeypatch.setenv("SIMKERNEL_PROGRESS", "plain")
    r = ok(["converge", *TINY, "--n-demos", "1..4", "--seed", "0", "--seed", "1", "--out", tmp_path / "c"])
    lines = r.stderr.splitlines()
    assert any("seed 1" in line for line in lines) and all(line.startswith("[") for line in lines)
    assert "seed 1:" not in r.stdout
    monkeypatch.setenv("SIMKERNEL_PROGRESS", "none")
    assert ok(["converge", *TINY, "--n-demos", "1..4", "--out", tmp_path / "d"]).stderr == ""


def test_phenomena_command_quick_and_its_errors(tmp_path):
    """`simkernel phenomena NAME --quick` writes NAME.csv/.json/.png and prints the verdict; bad
    input is one line naming the flag or setting, and nothing is written."""
    import json
    out = tmp_path / "ph"
    r = ok(["phenomena", "labels", "--quick", "--world-seed", "0", "--world-seed", "1", "--out", out])
    assert "verdict" in r.output and sorted(p.name for p in out.iterdir()) == ["labels.csv", "labels.json",
                                                                               "labels.png"]
    meta = json.loads((out / "labels.json").read_text())
    assert meta["n_worlds"] == 2 and meta["verdict"]["text"] in r.output
    bad = tmp_path / "bad"
    for args, needle, code in ((["phenomena", "sideways"], "sideways", 2),
                               (["phenomena", "labels", "--quick", "--param", "fractions=0,2"], "fractions", 2),
                               (["phenomena", "retrieval", "--quick", "--param", "bandwidths=0"], "bandwidths", 2),
                               (["phenomena", "order", "--quick", "--param", "colour=red"], "colour", 2)):
        res = run([*args, "--out", bad])
        msg = res.stderr.strip()
        assert res.exit_code == code and msg.startswith("error: ") and len(msg.splitlines()) == 1, msg
        assert needle in msg and not bad.exists()
