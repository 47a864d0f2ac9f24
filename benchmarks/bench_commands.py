#!/usr/bin/env python
"""Wall time of the main commands against a baseline checkout, in one sitting.

    python benchmarks/bench_commands.py BASELINE_CHECKOUT [--run RUN_DIR] [--repeats 3]

Runs ``converge`` (its defaults), ``bayes`` (its defaults), ``icl-eval`` and ``measure`` (on
RUN_DIR, a trained run folder, on the CPU) from this checkout and from BASELINE_CHECKOUT (e.g. a
``git worktree`` of the previous release), alternating the two, each once untimed first (Numba
compiles into each checkout's own cache), then ``--repeats`` times; prints the best wall time
of each and the ratio new / baseline.  Each command runs in a fresh interpreter, as a user's
would, with ``SIMKERNEL_PROGRESS=none``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def commands(run_dir: Path | None) -> dict:
    cmds = {"converge": ["converge"], "bayes": ["bayes"], "--help": ["--help"]}
    if run_dir is not None:
        cmds["icl-eval"] = ["icl-eval", "--run", str(run_dir), "--device", "cpu"]
        cmds["measure"] = ["measure", "--checkpoint", str(run_dir), "--device", "cpu"]
    return cmds


def once(checkout: Path, args: list, out: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(checkout), SIMKERNEL_PROGRESS="none")
    extra = [] if args == ["--help"] else ["--out", str(out)]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "simkernel.cli", *args, *extra], cwd=checkout, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("baseline", type=Path)
    ap.add_argument("--run", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=None, help="Comma list of the commands to time (default: all).")
    a = ap.parse_args()
    sides = {"baseline": a.baseline.resolve(), "new": HERE}
    print(f"{'command':<10} {'baseline s':>11} {'new s':>8} {'new / baseline':>15}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in commands(a.run.resolve() if a.run else None).items():
            if a.only and name not in a.only.split(","):
                continue
            best = {}
            for side, root in sides.items():
                once(root, args, Path(tmp) / side / name)                  # compile, warm the caches
            for _ in range(a.repeats):
                for side, root in sides.items():
                    t = once(root, args, Path(tmp) / side / name)
                    best[side] = min(best.get(side, t), t)
            print(f"{name:<10} {best['baseline']:>11.2f} {best['new']:>8.2f} {best['new'] / best['baseline']:>15.2f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
