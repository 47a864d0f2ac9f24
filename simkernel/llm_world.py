"""Real language models on simulator worlds: any Hugging Face causal LM against exact Bayes.

The two branches meet here.  A world's prompts and documents are rendered as text, one token
per symbol (``render``), and run through a causal LM with the code of ``simkernel llm``
(``hf`` loads it, ``capture``, ``analysis``); everything the LM says is compared with what is
known exactly in the world:

1. **In-context learning** (``icl_vs_bayes.csv``, the layout of ``simkernel icl-eval``): for
   each n of the grid the same prompts (sampled once with N = max n demonstrations, cut to n)
   are run, and the LM's next-token distribution after x_test, restricted to the label tokens
   and renormalised, is scored by ``icl_eval.prompt_metrics`` against exact Bayes, the oracle,
   the theory kernel (every estimator: normalised, averaged, clipped) and the label frequencies
   (total variation, tie-fair agreement, tie-fair accuracy).  Beside them (:data:`EXTRA_METRICS`):
   the total variation over all V symbols (the LM restricted to the V symbol tokens against the
   Bayes predictive over V), and the probability mass the LM puts on the symbol and the label
   tokens.  Means with 95% CIs over prompts (one world) or over worlds (a t-interval over the
   world means, ``metrics.world_ci``).
2. **Whole documents** (``documents.csv``, ``worlds.csv``, ``documents.png``): the LM's log-loss
   of every symbol of sampled documents given the symbols before it (t = 1..L-1), over the whole
   vocabulary and renormalised over the V symbol tokens, beside the exact Bayes loss of the
   same position (``bayes.block_loss``: the in-context learning curve of Dai et al. 2025 with
   the exact optimum) and the loss with the true concept known; per world its mixing rate and
   entropy rate (:func:`world_properties`) and the gap LM − Bayes.
3. **Inside the model** (``inside/``, the layout of ``simkernel measure``): the capture of
   ``simkernel llm`` (final-row attention, keys and values around each label) on the N-demo
   prompts, analysed by ``alignment.analyse_measured`` with the simulator's ground truth
   (``alignment.ground_truth``: theory kernel, exact prediction similarity, exact posterior,
   oracle, label frequencies) and analysis's uniform-vote, shuffled and best references; heads
   chosen on a selection split and reported held out; several worlds pooled by
   ``alignment.pool`` (worlds as the unit).

The model's outputs are cached per world as ``outputs-<key>.npz`` (``cache.cache_key`` over the
model's identity, the world and every prompt setting, and the resolved dtype), so a rerun (or a
run that adds a world) loads no weights for what is cached.  A cache file that cannot be read
(``cache.read_cache``) is recomputed and replaced, and the run says so.  Every prompt is built,
and every bad argument raised, from the tokenizer and the config before any weights load.

Defaults and why: n grid (0, 1, 2, 4, 8, 16) and k = 3: 16 demonstrations of 3 symbols are a
66-token prompt, short for any LM, and k = 3 leaves room for the probe offsets -1..3;
200 prompts per world: CIs of about ±0.05 on agreement; 64 documents of 128 symbols.

Every name here is the world branch's own (``WorldPrepared``, ``WorldOutputs``,
``prepare_world``, ...); the text-task branch is ``llm``.  torch and transformers are imported
inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import alignment, analysis, bayes, capture, hf, icl_eval, kernel
from .cache import (cache_key, cache_path, capture_arrays, capture_from, half_rounded, read_cache, read_npz,
                    write_npz)
from .constants import ICL_COLUMNS, LLM_BATCH_SIZE, N_REPORT, N_SELECT
from .metrics import mean_ci, restrict, tv, world_ci
from .prompts import PromptBatch, collate
from .render import SymbolMap, choose_symbols, render_batch, render_documents
from .presets import resolve_worlds
from .sampling import prompt_length, sample_corpus, sample_prompt_set
from .store import folder_lock, provenance, world_summary
from .validate import check_choice, check_int, check_ints

DEFAULT_N_DEMOS = (0, 1, 2, 4, 8, 16)
DEFAULT_N_PROMPTS = 200
DEFAULT_EXAMPLE_LENGTH = 3
DEFAULT_N_DOCS = 64
DEFAULT_DOC_LENGTH = 128
#: bump when the prompts, the documents or the cached arrays change meaning (a part of
#: :func:`data_identity`, beside the key version of ``cache``)
WORLD_CACHE_VERSION = 1
#: beside ``icl_eval.METRICS``: TV over all V symbols, and the LM's mass on the symbol / label tokens
EXTRA_METRICS = ("tv_bayes_symbols", "symbol_mass", "label_mass")
ICL_TABLE_COLUMNS = ICL_COLUMNS + ("n_worlds",)
#: documents.csv: per world (and 'all' worlds pooled) and position t (symbols before), the mean
#: over documents (pooled: over worlds) of each :data:`DOC_METRICS`
DOC_COLUMNS = ("world", "position", "metric", "mean", "ci_low", "ci_high", "n_docs", "n_worlds")
DOC_METRICS = ("lm_loss", "lm_loss_symbols", "bayes_loss", "oracle_loss", "gap", "symbol_mass")
#: worlds.csv: one row per world
WORLD_COLUMNS = ("world", "K", "S", "V", "restart", "mixing_rate", "mixing_rate_max", "entropy_rate",
                 "bayes_loss", "oracle_loss", "lm_loss", "lm_loss_symbols", "gap", "gap_lo", "gap_hi",
                 "gap_late", "gap_late_lo", "gap_late_hi", "n_docs")
FILES = ("icl_vs_bayes.csv", "icl_vs_bayes.json", "icl_vs_bayes.png", "documents.csv", "worlds.csv",
         "documents.png")
INSIDE = "inside"
METRIC_DESCRIPTIONS = dict(
    icl_eval.METRIC_DESCRIPTIONS,
    tv_bayes_symbols="total variation over all V symbols between the LM (restricted to the V symbol tokens, "
                     "renormalised) and the exact posterior predictive",
    symbol_mass="probability the LM puts on the V symbol tokens after x_test (the rest is off-world text)",
    label_mass="probability the LM puts on the label tokens after x_test",
    lm_loss="documents: -log P_LM(symbol token | symbols before), over the whole vocabulary (nats)",
    lm_loss_symbols="documents: the same renormalised over the V symbol tokens (comparable with Bayes)",
    bayes_loss="documents: exact Bayes loss of the position under the mixture (bayes.block_loss)",
    oracle_loss="documents: loss with the document's concept known",
    gap="documents: lm_loss_symbols - bayes_loss",
    mixing_rate="worlds: prior-weighted second-largest eigenvalue modulus of each concept's hidden chain "
                "(restart folded in; 0 mixes at once, near 1 slowly)",
    entropy_rate="worlds: the loss with the concept known over the second half of the documents (nats/symbol)")


# ---------------------------------------------------------------------- worlds
@dataclass
class WorldSpec:
    """One world of a run: ``name`` (its label in the tables), the ``world`` and ``record``
    (where it came from: ``presets.load_world``'s record plus the arrays' digest)."""

    name: str
    world: object
    record: dict


def world_digest(world) -> str:
    """16 hex digits of the SHA-256 of the world's arrays and layout (what a cache key needs)."""
    h = hashlib.sha256()
    for a in (world.prior, world.start, world.transition, world.emission, world.labels):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(f"{world.delimiter},{world.restart}".encode())
    return h.hexdigest()[:16]


