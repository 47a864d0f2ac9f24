#!/usr/bin/env python
"""Benchmark of simkernel's exact forward pass (dense: every prefix; GINC: log-likelihoods).

Every contender runs in this one process on the same prompts, and the script prints
seconds, GFLOP/s and speed-ups, then the performance bars marked PASS/FAIL.

Part 1, dense medium workload (``--prompts/--demos/--k`` to resize it), log-likelihood of
every prefix (forward(..., prefixes=True), the default)
    world   make_world("random", seed=0, n_concepts=10, n_states=100, n_symbols=50,
            restart=False)
    prompts sample_prompts(world, 256, 256, 10, seed=0)  -> B = 256 rows of L = 2,825 tokens
    flops   2 * S^2 * K * B * L   (one (1 x S) @ (S x S) product per token, concept, prompt;
            every contender is charged this same nominal count, so its GFLOP/s is
            "effective": nominal flops / its seconds)
    contenders
      simkernel.forward(method="dense") with n_threads = 1 and 2
      a batched vectorised-numpy reference (below), BLAS limited to 1 and to 2 threads (and to
      numpy's default thread count, if that is neither)
      hmmlearn CategoricalHMM.score, one call per (concept, prompt), implementation="log"
      (hmmlearn's default) and "scaling"; these are timed on the first few prompts x all
      concepts (at least --hmm-min-seconds each) and scaled linearly to all B prompts
      (every prompt has the same length, so the per-call cost is the same).
    plus the machine's single-thread float64 GEMM peak (best of --peak-repeats
    n x n @ n x n, BLAS limited to 1 thread), measured with numpy's and with scipy's
    OpenBLAS (simkernel's Numba kernels call scipy's); the larger is the peak.

Part 2, GINC preset: make_world("ginc") (S = 100, one-hot emissions), the same prompt
    shape by default, method="sparse" against method="dense" at the same thread count, 1 and 2:
    the log-likelihood workload forward(..., prefixes=False) (= log_likelihood(): the final
    log-likelihood of each prompt under each concept, (B, K)), which the bar judges, and the
    every-prefix workload forward(..., prefixes=True) ((B, K, L)), printed for information.

Bars (simkernel at 2 threads, i.e. the default on this 2-core machine, unless stated):
    >= 150x hmmlearn default (log), >= 15x hmmlearn scaling, >= 3x batched numpy (numpy at its
    default BLAS threading, 2 threads here), one thread >= 70% of the one-core GEMM peak, two
    threads >= 1.7x one thread, GINC sparse >= 20x GINC dense on the log-likelihood workload
    (2 threads each; the 1-thread ratio is printed beside it), final log-likelihoods agree < 1e-8.

Under the numpy bar the script prints the like-for-like ratios (1t vs BLAS 1t, 2t vs BLAS 2t)
and the ceiling: numpy already spends most of its time in the same BLAS GEMMs, so no forward
doing those flops can beat it by more than numpy seconds / (nominal flops at the GEMM peak).
An [info] line gives what the every-prefix output costs the sparse path (prefixes=True minus
prefixes=False), beside the cost of allocating + log + cumsum of a (K, B, L) array in numpy.

Every timing also records how much CPU other processes used meanwhile (/proc/stat minus this
process's own CPU time); above 10% of a core the row is marked DISTURBED, and so is every bar
built on it.  --wait-idle S waits up to S seconds before each timing for a quiet machine.
The GINC timings (and the [info] array timing) are repeated (at least --repeats times) until
their calls add up to 1 s and the best is kept, so the fast calls get a disturbance reading too.

Run:  python benchmarks/bench_forward.py            (full workload, about 3-4 minutes on an idle 2-core machine)
      python benchmarks/bench_forward.py --wait-idle 60   (same, on a machine shared with others)
      python benchmarks/bench_forward.py --quick    (small sizes, seconds; bars not meaningful)
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  (load scipy's BLAS now, so threadpoolctl sees and caps it)
import scipy.linalg.blas as sblas
from threadpoolctl import threadpool_info, threadpool_limits

import numba

import simkernel
from machine import CpuMeter, cpu_name
from simkernel import forward, make_world, sample_prompts

BARS = dict(hmm_log=150.0, hmm_scaling=15.0, numpy=3.0, peak_fraction=0.70, two_threads=1.7,
            sparse=20.0)
AGREE_TOL = 1e-8


# ---------------------------------------------------------------------- helpers
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small sizes for a smoke run: 32 prompts x 16 demos, GINC 64 x 16, "
                        "1000^3 peak, 1 repeat, 0.3 s hmmlearn subsets (bars are not meaningful)")
    p.add_argument("--prompts", type=int, default=None, help="B for the dense workload [256]")
    p.add_argument("--demos", type=int, default=None, help="demonstrations per prompt [256]")
    p.add_argument("--k", type=int, default=10, help="example length (tokens per demonstration)")
    p.add_argument("--concepts", type=int, default=10, help="K of the random world")
    p.add_argument("--states", type=int, default=100, help="S of the random world")
    p.add_argument("--symbols", type=int, default=50, help="V of the random world")
    p.add_argument("--ginc-prompts", type=int, default=None, help="B for the GINC workload [256]")
    p.add_argument("--ginc-demos", type=int, default=None, help="demonstrations per GINC prompt [256]")
    p.add_argument("--ginc-k", type=int, default=10, help="example length of the GINC prompts")
    p.add_argument("--repeats", type=int, default=None, help="repeats of each fast contender (best is kept) [3]")
    p.add_argument("--hmm-min-seconds", type=float, default=None,
                   help="time hmmlearn on whole prompts (all concepts) until at least this long [2.0]")
    p.add_argument("--hmm-min-prompts", type=int, default=2, help="at least this many prompts for hmmlearn")
    p.add_argument("--skip-hmmlearn", action="store_true", help="leave hmmlearn out (its bars are then SKIP)")
    p.add_argument("--peak-n", type=int, default=None, help="matrix size of the peak GEMM [2000]")
    p.add_argument("--peak-repeats", type=int, default=5, help="repeats of the peak GEMM (best is kept)")
    p.add_argument("--seed", type=int, default=0, help="seed of the worlds and prompts")
    p.add_argument("--wait-idle", type=float, default=0.0,
                   help="before each timing, wait up to this many seconds for other processes to use "
                        "< 10%% of a core (0: don't wait; disturbed timings are flagged either way)")
    a = p.parse_args(argv)
    quick = dict(prompts=32, demos=16, ginc_prompts=64, ginc_demos=16, repeats=1, hmm_min_seconds=0.3,
                 peak_n=1000)
    full = dict(prompts=256, demos=256, ginc_prompts=256, ginc_demos=256, repeats=3, hmm_min_seconds=2.0,
                peak_n=2000)
    for name, value in (quick if a.quick else full).items():
        if getattr(a, name) is None:
            setattr(a, name, value)
    return a


METER = CpuMeter()
NCORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
WAIT_IDLE = 0.0       # set from --wait-idle


def other_load(r0, r1):
    """Other processes' CPU use between two reads, as a fraction of one core; None when the
    interval is too short for /proc/stat's 10 ms ticks to say."""
    other, _, wall = CpuMeter.others(r0, r1)
    return min(other / wall, float(NCORES)) if wall >= 0.25 else None


