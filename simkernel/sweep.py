"""Grids of any command's ``run()`` on Dask distributed: ``simkernel sweep CONFIG.toml``.

A sweep config names a command and a grid of its options::

    command = "converge"          # converge | bayes | icl-eval | measure | phenomena | train | regime
    [options]                     # fixed keyword arguments of the command's run() (Python names)
    n_demos = "1..64"
    n_prompts = 100
    [grid]                        # each a list: every combination is one job
    world_seed = [0, 1, 2, 3]     # sugar for world_seeds = [s] (converge, phenomena, regime)
    preset = ["ginc-small", "paper-c"]
    [zip]                         # optional: lists of one length that vary together
    n_prompts = [50, 100]         # ([[zip]] for several such groups)
    example_length = [3, 5]
    [train]                       # icl-eval, measure, phenomena: the model(s) measured,
    preset = "ginc-small"         # trained first where missing (train.train_world; "seeds" = [..]
    model = "tiny"                # gives a list of runs, e.g. measure over training seeds);
                                  # grid keys "train.<field>" vary it

:func:`expand` turns the config into :class:`Job` s, each with its own folder
``<out>/jobs/<key>`` named by a hash of its full call (command, options, training spec), so a job
is the same folder in every sweep that makes the same call.  :func:`run` runs the missing ones on
a Dask ``LocalCluster`` (one process per worker, one thread each: BLAS and Numba are capped to one
thread inside the workers, so ``workers`` jobs use ``workers`` cores) or on an existing scheduler
(``scheduler="tcp://host:8786"``).  The job function is :func:`run_job`: it calls the library's
``run()`` and the result's ``write()`` into the job folder, then drops a done marker; a failing
job leaves a failed marker with its one-line error and the others go on.

Resuming: a rerun skips every job whose folder has its done marker, reruns missing ones (never
started, or stopped by Ctrl-C or a crash) and, with ``retry_failed``, failed ones (otherwise their
recorded error stands).  Finished jobs are never lost: each job's files are published atomically
before its marker.

Outputs in ``out``: ``sweep.parquet`` and ``sweep.csv`` (the main table: ``job``, the grid's
columns, ``status``, ``error``, then the job's own rows; a failed job is one row with its error),
``sweep.<table>.parquet/csv`` for a command's other tables (converge: floors, fits; measure:
pooled; phenomena: verdicts; regime: worlds), and ``sweep.json`` (config, versions, per job: status, wall time,
worker, error).  The tables are built by streaming the job tables one at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

#: command -> (module with run(), the run() argument that receives trained run folders or None)
COMMANDS = {"converge": ("convergence", None), "bayes": ("bayes", None), "icl-eval": ("icl_eval", "run_dir"),
            "measure": ("alignment", "checkpoint"), "phenomena": ("phenomena", "run_dir"), "train": ("train", None),
            "regime": ("regime", None)}
#: command -> {table name (None: the main one): file name in a job folder} ({name}: phenomena's name)
TABLES = {"converge": {None: "convergence.csv", "floors": "floors.csv", "fits": "fits.csv"},
          "bayes": {None: "bayes.csv"},
          "icl-eval": {None: "icl_vs_bayes.csv"},
          "measure": {None: "references.csv", "pooled": "pooled.csv"},
          "phenomena": {None: "{name}.csv", "verdicts": "verdicts.csv"},
          "train": {None: "train.csv"},
          "regime": {None: "regime.csv", "worlds": "regime_worlds.csv"}}
#: commands whose run() takes world_seeds, so that a grid may give world_seed (one world a job)
WORLD_SEEDS_COMMANDS = ("converge", "phenomena", "regime")
FIT_COLUMNS = ("kernel", "estimator", "slope", "amplitude", "floor", "degenerate", "metric", "with_floor")
TRAIN_COLUMNS = ("run_dir", "status", "reason", "step", "val_loss", "floor", "gap", "elapsed_s")
VERDICT_COLUMNS = ("name", "text", "verdict_json")
KNOWN_KEYS = {"description", "command", "options", "grid", "zip", "train"}
#: columns every combined table starts with, around the grid's
JOB_COLUMN, STATUS_COLUMNS = "job", ("status", "error")
DONE, FAILED, SPEC = "_done.json", "_failed.json", "_job.json"
#: what a worker caps to one thread (inherited by the worker processes of a LocalCluster)
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
CONNECT_TIMEOUT_S = 10


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run`: the finished jobs are kept and the tables written; ``result``
    is the :class:`SweepResult` so far."""

    def __init__(self, result):
        super().__init__("interrupted")
        self.result = result


