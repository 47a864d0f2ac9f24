"""File formats: corpora, prompt batches, JSON and CSV results, provenance.

Every writer is atomic: it writes a temp file (or folder) beside the target and renames it
into place, so a crash, a Ctrl-C or a bad value never leaves a half-written result, and an
existing result is only replaced by a complete one.  Every result carries its provenance:
the config and seed that made it and the package versions (``provenance``).

This module does no printing and never imports torch.  Errors are one-line ``ValueError`` s.

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

import numpy as np

from . import sampling
from .presets import check_seed
from .world import World, _json_default, atomic_write

#: Packages whose versions every result records.
VERSIONED = ("simkernel", "numpy", "scipy", "numba")

CORPUS_FILES = ("tokens.npy", "offsets.npy", "concepts.npy", "meta.json")

#: Documents per chunk when writing a corpus: about this many tokens at a time.
CHUNK_TOKENS = 1 << 21


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


def world_summary(world: World) -> dict:
    """The shape of a world and how it was made (its ``meta``: preset, seed, options)."""
    return {"meta": world.meta, "K": world.n_concepts, "S": world.n_states, "V": world.n_symbols,
            "delimiter": world.delimiter, "restart": world.restart,
            "labels": [int(x) for x in world.labels]}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def public_mode(path) -> None:
    """Give a file or folder made through ``tempfile`` (mode 0600 / 0700) the permissions an
    ordinary ``open``/``mkdir`` would have given it (0666 / 0777 less the umask)."""
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


def _atomic(path: Path, write) -> None:
    atomic_write(path, write)
    public_mode(path)


# ---------------------------------------------------------------------- JSON / CSV
def _dumps(obj) -> str:
    return json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n"


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically.  numpy scalars and arrays are converted."""
    path = Path(path)
    text = _dumps(obj).encode()
    _atomic(path, lambda f: f.write(text))
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
    _atomic(path, lambda f: f.write(data))
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
                         f"choose another, or pass --overwrite (overwrite=True) to replace it")
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


def write_corpus(world: World, out_dir, n_docs: int, doc_length: int, seed: int, *,
                 chunk_docs: int | None = None, progress=None, overwrite: bool = False,
                 config: dict | None = None) -> Path:
    """Sample ``n_docs`` documents of ``doc_length`` symbols into the folder ``out_dir``.

    Documents are sampled ``chunk_docs`` at a time straight into a memory-mapped
    ``tokens.npy``, so the corpus never has to fit in memory; the result equals
    ``sample_corpus(world, n_docs, doc_length, seed)`` whatever the chunking.  Everything is
    written into a temp folder beside ``out_dir`` and renamed into place at the end.

    ``out_dir`` must be absent or empty unless ``overwrite`` (then the old folder is replaced
    only once the new one is complete).  ``progress``: optional callable(n_done_docs).
    ``config``: extra entries for meta.json's config (e.g. the command line that ran)."""
    for name, v in (("n_docs", n_docs), ("doc_length", doc_length)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    n_docs, doc_length = int(n_docs), int(doc_length)
    seed = check_seed(seed)
    chunk = default_chunk_docs(doc_length) if chunk_docs is None else int(chunk_docs)
    if chunk < 1:
        raise ValueError(f"chunk_docs must be >= 1, got {chunk_docs!r}")
    out_dir = check_out_dir(out_dir, overwrite)
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    dtype = np.dtype(sampling.token_dtype(world.n_symbols))
    need = n_docs * doc_length * dtype.itemsize
    free = shutil.disk_usage(parent).free
    if need > free:
        raise ValueError(f"corpus needs {need / 2**20:.1f} MiB but {str(parent)!r} has only "
                         f"{free / 2**20:.1f} MiB free")

    cfg = dict(config or {})
    cfg.update(n_docs=n_docs, doc_length=doc_length, token_dtype=dtype.name)
    meta = provenance(cfg, seed)
    meta["world"] = world_summary(world)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=parent))
    try:
        tokens = np.lib.format.open_memmap(tmp / "tokens.npy", mode="w+", dtype=dtype,
                                           shape=(n_docs * doc_length,))
        concepts = np.empty(n_docs, dtype=np.int64)
        for first in range(0, n_docs, chunk):
            n = min(chunk, n_docs - first)
            part = sampling.sample_corpus(world, n, doc_length, seed, first_doc=first,
                                          n_total_docs=n_docs)
            tokens[first * doc_length:(first + n) * doc_length] = part.tokens
            concepts[first:first + n] = part.concepts
            if progress is not None:
                progress(first + n)
        tokens.flush()
        del tokens
        np.save(tmp / "offsets.npy", np.arange(n_docs + 1, dtype=np.int64) * doc_length)
        np.save(tmp / "concepts.npy", concepts)
        world.save(tmp / "world.npz")
        public_mode(tmp / "world.npz")
        (tmp / "meta.json").write_text(_dumps(meta))
        public_mode(tmp)
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


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


def read_corpus(path) -> sampling.Corpus:
    """Open a corpus folder written by :func:`write_corpus`; tokens is a read-only memmap."""
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
    return sampling.Corpus(tokens, offsets.astype(np.int64), concepts.astype(np.int64))


def read_meta(path) -> dict:
    """The meta.json of a corpus folder."""
    f = Path(path) / "meta.json"
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {str(f)!r} ({type(e).__name__})") from None


# ---------------------------------------------------------------------- prompts
_PROMPT_FIELDS = tuple(f.name for f in fields(sampling.Prompts))


def write_prompts(prompts: sampling.Prompts, path, config: dict, seed) -> Path:
    """Save a prompt batch as one ``.npz`` (atomically) with its provenance in ``meta``."""
    path = Path(path)
    arrays = {name: np.asarray(getattr(prompts, name)) for name in _PROMPT_FIELDS}
    arrays["meta"] = np.array(_dumps(provenance(config, seed)))
    _atomic(path, lambda f: np.savez_compressed(f, **arrays))
    return path


def read_prompts(path) -> sampling.Prompts:
    """Load a prompt batch written by :func:`write_prompts` (checks fields and shapes)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompts file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{str(path)!r} is not a simkernel prompts file: cannot read it as "
                         f".npz ({type(e).__name__})") from None
    missing = [k for k in _PROMPT_FIELDS if k not in data]
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
    kw = {name: data[name] for name in _PROMPT_FIELDS}
    kw.update(n_demos=n, example_length=k)
    return sampling.Prompts(**kw)


def read_prompts_meta(path) -> dict:
    """The provenance stored in a prompts ``.npz``."""
    with np.load(Path(path), allow_pickle=False) as z:
        return json.loads(str(z["meta"]))