def wait_until_idle():
    """With --wait-idle S: wait (at most S seconds in all per call) until other processes use
    < 10% of a core over a 1 s window.  Returns the seconds waited."""
    if WAIT_IDLE <= 0 or not METER.ok:
        return 0.0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < WAIT_IDLE:
        r0 = METER.read()
        time.sleep(1.0)
        if (other_load(r0, METER.read()) or 0.0) < 0.10:
            break
    return time.perf_counter() - t0


def best_of(fn, repeats, min_total=0.0, max_repeats=30):
    """(best seconds, all seconds, result of the last call, other-process load as a fraction of
    one core).  Runs fn at least ``repeats`` times and, for fast calls, on until the timed calls
    add up to ``min_total`` seconds (at most ``max_repeats`` calls).  The load is that of the
    best call; when that call is too short for /proc/stat to say (< 0.25 s), it is the load
    over all the timed calls together (other processes' CPU-s / timed seconds, if >= 0.5 s)."""
    times, loads, out = [], [], None
    other_sum = wall_sum = 0.0
    while len(times) < max(1, repeats) or (sum(times) < min_total and len(times) < max_repeats):
        wait_until_idle()
        r0 = METER.read()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        r1 = METER.read()
        loads.append(other_load(r0, r1))
        other_sum += (r1[0] - r0[0]) - (r1[2] - r0[2])       # unclipped: tick rounding averages out
        wall_sum += r1[3] - r0[3]
    i = int(np.argmin(times))
    load = loads[i]
    if load is None and wall_sum >= 0.5:
        load = min(max(0.0, other_sum) / wall_sum, float(NCORES))
    return times[i], times, out, load