# ---------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class Job:
    """One call: ``key`` (12 hex digits of the hash of command, options and train), ``grid``
    (the grid column values of this job, in config order), ``options`` (run() keyword
    arguments), ``train`` (train_world arguments, or None)."""

    key: str
    grid: dict
    options: dict
    train: dict | None
    command: str

    def spec(self) -> dict:
        return {"key": self.key, "command": self.command, "grid": self.grid, "options": self.options,
                "train": self.train}


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def config_hash(config: dict) -> str:
    """A sweep config's identity (what ``sweep.json`` records, and the check on an output
    folder that already holds a sweep); ``description`` does not count."""
    return hashlib.sha256(_canonical({k: v for k, v in config.items() if k != "description"}).encode()).hexdigest()[:16]


def _run_function(command: str):
    import importlib

    module, _ = COMMANDS[command]
    if command == "train":
        from .train import train_world
        return train_world
    return importlib.import_module(f".{module}", __package__).run


def _allowed_options(command: str) -> set:
    """The run() keyword arguments a config may set (progress and outputs are the sweep's)."""
    params = set(inspect.signature(_run_function(command)).parameters) - {"progress", "sample_progress"}
    if command == "train":
        from .train import TrainConfig
        params |= set(TrainConfig.__dataclass_fields__) - {"corpus"}
        params -= {"config"}
    if command in WORLD_SEEDS_COMMANDS:
        params.add("world_seed")
    params.discard("params")
    if command == "phenomena":
        from .phenomena import _PARAMS
        params |= {k for d in _PARAMS.values() for k in d}
    return params - {"worlds", "world_source", "world_labels"}


def _train_allowed() -> set:
    from .train import TrainConfig, train_world
    return ((set(inspect.signature(train_world).parameters) | set(TrainConfig.__dataclass_fields__))
            - {"config", "corpus", "progress", "sample_progress", "resume"}) | {"seeds"}


def _lists(block, what: str) -> dict:
    if not isinstance(block, dict):
        raise ValueError(f"[{what}] must be a table of lists, got {type(block).__name__}")
    for k, v in block.items():
        if not isinstance(v, list):
            raise ValueError(f"grid value {k} = {v!r} is not a list; write {k} = [{v!r}] for one value")
        if not v:
            raise ValueError(f"grid value {k} = [] is empty; give at least one value")
    return block


