"""Seeded, deterministic sampling of pretraining corpora and in-context prompts (Numba).

Randomness: every document and every prompt gets its own 64-bit stream (splitmix64), seeded
from ``np.random.SeedSequence(seed)``; so a given seed gives bit-identical arrays whatever the
thread count, chunking or machine.  Categorical draws use cumulative tables and a binary
search; a zero-probability entry is never drawn.

Prompt layout for ``n`` demonstrations and example length ``k`` (``x`` = k-1 tokens, ``y`` = 1):

    [x_1 (k-1), y_1, delim, x_2, y_2, delim, ..., x_n, y_n, delim, x_test (k-1)]

length ``L = n (k + 1) + k - 1``; demonstration ``i`` (0-based) starts at ``i (k + 1)``.

How an example is drawn from concept ``c`` (docs/theory.md, "Prompts"): exactly from the
concept's HMM conditioned on y being a label (and, for demonstrations, on a delimiter being
possible after y), using backward messages precomputed once per concept; so y_test given x_test
follows the oracle P(y | x_test, c, y in labels) exactly, and every prompt has non-zero
probability under its concept.  Its first hidden state comes from ``start[c]`` in a restart
world (and for the first example), and from the chain continuing through the previous
delimiter otherwise.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numba as nb
import numpy as np

from .store import (check_out_dir, default_chunk_docs, folder_lock, json_text, provenance, publish_folder,
                    read_corpus_arrays, read_prompt_arrays, world_summary)
from .validate import check_int, check_seed
from .world import World

# ---------------------------------------------------------------------- RNG and draws
@nb.njit(cache=True, inline="always")
def _next(state):
    """splitmix64 step: returns (new_state, uniform double in [0, 1))."""
    state = (state + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    z = state
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    z = z ^ (z >> np.uint64(31))
    return state, float(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@nb.njit(cache=True, inline="always")
def _draw(cum, u):
    """Index i with cum[i-1] <= u*total < cum[i] (cum: non-decreasing cumulative weights)."""
    target = u * cum[cum.shape[0] - 1]
    lo, hi = 0, cum.shape[0] - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if cum[mid] > target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _cumulative(p):
    c = np.cumsum(p, axis=-1)
    return np.ascontiguousarray(c)


def stream_seeds(seed: int, n: int, salt: int = 0) -> np.ndarray:
    """``n`` independent 64-bit stream seeds derived from (seed, salt); (n,) uint64."""
    return np.random.SeedSequence([check_seed("seed", seed), salt]).generate_state(n, dtype=np.uint64)


# ---------------------------------------------------------------------- corpora
@nb.njit(cache=True, parallel=True)
def _corpus_kernel(seeds, doc_length, cum_prior, cum_start, cum_T, cum_E, delim, restart, out_tokens, out_concepts):
    n_docs = seeds.shape[0]
    for d in nb.prange(n_docs):
        st = seeds[d]
        st, u = _next(st)
        c = _draw(cum_prior, u)
        out_concepts[d] = c
        st, u = _next(st)
        h = _draw(cum_start[c], u)
        base = d * doc_length
        for t in range(doc_length):
            st, u = _next(st)
            o = _draw(cum_E[c, h], u)
            out_tokens[base + t] = o
            st, u = _next(st)
            if restart and o == delim:
                h = _draw(cum_start[c], u)
            else:
                h = _draw(cum_T[c, h], u)


@dataclass(frozen=True)
class Corpus:
    """Pretraining documents, concatenated.

    tokens   (N,) integer symbols, all documents back to back
    offsets  (n_docs + 1,) int64: document d is ``tokens[offsets[d]:offsets[d + 1]]``
    concepts (n_docs,) int64: the concept that generated each document
    """

    tokens: np.ndarray
    offsets: np.ndarray
    concepts: np.ndarray

    def document(self, d: int) -> np.ndarray:
        return self.tokens[self.offsets[d]:self.offsets[d + 1]]


def _sampling_tables(world: World):
    return dict(cum_prior=_cumulative(world.prior), cum_start=_cumulative(world.start),
                cum_T=_cumulative(world.transition), cum_E=_cumulative(world.emission))


def sample_corpus(world: World, n_docs: int, doc_length: int, seed: int = 0, first_doc: int = 0,
                  n_total_docs: int | None = None) -> Corpus:
    """Documents of ``doc_length`` symbols, one concept per document drawn from the prior.

    Documents ``first_doc .. first_doc + n_docs - 1`` of a corpus of ``n_total_docs`` (default
    ``first_doc + n_docs``): a corpus written in chunks equals one sampled in one call."""
    seed = check_seed("seed", seed)
    n_docs = _check_count("n_docs", n_docs, 1)
    doc_length = _check_count("doc_length", doc_length, 1)
    n_total = first_doc + n_docs if n_total_docs is None else n_total_docs
    if isinstance(first_doc, bool) or not isinstance(first_doc, (int, np.integer)) or first_doc < 0 \
            or n_total < first_doc + n_docs:
        raise ValueError(f"documents {first_doc}..{first_doc + n_docs - 1} are not inside a corpus of "
                         f"{n_total} documents (need 0 <= first_doc and first_doc + n_docs <= n_total_docs)")
    seeds = stream_seeds(seed, n_total, salt=1)[first_doc:first_doc + n_docs]
    tabs = _sampling_tables(world)
    tokens = np.empty(n_docs * doc_length, dtype=token_dtype(world.n_symbols))
    concepts = np.empty(n_docs, dtype=np.int64)
    _corpus_kernel(seeds, doc_length, tabs["cum_prior"], tabs["cum_start"], tabs["cum_T"], tabs["cum_E"],
                   world.delimiter, world.restart, tokens, concepts)
    offsets = np.arange(n_docs + 1, dtype=np.int64) * doc_length
    return Corpus(tokens, offsets, concepts)


def token_dtype(n_symbols: int):
    """Smallest unsigned dtype that holds every symbol (the corpus memmap's dtype)."""
    return np.uint8 if n_symbols <= 256 else (np.uint16 if n_symbols <= 65536 else np.uint32)


# ---------------------------------------------------------------------- prompts
def _example_tables(world: World, k: int):
    """Backward messages that make every example an exact draw from the concept's HMM
    conditioned on "y is a label" (docs/theory.md, "Prompts").

    beta[v, c, j, s] ∝ P(the example's y is an allowed label | state s at position j, concept c),
    j = 0..k-1 (j = k-1 is y's own position).  Variant v = 0 (demonstrations) also requires
    that a delimiter can follow y; v = 1 (the test example) does not.  Each message is
    rescaled to max 1 (only ratios matter), so long examples never underflow.
    Returns cumulative tables for the forward draws (see _prompt_kernel)."""
    K, S, V = world.emission.shape
    T, st, E, d = world.transition, world.start, world.emission, world.delimiter
    m = E[:, :, world.labels].sum(axis=2)                              # (K, S)
    can_delim = (T @ E[:, :, d][..., None])[..., 0] > 0                # (K, S) after a label
    beta = np.zeros((2, K, k, S))
    beta[0, :, k - 1] = m * can_delim
    beta[1, :, k - 1] = m
    for j in range(k - 2, -1, -1):
        nxt = beta[:, :, j + 1]                                        # (2, K, S)
        via_T = np.einsum("kst,vkt->vks", T, nxt)
        if world.restart:
            via_start = np.einsum("ks,vks->vk", st, nxt)[..., None]
            pd = E[None, :, :, d]
            beta[:, :, j] = pd * via_start + (1 - pd) * via_T
        else:
            beta[:, :, j] = via_T
        mx = beta[:, :, j].max(axis=-1, keepdims=True)
        beta[:, :, j] /= np.where(mx > 0, mx, 1.0)
    Tb = T[None, :, None, :, :] * beta[:, :, :, None, :]               # (2, K, k, S, S)
    Sb = st[None, :, None, :] * beta                                   # (2, K, k, S)
    E_nod = E.copy()
    E_nod[:, :, d] = 0.0
    label_E = E[:, :, world.labels]
    safe_label_E = np.where(m[..., None] > 0, label_E, 1.0)
    return dict(cum_Tb=_cumulative(Tb), cum_Sb=_cumulative(Sb),
                cum_E=_cumulative(E), cum_E_nod=_cumulative(np.where(E_nod.sum(-1, keepdims=True) > 0, E_nod, 1.0)),
                p_delim=np.ascontiguousarray(E[:, :, d]),
                cum_label_E=_cumulative(safe_label_E),
                cum_Td=_cumulative(T * E[:, None, :, d]))


@nb.njit(cache=True, parallel=True)
def _prompt_kernel(seeds, concepts_in, cum_prior, n_demos, k, labels, delim, restart,
                   cum_Tb, cum_Sb, cum_E, cum_E_nod, p_delim, cum_label_E, cum_Td,
                   out_tokens, out_y_test, out_concepts, out_status):
    """Draw B prompts.  Within an example at x position j with state h: in a restart world the
    symbol is the delimiter with probability ∝ p_delim[h] * (start · beta_{j+1}), otherwise a
    non-delimiter ∝ (1 - p_delim[h]) * (T[h] · beta_{j+1}); the next state ∝ (start or T[h]) ∘
    beta_{j+1}.  In a non-restart world the symbol does not change the future, so it is drawn
    from the plain emission.  y ∝ emission restricted to the labels.  The delimiter's state
    (which the next example continues from in a non-restart world) ∝ T[h_y] ∘ emission[:, delim]."""
    B = seeds.shape[0]
    for b in nb.prange(B):
        st = seeds[b]
        c = concepts_in[b]
        if c < 0:
            st, u = _next(st)
            c = _draw(cum_prior, u)
        out_concepts[b] = c
        h_d = -1
        for i in range(n_demos + 1):
            base = i * (k + 1)
            v = 1 if i == n_demos else 0
            # first state of the example
            if restart or h_d < 0:
                tab = cum_Sb[v, c, 0]
            else:
                tab = cum_Tb[v, c, 0, h_d]
            if tab[tab.shape[0] - 1] <= 0.0:
                out_status[b] = i + 1
                break
            st, u = _next(st)
            h = _draw(tab, u)
            for j in range(k - 1):
                st, u = _next(st)
                if restart:
                    w_d = p_delim[c, h] * cum_Sb[v, c, j + 1][cum_Sb.shape[3] - 1]
                    w_o = (1.0 - p_delim[c, h]) * cum_Tb[v, c, j + 1, h][cum_Tb.shape[4] - 1]
                    if u * (w_d + w_o) < w_d:
                        o = delim
                    else:
                        st, u = _next(st)
                        o = _draw(cum_E_nod[c, h], u)
                else:
                    o = _draw(cum_E[c, h], u)
                out_tokens[b, base + j] = o
                st, u = _next(st)
                if restart and o == delim:
                    h = _draw(cum_Sb[v, c, j + 1], u)
                else:
                    h = _draw(cum_Tb[v, c, j + 1, h], u)
            st, u = _next(st)
            y = labels[_draw(cum_label_E[c, h], u)]
            if v == 1:
                out_y_test[b] = y
            else:
                out_tokens[b, base + k - 1] = y
                out_tokens[b, base + k] = delim
                st, u = _next(st)
                h_d = _draw(cum_Td[c, h], u)


@dataclass(frozen=True)
class Prompts:
    """A batch of in-context prompts sharing n_demos and example_length k.

    tokens           (B, L) int32, L = n_demos (k + 1) + k - 1
    x_spans          (n_demos + 1, 2) int64: [start, end) of x_1 .. x_n, then of x_test
    label_positions  (n_demos,) int64: position of y_i in each row
    delimiter_positions (n_demos,) int64: position of the delimiter closing demonstration i
    labels           (B, n_demos) int32: y_i (= tokens[:, label_positions])
    y_test           (B,) int32: the gold next symbol after x_test (drawn, never in tokens)
    concepts         (B,) int64: the concept each prompt was drawn from
    """

    tokens: np.ndarray
    x_spans: np.ndarray
    label_positions: np.ndarray
    delimiter_positions: np.ndarray
    labels: np.ndarray
    y_test: np.ndarray
    concepts: np.ndarray
    n_demos: int
    example_length: int

    @property
    def test_span(self) -> tuple[int, int]:
        return int(self.x_spans[-1, 0]), int(self.x_spans[-1, 1])

    def x_test(self) -> np.ndarray:
        """(B, k - 1) the test inputs."""
        a, b = self.test_span
        return self.tokens[:, a:b]

    def subset(self, a: int, b: int) -> "Prompts":
        """Prompts a..b-1 of the batch (every array cut along the prompt axis)."""
        from dataclasses import replace as _replace
        return _replace(self, tokens=self.tokens[a:b], labels=self.labels[a:b], y_test=self.y_test[a:b],
                        concepts=self.concepts[a:b])

    def truncated(self, n: int) -> "Prompts":
        """The same prompts with only the first ``n`` demonstrations before x_test."""
        if not 0 <= n <= self.n_demos:
            raise ValueError(f"n must be in 0..{self.n_demos}, got {n}")
        k = self.example_length
        demo = self.tokens[:, : n * (k + 1)]
        tokens = np.ascontiguousarray(np.concatenate([demo, self.x_test()], axis=1))
        return prompt_layout(tokens, n, k, self.labels[:, :n], self.y_test, self.concepts)


def prompt_layout(tokens, n_demos, k, labels, y_test, concepts) -> Prompts:
    starts = np.arange(n_demos + 1, dtype=np.int64) * (k + 1)
    x_spans = np.stack([starts, starts + k - 1], axis=1)
    return Prompts(tokens, x_spans, starts[:-1] + k - 1, starts[:-1] + k,
                   np.ascontiguousarray(labels), y_test, concepts, int(n_demos), int(k))


def prompt_length(n_demos: int, example_length: int) -> int:
    """Symbols in a prompt of n demonstrations (each x, y, delimiter) then x_test: n (k + 1) + k - 1."""
    return int(n_demos) * (int(example_length) + 1) + int(example_length) - 1


def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def sample_prompts(world: World, n_prompts: int, n_demos: int, example_length: int, seed: int = 0,
                   concept=None) -> Prompts:
    """Draw ``n_prompts`` prompts of ``n_demos`` demonstrations and example length ``k``.

    ``concept``: None draws each prompt's concept from the prior; an int fixes it (any concept
    of the world, including out-of-distribution ones with prior 0)."""
    seed = check_seed("seed", seed)
    B = _check_count("n_prompts", n_prompts, 1)
    n = _check_count("n_demos", n_demos, 0)
    k = _check_count("example_length", example_length, 2)
    K = world.n_concepts
    if concept is None:
        concepts_in = np.full(B, -1, dtype=np.int64)
    else:
        if isinstance(concept, bool) or not isinstance(concept, (int, np.integer)) or not 0 <= concept < K:
            raise ValueError(f"concept must be an integer in 0..{K - 1} or None, got {concept!r}")
        concepts_in = np.full(B, int(concept), dtype=np.int64)
    L = prompt_length(n, k)
    tokens = np.zeros((B, L), dtype=np.int32)
    y_test = np.zeros(B, dtype=np.int32)
    concepts = np.zeros(B, dtype=np.int64)
    status = np.zeros(B, dtype=np.int64)
    tabs = _example_tables(world, k)
    _prompt_kernel(stream_seeds(seed, B, salt=2), concepts_in, _cumulative(world.prior), n, k,
                   world.labels.astype(np.int64), world.delimiter, world.restart,
                   tabs["cum_Tb"], tabs["cum_Sb"], tabs["cum_E"], tabs["cum_E_nod"], tabs["p_delim"],
                   tabs["cum_label_E"], tabs["cum_Td"], tokens, y_test, concepts, status)
    failed = np.flatnonzero(status)
    if failed.size:
        b = failed[0]
        raise ValueError(f"concept {concepts[b]} cannot produce example {status[b]} of prompt {b} "
                         f"(x of {k - 1} tokens, then a label, then the delimiter): the world gives "
                         f"it probability 0; raise the smoothing floor or change the label set")
    labels = tokens[:, np.arange(n) * (k + 1) + k - 1] if n else np.zeros((B, 0), dtype=np.int32)
    return prompt_layout(tokens, n, k, labels, y_test, concepts)


def concat_prompts(parts: list[Prompts]) -> Prompts:
    """Stack batches of prompts that share n_demos and example length."""
    first = parts[0]
    if any(p.n_demos != first.n_demos or p.example_length != first.example_length for p in parts):
        raise ValueError("can only concatenate prompts with the same n_demos and example length")
    return prompt_layout(np.concatenate([p.tokens for p in parts]), first.n_demos, first.example_length,
                         np.concatenate([p.labels for p in parts]), np.concatenate([p.y_test for p in parts]),
                         np.concatenate([p.concepts for p in parts]))


def sample_prompt_set(world: World, n_prompts: int, n_demos: int, example_length: int, seed: int = 0,
                      concepts="prior") -> Prompts:
    """Like sample_prompts, with ``concepts`` one of: 'prior' (each prompt's concept drawn from
    the prior), 'id' / 'ood' (spread evenly over the concepts with prior > 0 / prior = 0), or
    an int (one concept)."""
    if concepts == "prior" or concepts is None:
        return sample_prompts(world, n_prompts, n_demos, example_length, seed=seed)
    if isinstance(concepts, (int, np.integer)) and not isinstance(concepts, bool):
        return sample_prompts(world, n_prompts, n_demos, example_length, seed=seed, concept=int(concepts))
    if concepts not in ("id", "ood"):
        raise ValueError(f"concepts must be 'prior', 'id', 'ood' or a concept index, got {concepts!r}")
    ids = np.flatnonzero(world.prior > 0 if concepts == "id" else world.prior == 0)
    if ids.size == 0:
        raise ValueError(f"the world has no {'in' if concepts == 'id' else 'out-of'}-distribution concepts "
                         f"(prior {'> 0' if concepts == 'id' else '= 0'})")
    counts = np.full(ids.size, n_prompts // ids.size)
    counts[: n_prompts % ids.size] += 1
    parts = [sample_prompts(world, int(n), n_demos, example_length, seed=seed + 7919 * j, concept=int(c))
             for j, (c, n) in enumerate(zip(ids, counts)) if n > 0]
    return concat_prompts(parts)


def unique_inputs(prompts: Prompts) -> tuple[np.ndarray, np.ndarray]:
    """Every input x of the prompts (demonstrations, then x_test), deduplicated:
    (uniq (U, k-1), inv (B, N+1) indices into uniq with x_test last)."""
    B, N, k = prompts.tokens.shape[0], prompts.n_demos, prompts.example_length
    xs = np.stack([prompts.tokens[:, s:s + k - 1] for s in prompts.x_spans[:, 0]], axis=1)
    uniq, inv = np.unique(xs.reshape(-1, k - 1), axis=0, return_inverse=True)
    return uniq, inv.reshape(B, N + 1)


# ---------------------------------------------------------------------- corpus and prompt files
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
    n_docs, doc_length = check_int("n_docs", n_docs, 1), check_int("doc_length", doc_length, 1)
    seed = check_seed("seed", seed)
    chunk = default_chunk_docs(doc_length) if chunk_docs is None else int(chunk_docs)
    if chunk < 1:
        raise ValueError(f"chunk_docs must be >= 1, got {chunk_docs!r}")
    out_dir = check_out_dir(out_dir, overwrite)
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    with folder_lock(out_dir, "corpus", beside=True):
        # checked again under the lock: another process may have finished this corpus meanwhile
        check_out_dir(out_dir, overwrite)
        return _write_corpus(world, out_dir, parent, n_docs, doc_length, seed, chunk, progress, config)


def _write_corpus(world, out_dir, parent, n_docs, doc_length, seed, chunk, progress, config) -> Path:
    dtype = np.dtype(token_dtype(world.n_symbols))
    need = n_docs * doc_length * dtype.itemsize
    free = shutil.disk_usage(parent).free
    if need > free:
        raise ValueError(f"corpus needs {need / 2**20:.1f} MiB but {str(parent)!r} has only "
                         f"{free / 2**20:.1f} MiB free")

    cfg = dict(config or {})
    cfg.update(n_docs=n_docs, doc_length=doc_length, token_dtype=dtype.name)
    meta = provenance(cfg, seed)
    meta["world"] = world_summary(world)

    def build(tmp: Path):
        tokens = np.lib.format.open_memmap(tmp / "tokens.npy", mode="w+", dtype=dtype,
                                           shape=(n_docs * doc_length,))
        concepts = np.empty(n_docs, dtype=np.int64)
        for first in range(0, n_docs, chunk):
            n = min(chunk, n_docs - first)
            part = sample_corpus(world, n, doc_length, seed, first_doc=first,
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
        (tmp / "meta.json").write_text(json_text(meta))

    return publish_folder(out_dir, build)


def read_corpus(path) -> Corpus:
    """Open a corpus folder written by :func:`write_corpus` (``store.read_corpus_arrays`` checks
    it); tokens is a read-only memmap."""
    return Corpus(*read_corpus_arrays(path))


def read_prompts(path) -> Prompts:
    """Load a prompt batch written by ``store.write_prompts`` (fields and shapes checked)."""
    from dataclasses import fields

    return Prompts(**read_prompt_arrays(path, tuple(f.name for f in fields(Prompts))))