def is_disturbed(load):
    return load is not None and load > 0.10


def load_note(load):
    if load is None:
        return "others n/a (too short to measure)"
    return f"others {load:.0%} of a core" + ("  <-- DISTURBED" if is_disturbed(load) else "")


def fmt_times(times):
    if len(times) <= 6:
        return "[" + ", ".join(f"{t:.3f}" for t in times) + "]"
    return f"[{len(times)} calls: min {min(times):.3f}, median {float(np.median(times)):.3f}, max {max(times):.3f}]"


def numpy_blas_threads():
    """numpy's BLAS thread count as the process starts (what a user gets by default)."""
    for lib in threadpool_info():
        if lib.get("user_api") == "blas" and "numpy" in lib.get("filepath", ""):
            return int(lib.get("num_threads") or 1)
    return None


def git_state():
    here = os.path.dirname(os.path.abspath(simkernel.__file__))
    try:
        rev = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return f"{rev}{' + uncommitted changes in simkernel/' if dirty else ''}" if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"




def print_environment():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine   : {cpu_name()}, {cores} usable cores, {platform.system()} {platform.release()}")
    print(f"python    : {sys.version.split()[0]}; numpy {np.__version__}, scipy {scipy_version()}, "
          f"numba {numba.__version__}, threadpoolctl {threadpoolctl_version()}, hmmlearn {hmmlearn_version()}")
    print(f"simkernel : {simkernel.__version__} at {os.path.dirname(simkernel.__file__)} (git {git_state()})")
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            print(f"BLAS      : {lib.get('internal_api')} {lib.get('version')} ({lib.get('architecture')}, "
                  f"{lib.get('num_threads')} threads) {os.path.basename(lib.get('filepath', ''))}")


def scipy_version():
    import scipy
    return scipy.__version__


def threadpoolctl_version():
    import threadpoolctl
    return threadpoolctl.__version__


def hmmlearn_version():
    try:
        import hmmlearn
        return hmmlearn.__version__
    except ImportError:
        return "not installed"


def numba_signature_count():
    """Compiled specialisations of simkernel's forward kernels (to catch a compile inside a timing)."""
    from simkernel import bayes
    return sum(len(getattr(bayes, f).signatures) for f in ("_dense_unit", "_sparse_unit")
               if hasattr(getattr(bayes, f, None), "signatures"))


def max_abs_diff(a, b):
    """Max |a - b| where both are finite; inf if they disagree on which entries are -inf/nan."""
    a, b = np.asarray(a), np.asarray(b)
    fa, fb = np.isfinite(a), np.isfinite(b)
    if not np.array_equal(fa, fb) or not np.array_equal(a[~fa], b[~fb]):
        return float("inf")
    return float(np.max(np.abs(a[fa] - b[fb]))) if fa.any() else 0.0


# ---------------------------------------------------------------------- contenders
def numpy_forward(world, tokens):
    """Batched, vectorised-numpy scaled forward pass: every concept and every prompt advance
    together, one step per token.  Returns log P(tokens[:, :t+1] | concept k), (B, K, L).

    Per step t:  pred = alpha @ T            (K, B, S) @ (K, S, S), np.matmul -> K BLAS GEMMs
                 alpha = pred * E[:, :, o_t] (emission columns gathered per prompt)
                 c_t = alpha.sum(-1); alpha /= c_t;  log-likelihood = cumsum(log c_t)
    All buffers are preallocated and every op writes in place (out=), as a numpy-fluent
    user would write it."""
    tokens = np.asarray(tokens)
    B, L = tokens.shape
    K, S = world.n_concepts, world.n_states
    T = world.transition                                               # (K, S, S)
    ET = np.ascontiguousarray(world.emission.transpose(0, 2, 1))       # (K, V, S)
    tok_t = np.ascontiguousarray(tokens.T.astype(np.intp))             # (L, B)
    start = world.start[:, None, :]                                    # (K, 1, S)
    pred = np.empty((K, B, S))
    alpha = np.empty((K, B, S))
    emis = np.empty((K, B, S))
    c = np.empty((K, B))
    logc = np.empty((L, K, B))
    pred[...] = start
    for t in range(L):
        if t > 0:
            np.matmul(alpha, T, out=pred)
            if world.restart:
                rows = tok_t[t - 1] == world.delimiter
                if rows.any():
                    pred[:, rows, :] = start
        np.take(ET, tok_t[t], axis=1, out=emis, mode="clip")        # (K, B, S)
        np.multiply(pred, emis, out=alpha)
        np.sum(alpha, axis=2, out=c)
        logc[t] = c
        c[c == 0.0] = 1.0                                              # impossible prefix: keep alpha = 0
        np.divide(alpha, c[:, :, None], out=alpha)
    with np.errstate(divide="ignore"):
        np.log(logc, out=logc)
    np.cumsum(logc, axis=0, out=logc)
    return logc.transpose(2, 1, 0)                                     # (B, K, L)


