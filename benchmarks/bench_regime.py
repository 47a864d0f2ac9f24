#!/usr/bin/env python
"""Long prompts two ways: the prompt path of ``simkernel converge`` against the i.i.d. lookups
of ``simkernel regime``, on the same world, prompts per world and n.

    python benchmarks/bench_regime.py [--n-prompts 200] [--ns 256,1024,4096,16384] [--n-long 65536]

The prompt path samples token prompts of N demonstrations and runs exact Bayes by a forward pass
over each whole prompt (``convergence.run_seed``: Bayes, the theory kernel's normalised estimate
and the label frequencies for every n = 1..N, and their exact limits).  The regime path draws the
same law's demonstrations i.i.d. and sums per-example log-likelihoods and kernel values
(``regime.simulate_world`` with the grid capped at N: the same estimators at n = 1, 2, 4, .., N).
Both in this process, one after the other, after a warm-up that compiles the Numba kernels.
Prints seconds per run and the ratio; then the regime path alone at --n-long, where the prompt path
would need prompts of 4 · n_long tokens (its time there is extrapolated from its cost per
demonstration between the two largest N, and the line says so).  Both paths have a fixed cost
(features, Σ, the input laws); only the prompt path's grows with N.  Target: the regime path at
least 10x faster at the largest N run both ways.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name  # noqa: E402

from simkernel import convergence, make_world, regime  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-prompts", type=int, default=200)
    ap.add_argument("--ns", default="256,1024,4096,16384")
    ap.add_argument("--n-long", type=int, default=65536)
    args = ap.parse_args(argv)
    ns = [int(n) for n in args.ns.split(",")]
    world = make_world("paper-c", 0)
    k, B = 3, args.n_prompts

    def prompt_path(n):
        convergence.run_seed(world, n, k, B, seed=0, kernels=("theory", "frequency"), estimators=("normalised",))

    def regime_path(n):
        regime.simulate_world(world, example_length=k, n_prompts=B, n_max=n, n_cap=n, estimators=("normalised",))

    prompt_path(4)                      # compile and warm every kernel once
    regime_path(4)
    print(f"paper-c world 0 (K = 8 concepts, S = 80 states, V = 100 symbols), example length {k}, {B} prompts; "
          f"{cpu_name()}")
    print(f"{'N':>7} {'prompt path (s)':>16} {'regime path (s)':>16} {'ratio':>7}")
    runs = []
    for n in ns:
        a, b = timed(lambda: prompt_path(n)), timed(lambda: regime_path(n))
        runs.append((n, a, b))
        print(f"{n:>7} {a:>16.2f} {b:>16.2f} {a / b:>6.1f}x")
    t_long = timed(lambda: regime_path(args.n_long))
    (n0, a0, _), (n1, a1, b1) = runs[-2], runs[-1]
    per_demo = (a1 - a0) / (n1 - n0)
    a_long = a1 + per_demo * (args.n_long - n1)
    print(f"{args.n_long:>7} {a_long:>15.0f}* {t_long:>16.2f} {a_long / t_long:>6.0f}x")
    print(f"* extrapolated at the prompt path's {1000 * per_demo:.2f} ms per demonstration (200 prompts) between "
          f"N = {n0} and {n1}; prompts of {4 * args.n_long + 2:,} tokens were not run")
    ok = a1 / b1 >= 10
    print(f"{'PASS' if ok else 'FAIL'}: the regime path is {a1 / b1:.1f}x faster than the prompt path at N = {n1} "
          f"(target >= 10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
