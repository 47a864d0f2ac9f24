"""simkernel sweep: grid expansion, bad configs, a real 2-worker Dask cluster with a job that
fails on purpose, the combined table against the job tables, resuming after a kill, plots."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from simkernel import sweep

#: a converge job of about 1 s on 2 cores (ginc-small, 4 concepts, few prompts)
FAST = {"n_demos": [1, 2, 4], "n_prompts": 10, "kernels": ["theory", "frequency"]}


def _cfg(grid, command="converge", options=None, **extra):
    return {"command": command, "options": dict(FAST if options is None else options), "grid": grid, **extra}


# ---------------------------------------------------------------------- grid expansion
def test_product_in_config_order():
    jobs = sweep.expand(_cfg({"world_seed": [0, 1], "concepts": ["prior", "id"]}))
    assert [j.grid for j in jobs] == [{"world_seed": 0, "concepts": "prior"}, {"world_seed": 0, "concepts": "id"},
                                      {"world_seed": 1, "concepts": "prior"}, {"world_seed": 1, "concepts": "id"}]
    # world_seed is sugar for a one-world world_seeds
    assert [j.options["world_seeds"] for j in jobs] == [[0], [0], [1], [1]]
    assert len({j.key for j in jobs}) == 4


def test_zip_varies_together_and_multiplies_the_grid():
    cfg = _cfg({"world_seed": [0, 1]}, zip={"n_prompts": [10, 20, 30], "example_length": [3, 4, 5]},
               options={"n_demos": [1, 2]})
    got = [j.grid for j in sweep.expand(cfg)]
    want = [{"world_seed": s, "n_prompts": p, "example_length": k} for s in (0, 1)
            for p, k in ((10, 3), (20, 4), (30, 5))]
    assert got == want
    # several zip groups: each zipped inside, the groups multiplied
    cfg = _cfg({}, zip=[{"n_prompts": [10, 20], "example_length": [3, 4]}, {"seeds": [[0], [1]]}],
               options={"n_demos": [1]})
    got = [(j.grid["n_prompts"], j.grid["example_length"], j.grid["seeds"]) for j in sweep.expand(cfg)]
    assert got == [(10, 3, [0]), (10, 3, [1]), (20, 4, [0]), (20, 4, [1])]


def test_key_is_the_call_not_the_spelling():
    a = sweep.expand(_cfg({"world_seed": [3]}, options=dict(FAST, n_demos="1,2,4")))
    b = sweep.expand(_cfg({"n_prompts": [10]}, options={"n_demos": [1, 2, 4], "world_seed": 3,
                                                         "kernels": ["theory", "frequency"]}))
    assert a[0].key == b[0].key
    # a value listed twice is one job
    assert len(sweep.expand(_cfg({"world_seed": [1, 1, 2]}))) == 2


def test_train_keys_vary_the_train_table():
    cfg = {"command": "icl-eval", "options": {"n_demos": "0,1"}, "train": {"preset": "ginc-small", "model": "tiny"},
           "grid": {"train.seed": [0, 1]}}
    jobs = sweep.expand(cfg)
    assert [j.train["seed"] for j in jobs] == [0, 1]
    assert all(j.train["preset"] == "ginc-small" and "run_dir" not in j.options for j in jobs)
    assert jobs[0].options["n_demos"] == [0, 1]


@pytest.mark.parametrize("cfg, message", [
    ({"command": "converj", "grid": {"n_prompts": [1]}}, "unknown command 'converj'"),
    (_cfg({"n_prompt": [1]}), "unknown option 'n_prompt' of converge"),
    (_cfg({}), "the grid is empty"),
    (_cfg({"n_prompts": 5}), "grid value n_prompts = 5 is not a list"),
    (_cfg({"n_prompts": []}), "grid value n_prompts = [] is empty"),
    (_cfg({"world_seed": [0]}, zip={"n_prompts": [1, 2], "seeds": [[0]]}), "[zip] lists must have one length"),
    (_cfg({"n_prompts": [1]}), "option 'n_prompts' is set twice"),
    (_cfg({"world_seed": [0]}, train={"model": "tiny"}), "[train] is for commands that measure"),
    ({"command": "icl-eval", "grid": {"train.sed": [0]}, "train": {}}, "unknown training option 'sed'"),
    ({"command": "converge", "grid": {"n_prompts": [1]}, "bogus": 1}, "unknown top-level key 'bogus'"),
])
def test_bad_configs_are_one_line_errors(cfg, message, tmp_path):
    if message.startswith("option 'n_prompts'"):
        cfg["options"]["n_prompts"] = 3
    with pytest.raises(ValueError) as e:
        sweep.run(cfg, tmp_path / "out")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- a real Dask cluster
@pytest.fixture(scope="module")
def failing_sweep(cluster, tmp_path_factory):
    """3 worlds x 2 concept settings on the cluster; concepts 99 does not exist: those jobs fail."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    cfg = _cfg({"world_seed": [0, 1, 2], "concepts": ["prior", 99]})
    ticks = []
    res = sweep.run(cfg, out, scheduler=cluster.scheduler_address, progress=lambda *a: ticks.append(a))
    return cfg, out, res, ticks


