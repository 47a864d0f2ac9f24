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
#: a job folder's own bookkeeping, never one of its outputs
MARKERS = (DONE, FAILED, SPEC)
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
    from .store import outputs_record, write_json

    _cap_threads()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if spec.get("cwd"):
        # relative paths in the options (run folders, world files, runs_dir) mean what they meant
        # where the sweep was started; a worker runs one job at a time, so changing it is safe
        os.chdir(spec["cwd"])
    t0 = time.perf_counter()
    worker = _worker_name()
    # a job folder is this job's alone: what an earlier, damaged or interrupted run left is not
    # part of this run's outputs (the marker records exactly what this run wrote)
    _clear(folder)
    write_json(folder / SPEC, spec)
    command, opts = spec["command"], dict(spec["options"])
    notes = []
    try:
        if spec.get("train") is not None:
            from .train import train_world
            tr = dict(spec["train"])
            seeds = tr.pop("seeds", None)
            trained = [train_world(**dict(tr, seed=s) if seeds is not None else tr)
                       for s in (seeds if seeds is not None else [None])]
            runs = [t.run_dir for t in trained]
            notes += [t.note for t in trained if getattr(t, "note", "")]
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
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "outputs": outputs_record(folder, skip=MARKERS)}
        if notes:
            marker["notes"] = notes
        write_json(folder / DONE, marker)
    except KeyboardInterrupt:
        raise
    except BaseException as e:          # a job's failure is data: recorded, and the sweep goes on
        marker = {"status": "failed", "key": spec["key"], "error": _one_line(e), "type": type(e).__name__,
                  "wall_s": time.perf_counter() - t0, "worker": worker}
        write_json(folder / FAILED, marker)
    return marker


def _clear(folder: Path) -> None:
    """Empty a job folder before its job runs."""
    import shutil

    for p in folder.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def verify_job(folder: Path, state: dict | None, command: str, job: Job | None = None,
               hashes: bool = True) -> list[str]:
    """What is wrong with a finished job's folder (one short phrase each; [] when it is as its
    done marker recorded): every output file recorded in the marker present, of its recorded size
    and (``hashes``) SHA-256, and the command's tables among them.  A marker that records no
    outputs (written before markers did) cannot be trusted: one phrase says so.  Failed and
    unfinished jobs have nothing to verify: []."""
    from .store import check_outputs

    if not state or state.get("status") != "done":
        return []
    record = state.get("outputs")
    if not isinstance(record, dict):
        return ["its done marker records no outputs (a sweep from before verification), so they cannot be verified"]
    problems = check_outputs(folder, record, hashes=hashes)
    if job is not None:
        for name in TABLES[command]:
            f = _table_file(command, name, job)
            if name is None and f not in record:
                problems.append(f"{f} was never written")
    return problems


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
    #: finished jobs whose outputs this call checked against their markers (size and SHA-256)
    verified: int = 0
    #: {job key: [problems]}: finished jobs found damaged, rerun by this call (or, for tables that
    #: could not be read when combined, entered as failed)
    damaged: dict = field(default_factory=dict)
    #: whether this call wrote the combined tables (False: they were verified and left as they were)
    written: bool = True

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
        """What ``simkernel sweep`` prints: the counts, what this call did (jobs run, finished jobs
        verified, jobs rerun because damaged), the time, each damaged and each failed job."""
        c, m = self.counts(), self.meta
        ran = sum(j["ran"] for j in self.jobs)
        rerun = sum(1 for j in self.jobs if j["ran"] and j["key"] in self.damaged)
        n_w = m.get("workers", 0)
        out = [f"{len(self.jobs)} jobs of {m['config']['command']}: {c['done']} done, {c['failed']} failed"
               + (f", {c['missing']} not run" if c["missing"] else "")
               + f"; {ran} run now" + (f" ({rerun} of them because their outputs were damaged)" if rerun else "")
               + (f" on {n_w} worker{'s' if n_w != 1 else ''}" if ran else "")
               + f", {len(self.jobs) - ran} from earlier, {self.verified} finished jobs verified (size and sha256 of "
                 f"every output) ({m['elapsed_s']:.1f} s)"]
        by_key = {j["key"]: j for j in self.jobs}
        for key, problems in self.damaged.items():
            j = by_key.get(key, {})
            done = "rerun" if j.get("ran") else "entered as failed"
            out.append(f"  damaged {key} ({_grid_text(j.get('grid', {}))}): {'; '.join(problems)}; {done}")
        for j in self.jobs:
            if j["status"] == "failed" and j["key"] not in self.damaged:
                out.append(f"  failed {j['key']} ({_grid_text(j['grid'])}): {j['error']}")
        return out

    def files(self) -> list[Path]:
        """The combined tables (parquet and csv) and sweep.json."""
        return [q for p in self.tables.values() for q in (Path(p), Path(p).with_suffix(".csv"))] + [
            Path(self.out) / "sweep.json"]

    def write(self, out=None) -> list[Path]:
        """The tables and sweep.json are written by :func:`run` itself (they are the sweep's
        state); this returns the paths it wrote ([] when it left them as they were), for the same
        interface as the other results."""
        return self.files() if self.written else []


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