def check_config(config: dict) -> tuple[str, dict, list, list, dict | None]:
    """(command, options, grid items [(key, values)], zip groups [[(key, values)]], train) of a
    config, every name checked against the command's run() signature.  One-line ValueErrors."""
    if not isinstance(config, dict):
        raise ValueError(f"a sweep config is a table, got {type(config).__name__}")
    unknown = sorted(set(config) - KNOWN_KEYS)
    if unknown:
        raise ValueError(f"unknown top-level key {unknown[0]!r}; allowed: {', '.join(sorted(KNOWN_KEYS))}")
    command = config.get("command")
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; allowed: {', '.join(COMMANDS)}")
    options = dict(config.get("options", {}))
    if not isinstance(options, dict):
        raise ValueError("[options] must be a table of run() keyword arguments")
    grid = list(_lists(config.get("grid", {}), "grid").items())
    zips = config.get("zip", [])
    zips = [zips] if isinstance(zips, dict) else zips
    if not isinstance(zips, list):
        raise ValueError("[zip] must be a table of lists (or [[zip]] several)")
    groups = []
    for z in zips:
        items = list(_lists(z, "zip").items())
        lengths = {len(v) for _, v in items}
        if len(lengths) > 1:
            raise ValueError(f"[zip] lists must have one length, got {', '.join(f'{k}: {len(v)}' for k, v in items)}")
        if items:
            groups.append(items)
    if not grid and not groups:
        raise ValueError("the grid is empty: give [grid] (or [zip]) with at least one option and its list of values")
    train = config.get("train")
    if train is not None and COMMANDS[command][1] is None:
        raise ValueError(f"[train] is for commands that measure a trained model (icl-eval, measure, phenomena), "
                         f"not {command!r}")
    allowed = _allowed_options(command)
    # the training options import torch: only looked up when the config trains
    t_allowed = _train_allowed() if train is not None else set()
    keys = [k for k, _ in grid] + [k for g in groups for k, _ in g]
    dup = sorted({k for k in keys if keys.count(k) > 1} | (set(keys) & set(options)))
    if dup:
        raise ValueError(f"option {dup[0]!r} is set twice (in [options], [grid] or [zip]); give it once")
    for k in list(options) + keys:
        if k.startswith("train."):
            if train is None:
                raise ValueError(f"grid key {k!r} varies the [train] table, which the config does not have")
            if k[6:] not in t_allowed:
                raise ValueError(f"unknown training option {k[6:]!r}; allowed: {', '.join(sorted(t_allowed))}")
        elif k not in allowed:
            raise ValueError(f"unknown option {k!r} of {command}; allowed: {', '.join(sorted(allowed))}")
        elif k == COMMANDS[command][1] and train is not None:
            raise ValueError(f"{k} is given by [train]; set one or the other")
    for k in (train or {}):
        if k not in t_allowed:
            raise ValueError(f"unknown training option {k!r}; allowed: {', '.join(sorted(t_allowed))}")
    if "out" in options:
        raise ValueError("out is the sweep's: each job writes into its own folder")
    return command, options, grid, groups, train


def _job_call(command: str, values: dict, train: dict | None):
    """(run() options, train spec) of one grid point: n_demos strings parsed, world_seed -> world_seeds."""
    opts, tr = {}, (dict(train) if train is not None else None)
    for k, v in values.items():
        if k.startswith("train."):
            tr[k[6:]] = v
        else:
            opts[k] = v
    if "world_seed" in opts and command in WORLD_SEEDS_COMMANDS:
        opts["world_seeds"] = [opts.pop("world_seed")]
    if isinstance(opts.get("n_demos"), str):
        from .options import parse_n_demos
        opts["n_demos"] = parse_n_demos(opts["n_demos"], minimum=0 if command == "icl-eval" else 1)
    return opts, tr


def expand(config: dict) -> list[Job]:
    """Every job of a config, in grid order (the product of [grid] in config order, then of the
    zip groups).  Jobs making the same call (e.g. a grid value listed twice) are one job."""
    command, options, grid, groups, train = check_config(config)
    axes = [[((k, v),) for v in vals] for k, vals in grid]
    axes += [list(zip(*[[(k, v) for v in vals] for k, vals in g])) for g in groups]
    jobs, seen = [], set()
    for combo in itertools.product(*axes):
        values = dict(kv for part in combo for kv in part)
        opts, tr = _job_call(command, {**options, **values}, train)
        key = hashlib.sha256(_canonical({"command": command, "options": opts, "train": tr}).encode()).hexdigest()[:12]
        if key in seen:
            continue
        seen.add(key)
        jobs.append(Job(key, values, opts, tr, command))
    return jobs


# ---------------------------------------------------------------------- one job (runs in a worker)
def _cap_threads() -> None:
    """One thread for BLAS, Numba and torch in this process: workers x threads = the cores.
    (The environment variables are set when a LocalCluster starts its workers; changing
    NUMBA_NUM_THREADS once Numba has started its threads is an error, so not here.)"""
    import sys
    with contextlib.suppress(Exception):
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
    if "numba" in sys.modules:
        with contextlib.suppress(Exception):
            import numba
            numba.set_num_threads(1)
    if "torch" in sys.modules:
        with contextlib.suppress(Exception):
            sys.modules["torch"].set_num_threads(1)


