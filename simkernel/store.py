"""File formats: corpora, prompt batches, JSON and CSV results, provenance.

Every writer is atomic: it writes a temp file (or folder) beside the target and renames it
into place, so a crash, a Ctrl-C or a bad value never leaves a half-written result, and an
existing result is only replaced by a complete one.  Every result carries its provenance:
the config and seed that made it and the package versions (``provenance``).

This module is the one place that writes files: ``atomic_write`` (one file), ``publish`` (several
files into a folder together), ``publish_folder`` (a whole folder: corpora, checkpoints), with
the hashes (``sha256_file``) and output-folder checks every command uses.
It imports nothing of the simulator at load time (``world`` and ``sampling`` import it), does no
printing and never imports torch.  Errors are one-line ``ValueError`` s naming the path.

Corpus folder (``write_corpus`` / ``read_corpus``)::

    tokens.npy    (N,) uint8/16/32 (``sampling.token_dtype(V)``): all documents back to back
    offsets.npy   (n_docs + 1,) int64: document d is tokens[offsets[d]:offsets[d + 1]]
    concepts.npy  (n_docs,) int64: the concept that generated each document
    world.npz     the world the documents were drawn from (``World.load`` reads it)
    meta.json     provenance (config, seed, versions, created) and a summary of the world

Prompt file (``write_prompts`` / ``read_prompts``): one ``.npz`` holding every field of
:class:`simkernel.sampling.Prompts` plus ``meta`` (a JSON string of the provenance).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import platform
import shutil
import tempfile
from dataclasses import fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import hashlib
from typing import TYPE_CHECKING

import numpy as np


if TYPE_CHECKING:                     # types only: store is a leaf that world and sampling import
    from .sampling import Prompts
    from .world import World

#: Packages whose versions every result records.
VERSIONED = ("simkernel", "numpy", "scipy", "numba")

CORPUS_FILES = ("tokens.npy", "offsets.npy", "concepts.npy", "meta.json")

#: Documents per chunk when writing a corpus: about this many tokens at a time.
CHUNK_TOKENS = 1 << 21


# ---------------------------------------------------------------------- leaf helpers
def sha256_file(path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def csv_rows(path) -> int:
    """The number of records of a CSV file with a header (quoted newlines inside a field count
    once), read with the csv module."""
    with open(path, newline="") as f:
        return max(sum(1 for _ in csv.reader(f)) - 1, 0)


def file_record(path) -> dict:
    """What a marker keeps of one output file: {'size': bytes, 'sha256': hex} and, for a .csv,
    'rows' (records below the header)."""
    path = Path(path)
    rec = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    if path.suffix == ".csv":
        with contextlib.suppress(OSError, csv.Error, UnicodeDecodeError):
            rec["rows"] = csv_rows(path)
    return rec


def outputs_record(folder, skip=()) -> dict:
    """{relative path (posix): :func:`file_record`} of every regular file below ``folder``,
    sorted, leaving out the names in ``skip`` and hidden files (locks, temp files)."""
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or p.is_symlink() or rel.as_posix() in skip or any(s.startswith(".") for s in rel.parts):
            continue
        out[rel.as_posix()] = file_record(p)
    return out


def check_outputs(folder, record: dict, hashes: bool = True) -> list[str]:
    """The ways the files below ``folder`` differ from ``record`` (:func:`outputs_record`), one
    short phrase each ('convergence.csv missing', 'floors.csv is 812 bytes, recorded 9,045',
    'fits.csv does not match its recorded sha256'); [] when every file is as recorded.  Sizes are
    always compared; ``hashes`` also compares the SHA-256 of every file whose size matches."""
    folder = Path(folder)
    problems = []
    for rel, rec in record.items():
        p = folder / rel
        if not p.is_file():
            problems.append(f"{rel} missing")
            continue
        size = p.stat().st_size
        if size != rec.get("size"):
            problems.append(f"{rel} is {size:,} bytes, recorded {rec.get('size', 0):,}")
        elif hashes and sha256_file(p) != rec.get("sha256"):
            problems.append(f"{rel} does not match its recorded sha256")
    return problems


def json_default(o):
    """json.dumps ``default=`` for numpy scalars and arrays."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def public_mode(path) -> None:
    """Give a file or folder made through ``tempfile`` (mode 0600 / 0700) the permissions an
    ordinary ``open``/``mkdir`` would have given it (0666 / 0777 less the umask)."""
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


