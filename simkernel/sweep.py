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
(``scheduler="tcp://host:8786"``).  The job function is ``sweep_job.run_job``: it calls the
library's ``run()``, the result's ``write()`` into the job folder and writes its derived tables,
then drops a done marker; a failing job leaves a failed marker with its one-line error and the
others go on.

Resuming: a rerun skips every job whose folder has its done marker, reruns missing ones (never
started, or stopped by Ctrl-C or a crash) and, with ``retry_failed``, failed ones (otherwise their
recorded error stands).  Finished jobs are never lost: each job's files are published atomically
before its marker.

Outputs in ``out``: ``sweep.parquet`` and ``sweep.csv`` (the main table: ``job``, the grid's
columns, ``status``, ``error``, then the job's own rows; a failed job is one row with its error),
``sweep.<table>.parquet/csv`` for a command's other tables (converge: floors, fits; measure:
pooled; phenomena: verdicts; regime: worlds), and ``sweep.json`` (config, versions, per job: status, wall time,
worker, error; the combined tables' dtypes).  No command is special here: a job writes whatever
its result's ``tables()`` lists (``results`` protocol) and records their specs in its done
marker; the combined tables are built from those specs, streaming the job tables one at a time
(``sweep_tables``).  The jobs run in ``sweep_job``; the Dask client lives in ``sweep_cluster``.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .commands import COMMANDS, WORLD_SEEDS_COMMANDS, run_function
from .sweep_cluster import client, counts, dashboard, default_workers, execute
from .sweep_job import DONE, job_state, one_line, verify_job
# re-exported: a sweep's markers, its job function and worker threads, under their old names
from .sweep_job import FAILED, MARKERS, SPEC, THREAD_ENV, canonical, run_job  # noqa: F401
from .sweep_tables import combine  # noqa: F401 (re-exported)
from .validate import did_you_mean

KNOWN_KEYS = {"description", "command", "options", "grid", "zip", "train"}


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



def config_hash(config: dict) -> str:
    """A sweep config's identity (what ``sweep.json`` records, and the check on an output
    folder that already holds a sweep); ``description`` does not count."""
    return hashlib.sha256(canonical({k: v for k, v in config.items() if k != "description"}).encode()).hexdigest()[:16]


def _allowed_options(command: str) -> set:
    """The run() keyword arguments a config may set (progress and outputs are the sweep's)."""
    params = set(inspect.signature(run_function(command)).parameters) - {"progress", "sample_progress"}
    if command == "train":
        from .train import TrainConfig
        params |= set(TrainConfig.__dataclass_fields__) - {"corpus"}
        params -= {"config"}
    if command in WORLD_SEEDS_COMMANDS:
        params.add("world_seed")
    params.discard("params")
    if command == "phenomena":
        from .phenomena import parameter_names
        params |= parameter_names()
    return params - {"worlds", "world_source", "world_labels"}


def train_allowed() -> set:
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
        raise ValueError(f"unknown top-level key {unknown[0]!r}{did_you_mean(unknown[0], KNOWN_KEYS)}; allowed: {', '.join(sorted(KNOWN_KEYS))}")
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
    t_allowed = train_allowed() if train is not None else set()
    keys = [k for k, _ in grid] + [k for g in groups for k, _ in g]
    dup = sorted({k for k in keys if keys.count(k) > 1} | (set(keys) & set(options)))
    if dup:
        raise ValueError(f"option {dup[0]!r} is set twice (in [options], [grid] or [zip]); give it once")
    for k in list(options) + keys:
        if k.startswith("train."):
            if train is None:
                raise ValueError(f"grid key {k!r} varies the [train] table, which the config does not have")
            if k[6:] not in t_allowed:
                raise ValueError(f"unknown training option {k[6:]!r}{did_you_mean(k[6:], t_allowed)}; allowed: {', '.join(sorted(t_allowed))}")
        elif k not in allowed:
            raise ValueError(f"unknown option {k!r} of {command}{did_you_mean(k, allowed)}; allowed: {', '.join(sorted(allowed))}")
        elif k == COMMANDS[command][1] and train is not None:
            raise ValueError(f"{k} is given by [train]; set one or the other")
    for k in (train or {}):
        if k not in t_allowed:
            raise ValueError(f"unknown training option {k!r}{did_you_mean(k, t_allowed)}; allowed: {', '.join(sorted(t_allowed))}")
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
        key = hashlib.sha256(canonical({"command": command, "options": opts, "train": tr}).encode()).hexdigest()[:12]
        if key in seen:
            continue
        seen.add(key)
        jobs.append(Job(key, values, opts, tr, command))
    return jobs


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
    #: jobs found done from an earlier call (not run by this one)
    earlier: int = 0

    def table(self, name: str | None = None):
        """The combined table ``name`` (None: the main one) as a pandas DataFrame, typed as its job
        tables declared their columns (``meta['table_dtypes']``: a numeric-looking label stays a
        string, an int column without missing values is int64); a missing value is None or NaN
        (a failed job's row, a column another job's table lacks)."""
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
               + f", {self.earlier} from earlier, {self.verified} finished jobs verified (size and sha256 of "
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


def _grid_text(grid: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in grid.items())


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
    milliseconds), and the marker must record its tables' specs (an older marker is rerun).  A
    damaged job is rerun; the combined tables are rewritten only when a job ran or they no longer
    match what sweep.json recorded of them."""
    from .store import folder_lock

    t0 = time.perf_counter()
    out = Path(out)
    jobs = expand(config)
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    _check_out(out, config)
    say = notify or (lambda _line: None)
    states, damaged = _found(out, jobs, say)
    todo = [j for j in jobs if states[j.key] is None or (states[j.key]["status"] == "failed" and retry_failed)]
    tick = progress or (lambda *_: None)
    info = {"dashboard": None, "workers": workers, "interrupted": False, "ran": set(),
            "verified": sum(1 for j in jobs if states[j.key] and states[j.key]["status"] == "done") + len(damaged),
            "earlier": earlier_count(states, todo), "damaged": damaged, "notify": say}
    if not todo:
        previous = _unchanged(out, jobs, states, info, say)
        if previous is not None:
            previous.meta = dict(previous.meta, elapsed_s=time.perf_counter() - t0)
            tick(*counts(states.values()), 0, len(jobs))
            return previous
    # the lock sits beside the folder, so that a refused scheduler leaves no trace
    out.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, "sweep", beside=True):
        for key in damaged:                  # no longer trusted, even if this call is interrupted
            (out / "jobs" / key / DONE).unlink(missing_ok=True)
        if todo:
            _run_todo(config, out, jobs, todo, states, info, tick, scheduler, on_start, t0)
        else:
            out.mkdir(parents=True, exist_ok=True)
            tick(*counts(states.values()), 0, len(jobs))
        result = _finish(config, out, jobs, states, info, scheduler, t0)
    if info["interrupted"]:
        raise SweepInterrupted(result)
    return result


def _found(out: Path, jobs, say) -> tuple[dict, dict]:
    """({job key: its marker, or None when it must run}, {job key: problems}): the markers in
    ``out``, each finished job verified; a damaged one must run again (``say`` tells)."""
    states = {j.key: job_state(out / "jobs" / j.key) for j in jobs}
    damaged = {}
    for j in jobs:
        if states[j.key] and states[j.key]["status"] == "done":
            problems = verify_job(out / "jobs" / j.key, states[j.key])
            if problems:
                damaged[j.key] = problems
                states[j.key] = None
                say(f"job {j.key} ({_grid_text(j.grid)}): {'; '.join(problems)}, rerunning")
    return states, damaged


def earlier_count(states: dict, todo) -> int:
    """The jobs found done from an earlier call and not run again: ``states`` ({job key: marker
    or None}) before this call runs anything, ``todo`` the jobs it runs."""
    again = {j.key for j in todo}
    return sum(1 for k, s in states.items() if s and s.get("status") == "done" and k not in again)


def _unchanged(out: Path, jobs, states: dict, info: dict, say):
    """The sweep as ``out`` holds it, when nothing is to run and every job and combined table is
    as sweep.json recorded (its tables are then this sweep's), else None."""
    with contextlib.suppress(ValueError, OSError, KeyError):
        previous = load(out)
        stale = _tables_differ(previous)
        if [j["status"] for j in previous.jobs] == [states[j.key]["status"] for j in jobs] and not stale:
            previous.jobs = [dict(r, ran=False) for r in previous.jobs]
            previous.verified, previous.earlier, previous.written = info["verified"], info["earlier"], False
            return previous
        if stale:
            say(f"the combined tables do not match sweep.json ({'; '.join(stale)}): rewriting them")
    return None


def _run_todo(config, out: Path, jobs, todo, states: dict, info: dict, tick, scheduler, on_start, t0) -> None:
    """Run ``todo`` on a Dask client, recording each job's marker in ``states``; Ctrl-C sets
    ``info['interrupted']`` and keeps what finished."""
    before = {j.key: states[j.key] for j in todo}      # a failed job retried has its old marker until it runs
    with client(info["workers"], scheduler) as c:     # an unreachable scheduler fails here, before any write
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "sweep.json").is_file():
            # claims the folder for this config at once, so that a sweep killed before its end resumes
            _write_meta(out, config, jobs, [], {}, info, scheduler, t0)
        tick(*counts(s for k, s in states.items() if k not in {j.key for j in todo}), 0, len(jobs))
        info["dashboard"] = dashboard(c, scheduler)
        info["workers"] = len(c.nthreads()) or info["workers"]
        if on_start:
            on_start(dict(info))
        try:
            execute(c, out, jobs, todo, states, info, tick)
        except KeyboardInterrupt:
            info["interrupted"] = True
    # the cluster is closed: a job that a worker finished after Ctrl-C has its marker by now, and
    # this call ran it
    for j in todo:
        if j.key not in info["ran"]:
            states[j.key] = job_state(out / "jobs" / j.key)
            if states[j.key] is not None and states[j.key] != before[j.key]:
                info["ran"].add(j.key)


