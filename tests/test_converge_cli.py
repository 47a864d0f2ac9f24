"""`simkernel converge` and `simkernel plot convergence`, end to end on a tiny world, the
--n-demos parser, bad inputs (one line, nothing written), and experiments/run.py."""

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import simkernel.plots as plots
import simkernel.store as store
from simkernel import make_world
from simkernel.bayes import format_n_demos
from simkernel.cli import main
from simkernel.convergence import COLUMNS as CONVERGE_COLUMNS, FILES as CONVERGE_FILES
from simkernel.options import parse_n_demos
from cli_helpers import ok, run

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "random", "--set", "n_states=3", "--set", "n_symbols=6", "--n-prompts", "6"]
PAIRS = {(k, e) for k in ("theory", "oracle", "similarity", "frequency") for e in ("averaged", "normalised", "clipped")}
REFERENCES = {("bayes", "-"), ("bayes-vs-oracle", "-"), ("theory", "-"), ("oracle", "-"), ("similarity", "-"),
              ("frequency", "-")}          # reference rows, and nonpositive_sum per kernel




def fails(args, code=None):
    result = run(args)
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def tree(folder):
    """Every path under folder (hidden temp files included)."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


# ---------------------------------------------------------------------- --n-demos
@pytest.mark.parametrize("spec, expected", [
    ("1..4", [1, 2, 3, 4]),
    ("1,2,8", [1, 2, 8]),
    ("1,2,4..8", [1, 2, 4, 5, 6, 7, 8]),
    ("4..4", [4]),
    (" 3 ", [3]),
    ("8, 1,1", [1, 8]),
    ("2..3,1..2", [1, 2, 3]),
])
def test_parse_n_demos(spec, expected):
    assert parse_n_demos(spec) == expected


@pytest.mark.parametrize("spec", ["0..", "..3", "1..", "5..2", "a..b", "-1", "-2..3", "0", "0..4", "",
                                  " ", "1,,2", "1,", "1.5", "1...3", "1..2..3", "x", "1..1000001", "²", "+2"])
def test_parse_n_demos_rejects(spec):
    with pytest.raises(ValueError) as e:
        parse_n_demos(spec)
    assert "\n" not in str(e.value)


def test_choices_match_the_package():
    from simkernel import convergence, kernel
    from simkernel.cli import common as cli
    from simkernel.constants import ESTIMATORS, KERNELS
    assert KERNELS == tuple(convergence.KERNELS)
    assert ESTIMATORS == tuple(kernel.ESTIMATORS)
    assert cli.CONVERGE_PRESET == convergence.DEFAULT_PRESET


def test_format_n_demos_round_trip():
    for ns in ([1, 2, 3, 4], [1, 2, 8], [1, 2, 4, 5, 6, 7, 8], [3], list(range(1, 257))):
        assert parse_n_demos(format_n_demos(ns)) == ns
    assert format_n_demos(range(1, 257)) == "1..256"
    assert format_n_demos([1, 2, 4, 5, 6, 8]) == "1,2,4..6,8"


# ---------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def converged(tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "out" / "deeper"      # created by the command
    result = ok(["converge", *TINY, "--n-demos", "1..8", "--seed", "0", "--seed", "3", "--out", out])
    return out, result


def test_converge_outputs(converged):
    out, result = converged
    assert sorted(p.name for p in out.iterdir()) == sorted(CONVERGE_FILES)
    columns, rows = read_csv(out / "convergence.csv")
    assert tuple(columns) == CONVERGE_COLUMNS
    assert {(r["kernel"], r["estimator"]) for r in rows} == PAIRS | REFERENCES
    for kname, est in PAIRS:
        for metric in ("l1", "agree", "acc", "tv_limit"):
            ns = sorted(int(r["n_demos"]) for r in rows
                        if (r["kernel"], r["estimator"], r["metric"]) == (kname, est, metric) and r["n_demos"] != "inf")
            assert ns == list(range(1, 9))
        # the exact limit: one row per limit metric at n_demos = inf
        assert {r["metric"] for r in rows if (r["kernel"], r["estimator"]) == (kname, est)
                and r["n_demos"] == "inf"} == {"l1", "tv", "kl", "agree", "acc", "tv_bayes", "limit_se"}
    nonpos = [r for r in rows if r["metric"] == "nonpositive_sum"]
    assert {r["kernel"] for r in nonpos} == {"theory", "oracle", "similarity", "frequency"}
    assert all(float(r["mean"]) == 0 for r in nonpos if r["kernel"] == "frequency")
    assert {r["n_demos"] for r in rows if r["kernel"] == "bayes-vs-oracle" and r["metric"] == "l1"} == \
        {str(n) for n in range(1, 9)}
    for r in rows:
        assert r["n_worlds"] == "1"
        if r["metric"] == "l1" and np.isfinite(float(r["mean"])):
            assert float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"])
            assert int(r["n_prompts"]) <= 12
    assert (out / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "convergence.pdf").read_bytes()[:5] == b"%PDF-"
    fcols, floors = read_csv(out / "floors.csv")
    assert "floor_tv" in fcols and "eta2_eps" in fcols
    assert {(r["kernel"], r["estimator"]) for r in floors} == PAIRS
    assert all(r["exact"] == "True" and float(r["floor_se"]) == 0 for r in floors)

    meta = json.loads((out / "convergence.json").read_text())
    cfg = meta["config"]
    assert meta["seed"] == {"prompt": [0, 3], "world": [0]} and cfg["seeds"] == [0, 3]
    assert cfg["n_demos"] == "1..8" and cfg["example_length"] == 3 and cfg["n_prompts"] == 6
    assert cfg["world"]["preset"] == "random" and cfg["kernels"] == ["theory", "oracle", "similarity", "frequency"]
    for key in ("concepts", "estimators", "features", "ridge", "n_samples", "world_seeds"):
        assert key in cfg
    assert {"simkernel", "numpy", "scipy", "numba", "matplotlib"} <= set(meta["versions"])
    assert set(meta["fits"]) == {f"{k}/{e}" for k, e in PAIRS}
    assert {"slope", "amplitude", "degenerate", "n_range"} <= set(meta["fits"]["theory/averaged"])
    assert set(meta["sigma"]) == {"0/0", "0/3"}
    info = meta["sigma"]["0/0"]["theory"]
    assert info["exact"] is True and info["ridge_lambda"] > 0 and info["n_inputs"] > 0
    assert meta["impossible_prompts"]["of"] == 12 and meta["n_worlds"] == 1
    assert meta["world"]["K"] == 4
    assert set(meta["spread"]) == {"theory", "oracle", "similarity", "frequency"}
    assert meta["spread"]["frequency"]["constant_fraction"] == 1.0

    text = result.output
    assert "TV to the exact posterior" in text and "frequency" in text and "floor vs Bayes" in text
    assert "within a prompt" in text
    for n in ("1", "2", "4", "8", "∞"):
        assert any(line.split()[:1] == [n] for line in text.splitlines())


def test_converge_lists_and_subsets(tmp_path):
    out = tmp_path / "o"
    ok(["converge", *TINY, "--n-demos", "1,3,5..6", "--kernel", "theory,oracle", "--estimator", "normalised",
        "--concepts", "id", "--features", "operator", "--out", out])
    _, rows = read_csv(out / "convergence.csv")
    assert {r["n_demos"] for r in rows} == {"1", "3", "5", "6", "inf"}
    assert {(r["kernel"], r["estimator"]) for r in rows} == {
        ("theory", "normalised"), ("oracle", "normalised"), ("bayes", "-"), ("bayes-vs-oracle", "-"),
        ("theory", "-"), ("oracle", "-")}
    meta = json.loads((out / "convergence.json").read_text())
    assert meta["config"]["features"] == "operator" and meta["config"]["concepts"] == "id"
    assert set(meta["fits"]) == {"theory/normalised", "oracle/normalised"}


def test_several_worlds(tmp_path):
    """--world-seed repeated: CIs over worlds (n_worlds in every row), a floors block per world."""
    out = tmp_path / "o"
    res = ok(["converge", *TINY, "--n-demos", "1..4", "--world-seed", "2", "--world-seed", "5",
              "--kernel", "theory,frequency", "--out", out])
    _, rows = read_csv(out / "convergence.csv")
    assert {r["n_worlds"] for r in rows} == {"2"}
    _, floors = read_csv(out / "floors.csv")
    assert {r["world"] for r in floors} == {"2", "5"}
    meta = json.loads((out / "convergence.json").read_text())
    assert meta["config"]["world_seeds"] == [2, 5] and meta["n_worlds"] == 2
    assert "over worlds" in res.output


def test_constant_kernel_warns(tmp_path):
    """paper-c with x one token: the theory kernel is one number within a prompt; the run says so."""
    res = ok(["converge", "--preset", "paper-c", "--example-length", "2", "--n-demos", "1..16", "--n-prompts", "20",
              "--kernel", "theory,frequency", "--out", tmp_path / "o"])
    warn = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warn) == 1 and "theory kernel is constant within prompts" in warn[0]
    assert "label frequencies" in warn[0]


def test_restart_free_world_is_flagged(tmp_path):
    res = ok(["converge", *TINY, "--set", "restart=false", "--n-demos", "1..4", "--kernel", "theory",
              "--out", tmp_path / "o"])
    assert any("Assumption 1" in line for line in res.stderr.splitlines())
    assert "Bayes-known" in res.output
    _, rows = read_csv(tmp_path / "o" / "convergence.csv")
    assert any(r["kernel"] == "bayes-vs-known" for r in rows)


def test_replaces_old_results(tmp_path, converged):
    src, _ = converged
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "convergence.csv").write_text("old")
    ok(["converge", *TINY, "--n-demos", "1..2", "--kernel", "theory", "--out", out])
    assert sorted(p.name for p in out.iterdir()) == sorted(CONVERGE_FILES + ("keep.txt",))
    assert (out / "keep.txt").read_text() == "mine"
    assert read_csv(out / "convergence.csv")[0] == list(CONVERGE_COLUMNS)


# ---------------------------------------------------------------------- redraw
def test_redraw_from_csv(tmp_path, converged):
    src, _ = converged
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("convergence.csv", "convergence.json"):
        (folder / name).write_bytes((src / name).read_bytes())
    out = ok(["plot", "convergence", folder]).output
    assert "convergence.png" in out
    assert (folder / "convergence.png").stat().st_size > 1000 and (folder / "convergence.pdf").is_file()
    # into another folder, and from the Python API with rows as dicts
    ok(["plot", "convergence", folder, "--out", tmp_path / "elsewhere"])
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["convergence.pdf", "convergence.png"]
    rows, meta = plots.load_convergence(folder)
    written = plots.plot_convergence(rows, meta["fits"], tmp_path / "a.png", None, title="t")
    assert [p.name for p in written] == ["a.png"]


def test_redraw_errors(tmp_path):
    line = fails(["plot", "convergence", tmp_path])
    assert "convergence.csv" in line
    (tmp_path / "convergence.csv").write_text("n_demos,mean\n1,0.5\n")
    (tmp_path / "convergence.json").write_text("{}")
    line = fails(["plot", "convergence", tmp_path])
    assert "estimator" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["convergence.csv", "convergence.json"]


# ---------------------------------------------------------------------- bad input: one line, nothing written
@pytest.fixture
def empty_labels_world(tmp_path):
    w = make_world("random", 0)
    path = tmp_path / "empty_labels.npz"
    np.savez(path, prior=w.prior, start=w.start, transition=w.transition, emission=w.emission,
             delimiter=w.delimiter, labels=np.array([], dtype=np.int64))
    return path


@pytest.mark.parametrize("extra, needle", [
    (["--n-demos", "0.."], "--n-demos"),
    (["--n-demos", "5..2"], "empty"),
    (["--n-demos", "a..b"], "--n-demos"),
    (["--n-demos", "-3"], "negative"),
    (["--n-demos", "0"], ">= 1"),
    (["--estimator", "median"], "unknown estimator 'median'"),
    (["--estimator", "averaged,"], "--estimator"),
    (["--kernel", "theory,gauss"], "unknown kernel 'gauss'"),
    (["--concepts", "99"], "not a concept"),
    (["--concepts", "ood"], "out-of-distribution"),
    (["--concepts", "some"], "--concepts"),
    (["--ridge", "0"], "--ridge"),
    (["--seed", "1", "--seed", "1"], "twice"),
    (["--world", "w.npz"], "cannot be combined with --preset"),
    (["--example-length", "1"], "--example-length"),
    (["--world-seed", "x"], "--world-seed"),
    (["--world-seed", "1.5"], "not an integer"),
    (["--world-seed", "3", "--world-seed", "3"], "twice"),
    (["--estimator", "clipped", "--kernel", "rbf"], "unknown kernel 'rbf'"),
])
def test_bad_input_writes_nothing(tmp_path, extra, needle):
    out = tmp_path / "out"
    # a malformed option and a value this world rejects are both about what was typed (2)
    line = fails(["converge", *TINY, "--n-demos", "1..4", *extra, "--out", out], code=2)
    assert needle in line
    assert tree(tmp_path) == []


def test_too_many_inputs_need_n_samples(tmp_path):
    """GINC's 50 symbols with x of 4 tokens: 6.25 million inputs cannot be enumerated."""
    line = fails(["converge", "--preset", "ginc", "--example-length", "5", "--out", tmp_path / "o"], code=2)
    assert "--n-samples" in line and "6,250,000" in line
    assert tree(tmp_path) == []