def _worker_name() -> str:
    try:
        from distributed import get_worker
        w = get_worker()
        return str(w.name if w.name is not None else w.address)
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, (ValueError, TypeError)) else f"{type(e).__name__}: {text}"


def _write_rows(path: Path, rows, columns) -> None:
    from .store import write_csv         # atomic: a killed job leaves no half-written table
    write_csv(path, rows, columns)


def _extra_tables(command: str, result, folder: Path) -> None:
    """The tables a job derives from its result beside the command's own files."""
    if command == "converge":
        rows = [dict(kernel=k.split("/")[0], estimator=k.split("/")[1], **{c: f.get(c) for c in FIT_COLUMNS[2:]})
                for k, f in result.meta["fits"].items()]
        _write_rows(folder / "fits.csv", rows, FIT_COLUMNS)
    elif command == "phenomena":
        v = result.verdict
        _write_rows(folder / "verdicts.csv", [{"name": result.name, "text": v.get("text", ""),
                                               "verdict_json": _canonical(v)}], VERDICT_COLUMNS)


def run_job(spec: dict, folder: str) -> dict:
    """Run one job in this process: train its models where missing, call the command's ``run()``,
    publish its files into ``folder`` and its derived tables, then the done marker; on any
    exception write the failed marker with the one-line error instead.  Returns the marker."""
    from .store import write_json

    _cap_threads()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if spec.get("cwd"):
        # relative paths in the options (run folders, world files, runs_dir) mean what they meant
        # where the sweep was started; a worker runs one job at a time, so changing it is safe
        os.chdir(spec["cwd"])
    t0 = time.perf_counter()
    worker = _worker_name()
    (folder / FAILED).unlink(missing_ok=True)
    write_json(folder / SPEC, spec)
    command, opts = spec["command"], dict(spec["options"])
    try:
        if spec.get("train") is not None:
            from .train import train_world
            tr = dict(spec["train"])
            seeds = tr.pop("seeds", None)
            runs = [train_world(**dict(tr, seed=s) if seeds is not None else tr).run_dir
                    for s in (seeds if seeds is not None else [None])]
            _cap_threads()           # torch is imported now
            arg = COMMANDS[command][1]
            opts[arg] = [str(r) for r in runs] if (seeds is not None and command == "measure") else str(runs[0])
        result = _run_function(command)(**opts)
        _cap_threads()
        if command == "train":
            _write_rows(folder / "train.csv", [{c: str(getattr(result, c)) if c == "run_dir" else getattr(result, c)
                                                 for c in TRAIN_COLUMNS}], TRAIN_COLUMNS)
        else:
            result.write(folder)
            _extra_tables(command, result, folder)
        marker = {"status": "done", "key": spec["key"], "wall_s": time.perf_counter() - t0, "worker": worker,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(folder / DONE, marker)
    except KeyboardInterrupt:
        raise
    except BaseException as e:          # a job's failure is data: recorded, and the sweep goes on
        marker = {"status": "failed", "key": spec["key"], "error": _one_line(e), "type": type(e).__name__,
                  "wall_s": time.perf_counter() - t0, "worker": worker}
        write_json(folder / FAILED, marker)
    return marker


def job_state(folder: Path) -> dict | None:
    """A job folder's marker (done or failed), or None when it never finished."""
    for name in (DONE, FAILED):
        p = Path(folder) / name
        if p.is_file():
            with contextlib.suppress(OSError, ValueError):
                return json.loads(p.read_text())
    return None


# ---------------------------------------------------------------------- the result
@dataclass
class SweepResult:
    """What :func:`run` returns: ``out``, ``jobs`` (per job: key, folder, grid, status 'done' /
    'failed' / 'missing', error, wall_s, worker, ran: whether this call ran it), ``meta``
    (sweep.json) and ``tables`` ({table name or None: parquet path})."""

    out: Path
    jobs: list
    meta: dict
    tables: dict = field(default_factory=dict)

    def table(self, name: str | None = None):
        """The combined table ``name`` (None: the main one) as a pandas DataFrame."""
        import pandas as pd

        if name not in self.tables:
            raise ValueError(f"no table {name!r} in this sweep; allowed: {', '.join(map(repr, self.tables))}")
        return pd.read_parquet(self.tables[name])

    def counts(self) -> dict:
        out = {"done": 0, "failed": 0, "missing": 0}
        for j in self.jobs:
            out[j["status"]] = out.get(j["status"], 0) + 1
        return out

    def summary_lines(self) -> list[str]:
        """What ``simkernel sweep`` prints: the counts, the time, each failed job's error."""
        c, m = self.counts(), self.meta
        ran = sum(j["ran"] for j in self.jobs)
        n_w = m.get("workers", 0)
        out = [f"{len(self.jobs)} jobs of {m['config']['command']}: {c['done']} done, {c['failed']} failed"
               + (f", {c['missing']} not run" if c["missing"] else "")
               + f"; {ran} run now on {n_w} worker{'s' if n_w != 1 else ''}, {len(self.jobs) - ran} from earlier "
                 f"({m['elapsed_s']:.1f} s)"]
        for j in self.jobs:
            if j["status"] == "failed":
                grid = ", ".join(f"{k}={v}" for k, v in j["grid"].items())
                out.append(f"  failed {j['key']} ({grid}): {j['error']}")
        return out

    def write(self, out=None) -> list[Path]:
        """The tables and sweep.json are written by :func:`run` itself (they are the sweep's
        state); this returns their paths, for the same interface as the other results."""
        return [q for p in self.tables.values() for q in (Path(p), Path(p).with_suffix(".csv"))] + [
            Path(self.out) / "sweep.json"]


# ---------------------------------------------------------------------- the combined tables
def _grid_value(v):
    return v if v is None or isinstance(v, (bool, int, float, str)) else _canonical(v)


def _grid_type(values):
    """The arrow type of a grid column: int, float, bool or (mixed, lists) string."""
    import pyarrow as pa

    kinds = {type(v) for v in values if v is not None}
    if kinds == {bool}:
        return pa.bool_()
    if kinds and kinds <= {int}:
        return pa.int64()
    if kinds and kinds <= {int, float}:
        return pa.float64()
    return pa.string()


def _unify(types: list):
    """One arrow type for a column read with these types from the job tables: null columns
    take any, int and float make float, anything else mixed makes string."""
    import pyarrow as pa

    ts = {t for t in types if not pa.types.is_null(t)}
    if not ts:
        return pa.string()
    if len(ts) == 1:
        return ts.pop()
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in ts):
        return pa.float64()
    return pa.string()


