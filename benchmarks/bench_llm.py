#!/usr/bin/env python
"""Benchmark of ``simkernel llm``'s model work: the SST-2 protocol, capture vs a plain forward.

Workload: ``--n-examples`` (default 1000) SST-2 prompts of ``--n-demos`` (default 8) random
demonstrations, the defaults of ``simkernel llm``.  With ``--task sst2`` the examples come
from GLUE's validation split (872 rows, cycled up to 1000) and the demonstrations from its
train split; by default (no network needed) from the shipped ``sst2_sample.tsv`` (48 rows,
cycled: cycle c draws its demonstrations with seed c, so the 1000 prompts differ).  The
model defaults to a tiny random GPT-J built like the tests' (``tests/llm_helpers.py``: 2
layers, d 32, 4 heads); ``--model gpt-j-6b`` (weights downloaded beforehand) runs the real one.

Modes, each in a fresh subprocess (so that one mode's allocator caches and peak do not leak
into the next), on the same prompts, batched ``--batch-size`` at a time, longest first:

    forward      capture.forward_labels: a plain forward pass, label log-probs only
    capture      capture.capture: + the final row's attention in every layer and head
    capture+kv   capture.capture with keys and values at label position -1..3 for the layers
                 ``simkernel llm --probe-layers auto`` keeps
    protocol     the whole model side of ``simkernel llm``: building the prompts
                 (``textdata.build_prompts``), ``llm.prepare_batch`` (the texts to run alone,
                 the probed layers) and ``llm.execute_text`` (every text alone once, capture+kv,
                 the float16 rounding); the only difference from ``llm.compute`` is the
                 per-cycle demonstration seed, so its prompts are the other modes' prompts

Reported per mode: seconds, examples/s, and peak memory.  Memory method:
    CUDA  torch.cuda.max_memory_allocated() after torch.cuda.reset_peak_memory_stats(), taken
          once the model is loaded and the prompts built; the peak is printed whole (weights
          included) and as growth over the allocation before the mode ran.
    CPU   the process's peak resident set (VmHWM in /proc/self/status), reset just before the
          mode runs by writing 5 to /proc/self/clear_refs; the growth VmHWM - VmRSS(before) is
          printed.  It includes the arrays the mode returns (the attention rows, keys, values).
The ratios capture / forward are the cost of the final-row capture; the bar (CUDA only): the
peak of capture <= 1.2 x the peak of a plain forward, weights included.

Run:  python benchmarks/bench_llm.py                            (CPU, tiny model, about a minute)
      python benchmarks/bench_llm.py --model gpt-j-6b --task sst2  (one GPU, bf16, GPT-J-6B)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from machine import CpuMeter, PeakMemory

ROOT = Path(__file__).resolve().parents[1]
MODES = ("forward", "capture", "capture+kv", "protocol")


def tiny_model_dir(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from llm_helpers import make_tiny_llm_dir

    if not (folder / "config.json").is_file():
        make_tiny_llm_dir(folder)
    return folder


def load_data(args):
    """(dataset, pool): the evaluated rows and the demonstration pool (None: the rows themselves)."""
    from simkernel import llm, textdata

    if args.task:
        return llm.DataSpec(task=args.task).load()
    return llm.DataSpec(path=str(args.data or textdata.sample_data_path("sst2_sample.tsv"))).load()


def workload(args, tokenizer, dataset, pool, ctx):
    """(test_ids (N,), demo_ids (N, n), batch): the cycled prompts in test order, built by
    ``textdata.build_prompts`` (cycle c with seed ``--seed`` + c)."""
    from simkernel import textdata
    from simkernel.prompts import collate

    test_ids = np.arange(args.n_examples) % len(dataset)
    examples, demos = [], []
    for c, start in enumerate(range(0, args.n_examples, len(dataset))):
        ex, d = textdata.build_prompts(tokenizer, dataset, test_ids[start:start + len(dataset)], args.n_demos,
                                       "random", args.seed + c, pool=pool, max_length=ctx, return_demos=True)
        examples += ex
        demos.append(d)
    batch = collate(examples, textdata.label_tokens(tokenizer, dataset), tokenizer.pad_token_id or 0)
    return test_ids, np.concatenate(demos), batch


def child(args) -> dict:
    """Run one mode and return its measurements (called in a subprocess)."""
    import torch

    from simkernel import hf, llm
    from simkernel.analysis import PROBE_OFFSETS
    from simkernel.capture import capture, forward_labels, length_order, probe_layer_bytes, probe_layer_list

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = hf.load_model(args.model, dtype=args.dtype, device=args.device)
    cfg = model.config
    ctx = hf.context_length(cfg)
    dataset, pool = load_data(args)
    batch = workload(args, tok, dataset, pool, ctx)[2]
    batch = batch.subset(length_order(batch))          # longest first, as llm.execute_text runs them
    cuda = next(model.parameters()).device.type == "cuda"
    H = cfg.num_attention_heads
    layers = probe_layer_list("auto", cfg.num_hidden_layers, probe_layer_bytes(cfg, len(batch), args.n_demos))
    runs = {
        "forward": lambda b: forward_labels(model, b, args.batch_size),
        "capture": lambda b: capture(model, b, batch_size=args.batch_size),
        "capture+kv": lambda b: capture(model, b, offsets=PROBE_OFFSETS, batch_size=args.batch_size, layers=layers),
        "protocol": None,
    }
    # warm-up on the shortest prompts: lazy initialisation is not what is measured
    warm = batch.subset(np.arange(len(batch) - min(args.batch_size, len(batch)), len(batch)))
    (runs[args.child] or runs["capture"])(warm)

    def once():
        if args.child == "protocol":
            t, d, b = workload(args, tok, dataset, pool, ctx)
            llm.execute_text(model, llm.prepare_batch(tok, cfg, dataset, b, t, d, pool=pool), args.batch_size)
        else:
            runs[args.child](batch)

    meter = CpuMeter()
    best, disturbed, peak, growth = float("inf"), 0.0, 0, 0
    # memory from the first timing only: later ones start with what the allocator kept from it
    for rep in range(args.repeats):
        with PeakMemory(cuda) as mem:
            r0 = meter.read()
            once()
            if cuda:
                torch.cuda.synchronize()
            r1 = meter.read()
        other, _, seconds = CpuMeter.others(r0, r1)
        if rep == 0:
            peak, growth = mem.peak, mem.growth
        if seconds < best:
            best, disturbed = seconds, other / seconds
    lengths = batch.attention_mask.sum(1)
    return {"mode": args.child, "seconds": best, "others_cores": disturbed, "examples": len(batch), "peak": peak,
            "growth": growth, "device": str(next(model.parameters()).device),
            "dtype": str(next(model.parameters()).dtype), "model": cfg.model_type, "layers": cfg.num_hidden_layers,
            "heads": H, "probe_layers": layers, "tokens_mean": float(lengths.mean()), "tokens_max": int(lengths.max()),
            "rows": len(dataset), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if cuda else None}


def mib(x) -> str:
    return f"{x / 2**20:,.1f} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="alias, hub id or folder (default: a tiny random GPT-J)")
    ap.add_argument("--task", default=None, help="a textdata task, e.g. sst2 (needs the dataset cached)")
    ap.add_argument("--data", default=None, help="a local file (default: the shipped sst2_sample.tsv)")
    ap.add_argument("--n-examples", type=int, default=1000)
    ap.add_argument("--n-demos", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3, help="timings per mode; the fastest is kept")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    tmp = None
    if args.model is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-llm-")
        args.model = str(tiny_model_dir(Path(tmp.name)))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    results = {}
    for m in modes:
        cmd = [sys.executable, __file__, "--child", m] + sum(
            ([f"--{k.replace('_', '-')}", str(v)] for k, v in vars(args).items()
             if k not in ("child", "modes") and v is not None), [])
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TRANSFORMERS_VERBOSITY="error"))
        if p.returncode:
            sys.exit(f"mode {m} failed:\n{p.stderr[-3000:]}")
        results[m] = json.loads(p.stdout.strip().splitlines()[-1])
        results[m]["process_s"] = time.perf_counter() - t
    first = next(iter(results.values()))
    where = first["gpu"] or f"CPU ({os.cpu_count()} cores, torch threads {first['torch_threads']})"
    print(f"model {args.model}: {first['model']}, {first['layers']} layers x {first['heads']} heads, {first['dtype']} "
          f"on {where}")
    print(f"workload: {first['examples']} prompts ({args.task or args.data or 'sst2_sample.tsv'}, {first['rows']} rows "
          f"cycled), {args.n_demos} demonstrations, {first['tokens_mean']:.0f} tokens on average, "
          f"{first['tokens_max']} at most; batch {args.batch_size}; probe layers {first['probe_layers']}")
    kind = "CUDA max_memory_allocated" if first["gpu"] else "peak RSS (VmHWM) growth"
    print(f"{'mode':<12} {'seconds':>8} {'examples/s':>11} {'peak':>14} {'growth':>14}   (seconds: best of "
          f"{args.repeats}; memory: {kind}, first run)")
    for m, r in results.items():
        mark = f"  <-- DISTURBED: other processes used {r['others_cores']:.2f} cores" if r["others_cores"] > 0.1 else ""
        print(f"{m:<12} {r['seconds']:>8.2f} {r['examples'] / r['seconds']:>11.1f} {mib(r['peak']):>14} "
              f"{mib(r['growth']):>14}{mark}")
    if "forward" in results:
        f = results["forward"]
        for m in ("capture", "capture+kv"):
            if m in results:
                r = results[m]
                print(f"{m} / forward: time {r['seconds'] / f['seconds']:.2f}x, peak {r['peak'] / f['peak']:.2f}x, "
                      f"growth {r['growth'] / max(f['growth'], 1):.2f}x")
        if first["gpu"] and "capture" in results:
            ratio = results["capture"]["peak"] / f["peak"]
            print(f"bar: capture peak <= 1.2 x forward peak: {ratio:.2f}x {'PASS' if ratio <= 1.2 else 'FAIL'}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