def atomic_write(path, write) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path`` and rename it into place, so a
    crash or a bad value never leaves a half-written ``path``; the file gets ordinary
    permissions."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise ValueError(f"cannot write {str(path)!r}: {str(parent)!r} {what}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        public_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _existing_ancestor(path: Path) -> Path:
    probe = Path(path)
    while not probe.exists():
        probe = probe.parent
    return probe


def publish(out, writers: dict, copy_to=None, remove=()) -> list[Path]:
    """Write every file through ``writers`` ({name: fn(path)}) into a temporary folder beside
    ``out``, then move each into ``out`` (created if needed; and copy into ``copy_to``): a failed
    or interrupted command leaves no half-written file, and earlier results are replaced only
    once every new file is complete.  Each name in ``remove`` that this call did not write is
    deleted from ``out`` (and ``copy_to``): e.g. the probes.png of an earlier run with probes,
    which would otherwise sit beside tables without probes.  Returns the paths written."""
    out = Path(out)
    copy_to = Path(copy_to) if copy_to is not None else None
    tmp = Path(tempfile.mkdtemp(prefix=".simkernel.", suffix=".tmp", dir=_existing_ancestor(out)))
    written = []
    try:
        for name, write in writers.items():
            write(tmp / name)
        out.mkdir(parents=True, exist_ok=True)
        if copy_to is not None:
            copy_to.mkdir(parents=True, exist_ok=True)
        for name in writers:
            if not (tmp / name).exists():
                continue
            public_mode(tmp / name)
            if copy_to is not None:
                shutil.copyfile(tmp / name, copy_to / name)
                written.append(copy_to / name)
            os.replace(tmp / name, out / name)
            written.append(out / name)
        done = {p.name for p in written}
        for name in set(remove) - done:
            for folder in (out, copy_to):
                if folder is not None:
                    (folder / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written


def publish_folder(target, build) -> Path:
    """Build a whole folder with ``build(tmp_path)`` in a temporary folder beside ``target``,
    then rename it into place; an existing ``target`` is renamed away first and deleted only
    once the new one is in place (and put back if the rename fails).  For corpora and
    checkpoints, whose files only make sense together."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        build(tmp)
        public_mode(tmp)
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


class FolderBusy(ValueError):
    """Another process holds the folder's lock (a ValueError: one line for callers to show)."""

    def __init__(self, folder: Path, pid: int | None, what: str = "run"):
        self.folder, self.pid = Path(folder), pid
        who = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(f"{what} folder {str(folder)!r} is in use by another process ({who}); wait for it "
                         f"to finish or stop that process (its lock goes when it exits)")


LOCK = ".lock"


@contextlib.contextmanager
def folder_lock(folder, what: str = "run", beside: bool = False):
    """Hold an exclusive, non-blocking lock on ``folder`` (``flock`` on ``folder/.lock``, which
    holds the holder's PID) for the ``with`` block; :class:`FolderBusy` names the PID of the
    process that holds it.  Yields the lock file's path.  ``beside``: lock a folder that may not
    exist yet (a corpus being built elsewhere and renamed in) through ``.<name>.lock`` in its
    parent folder.

    flock belongs to the open file, so the OS drops it when the holder exits in any way
    (Ctrl-C, crash, kill -9): a lock never outlives its process, and the file never needs
    removing (removing it while held would let a second process in).  Any two opens conflict,
    even within one process.  Local file systems only (flock over NFS is not reliable)."""
    import fcntl      # POSIX only; imported here so that the module still imports elsewhere

    folder = Path(folder)
    path = folder.parent / f".{folder.name}{LOCK}" if beside else folder / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise FolderBusy(folder, int(text) if text.isdigit() else None, what) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)      # no stale PID for the next reader
            if beside:
                # a lock beside its folder would litter the parent: removed while still held, so a
                # process that creates a new one next sees the finished folder
                with contextlib.suppress(OSError):
                    os.unlink(path)
    finally:
        os.close(fd)                 # releases the lock