def _read_csv(path: Path):
    import pyarrow.csv as pc

    # every column as the file spells it: 'inf' is a float, empty cells are nulls
    return pc.read_csv(path, convert_options=pc.ConvertOptions(strings_can_be_null=True))


def _table_file(command: str, name, job: Job) -> str:
    return TABLES[command][name].format(name=job.options.get("name", ""))


def combine(out: Path, command: str, jobs: list[Job], states: list[dict], grid_keys: list) -> dict:
    """Write ``sweep.parquet/csv`` and ``sweep.<table>.parquet/csv`` from the job folders,
    reading one job table at a time (two passes: the columns' types, then the rows), so memory
    holds one job's table, never all of them.  Returns {name: parquet path}."""
    import pyarrow as pa
    import pyarrow.csv as pc
    import pyarrow.parquet as pq

    from .store import publish

    paths = {}
    for name in TABLES[command]:
        files = [(j, s, out / "jobs" / j.key / _table_file(command, name, j)) for j, s in zip(jobs, states)]
        seen: dict = {}
        for j, s, p in files:                    # pass 1: the union of columns and their types
            if s["status"] == "done" and p.is_file():
                for f in _read_csv(p).schema:
                    seen.setdefault(f.name, []).append(f.type)
        if name is not None and not seen:
            continue
        grid_cols = [g if g not in seen else f"grid.{g}" for g in grid_keys]
        gtypes = [_grid_type([_grid_value(j.grid.get(g)) for j in jobs]) for g in grid_keys]
        schema = pa.schema([(JOB_COLUMN, pa.string()), *zip(grid_cols, gtypes), ("status", pa.string()),
                            ("error", pa.string()), *((c, _unify(ts)) for c, ts in seen.items())])
        stem = "sweep" if name is None else f"sweep.{name}"

        def write_both(pq_path, csv_path, files=files, schema=schema, name=name):
            with pq.ParquetWriter(pq_path, schema) as pw, pc.CSVWriter(csv_path, schema) as cw:
                for j, s, p in files:            # pass 2: one job's rows at a time
                    if s["status"] == "done" and p.is_file():
                        t = _read_csv(p)
                    elif name is None:
                        t = None                 # a failed or missing job: one row with its error
                    else:
                        continue
                    n = 1 if t is None else t.num_rows
                    cols = {JOB_COLUMN: [j.key] * n, "status": [s["status"]] * n,
                            "error": [s.get("error")] * n}
                    cols.update({gc: [_grid_value(j.grid.get(g))] * n for g, gc in zip(grid_keys, grid_cols)})
                    arrays = []
                    for f in schema:
                        if f.name in cols:
                            vals = cols[f.name]
                            arrays.append(pa.array([None if v is None else (str(v) if pa.types.is_string(f.type)
                                                                               else v) for v in vals], f.type))
                        elif t is not None and f.name in t.column_names:
                            arrays.append(t.column(f.name).cast(f.type))
                        else:
                            arrays.append(pa.nulls(n, f.type))
                    batch = pa.Table.from_arrays(arrays, schema=schema)
                    pw.write_table(batch)
                    cw.write_table(batch)

        box = {}
        # both files complete before either is renamed in (publish writes both, then renames)
        publish(out, {f"{stem}.parquet": lambda p: box.setdefault("pq", p),
                      f"{stem}.csv": lambda p: write_both(box["pq"], p)})
        paths[name] = out / f"{stem}.parquet"
    return paths


