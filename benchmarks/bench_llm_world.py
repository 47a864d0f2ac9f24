#!/usr/bin/env python
"""Benchmark of ``llm_world``: what rendering, scoring and the exact ground truth cost beside the model.

Workload (the defaults of ``llm_world.run``): one world (``--preset``, default ``random``, seed
0), ``--n-prompts`` 200 prompts of example length 3 cut to n = 0, 1, 2, 4, 8, 16
demonstrations (1200 prompts), 64 documents of 128 symbols, and the capture of the 200
16-demonstration prompts with keys and values at the label offsets -1..3, batch size 8.
The model defaults to the tests' tiny random GPT-J (``tests/llm_helpers.py``: 2 layers, d 32,
4 heads, a 600-token byte-level BPE); ``--model`` takes any folder or cached hub id.

Timed, best of ``--repeat`` (3) after one warm-up run (Numba's JIT, torch's first call):

    render   ``render.choose_symbols`` + ``llm_world.prepare_world``: the symbol map, the sampled
             prompts and documents as token ids, the spans and label positions
    model    ``llm_world.execute_world``: every forward pass of the model (the ICL grid sorted by
             length, the documents, the capture, every input alone)
    score    ``llm_world.score`` + ``world_properties``: exact Bayes for every n, the theory
             kernel and the label frequencies, the document losses (Bayes and concept known),
             the ground truth of the inside analysis, the mixing and entropy rates
    analysis ``alignment.analyse_measured``: head selection, probes, bootstrap (the measurement
             code of ``simkernel llm``, benchmarked by bench_llm.py; shown, not in the bar)

The bar: (render + score) <= 10% of model.  It holds or fails with the world: the tiny model
costs about as much per token as an exact forward pass over a small world, and the theory
kernel's Σ is a fixed cost per world (paper-c, V = 100: 10^4 inputs enumerated, about 0.5 s),
so the bar is measured on the ``random`` preset (K 4, S 8, V 12) and paper-c's figures are
printed beside it with ``--preset paper-c``.  On a real LLM the model's share only grows.

Run:  python benchmarks/bench_llm_world.py                  (CPU, tiny model, about 20 s)
      python benchmarks/bench_llm_world.py --preset paper-c
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BAR = 0.10


def tiny_model_dir(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from llm_helpers import make_tiny_llm_dir

    if not (folder / "config.json").is_file():
        make_tiny_llm_dir(folder)
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model folder or hub id (default: the tests' tiny GPT-J)")
    ap.add_argument("--preset", default="random")
    ap.add_argument("--n-prompts", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    import torch

    from simkernel import alignment, hf, llm_world, render

    torch.set_num_threads(max(1, torch.get_num_threads()))
    tmp = tempfile.TemporaryDirectory()
    name = args.model or str(tiny_model_dir(Path(tmp.name) / "tiny-llm"))
    tok, cfg = hf.load_tokenizer(name), hf.load_config(name)
    model, _ = hf.load_model(name, device=args.device, tokenizer=tok, config=cfg)
    spec = llm_world.load_worlds(args.preset, (0,))[0]
    best = {}
    for rep in range(args.repeat + 1):
        t0 = time.perf_counter()
        smap = render.choose_symbols(tok, spec.world)
        prep = llm_world.prepare_world(smap, spec, n_prompts=args.n_prompts, config=cfg)
        prep.meta["seed"] = 0
        t1 = time.perf_counter()
        out = llm_world.execute_world(model, prep, args.batch_size)
        t2 = time.perf_counter()
        sc = llm_world.score(prep, out)
        llm_world.world_properties([spec], losses=[sc.docs["oracle_loss"]])
        t3 = time.perf_counter()
        alignment.analyse_measured(out.capture, prep.inside, sc.truth, out.alone_logp, prep.alone_inv)
        t4 = time.perf_counter()
        if rep == 0:
            continue                                # warm-up: JIT and first calls
        for k, v in (("render", t1 - t0), ("model", t2 - t1), ("score", t3 - t2), ("analysis", t4 - t3)):
            best[k] = min(best.get(k, float("inf")), v)
    n_icl = len(prep.icl_batch)
    w = spec.world
    print(f"model {name if args.model else 'tiny GPT-J (2 layers, d 32, 4 heads)'} on {args.device}; world "
          f"{spec.name} (K {w.n_concepts}, S {w.n_states}, V {w.n_symbols}); {args.n_prompts} prompts x n in "
          f"{prep.ns} ({n_icl} ICL prompts), {prep.doc_ids.shape[0]} documents of {prep.doc_ids.shape[1]} tokens, "
          f"capture of {len(prep.inside)} prompts; best of {args.repeat}")
    for k in ("render", "model", "score", "analysis"):
        print(f"  {k:<9} {best[k]:8.3f} s")
    secs = out.meta["seconds"]
    print(f"  model split (last run): ICL {secs['icl']:.3f} s, documents {secs['documents']:.3f} s, "
          f"capture {secs['capture']:.3f} s; scoring split: {sc.seconds}")
    ratio = (best["render"] + best["score"]) / best["model"]
    verdict = "PASS" if ratio <= BAR else "FAIL"
    print(f"(render + score) / model = {ratio:.3f}  (bar <= {BAR:.2f}): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