def check_results_dir(path, name: str = "output folder") -> Path:
    """A results folder that may not exist yet: it must not be a file, and its nearest existing
    ancestor must be a writable folder (it is created only when results exist)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} {str(path)!r} exists and is not a folder")
    probe = _existing_ancestor(path)
    if not probe.is_dir():
        raise ValueError(f"cannot create {str(path)!r}: {str(probe)!r} is not a folder")
    check_writable(probe, path)
    return path


def check_out_file(path, suffix: str = ".npz") -> Path:
    """An output file: right suffix, not a folder, parent folder exists and is writable."""
    path = Path(path)
    if path.suffix != suffix:
        raise ValueError(f"output file {str(path)!r} must end in {suffix}")
    if path.is_dir():
        raise ValueError(f"output {str(path)!r} is a folder; expected a {suffix} file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        why = "is not a folder" if parent.exists() else "does not exist"
        raise ValueError(f"cannot write {str(path)!r}: folder {str(parent)!r} {why}")
    check_writable(parent, path)
    return path


# ---------------------------------------------------------------------- provenance
def versions(*extra: str) -> dict:
    """Versions of python, of the packages results depend on (``VERSIONED``) and of the
    ``extra`` packages a command uses (e.g. torch, matplotlib); None if not installed.  Read
    from package metadata, so nothing heavy is imported."""
    out = {"python": platform.python_version()}
    for name in (*VERSIONED, *extra):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(config: dict, seed, extra_packages=()) -> dict:
    """What made a result: ``{"config", "seed", "versions", "created"}`` (created: UTC ISO time;
    versions: :func:`versions` of ``extra_packages`` too)."""
    return {"config": config, "seed": seed, "versions": versions(*extra_packages),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def save_world(world: "World", out, source: dict, seed) -> Path:
    """Save ``world`` to the .npz ``out`` (atomically, ordinary permissions) with the provenance
    of this save: ``source`` (how it was made or where it was read) and ``seed``; a loaded
    world's own provenance is kept as ``source_provenance``."""
    import dataclasses

    out = check_out_file(out, ".npz")
    meta = {k: v for k, v in world.meta.items() if k != "provenance"}
    config = {"command": "world", "world": source}
    if "provenance" in world.meta:
        config["source_provenance"] = world.meta["provenance"]
    meta["provenance"] = provenance(config, seed)
    dataclasses.replace(world, meta=meta).save(out)
    public_mode(out)
    return out


def world_summary(world: "World") -> dict:
    """The shape of a world and how it was made (its ``meta``: preset, seed, options)."""
    return {"meta": world.meta, "K": world.n_concepts, "S": world.n_states, "V": world.n_symbols,
            "delimiter": world.delimiter, "restart": world.restart,
            "labels": [int(x) for x in world.labels]}


