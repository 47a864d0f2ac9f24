"""Seeded, deterministic sampling of pretraining corpora and in-context prompts (Numba).

Randomness: every document and every prompt gets its own 64-bit stream (splitmix64), seeded
from ``np.random.SeedSequence(seed)``; so a given seed gives bit-identical arrays whatever the
thread count, chunking or machine.  Categorical draws use cumulative tables and a binary
search; a zero-probability entry is never drawn.

Prompt layout for ``n`` demonstrations and example length ``k`` (``x`` = k-1 tokens, ``y`` = 1):

    [x_1 (k-1), y_1, delim, x_2, y_2, delim, ..., x_n, y_n, delim, x_test (k-1)]

length ``L = n (k + 1) + k - 1``; demonstration ``i`` (0-based) starts at ``i (k + 1)``.

How an example is drawn from concept ``c`` (docs/theory.md, "Prompts"):
- its first hidden state comes from ``start[c]`` in a restart world, and from the chain
  continuing through the previous delimiter otherwise (the first example always uses start);
- x runs the HMM (a delimiter inside x restarts the state in a restart world, like the
  forward pass does);
- y's state and symbol are drawn conditioned on y being in the label set, and the delimiter's
  state conditioned on emitting the delimiter, so every prompt has non-zero probability under
  its world; an example after which neither is possible is redrawn (rejection), and after
  ``MAX_TRIES`` failures sampling stops with an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from .presets import check_seed
from .world import World

MAX_TRIES = 10_000


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


@nb.njit(cache=True, inline="always")
def _draw_weighted(w, u):
    """Index drawn with probability w[i] / sum(w) (w >= 0, sum > 0), by a linear scan."""
    total = 0.0
    for i in range(w.shape[0]):
        total += w[i]
    target = u * total
    acc = 0.0
    last = 0
    for i in range(w.shape[0]):
        if w[i] > 0.0:
            acc += w[i]
            last = i
            if acc > target:
                return i
    return last


def _cumulative(p):
    c = np.cumsum(p, axis=-1)
    return np.ascontiguousarray(c)


def stream_seeds(seed: int, n: int, salt: int = 0) -> np.ndarray:
    """``n`` independent 64-bit stream seeds derived from (seed, salt); (n,) uint64."""
    return np.random.SeedSequence([check_seed(seed), salt]).generate_state(n, dtype=np.uint64)


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
    seed = check_seed(seed)
    n_docs = _check_count("n_docs", n_docs, 1)
    doc_length = _check_count("doc_length", doc_length, 1)
    n_total = first_doc + n_docs if n_total_docs is None else n_total_docs
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
@nb.njit(cache=True, inline="always")
def _next_state_dist(c, h, o, restart, delim, start, T):
    """Distribution of the hidden state after state h emitted symbol o."""
    if restart and o == delim:
        return start[c]
    return T[c, h]


@nb.njit(cache=True, parallel=True)
def _prompt_kernel(seeds, concepts_in, n_demos, k, start, T, cum_start, cum_T, cum_E, label_mass,
                   cum_label_E, delim_E, labels, delim, restart, max_tries,
                   out_tokens, out_y_test, out_concepts, out_status, cum_prior):
    B = seeds.shape[0]
    S = T.shape[1]
    for b in nb.prange(B):
        st = seeds[b]
        c = concepts_in[b]
        if c < 0:
            st, u = _next(st)
            c = _draw(cum_prior, u)
        out_concepts[b] = c
        w = np.empty(S)
        have_prev = False
        h_prev = 0        # state that emitted the previous delimiter (non-restart worlds)
        for i in range(n_demos + 1):
            base = i * (k + 1)
            is_test = i == n_demos
            ok = False
            for _ in range(max_tries):
                # first hidden state of x
                st, u = _next(st)
                if restart or not have_prev:
                    h = _draw(cum_start[c], u)
                else:
                    h = _draw(cum_T[c, h_prev], u)
                o = 0
                for j in range(k - 1):
                    if j > 0:
                        st, u = _next(st)
                        if restart and o == delim:
                            h = _draw(cum_start[c], u)
                        else:
                            h = _draw(cum_T[c, h], u)
                    st, u = _next(st)
                    o = _draw(cum_E[c, h], u)
                    out_tokens[b, base + j] = o
                # y: state and symbol conditioned on y being a label
                q = _next_state_dist(c, h, o, restart, delim, start, T)
                total = 0.0
                for s in range(S):
                    w[s] = q[s] * label_mass[c, s]
                    total += w[s]
                if total <= 0.0:
                    continue
                st, u = _next(st)
                h = _draw_weighted(w, u)
                st, u = _next(st)
                y = labels[_draw(cum_label_E[c, h], u)]
                if is_test:
                    out_y_test[b] = y
                    ok = True
                    break
                out_tokens[b, base + k - 1] = y
                # the delimiter's state, conditioned on emitting the delimiter
                q = T[c, h]
                total = 0.0
                for s in range(S):
                    w[s] = q[s] * delim_E[c, s]
                    total += w[s]
                if total <= 0.0:
                    continue
                st, u = _next(st)
                h_prev = _draw_weighted(w, u)
                have_prev = True
                out_tokens[b, base + k] = delim
                ok = True
                break
            if not ok:
                out_status[b] = i + 1   # 1-based index of the example that could not be drawn
                break


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
    seed = check_seed(seed)
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
    L = n * (k + 1) + k - 1
    tokens = np.zeros((B, L), dtype=np.int32)
    y_test = np.zeros(B, dtype=np.int32)
    concepts = np.zeros(B, dtype=np.int64)
    status = np.zeros(B, dtype=np.int64)
    E = world.emission
    lab = world.labels
    label_E = E[:, :, lab]
    label_mass = label_E.sum(axis=2)
    # rows that cannot emit a label are never chosen (their mass is 0); give them a dummy cum
    safe = np.where(label_mass[..., None] > 0, label_E, 1.0)
    tabs = _sampling_tables(world)
    _prompt_kernel(stream_seeds(seed, B, salt=2), concepts_in, n, k, world.start, world.transition,
                   tabs["cum_start"], tabs["cum_T"], tabs["cum_E"], np.ascontiguousarray(label_mass),
                   _cumulative(safe), np.ascontiguousarray(E[:, :, world.delimiter]),
                   lab.astype(np.int64), world.delimiter, world.restart, MAX_TRIES,
                   tokens, y_test, concepts, status, tabs["cum_prior"])
    failed = np.flatnonzero(status)
    if failed.size:
        b = failed[0]
        raise ValueError(f"concept {concepts[b]} could not produce example {status[b]} of prompt {b} "
                         f"(x of {k - 1} tokens, a label, then the delimiter) in {MAX_TRIES} tries: "
                         f"the world gives it (near) zero probability; raise the smoothing floor")
    labels = tokens[:, np.arange(n) * (k + 1) + k - 1] if n else np.zeros((B, 0), dtype=np.int32)
    return prompt_layout(tokens, n, k, labels, y_test, concepts)
