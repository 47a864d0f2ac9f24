"""Real language models on text tasks: prompts over a task, capture, analysis, Table 2.

The paper's §5 protocol (Han et al.; ``THEORY.md`` §7) on any open causal LM, with the
measurement code validated on the simulator (``capture``, ``analysis``) and the prompts of
``textdata``:

1. ``n_demos`` demonstrations per test example (``textdata.sample_demos``: random, balanced
   or similar; per-example seeds), one prompt per test example, left-padded into a
   :class:`prompts.PromptBatch`.
2. Standalone predictions P(o | x) for every text that appears (each demonstration's pool
   text and each test input run alone, zero demonstrations; each pool index once).
3. One capture pass (``capture.capture``; the model loaded by ``hf``): the final row's
   attention in every layer and head, the label log-probabilities and, for the probed layers,
   keys and values at label position + (-1..3).
4. ``analysis.analyse`` with the prediction-similarity kernel P(o|x_test)ᵀP(o|x_i), then ridge
   probes (keys -> the demonstration's standalone prediction, values -> y_i) per probed layer.

Steps 1-3 are the model's work and are cached (:func:`save_text_outputs`) in the run folder as
``outputs-<hash>.npz``, the hash over everything that changes them (``cache.cache_key``), so
re-analysing with another weight, split or split seed never reruns the model.  The cache
stores the attention, keys and values in float16, and :func:`execute_text` rounds them to
float16 before anything is analysed, so a first run and a cached rerun analyse the same numbers and
give identical tables.  A cache file that cannot be read (the zip's CRC-32 of every member
catches a changed byte) counts as missing: it is recomputed and replaced, and the run says so
(``cache.read_cache``).  :func:`run` builds every prompt from the tokenizer and the model's
config before it loads the weights, so a bad prompt or option fails in seconds.

Defaults and why:

- ``n_demos = textdata.DEFAULT_N_DEMOS`` (8): SST-2 prompts then take about 280 GPT-J tokens
  on average and under about 700 at most, far inside GPT-J's 2048-token context.
- ``batch_size = 8``: 8 SST-2 prompts of GPT-J-6B in bf16 need an estimated few hundred MiB
  of activations beside the 12 GiB of weights (only the last position's logits are kept;
  not measured on a GPU here), and prompts are sorted by length, so a batch carries little
  padding.
- probe layers ``"auto"``: every layer when the keys and values of all of them (float32,
  B x n x 5 offsets x Hkv x d x 2 arrays per layer, ``capture.probe_layer_bytes``) fit in
  ``capture.PROBE_BUDGET`` bytes, which holds for small models; otherwise as many evenly spaced interior
  layers as fit (GPT-J-6B, 872-1000 SST-2 examples x 8 demonstrations: 1.1-1.2 GiB a layer,
  so layers 7, 14 and 20).  The process peaks at about 1.5x the arrays: one array is copied
  while the examples are put back in order, :func:`save_text_outputs` holds float16 copies of
  both, and ``analysis.probe_accuracy`` copies the selection and report rows of one array.
  ``--probe-layers 16..21`` probes the paper's good layers; ``none`` skips the probes.

Every name here is the text branch's own (``TextPrepared``, ``TextOutputs``, ``TextRun``,
``prepare_text``, ...); the simulator-world branch is ``llm_world``.  torch and transformers
are imported inside the functions that need them (``hf``); without transformers they raise a
one-line ValueError naming the extra to install.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import analysis, capture, hf, textdata
from .cache import cache_key, cache_path, capture_arrays, capture_from, read_cache, read_npz, write_npz
from .constants import LLM_BATCH_SIZE, LLM_N_EXAMPLES, N_REPORT, N_SELECT
from .prompts import PromptBatch, collate
from .store import folder_lock, provenance, sha256_file

DEFAULT_BATCH_SIZE = LLM_BATCH_SIZE
DEFAULT_N_EXAMPLES = LLM_N_EXAMPLES

#: the paper's Table 2 (GPT-J-6B; best head chosen on 700 examples, reported on 300)
PAPER_TABLE2 = {
    "sst2": {"icl_accuracy": 0.805, "agreement": 0.797},
    "mnli": {"icl_accuracy": 0.383, "agreement": 0.597},
    "rotten_tomatoes": {"icl_accuracy": 0.671, "agreement": 0.683},
    "tweet_eval_hate": {"icl_accuracy": 0.539, "agreement": 0.713},
    "tweet_eval_irony": {"icl_accuracy": 0.519, "agreement": 0.722},
    "tweet_eval_offensive": {"icl_accuracy": 0.542, "agreement": 0.753},
}


# ---------------------------------------------------------------------- data
@dataclass(frozen=True)
class DataSpec:
    """A task of ``textdata.TASKS`` (``task``, optional ``split``; demonstrations from the
    task's pool split) or a local file (``path`` with its columns and label words;
    demonstrations from the file itself, never the test example)."""

    task: str | None = None
    split: str | None = None
    path: str | None = None
    text_column: tuple = ("sentence",)
    label_column: str = "label"
    label_words: tuple = ("Negative", "Positive")

    def identity(self) -> dict:
        if self.task is not None:
            t = textdata.get_task(self.task)
            return {"task": t.name, "split": self.split or t.split, "pool_split": t.pool_split}
        p = Path(self.path)
        return {"file": str(p.resolve()), "sha256": sha256_file(p), "text_column": list(self.text_column),
                "label_column": self.label_column, "label_words": list(self.label_words)}

    def load(self):
        """(dataset, pool): the evaluated examples and where demonstrations come from (None:
        the dataset itself)."""
        if self.task is not None:
            t = textdata.get_task(self.task)
            data = textdata.load_task(self.task, self.split)
            split = self.split or t.split
            pool = textdata.load_task(self.task, t.pool_split) if t.pool_split != split else None
            return data, pool
        cols = self.text_column[0] if len(self.text_column) == 1 else list(self.text_column)
        return textdata.load_local(self.path, cols, self.label_column, list(self.label_words)), None


def choose_examples(n_total: int, n_examples: int, seed: int) -> np.ndarray:
    """(min(n_examples, n_total),) sorted test indices: every example when there are no more
    than asked for, else a uniform subset drawn with ``seed``."""
    if n_examples >= n_total:
        return np.arange(n_total, dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(2**31,)))
    return np.sort(rng.choice(n_total, size=n_examples, replace=False)).astype(np.int64)


def build_batch(tokenizer, dataset, test_ids, n_demos: int, mode: str = "random", seed: int = 0, *, pool=None,
                max_text_tokens: int | None = None, max_length: int | None = None):
    """(batch, demo_ids): the prompts of ``test_ids`` (B,) as a left-padded
    :class:`PromptBatch` and each prompt's demonstration indices into the pool (B, n).

    ``test_ids`` may repeat an index; a repeat gets the same demonstrations.  The prompts are
    ``textdata.build_prompts``'s, which checks the arguments and the label words."""
    examples, demo_ids = textdata.build_prompts(tokenizer, dataset, test_ids, n_demos, mode, seed, pool=pool,
                                                max_text_tokens=max_text_tokens, max_length=max_length,
                                                return_demos=True)
    return collate(examples, textdata.label_tokens(tokenizer, dataset), hf.pad_id(tokenizer)), demo_ids


