"""Exact Bayesian inference over a world: forward passes, concept posteriors, predictives.

The forward recursion per concept k (docs/theory.md, "The forward recursion"), with
``pred_t`` the distribution of the hidden state of token t given tokens < t:

    pred_0       = start[k]                      (or a caller's ``init``)
    alpha_t      = pred_t * emission[k][:, o_t] / c_t,   c_t = sum(pred_t * emission[k][:, o_t])
    pred_{t+1}   = start[k]            if restart and o_t == delimiter
                   alpha_t @ T[k]      otherwise
    log P(o_0..o_t | k) = sum_{u <= t} log c_u

Two implementations of the same recursion, chosen by ``method``:
- ``dense``: all prompts of one concept advance together, so each step is one GEMM
  (R x S) @ (S x S) through BLAS; every load of T[k] serves R prompts.
- ``sparse``: for worlds whose emissions are sparse (GINC's are one-hot), only states that can
  emit the observed symbol carry mass, so a step costs |supp(o_{t-1})| * |supp(o_t)|.
Work is split into (concept, block of prompts) units run on a thread pool (the kernels release
the GIL; BLAS is held to one thread per unit meanwhile).  Everything is float64 and scaled, so
prompts of any length neither underflow nor overflow.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba as nb
import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS numba calls, so threadpoolctl can cap it)
from threadpoolctl import ThreadpoolController

from .world import World

METHODS = ("auto", "dense", "sparse")
#: below this many nominal flops (B L K S^2) a forward pass runs on the calling thread: starting
#: a thread pool costs more than it saves (the units are the same, so are the results)
SERIAL_FLOPS = 2_000_000
_CONTROLLER: list = []


def _blas_limit():
    """threadpoolctl's limit of BLAS to one thread, from one controller made once: a new
    controller rescans the process's shared libraries (milliseconds) on every call."""
    if not _CONTROLLER:
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=1, user_api="blas")


# ---------------------------------------------------------------------- Numba kernels
@nb.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _dense_unit(T, ET, start, delim, restart, tokT, init, rec_pos, store, scaleT, final_out, pred_out,
                rec_out):
    """One concept, R prompts, time-major.  T (S,S); ET (V,S) = emission.T; tokT (L,R);
    init (R,S); rec_pos (P,) ascending positions in [0, L).  Writes the per-step normalisers
    c_t into scaleT (L,R) when ``store`` (else only log P(all tokens) into final_out (R,)),
    pred_L into pred_out (R,S) and pred_q for each recorded q into rec_out (R,P,S).

    Normalisation is deferred by one step so that the emission product, the normaliser and
    the rescale are one pass over the row: alpha keeps total mass c_{t-1}, and the next
    emission pass multiplies by 1/c_{t-1}."""
    L, R = tokT.shape
    S = T.shape[0]
    P = rec_pos.shape[0]
    alpha = np.empty((R, S))
    pred = np.empty((R, S))
    inv_prev = np.ones(R)
    prod = np.ones(R)
    logacc = np.zeros(R)
    pred[:, :] = init
    p_idx = 0
    for t in range(L):
        if t > 0:
            np.dot(alpha, T, pred)
            if restart:
                for r in range(R):
                    if tokT[t - 1, r] == delim:
                        pred[r, :] = start
                        inv_prev[r] = 1.0
        while p_idx < P and rec_pos[p_idx] == t:
            for r in range(R):
                for j in range(S):
                    rec_out[r, p_idx, j] = pred[r, j] * inv_prev[r]
            p_idx += 1
        for r in range(R):
            e = ET[tokT[t, r]]
            f = inv_prev[r]
            s = 0.0
            for j in range(S):
                a = pred[r, j] * e[j] * f
                alpha[r, j] = a
                s += a
            if store:
                scaleT[t, r] = s
            else:
                prod[r] *= s
                if prod[r] < 1e-250:     # rescale by a log now and then, never underflow
                    logacc[r] += np.log(prod[r])
                    prod[r] = 1.0
            inv_prev[r] = 1.0 / s if s > 0.0 else 0.0
    if L > 0:
        np.dot(alpha, T, pred)
        for r in range(R):
            if restart and tokT[L - 1, r] == delim:
                pred[r, :] = start
            else:
                for j in range(S):
                    pred[r, j] *= inv_prev[r]
    if not store:
        for r in range(R):
            final_out[r] = logacc[r] + np.log(prod[r])
    pred_out[:, :] = pred