def _grid_text(grid: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in grid.items())


def combine(out: Path, command: str, jobs: list[Job], states: list[dict], grid_keys: list,
            damaged: dict | None = None) -> dict:
    """Write ``sweep.parquet/csv`` and ``sweep.<table>.parquet/csv`` from the job folders,
    reading one job table at a time (two passes: the columns' types, then the rows), so memory
    holds one job's table, never all of them.  Returns {name: parquet path}.

    A done job whose table cannot be read, or holds another number of rows than its marker
    recorded, never becomes an empty row or a global parse error: it is entered in ``damaged``
    ({job key: 'path: what is wrong'}), stands in the main table as one row with status 'failed'
    and that error, and the other jobs' rows are written."""
    import pyarrow as pa
    import pyarrow.csv as pc
    import pyarrow.parquet as pq

    from .store import publish

    damaged = {} if damaged is None else damaged
    files_of = {name: [(j, s, out / "jobs" / j.key / _table_file(command, name, j)) for j, s in zip(jobs, states)]
                for name in TABLES[command]}
    seen_of: dict = {}
    # pass 1, over every table before any is written: the union of columns and their types, and
    # the damaged jobs (a job damaged in any of its tables is out of all of them)
    for name, files in files_of.items():
        seen = seen_of.setdefault(name, {})
        for j, s, p in files:
            if s["status"] != "done" or j.key in damaged:
                continue
            if not p.is_file():
                if name is None:
                    damaged[j.key] = f"{p}: missing"
                continue
            try:
                t = _read_csv(p)
            except Exception as e:               # noqa: BLE001 (pyarrow raises its own errors)
                damaged[j.key] = f"{p}: cannot be read ({_one_line(e)[:200]})"
                continue
            rows = ((s.get("outputs") or {}).get(p.name) or {}).get("rows")
            if rows is not None and rows != t.num_rows:
                damaged[j.key] = f"{p}: holds {t.num_rows} rows, its marker recorded {rows}"
                continue
            for f in t.schema:
                seen.setdefault(f.name, []).append((j.key, f.type))
    paths = {}
    for name, files in files_of.items():
        seen = {c: [t for k, t in ts if k not in damaged] for c, ts in seen_of[name].items()}
        seen = {c: ts for c, ts in seen.items() if ts}
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
                    bad = damaged.get(j.key)
                    if s["status"] == "done" and p.is_file() and bad is None:
                        t = _read_csv(p)
                    elif name is None:
                        t = None                 # a failed, missing or damaged job: one row with its error
                    else:
                        continue
                    n = 1 if t is None else t.num_rows
                    status, error = ("failed", f"damaged: {bad}") if bad else (s["status"], s.get("error"))
                    cols = {JOB_COLUMN: [j.key] * n, "status": [status] * n, "error": [error] * n}
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
        progress=None, on_start=None, notify=None) -> SweepResult:
    """``simkernel sweep`` as a library call: expand ``config`` (a dict as the TOML reads), run
    the jobs not yet done in ``out`` on Dask, write the combined tables and ``sweep.json``.

    workers: LocalCluster processes (default: the cores; ignored with ``scheduler``);
    scheduler: the address of a running Dask scheduler; retry_failed: rerun jobs that failed
    before.  progress(done, failed, running, total) is called as jobs finish; on_start(info) once
    the cluster is up (info: dashboard link, workers); notify(line) with one line per finished job
    found damaged (it is rerun) and per job table that cannot be combined.  Bad config, output
    folder or scheduler: a one-line ValueError before any job runs or any file is written.
    Ctrl-C: :class:`SweepInterrupted` with the result so far (every finished job kept).

    Every finished job is verified before it is trusted: each output its done marker recorded
    must be there with its recorded size and SHA-256 (job folders hold tables and figures:
    milliseconds).  A damaged job is rerun; the combined tables are rewritten only when a job ran
    or they no longer match what sweep.json recorded of them."""
    from .store import folder_lock

    t0 = time.perf_counter()
    out = Path(out)
    jobs = expand(config)
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    _check_out(out, config)
    say = notify or (lambda _line: None)
    command = config["command"]
    states = {j.key: job_state(out / "jobs" / j.key) for j in jobs}
    damaged = {}
    verified = 0
    for j in jobs:
        if states[j.key] and states[j.key]["status"] == "done":
            verified += 1
            problems = verify_job(out / "jobs" / j.key, states[j.key], command, j)
            if problems:
                damaged[j.key] = problems
                states[j.key] = None
                say(f"job {j.key} ({_grid_text(j.grid)}): {'; '.join(problems)}, rerunning")
    todo = [j for j in jobs if states[j.key] is None or (states[j.key]["status"] == "failed" and retry_failed)]
    tick = progress or (lambda *_: None)
    info = {"dashboard": None, "workers": workers, "interrupted": False, "ran": set(), "verified": verified,
            "damaged": damaged, "notify": say}
    if not todo:
        with contextlib.suppress(ValueError, OSError, KeyError):
            previous = load(out)
            stale = _tables_differ(previous)
            if [j["status"] for j in previous.jobs] == [states[j.key]["status"] for j in jobs] and not stale:
                # nothing ran and every job and table is as recorded: the tables on disk are this sweep's
                previous.jobs = [dict(r, ran=False) for r in previous.jobs]
                previous.meta = dict(previous.meta, elapsed_s=time.perf_counter() - t0)
                previous.verified, previous.written = verified, False
                tick(*_counts(states.values()), 0, len(jobs))
                return previous
            if stale:
                say(f"the combined tables do not match sweep.json ({'; '.join(stale)}): rewriting them")
    # the lock sits beside the folder, so that a refused scheduler leaves no trace
    out.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, "sweep", beside=True):
        for key in damaged:                  # no longer trusted, even if this call is interrupted
            (out / "jobs" / key / DONE).unlink(missing_ok=True)
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
    from .store import file_record, provenance, write_json

    meta = provenance(config, None, extra_packages=("dask", "distributed", "pyarrow"))
    # what the combined tables were when written, so that a later call can tell they are unchanged
    files = {Path(q).name: file_record(q) for p in tables.values() for q in (Path(p), Path(p).with_suffix(".csv"))
             if Path(q).is_file()}
    meta.update(config_hash=config_hash(config), n_jobs=len(jobs), workers=info["workers"],
                scheduler=scheduler or "LocalCluster", dashboard=info["dashboard"], interrupted=info["interrupted"],
                elapsed_s=time.perf_counter() - t0, jobs=rows, tables={str(k): Path(v).name for k, v in tables.items()},
                table_files=files, job_seconds=sum(r["wall_s"] or 0 for r in rows if r["ran"]))
    write_json(out / "sweep.json", meta)
    return meta