def _standalone_examples(tokenizer, dataset, ids, max_text_tokens):
    return [textdata.build_example(tokenizer, dataset, int(i), [], max_text_tokens=max_text_tokens) for i in ids]


def standalone_batch(tokenizer, dataset, ids, *, max_text_tokens: int | None = None) -> PromptBatch:
    """The zero-demonstration prompts ("Input: <text> Output:") of ``dataset``'s rows ``ids``."""
    return collate(_standalone_examples(tokenizer, dataset, ids, max_text_tokens),
                   textdata.label_tokens(tokenizer, dataset), hf.pad_id(tokenizer))


# ---------------------------------------------------------------------- the model's work
@dataclass
class TextOutputs:
    """Everything the model computed for one configuration: what the cache holds.

    batch        the prompts (B examples, n demonstrations, C classes, T padded length)
    capture      attn (B, L, H, T), label_logp (B, C), keys / values (B, n, O, Lp, Hkv, d) for
                 the Lp probed layers ``capture.layers`` (or None), offsets (O,); attention,
                 keys and values float32 holding float16-rounded values (the cache's precision)
    test_ids     (B,) row of each test example in the evaluated dataset
    demo_ids     (B, n) pool row of each demonstration
    test_logp    (B, C) log P(label | test input alone)
    pool_ids     (P,) sorted distinct pool rows run alone
    pool_logp    (P, C) log P(label | pool text alone)
    meta         JSON-able description (model, data, prompts, device, dtype, batch size, timings)
    """

    batch: PromptBatch
    capture: capture.Capture
    test_ids: np.ndarray
    demo_ids: np.ndarray
    test_logp: np.ndarray
    pool_ids: np.ndarray
    pool_logp: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def probe_layers(self) -> np.ndarray:
        """(Lp,) the model layers keys / values were kept for (empty without probes)."""
        if self.capture.keys is None or self.capture.layers is None:
            return np.empty(0, dtype=np.int64)
        return np.asarray(self.capture.layers, dtype=np.int64)

    @property
    def p_test(self) -> np.ndarray:
        """(B, C) P(o | x_test) over the labels, the test input run alone."""
        return capture.label_distribution(self.test_logp)

    @property
    def p_demos(self) -> np.ndarray:
        """(B, n, C) P(o | x_i) over the labels, each demonstration run alone."""
        return capture.label_distribution(self.pool_logp)[np.searchsorted(self.pool_ids, self.demo_ids)]