@nb.njit(nogil=True, cache=True, inline="always", fastmath={"reassoc", "contract"})
def _state_value(a, n_prev, p0, T, sup_idx, init, start, r, kk, s, first, fresh):
    """P(state s, tokens so far | concept kk) up to the running scale, one step past the current
    position: ``init`` before any token, ``start`` after a restart delimiter, else the sparse
    forward vector a (n_prev states from sup_idx[p0:]) pushed through T."""
    if first:
        return init[r, kk, s]
    if fresh:
        return start[kk, s]
    v = 0.0
    for i in range(n_prev):
        v += a[i, kk] * T[kk, sup_idx[p0 + i], s]
    return v


@nb.njit(nogil=True, cache=True, inline="always", fastmath={"reassoc", "contract"})
def _sparse_step(anew, a, n_prev, nc, c0, off, first, fresh, init, r, val, startx, sup_idx, TXb, K):
    """anew[:nc] (nc, K): the unnormalised forward vector over the states that can emit the
    current symbol (sup_idx[c0:c0 + nc]); its block of TX starts at TXb[off]."""
    if first:
        for j in range(nc):
            sj = sup_idx[c0 + j]
            for kk in range(K):
                anew[j, kk] = init[r, kk, sj] * val[c0 + j, kk]
    elif fresh:
        for j in range(nc):
            for kk in range(K):
                anew[j, kk] = startx[c0 + j, kk]
    else:
        for j in range(nc):
            for kk in range(K):
                anew[j, kk] = 0.0
        for i in range(n_prev):
            for j in range(nc):
                base = off + (i * nc + j) * K
                for kk in range(K):
                    anew[j, kk] += a[i, kk] * TXb[base + kk]


@nb.njit(nogil=True, cache=True, inline="always", fastmath={"reassoc", "contract"})
def _rescale(a, anew, nc, s_tot, prod, logacc, store, scale_out, r, t, K):
    """a[:nc] = anew[:nc] / its sum per concept; the sum goes to scale_out (``store``) or into the
    running product prod · exp(logacc) of P(tokens so far)."""
    for kk in range(K):
        s_tot[kk] = 0.0
    for j in range(nc):
        for kk in range(K):
            s_tot[kk] += anew[j, kk]
    for kk in range(K):
        if store:
            scale_out[r, t, kk] = s_tot[kk]
        else:
            prod[kk] *= s_tot[kk]
            if prod[kk] < 1e-250:
                logacc[kk] += np.log(prod[kk])
                prod[kk] = 1.0
        s_tot[kk] = 1.0 / s_tot[kk] if s_tot[kk] > 0.0 else 0.0
    for j in range(nc):
        for kk in range(K):
            a[j, kk] = anew[j, kk] * s_tot[kk]