# ---------------------------------------------------------------------- the cluster
def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def _client(workers: int, scheduler: str | None):
    """A distributed Client: on ``scheduler`` (an address), else on a LocalCluster of ``workers``
    one-thread processes whose BLAS/Numba/torch are capped to one thread."""
    import logging

    for name in ("distributed", "distributed.worker", "distributed.nanny", "distributed.scheduler",
                 "distributed.core", "distributed.comm", "distributed.http.proxy", "bokeh", "tornado"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
        except (OSError, TimeoutError) as e:
            raise ValueError(f"scheduler {scheduler!r} is unreachable ({_one_line(e)[:120]}); start one with "
                             f"`dask scheduler` and `dask worker ADDRESS`, or run on a local cluster without it") from None
        try:
            yield client
        finally:
            client.close()
        return
    env = {name: "1" for name in THREAD_ENV}
    # the scheduler's HTTP server (the dashboard, with bokeh) on a free port: never clashes with another cluster
    dashboard = ":0"
    import dask

    # the workers' statistical profiler samples every thread's stack many times a second; without it
    # 2 workers went from 1.68x to 1.86-1.95x one worker (benchmarks/bench_sweep.py).  The workers take
    # the config as it is when they start, so the caller's own config is left as it was.
    try:
        with dask.config.set({"distributed.worker.profile.enabled": False}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=dashboard, env=env, silence_logs=logging.ERROR)
    except (RuntimeError, OSError, TimeoutError) as e:
        # e.g. a script run from stdin, which the spawned worker processes cannot re-import
        raise ValueError(f"could not start a local Dask cluster of {workers} workers ({_one_line(e)[:160]}); "
                         f"run from a file or a notebook, with the sweep under `if __name__ == \"__main__\":`") from None
    client = Client(cluster)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close(timeout=5)
        with contextlib.suppress(Exception):
            cluster.close(timeout=5)


def _check_out(out: Path, config: dict) -> None:
    from .store import check_results_dir

    check_results_dir(out)
    prev = out / "sweep.json"
    if prev.is_file():
        try:
            old = json.loads(prev.read_text()).get("config_hash")
        except (OSError, ValueError):
            old = None
        if old != config_hash(config):
            raise ValueError(f"output folder {str(out)!r} holds a sweep of a different config (sweep.json); "
                             f"give another out folder, or remove that one")
    elif out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise ValueError(f"output folder {str(out)!r} is not empty and holds no sweep; give an empty or new folder")


def run(config: dict, out, *, workers: int | None = None, scheduler: str | None = None, retry_failed: bool = False,
        progress=None, on_start=None) -> SweepResult:
    """``simkernel sweep`` as a library call: expand ``config`` (a dict as the TOML reads), run
    the jobs not yet done in ``out`` on Dask, write the combined tables and ``sweep.json``.

    workers: LocalCluster processes (default: the cores; ignored with ``scheduler``);
    scheduler: the address of a running Dask scheduler; retry_failed: rerun jobs that failed
    before.  progress(done, failed, running, total) is called as jobs finish; on_start(info) once
    the cluster is up (info: dashboard link, workers).  Bad config, output folder or scheduler:
    a one-line ValueError before any job runs or any file is written.  Ctrl-C:
    :class:`SweepInterrupted` with the result so far (every finished job kept)."""
    from .store import folder_lock

    t0 = time.perf_counter()
    out = Path(out)
    jobs = expand(config)
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    _check_out(out, config)
    states = {j.key: job_state(out / "jobs" / j.key) for j in jobs}
    todo = [j for j in jobs if states[j.key] is None or (states[j.key]["status"] == "failed" and retry_failed)]
    tick = progress or (lambda *_: None)
    info = {"dashboard": None, "workers": workers, "interrupted": False, "ran": set()}
    if not todo:
        with contextlib.suppress(ValueError, OSError, KeyError):
            previous = load(out)
            if [j["status"] for j in previous.jobs] == [states[j.key]["status"] for j in jobs] and \
                    all(Path(p).is_file() for p in previous.tables.values()) and previous.tables:
                # nothing ran and nothing changed: the tables on disk are this sweep's
                previous.jobs = [dict(r, ran=False) for r in previous.jobs]
                previous.meta = dict(previous.meta, elapsed_s=time.perf_counter() - t0)
                tick(*_counts(states.values()), 0, len(jobs))
                return previous
    # the lock sits beside the folder, so that a refused scheduler leaves no trace
    out.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, "sweep", beside=True):
        if todo:
            with _client(workers, scheduler) as client:     # an unreachable scheduler fails here, before any write
                out.mkdir(parents=True, exist_ok=True)
                if not (out / "sweep.json").is_file():
                    # claims the folder for this config at once, so that a sweep killed before its end resumes
                    _write_meta(out, config, jobs, [], {}, info, scheduler, t0)
                tick(*_counts(s for k, s in states.items() if k not in {j.key for j in todo}), 0, len(jobs))
                info["dashboard"] = _dashboard(client, scheduler)
                info["workers"] = len(client.nthreads()) or workers
                if on_start:
                    on_start(dict(info))
                try:
                    _execute(client, out, jobs, todo, states, info, tick)
                except KeyboardInterrupt:
                    info["interrupted"] = True
            # the cluster is closed: a job that a worker finished after Ctrl-C has its marker by now
            for j in todo:
                if j.key not in info["ran"]:
                    states[j.key] = job_state(out / "jobs" / j.key)
        else:
            out.mkdir(parents=True, exist_ok=True)
            tick(*_counts(states.values()), 0, len(jobs))
        result = _finish(config, out, jobs, states, info, scheduler, t0)
    if info["interrupted"]:
        raise SweepInterrupted(result)
    return result


