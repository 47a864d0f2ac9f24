"""The model-output cache of ``simkernel llm``: one reader and one writer for both branches.

A run's model outputs (``llm``: text prompts; ``llm_world``: simulator worlds) are cached as
``outputs-<key>.npz`` in the run folder, the key (:func:`cache_key`) a hash over everything
that changes them, so re-analysing never reruns the model.  One uncompressed ``.npz`` per
configuration, written atomically (:func:`write_npz`); attention, keys and values are stored
in float16 (:func:`capture_arrays`), which the branches round to before any analysis, so a
first run and a cached rerun analyse the same numbers.  A file that cannot be read (the zip's
CRC-32 of every member catches a changed byte) is a :class:`CacheUnreadable`, which
:func:`read_cache` turns into a miss: the caller recomputes and replaces it.  numpy only.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from .analysis import PROBE_OFFSETS
from .capture import Capture
from .store import atomic_write

#: bump when the key's layout, the prompt building or the cached arrays change meaning
CACHE_VERSION = 2


def cache_key(model: dict, data: dict, *, n_demos: int, mode: str, seed: int, n_examples: int, dtype: str,
              probe_layers, offsets=PROBE_OFFSETS, max_text_tokens: int | None = None) -> str:
    """16 hex digits of the SHA-256 of everything that changes the model's outputs: the model
    identity (``hf.model_identity``), the data identity (``llm.DataSpec.identity`` or
    ``llm_world.data_identity``), the prompt settings, the dtype and the probed layers.  ``dtype``
    is the resolved one (``hf.planned_dtype``): ``auto`` keys as bfloat16 on a GPU and as float32 on CPU, so an
    auto run shares its cache with an explicit ``bfloat16`` / ``float32`` run on the same kind
    of device, and a CPU run never reuses a GPU run's outputs.  Not the device or the batch
    size (the attention is the same batched or alone), nor anything the analysis alone uses."""
    key = {"version": CACHE_VERSION, "model": model, "data": data, "n_demos": int(n_demos), "mode": mode,
           "seed": int(seed), "n_examples": int(n_examples), "dtype": dtype,
           "probe_layers": probe_layers if isinstance(probe_layers, str) else sorted(int(x) for x in probe_layers),
           "offsets": [int(o) for o in offsets], "max_text_tokens": max_text_tokens}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_path(out_dir, key: str) -> Path:
    """``out_dir/outputs-<key>.npz``: where the outputs of :func:`cache_key` ``key`` live."""
    return Path(out_dir) / f"outputs-{key}.npz"


def capture_arrays(cap: Capture, layers) -> dict:
    """A capture's arrays as a cache file stores them: attention, keys and values in float16."""
    out = {"attn": cap.attn.astype(np.float16), "label_logp": cap.label_logp}
    if cap.keys is not None:
        out.update(keys=cap.keys.astype(np.float16), values=cap.values.astype(np.float16), offsets=cap.offsets,
                   layers=layers)
    return out


def capture_from(a: dict) -> Capture:
    """The :class:`~simkernel.capture.Capture` of a cache file's arrays (:func:`capture_arrays`),
    in float32."""
    keys = a["keys"].astype(np.float32) if "keys" in a else None
    values = a["values"].astype(np.float32) if "values" in a else None
    return Capture(a["attn"].astype(np.float32), a["label_logp"], keys, values, a.get("offsets"), a.get("layers"))


def half_rounded(cap: Capture) -> Capture:
    """``cap`` with its attention, keys and values rounded to float16 (the cache's precision), kept
    float32.  Rounded in place, a chunk of rows at a time, so no second float32 copy is made (a
    6B model's keys and values are GiBs); returns ``cap``."""
    for a in (cap.attn, cap.keys, cap.values):
        if a is not None and a.size:
            step = max(1, (64 << 20) // max(a[:1].nbytes, 1))
            for i in range(0, len(a), step):
                a[i:i + step] = a[i:i + step].astype(np.float16)
    return cap


def write_npz(path, arrays: dict) -> Path:
    """One uncompressed ``.npz`` of ``arrays``, written atomically."""
    path = Path(path)
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


class CacheUnreadable(ValueError):
    """A cache file that exists but cannot be read; ``reason`` is one line: the error's type and
    message, e.g. "BadZipFile: Bad CRC-32 for file 'attn.npy'"."""

    def __init__(self, path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"cached model outputs {str(path)!r} cannot be read ({reason}); delete the file to "
                         f"recompute them")


def read_npz(path, build):
    """``build(arrays)`` of a cache file; a damaged or incomplete file is a one-line
    :class:`CacheUnreadable` (a ValueError).  Every member is read whole, so the zip's CRC-32
    of each one catches a changed byte anywhere in the arrays."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return build({k: z[k] for k in z.files})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        detail = " ".join(str(e).split())[:120]
        raise CacheUnreadable(path, f"{type(e).__name__}: {detail}" if detail else type(e).__name__) from None


def read_cache(path, loader):
    """``(loader(path), None)`` for a readable cache file; ``(None, reason)`` for one that exists
    but cannot be read (``loader`` raised :class:`CacheUnreadable`; ``reason`` is its one line),
    which the caller recomputes like a missing one and replaces (the writer renames a complete
    file over it); ``(None, None)`` when there is no file.  The one place both ``simkernel llm``
    branches (text data, simulator worlds) decide that a damaged cache is a miss."""
    path = Path(path)
    if not path.is_file():
        return None, None
    try:
        return loader(path), None
    except CacheUnreadable as e:
        return None, e.reason