def _tables_differ(result: SweepResult) -> list[str]:
    """How a sweep's combined tables differ from what its sweep.json recorded of them (one
    phrase each; a sweep.json from before the records were kept: 'not recorded')."""
    from .store import check_outputs

    if not result.tables:
        return ["no combined tables"]
    record = result.meta.get("table_files")
    if not isinstance(record, dict) or not record:
        return ["their sizes and hashes were not recorded"]
    names = {Path(q).name for p in result.tables.values() for q in (Path(p), Path(p).with_suffix(".csv"))}
    missing = sorted(names - set(record))
    return [f"{n} not recorded" for n in missing] + check_outputs(result.out, record)


def _finish(config, out: Path, jobs, states: dict, info: dict, scheduler, t0) -> SweepResult:
    """The combined tables and sweep.json from the job markers.  A job table that cannot be
    combined makes its job failed (its done marker removed, so a rerun runs it again)."""
    why = "not run (interrupted)" if info["interrupted"] else "not run"
    final = [states[j.key] or {"status": "missing", "error": why} for j in jobs]
    grid_keys = list(dict.fromkeys(k for j in jobs for k in j.grid))
    unreadable: dict = {}
    tables = combine(out, config["command"], jobs, final, grid_keys, damaged=unreadable)
    damaged = dict(info.get("damaged") or {})
    for j, s in zip(jobs, final):
        if j.key in unreadable:
            s.update(status="failed", error=f"damaged: {unreadable[j.key]}")
            (out / "jobs" / j.key / DONE).unlink(missing_ok=True)
            damaged.setdefault(j.key, []).append(unreadable[j.key])
            info.get("notify", lambda _l: None)(f"job {j.key} ({_grid_text(j.grid)}): {unreadable[j.key]}; entered as "
                                                f"failed (a rerun runs it again)")
    rows = [{"key": j.key, "folder": str(out / "jobs" / j.key), "grid": j.grid, "status": s["status"],
             "error": s.get("error"), "wall_s": s.get("wall_s"), "worker": s.get("worker"), "ran": j.key in info["ran"]}
            for j, s in zip(jobs, final)]
    meta = _write_meta(out, config, jobs, rows, tables, info, scheduler, t0)
    return SweepResult(out, rows, meta, tables, verified=info.get("verified", 0), damaged=damaged, written=True)