@dataclass
class TextPrepared:
    """The model-free half of :func:`compute` (:func:`prepare_text`): everything tokenized.

    batch       the prompts (B examples)
    test_ids    (B,) row of each test example;  demo_ids (B, n) pool row of each demonstration
    pool_ids    (P,) sorted distinct pool rows run alone
    test_unique (U,) sorted distinct test rows run alone, or None when the pool is the dataset
                (then the test texts are among ``pool_ids``)
    alone       the P (+ U) zero-demonstration prompts, pool rows first
    layers      the probed layers;  offsets (O,) the probed positions around each label
    meta        JSON-able description of the prompts
    """

    batch: PromptBatch
    test_ids: np.ndarray
    demo_ids: np.ndarray
    pool_ids: np.ndarray
    test_unique: np.ndarray | None
    alone: PromptBatch
    layers: list
    offsets: np.ndarray
    meta: dict


def prepare_text(tokenizer, config, dataset, n_demos: int = textdata.DEFAULT_N_DEMOS, mode: str = "random",
                 seed: int = 0, n_examples: int = DEFAULT_N_EXAMPLES, *, pool=None, test_ids=None,
                 probe_layers="auto", offsets=analysis.PROBE_OFFSETS,
                 max_text_tokens: int | None = None) -> TextPrepared:
    """Step 1 and the prompts of step 2 of the module docstring, from the tokenizer and the
    model's ``config`` alone: the prompts of ``n_examples`` test examples (``test_ids``
    overrides the choice), the zero-demonstration prompts and the probed layers.  Every
    prompt error (too few rows, label words sharing a first token, a prompt longer than the
    context, an unknown layer) is raised here, before any weights are needed."""
    t0 = time.perf_counter()
    if test_ids is None:
        test_ids = choose_examples(len(dataset), n_examples, seed)
    test_ids = np.asarray(test_ids, dtype=np.int64)
    batch, demo_ids = build_batch(tokenizer, dataset, test_ids, n_demos, mode, seed, pool=pool,
                                  max_text_tokens=max_text_tokens, max_length=hf.context_length(config))
    p = prepare_batch(tokenizer, config, dataset, batch, test_ids, demo_ids, pool=pool, probe_layers=probe_layers,
                      offsets=offsets, max_text_tokens=max_text_tokens)
    p.meta.update(mode=mode, seed=int(seed), seconds={"prompts": round(time.perf_counter() - t0, 3)})
    return p


