"""A world: a mixture of K concept HMMs sharing one symbol alphabet.

Arrays (float64 unless stated; K concepts, S hidden states per concept, V symbols):

- ``prior``      (K,)      pretraining prior over concepts; zeros allowed (out-of-distribution
                           concepts that prompts may use but documents never do)
- ``start``      (K, S)    start distribution of each concept
- ``transition`` (K, S, S) ``transition[k, s, s'] = P(s' | s, concept k)``
- ``emission``   (K, S, V) ``emission[k, s, o] = P(o | s, concept k)``
- ``delimiter``  int       the symbol that separates examples in a prompt
- ``labels``     (L,) int  the label set (symbols y may take); never contains the delimiter
- ``restart``    bool      True: emitting the delimiter restarts the hidden state from the
                           concept's start distribution (the theory's Assumption 1).
                           False: the chain runs on through the delimiter (GINC's documents,
                           and any plain HMM such as hmmlearn's).

The K blocks stay separate: nothing here builds the (K*S)^2 block-diagonal matrix.
This module is numpy-only and does no printing; errors are one-line ``ValueError`` s.  Files are
written through ``store`` (atomically).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .store import atomic_write, json_default

#: Tolerance on row sums, shared by loading and validation.
ROW_SUM_TOL = 1e-6

_CORE = ("prior", "start", "transition", "emission", "delimiter")
_RESERVED = set(_CORE) | {"labels", "restart_on_delimiter", "meta"}


@dataclass(frozen=True, eq=False)
class World:
    """A validated mixture of concept HMMs.  Build with :func:`simkernel.make_world`,
    :meth:`World.load` or :meth:`World.from_arrays`; construction validates."""

    prior: np.ndarray
    start: np.ndarray
    transition: np.ndarray
    emission: np.ndarray
    delimiter: int
    labels: np.ndarray
    restart: bool = True
    meta: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(cls, prior, start, transition, emission, delimiter, labels=None,
                    restart=True, meta=None, extras=None) -> "World":
        """Validate and build a world.  ``labels=None`` means every symbol but the delimiter."""
        prior = _as_float_array("prior", prior, 1)
        start = _as_float_array("start", start, 2)
        transition = _as_float_array("transition", transition, 3)
        emission = _as_float_array("emission", emission, 3)
        K = prior.shape[0]
        if K == 0:
            raise ValueError("prior has no concepts: a world needs K >= 1")
        S, V = emission.shape[1], emission.shape[2]
        _expect_shape("start", start, (K, S), "(K, S) = prior's K, emission's S")
        _expect_shape("transition", transition, (K, S, S), "(K, S, S)")
        _expect_shape("emission", emission, (K, S, V), "(K, S, V)")
        if S == 0 or V == 0:
            raise ValueError(f"emission has shape {emission.shape}: a world needs S >= 1 states and V >= 1 symbols")
        for name, arr in (("prior", prior), ("start", start), ("transition", transition), ("emission", emission)):
            _check_stochastic(name, arr)
        delimiter = _as_symbol("delimiter", delimiter, V)
        if labels is None:
            labels = np.array([o for o in range(V) if o != delimiter], dtype=np.int64)
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be a 1-D integer array of symbols, got dtype {labels.dtype} and shape {labels.shape}")
        labels = labels.astype(np.int64)
        if labels.size == 0:
            raise ValueError("labels is empty: the label set needs at least one symbol")
        bad = labels[(labels < 0) | (labels >= V)]
        if bad.size:
            raise ValueError(f"labels contains symbol {int(bad[0])}, outside the vocabulary 0..{V - 1}")
        if delimiter in labels:
            raise ValueError(f"labels contains the delimiter {delimiter}: the delimiter marks example boundaries and cannot be a label")
        if np.unique(labels).size != labels.size:
            raise ValueError("labels contains a repeated symbol: each label must appear once")
        for arr in (prior, start, transition, emission, labels):
            arr.setflags(write=False)
        return cls(prior, start, transition, emission, int(delimiter), labels, bool(restart),
                   dict(meta or {}), dict(extras or {}))

    # ------------------------------------------------------------------ sizes
    @property
    def n_concepts(self) -> int:
        return self.prior.shape[0]

    @property
    def n_states(self) -> int:
        return self.emission.shape[1]

    @property
    def n_symbols(self) -> int:
        return self.emission.shape[2]

    def __repr__(self) -> str:  # arrays are large: show the shape of the world only
        name = self.meta.get("preset", "custom")
        return (f"World({name}: K={self.n_concepts} concepts, S={self.n_states} states, "
                f"V={self.n_symbols} symbols, delimiter={self.delimiter}, "
                f"{len(self.labels)} labels, restart={self.restart})")

    # ------------------------------------------------------------------ derived worlds
    def smoothed(self, epsilon: float) -> "World":
        """Mix every start and transition row with the uniform row:
        ``(1 - epsilon) * row + epsilon / S``.  Emissions are left alone so that sparse
        (e.g. one-hot) emission structure survives.  Returns a new world."""
        epsilon = float(epsilon)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"smoothing must be in [0, 1], got {epsilon}")
        S = self.n_states
        return replace(self, start=(1 - epsilon) * self.start + epsilon / S,
                       transition=(1 - epsilon) * self.transition + epsilon / S).revalidated()

    def revalidated(self) -> "World":
        return World.from_arrays(self.prior, self.start, self.transition, self.emission,
                                 self.delimiter, self.labels, self.restart, self.meta, self.extras)

    def with_prior(self, prior) -> "World":
        """The same concepts under another pretraining prior (validated)."""
        return replace(self, prior=np.asarray(prior, dtype=np.float64)).revalidated()

    # ------------------------------------------------------------------ I/O
    def save(self, path) -> Path:
        """Write one ``.npz`` (atomically: a temp file in the same folder, then rename)."""
        path = Path(path)
        arrays = dict(prior=self.prior, start=self.start, transition=self.transition,
                      emission=self.emission, delimiter=np.int64(self.delimiter),
                      labels=self.labels, restart_on_delimiter=np.bool_(self.restart),
                      meta=np.array(json.dumps(self.meta, sort_keys=True, default=json_default)))
        for k, v in self.extras.items():
            arrays[k] = np.asarray(v)
        atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
        return path

    @classmethod
    def load(cls, path) -> "World":
        """Load and validate a world ``.npz``.  Files made elsewhere need only ``prior``,
        ``start``, ``transition``, ``emission`` and ``delimiter``; a missing ``labels`` means
        every symbol but the delimiter, a missing ``restart_on_delimiter`` means False (the
        plain-HMM semantics of hmmlearn and of GINC's documents)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"world file {str(path)!r} does not exist")
        try:
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an .npz archive")
            with z:
                data = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise ValueError(f"{str(path)!r} is not a simkernel world: cannot read it as .npz ({type(e).__name__})") from None
        missing = [k for k in _CORE if k not in data]
        if missing:
            raise ValueError(f"{str(path)!r} is not a simkernel world: it lacks array '{missing[0]}' "
                             f"(a world .npz holds {', '.join(_CORE)})")
        meta = {}
        if "meta" in data:
            try:
                meta = json.loads(str(data["meta"]))
            except json.JSONDecodeError:
                raise ValueError(f"{str(path)!r}: array 'meta' is not valid JSON") from None
        restart = bool(data["restart_on_delimiter"]) if "restart_on_delimiter" in data else False
        extras = {k: v for k, v in data.items() if k not in _RESERVED}
        return cls.from_arrays(data["prior"], data["start"], data["transition"], data["emission"],
                               data["delimiter"], data.get("labels"), restart, meta, extras)


# ---------------------------------------------------------------------- validation helpers
def _as_float_array(name, value, ndim):
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a numeric array, got {type(value).__name__}") from None
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _expect_shape(name, arr, shape, words):
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected {shape} {words}")


def _row_name(name, idx):
    return f"{name}[{', '.join(str(int(i)) for i in idx)}]" if len(idx) else name


def _check_stochastic(name, arr):
    """Finite, non-negative, rows (last axis) summing to 1 within ROW_SUM_TOL."""
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.argwhere(bad)[0]
        raise ValueError(f"{name} is not finite at {_row_name(name, idx[:-1]) if arr.ndim > 1 else name}"
                         f" (entry {int(idx[-1])}): probabilities must be finite")
    neg = arr < 0
    if neg.any():
        idx = np.argwhere(neg)[0]
        raise ValueError(f"{name} has a negative entry {arr[tuple(idx)]:.3g} in row "
                         f"{_row_name(name, idx[:-1])}: probabilities must be >= 0")
    sums = arr.sum(axis=-1)
    off = np.abs(sums - 1.0) > ROW_SUM_TOL
    if np.any(off):
        idx = np.argwhere(np.atleast_1d(off))[0] if arr.ndim > 1 else ()
        s = float(sums[tuple(idx)]) if arr.ndim > 1 else float(sums)
        raise ValueError(f"{name} row {_row_name(name, idx)} sums to {s:.9g}, not 1 (tolerance {ROW_SUM_TOL:g})")


def _as_symbol(name, value, V):
    arr = np.asarray(value)
    if arr.ndim != 0 or not (np.issubdtype(arr.dtype, np.integer) or
                             (np.issubdtype(arr.dtype, np.floating) and float(arr) == int(arr))):
        raise ValueError(f"{name} must be an integer symbol, got {value!r}")
    v = int(arr)
    if not 0 <= v < V:
        raise ValueError(f"{name} {v} is outside the vocabulary 0..{V - 1}")
    return v