def hmmlearn_models(world, implementation):
    from hmmlearn.hmm import CategoricalHMM
    models = []
    for k in range(world.n_concepts):
        m = CategoricalHMM(n_components=world.n_states, n_features=world.n_symbols,
                           implementation=implementation, params="", init_params="")
        m.startprob_ = world.start[k].copy()
        m.transmat_ = world.transition[k].copy()
        m.emissionprob_ = world.emission[k].copy()
        models.append(m)
    return models


def time_hmmlearn(world, tokens, implementation, min_seconds, min_prompts):
    """score() once per (concept, prompt), whole prompts at a time, until both min_seconds and
    min_prompts are reached.  Returns (seconds, prompts done, (n, K) log-likelihoods)."""
    models = hmmlearn_models(world, implementation)
    xs = [np.ascontiguousarray(tokens[b].astype(np.int64)[:, None]) for b in range(tokens.shape[0])]
    for m in models:                       # warm-up: first-call imports and checks
        m.score(xs[0][:20])
    rows = []
    elapsed = 0.0
    for b in range(tokens.shape[0]):
        t0 = time.perf_counter()
        rows.append([m.score(xs[b]) for m in models])
        elapsed += time.perf_counter() - t0
        if elapsed >= min_seconds and b + 1 >= min_prompts:
            break
    return elapsed, len(rows), np.array(rows)