def _dashboard(client, scheduler) -> str | None:
    """The Dask dashboard's address, when there is one (a LocalCluster has one only with bokeh)."""
    import importlib.util

    if scheduler is None and importlib.util.find_spec("bokeh") is None:
        return None
    with contextlib.suppress(Exception):
        return client.dashboard_link or None
    return None


@dataclass
class Verification:
    """What :func:`verify` found: ``jobs`` in the config, ``verified`` finished jobs whose outputs
    were checked, ``problems`` [(job key or '' for the combined tables, kind, one line)] with kind
    'failed' (the job ran and recorded its error: its rows are an error row), 'not run',
    'damaged' (outputs missing or not as recorded) or 'tables'."""

    out: Path
    jobs: int
    verified: int
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def of(self, *kinds) -> list:
        """The problems of these kinds."""
        return [p for p in self.problems if p[1] in kinds]

    def summary_lines(self) -> list[str]:
        """One line per problem, then the count."""
        out = [line for _key, _kind, line in self.problems]
        out.append(f"{self.out}: {self.jobs} jobs, {self.verified} finished jobs verified (size and sha256 of every "
                   f"output), combined tables checked: " + ("all as recorded" if self.ok else
                                                            f"{len(self.problems)} problem"
                                                            f"{'s' if len(self.problems) != 1 else ''}"))
        return out


def verify(out) -> Verification:
    """Check a sweep folder without running anything: every job of its config finished (a
    failed or never-run job is a problem: the tables miss its rows), every finished job's outputs
    as its done marker recorded them (size and SHA-256), and the combined tables as sweep.json
    recorded them.  One-line ValueError when the folder holds no sweep."""
    res = load(out)
    config = res.meta.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{str(out)!r}: sweep.json holds no config; it was not written by simkernel sweep")
    command = config["command"]
    jobs = expand(config)
    problems, verified = [], 0
    for j in jobs:
        folder = Path(out) / "jobs" / j.key
        state = job_state(folder)
        where = f"job {j.key} ({_grid_text(j.grid)})"
        if state is None:
            problems.append((j.key, "not run", f"{where}: not run ({folder} holds no marker)"))
        elif state["status"] != "done":
            problems.append((j.key, "failed", f"{where}: failed: {state.get('error')}"))
        else:
            verified += 1
            bad = verify_job(folder, state, command, j)
            if bad:
                problems.append((j.key, "damaged", f"{where}: {'; '.join(bad)} ({folder})"))
    stale = _tables_differ(res)
    if stale:
        problems.append(("", "tables", f"combined tables: {'; '.join(stale)}"))
    return Verification(Path(out), len(jobs), verified, problems)


def load(out) -> SweepResult:
    """A finished (or partly finished) sweep folder as a :class:`SweepResult`, without running anything."""
    out = Path(out)
    p = out / "sweep.json"
    if not p.is_file():
        raise ValueError(f"{str(out)!r} holds no sweep (no sweep.json); run simkernel sweep CONFIG --out {out}")
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{str(p)!r} cannot be read ({_one_line(e)[:120]}): the sweep's record is damaged; "
                         f"rerun the sweep to rebuild it") from None
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