def prepare_batch(tokenizer, config, dataset, batch: PromptBatch, test_ids, demo_ids, *, pool=None,
                  probe_layers="auto", offsets=analysis.PROBE_OFFSETS,
                  max_text_tokens: int | None = None) -> TextPrepared:
    """:func:`prepare_text` for prompts already built (``batch`` with its ``test_ids`` (B,) and
    ``demo_ids`` (B, n)): the texts to run alone and the probed layers."""
    test_ids = np.asarray(test_ids, dtype=np.int64)
    demo_ids = np.asarray(demo_ids, dtype=np.int64).reshape(len(test_ids), -1)
    same = pool is None or pool is dataset
    src = dataset if same else pool
    if same:
        pool_ids, test_unique = np.unique(np.concatenate([demo_ids.reshape(-1), test_ids])), None
    else:
        pool_ids, test_unique = np.unique(demo_ids.reshape(-1)), np.unique(test_ids)
    examples = _standalone_examples(tokenizer, src, pool_ids, max_text_tokens)
    if test_unique is not None:
        examples += _standalone_examples(tokenizer, dataset, test_unique, max_text_tokens)
    alone = collate(examples, batch.label_tokens, hf.pad_id(tokenizer))
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
    n_demos = demo_ids.shape[1]
    layers = capture.probe_layer_list(probe_layers, int(config.num_hidden_layers),
                                      capture.probe_layer_bytes(config, len(test_ids), n_demos, offsets.size))
    lengths = batch.attention_mask.sum(1)
    meta = {"n_examples": int(len(test_ids)), "n_demos": int(n_demos), "context": hf.context_length(config),
            "prompt_tokens": {"mean": float(lengths.mean()), "max": int(lengths.max()), "min": int(lengths.min())},
            "standalone_texts": int(len(alone)), "probe_layers": layers, "offsets": offsets.tolist(),
            "label_words": list(dataset.label_words), "label_tokens": batch.label_tokens.tolist(),
            "label_pieces": [tokenizer.decode([int(t)]) for t in batch.label_tokens],
            "dataset": {"name": dataset.name, "source": dataset.source, "rows": len(dataset),
                        "pool": None if same else {"name": pool.name, "source": pool.source, "rows": len(pool)}}}
    return TextPrepared(batch, test_ids, demo_ids, pool_ids, test_unique, alone, layers, offsets, meta)