def gemm_peak(n, repeats):
    """Best single-thread float64 GEMM rate (GFLOP/s) of numpy's and of scipy's BLAS."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n))
    b = rng.standard_normal((n, n))
    out = np.empty((n, n))
    af, bf = np.asfortranarray(a), np.asfortranarray(b)
    flops = 2.0 * n ** 3
    with threadpool_limits(1, user_api="blas"):
        np.matmul(a, b, out=out)
        t_np, times_np, _, l_np = best_of(lambda: np.matmul(a, b, out=out), repeats)
        sblas.dgemm(1.0, af, bf)
        t_sp, times_sp, _, l_sp = best_of(lambda: sblas.dgemm(1.0, af, bf), repeats)
    return (flops / t_np / 1e9, times_np, l_np), (flops / t_sp / 1e9, times_sp, l_sp)


# ---------------------------------------------------------------------- report
def bar_line(label, value, threshold, unit, passed=None, note="", keys=(), disturbed=None):
    if value is None:
        print(f"  SKIP  {label:<52} (not measured){note}")
        return None
    ok = value >= threshold if passed is None else passed
    print(f"  {'PASS' if ok else 'FAIL'}  {label:<52} measured {value:{'.1%' if unit == '%' else '.2f'}}"
          f"{'' if unit == '%' else unit}  (bar >= {threshold:{'.0%' if unit == '%' else 'g'}}"
          f"{'' if unit == '%' else unit}){note}{disturbed_note(keys, disturbed)}")
    return ok


def disturbed_note(keys, disturbed):
    hit = [disturbed[k] for k in keys if disturbed and k in disturbed]
    return f"  [DISTURBED input: {', '.join(hit)}]" if hit else ""


def main(argv=None):
    global WAIT_IDLE
    a = parse_args(argv)
    WAIT_IDLE = a.wait_idle
    run_start = METER.read()
    print("=" * 100)
    print("simkernel forward-pass benchmark" + ("  [--quick: small sizes, bars not meaningful]" if a.quick else ""))
    print("=" * 100)
    print_environment()
    np_default = numpy_blas_threads()     # before any threadpool_limits: what a user gets
    print(f"numpy's BLAS threads by default: {np_default}")
    print()

    # ------------------------------------------------------------------ peak
    print(f"[peak] single-thread float64 GEMM, {a.peak_n} x {a.peak_n} @ {a.peak_n} x {a.peak_n}, "
          f"BLAS limited to 1 thread, best of {a.peak_repeats}")
    (peak_np, times_np, l_np), (peak_sp, times_sp, l_sp) = gemm_peak(a.peak_n, a.peak_repeats)
    peak = max(peak_np, peak_sp)
    disturbed = {}        # key -> label of every timing taken while other processes were busy
    for name, rate, times, load in (("numpy.matmul (numpy's OpenBLAS)", peak_np, times_np, l_np),
                                    ("scipy.linalg.blas.dgemm (scipy's OpenBLAS)", peak_sp, times_sp, l_sp)):
        print(f"  {name:<44}: {rate:7.2f} GFLOP/s  seconds {fmt_times(times)}  {load_note(load)}")
        if is_disturbed(load):
            disturbed["peak"] = "peak " + name.split()[0]
    print(f"  {'one-core peak used below':<44}: {peak:7.2f} GFLOP/s")
    print()

    # ------------------------------------------------------------------ dense workload
    world = make_world("random", seed=a.seed, n_concepts=a.concepts, n_states=a.states,
                       n_symbols=a.symbols, restart=False)
    prompts = sample_prompts(world, a.prompts, a.demos, a.k, seed=a.seed)
    tokens = prompts.tokens
    B, L = tokens.shape
    K, S = world.n_concepts, world.n_states
    flops = 2.0 * S * S * K * B * L
    print(f"[dense] {world!r}")
    print(f"  prompts: B = {B} x L = {L} tokens ({a.demos} demonstrations x k = {a.k}), float64, "
          f"log-likelihood of every prefix")
    print(f"  nominal flops 2*S^2*K*B*L = {flops / 1e9:.2f} GFLOP")

    t0 = time.perf_counter()
    warm = tokens[: min(B, 4), : min(L, 64)]
    for nt in (1, 2):
        forward(world, warm, method="dense", n_threads=nt)
    print(f"  warm-up (Numba compile or cache load of the dense kernel): {time.perf_counter() - t0:.2f} s")
    n_sig = numba_signature_count()

    results = {}        # name -> (label, threads, seconds, note)
    sk = {}
    for nt in (1, 2):
        t, times, fw, load = best_of(lambda: forward(world, tokens, method="dense", n_threads=nt), a.repeats)
        sk[nt] = (t, fw)
        results[f"sk{nt}"] = (f"simkernel forward dense", nt, t, f"best of {fmt_times(times)}; {load_note(load)}")
        print(f"  simkernel dense, n_threads={nt}: best {t:.3f} s  {fmt_times(times)}  {load_note(load)}")
        if is_disturbed(load):
            disturbed[f"sk{nt}"] = f"simkernel {nt}t"
    ref_ll = np.ascontiguousarray(sk[1][1].loglik)
    d12 = max_abs_diff(sk[2][1].loglik, ref_ll)
    print(f"  simkernel 1 vs 2 threads, max |diff| over all prefixes: {d12:.2e}")

    np_res = {}
    for nt in sorted({1, 2} | ({np_default} if np_default else set())):
        with threadpool_limits(nt, user_api="blas"):
            numpy_forward(world, warm)
            t, times, ll, load = best_of(lambda: numpy_forward(world, tokens), a.repeats)
        np_res[nt] = t
        results[f"np{nt}"] = ("numpy batched reference", nt, t, f"best of {fmt_times(times)}; {load_note(load)}")
        if is_disturbed(load):
            disturbed[f"np{nt}"] = f"numpy {nt}t"
        d_final = max_abs_diff(ll[:, :, -1], ref_ll[:, :, -1])
        d_all = max_abs_diff(ll, ref_ll)
        print(f"  numpy batched, BLAS {nt} thread(s): best {t:.3f} s  {fmt_times(times)}  {load_note(load)};  vs simkernel "
              f"max |diff| final {d_final:.2e}, all prefixes {d_all:.2e}  "
              f"[{'agree' if d_final < AGREE_TOL else 'DISAGREE'}]")
        results[f"np{nt}_agree"] = d_final
        del ll

    hmm = {}
    if not a.skip_hmmlearn:
        try:
            import hmmlearn  # noqa: F401
        except ImportError:
            print("  hmmlearn is not installed: its contenders are skipped (pip install 'hmmlearn>=0.3,<0.4')")
            a.skip_hmmlearn = True
    if not a.skip_hmmlearn:
        for impl in ("log", "scaling"):
            wait_until_idle()
            r0 = METER.read()
            sec, n_done, ll = time_hmmlearn(world, tokens, impl, a.hmm_min_seconds, a.hmm_min_prompts)
            load = other_load(r0, METER.read())
            if is_disturbed(load):
                disturbed[f"hmm_{impl}"] = f"hmmlearn {impl}"
            full = sec * B / n_done
            d = max_abs_diff(ll, ref_ll[:n_done, :, -1])
            hmm[impl] = (full, sec, n_done, d)
            name = "default, log-space" if impl == "log" else "scaling"
            results[f"hmm_{impl}"] = (f"hmmlearn CategoricalHMM.score ({name})", 1, full,
                                      f"SCALED: {sec:.2f} s measured on {n_done}/{B} prompts x {K} concepts "
                                      f"({n_done * K} score calls), x {B / n_done:.1f}; {load_note(load)}")
            print(f"  hmmlearn implementation={impl!r}: {sec:.3f} s for {n_done} prompts x {K} concepts "
                  f"= {sec / (n_done * K) * 1e3:.1f} ms per score call; scaled to all {B} prompts: {full:.1f} s;"
                  f"  vs simkernel max |diff| {d:.2e} [{'agree' if d < AGREE_TOL else 'DISAGREE'}]  {load_note(load)}")

    if numba_signature_count() != n_sig:
        print("  WARNING: a simkernel Numba kernel was compiled during the timed runs; the times include it")

    # table
    t1, t2 = sk[1][0], sk[2][0]
    print()
    print(f"  {'contender':<50} {'threads':>7} {'seconds':>10} {'GFLOP/s':>8} {'sk 2t x':>9} {'sk 1t x':>9}  note")
    print("  " + "-" * 130)
    for key in ["sk1", "sk2"] + [f"np{nt}" for nt in sorted(np_res)] + ["hmm_log", "hmm_scaling"]:
        if key not in results:
            continue
        label, nt, t, note = results[key]
        print(f"  {label:<50} {nt:>7} {t:>10.3f} {flops / t / 1e9:>8.2f} {t / t2:>8.1f}x {t / t1:>8.1f}x  {note}")
    print(f"  GFLOP/s = nominal 2*S^2*K*B*L / seconds for every contender.  'sk 2t x' = contender seconds / "
          f"simkernel 2-thread seconds.")
    print(f"  hmmlearn rows are single-threaded (one score call at a time, as a user would call it) and "
          f"SCALED linearly from a subset of prompts.")
    frac = flops / t1 / 1e9 / peak
    print(f"  simkernel one thread: {flops / t1 / 1e9:.2f} GFLOP/s = {frac:.1%} of the one-core GEMM peak "
          f"({peak:.2f} GFLOP/s)")
    # The numpy reference does the same GEMMs through BLAS, so no GEMM-based forward can beat it
    # by more than (numpy seconds) / (nominal flops at the GEMM peak).
    ideal = {nt: flops / (min(nt, NCORES) * peak * 1e9) for nt in np_res}
    print(f"  [info] ceiling: at 100% of the one-core GEMM peak a forward doing these flops takes {ideal[1]:.2f} s on "
          f"1 core, {ideal[2]:.2f} s on 2; numpy takes {np_res[1]:.2f} s (BLAS 1t) and {np_res[2]:.2f} s (BLAS 2t)")
    print()

    # ------------------------------------------------------------------ GINC
    gw = make_world("ginc", seed=a.seed)
    gp = sample_prompts(gw, a.ginc_prompts, a.ginc_demos, a.ginc_k, seed=a.seed)
    gt = gp.tokens
    gB, gL = gt.shape
    gK = gw.n_concepts
    gflops = 2.0 * gw.n_states ** 2 * gK * gB * gL
    nnz = (gw.emission > 0).sum(axis=1)
    print(f"[ginc] {gw!r}")
    print(f"  prompts: B = {gB} x L = {gL} tokens ({a.ginc_demos} demonstrations x k = {a.ginc_k}); "
          f"states per symbol: mean {nnz.mean():.1f}, max {nnz.max()}; method sparse vs dense at the same "
          f"n_threads (1 and 2)")
    t0 = time.perf_counter()
    for m in ("sparse", "dense"):
        for pf in (False, True):
            for nt in (1, 2):
                forward(gw, gt[: min(gB, 4), : min(gL, 64)], method=m, n_threads=nt, prefixes=pf)
    print(f"  warm-up (Numba compile or cache load of both kernels): {time.perf_counter() - t0:.2f} s")
    n_sig = numba_signature_count()
    g = {}          # (prefixes, threads, method) -> (best seconds, Forward)
    g_med = {}      # (prefixes, threads, method) -> median seconds of the timed calls
    for pf, what in ((False, "log-likelihood workload: forward(..., prefixes=False) = log_likelihood(), "
                             "final log P(prompt | concept), (B, K)"),
                     (True, "every-prefix workload: forward(..., prefixes=True), log P(prefix | concept), "
                            "(B, K, L)")):
        print(f"  {what}")
        for nt in (1, 2):
            for m in ("sparse", "dense"):
                t, times, fw, load = best_of(
                    lambda: forward(gw, gt, method=m, n_threads=nt, prefixes=pf), a.repeats, min_total=1.0)
                g[pf, nt, m] = (t, fw)
                g_med[pf, nt, m] = float(np.median(times))
                print(f"    {m:<6} n_threads={nt}: best {t:7.3f} s  {fmt_times(times)}  "
                      f"({gflops / t / 1e9:7.2f} dense-equivalent GFLOP/s)  {load_note(load)}")
                if is_disturbed(load):
                    disturbed[f"ginc_{'p' if pf else 'f'}{nt}_{m}"] = f"GINC {m} {nt}t prefixes={pf}"
            print(f"    sparse over dense, n_threads={nt}: {g[pf, nt, 'dense'][0] / g[pf, nt, 'sparse'][0]:.1f}x "
                  f"(best / best; median / median {g_med[pf, nt, 'dense'] / g_med[pf, nt, 'sparse']:.1f}x)")
    if numba_signature_count() != n_sig:
        print("  WARNING: a simkernel Numba kernel was compiled during the timed runs; the times include it")
    g_ratio = {(pf, nt): g[pf, nt, "dense"][0] / g[pf, nt, "sparse"][0] for pf in (False, True) for nt in (1, 2)}
    g_mratio = {(pf, nt): g_med[pf, nt, "dense"] / g_med[pf, nt, "sparse"] for pf in (False, True) for nt in (1, 2)}

    # what the every-prefix output costs on top: allocating + log + cumsum of (K, B, L) float64
    def output_floor():
        arr = np.empty((gK, gB, gL))
        arr.fill(0.5)
        np.log(arr, out=arr)
        np.cumsum(arr, axis=2, out=arr)
    t_floor, times_floor, _, load = best_of(output_floor, a.repeats, min_total=1.0)
    extra = g[True, 2, "sparse"][0] - g[False, 2, "sparse"][0]
    print(f"  [info] every-prefix output: sparse 2t takes {extra:+.3f} s more with prefixes=True; allocating + log + "
          f"cumsum of one ({gK}, {gB}, {gL}) float64 array in numpy on one thread alone takes {t_floor:.3f} s "
          f"{fmt_times(times_floor)}  {load_note(load)}")

    # agreement: final log-likelihoods, sparse vs dense (the bar); the rest for information
    g_final = max(max_abs_diff(g[False, nt, "sparse"][1].final, g[False, nt, "dense"][1].final) for nt in (1, 2))
    g_all = max_abs_diff(g[True, 2, "sparse"][1].loglik, g[True, 2, "dense"][1].loglik)
    g_self = max(max_abs_diff(g[True, nt, m][1].loglik[:, :, -1], g[False, nt, m][1].final)
                 for nt in (1, 2) for m in ("sparse", "dense"))
    g_thr = max(max_abs_diff(g[pf, 1, m][1].final, g[pf, 2, m][1].final)
                for pf in (False, True) for m in ("sparse", "dense"))
    print(f"  max |diff| of final log-likelihoods, sparse vs dense: {g_final:.2e} "
          f"[{'agree' if g_final < AGREE_TOL else 'DISAGREE'}]; every prefix, sparse vs dense: {g_all:.2e}; "
          f"prefixes=True last vs prefixes=False final: {g_self:.2e}; 1 vs 2 threads: {g_thr:.2e}")
    print()

    # ------------------------------------------------------------------ bars
    if disturbed:
        print(f"WARNING: {len(disturbed)} timing(s) ran while other processes used > 10% of a core "
              f"({', '.join(disturbed.values())}); their numbers (and the bars built on them) are not clean: "
              f"rerun on a quiet machine, or with --wait-idle 60.")
        print()
    print("bars (speed-ups are contender seconds / simkernel seconds; simkernel at 2 threads unless stated):")
    oks = []
    if hmm:
        oks.append(bar_line("vs hmmlearn default (log-space), scaled", hmm["log"][0] / t2, BARS["hmm_log"], "x",
                            note=f"  [1 thread: {hmm['log'][0] / t1:.1f}x]", keys=("hmm_log", "sk2"),
                            disturbed=disturbed))
        oks.append(bar_line("vs hmmlearn implementation='scaling', scaled", hmm["scaling"][0] / t2,
                            BARS["hmm_scaling"], "x", note=f"  [1 thread: {hmm['scaling'][0] / t1:.1f}x]",
                            keys=("hmm_scaling", "sk2"), disturbed=disturbed))
    else:
        bar_line("vs hmmlearn default (log-space)", None, BARS["hmm_log"], "x")
        bar_line("vs hmmlearn implementation='scaling'", None, BARS["hmm_scaling"], "x")
    nd = np_default if np_default in np_res else 2
    oks.append(bar_line(f"vs batched numpy: sk 2t / numpy BLAS default ({nd}t)", np_res[nd] / t2, BARS["numpy"],
                        "x", keys=(f"np{nd}", "sk2"), disturbed=disturbed))
    print(f"{'':8}like for like: simkernel 1t vs numpy BLAS 1t {np_res[1] / t1:.2f}x, 2t vs BLAS 2t "
          f"{np_res[2] / t2:.2f}x")
    print(f"{'':8}ceiling: numpy spends its time in the same 2*S^2*K*B*L BLAS GEMM flops; at 100% of the one-core "
          f"GEMM peak ({peak:.2f} GFLOP/s) they take {ideal[1]:.2f} s on 1 core, {ideal[2]:.2f} s on 2, so ANY "
          f"implementation doing these GEMMs is at most {np_res[1] / ideal[1]:.2f}x numpy 1t/1t and "
          f"{np_res[nd] / ideal[min(nd, 2)]:.2f}x numpy BLAS {nd}t on {min(nd, 2)} cores "
          f"(simkernel reaches {ideal[1] / t1:.0%} and {ideal[2] / t2:.0%} of those ceilings); "
          f"{BARS['numpy']:g}x over numpy BLAS {nd}t would need {ideal[min(nd, 2)] * BARS['numpy'] / np_res[nd]:.0%} "
          f"of the {min(nd, 2)}-core GEMM peak")
    oks.append(bar_line("one thread, fraction of one-core GEMM peak", frac, BARS["peak_fraction"], "%",
                        note=f"  [{flops / t1 / 1e9:.2f} of {peak:.2f} GFLOP/s]", keys=("sk1", "peak"),
                        disturbed=disturbed))
    oks.append(bar_line("two threads over one thread", t1 / t2, BARS["two_threads"], "x", keys=("sk1", "sk2"),
                        disturbed=disturbed))
    oks.append(bar_line("GINC sparse over dense, log_likelihood, 2t each", g_ratio[False, 2], BARS["sparse"], "x",
                        note=f"  [1 thread each: {g_ratio[False, 1]:.1f}x; median/median: 2t {g_mratio[False, 2]:.1f}x, "
                             f"1t {g_mratio[False, 1]:.1f}x]",
                        keys=("ginc_f2_sparse", "ginc_f2_dense"), disturbed=disturbed))
    print(f"  info  GINC sparse over dense, every prefix (prefixes=True): {g_ratio[True, 2]:.1f}x at 2 threads each, "
          f"{g_ratio[True, 1]:.1f}x at 1 thread each  (no bar)"
          + disturbed_note(("ginc_p2_sparse", "ginc_p2_dense", "ginc_p1_sparse", "ginc_p1_dense"), disturbed))
    agree = {**{f"numpy BLAS {nt}t": results[f"np{nt}_agree"] for nt in sorted(np_res)},
             **{f"hmmlearn {k}": v[3] for k, v in hmm.items()}, "GINC sparse/dense": g_final}
    worst = max(agree.values())
    ok = worst < AGREE_TOL
    oks.append(ok)
    print(f"  {'PASS' if ok else 'FAIL'}  {'agreement, max |diff| of final log-liks':<52} measured {worst:.2e}  "
          f"(bar < {AGREE_TOL:g})  [" + ", ".join(f"{k} {v:.1e}" for k, v in agree.items()) + "]")
    n_fail = sum(1 for o in oks if o is False)
    other, steal, wall = CpuMeter.others(run_start, METER.read())
    print(f"whole run: {wall:.1f} s wall; other processes used {other:.1f} CPU-s ({other / wall:.0%} of a core on "
          f"average), hypervisor steal {steal:.1f} CPU-s")
    print(f"{len(oks) - n_fail}/{len(oks)} bars pass" + ("" if not a.quick else "  (--quick sizes: not meaningful)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