# ---------------------------------------------------------------------- JSON / CSV
def json_text(obj) -> str:
    """``obj`` as indented JSON text with a final newline (numpy values converted; NaN allowed)."""
    return json.dumps(obj, indent=2, default=json_default, allow_nan=True) + "\n"


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically.  numpy scalars and arrays are converted."""
    path = Path(path)
    text = json_text(obj).encode()
    atomic_write(path, lambda f: f.write(text))
    return path


def write_csv(path, rows, columns) -> Path:
    """Write a list of dicts as CSV with the given column order, atomically."""
    path = Path(path)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({c: row[c] for c in columns})
    data = buf.getvalue().encode()
    atomic_write(path, lambda f: f.write(data))
    return path


# ---------------------------------------------------------------------- corpora
def check_out_dir(out_dir, overwrite: bool = False) -> Path:
    """Check that a result folder can be written, before any work starts: its parent exists
    and is writable, and ``out_dir`` is absent, empty, or (with ``overwrite``) a folder."""
    out_dir = Path(out_dir)
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output {str(out_dir)!r} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"output folder {str(out_dir)!r} already exists and is not empty; "
                         f"choose another, or pass overwrite=True to replace it")
    if not parent.is_dir():
        why = "is not a folder" if parent.exists() else "does not exist"
        raise ValueError(f"cannot write {str(out_dir)!r}: folder {str(parent)!r} {why}")
    check_writable(parent, out_dir)
    return out_dir


def check_writable(folder, target=None) -> None:
    """Raise a one-line ValueError unless a file can really be created in ``folder`` (a probe
    file is created and removed: permission bits alone say nothing for root or read-only
    mounts).  ``target`` names the output the check is for, in the message."""
    folder = Path(folder)
    what = f"cannot write {str(target)!r}: " if target is not None else ""
    try:
        with tempfile.TemporaryFile(prefix=".simkernel-probe.", dir=folder):
            pass
    except OSError as e:
        raise ValueError(f"{what}folder {str(folder)!r} is not writable ({e.strerror or type(e).__name__})") from None


def default_chunk_docs(doc_length: int) -> int:
    return max(1, CHUNK_TOKENS // max(1, int(doc_length)))


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Rename the complete folder ``tmp`` to ``out_dir``; an existing ``out_dir`` is renamed
    away first and deleted only after the new one is in place."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=tmp.parent))
    os.rename(out_dir, old / "old")
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old / "old", out_dir)     # put the old result back
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_corpus_arrays(path) -> tuple:
    """(tokens, offsets, concepts) of a corpus folder written by ``sampling.write_corpus``, checked:
    tokens a read-only memmap (N,), offsets (n_docs + 1,) int64, concepts (n_docs,) int64.
    ``sampling.read_corpus`` wraps them in a ``Corpus``."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"corpus folder {str(path)!r} does not exist")
    missing = [f for f in CORPUS_FILES if not (path / f).is_file()]
    if missing:
        raise ValueError(f"{str(path)!r} is not a simkernel corpus: it lacks {missing[0]} "
                         f"(a corpus folder holds {', '.join(CORPUS_FILES)})")
    try:
        tokens = np.load(path / "tokens.npy", mmap_mode="r", allow_pickle=False)
        offsets = np.load(path / "offsets.npy", allow_pickle=False)
        concepts = np.load(path / "concepts.npy", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{str(path)!r} is not a simkernel corpus: cannot read its arrays "
                         f"({type(e).__name__})") from None
    where = f"corpus {str(path)!r}"
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"{where}: tokens.npy must be a 1-D integer array, got {tokens.dtype} {tokens.shape}")
    if offsets.ndim != 1 or offsets.size < 2 or not np.issubdtype(offsets.dtype, np.integer):
        raise ValueError(f"{where}: offsets.npy must be a 1-D integer array of n_docs + 1 >= 2 entries")
    if offsets[0] != 0 or offsets[-1] != tokens.size or np.any(np.diff(offsets) < 0):
        raise ValueError(f"{where}: offsets.npy must rise from 0 to len(tokens) = {tokens.size}")
    if concepts.shape != (offsets.size - 1,):
        raise ValueError(f"{where}: concepts.npy has shape {concepts.shape}, expected ({offsets.size - 1},)")
    return tokens, offsets.astype(np.int64), concepts.astype(np.int64)


def read_meta(path) -> dict:
    """The meta.json of a corpus folder."""
    f = Path(path) / "meta.json"
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {str(f)!r} ({type(e).__name__})") from None


# ---------------------------------------------------------------------- prompts
def write_prompts(prompts: "Prompts", path, config: dict, seed) -> Path:
    """Save a prompt batch as one ``.npz`` (atomically) with its provenance in ``meta``."""
    path = Path(path)
    arrays = {f.name: np.asarray(getattr(prompts, f.name)) for f in fields(prompts)}
    arrays["meta"] = np.array(json_text(provenance(config, seed)))
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
    return path


def read_prompt_arrays(path, names) -> dict:
    """The arrays of a prompt batch written by :func:`write_prompts`, checked: every field in
    ``names`` present, shapes consistent with n_demos and example_length (both Python ints in
    the result).  ``sampling.read_prompts`` wraps them in a ``Prompts``."""

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompts file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{str(path)!r} is not a simkernel prompts file: cannot read it as "
                         f".npz ({type(e).__name__})") from None
    missing = [k for k in names if k not in data]
    if missing:
        raise ValueError(f"{str(path)!r} is not a simkernel prompts file: it lacks array "
                         f"'{missing[0]}'")
    n, k = int(data["n_demos"]), int(data["example_length"])
    tokens = data["tokens"]
    B = tokens.shape[0] if tokens.ndim == 2 else -1
    expect = {"tokens": (B, n * (k + 1) + k - 1), "x_spans": (n + 1, 2), "label_positions": (n,),
              "delimiter_positions": (n,), "labels": (B, n), "y_test": (B,), "concepts": (B,)}
    for name, shape in expect.items():
        if data[name].shape != shape:
            raise ValueError(f"{str(path)!r}: array '{name}' has shape {data[name].shape}, "
                             f"expected {shape} for n_demos={n}, example_length={k}")
    kw = {name: data[name] for name in names}
    kw.update(n_demos=n, example_length=k)
    return kw


def read_prompts_meta(path) -> dict:
    """The provenance stored in a prompts ``.npz``."""
    with np.load(Path(path), allow_pickle=False) as z:
        return json.loads(str(z["meta"]))
