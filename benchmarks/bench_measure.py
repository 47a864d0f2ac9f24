#!/usr/bin/env python
"""Benchmark of the attention capture: final-row capture against a plain forward pass.

Model: the CPU default preset (``cpu``: 4 layers, d_model 128, 4 heads), randomly initialised
with seed 0 over a 12-symbol vocabulary (the default world's); timing does not depend on the
weights.  Inputs: --prompts prompts of `simkernel measure`'s default layout (16 demonstrations
of example length 3: 66 tokens), run in batches of --batch-size.

Contenders, interleaved in one process, each timed --repeats times (median reported):
    forward   capture.forward_labels: the model's own sdpa attention, nothing captured
    capture   capture.capture: every layer's and head's final attention row
    +probes   capture.capture with keys and values at label offsets -1..+3 (what
              `simkernel measure` runs)

Peak memory: each contender runs --memory-repeats times (median) in a fresh subprocess, after
a one-prompt warm-up (imports, weights, kernels): the kernel's resident-set high-water mark
(VmHWM, reset through /proc/self/clear_refs) during the full pass, minus the resident set just
before it, is that contender's working memory (activations, allocator growth, results); see
machine.PeakMemory, which benchmarks/bench_llm.py uses too.  Both this growth and the
process's peak resident set are reported; the bar is judged on the growth, since the process
peak is mostly imported libraries and weights.

Bars (issue 5): capture <= 1.3x the forward's time, and <= 1.2x its peak memory.

Run:  python benchmarks/bench_measure.py             (about a minute on 2 idle cores)
      python benchmarks/bench_measure.py --quick     (small sizes: a smoke run)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from machine import PeakMemory

BAR_TIME = 1.3
BAR_MEMORY = 1.2
MODES = ("forward", "capture", "+probes")


def build(n_prompts: int, seed: int = 0):
    import numpy as np
    import torch

    from simkernel.model import build_model
    from simkernel.prompts import Example, collate

    torch.manual_seed(seed)
    model = build_model("cpu", 12).eval()
    rng = np.random.default_rng(seed)
    n, k = 16, 3
    T = n * (k + 1) + k - 1
    spans = np.stack([np.arange(n) * (k + 1), np.arange(n) * (k + 1) + k], 1)
    ex = [Example(rng.integers(1, 12, T), spans, spans[:, 1] - 1, rng.integers(0, 11, n), 0) for _ in range(n_prompts)]
    return model, collate(ex, np.arange(1, 12))


def run_mode(mode: str, model, batch, batch_size: int):
    from simkernel.analysis import PROBE_OFFSETS
    from simkernel.capture import capture, forward_labels

    if mode == "forward":
        return forward_labels(model, batch, batch_size=batch_size)
    offsets = PROBE_OFFSETS if mode == "+probes" else None
    return capture(model, batch, offsets=offsets, batch_size=batch_size)


def memory_child(mode: str, n_prompts: int, batch_size: int, threads: int) -> None:
    """Runs in a subprocess: prints {'growth_mib', 'peak_mib'} as JSON (machine.PeakMemory)."""
    import torch

    torch.set_num_threads(threads)
    model, batch = build(n_prompts)
    run_mode(mode, model, batch.subset([0]), batch_size)
    with PeakMemory() as mem:
        run_mode(mode, model, batch, batch_size)
    print(json.dumps({"growth_mib": mem.growth / 2**20, "peak_mib": mem.peak / 2**20}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-repeats", type=int, default=3, help="subprocesses per contender (median)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--memory-child", choices=MODES, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.prompts, a.repeats = 128, 2
    if a.memory_child:
        memory_child(a.memory_child, a.prompts, a.batch_size, a.threads)
        return 0

    import torch

    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads; cpu preset, {a.prompts} prompts x 66 tokens, "
          f"batch {a.batch_size}, {a.repeats} repeats")
    model, batch = build(a.prompts)
    for mode in MODES:                                         # warm-up
        run_mode(mode, model, batch.subset(range(min(8, a.prompts))), a.batch_size)
    times = {m: [] for m in MODES}
    for _ in range(a.repeats):
        for mode in MODES:
            t0 = time.perf_counter()
            run_mode(mode, model, batch, a.batch_size)
            times[mode].append(time.perf_counter() - t0)
    med = {m: statistics.median(v) for m, v in times.items()}
    runs = {m: [] for m in MODES}
    for _ in range(a.memory_repeats):
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--memory-child", mode, "--prompts", str(a.prompts),
                                  "--batch-size", str(a.batch_size), "--threads", str(a.threads)],
                                 capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    mem = {m: {k: statistics.median(r[k] for r in v) for k in ("growth_mib", "peak_mib")} for m, v in runs.items()}
    print(f"{'contender':<10} {'seconds':>8} {'prompts/s':>10} {'x forward':>10} {'growth MiB':>11} "
          f"{'x forward':>10} {'peak MiB':>9} {'x forward':>10}")
    base_t, base_g, base_p = med["forward"], mem["forward"]["growth_mib"], mem["forward"]["peak_mib"]
    for mode in MODES:
        g, p = mem[mode]["growth_mib"], mem[mode]["peak_mib"]
        print(f"{mode:<10} {med[mode]:>8.3f} {a.prompts / med[mode]:>10.0f} {med[mode] / base_t:>10.2f} "
              f"{g:>11.1f} {g / max(base_g, 1e-9):>10.2f} {p:>9.1f} {p / base_p:>10.3f}")
    rt = med["capture"] / base_t
    rm = mem["capture"]["growth_mib"] / max(base_g, 1e-9)
    print(f"bar: capture time <= {BAR_TIME}x forward: {rt:.2f}x {'PASS' if rt <= BAR_TIME else 'FAIL'}")
    print(f"bar: capture peak working memory <= {BAR_MEMORY}x forward: {rm:.2f}x "
          f"({mem['capture']['growth_mib']:.1f} vs {base_g:.1f} MiB; process peak "
          f"{mem['capture']['peak_mib'] / base_p:.3f}x) {'PASS' if rm <= BAR_MEMORY else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