def _counts(states) -> tuple[int, int]:
    states = [s for s in states if s]
    return sum(s["status"] == "done" for s in states), sum(s["status"] == "failed" for s in states)


def _execute(client, out: Path, jobs, todo, states: dict, info: dict, tick) -> None:
    """Submit ``todo`` and record each job's marker in ``states`` as it finishes."""
    from distributed import as_completed

    from .store import write_json

    n_threads = sum(client.nthreads().values()) or info["workers"]
    for j in todo:
        states[j.key] = None
    cwd = os.getcwd()
    futures = {client.submit(run_job, dict(j.spec(), cwd=cwd), str(out / "jobs" / j.key),
                             key=f"simkernel-job-{j.key}", pure=False): j for j in todo}
    pending = len(futures)
    try:
        for fut in as_completed(futures):
            j = futures[fut]
            try:
                states[j.key] = fut.result()
            except Exception as e:       # the worker died under it: recorded as failed
                states[j.key] = {"status": "failed", "key": j.key, "error": _one_line(e), "wall_s": None,
                                 "worker": None}
                write_json(out / "jobs" / j.key / FAILED, states[j.key])
            info["ran"].add(j.key)
            pending -= 1
            tick(*_counts(states.values()), min(pending, n_threads), len(jobs))
    except KeyboardInterrupt:
        for fut in futures:
            fut.cancel()
        raise