def _in_order_half(a: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """``a[inv]`` with every value rounded to float16 (the cache's precision), kept float32;
    rounded in chunks of rows, so the reorder's copy is the only full copy."""
    out = a[inv]
    step = max(1, (64 << 20) // max(out[:1].nbytes, 1))
    for i in range(0, len(out), step):
        out[i:i + step] = out[i:i + step].astype(np.float16)
    return out


def execute_text(model, prepared: TextPrepared, batch_size: int = DEFAULT_BATCH_SIZE, *,
                 bar=None) -> TextOutputs:
    """Steps 2-3 of the module docstring on ``model``: run every text of ``prepared.alone``
    once, then capture the prompts.  The captured attention, keys and values are rounded to
    float16, the precision of the cache.  ``meta`` records the device, dtype and batch size.

    ``bar(desc, total)``: optional factory of progress bars (context managers with
    ``update(n)``)."""
    p = prepared
    bar = bar or _no_bar
    t1 = time.perf_counter()
    with bar("texts alone", len(p.alone)) as b:
        logp = capture.forward_labels_by_length(model, p.alone, batch_size, b.update)
    n_pool = p.pool_ids.size
    pool_logp = logp[:n_pool]
    if p.test_unique is None:
        test_logp = pool_logp[np.searchsorted(p.pool_ids, p.test_ids)]
    else:
        test_logp = logp[n_pool:][np.searchsorted(p.test_unique, p.test_ids)]
    t2 = time.perf_counter()
    layers = p.layers
    with bar("capture", len(p.test_ids)) as b:
        cap, inv = capture.in_length_order(
            lambda bb: capture.capture(model, bb, offsets=p.offsets if layers else None, batch_size=batch_size,
                                       layers=layers or None, progress=b.update), p.batch)
    t3 = time.perf_counter()
    # one array at a time, dropping each sorted original once it is reordered (memory)
    attn, cap.attn = _in_order_half(cap.attn, inv), None
    keys, cap.keys = (None if cap.keys is None else _in_order_half(cap.keys, inv)), None
    values, cap.values = (None if cap.values is None else _in_order_half(cap.values, inv)), None
    cap = capture.Capture(attn, cap.label_logp[inv], keys, values, cap.offsets, cap.layers)
    param = next(model.parameters())
    meta = dict(p.meta, device=capture.model_devices(model), dtype=str(param.dtype).removeprefix("torch."),
                batch_size=int(batch_size))
    meta["seconds"] = dict(p.meta.get("seconds", {}), standalone=round(t2 - t1, 3), capture=round(t3 - t2, 3))
    return TextOutputs(p.batch, cap, p.test_ids, p.demo_ids, test_logp, p.pool_ids, pool_logp, meta)


def compute(model, tokenizer, dataset, n_demos: int = textdata.DEFAULT_N_DEMOS, mode: str = "random",
            seed: int = 0, n_examples: int = DEFAULT_N_EXAMPLES, batch_size: int = DEFAULT_BATCH_SIZE, *, pool=None,
            test_ids=None, probe_layers="auto", offsets=analysis.PROBE_OFFSETS, max_text_tokens: int | None = None,
            bar=None) -> TextOutputs:
    """Steps 1-3 of the module docstring: :func:`prepare_text` with ``model.config``, then
    :func:`execute_text`."""
    prepared = prepare_text(tokenizer, model.config, dataset, n_demos, mode, seed, n_examples, pool=pool,
                            test_ids=test_ids, probe_layers=probe_layers, offsets=offsets,
                            max_text_tokens=max_text_tokens)
    return execute_text(model, prepared, batch_size, bar=bar)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass


def _no_bar(desc, total):
    return _NoBar()


#: the :class:`~simkernel.prompts.PromptBatch` fields a cache file stores, as ``batch_<field>``
_BATCH_FIELDS = ("input_ids", "attention_mask", "spans", "label_pos", "demo_labels", "gold", "label_tokens")


def save_text_outputs(path, outputs: TextOutputs) -> Path:
    """Write ``outputs`` as one uncompressed ``.npz`` (atomically): attention, keys and values
    in float16 (half the bytes; :func:`execute_text` rounds them to float16 before any analysis,
    so nothing is lost), the rest exact, ``meta`` as a JSON string."""
    cap = outputs.capture
    arrays = {f"batch_{k}": getattr(outputs.batch, k) for k in _BATCH_FIELDS}
    arrays.update(capture_arrays(cap, outputs.probe_layers), test_ids=outputs.test_ids,
                  demo_ids=outputs.demo_ids, test_logp=outputs.test_logp, pool_ids=outputs.pool_ids,
                  pool_logp=outputs.pool_logp, meta=np.array(json.dumps(outputs.meta, default=str)))
    return write_npz(path, arrays)


def load_text_outputs(path) -> TextOutputs:
    """Read what :func:`save_text_outputs` wrote; a damaged file is a one-line ValueError."""
    return read_npz(path, lambda a: TextOutputs(PromptBatch(*(a[f"batch_{k}"] for k in _BATCH_FIELDS)),
                                                capture_from(a), a["test_ids"], a["demo_ids"], a["test_logp"],
                                                a["pool_ids"], a["pool_logp"], json.loads(str(a["meta"]))))


# ---------------------------------------------------------------------- analysis
def analyse(outputs: TextOutputs, how: str = "max", n_select: int = N_SELECT, n_report: int = N_REPORT,
            split_seed: int = 0, probe_lambda: float = analysis.PROBE_LAMBDA) -> analysis.Analysis:
    """``analysis.analyse`` of the cached outputs with the prediction-similarity kernel (also as
    reference weights, whose vote is reported beside the chosen heads) and
    ridge probes on the probed layers: keys -> the demonstration's standalone prediction
    argmax P(o | x_i), values -> y_i; trained on the selection split, scored on the report
    split (the same split as the head choice)."""
    sim = analysis.prediction_similarity(outputs.p_test, outputs.p_demos)
    # the model's own prediction similarity is the one kernel a real LLM has: its vote stands
    # beside the chosen heads with the uniform, shuffled and best votes
    return analysis.analyse(outputs.capture, outputs.batch, kernels={"similarity": sim},
                            reference_weights={"similarity": sim}, how=how, n_select=n_select,
                            n_report=n_report, seed=split_seed, probe_lambda=probe_lambda,
                            probe_targets={"keys": ("standalone", outputs.p_demos.argmax(-1))})


# ---------------------------------------------------------------------- one job, cached
@dataclass
class TextRun:
    """What ``simkernel llm`` runs: the model's outputs (from the cache or computed) and the
    analysis.  ``info`` says which (``cache_hit``, ``model_loaded``, the cache file, and
    ``cache_damaged``: None, or why the cache file there could not be read, so that the outputs
    were recomputed) and how the outputs were computed (``device``, ``dtype``, ``batch_size``:
    the computing run's, also on a cache hit)."""

    outputs: TextOutputs
    analysis: analysis.Analysis
    info: dict
    meta: dict = field(default_factory=dict)
    title: str = ""

    TABLES = ("heads", "best", "profile", "probes")

    def write(self, out) -> list:
        """Publish the four tables, llm.json and the figures into the folder ``out`` (the
        figure of the probes only when there are probes; an older one is removed)."""
        from .plots import MEASURE_FIGURES, MEASURE_FILES, plot_attention_profile, plot_head_scores, plot_probes
        from .store import check_results_dir, publish, write_csv, write_json

        out = check_results_dir(Path(out))
        res, title = self.analysis, self.title
        meta = dict(self.meta, config=dict(self.meta.get("config", {}), out=str(out)))
        cols = (analysis.HEAD_COLUMNS, analysis.BEST_COLUMNS, analysis.PROFILE_COLUMNS, analysis.PROBE_COLUMNS)
        writers = {MEASURE_FILES[t]: (lambda p, t=t, c=c: write_csv(p, getattr(res, t), c))
                   for t, c in zip(self.TABLES, cols)}
        writers["llm.json"] = lambda p: write_json(p, meta)
        writers[MEASURE_FIGURES[0]] = lambda p: plot_attention_profile(res.profile, p, title)
        writers[MEASURE_FIGURES[1]] = lambda p: plot_head_scores(res.heads, res.best, p, title=title)
        if res.probes:
            writers[MEASURE_FIGURES[2]] = lambda p: plot_probes(res.probes, p, title)
        return publish(out, writers, remove=MEASURE_FIGURES)

    def summary_lines(self) -> list[str]:
        """What ``simkernel llm`` prints: the model, the data, the prompts, Table 2, the best
        prediction-similarity head and the probes."""
        res, meta_out, s = self.analysis, self.outputs.meta, self.analysis.summary
        cfg = self.meta.get("config", {})
        model_meta, ds = meta_out.get("model", {}), meta_out.get("dataset", {})
        pool = ds.get("pool")
        out = [f"model {model_meta.get('id', cfg.get('model'))}"
               + (f" (revision {model_meta['revision']})" if model_meta.get("revision") else "")
               + (f" commit {str(model_meta['commit'])[:10]}" if model_meta.get("commit") else "")
               + f": {model_meta.get('model_type', '?')}, {s['layers']} layers x {s['heads']} heads, "
               f"{model_meta.get('dtype', '?')}",
               f"data {ds.get('source', '?')}: {s['n_examples']} of {ds.get('rows', '?')} examples; "
               f"{s['n_demos']} {cfg.get('demos')} demonstrations each from "
               f"{pool['source'] if pool else 'the other rows'}, seed {self.meta.get('seed')}"]
        tokens = meta_out.get("prompt_tokens", {})
        where = "read from the cache" if self.info["cache_hit"] else "computed and cached"
        name = Path(self.info["cache_file"]).name
        out.append(f"prompts: {tokens.get('mean', float('nan')):.0f} tokens on average, {tokens.get('max', '?')} at "
                   f"most; model outputs {where} ({name})")
        if self.info.get("cache_damaged"):
            out.append(f"the cache file {name} could not be read ({self.info['cache_damaged']}): recomputed")
        task = cfg.get("task") or Path(str(cfg.get("data"))).stem
        out += table2_lines(s, task, self.meta.get("paper_table2"))
        sim = [b for b in res.best if b["measure"] == "pearson" and b["reference"] == "similarity"]
        if sim:
            b = sim[0]
            out.append(f"prediction similarity: best head L{b['layer']} H{b['head']}, Pearson r {b['report']:.3f} "
                       f"held out (weights a_i vs P(o|x_test)ᵀP(o|x_i) within a prompt)")
        for vec in ("keys", "values"):
            rows = [r for r in res.probes if r["vector"] == vec]
            if rows:
                b = max(rows, key=lambda r: r["accuracy"])
                probed = ", ".join(map(str, meta_out.get("probe_layers", [])))
                out.append(f"{vec} probe -> {b['target']}: best {b['accuracy']:.3f} held out (layer {b['layer']} "
                           f"head {b['head']} offset {b['offset']:+d}; layers {probed})")
        return out


def run(model_name: str, data: DataSpec, out_dir, *, revision: str | None = None,
        n_demos: int = textdata.DEFAULT_N_DEMOS,
        mode: str = "random", seed: int = 0, n_examples: int = DEFAULT_N_EXAMPLES, how: str = "max",
        n_select: int = N_SELECT, n_report: int = N_REPORT, split_seed: int = 0, probe_layers="auto",
        max_text_tokens: int | None = None, dtype: str = "auto", device: str = "auto",
        device_map: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE, bar=None, on_load=None) -> TextRun:
    """The whole protocol for one configuration, reusing ``out_dir/outputs-<hash>.npz`` when it
    exists: nothing of the model is loaded when the outputs for this (model, revision, data,
    n_demos, mode, seed, n_examples, dtype, probe layers, max_text_tokens) are cached, and the
    device is then not checked.  Otherwise the data, the tokenizer and the model's config are
    loaded and every prompt is built (:func:`prepare_text`) before the weights (``on_load(desc)``
    is called first).  The cache is written before the analysis, so a failed analysis keeps it."""
    t0 = time.perf_counter()
    where = hf.resolve_model(model_name)
    data_id = data.identity()
    dt = hf.planned_dtype(dtype, device, device_map)
    key = cache_key(hf.model_identity(where, revision), data_id, n_demos=n_demos, mode=mode, seed=seed,
                    n_examples=n_examples, dtype=dt, probe_layers=probe_layers, max_text_tokens=max_text_tokens)
    path = cache_path(out_dir, key)
    Path(out_dir).parent.mkdir(parents=True, exist_ok=True)
    # two runs on one folder would compute the same outputs twice and race for the cache file; the
    # lock sits beside the folder, which is created only once there are outputs to cache
    with folder_lock(out_dir, "llm output", beside=True):
        outputs, hit, damaged = _outputs(path, where, model_name, revision, data, data_id, dt, n_demos, mode, seed,
                                         n_examples, probe_layers, max_text_tokens, device, device_map, batch_size,
                                         bar, on_load)
    meta = outputs.meta
    info = {"cache_file": str(path), "cache_key": key, "cache_hit": hit, "model_loaded": not hit,
            "cache_damaged": damaged,
            "device": meta.get("device"), "dtype": meta.get("dtype"), "batch_size": meta.get("batch_size")}
    result = analyse(outputs, how, n_select, n_report, split_seed)
    config = {"command": "llm", "model": model_name, "revision": revision, "task": data.task, "split": data.split,
              "data": data.path, "text_column": list(data.text_column) if data.path else None,
              "label_column": data.label_column if data.path else None,
              "label_words": list(data.label_words) if data.path else None,
              "n_demos": n_demos, "demos": mode, "n_examples": n_examples, "weight": how, "n_select": n_select,
              "n_report": n_report, "split_seed": split_seed, "probe_layers": probe_layers,
              "max_text_tokens": max_text_tokens, "dtype": dtype, "device": device, "device_map": device_map,
              "batch_size": batch_size, "out": str(out_dir)}
    s, model_meta = result.summary, meta.get("model", {})
    is_gptj = where["id"] == hf.MODEL_ALIASES["gpt-j-6b"]
    paper = PAPER_TABLE2.get(data.task) if is_gptj else None
    title = (f"{model_meta.get('id', model_name)} on {data.task or Path(data.path).name}: "
             f"{s['n_examples']} examples x {s['n_demos']} demonstrations ({mode}, seed {seed})")
    run_meta = provenance(config, seed, extra_packages=("matplotlib", "torch", "transformers", "datasets",
                                                        "tokenizers", "accelerate"))
    run_meta.update(title=title, model=model_meta, data=meta.get("data"), dataset=meta.get("dataset"), cache=info,
                    outputs={k: v for k, v in meta.items() if k not in ("model", "data", "dataset")},
                    summary=s, table2=s["table2"], paper_table2=paper, best=result.best,
                    columns={"heads": list(analysis.HEAD_COLUMNS), "best": list(analysis.BEST_COLUMNS),
                             "profile": list(analysis.PROFILE_COLUMNS), "probes": list(analysis.PROBE_COLUMNS)},
                    elapsed_s=round(time.perf_counter() - t0, 3))
    return TextRun(outputs, result, info, run_meta, title)


def _outputs(path, where, model_name, revision, data, data_id, dt, n_demos, mode, seed, n_examples, probe_layers,
             max_text_tokens, device, device_map, batch_size, bar, on_load):
    """(outputs, cache hit, why the cache could not be read or None): the cached model outputs at
    ``path``, else computed and cached (replacing a damaged file)."""
    cached, damaged = read_cache(path, load_text_outputs)
    if cached is not None:
        return cached, True, None
    dataset, pool = data.load()
    config = hf.load_config(model_name, revision)
    tok = hf.load_tokenizer(model_name, revision)
    prepared = prepare_text(tok, config, dataset, n_demos, mode, seed, n_examples, pool=pool,
                            probe_layers=probe_layers, max_text_tokens=max_text_tokens)
    if on_load is not None:
        on_load(f"loading {where['id']}")
    workload = dict(batch_size=batch_size, tokens=prepared.batch.input_ids.shape[1], prompts=len(prepared.test_ids),
                    probe_bytes=len(prepared.layers) * capture.probe_layer_bytes(config, len(prepared.test_ids),
                                                                                prepared.demo_ids.shape[1]))
    model, tok = hf.load_model(model_name, revision, dt, device, device_map, tokenizer=tok, config=config,
                               workload=workload, report=on_load)
    outputs = execute_text(model, prepared, batch_size, bar=bar)
    outputs.meta["model"] = hf.model_record(model, model_name, revision, dt)
    outputs.meta["data"] = data_id
    path.parent.mkdir(parents=True, exist_ok=True)
    save_text_outputs(path, outputs)
    del model
    return outputs, False, damaged


def text_default_out(model_name: str, data: DataSpec) -> Path:
    """runs/llm/<model>-<task or file stem>."""
    what = data.task if data.task is not None else Path(data.path).stem
    return Path("runs") / "llm" / f"{hf.slug(model_name)}-{hf.slug(what)}"


def table2_lines(summary: dict, task: str | None, paper: dict | None) -> list[str]:
    """The paper's Table 2 in text: ICL accuracy, agreement of the best head's reconstruction
    with the model, reconstructed accuracy, best head (chosen on the selection split)."""
    t2 = summary["table2"]

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    name = task or "data"
    lines = [f"Table 2 (best head chosen on {summary['n_select']} examples by agreement with the model, reported on "
             f"{summary['n_report']} held out; weight {summary['weight']})",
             f"{'task':<22} {'ICL acc':>8} {'agreement':>10} {'recon acc':>10}  best head",
             f"{name:<22} {f(t2['icl_accuracy']):>8} {f(t2['agreement']):>10} {f(t2['reconstructed_accuracy']):>10}  "
             f"L{t2['layer']} H{t2['head']}"]
    if paper is not None:
        lines.append(f"{'paper (GPT-J-6B)':<22} {paper['icl_accuracy']:>8.3f} {paper['agreement']:>10.3f} {'-':>10}")
    return lines