def load_worlds(preset=None, world_seeds=(0,), overrides=None, world_file=None) -> list:
    """[:class:`WorldSpec`]: ``world_file`` (one saved world, named by its file's stem) or
    ``preset`` (default paper-c) built at each of ``world_seeds`` with ``overrides``, named
    ``<preset>-<seed>`` (``presets.resolve_worlds``, the one resolver)."""
    ws = resolve_worlds(preset, world_seeds, overrides, world_file)
    names = ([Path(str(world_file)).stem] if world_file is not None
             else [f"{rec['preset']}-{s}" for rec, s in zip(ws.records, ws.labels)])
    return [WorldSpec(name, w, dict(rec, digest=world_digest(w))) for name, w, rec in zip(names, ws.worlds, ws.records)]


def mixing_rates(world) -> np.ndarray:
    """(K,) each concept's second-largest eigenvalue modulus of its hidden chain
    (``bayes.effective_transition``: the delimiter's restart folded in); 0 for one state."""
    M = bayes.effective_transition(world)
    out = np.zeros(world.n_concepts)
    for k in range(world.n_concepts):
        ev = np.sort(np.abs(np.linalg.eigvals(M[k])))[::-1]
        out[k] = float(ev[1]) if ev.size > 1 else 0.0
    return np.clip(out, 0.0, 1.0)


def oracle_loss(world, tokens, concepts) -> np.ndarray:
    """(D, L-1) nats: -log P(symbol t | symbols < t, the document's concept), t = 1..L-1,
    for documents ``tokens`` (D, L) drawn from ``concepts`` (D,)."""
    return bayes.document_loss(world, tokens, concepts)[1]


