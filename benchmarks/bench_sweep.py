#!/usr/bin/env python
"""The sweep engine's costs: 16 converge jobs of about 2 s each on a Dask LocalCluster.

    python benchmarks/bench_sweep.py [--jobs 16] [--n-prompts 300]

Prints, for 1 and 2 worker processes: the wall time of the sweep, the jobs' own time (the sum
of their wall times inside the workers), the scheduling overhead (1 worker: wall time minus the
jobs' own time, cluster start and stop included, as a share of the jobs' own time), the speed-up
of 2 workers over 1, the wall time of a rerun with every job done, as the command
(`simkernel sweep`, a fresh process) and as the library call, and the CPU an idle 2-worker
cluster uses by itself (driver, scheduler, nannies and workers: what it takes from the jobs
when there are as many workers as cores).  Targets (issue 13): speed-up >= 1.7, overhead <= 5 %,
rerun <= 5 s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from simkernel import sweep


def config(n_jobs: int, n_prompts: int) -> dict:
    return {"command": "converge", "options": {"preset": "ginc-small", "n_demos": "1..256", "n_prompts": n_prompts},
            "grid": {"world_seed": list(range(n_jobs))}}


def timed_sweep(cfg, out, workers) -> tuple[float, dict]:
    t0 = time.perf_counter()
    res = sweep.run(cfg, out, workers=workers)
    wall = time.perf_counter() - t0
    assert res.counts()["done"] == len(res.jobs), res.summary_lines()
    return wall, res.meta


def idle_cluster_cpu(seconds: float = 10.0) -> float:
    """The CPU seconds per second (share of one core) a started, idle 2-worker sweep cluster uses:
    this process (driver, scheduler, nannies) and its worker processes."""
    import psutil

    from simkernel import sweep_cluster

    def cpu(p):
        t = p.cpu_times()
        return t.user + t.system

    with sweep_cluster.client(2, None) as c:
        c.run(lambda: None)
        time.sleep(1.0)
        procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
        t0, w0 = {p.pid: cpu(p) for p in procs}, time.perf_counter()
        time.sleep(seconds)
        used = sum(cpu(p) - t0[p.pid] for p in procs if p.is_running())
        return used / (time.perf_counter() - w0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--n-prompts", type=int, default=300)
    args = ap.parse_args(argv)
    cfg = config(args.jobs, args.n_prompts)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # warm the Numba cache on disk, so that neither timing pays the first compile
        sweep.run(dict(cfg, grid={"world_seed": [10_000]}), tmp / "warm", workers=1)
        walls, own = {}, {}
        for w in (1, 2):
            walls[w], meta = timed_sweep(cfg, tmp / f"w{w}", w)
            own[w] = meta["job_seconds"]
        overhead = (walls[1] - own[1]) / own[1]
        t0 = time.perf_counter()
        sweep.run(cfg, tmp / "w2", workers=2)
        rerun_lib = time.perf_counter() - t0
        cfg_path = tmp / "bench.toml"
        cfg_path.write_text(f'command = "converge"\n[options]\npreset = "ginc-small"\nn_demos = "1..256"\n'
                            f'n_prompts = {args.n_prompts}\n[grid]\nworld_seed = {json.dumps(list(range(args.jobs)))}\n')
        # the same config as a file: the command's rerun of the folder the library call made
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "simkernel.cli", "sweep", str(cfg_path), "--out",
                               str(tmp / "w2")], capture_output=True, text=True)
        rerun_cli = time.perf_counter() - t0
        assert done.returncode == 0, done.stderr
    print(f"{args.jobs} converge jobs (ginc-small, n = 1..256, {args.n_prompts} prompts), "
          f"{own[1] / args.jobs:.2f} s of work each")
    print(f"{'workers':>8} {'wall (s)':>9} {'jobs own (s)':>13}")
    for w in (1, 2):
        print(f"{w:>8} {walls[w]:>9.1f} {own[w]:>13.1f}")
    print(f"speed-up 2 workers / 1: {walls[1] / walls[2]:.2f}x (target >= 1.7)")
    print(f"scheduling overhead, 1 worker (cluster start and stop included): {walls[1] - own[1]:.2f} s = "
          f"{100 * overhead:.1f}% of the jobs' own time (target <= 5%)")
    print(f"rerun with every job done: {rerun_cli:.2f} s as `simkernel sweep` (a new process), "
          f"{rerun_lib:.2f} s as sweep.run (target <= 5 s)")
    print(f"an idle 2-worker cluster uses {100 * idle_cluster_cpu():.1f}% of one core by itself")
    return 0


if __name__ == "__main__":
    sys.exit(main())