def test_empty_label_world(tmp_path, empty_labels_world):
    out = tmp_path / "out"
    line = fails(["converge", "--world", empty_labels_world, "--out", out], code=2)
    assert "labels is empty" in line
    assert tree(tmp_path) == ["empty_labels.npz"]


def test_unwritable_out(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    line = fails(["converge", *TINY, "--out", tmp_path / "afile" / "sub"])
    assert "not a folder" in line
    line = fails(["converge", *TINY, "--out", tmp_path / "afile"])
    assert "afile" in line

    def refuse(folder, target=None):
        raise ValueError(f"cannot write {str(target)!r}: folder {str(folder)!r} is not writable (Permission denied)")

    monkeypatch.setattr(store, "check_writable", refuse)
    line = fails(["converge", *TINY, "--out", tmp_path / "out"], code=2)
    assert "not writable" in line
    assert tree(tmp_path) == ["afile"]


def test_failure_at_the_end_leaves_old_results(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "convergence.csv").write_text("old")

    def broken(*args, **kwargs):
        raise ValueError("cannot draw")

    monkeypatch.setattr(plots, "plot_convergence", broken)
    line = fails(["converge", *TINY, "--n-demos", "1..3", "--kernel", "theory", "--out", out], code=1)
    assert line == "error: cannot draw"
    assert tree(tmp_path) == ["out", "out/convergence.csv"]
    assert (out / "convergence.csv").read_text() == "old"


def test_help_lists_options():
    text = ok(["converge", "--help"]).output
    for opt in ("--n-demos", "--preset", "--world", "--set", "--world-seed", "--example-length", "--n-prompts",
                "--seed", "--concepts", "--estimator", "--kernel", "--features", "--ridge", "--n-samples", "--out"):
        assert opt in text
    assert "convergence" in ok(["plot", "--help"]).output


# ---------------------------------------------------------------------- experiments/run.py
def _runner_module():
    spec = importlib.util.spec_from_file_location("experiments_run", ROOT / "experiments" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CONFIGS = sorted(p.stem for p in (ROOT / "experiments").glob("*.toml"))


@pytest.mark.parametrize("name", CONFIGS)
def test_experiment_configs_bind_to_the_library(name):
    """Every config's [options] are keyword arguments its command's run() accepts, and its
    [train] table names train_world's and TrainConfig's fields: nothing goes through a CLI."""
    import importlib
    import inspect
    import tomllib
    mod = _runner_module()
    command, options, train, out = mod.plan(tomllib.loads((ROOT / "experiments" / f"{name}.toml").read_text()), name)
    module, run_arg = mod.COMMANDS[command]
    run = importlib.import_module(f"simkernel.{module}").run
    if train is not None:
        options[run_arg] = "runs/x"
        from simkernel.train import TrainConfig, train_world
        allowed = set(inspect.signature(train_world).parameters) | set(TrainConfig.__dataclass_fields__) | {"seeds"}
        assert set(train) <= allowed, set(train) - allowed
    inspect.signature(run).bind(**options)
    # convergence.toml makes the headline files at the top of figures/
    assert out == (ROOT / "figures" if name == "convergence" else ROOT / "figures" / name)


def test_experiment_runner_is_the_library_call(tmp_path, capsys):
    """run.py writes what convergence.run + write would, byte for byte; bad configs are one line."""
    from simkernel import convergence
    mod = _runner_module()
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(f'out = "{tmp_path / "res"}"\n[options]\npreset = "random"\nn_demos = "1..3"\n'
                   'n_prompts = 4\nkernels = ["theory"]\nseeds = [0, 1]\noverrides = { n_states = 3 }\n')
    assert mod.main([str(cfg)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("simkernel.convergence.run(preset='random', n_demos=[1, 2, 3]")
    direct = convergence.run(preset="random", n_demos=[1, 2, 3], n_prompts=4, kernels=["theory"], seeds=[0, 1],
                             overrides={"n_states": 3})
    direct.write(tmp_path / "direct")
    for f in ("convergence.csv", "floors.csv"):
        assert (tmp_path / "res" / f).read_bytes() == (tmp_path / "direct" / f).read_bytes()
    assert (tmp_path / "res" / "convergence.png").is_file()
    bad = tmp_path / "bad.toml"
    bad.write_text('[options]\nn_demos = "0.."\n')
    assert mod.main([str(bad)]) == 1
    assert "n >= 1" in capsys.readouterr().err
    bad.write_text('[options]\nn_prompt = 3\n')
    assert mod.main([str(bad)]) == 1
    assert "n_prompt" in capsys.readouterr().err
    assert mod.main([str(tmp_path / "missing.toml")]) == 1
    bad.write_text("[options\n")
    assert mod.main([str(bad)]) == 1