@nb.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _sparse_unit(T, TXb, blk_off, startx, val, sup_ptr, sup_idx, start, delim, restart, tokens, init,
                 rec_pos, store, scale_out, final_out, pred_out, rec_out):
    """The recursion for sparse emissions, all K concepts at once, R prompts, prompt-major.

    States are listed by symbol: sup_ptr (V+1,) / sup_idx (n,) give the states that can emit
    each symbol under some concept.  TX[i, j, k] = T[k][idx[i], idx[j]] * val[j, k] (the
    emission of the target entry folded in) is stored block by block: the block of the step
    from symbol a to symbol b, TX[supp(a), supp(b), :], is contiguous at TXb[blk_off[a, b]:],
    so a step reads one short contiguous run of memory (the whole table is too big for L2).
    The concept axis is innermost, so each pair of states is one short vector operation.
    startx (n, K) = start[k][idx] * val[:, k]; val (n, K) the emissions.
    T (K,S,S) and start (K,S) give the dense state distribution, needed only at recorded
    positions and after the last token.  tokens (R,L); init (R,K,S); scale_out (R,L,K) when
    ``store``, else final_out (R,K) = log P(all tokens); pred_out (R,K,S); rec_out (R,K,P,S)."""
    R, L = tokens.shape
    K = val.shape[1]
    S = T.shape[1]
    P = rec_pos.shape[0]
    maxsup = 1
    for o in range(sup_ptr.shape[0] - 1):
        maxsup = max(maxsup, sup_ptr[o + 1] - sup_ptr[o])
    a = np.zeros((maxsup, K))
    anew = np.zeros((maxsup, K))
    s_tot = np.zeros(K)
    prod = np.ones(K)
    logacc = np.zeros(K)
    for r in range(R):
        prod[:] = 1.0
        logacc[:] = 0.0
        p_idx = 0
        n_prev = 0
        p0 = 0
        prev_o = -1
        for t in range(L):
            o = tokens[r, t]
            c0 = sup_ptr[o]
            nc = sup_ptr[o + 1] - c0
            fresh = t > 0 and restart and prev_o == delim
            while p_idx < P and rec_pos[p_idx] == t:
                for kk in range(K):
                    for s in range(S):
                        rec_out[r, kk, p_idx, s] = _state_value(a, n_prev, p0, T, sup_idx, init, start, r, kk, s,
                                                                t == 0, fresh)
                p_idx += 1
            off = blk_off[prev_o, o] if t > 0 else 0
            _sparse_step(anew, a, n_prev, nc, c0, off, t == 0, fresh, init, r, val, startx, sup_idx, TXb, K)
            _rescale(a, anew, nc, s_tot, prod, logacc, store, scale_out, r, t, K)
            n_prev = nc
            p0 = c0
            prev_o = o
        fresh = L > 0 and restart and prev_o == delim
        for kk in range(K):
            for s in range(S):
                pred_out[r, kk, s] = _state_value(a, n_prev, p0, T, sup_idx, init, start, r, kk, s, L == 0, fresh)
        if not store:
            for kk in range(K):
                final_out[r, kk] = logacc[kk] + np.log(prod[kk])


# ---------------------------------------------------------------------- driver
@dataclass(frozen=True)
class Forward:
    """Result of :func:`forward` (B prompts, K concepts, L tokens, S states, P records).

    loglik     (B, K, L) float64: log P(tokens[:t+1] | concept k) for every prefix (-inf where
               impossible); None when forward ran with prefixes=False
    final      (B, K) float64: log P(all tokens | concept k) (0 for empty rows)
    next_state (B, K, S): distribution of the hidden state of the token after the last one
    recorded   (B, K, P, S): the distribution of the hidden state at each recorded position,
               given the tokens before it
    """

    loglik: np.ndarray | None
    final: np.ndarray
    next_state: np.ndarray
    recorded: np.ndarray


def check_tokens(world: World, tokens) -> np.ndarray:
    """Validate a (B, L) integer token array against the world's vocabulary; (B, L) int32."""
    arr = np.asarray(tokens)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"tokens must be a (B, L) array of symbols, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {arr.dtype}")
    if arr.size:
        bad = (arr < 0) | (arr >= world.n_symbols)
        if bad.any():
            b, t = np.argwhere(bad)[0]
            raise ValueError(f"token {int(arr[b, t])} at row {b}, position {t} is outside the "
                             f"vocabulary 0..{world.n_symbols - 1}")
    return np.ascontiguousarray(arr, dtype=np.int32)