def _write_meta(out: Path, config: dict, jobs, rows, tables, info, scheduler, t0, dtypes=None) -> dict:
    from .store import file_record, provenance, write_json

    meta = provenance(config, None, extra_packages=("dask", "distributed", "pyarrow"))
    # what the combined tables were when written, so that a later call can tell they are unchanged
    files = {Path(q).name: file_record(q) for p in tables.values() for q in (Path(p), Path(p).with_suffix(".csv"))
             if Path(q).is_file()}
    meta.update(config_hash=config_hash(config), n_jobs=len(jobs), workers=info["workers"],
                scheduler=scheduler or "LocalCluster", dashboard=info["dashboard"], interrupted=info["interrupted"],
                elapsed_s=time.perf_counter() - t0, jobs=rows, tables={str(k): Path(v).name for k, v in tables.items()},
                table_files=files, job_seconds=sum(r["wall_s"] or 0 for r in rows if r["ran"]),
                table_dtypes={str(k): v for k, v in (dtypes or {}).items()})
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
    dtypes: dict = {}
    tables = combine(out, config["command"], jobs, final, grid_keys, damaged=unreadable, dtypes=dtypes)
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
    meta = _write_meta(out, config, jobs, rows, tables, info, scheduler, t0, dtypes)
    return SweepResult(out, rows, meta, tables, verified=info.get("verified", 0), damaged=damaged, written=True,
                       earlier=info.get("earlier", 0))


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
            bad = verify_job(folder, state)
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
        raise ValueError(f"{str(p)!r} cannot be read ({one_line(e)[:120]}): the sweep's record is damaged; "
                         f"rerun the sweep to rebuild it") from None
    tables = {None if k == "None" else k: out / v for k, v in meta.get("tables", {}).items()}
    return SweepResult(out, meta["jobs"], meta, tables, earlier=sum(j.get("status") == "done" for j in meta["jobs"]))


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