def test_failing_job_is_an_error_row_and_the_others_finish(failing_sweep):
    cfg, out, res, ticks = failing_sweep
    assert res.counts() == {"done": 3, "failed": 3, "missing": 0}
    df = res.table()
    bad = df[df["status"] == "failed"]
    assert len(bad) == 3 and set(bad["concepts"]) == {"99"}
    assert bad["error"].str.contains("concepts=99 is not a concept of this world").all()
    assert bad["mean"].isna().all()
    assert (df[df["status"] == "done"]["error"].isna()).all()
    # the progress callback saw every job finish, ending at 3 done + 3 failed of 6
    assert ticks[-1][:2] == (3, 3) and ticks[-1][3] == 6
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["config"] == cfg and meta["versions"]["distributed"] and len(meta["jobs"]) == 6
    assert all(j["worker"] and j["wall_s"] > 0 for j in meta["jobs"])


def test_combined_table_is_the_concatenation_of_the_job_tables(failing_sweep):
    _, out, res, _ = failing_sweep
    for name, fname in (("None", "convergence.csv"), ("floors", "floors.csv"), ("fits", "fits.csv")):
        parts = []
        for j in res.jobs:
            if j["status"] != "done":
                continue
            t = pd.read_csv(Path(j["folder"]) / fname)
            for k, v in reversed(list(j["grid"].items())):
                t.insert(0, k, str(v) if k == "concepts" else v)
            t.insert(0, "job", j["key"])
            parts.append(t)
        want = pd.concat(parts, ignore_index=True)
        got = res.table(None if name == "None" else name)
        got = got[got["status"] == "done"].drop(columns=["status", "error"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False)
        # the CSV holds the same rows as the parquet
        csv = pd.read_csv(out / ("sweep.csv" if name == "None" else f"sweep.{name}.csv"))
        assert len(csv) == len(res.table(None if name == "None" else name))


def test_rerun_skips_done_jobs_and_keeps_errors(failing_sweep, cluster):
    cfg, out, res, _ = failing_sweep
    stamps = {j["key"]: (Path(j["folder"]) / sweep.DONE).stat().st_mtime_ns for j in res.jobs if j["status"] == "done"}
    again = sweep.run(cfg, out, scheduler=cluster.scheduler_address)
    assert not any(j["ran"] for j in again.jobs)
    assert again.counts() == res.counts()
    assert stamps == {k: (out / "jobs" / k / sweep.DONE).stat().st_mtime_ns for k in stamps}
    retried = sweep.run(cfg, out, scheduler=cluster.scheduler_address, retry_failed=True)
    assert sorted(j["key"] for j in retried.jobs if j["ran"]) == sorted(j["key"] for j in res.jobs
                                                                         if j["status"] == "failed")
    assert retried.counts()["failed"] == 3          # the config is still wrong


def test_out_folder_of_another_config_is_refused(failing_sweep):
    _, out, _, _ = failing_sweep
    before = (out / "sweep.json").read_bytes()
    with pytest.raises(ValueError, match="holds a sweep of a different config"):
        sweep.run(_cfg({"world_seed": [5]}), out)
    assert (out / "sweep.json").read_bytes() == before


def test_unreachable_scheduler_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    import socket

    from simkernel import sweep_cluster

    monkeypatch.setattr(sweep_cluster, "CONNECT_TIMEOUT_S", 2)
    with socket.socket() as s:                     # a free port on loopback, closed again: nobody listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ValueError, match=f"scheduler 'tcp://127.0.0.1:{port}' is unreachable"):
        sweep.run(_cfg({"world_seed": [0]}), tmp_path / "out", scheduler=f"tcp://127.0.0.1:{port}")
    assert not (tmp_path / "out").exists()


def test_plot_sweep(failing_sweep, tmp_path):
    from simkernel.plots import plot_sweep

    _, _, res, _ = failing_sweep
    p = plot_sweep(res.table(), "n_demos", "tv", tmp_path / "a.png", hue="kernel", where={"estimator": "normalised"})
    assert p.stat().st_size > 5000
    with pytest.raises(ValueError, match="'nope' is neither a column nor a metric"):
        plot_sweep(res.table(), "n_demos", "nope", tmp_path / "b.png")
    assert not (tmp_path / "b.png").exists()


# ---------------------------------------------------------------------- the CLI, Ctrl-C and resume
def _sweep_cli(args, cwd, **kw):
    env = dict(os.environ, SIMKERNEL_PROGRESS="plain")
    return subprocess.Popen([sys.executable, "-m", "simkernel.cli", "sweep", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_interrupt_then_resume_loses_no_job_and_runs_none_twice(tmp_path):
    """Ctrl-C (SIGINT) once some jobs are done; the rerun finishes the rest and leaves the
    finished jobs' files untouched."""
    cfg = tmp_path / "grid.toml"
    cfg.write_text('command = "converge"\n[options]\nn_demos = [1, 2, 4]\nn_prompts = 10\n'
                   'kernels = ["theory", "frequency"]\n[grid]\nworld_seed = [0, 1, 2, 3, 4, 5, 6, 7]\n')
    out = tmp_path / "out"
    proc = _sweep_cli([str(cfg), "--out", str(out), "--workers", "1"], tmp_path)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(list(out.glob(f"jobs/*/{sweep.DONE}"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    done_before = {p.parent.name: p.read_bytes() for p in out.glob(f"jobs/*/{sweep.DONE}")}
    assert proc.returncode == 130, err
    assert "interrupted" in err.splitlines()[-1] and err.splitlines()[-1].startswith("error:")
    assert 2 <= len(done_before) < 8
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["interrupted"] is True
    assert {j["key"] for j in meta["jobs"] if j["status"] == "done"} == set(done_before)

    proc = _sweep_cli([str(cfg), "--out", str(out), "--workers", "2"], tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    meta = json.loads((out / "sweep.json").read_text())
    assert [j["status"] for j in meta["jobs"]] == ["done"] * 8
    ran_now = {j["key"] for j in meta["jobs"] if j["ran"]}
    assert ran_now == {j["key"] for j in meta["jobs"]} - set(done_before)
    # finished jobs were not run again: their markers are byte for byte the same
    assert {k: (out / "jobs" / k / sweep.DONE).read_bytes() for k in done_before} == done_before
    table = pd.read_parquet(out / "sweep.parquet")
    assert sorted(table["world_seed"].unique()) == list(range(8))


def test_cli_bad_config_is_one_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('command = "converge"\n[grid]\nworld_seed = 3\n')
    proc = _sweep_cli([str(cfg), "--out", str(tmp_path / "o")], tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert err.strip().splitlines() == ["error: grid value world_seed = 3 is not a list; write world_seed = [3] "
                                        "for one value"]
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------- verified resume, named damage
def _damage(out, keys):
    """Delete the first job's table, truncate the second's, flip one byte (same size) in the third's."""
    a, b, c = keys
    (out / "jobs" / a / "convergence.csv").unlink()
    p = out / "jobs" / b / "floors.csv"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    p = out / "jobs" / c / "fits.csv"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    return {a: "convergence.csv missing", b: "floors.csv is", c: "fits.csv does not match its recorded sha256"}


@pytest.fixture(scope="module")
def clean_sweep(cluster, tmp_path_factory):
    """Four converge jobs, undamaged: the reference the repaired sweep is compared with."""
    out = tmp_path_factory.mktemp("clean") / "out"
    cfg = _cfg({"world_seed": [0, 1, 2, 3]})
    res = sweep.run(cfg, out, scheduler=cluster.scheduler_address)
    assert res.counts()["done"] == 4
    return cfg, out, res


def test_damaged_jobs_are_named_rerun_exactly_and_the_tables_equal_an_undamaged_sweep(clean_sweep, cluster,
                                                                                       tmp_path):
    import shutil

    cfg, clean_out, clean = clean_sweep
    out = tmp_path / "out"
    shutil.copytree(clean_out, out)
    keys = [j["key"] for j in clean.jobs]
    why = _damage(out, keys[:3])
    # --verify names each damaged job by key, grid values and what is wrong, and fails
    check = sweep.verify(out)
    assert not check.ok and check.verified == 4
    assert sorted(k for k, kind, _ in check.problems) == sorted(why) and {k for _, k, _ in check.problems} == {"damaged"}
    for key, kind, line in check.problems:
        assert line.startswith(f"job {key} (world_seed=") and why[key] in line
    proc = _sweep_cli([str(out), "--verify"], tmp_path)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and err.startswith("error: 3 problems")
    assert all(any(k in line for line in stdout.splitlines()) for k in why)
    # the rerun reruns exactly those three, says why, and the tables equal the undamaged sweep's
    lines = []
    res = sweep.run(cfg, out, scheduler=cluster.scheduler_address, notify=lines.append)
    assert sorted(j["key"] for j in res.jobs if j["ran"]) == sorted(why)
    assert sorted(res.damaged) == sorted(why) and res.verified == 4 and res.written
    assert len(lines) == 3 and all(line.endswith("rerunning") for line in lines)
    summary = "\n".join(res.summary_lines())
    assert "3 run now (3 of them because their outputs were damaged)" in summary
    for name in (None, "floors", "fits"):
        got, want = res.table(name), clean.table(name)
        pd.testing.assert_frame_equal(got, want)
    assert sweep.verify(out).ok


def test_a_job_table_that_cannot_be_combined_is_named_and_the_others_are_written(clean_sweep, tmp_path):
    """Past verification (a marker from before outputs were recorded), a truncated table is
    not a global parse error: that job is failed by key and path, the others' rows are there."""
    import shutil

    cfg, clean_out, clean = clean_sweep
    out = tmp_path / "out"
    shutil.copytree(clean_out, out)
    jobs = sweep.expand(cfg)
    bad = jobs[1]
    p = out / "jobs" / bad.key / "convergence.csv"
    text = p.read_text().splitlines()
    p.write_text("\n".join(text[:5] + [text[5].rsplit(",", 3)[0]] + text[6:]) + "\n")   # one row too short
    states = [sweep.job_state(out / "jobs" / j.key) for j in jobs]
    damaged = {}
    tables = sweep.combine(out, "converge", jobs, states, ["world_seed"], damaged=damaged)
    assert list(damaged) == [bad.key] and str(p) in damaged[bad.key]
    table = pd.read_parquet(tables[None])
    row = table[table["job"] == bad.key]
    assert len(row) == 1 and row["status"].iloc[0] == "failed" and "damaged" in row["error"].iloc[0]
    good = table[table["job"] != bad.key]
    assert (good["status"] == "done").all() and len(good) == len(clean.table()[clean.table()["job"] != bad.key])


def test_a_rerun_with_nothing_to_do_writes_nothing_and_says_so(clean_sweep, tmp_path):
    import shutil

    cfg, clean_out, _ = clean_sweep
    out = tmp_path / "out"
    shutil.copytree(clean_out, out, copy_function=shutil.copy2)
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text('command = "converge"\n[options]\nn_demos = [1, 2, 4]\nn_prompts = 10\n'
                        'kernels = ["theory", "frequency"]\n[grid]\nworld_seed = [0, 1, 2, 3]\n')
    assert sweep.read_config(cfg_path) == cfg
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("sweep*")}
    proc = _sweep_cli([str(cfg_path), "--out", str(out)], tmp_path)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "0 run now, 4 from earlier, 4 finished jobs verified" in stdout
    assert stdout.rstrip().splitlines()[-1].startswith("tables unchanged: ") and "wrote" not in stdout
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("sweep*")}
    # a damaged combined table is rebuilt from the (verified) jobs, running none
    (out / "sweep.csv").write_text("job\n")
    proc = _sweep_cli([str(cfg_path), "--out", str(out)], tmp_path)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "sweep.csv is" in err and "rewriting them" in err
    assert "0 run now" in stdout and stdout.rstrip().splitlines()[-1].startswith("wrote ")
    assert sweep.verify(out).ok


def test_an_older_done_marker_without_outputs_is_not_trusted(clean_sweep, cluster, tmp_path):
    import shutil

    cfg, clean_out, clean = clean_sweep
    out = tmp_path / "out"
    shutil.copytree(clean_out, out)
    key = clean.jobs[0]["key"]
    marker = json.loads((out / "jobs" / key / sweep.DONE).read_text())
    marker.pop("outputs")
    (out / "jobs" / key / sweep.DONE).write_text(json.dumps(marker))
    res = sweep.run(cfg, out, scheduler=cluster.scheduler_address)
    assert [j["key"] for j in res.jobs if j["ran"]] == [key]
    assert "cannot be verified" in res.damaged[key][0]
    pd.testing.assert_frame_equal(res.table(), clean.table())


def test_a_worker_killed_mid_job_leaves_every_job_done_once_and_the_table_complete(cluster, tmp_path):
    """SIGKILL one worker process (its pid from the client) while jobs run: the nanny restarts it,
    the scheduler reruns its job; every job ends done, once, and the table has every job's rows."""
    from distributed import Client

    cfg = _cfg({"world_seed": list(range(6))}, options=dict(FAST, n_prompts=60, n_demos=[1, 2, 4, 8, 16]))
    out = tmp_path / "out"
    killed = []

    def tick(done, failed, running, total):
        if not killed and running:
            with Client(cluster.scheduler_address, timeout="30s") as c:
                pids = c.run(os.getpid)
            pid = sorted(pids.values())[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    res = sweep.run(cfg, out, scheduler=cluster.scheduler_address, progress=tick)
    assert killed, "no worker was killed"
    assert res.counts() == {"done": 6, "failed": 0, "missing": 0}
    table = res.table()
    assert (table["status"] == "done").all()
    per_job = table.groupby("job").size()
    want = pd.read_csv(out / "jobs" / res.jobs[0]["key"] / "convergence.csv").shape[0]
    assert (per_job == want).all() and len(per_job) == 6          # no job twice, none missing
    assert sweep.verify(out).ok


# ---------------------------------------------------------------------- the generic table path
class _FakeResult:
    """A command result with a main table its write() produces and a derived table it does not,
    both with typed columns (an int column holding inf, a bool, a label that looks numeric)."""

    def __init__(self, scale):
        from simkernel.results import Table

        self.meta = {"scale": scale}
        self._main = Table("main.csv", ("n", "value", "ok", "label"),
                           {"n": "int", "value": "float", "ok": "bool", "label": "str"},
                           [{"n": 1, "value": 0.5 * scale, "ok": True, "label": "7"},
                            {"n": float("inf"), "value": None, "ok": False, "label": ""}])
        self._derived = Table("derived.csv", ("name", "count"), {"count": "int"}, [{"name": "a", "count": 3 * scale}])

    def tables(self):
        return {None: self._main, "derived": self._derived}

    def summary_lines(self):
        return ["fake"]

    def write(self, out):
        from simkernel.store import write_csv

        return [write_csv(Path(out) / self._main.file, self._main.rows, self._main.columns)]


def test_a_result_with_a_derived_table_round_trips_typed_through_run_job_and_combine(tmp_path, monkeypatch):
    """run_job writes write()'s files, then the derived table write() did not produce, and records
    every table's spec; combine reads them back by those specs, and the sweep's table comes typed."""
    from simkernel import sweep_job
    from simkernel.results import Table, read_table

    monkeypatch.setattr(sweep_job, "run_function", lambda command: (lambda scale: _FakeResult(scale)))
    jobs = [sweep.Job(f"job{s}", {"scale": s}, {"scale": s}, None, "fake") for s in (1, 2)]
    states = []
    for j in jobs:
        states.append(sweep.run_job(j.spec(), str(tmp_path / "jobs" / j.key)))
        folder = tmp_path / "jobs" / j.key
        assert states[-1]["status"] == "done", states[-1]
        assert {"main.csv", "derived.csv"} <= set(states[-1]["outputs"])
        assert [s["name"] for s in states[-1]["tables"]] == [None, "derived"]
        assert states[-1]["tables"][0] == dict(Table("main.csv", ("n", "value", "ok", "label"),
                                                     {"n": "int", "value": "float", "ok": "bool"}).spec(), name=None)
        assert read_table(folder / "derived.csv", {"count": "int"})["count"].tolist() == [3 * j.grid["scale"]]
        assert sweep.verify_job(folder, states[-1]) == []
    dtypes = {}
    paths = sweep.combine(tmp_path, "fake", jobs, states, ["scale"], dtypes=dtypes)
    assert list(paths) == [None, "derived"]
    assert dtypes[None] == {"job": "str", "scale": "int", "status": "str", "error": "str",
                            "n": "float", "value": "float", "ok": "bool", "label": "str"}
    assert dtypes["derived"]["count"] == "int"
    res = sweep.SweepResult(tmp_path, [], {"table_dtypes": {str(k): v for k, v in dtypes.items()}}, paths)
    main = res.table()
    assert main["n"].tolist() == [1.0, float("inf")] * 2 and main["ok"].tolist() == [True, False] * 2
    assert main["label"].iloc[0] == "7" and pd.isna(main["label"].iloc[1]) and str(main["ok"].dtype) == "bool"
    assert main["value"].iloc[0] == 0.5 and pd.isna(main["value"].iloc[1])
    derived = res.table("derived")
    assert derived["count"].tolist() == [3, 6] and str(derived["count"].dtype) == "int64"
    # the combined CSV spells the values as the job tables would be read untyped
    assert (tmp_path / "sweep.csv").read_text().splitlines()[1] == '"job1",1,"done",,1,0.5,true,"7"'


def test_a_done_marker_without_table_specs_is_rerun():
    """Markers from before typed tables record no table specs: their jobs are not trusted."""
    marker = {"status": "done", "outputs": {}}
    assert "records no table specs" in sweep.verify_job(Path("."), marker)[0]


def test_from_earlier_counts_only_jobs_found_done():
    """A first run finds nothing done: '0 from earlier', whatever ran or did not."""
    jobs = [sweep.Job(k, {"world_seed": i}, {}, None, "converge") for i, k in enumerate("abcd")]
    assert sweep.earlier_count({j.key: None for j in jobs}, jobs) == 0
    states = {"a": {"status": "done"}, "b": {"status": "failed"}, "c": {"status": "done"}, "d": None}
    assert sweep.earlier_count(states, [jobs[2], jobs[3]]) == 1     # c runs again: only a is from earlier
    rows = [{"key": k, "grid": {}, "status": "missing", "error": "not run (interrupted)", "ran": False} for k in "abcd"]
    res = sweep.SweepResult(Path("."), rows, {"config": {"command": "converge"}, "workers": 2, "elapsed_s": 1.0})
    assert "0 run now, 0 from earlier" in res.summary_lines()[0]


def test_unknown_option_says_did_you_mean(tmp_path):
    with pytest.raises(ValueError, match=r"unknown option 'n_prompt' of converge \(did you mean 'n_prompts'\?\)"):
        sweep.run(_cfg({"n_prompt": [1]}), tmp_path / "out")


def test_the_workers_only_fall_quiet_on_sigint():
    """Ctrl-C in a terminal reaches every process of the group: a worker does not stop (the
    driver handles it), it silences its logging, so none prints a traceback of its own."""
    from simkernel.sweep_cluster import client, quiet

    with client(1, None) as c:
        got = c.run(lambda: signal.getsignal(signal.SIGINT))
    assert list(got.values()) == [quiet]


def test_ctrl_c_to_the_process_group_prints_one_line(tmp_path):
    """SIGINT to the whole process group (a terminal's Ctrl-C): stderr ends with the one-line
    message and holds no traceback."""
    cfg = tmp_path / "grid.toml"
    cfg.write_text('command = "converge"\n[options]\nn_demos = [1, 2, 4]\nn_prompts = 10\n'
                   'kernels = ["theory", "frequency"]\n[grid]\nworld_seed = [0, 1, 2, 3, 4, 5, 6, 7]\n')
    out = tmp_path / "out"
    # the child handles SIGINT even when this test runs with it ignored (a background job)
    proc = _sweep_cli([str(cfg), "--out", str(out), "--workers", "2"], tmp_path, start_new_session=True,
                      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not list(out.glob(f"jobs/*/{sweep.DONE}")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.splitlines()[-1].startswith("error:") and "interrupted" in err.splitlines()[-1]