def expanded_tables(world: World):
    """The sparse path's tables.  States are listed by symbol: ptr (V+1,) int64 (symbol o owns
    entries ptr[o]:ptr[o+1]), idx (n,) int64 the state of each entry, for the states that can
    emit o under at least one concept (a concept that cannot gets emission 0 there, which is
    exact).  val (n, K) the emission probabilities; startx (n, K) = start[k][idx] * val[:, k];
    TXb, blk_off: TX[i, j, k] = T[k][idx[i], idx[j]] * val[j, k] laid out block by block, the
    block of symbol pair (a, b) (shape |supp a| x |supp b| x K) starting at TXb[blk_off[a, b]]."""
    K, S, V = world.emission.shape
    nz = (world.emission > 0).any(axis=0)                  # (S, V) union over concepts
    sym, idx = np.nonzero(nz.T)                            # sorted by symbol, then state
    ptr = np.zeros(V + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(np.bincount(sym, minlength=V))
    val = np.ascontiguousarray(world.emission[:, idx, sym].T)                     # (n, K)
    TX = (world.transition[:, idx][:, :, idx] * val.T[:, None, :]).transpose(1, 2, 0)  # (n, n, K)
    sizes = np.diff(ptr)
    blk_off = np.zeros((V, V), dtype=np.int64)
    blk_off.reshape(-1)[1:] = np.cumsum(np.outer(sizes, sizes).reshape(-1) * K)[:-1]
    TXb = np.empty(int((sizes.sum() ** 2) * K))
    for a_ in range(V):
        rows = TX[ptr[a_]:ptr[a_ + 1]]
        for b_ in range(V):
            blk = rows[:, ptr[b_]:ptr[b_ + 1]]
            TXb[blk_off[a_, b_]:blk_off[a_, b_] + blk.size] = blk.reshape(-1)
    startx = world.start[:, idx].T * val                                          # (n, K)
    return TXb, blk_off, np.ascontiguousarray(startx), val, ptr, idx.astype(np.int64)


def choose_method(world: World, method: str = "auto") -> str:
    """'dense' or 'sparse'.  auto: sparse when the mean squared emission support is far below
    S^2 (a scalar sparse step is ~10x slower per flop than a BLAS step)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    if method != "auto":
        return method
    sizes = (world.emission > 0).any(axis=0).sum(axis=0)   # (V,) states emitting each symbol
    return "sparse" if 10 * float((sizes.astype(float) ** 2).mean()) < world.n_states ** 2 else "dense"


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _check_record(record, L: int) -> np.ndarray:
    """``forward``'s record positions (P,) int64, ascending within [0, L]."""
    rec = np.zeros(0, dtype=np.int64) if record is None else np.asarray(record, dtype=np.int64)
    if rec.size and (rec.min() < 0 or rec.max() > L or np.any(np.diff(rec) < 0)):
        raise ValueError(f"record positions must be ascending within 0..{L}")
    return rec


def _check_init(world: World, init, B: int) -> np.ndarray:
    """``forward``'s first-state distributions (B, K, S): ``init``, or each concept's start."""
    K, S = world.n_concepts, world.n_states
    if init is None:
        return np.broadcast_to(world.start[None], (B, K, S))
    init = np.asarray(init, dtype=np.float64)
    if init.shape != (B, K, S):
        raise ValueError(f"init has shape {init.shape}, expected (B, K, S) = {(B, K, S)}")
    return init


def forward(world: World, tokens, *, init=None, record=None, method: str = "auto",
            prefixes: bool = True, n_threads: int | None = None) -> Forward:
    """Scaled forward pass of every prompt under every concept.

    tokens (B, L) symbols; init (B, K, S) optional distribution of the first hidden state
    (default: each concept's start); record (P,) positions in [0, L] at which to keep the
    hidden-state distribution given the tokens before (P = 0 by default); prefixes=False skips
    the (B, K, L) prefix log-likelihoods and keeps only the final ones (less memory, no
    per-token log)."""
    tokens = check_tokens(world, tokens)
    method = choose_method(world, method)
    B, L = tokens.shape
    K, S = world.n_concepts, world.n_states
    rec, init = _check_record(record, L), _check_init(world, init, B)
    inner = rec[rec < L]
    n_threads = default_threads() if n_threads is None else max(1, int(n_threads))
    # The split of the work depends on (B, K) only, never on n_threads: BLAS rounds a product
    # of R rows differently for different R, and results must not change with the thread count.
    if method == "dense":
        # time-major: each step touches one contiguous row of tokens and of normalisers
        scale = np.empty((K, L if prefixes else 0, B))
        final = np.zeros((K, B))
        nxt = np.empty((K, B, S))
        recorded = np.empty((K, B, len(inner), S))
        tokT = np.ascontiguousarray(tokens.T)
        init_k = np.ascontiguousarray(init.transpose(1, 0, 2))              # (K, B, S)
        ET = np.ascontiguousarray(world.emission.transpose(0, 2, 1))
        # blocks big enough for an efficient GEMM, enough units to keep a few threads busy
        n_blocks = max(1, math.ceil(B / 256), math.ceil(4 / K))
    else:
        # all concepts advance together, prompts are independent: split prompts only
        scale = np.empty((B, L if prefixes else 0, K))
        final = np.zeros((B, K))
        nxt = np.empty((B, K, S))
        recorded = np.empty((B, K, len(inner), S))
        TXb, blk_off, startx, val, ptr, idx = expanded_tables(world)
        init_b = np.ascontiguousarray(init)                                  # (B, K, S)
        n_blocks = max(1, math.ceil(B / 16))   # enough blocks to keep threads busy
    bounds = np.linspace(0, B, min(n_blocks, max(B, 1)) + 1).astype(int)
    blocks = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    units = [(k, a, b) for k in range(K) for a, b in blocks] if method == "dense" else \
        [(0, a, b) for a, b in blocks]

    def run_unit(unit):
        k, a, b = unit
        if method == "dense":
            part = scale[k, :, a:b]
            _dense_unit(world.transition[k], ET[k], world.start[k], world.delimiter, world.restart,
                        tokT[:, a:b], init_k[k, a:b], inner, prefixes, part, final[k, a:b],
                        nxt[k, a:b], recorded[k, a:b])
        else:
            part = scale[a:b]
            _sparse_unit(world.transition, TXb, blk_off, startx, val, ptr, idx, world.start, world.delimiter,
                         world.restart, tokens[a:b], init_b[a:b], inner, prefixes, part,
                         final[a:b], nxt[a:b], recorded[a:b])
        if prefixes:   # normalisers -> prefix log-likelihoods, on the unit's own thread
            with np.errstate(divide="ignore"):
                np.log(part, out=part)
            np.cumsum(part, axis=0 if method == "dense" else 1, out=part)

    if B and units:
        with _blas_limit():
            if n_threads == 1 or len(units) == 1 or B * L * K * S * S < SERIAL_FLOPS:
                for u in units:
                    run_unit(u)
            else:
                with ThreadPoolExecutor(n_threads) as pool:
                    list(pool.map(run_unit, units))
    if method == "dense":     # to (B, K, ...) views
        loglik = scale.transpose(2, 0, 1)
        final, nxt, recorded = final.T, nxt.transpose(1, 0, 2), recorded.transpose(1, 0, 2, 3)
    else:
        loglik = scale.transpose(0, 2, 1)
    if prefixes:
        final = np.zeros((B, K)) if L == 0 else loglik[:, :, -1]
    else:
        loglik = None
    if rec.size > inner.size:   # positions == L: the state after the last token
        recorded = np.concatenate([recorded, np.repeat(nxt[:, :, None, :], rec.size - inner.size, axis=2)], axis=2)
    return Forward(loglik, np.ascontiguousarray(final), nxt, recorded)


def next_symbol(world: World, next_state: np.ndarray) -> np.ndarray:
    """(B, K, S) hidden-state distributions -> (B, K, V) next-symbol distributions per concept."""
    return np.einsum("bks,ksv->bkv", next_state, world.emission, optimize=True)


def log_likelihood(world: World, tokens, *, method: str = "auto", n_threads: int | None = None) -> np.ndarray:
    """log P(tokens | concept k) of each whole row, from each concept's start: (B, K) float64."""
    return forward(world, tokens, method=method, prefixes=False, n_threads=n_threads).final


def example_loglik(world: World, x, symbols=None, *, method: str = "auto") -> np.ndarray:
    """log P(x, y, delimiter | θ) of one example [x, y, delimiter] started from each concept's
    start, for every input row x (M, k-1) and every y in ``symbols`` (default the labels):
    (M, K, Y), -inf where impossible.  In a restart world (Assumption 1) the delimiter sends the
    chain back to the start, so a prompt's log-likelihood under θ is the sum of its examples'
    plus log P(x_test | θ): exact Bayes for any number of demonstrations by lookups and sums
    (``regime``), with no forward pass over the prompt.  Restart worlds only."""
    if not world.restart:
        raise ValueError("example_loglik needs a restart world: without the delimiter restart the examples of a "
                         "prompt are not independent given the concept")
    ys = world.labels if symbols is None else np.asarray(symbols)
    fw = forward(world, x, method=method, prefixes=False)
    # the state that emits y is next_state; the delimiter is emitted by the state after it
    p_delim = np.einsum("kst,kt->ks", world.transition, world.emission[:, :, world.delimiter])     # (K, S)
    emit = world.emission[:, :, ys] * p_delim[:, :, None]                                           # (K, S, Y)
    p = np.einsum("mks,ksy->mky", fw.next_state, emit)
    with np.errstate(divide="ignore"):
        return fw.final[:, :, None] + np.log(p)


def log_posterior_weights(world: World, loglik: np.ndarray) -> np.ndarray:
    """log prior + log-likelihood, normalised over the last axis (concepts).  Rows where every
    concept gives probability 0 come back as NaN."""
    with np.errstate(divide="ignore"):
        logw = np.log(world.prior) + loglik
    m = logw.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        logw = logw - m
        logw -= np.log(np.exp(logw).sum(axis=-1, keepdims=True))
    return np.where(np.isfinite(m), logw, np.nan)


def _raise_impossible(post: np.ndarray):
    bad = np.flatnonzero(np.isnan(post).any(axis=-1))
    if bad.size:
        raise ValueError(f"row {bad[0]} has probability 0 under every concept with prior > 0 "
                         f"({bad.size} such rows): the posterior is undefined; raise the world's "
                         f"smoothing floor")


def concept_posterior(world: World, tokens, *, method: str = "auto") -> np.ndarray:
    """P(concept | tokens) under the prior: (B, K), rows sum to 1."""
    post = np.exp(log_posterior_weights(world, log_likelihood(world, tokens, method=method)))
    _raise_impossible(post)
    return post


def posterior_predictive(world: World, tokens, *, method: str = "auto") -> np.ndarray:
    """P(next symbol | tokens) under the mixture (prior x likelihood): (B, V), rows sum to 1.
    A one-line ValueError when a row is impossible under every concept with prior > 0."""
    fw = forward(world, tokens, method=method, prefixes=False)
    post = np.exp(log_posterior_weights(world, fw.final))
    _raise_impossible(post)
    return np.einsum("bk,bkv->bv", post, next_symbol(world, fw.next_state))


def mixture_predictive(world: World, tokens, *, method: str = "auto") -> np.ndarray:
    """:func:`posterior_predictive` that returns a zero row (instead of raising) where the row is
    impossible under every concept with prior > 0: (B, V)."""
    fw = forward(world, tokens, method=method, prefixes=False)
    post = np.nan_to_num(np.exp(log_posterior_weights(world, fw.final)))
    return np.einsum("bk,bkv->bv", post, next_symbol(world, fw.next_state))


def oracle_predictive(world: World, x_tokens, concepts, *, method: str = "auto") -> np.ndarray:
    """P(next symbol | x, concept) with the true concept known, x scored alone from that
    concept's start: (B, V).  NaN rows where x is impossible under its concept."""
    x_tokens = check_tokens(world, x_tokens)
    concepts = np.asarray(concepts, dtype=np.int64).reshape(-1)
    fw = forward(world, x_tokens, method=method, prefixes=False)
    rows = np.arange(x_tokens.shape[0])
    pred = next_symbol(world, fw.next_state)[rows, concepts]
    ok = np.isfinite(fw.final[rows, concepts])
    return np.where(ok[:, None], pred, np.nan)


@dataclass(frozen=True)
class IclCurve:
    """Exact Bayes for the prompts [demo_1..demo_n, x_test], every n = 0..N, from one pass.

    posterior   (B, N+1, K): P(concept | n demonstrations and x_test)
    predictive  (B, N+1, V): P(next symbol | n demonstrations and x_test) under the mixture
    oracle      (B, V):      P(next symbol | x_test, true concept), x_test scored alone from
                             the concept's start (GINC's label)
    log_evidence (B, N+1):   log P(prompt with n demonstrations) under the mixture
    known       (B, N+1, V): P(next symbol | prompt with n demonstrations, true concept): the
                             best prediction with the concept known.  Equal to ``oracle`` in a
                             restart world; in a restart-free world it also uses the hidden
                             state carried through the delimiters
    NaN marks prompts with probability 0 under every concept with prior > 0 (``known``: under
    the true concept).
    """

    posterior: np.ndarray
    predictive: np.ndarray
    oracle: np.ndarray
    log_evidence: np.ndarray
    known: np.ndarray


def icl_curve(world: World, prompts, *, method: str = "auto", chunk: int = 64) -> IclCurve:
    """Exact posterior and predictive for every number of demonstrations n = 0..N.

    The n-demonstration prompt shares its first n demonstrations with the full prompt, so one
    forward pass over the full prompt gives the state after every delimiter; x_test is then
    run on from each of those states (in a restart world every one of them is the start, so
    x_test is run once)."""
    B, N, k = prompts.tokens.shape[0], prompts.n_demos, prompts.example_length
    K, V = world.n_concepts, world.n_symbols
    post = np.empty((B, N + 1, K))
    pred = np.empty((B, N + 1, V))
    logev = np.empty((B, N + 1))
    known = np.empty((B, N + 1, V))
    x_test = prompts.x_test()
    fx = forward(world, x_test, method=method, prefixes=False)
    oracle = next_symbol(world, fx.next_state)[np.arange(B), prompts.concepts]
    oracle = np.where(np.isfinite(fx.final[np.arange(B), prompts.concepts])[:, None], oracle, np.nan)
    demo_end = np.arange(1, N + 1) * (k + 1)          # first position after delimiter n
    for a in range(0, B, chunk):
        b = min(a + chunk, B)
        demos = prompts.tokens[a:b, : N * (k + 1)]
        if world.restart:
            fw = forward(world, demos, method=method)
            ll_prefix = np.concatenate([np.zeros((b - a, K, 1)), fw.loglik[:, :, demo_end - 1]], axis=2)
            ll = ll_prefix + fx.final[a:b, :, None]                 # (R, K, N+1)
            per_concept = np.broadcast_to(next_symbol(world, fx.next_state[a:b])[:, None], (b - a, N + 1, K, V))
        else:
            fw = forward(world, demos, record=demo_end, method=method)
            ll_prefix = np.concatenate([np.zeros((b - a, K, 1)), fw.loglik[:, :, demo_end - 1]], axis=2)
            init = np.concatenate([np.broadcast_to(world.start, (b - a, 1, K, world.n_states)),
                                   fw.recorded.transpose(0, 2, 1, 3)], axis=1)   # (R, N+1, K, S)
            R = (b - a) * (N + 1)
            cont = forward(world, np.repeat(x_test[a:b], N + 1, axis=0),
                           init=init.reshape(R, K, world.n_states), method=method, prefixes=False)
            ll = ll_prefix + cont.final.reshape(b - a, N + 1, K).transpose(0, 2, 1)
            per_concept = next_symbol(world, cont.next_state).reshape(b - a, N + 1, K, V)
        rows = np.arange(b - a)
        true = prompts.concepts[a:b]
        ok_true = np.isfinite(ll[rows, true])                              # (R, N+1)
        known[a:b] = np.where(ok_true[..., None], per_concept[rows, :, true], np.nan)
        logw = log_posterior_weights(world, ll.transpose(0, 2, 1))        # (R, N+1, K)
        w = np.exp(logw)
        post[a:b] = w
        pred[a:b] = np.einsum("rnk,rnkv->rnv", w, per_concept)
        with np.errstate(divide="ignore"):
            lw = np.log(world.prior) + ll.transpose(0, 2, 1)
        m = lw.max(axis=-1)
        with np.errstate(invalid="ignore"):
            logev[a:b] = np.where(np.isfinite(m), m + np.log(np.exp(lw - m[..., None]).sum(-1)), -np.inf)
    return IclCurve(post, pred, oracle, logev, known)


# ---------------------------------------------------------------------- the training Bayes floor
def effective_transition(world: World) -> np.ndarray:
    """(K, S, S): each concept's hidden chain with the symbols marginalised, M_k[s, t] =
    P(h_{t+1} = t | h_t = s, concept k); in a restart world the delimiter's restart to ``start``
    is folded in: (1 - E[s, delim]) T[s, t] + E[s, delim] start[t]."""
    M = world.transition.copy()
    if world.restart:
        pd = world.emission[:, :, world.delimiter]                       # (K, S)
        M = (1 - pd)[:, :, None] * M + pd[:, :, None] * world.start[:, None, :]
    return M


def block_start_states(world: World, offsets) -> np.ndarray:
    """(N, K, S): the hidden state at document position t (given nothing about the symbols
    before it) under each concept, start_k M_k^t (the chain run from the start for t steps with the symbols marginalised; in a restart world
    the delimiter's restart folded into the transition)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    K, S = world.n_concepts, world.n_states
    M = effective_transition(world)
    out = np.empty((offsets.size, K, S))
    order = np.argsort(offsets, kind="stable")
    state, t = world.start.copy(), 0
    for i in order:
        while t < offsets[i]:
            state = np.einsum("ks,kst->kt", state, M)
            t += 1
        out[i] = state
    return out


def block_loss(world: World, blocks, offsets) -> np.ndarray:
    """(N, B-1): exact Bayes loss (nats) of symbol j = 1..B-1 of each block given symbols
    0..j-1 and the block's offset in its document."""
    blocks = np.asarray(blocks)
    fw = forward(world, blocks, init=block_start_states(world, offsets), prefixes=True)
    return _mixture_loss(world, fw.loglik)


def _mixture_loss(world: World, loglik: np.ndarray) -> np.ndarray:
    """(N, B-1) per-symbol mixture loss from prefix log-likelihoods (N, K, B)."""
    with np.errstate(divide="ignore"):
        logw = np.log(world.prior)[None, :, None] + loglik                   # (N, K, B)
    m = logw.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(logw - m).sum(axis=1, keepdims=True)))[:, 0]    # (N, B)
    return -(lse[:, 1:] - lse[:, :-1])