def _write_meta(out: Path, config: dict, jobs, rows, tables, info, scheduler, t0) -> dict:
    from .store import provenance, write_json

    meta = provenance(config, None, extra_packages=("dask", "distributed", "pyarrow"))
    meta.update(config_hash=config_hash(config), n_jobs=len(jobs), workers=info["workers"],
                scheduler=scheduler or "LocalCluster", dashboard=info["dashboard"], interrupted=info["interrupted"],
                elapsed_s=time.perf_counter() - t0, jobs=rows, tables={str(k): Path(v).name for k, v in tables.items()},
                job_seconds=sum(r["wall_s"] or 0 for r in rows if r["ran"]))
    write_json(out / "sweep.json", meta)
    return meta


def _finish(config, out: Path, jobs, states: dict, info: dict, scheduler, t0) -> SweepResult:
    """The combined tables and sweep.json from the job markers."""
    why = "not run (interrupted)" if info["interrupted"] else "not run"
    final = [states[j.key] or {"status": "missing", "error": why} for j in jobs]
    rows = [{"key": j.key, "folder": str(out / "jobs" / j.key), "grid": j.grid, "status": s["status"],
             "error": s.get("error"), "wall_s": s.get("wall_s"), "worker": s.get("worker"), "ran": j.key in info["ran"]}
            for j, s in zip(jobs, final)]
    grid_keys = list(dict.fromkeys(k for j in jobs for k in j.grid))
    tables = combine(out, config["command"], jobs, final, grid_keys)
    meta = _write_meta(out, config, jobs, rows, tables, info, scheduler, t0)
    return SweepResult(out, rows, meta, tables)


def _dashboard(client, scheduler) -> str | None:
    """The Dask dashboard's address, when there is one (a LocalCluster has one only with bokeh)."""
    import importlib.util

    if scheduler is None and importlib.util.find_spec("bokeh") is None:
        return None
    with contextlib.suppress(Exception):
        return client.dashboard_link or None
    return None


def load(out) -> SweepResult:
    """A finished (or partly finished) sweep folder as a :class:`SweepResult`, without running anything."""
    out = Path(out)
    p = out / "sweep.json"
    if not p.is_file():
        raise ValueError(f"{str(out)!r} holds no sweep (no sweep.json); run simkernel sweep CONFIG --out {out}")
    meta = json.loads(p.read_text())
    tables = {None if k == "None" else k: out / v for k, v in meta.get("tables", {}).items()}
    return SweepResult(out, meta["jobs"], meta, tables)


def read_config(path) -> dict:
    """A sweep config TOML as a dict; one-line ValueErrors for a missing file or bad TOML."""
    import tomllib

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read {str(path)!r} ({e.strerror or type(e).__name__})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid TOML: {' '.join(str(e).split())}") from None