def world_properties(worlds, n_docs: int = 256, doc_length: int = 256, seed: int = 0, losses=None) -> list:
    """One dict per world (a :class:`WorldSpec` or a World): ``mixing_rate`` (prior-weighted
    SLEM of :func:`mixing_rates`), ``mixing_rate_max`` and ``entropy_rate`` (nats/symbol: the
    mean loss with the concept known over the second half of ``n_docs`` sampled documents of
    ``doc_length`` symbols, an estimate of the symbol process's entropy rate), with ``K``, ``S``,
    ``V`` and ``restart``.  ``losses``: each world's :func:`oracle_loss` (D, L-1) of documents
    already sampled, used instead of sampling."""
    out = []
    for i, w in enumerate(worlds):
        name, world = (w.name, w.world) if isinstance(w, WorldSpec) else (str(i), w)
        rates = mixing_rates(world)
        if losses is None:
            docs = sample_corpus(world, n_docs, doc_length, seed=seed)
            loss = oracle_loss(world, docs.tokens.reshape(n_docs, doc_length), docs.concepts)
        else:
            loss = losses[i]
            doc_length = loss.shape[1] + 1
        out.append({"world": name, "K": world.n_concepts, "S": world.n_states, "V": world.n_symbols,
                    "restart": bool(world.restart), "mixing_rate": float(world.prior @ rates),
                    "mixing_rate_max": float(rates.max()),
                    "entropy_rate": float(loss[:, (doc_length - 1) // 2:].mean())})
    return out


# ---------------------------------------------------------------------- the model-free half
@dataclass
class WorldPrepared:
    """Everything rendered for one world, before any model runs.

    ns          the n grid;  prompts the sampler's prompts with N = max(ns) demonstrations
    icl_batch   (G B) prompts: prompt b with ns[g] demonstrations at row g B + b, scored on all
                V symbol tokens (``label_tokens`` = ``smap.token_ids``)
    docs        the sampled documents (``sampling.Corpus``); doc_ids (D, P + L) their token ids
    inside      the N-demo prompts with spans and label positions (or None: no capture)
    alone, alone_inv  every distinct input run alone (U prompts) and each prompt's rows in it
                (B, N + 1), or None
    layers, offsets   the probed layers and positions around each label
    meta        JSON-able description
    """

    spec: WorldSpec
    smap: SymbolMap
    ns: list
    prompts: object
    icl_batch: PromptBatch
    docs: object
    doc_ids: np.ndarray
    inside: PromptBatch | None
    alone: PromptBatch | None
    alone_inv: np.ndarray | None
    layers: list
    offsets: np.ndarray
    meta: dict


def check_grid(n_demos) -> list:
    """The sorted distinct n of ``n_demos`` (integers >= 0, or a comma string of them);
    one-line ValueErrors naming ``n_demos``."""
    if isinstance(n_demos, str):
        parts = [x for x in n_demos.replace(" ", "").split(",") if x]
        if not all(x.isdigit() for x in parts):
            raise ValueError(f"n_demos must be one or more integers >= 0, got {n_demos!r}")
        n_demos = [int(x) for x in parts]
    return check_ints("n_demos", n_demos, 0)


def probe_offsets(example_length: int) -> np.ndarray:
    """analysis's offsets -1..3 around each label that stay inside every prompt: the last
    demonstration's label is followed by the delimiter and x_test's k - 1 symbols, so <= k."""
    return np.asarray([o for o in analysis.PROBE_OFFSETS if o <= example_length], dtype=np.int64)


def grid_batch(smap: SymbolMap, prompts, ns) -> PromptBatch:
    """(G B) left-padded prompts without demonstration spans: row g B + b is prompt b cut to
    ns[g] demonstrations, as token ids; every V symbol token scored (``label_tokens``).  Built
    in one array per n (``prompts.collate``'s layout, without a Python loop over prompts)."""
    B = len(prompts.y_test)
    parts = [smap.ids(prompts.truncated(n).tokens.astype(np.int64)) for n in ns]
    T = max(x.shape[1] for x in parts)
    ids = np.full((len(ns) * B, T), smap.pad_id, dtype=np.int64)
    mask = np.zeros((len(ns) * B, T), dtype=np.int64)
    for g, x in enumerate(parts):
        ids[g * B:(g + 1) * B, T - x.shape[1]:] = x
        mask[g * B:(g + 1) * B, T - x.shape[1]:] = 1
    G = len(ns) * B
    return PromptBatch(ids, mask, np.zeros((G, 0, 2), np.int64), np.zeros((G, 0), np.int64),
                       np.zeros((G, 0), np.int64), np.full(G, -1, np.int64), smap.token_ids.copy())


def prepare_world(smap: SymbolMap, spec: WorldSpec, *, n_demos=DEFAULT_N_DEMOS,
                  n_prompts: int = DEFAULT_N_PROMPTS, example_length: int = DEFAULT_EXAMPLE_LENGTH,
                  concepts="prior", n_docs: int = DEFAULT_N_DOCS, doc_length: int = DEFAULT_DOC_LENGTH,
                  seed: int = 0, inside: bool = True, config=None, probe_layers="auto") -> WorldPrepared:
    """Sample and render one world's prompts and documents (no model).  ``config`` (the model's,
    or None): checks that the longest prompt and the documents fit the context and chooses the
    probed layers (``capture.probe_layer_list``); one-line ValueErrors naming the argument."""
    ns = check_grid(n_demos)
    check_int("n_prompts", n_prompts, 2)
    k = check_int("example_length", example_length, 2)
    check_int("n_docs", n_docs, 1)
    check_int("doc_length", doc_length, 2)
    world, N, P = spec.world, ns[-1], smap.prefix_ids.size
    ctx = hf.context_length(config) if config is not None else None
    if ctx is not None:
        if P + prompt_length(N, k) > ctx:
            most = (ctx - P - k + 1) // (k + 1)
            raise ValueError(f"n_demos {N} makes {P + prompt_length(N, k)}-token prompts, longer than the model's "
                             f"context ({ctx}); allowed: n_demos <= {most}")
        if P + doc_length > ctx:
            raise ValueError(f"doc_length={doc_length} makes {P + doc_length}-token documents, longer than the "
                             f"model's context ({ctx}); allowed: doc_length <= {ctx - P}")
    if inside and N < 1:
        raise ValueError("the attention analysis needs demonstrations; allowed: n_demos with a value >= 1 "
                         "(or inside=False)")
    prompts = sample_prompt_set(world, n_prompts, N, k, seed=seed, concepts=concepts)
    icl_batch = grid_batch(smap, prompts, ns)
    docs = sample_corpus(world, n_docs, doc_length, seed=seed)
    doc_ids = render_documents(smap, docs.tokens.reshape(n_docs, doc_length))
    inside_batch = alone = inv = None
    layers, offsets = [], probe_offsets(k)
    if inside:
        inside_batch = render_batch(smap, collate(alignment.examples_from_prompts(world, prompts), world.labels))
        sym_alone, inv = alignment.standalone_batch(world, prompts)
        alone = render_batch(smap, sym_alone)
        if config is not None:
            layers = capture.probe_layer_list(probe_layers, int(config.num_hidden_layers),
                                              capture.probe_layer_bytes(config, n_prompts, N, offsets.size))
    lengths = icl_batch.attention_mask.sum(1)
    meta = {"world": spec.name, "n_demos": ns, "n_prompts": int(n_prompts), "example_length": k,
            "concepts": str(concepts), "n_docs": int(n_docs), "doc_length": int(doc_length), "context": ctx,
            "prompt_tokens": {"max": int(lengths.max()), "min": int(lengths.min())}, "probe_layers": layers,
            "offsets": offsets.tolist(), "symbols": smap.to_dict(),
            "example_prompt": smap.text(prompts.truncated(min(N, 2)).tokens[0])}
    return WorldPrepared(spec, smap, ns, prompts, icl_batch, docs, doc_ids, inside_batch, alone, inv, layers,
                         offsets, meta)


# ---------------------------------------------------------------------- the model's work
@dataclass
class WorldOutputs:
    """What the model computed for one world (what the cache holds).

    icl_logp     (G, B, V) float64 log P_LM(symbol token v | prompt with ns[g] demonstrations)
                 at the last position, over the whole vocabulary
    doc_logp     (D, L-1) float64 log P_LM(symbol t's token | the tokens before), t = 1..L-1
    doc_sym_lse  (D, L-1) float64 log Σ_v P_LM(symbol token v | the tokens before): the mass on
                 the V symbols (doc_logp - doc_sym_lse is the log-loss renormalised over them)
    capture      ``capture.Capture`` of the N-demo prompts (attention, keys, values float32
                 holding float16-rounded values: the cache's precision), or None
    alone_logp   (U, L) float64 log P_LM(label token | the input alone), or None
    meta         JSON-able: the symbol map, the model, device, dtype, batch size, timings
    """

    icl_logp: np.ndarray
    doc_logp: np.ndarray
    doc_sym_lse: np.ndarray
    capture: capture.Capture | None
    alone_logp: np.ndarray | None
    meta: dict = field(default_factory=dict)


def execute_world(model, prepared: WorldPrepared, batch_size: int = LLM_BATCH_SIZE,
                  progress=None) -> WorldOutputs:
    """Run ``model`` on one world's prompts: the ICL grid (sorted by length,
    ``capture.forward_labels_by_length``), the documents (``capture.token_logprobs``) and, when
    prepared, the capture of the N-demo prompts and every input alone.  ``progress(stage)`` is
    called before each stage."""
    p = prepared
    tick = progress or (lambda _msg: None)
    if hasattr(model, "eval"):
        model.eval()
    t0 = time.perf_counter()
    tick(f"{p.spec.name}: ICL prompts ({len(p.icl_batch)})")
    G, B = len(p.ns), len(p.prompts.y_test)
    icl = capture.forward_labels_by_length(model, p.icl_batch, batch_size).reshape(G, B, -1)
    t1 = time.perf_counter()
    tick(f"{p.spec.name}: documents ({len(p.doc_ids)})")
    P = p.smap.prefix_ids.size
    # the prefix (a BOS) predicts symbol 0, which Bayes has no loss for here: positions 1..L-1
    doc_logp, doc_lse = capture.token_logprobs(model, p.doc_ids, p.smap.token_ids, batch_size)
    doc_logp, doc_lse = doc_logp[:, P:], doc_lse[:, P:]
    t2 = time.perf_counter()
    cap = alone = None
    if p.inside is not None:
        tick(f"{p.spec.name}: capture ({len(p.inside)} prompts)")
        layers = p.layers
        cap = capture.capture(model, p.inside, offsets=p.offsets if layers else None, batch_size=batch_size,
                              layers=layers or None)
        cap = half_rounded(cap)       # so a first run and a cached rerun analyse the same numbers
        alone = capture.forward_labels_by_length(model, p.alone, max(batch_size, 64))
    t3 = time.perf_counter()
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    meta = dict(p.meta, batch_size=int(batch_size),
                device=capture.model_devices(model) if param is not None else "cpu",
                dtype=str(param.dtype).removeprefix("torch.") if param is not None else None,
                seconds={"icl": round(t1 - t0, 3), "documents": round(t2 - t1, 3), "capture": round(t3 - t2, 3)})
    return WorldOutputs(icl, doc_logp, doc_lse, cap, alone, meta)


def save_world_outputs(path, outputs: WorldOutputs) -> Path:
    """One uncompressed ``.npz`` (atomically); attention, keys and values in float16."""
    o = outputs
    arrays = {"icl_logp": o.icl_logp, "doc_logp": o.doc_logp, "doc_sym_lse": o.doc_sym_lse,
              "meta": np.array(json.dumps(o.meta, default=str))}
    if o.capture is not None:
        arrays.update(capture_arrays(o.capture, o.capture.layers), alone_logp=o.alone_logp)
    return write_npz(path, arrays)


def load_world_outputs(path) -> WorldOutputs:
    """Read what :func:`save_world_outputs` wrote; a damaged file is a one-line ValueError."""
    return read_npz(path, lambda a: WorldOutputs(a["icl_logp"], a["doc_logp"], a["doc_sym_lse"],
                                                 capture_from(a) if "attn" in a else None, a.get("alone_logp"),
                                                 json.loads(str(a["meta"]))))


# ---------------------------------------------------------------------- scoring
@dataclass
class Scored:
    """One world's per-prompt and per-document numbers (no model needed to recompute them
    from :class:`WorldOutputs`): ``icl`` {n: {metric: (B,)}}, ``docs`` {metric: (D, L-1)},
    ``info`` (icl_eval's: impossible prompts, the kernel's Σ or why it was skipped), ``truth``
    (``alignment.Truth`` of the N-demo prompts, or None), ``seconds`` (what scoring took)."""

    icl: dict
    docs: dict
    info: dict
    truth: object
    seconds: dict


def score(prepared: WorldPrepared, outputs: WorldOutputs) -> Scored:
    """Exact Bayes, the oracle, the theory kernel and the label frequencies against the LM's
    outputs on one world (``icl_eval.prompt_metrics`` for every n, plus :data:`EXTRA_METRICS`),
    the document losses, and the ground truth of the inside analysis."""
    p, o = prepared, outputs
    world, prompts, g = p.spec.world, p.prompts, p.meta["concepts"]
    labels = world.labels
    t0 = time.perf_counter()
    curve = bayes.icl_curve(world, prompts)
    kopts = dict(icl_eval.KERNEL_OPTIONS, estimators=list(icl_eval.KERNEL_OPTIONS["estimators"]))
    info = {"impossible_prompts": {}, "kernel": {"options": kopts, "sigma": {}, "skipped": {}}}
    kest, seed = {}, p.meta.get("seed", 0)
    # one Σ fit for the ICL estimates and the inside analysis's ground truth
    ks = kernel.KernelSet(world, prompts.example_length, kopts["features"], kopts["n_samples"], kopts["ridge"], seed)
    if p.ns[-1] >= 1:
        kest = icl_eval.reference_estimates(world, prompts, seed, info, g, kopts, kernel_set=ks)
    else:
        info["kernel"]["skipped"][g] = "no n >= 1: the kernel estimate needs a demonstration"
    y = alignment.label_index(world)[prompts.y_test]                            # (B,) label classes
    icl, bad = {}, np.zeros(len(y), bool)
    for gi, n in enumerate(p.ns):
        lp = o.icl_logp[gi]                                                     # (B, V)
        q = capture.label_distribution(lp[:, labels])
        per = icl_eval.prompt_metrics(q, curve, n, y, labels, kest, kopts)
        pv = curve.predictive[:, n]                                             # (B, V)
        ok = np.isfinite(pv).all(-1)
        bad |= ~np.isfinite(restrict(pv, labels)).all(-1)
        qv = capture.label_distribution(lp)
        per["tv_bayes_symbols"] = np.where(ok, tv(np.where(ok[:, None], pv, 0.0), qv), np.nan)
        per["symbol_mass"] = np.exp(_logsumexp(lp))
        per["label_mass"] = np.exp(_logsumexp(lp[:, labels]))
        icl[n] = per
    info["impossible_prompts"][g] = int(bad.sum())
    t1 = time.perf_counter()
    D, L = p.doc_ids.shape[0], p.docs.tokens.size // p.doc_ids.shape[0]
    toks = p.docs.tokens.reshape(D, L)
    bl, known = bayes.document_loss(world, toks, p.docs.concepts)               # (D, L-1) each
    lm_sym = -(o.doc_logp - o.doc_sym_lse)
    docs = {"lm_loss": -o.doc_logp, "lm_loss_symbols": lm_sym, "bayes_loss": bl, "oracle_loss": known,
            "gap": lm_sym - bl, "symbol_mass": np.exp(o.doc_sym_lse)}
    t2 = time.perf_counter()
    truth = None
    if o.capture is not None:
        truth = alignment.ground_truth(world, prompts, kopts["features"], kopts["n_samples"], kopts["ridge"], seed,
                             kernel_set=ks, curve=curve)
    t3 = time.perf_counter()
    return Scored(icl, docs, info, truth,
                  {"icl": round(t1 - t0, 3), "documents": round(t2 - t1, 3), "truth": round(t3 - t2, 3)})


def _logsumexp(a):
    m = a.max(-1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(-1, keepdims=True)))[..., 0]


def _g(v) -> float:
    return float(f"{float(v):.6g}")


def icl_rows(worlds: list, group: str) -> list:
    """ICL_TABLE_COLUMNS rows pooled over worlds: [(ns, Scored)] -> per n and metric the mean
    and 95% CI (``metrics.world_ci``: over prompts for one world, over world means for more)."""
    rows = []
    ns = sorted(set().union(*[set(s.icl) for s in worlds]))
    for n in ns:
        present = [(i, s.icl[n]) for i, s in enumerate(worlds) if n in s.icl]
        metrics = [m for m in icl_eval.METRICS + EXTRA_METRICS if all(m in per for _, per in present)]
        for m in metrics:
            x = np.concatenate([per[m] for _, per in present])
            w = np.concatenate([np.full(per[m].size, i) for i, per in present])
            mean, lo, hi, cnt, nw = world_ci(x, w)
            rows.append({"n_demos": int(n), "concepts": group, "metric": m, "mean": _g(mean), "ci_low": _g(lo),
                         "ci_high": _g(hi), "n_prompts": int(cnt), "n_worlds": int(nw)})
    return rows


def document_rows(names: list, scored: list) -> list:
    """DOC_COLUMNS rows: per world and position (over documents), and 'all' (worlds pooled by
    ``metrics.world_ci``) when there are several worlds."""
    rows = []

    def add(world, m, mean, lo, hi, cnt, nw):
        rows.extend({"world": world, "position": t + 1, "metric": m, "mean": _g(mean[t]), "ci_low": _g(lo[t]),
                     "ci_high": _g(hi[t]), "n_docs": int(cnt[t]), "n_worlds": int(nw[t])} for t in range(mean.size))

    for name, s in zip(names, scored):
        for m in DOC_METRICS:
            mean, lo, hi, cnt = mean_ci(s.docs[m], axis=0)
            add(name, m, mean, lo, hi, cnt, np.ones(mean.size))
    if len(scored) > 1 and len({s.docs["gap"].shape[1] for s in scored}) == 1:
        for m in DOC_METRICS:
            x = np.concatenate([s.docs[m] for s in scored])
            w = np.concatenate([np.full(s.docs[m].shape[0], i) for i, s in enumerate(scored)])
            add("all", m, *world_ci(x, w))
    return rows


def world_rows(specs: list, scored: list, props: list) -> list:
    """WORLD_COLUMNS rows: each world's properties and its mean losses over documents and
    positions (gap: all positions; gap_late: the second half), CIs over documents."""
    rows = []
    for spec, s, pr in zip(specs, scored, props):
        d = s.docs
        half = (d["gap"].shape[1]) // 2
        gm, glo, ghi, n = mean_ci(d["gap"].mean(1))
        lm, llo, lhi, _ = mean_ci(d["gap"][:, half:].mean(1))
        rows.append(dict(pr, world=spec.name, bayes_loss=_g(d["bayes_loss"].mean()),
                         oracle_loss=_g(d["oracle_loss"].mean()), lm_loss=_g(d["lm_loss"].mean()),
                         lm_loss_symbols=_g(d["lm_loss_symbols"].mean()), gap=_g(gm), gap_lo=_g(glo), gap_hi=_g(ghi),
                         gap_late=_g(lm), gap_late_lo=_g(llo), gap_late_hi=_g(lhi), n_docs=int(n),
                         mixing_rate=_g(pr["mixing_rate"]), mixing_rate_max=_g(pr["mixing_rate_max"]),
                         entropy_rate=_g(pr["entropy_rate"])))
    return rows


# ---------------------------------------------------------------------- the result
@dataclass
class LlmWorldRun:
    """What :func:`run` and :func:`evaluate` return: ``icl`` rows (:data:`ICL_TABLE_COLUMNS`),
    ``documents`` rows (:data:`DOC_COLUMNS`), ``worlds`` rows (:data:`WORLD_COLUMNS`),
    ``inside`` (an ``alignment.MeasureRun`` of the capture, or None), ``info`` (per world: the
    impossible prompts, the kernel, the cache), ``meta`` (config, seed, versions, symbol maps,
    world summaries) and the figures' ``title``."""

    icl: list
    documents: list
    worlds: list
    inside: object
    info: dict
    meta: dict
    title: str

    def write(self, out) -> list:
        """Publish :data:`FILES` into ``out`` and, with a capture, the tables of ``simkernel
        measure`` into ``out/inside`` (one world: its files; several: one folder per world and
        the pooled tables).  Returns the paths written."""
        from .plots import plot_icl_vs_bayes
        from .plots.llm_world import plot_documents
        from .store import check_results_dir, publish, write_csv, write_json

        out = check_results_dir(Path(out))
        meta = dict(self.meta, config=dict(self.meta["config"], out=str(out)))
        writers = {FILES[0]: lambda p: write_csv(p, self.icl, ICL_TABLE_COLUMNS),
                   FILES[1]: lambda p: write_json(p, meta),
                   FILES[2]: lambda p: plot_icl_vs_bayes(self.icl, p, title=self.title),
                   FILES[3]: lambda p: write_csv(p, self.documents, DOC_COLUMNS),
                   FILES[4]: lambda p: write_csv(p, self.worlds, WORLD_COLUMNS),
                   FILES[5]: lambda p: plot_documents(self.documents, self.worlds, p, title=self.title)}
        written = publish(out, writers)
        if self.inside is not None:
            written += self.inside.write(out / INSIDE)
        return written

    def summary_lines(self) -> list:
        """The model, the worlds and their symbols, the ICL table (as ``simkernel icl-eval``
        prints it), the document losses per world, and the inside analysis (as ``simkernel
        measure`` prints it)."""
        m = self.meta
        model = m.get("model", {})
        lines = [f"model {model.get('id', m['config'].get('model'))}: {model.get('model_type', '?')}, "
                 f"{model.get('layers', '?')} layers x {model.get('heads', '?')} heads, {model.get('dtype', '?')}"]
        for name, w in m["worlds"].items():
            s = w["symbols"]["strings"]
            shown = " ".join(repr(x) for x in s[:6]) + (" ..." if len(s) > 6 else "")
            lines.append(f"world {name}: K {w['summary']['K']}, S {w['summary']['S']}, V {w['summary']['V']}; "
                         f"symbols {shown}; outputs {w['cache']}")
        cache = m.get("cache") if isinstance(m.get("cache"), dict) else {}
        for name, key, why in zip(m["worlds"], cache.get("keys", []), cache.get("damaged", [])):
            if why:
                lines.append(f"world {name}: the cache file {cache_path('', key).name} could not be read "
                             f"({why}): recomputed")
        any_world = next(iter(m["worlds"].values()))
        lines.append(f"prompts as text, e.g. {any_world['example_prompt']!r}")
        icl_info = {"skipped_n": [], "context": None, "kernel": {"skipped": self.info["kernel_skipped"]},
                    "impossible_prompts": self.info["impossible_prompts"]}
        lines += icl_eval.IclEvalRun(self.icl, icl_info, {"config": {"concepts": [m["config"]["concepts"]]}},
                                     self.title).summary_lines()
        extra = {(r["n_demos"], r["metric"]): f"{r['mean']:.3f}" for r in self.icl}
        lines.append("  n      TV over all symbols  mass on symbols  mass on labels")
        for n in sorted({r["n_demos"] for r in self.icl}):
            tv_symbols, symbol_mass, label_mass = (extra.get((n, m), "-") for m in EXTRA_METRICS)
            lines.append(f"  {n:>5}  {tv_symbols:>19}  {symbol_mass:>15}  {label_mass:>14}")
        lines.append("documents: mean log-loss per symbol (nats), LM renormalised over the symbol tokens; "
                     "gap = LM - exact Bayes, 95% CI over documents")
        lines.append(f"  {'world':<16} {'mixing':>6} {'entropy':>7} {'Bayes':>6} {'oracle':>6} {'LM':>6} "
                     f"{'gap [CI]':<22} {'late gap':>8}")
        for r in self.worlds:
            lines.append(f"  {r['world']:<16} {r['mixing_rate']:>6.3f} {r['entropy_rate']:>7.3f} "
                         f"{r['bayes_loss']:>6.3f} {r['oracle_loss']:>6.3f} {r['lm_loss_symbols']:>6.3f} "
                         f"{analysis.format_ci(r['gap'], r['gap_lo'], r['gap_hi']):<22} {r['gap_late']:>8.3f}")
        if self.inside is not None:
            lines.append("inside the model: attention heads against the exact ground truth (as simkernel measure)")
            lines += self.inside.summary_lines()
        return lines


def _inside_run(prepared: WorldPrepared, outputs: WorldOutputs, scored: Scored, how, n_select, n_report, seed):
    """alignment.RunMeasure of one world's capture (the rendered N-demo prompts)."""
    p = prepared
    t0 = time.perf_counter()
    result = alignment.analyse_measured(outputs.capture, p.inside, scored.truth, outputs.alone_logp, p.alone_inv,
                                        how=how, n_select=n_select, n_report=n_report, seed=seed)
    info = {"n_prompts": len(p.inside), "n_demos": p.ns[-1], "example_length": p.meta["example_length"],
            "concepts": p.meta["concepts"], "prompt_length": int(p.inside.input_ids.shape[1]),
            "theory_kernel": scored.truth.info}
    s = result.summary
    title = (f"{p.spec.name} as text ({s['layers']} layers x {s['heads']} heads), {len(p.inside)} prompts x "
             f"{p.ns[-1]} demos, k={p.meta['example_length']}, weight {how}")
    meta = provenance({"command": "llm-world inside", "world": p.spec.name, "weight": how, "n_select": n_select,
                       "n_report": n_report, "probe_layers": p.layers, "offsets": p.offsets.tolist()}, seed,
                      extra_packages=("torch", "transformers", "matplotlib"))
    meta.update(title=title, world=world_summary(p.spec.world), summary=s, info=info, best=result.best,
                elapsed_s=round(time.perf_counter() - t0, 3),
                tables={"heads.csv": list(analysis.HEAD_COLUMNS), "best.csv": list(analysis.BEST_COLUMNS),
                        "profile.csv": list(analysis.PROFILE_COLUMNS), "probes.csv": list(analysis.PROBE_COLUMNS),
                        "references.csv": list(analysis.REFERENCE_COLUMNS)})
    return alignment.RunMeasure(p.spec.name, Path(p.spec.name), result, info, meta, title)


def assemble(preps: list, outs: list, config: dict, seed: int, *, how="max", n_select=N_SELECT, n_report=N_REPORT,
             cache: list | None = None, model_meta: dict | None = None, progress=None) -> LlmWorldRun:
    """Score every world (:func:`score`), pool them and build the :class:`LlmWorldRun`."""
    tick = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    scored = []
    for p, o in zip(preps, outs):
        tick(f"{p.spec.name}: exact Bayes, kernel, documents")
        scored.append(score(p, o))
    group = preps[0].meta["concepts"]
    icl = icl_rows(scored, group)
    names = [p.spec.name for p in preps]
    docs = document_rows(names, scored)
    props = world_properties([p.spec for p in preps], losses=[s.docs["oracle_loss"] for s in scored])
    worlds = world_rows([p.spec for p in preps], scored, props)
    inside = None
    if all(o.capture is not None for o in outs):
        tick("inside the model: analysis")
        runs = [_inside_run(p, o, s, how, n_select, n_report, seed) for p, o, s in zip(preps, outs, scored)]
        pooled, summary = alignment.pool(runs)
        if len(runs) == 1:
            runs[0].meta["pooled"] = summary
            inside = alignment.MeasureRun(runs, pooled, summary, runs[0].meta, runs[0].title)
        else:
            m = provenance({"command": "llm-world inside", "worlds": names}, seed,
                           extra_packages=("torch", "transformers"))
            title = f"{len(runs)} worlds as text, pooled (worlds as the unit)"
            m.update(title=title, summary=summary,
                     runs={r.name: {"summary": r.result.summary, "best": r.result.best} for r in runs},
                     tables={"references.csv": list(alignment.RUN_REFERENCE_COLUMNS),
                             "pooled.csv": list(alignment.POOLED_COLUMNS)})
            inside = alignment.MeasureRun(runs, pooled, summary, m, title)
    model_meta = model_meta or outs[0].meta.get("model", {})
    info = {"kernel_skipped": {f"{p.spec.name}": why for p, s in zip(preps, scored)
                               for why in s.info["kernel"]["skipped"].values()},
            "impossible_prompts": {p.spec.name: s.info["impossible_prompts"][group] for p, s in zip(preps, scored)},
            "seconds": {p.spec.name: {"model": o.meta.get("seconds"), "scoring": s.seconds}
                        for p, o, s in zip(preps, outs, scored)}}
    meta = provenance(config, seed, extra_packages=("matplotlib", "torch", "transformers", "tokenizers"))
    title = (f"{model_meta.get('id', config.get('model'))} on {', '.join(names)}: "
             f"{preps[0].meta['n_prompts']} prompts, k={preps[0].meta['example_length']}, seed {seed}")
    meta.update(
        title=title, model=model_meta,
        worlds={p.spec.name: {"record": p.spec.record, "summary": world_summary(p.spec.world),
                              "symbols": p.smap.to_dict(), "example_prompt": p.meta["example_prompt"],
                              "prompt_tokens": p.meta["prompt_tokens"], "kernel": s.info["kernel"],
                              "impossible_prompts": s.info["impossible_prompts"],
                              "cache": (cache[i] if cache else "not cached"),
                              "outputs": {k: v for k, v in o.meta.items() if k not in ("symbols", "model")}}
                for i, (p, o, s) in enumerate(zip(preps, outs, scored))},
        columns={"icl_vs_bayes.csv": list(ICL_TABLE_COLUMNS), "documents.csv": list(DOC_COLUMNS),
                 "worlds.csv": list(WORLD_COLUMNS)},
        metrics=METRIC_DESCRIPTIONS, seconds=info["seconds"],
        inside_summary=None if inside is None else inside.summary, elapsed_s=round(time.perf_counter() - t0, 3))
    return LlmWorldRun(icl, docs, worlds, inside, info, meta, title)


# ---------------------------------------------------------------------- entry points
def evaluate(model, tokenizer, worlds, *, n_demos=DEFAULT_N_DEMOS, n_prompts: int = DEFAULT_N_PROMPTS,
             example_length: int = DEFAULT_EXAMPLE_LENGTH, concepts="prior", n_docs: int = DEFAULT_N_DOCS,
             doc_length: int = DEFAULT_DOC_LENGTH, seed: int = 0, symbols=None, inside: bool = True,
             probe_layers="auto", weight: str = "max", n_select: int = N_SELECT, n_report: int = N_REPORT,
             batch_size: int = LLM_BATCH_SIZE, progress=None) -> LlmWorldRun:
    """The whole measurement of a loaded ``model`` (anything whose ``forward(input_ids=...,
    attention_mask=..., position_ids=..., logits_to_keep=...)`` returns ``.logits``; the
    capture needs a transformers model) and its ``tokenizer`` on ``worlds`` (World objects or
    :class:`WorldSpec`), nothing cached.  ``symbols``: V strings instead of the automatic ones."""
    specs = [w if isinstance(w, WorldSpec) else WorldSpec(f"world-{i}", w, {"digest": world_digest(w)})
             for i, w in enumerate(worlds if isinstance(worlds, (list, tuple)) else [worlds])]
    cfg = getattr(model, "config", None)
    cfg = cfg if hasattr(cfg, "num_hidden_layers") else None
    kw = dict(n_demos=n_demos, n_prompts=n_prompts, example_length=example_length, concepts=concepts, n_docs=n_docs,
              doc_length=doc_length, seed=seed, inside=inside, config=cfg, probe_layers=probe_layers)
    preps = [prepare_world(choose_symbols(tokenizer, s.world, symbols), s, **kw) for s in specs]
    for p in preps:
        p.meta["seed"] = int(seed)
    outs = [execute_world(model, p, batch_size, progress) for p in preps]
    config = {"command": "llm-world", "model": type(model).__name__, **{k: v for k, v in kw.items() if k != "config"},
              "n_demos": preps[0].ns, "symbols": symbols, "weight": weight, "n_select": n_select,
              "n_report": n_report, "batch_size": batch_size}
    mm = {"id": type(model).__name__}
    if cfg is not None:
        mm.update(model_type=cfg.model_type, layers=int(cfg.num_hidden_layers), heads=int(cfg.num_attention_heads))
    return assemble(preps, outs, config, seed, how=weight, n_select=n_select, n_report=n_report, model_meta=mm,
                    progress=progress)


def data_identity(spec: WorldSpec, *, ns, example_length, concepts, n_docs, doc_length, symbols, inside) -> dict:
    """What besides the model and the seed changes one world's outputs (a ``cache.cache_key`` input)."""
    return {"kind": "world", "version": WORLD_CACHE_VERSION, "world": spec.record, "n_demos": list(ns),
            "example_length": int(example_length), "concepts": str(concepts), "n_docs": int(n_docs),
            "doc_length": int(doc_length), "symbols": None if symbols is None else list(symbols),
            "inside": bool(inside)}


def run(model_name: str, *, preset: str | None = None, world_seeds=(0,), overrides: dict | None = None,
        world_file=None, n_demos=DEFAULT_N_DEMOS, n_prompts: int = DEFAULT_N_PROMPTS,
        example_length: int = DEFAULT_EXAMPLE_LENGTH, concepts="prior", n_docs: int = DEFAULT_N_DOCS,
        doc_length: int = DEFAULT_DOC_LENGTH, seed: int = 0, symbols=None, inside: bool = True,
        probe_layers="auto", weight: str = "max", n_select: int = N_SELECT, n_report: int = N_REPORT,
        revision: str | None = None, dtype: str = "auto", device: str = "auto", batch_size: int = LLM_BATCH_SIZE,
        cache_dir=None, progress=None) -> LlmWorldRun:
    """``simkernel llm --world FILE | --preset NAME`` as a library call: the worlds
    (:func:`load_worlds`), then for each world the model's outputs from ``cache_dir/outputs-<key>.npz``
    (``cache.cache_key``; None: no cache) or computed; then :func:`assemble`.  A cache file that
    cannot be read is recomputed like a missing one and replaced; ``meta["cache"]["damaged"]``
    holds, per world, None or why its file could not be read, and :meth:`LlmWorldRun.summary_lines`
    says so.

    Every world's prompts and documents are rendered, and every bad argument raised (unknown
    n, a prompt or document longer than the context, a world with more symbols than the
    tokenizer has one-token strings for, labels it cannot separate, a model folder without a
    tokenizer), from the tokenizer and config before any weights load and before anything is
    written.  Writes only the cache; :meth:`LlmWorldRun.write` writes the results."""
    ns = check_grid(n_demos)
    specs = load_worlds(preset, world_seeds, overrides, world_file)
    check_int("batch_size", batch_size, 1)
    check_choice("weight", weight, ("max", "label", "mean"))
    tick = progress or (lambda _msg: None)
    where = hf.resolve_model(model_name)
    dt = hf.planned_dtype(dtype, device)
    ident = hf.model_identity(where, revision)
    kw = dict(n_demos=ns, n_prompts=n_prompts, example_length=example_length, concepts=concepts, n_docs=n_docs,
              doc_length=doc_length, seed=seed, inside=inside, probe_layers=probe_layers)
    keys = [cache_key(ident, data_identity(s, ns=ns, example_length=example_length, concepts=concepts,
                                           n_docs=n_docs, doc_length=doc_length, symbols=symbols, inside=inside),
                      n_demos=ns[-1], mode="world", seed=seed, n_examples=n_prompts, dtype=dt,
                      probe_layers=probe_layers if inside else "none", offsets=probe_offsets(example_length))
            for s in specs]
    paths = [cache_path(cache_dir, k) for k in keys] if cache_dir is not None else [None] * len(specs)
    # a cache file that cannot be read is a miss: recomputed below and replaced, and said so
    reads = [read_cache(p, load_world_outputs) if p is not None else (None, None) for p in paths]
    outs, damaged = [o for o, _ in reads], [why for _, why in reads]
    preps = [None] * len(specs)
    tok = config = None
    if any(o is None for o in outs):
        tick("tokenizer and config")
        config = hf.load_config(model_name, revision)
        tok = hf.load_tokenizer(model_name, revision)
    for i, (s, o) in enumerate(zip(specs, outs)):
        smap = choose_symbols(tok, s.world, symbols) if o is None else SymbolMap.from_dict(o.meta["symbols"])
        preps[i] = prepare_world(smap, s, config=config if o is None else None, **kw)
        if o is not None:
            preps[i].layers = list(o.meta.get("probe_layers", []))
        preps[i].meta["seed"] = int(seed)
    todo = [i for i, o in enumerate(outs) if o is None]
    if todo:
        for i, o in zip(todo, _compute(model_name, revision, where, dt, device, tok, config, [preps[i] for i in todo],
                                       [paths[i] for i in todo], batch_size, cache_dir, tick)):
            outs[i] = o
    cache = [("read from the cache" if i not in todo else "recomputed" if damaged[i] else "computed")
             + ("" if p is None else f" ({p.name})") for i, p in enumerate(paths)]
    config_rec = {"command": "llm-world", "model": model_name, "revision": revision, "preset": preset,
                  "world_seeds": [int(x) for x in world_seeds], "overrides": dict(overrides or {}),
                  "world_file": None if world_file is None else str(world_file), "n_demos": ns,
                  "n_prompts": n_prompts, "example_length": example_length, "concepts": str(concepts),
                  "n_docs": n_docs, "doc_length": doc_length, "symbols": symbols, "inside": inside,
                  "probe_layers": probe_layers, "weight": weight, "n_select": n_select, "n_report": n_report,
                  "dtype": dtype, "device": device, "batch_size": batch_size,
                  "cache_dir": None if cache_dir is None else str(cache_dir)}
    res = assemble(preps, outs, config_rec, seed, how=weight, n_select=n_select, n_report=n_report, cache=cache,
                   model_meta=outs[0].meta.get("model"), progress=progress)
    res.meta["cache"] = {"keys": keys, "hits": [i not in todo for i in range(len(specs))], "model_loaded": bool(todo),
                         "damaged": damaged}
    return res


def _compute(model_name, revision, where, dt, device, tok, config, preps, paths, batch_size, cache_dir, tick):
    """Load the weights once, run every prepared world, cache each world's outputs."""
    outs, lock = [], contextlib.nullcontext()
    if cache_dir is not None:
        Path(cache_dir).parent.mkdir(parents=True, exist_ok=True)
        lock = folder_lock(cache_dir, "llm-world output", beside=True)
    with lock:
        tick(f"loading {where['id']}")
        pb = sum(len(p.layers) * capture.probe_layer_bytes(config, len(p.prompts.y_test), p.ns[-1], p.offsets.size)
                 for p in preps)
        w = dict(batch_size=batch_size, tokens=max(len(p.doc_ids[0]) for p in preps), full_logits=True, probe_bytes=pb)
        model, _ = hf.load_model(model_name, revision, dt, device, tokenizer=tok, config=config, workload=w, report=tick)
        model_meta = hf.model_record(model, model_name, revision, dt)
        for p, path in zip(preps, paths):
            o = execute_world(model, p, batch_size, tick)
            o.meta["model"] = model_meta
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                save_world_outputs(path, o)
            outs.append(o)
        del model
    return outs


def world_default_out(model_name: str, preset: str | None = None, world_file=None) -> Path:
    """runs/llm-world/<model>-<preset or world file stem>."""
    what = Path(str(world_file)).stem if world_file is not None else (preset or "paper-c")
    return Path("runs") / "llm-world" / f"{hf.slug(model_name)}-{hf.slug(what)}"