def document_loss(world: World, tokens, concepts) -> tuple[np.ndarray, np.ndarray]:
    """(mixture, known), each (N, L-1) nats, for whole documents ``tokens`` (N, L) from their
    start, drawn from ``concepts`` (N,), from one forward pass: the exact Bayes loss of symbol
    t = 1..L-1 given symbols 0..t-1 (:func:`block_loss` at offset 0), and the loss with the
    document's concept known."""
    ll = forward(world, tokens, prefixes=True).loglik                        # (N, K, L)
    own = ll[np.arange(ll.shape[0]), np.asarray(concepts, dtype=np.int64)]   # (N, L)
    return _mixture_loss(world, ll), -(own[:, 1:] - own[:, :-1])


# ---------------------------------------------------------------------- n-grids of the bayes command and converge
def format_n_demos(ns) -> str:
    """The shortest spec of a sorted list: [1, 2, 3, 4, 8] -> '1..4,8'."""
    parts, ns = [], sorted(set(int(n) for n in ns))
    i = 0
    while i < len(ns):
        j = i
        while j + 1 < len(ns) and ns[j + 1] == ns[j] + 1:
            j += 1
        parts.append(str(ns[i]) if j == i else f"{ns[i]},{ns[j]}" if j == i + 1 else f"{ns[i]}..{ns[j]}")
        i = j + 1
    return ",".join(parts)


def demo_counts(n_max: int) -> list[int]:
    """0, 1, 2, 4, 8, ... up to n_max, and n_max itself."""
    ns, n = [0], 1
    while n <= n_max:
        ns.append(n)
        n *= 2
    if ns[-1] != n_max:
        ns.append(n_max)
    return ns
