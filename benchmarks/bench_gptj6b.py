#!/usr/bin/env python
"""GPT-J-6B at its real size with random weights: load time, peak memory and seconds per prompt.

    python -m simkernel.realsize gpt-j-6b /tmp/gptj6b-random          # once: 12 GiB bfloat16 folder
    python benchmarks/bench_gptj6b.py --model /tmp/gptj6b-random       # about 10-15 min on 2 cores

A model with the published configuration and random weights costs what the trained one costs.
Three stages, each in a fresh interpreter (its peak RSS is the child's ``ru_maxrss``):

1. ``micro``: ``hf.load_model`` (load time, RSS after load), then for one prompt per
   ``--micro-demos`` value (SST-2 sample prompts with that many demonstrations) a plain forward
   (``capture.forward_labels``) and a capture of every layer's final attention row with keys and
   values of every layer (``capture.capture``): seconds per prompt by prompt length and the peak
   RSS growth of each over the loaded model (the capture's memory against the forward's);
2. ``text``: ``simkernel llm --model DIR --data simkernel/data/sst2_sample.tsv`` as a user runs it
   (``--n-examples``, ``--n-demos``; its memory estimate line, wall time, peak RSS, the
   seconds of llm.json);
3. ``world``: ``llm_world.run(DIR, preset="random", ...)``, the library call behind ``simkernel
   llm --preset random`` with few prompts and documents (the CLI runs 200 prompts and 64
   documents, about 17k tokens: an hour of CPU for a 6B model; use a GPU for that).

Beside them: the probes' float32 keys and values for the paper's SST-2 run (872 examples x 8
demonstrations, GPT-J-6B's 28 layers) against ``capture.PROBE_BUDGET``, and for this run.
Prints one table and writes ``bench_gptj6b.json`` into ``--out``.  ``--model`` may be a scaled
folder (``--scale`` of ``simkernel.realsize``) to try the script in a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
DATA = HERE / "simkernel" / "data" / "sst2_sample.tsv"
GIB = 2 ** 30

# runs a module as __main__ and writes its peak RSS (bytes) at exit
WRAP = ("import atexit, os, resource, runpy, sys\n"
        "atexit.register(lambda: open(os.environ['BENCH_RSS'], 'w').write("
        "str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)))\n"
        "mod = sys.argv[1]; sys.argv = sys.argv[1:]\n"
        "runpy.run_module(mod, run_name='__main__', alter_sys=True)\n")


def cpu_seconds() -> tuple:
    """(busy CPU seconds of the whole machine from /proc/stat, this process's and its waited children's)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    t = os.times()
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK"), \
        t.user + t.system + t.children_user + t.children_system


def child(module: str, args: list, out: Path, name: str) -> dict:
    """Run ``python -m module args`` with the RSS wrapper; its wall time, peak RSS, stdout, stderr."""
    rss_file = out / f"{name}.rss"
    env = dict(os.environ, BENCH_RSS=str(rss_file), SIMKERNEL_PROGRESS="plain")
    t0, c0 = time.perf_counter(), cpu_seconds()
    p = subprocess.run([sys.executable, "-c", WRAP, module, *args], cwd=HERE, env=env, capture_output=True,
                       text=True)
    wall, c1 = time.perf_counter() - t0, cpu_seconds()
    others = max(0.0, (c1[0] - c0[0]) - (c1[1] - c0[1])) / wall          # other processes' cores meanwhile
    (out / f"{name}.stdout").write_text(p.stdout)
    (out / f"{name}.stderr").write_text(p.stderr)
    if p.returncode != 0:
        raise SystemExit(f"{name} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return {"wall_s": round(wall, 1), "peak_rss": int(rss_file.read_text()), "others_cores": round(others, 2),
            "stdout": p.stdout, "stderr": p.stderr}


