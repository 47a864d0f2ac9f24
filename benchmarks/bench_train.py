#!/usr/bin/env python
"""Training throughput (tokens/s) of the strategies map's model sizes, in one process.

    python benchmarks/bench_train.py [--steps 60] [--device cpu|cuda] [--map experiments/strategies/default.toml]

For each size of the map's [sizes] and 1 and all torch threads (CPU) it builds the model with
the map's vocabulary, batch and block size, runs 5 untimed AdamW steps, then ``--steps`` timed
ones (forward, backward, clip, step: the loop of ``train.run`` without its evaluations) and
prints tokens/s and the ratio to the first size.  The same sizes' in-loop throughput as the map
ran them (two one-thread Dask workers at once) is in each run's metrics.jsonl (``tokens_per_s``);
``--runs`` summarises those from a map's strategies.json."""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def throughput(spec: dict, vocab: int, batch: int, block: int, steps: int, device: str, threads: int) -> float:
    import torch

    from simkernel import model as model_mod

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = model_mod.build_model(spec["model"], vocab, **{k: v for k, v in spec.items() if k != "model"}).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (batch, block), generator=gen).to(device)

    def step():
        loss = net(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    for _ in range(5):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch * block / (time.perf_counter() - t0)


def map_runs(strategies_json: Path) -> None:
    """Mean in-loop tokens/s per size of a map's runs (their metrics.jsonl), and each job's wall time."""
    meta = json.loads(strategies_json.read_text())
    sweeps = Path(meta["config"]["sweeps"])
    per = {}
    for job in (sweeps / "jobs").iterdir():
        spec = json.loads((job / "_job.json").read_text())
        tr = spec["train"]
        run = json.loads((job / "strategies.json").read_text())["config"]["run"]
        rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line.strip()]
        size = (tr["model"], json.dumps(tr.get("model_overrides", {}), sort_keys=True))
        per.setdefault(size, []).append(rows[-1]["tokens_per_s"])
    for (model, over), v in sorted(per.items()):
        print(f"map runs {model} {over}: {sum(v) / len(v):,.0f} tokens/s in the training loop (mean of {len(v)} runs)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--map", default=str(HERE / "experiments" / "strategies" / "default.toml"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", default=None, help="a map's strategies.json: summarise its runs' recorded throughput")
    args = ap.parse_args()
    if args.runs:
        map_runs(Path(args.runs))
        return
    import torch

    cfg = tomllib.loads(Path(args.map).read_text())
    vocab = int(cfg["world"].get("n_symbols", 12))
    batch, block = int(cfg["train"].get("batch_size", 32)), int(cfg["train"].get("block_size", 64))
    threads = [1, torch.get_num_threads()] if args.device == "cpu" else [torch.get_num_threads()]
    first = None
    print(f"device {args.device}, torch {torch.__version__}, batch {batch} x block {block}, vocab {vocab}, "
          f"{args.steps} timed steps")
    for name, spec in cfg["sizes"].items():
        for t in dict.fromkeys(threads):
            tps = throughput(spec, vocab, batch, block, args.steps, args.device, t)
            first = first or tps
            print(f"size {name:<4} {json.dumps(spec):<40} threads {t}: {tps:>10,.0f} tokens/s  ({tps / first:.2f}x)")


if __name__ == "__main__":
    main()
