"""One sweep job, as a worker runs it: call the command's ``run()``, publish the result's files
and its derived tables into the job folder, then the done marker that records them.

A job folder ``<out>/jobs/<key>`` holds the command's own files (``result.write``), the tables of
``result.tables()`` that ``write`` does not produce (derived ones, e.g. converge's fits.csv), and
three markers of the sweep's own: ``_job.json`` (the call), then ``_done.json`` (wall time,
worker, the size and SHA-256 of every output, and the spec of every table: file, columns,
dtypes, so that ``sweep_tables.combine`` reads each back typed) or ``_failed.json`` (the one-line
error).  A job's failure is data: it is recorded and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from .commands import COMMANDS, run_function

DONE, FAILED, SPEC = "_done.json", "_failed.json", "_job.json"
#: a job folder's own bookkeeping, never one of its outputs
MARKERS = (DONE, FAILED, SPEC)
#: what a worker caps to one thread (inherited by the worker processes of a LocalCluster)
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

def canonical(obj) -> str:
    """``obj`` as compact JSON with sorted keys: the text that job keys and config hashes hash."""
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def one_line(e: BaseException) -> str:
    """An exception as one line (its type named unless it is a ValueError or TypeError, whose
    messages are written for users)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, (ValueError, TypeError)) else f"{type(e).__name__}: {text}"


def cap_threads() -> None:
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


def worker_name() -> str:
    """The Dask worker running this job (its name or address), else this process's id."""
    try:
        from distributed import get_worker
        w = get_worker()
        return str(w.name if w.name is not None else w.address)
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def write_tables(folder: Path, result, tables: dict) -> list[dict]:
    """Publish ``result`` into ``folder`` (``result.write``), then every table of ``tables``
    (``result.tables()``) whose file ``write`` did not produce (the derived ones).  Returns the tables' specs,
    each ``Table.spec()`` with its ``name`` (None: the main table), in ``tables``' order."""
    from .store import write_csv         # atomic: a killed job leaves no half-written table

    result.write(folder)
    for t in tables.values():
        if not (folder / t.file).is_file():
            write_csv(folder / t.file, t.rows, t.columns)
    return [dict(t.spec(), name=name) for name, t in tables.items()]


def _train_first(spec: dict, opts: dict, notes: list) -> None:
    """Train the job's models where missing and pass their folders to the command's run()."""
    from .train import train_world

    tr = dict(spec["train"])
    seeds = tr.pop("seeds", None)
    trained = [train_world(**dict(tr, seed=s) if seeds is not None else tr)
               for s in (seeds if seeds is not None else [None])]
    runs = [t.run_dir for t in trained]
    notes += [t.note for t in trained if getattr(t, "note", "")]
    cap_threads()           # torch is imported now
    command = spec["command"]
    arg = COMMANDS[command][1]
    opts[arg] = [str(r) for r in runs] if (seeds is not None and command == "measure") else str(runs[0])


def _clear(folder: Path) -> None:
    """Empty a job folder before its job runs."""
    import shutil

    for p in folder.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def run_job(spec: dict, folder: str) -> dict:
    """Run one job in this process: train its models where missing, call the command's ``run()``,
    publish its files and derived tables into ``folder`` (:func:`write_tables`), then the done
    marker with every output's record and every table's spec; on any exception write the failed
    marker with the one-line error instead.  Returns the marker."""
    from .store import outputs_record, write_json

    cap_threads()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if spec.get("cwd"):
        # relative paths in the options (run folders, world files, runs_dir) mean what they meant
        # where the sweep was started; a worker runs one job at a time, so changing it is safe
        os.chdir(spec["cwd"])
    state = job_state(folder)
    if state is not None and state.get("status") == "done" and state.get("key") == spec["key"] \
            and not verify_job(folder, state):
        # Dask may run a task twice when a worker dies (it reschedules what the dead worker held):
        # a second run of a job that already finished would clear its folder under the sweep
        # that is combining it, so a verified finished job is returned as it is
        return state
    t0 = time.perf_counter()
    worker = worker_name()
    # a job folder is this job's alone: what an earlier, damaged or interrupted run left is not
    # part of this run's outputs (the marker records exactly what this run wrote)
    _clear(folder)
    write_json(folder / SPEC, spec)
    command, opts = spec["command"], dict(spec["options"])
    notes = []
    try:
        if spec.get("train") is not None:
            _train_first(spec, opts, notes)
        result = run_function(command)(**opts)
        cap_threads()
        specs = write_tables(folder, result, result.tables())
        marker = {"status": "done", "key": spec["key"], "wall_s": time.perf_counter() - t0, "worker": worker,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "outputs": outputs_record(folder, skip=MARKERS), "tables": specs}
        if notes:
            marker["notes"] = notes
        write_json(folder / DONE, marker)
    except KeyboardInterrupt:
        raise
    except BaseException as e:          # a job's failure is data: recorded, and the sweep goes on
        marker = {"status": "failed", "key": spec["key"], "error": one_line(e), "type": type(e).__name__,
                  "wall_s": time.perf_counter() - t0, "worker": worker}
        write_json(folder / FAILED, marker)
    return marker


def table_specs(state: dict | None) -> dict:
    """``{name (None: the main table): spec}`` of a done marker ({} when it records none)."""
    specs = (state or {}).get("tables")
    if not isinstance(specs, list):
        return {}
    return {s.get("name"): s for s in specs if isinstance(s, dict) and "file" in s}


def verify_job(folder: Path, state: dict | None, hashes: bool = True) -> list[str]:
    """What is wrong with a finished job's folder (one short phrase each; [] when it is as its
    done marker recorded): every output file recorded in the marker present, of its recorded size
    and (``hashes``) SHA-256, and every table the marker specifies among them.  A marker that
    records no outputs or no table specs (written by an older sweep) cannot be trusted: one phrase
    says so, and the job is rerun.  Failed and unfinished jobs have nothing to verify: []."""
    from .store import check_outputs

    if not state or state.get("status") != "done":
        return []
    record = state.get("outputs")
    if not isinstance(record, dict):
        return ["its done marker records no outputs (a sweep from before verification), so they cannot be verified"]
    specs = table_specs(state)
    if None not in specs:
        return ["its done marker records no table specs (a sweep from before typed tables), so its tables "
                "cannot be read typed"]
    problems = check_outputs(folder, record, hashes=hashes)
    problems += [f"{s['file']} was never written" for s in specs.values() if s["file"] not in record]
    return problems


def job_state(folder: Path) -> dict | None:
    """A job folder's marker (done or failed), or None when it never finished."""
    for name in (DONE, FAILED):
        p = Path(folder) / name
        if p.is_file():
            with contextlib.suppress(OSError, ValueError):
                return json.loads(p.read_text())
    return None