class PeakRss:
    """Samples this process's RSS every 10 ms while active: ``peak`` in bytes."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.01)

    def __enter__(self):
        self.peak = self.now()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.now())


def micro(a) -> None:
    """The ``micro`` stage (run in a child): load, then forward vs capture per prompt length."""
    import numpy as np

    from simkernel import capture, hf, llm, textdata

    res = {"rss_start": PeakRss.now()}
    config, tok = hf.load_config(a.model), hf.load_tokenizer(a.model)
    t0 = time.perf_counter()
    model, tok = hf.load_model(a.model, dtype=a.dtype, device=a.device, tokenizer=tok, config=config)
    res["load_s"] = round(time.perf_counter() - t0, 2)
    res["weights_bytes"] = int(sum(p.numel() * p.element_size() for p in model.parameters()))
    res["parameters"] = int(sum(p.numel() for p in model.parameters()))
    res["rss_loaded"] = PeakRss.now()
    ds = textdata.load_local(DATA, "sentence", "label", ["Negative", "Positive"])
    rows, cuda = [], a.device.startswith("cuda")
    warm = llm.prepare_text(tok, config, ds, 1, n_examples=2, probe_layers="none")
    capture.forward_labels(model, warm.batch.subset(np.arange(1)), 1)      # warm-ups (first-call allocations,
    capture.capture(model, warm.batch.subset(np.arange(1)))                 # the attention's registration)
    for n in [int(x) for x in a.micro_demos.split(",")]:
        prep = llm.prepare_text(tok, config, ds, n, n_examples=2, probe_layers="all")
        batch = prep.batch.subset(np.arange(1))
        tokens = int(batch.attention_mask.sum())
        base = PeakRss.now()
        if cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        with PeakRss() as m:
            t = time.perf_counter()
            capture.forward_labels(model, batch, 1)
            fwd_s = time.perf_counter() - t
        gpu = {"gpu_forward_peak": int(torch.cuda.max_memory_allocated())} if cuda else {}
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with PeakRss() as c:
            t = time.perf_counter()
            cap = capture.capture(model, batch, offsets=prep.offsets, layers=prep.layers)
            cap_s = time.perf_counter() - t
        if cuda:
            gpu["gpu_capture_peak"] = int(torch.cuda.max_memory_allocated())
        held = sum(x.nbytes for x in (cap.attn, cap.keys, cap.values) if x is not None)
        rows.append({"n_demos": n, "tokens": tokens, "forward_s": round(fwd_s, 2), "capture_s": round(cap_s, 2),
                     "forward_peak_growth": int(m.peak - base), "capture_peak_growth": int(c.peak - base),
                     "capture_arrays": int(held), **gpu})
        print(f"micro n_demos {n}: {tokens} tokens, forward {fwd_s:.2f} s, capture {cap_s:.2f} s", file=sys.stderr)
    res["lengths"] = rows
    Path(a.child_out).write_text(json.dumps(res))


def run_micro(a, out: Path) -> dict:
    r = child("benchmarks.bench_gptj6b", ["--child", "micro", "--model", a.model, "--dtype", a.dtype,
                                          "--device", a.device, "--micro-demos", a.micro_demos,
                                          "--child-out", str(out / "micro.json")], out, "micro")
    return dict(json.loads((out / "micro.json").read_text()), wall_s=r["wall_s"], peak_rss=r["peak_rss"],
                others_cores=r["others_cores"])


def run_text(a, out: Path) -> dict:
    n = a.n_examples // 2
    args = ["llm", "--model", a.model, "--data", str(DATA), "--n-examples", str(a.n_examples), "--n-demos",
            str(a.n_demos), "--n-select", str(n), "--n-report", str(a.n_examples - n), "--dtype", a.dtype,
            "--device", a.device, "--batch-size", str(a.batch_size), "--out", str(out / "text")]
    r = child("simkernel.cli", args, out, "text")
    meta = json.loads((out / "text" / "llm.json").read_text())
    o = meta["outputs"]
    memline = next((x for x in r["stderr"].splitlines() if x.startswith("memory:")), "")
    return {"command": "simkernel " + " ".join(args), "wall_s": r["wall_s"], "peak_rss": r["peak_rss"],
            "others_cores": r["others_cores"],
            "memory_line": memline, "seconds": o["seconds"], "prompt_tokens": o["prompt_tokens"],
            "n_examples": o["n_examples"], "standalone_texts": o["standalone_texts"], "n_demos": o["n_demos"],
            "probe_layers": o["probe_layers"], "elapsed_s": meta["elapsed_s"]}


def world(a) -> None:
    """The ``world`` stage (run in a child): llm_world.run with few prompts."""
    from simkernel import llm_world

    lines = []
    res = llm_world.run(a.model, preset="random", n_demos=tuple(int(x) for x in a.world_demos.split(",")),
                        n_prompts=a.world_prompts, n_docs=a.world_docs, doc_length=a.world_doc_length,
                        n_select=a.world_prompts // 2, n_report=a.world_prompts - a.world_prompts // 2,
                        dtype=a.dtype, device=a.device, batch_size=a.batch_size, cache_dir=None,
                        progress=lambda m: lines.append(m) if m.startswith("memory:") else None)
    o = res.meta.get("outputs") or {}
    Path(a.child_out).write_text(json.dumps({"memory_line": lines[0] if lines else "", "meta": res.meta,
                                             "outputs": o}, default=str))


def run_world(a, out: Path) -> dict:
    r = child("benchmarks.bench_gptj6b", ["--child", "world", "--model", a.model, "--dtype", a.dtype, "--device",
                                          a.device, "--world-demos", a.world_demos, "--world-prompts",
                                          str(a.world_prompts), "--world-docs", str(a.world_docs),
                                          "--world-doc-length", str(a.world_doc_length), "--batch-size",
                                          str(a.batch_size), "--child-out", str(out / "world.json")], out, "world")
    w = json.loads((out / "world.json").read_text())
    return {"wall_s": r["wall_s"], "peak_rss": r["peak_rss"], "memory_line": w["memory_line"],
            "others_cores": r["others_cores"],
            "seconds": _find_seconds(w["meta"]), "settings": {k: getattr(a, k) for k in
                                                              ("world_demos", "world_prompts", "world_docs",
                                                               "world_doc_length")}}


def _find_seconds(meta) -> dict:
    """The per-stage seconds a world run's meta records (its first world's), wherever they sit."""
    if isinstance(meta, dict):
        if "seconds" in meta and isinstance(meta["seconds"], dict) and "icl" in meta["seconds"]:
            return meta["seconds"]
        for v in meta.values():
            s = _find_seconds(v)
            if s:
                return s
    if isinstance(meta, list):
        for v in meta:
            s = _find_seconds(v)
            if s:
                return s
    return {}


def probes(model: str, text: dict) -> dict:
    from simkernel import capture, hf

    cfg = hf.load_config(model)
    paper = capture.probe_layer_bytes(cfg, 872, 8)
    mine = capture.probe_layer_bytes(cfg, text["n_examples"], text["n_demos"])
    return {"paper_per_layer": paper, "paper_all_layers": paper * cfg.num_hidden_layers,
            "paper_auto_layers": capture.probe_layer_list("auto", cfg.num_hidden_layers, paper),
            "run_per_layer": mine, "run_layers": len(text["probe_layers"]),
            "run_bytes": mine * len(text["probe_layers"]), "budget": capture.PROBE_BUDGET}


def g(n) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 4 else f"{n / 2**20:.1f} MiB"


def table(res: dict) -> list:
    m, t, w, p = res.get("micro"), res.get("text"), res.get("world"), res.get("probes")
    lines = [f"{'measure':<52} value"]

    def row(k, v):
        lines.append(f"{k:<52} {v}")

    if m:
        row("weights (parameters x bytes)", f"{g(m['weights_bytes'])} ({m['parameters'] / 1e9:.2f} B parameters)")
        row("load time (hf.load_model)", f"{m['load_s']:.1f} s")
        row("RSS after load (whole process)", g(m["rss_loaded"]))
        for r in m["lengths"]:
            row(f"1 prompt, {r['tokens']} tokens: forward / capture",
                f"{r['forward_s']:.2f} s / {r['capture_s']:.2f} s "
                f"({r['forward_s'] / r['tokens'] * 1000:.0f} / {r['capture_s'] / r['tokens'] * 1000:.0f} ms per token)")
            row("  peak RSS growth: forward / capture", f"{g(r['forward_peak_growth'])} / "
                f"{g(r['capture_peak_growth'])} (capture arrays {g(r['capture_arrays'])})")
            if "gpu_forward_peak" in r:
                row("  peak GPU memory: forward / capture", f"{g(r['gpu_forward_peak'])} / {g(r['gpu_capture_peak'])}")
        row("micro stage peak RSS", g(m["peak_rss"]))
    if t:
        s, tok = t["seconds"], t["prompt_tokens"]
        row(f"text: {t['standalone_texts']} texts alone", f"{s['standalone']:.1f} s "
            f"({s['standalone'] / t['standalone_texts']:.2f} s per text)")
        row(f"text: capture {t['n_examples']} prompts ({tok['mean']:.0f} tokens mean, {tok['max']} max)",
            f"{s['capture']:.1f} s ({s['capture'] / t['n_examples']:.2f} s per prompt)")
        row("text: simkernel llm wall / peak RSS", f"{t['wall_s']:.0f} s / {g(t['peak_rss'])}")
    if w:
        s = w["seconds"]
        row("world: ICL grid / documents / capture", " / ".join(f"{s.get(k, float('nan')):.1f} s"
                                                                for k in ("icl", "documents", "capture")))
        row("world: llm_world.run wall / peak RSS", f"{w['wall_s']:.0f} s / {g(w['peak_rss'])}")
    for k in ("micro", "text", "world"):
        if res.get(k):
            row(f"{k}: other processes' CPU meanwhile (cores)", f"{res[k]['others_cores']:.2f}"
                + ("  <-- DISTURBED" if res[k]["others_cores"] > 0.1 else ""))
    if p:
        row("probes, paper SST-2 (872 x 8), per layer / all", f"{g(p['paper_per_layer'])} / "
            f"{g(p['paper_all_layers'])}; auto keeps layers {p['paper_auto_layers']}")
        row("probes, this run (all layers) / PROBE_BUDGET", f"{g(p['run_bytes'])} / {g(p['budget'])}")
    return lines


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="A model folder (python -m simkernel.realsize gpt-j-6b DIR).")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_gptj6b"))
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-examples", type=int, default=8, help="Text stage: test examples.")
    ap.add_argument("--n-demos", type=int, default=4, help="Text stage: demonstrations per prompt.")
    ap.add_argument("--micro-demos", default="2,8,16", help="Micro stage: one prompt per value (comma list).")
    ap.add_argument("--world-demos", default="0,4")
    ap.add_argument("--world-prompts", type=int, default=8)
    ap.add_argument("--world-docs", type=int, default=4)
    ap.add_argument("--world-doc-length", type=int, default=64)
    ap.add_argument("--stages", default="micro,text,world")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse(argv)
    if a.child == "micro":
        micro(a)
        return 0
    if a.child == "world":
        world(a)
        return 0
    a.model = str(Path(a.model).resolve())
    a.out.mkdir(parents=True, exist_ok=True)
    res = {"model": a.model, "dtype": a.dtype, "device": a.device, "cpus": os.cpu_count()}
    stages = a.stages.split(",")
    for name, fn in (("micro", run_micro), ("text", run_text), ("world", run_world)):
        if name in stages:
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
            res[name] = fn(a, a.out)
            (a.out / "bench_gptj6b.json").write_text(json.dumps(res, indent=2, default=str))
    if "text" in res:
        res["probes"] = probes(a.model, res["text"])
    (a.out / "bench_gptj6b.json").write_text(json.dumps(res, indent=2, default=str))
    for line in ([res["text"]["memory_line"]] if "text" in res else []) + table(res):
        print(line)
    print(f"wrote {a.out / 'bench_gptj6b.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
