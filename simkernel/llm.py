"""Real language models: load a Hugging Face causal LM, build prompts over a text task, measure.

The paper's §5 protocol (Han et al.; ``THEORY.md`` §7) on any open causal LM, with the
measurement code validated on the simulator (``capture``, ``analysis``) and the prompts of
``textdata``:

1. ``n_demos`` demonstrations per test example (``textdata.sample_demos``: random, balanced
   or similar; per-example seeds), one prompt per test example, left-padded into a
   :class:`prompts.PromptBatch`.
2. Standalone predictions P(o | x) for every text that appears (each demonstration's pool
   text and each test input run alone, zero demonstrations; each pool index once).
3. One capture pass (``capture.capture``): the final row's attention in every layer and head,
   the label log-probabilities and, for the probed layers, keys and values at label
   position + (-1..3).
4. ``analysis.analyse`` with the prediction-similarity kernel P(o|x_test)ᵀP(o|x_i), then ridge
   probes (keys -> the demonstration's standalone prediction, values -> y_i) per probed layer.

Steps 1-3 are the model's work and are cached (:func:`save_outputs`) in the run folder as
``outputs-<hash>.npz``, the hash over everything that changes them (:func:`cache_key`), so
re-analysing with another weight, split or split seed never reruns the model.  The cache
stores the attention, keys and values in float16, and :func:`execute` rounds them to float16
before anything is analysed, so a first run and a cached rerun analyse the same numbers and
give identical tables.  A cache file that cannot be read (the zip's CRC-32 of every member
catches a changed byte) counts as missing: it is recomputed and replaced, and the run says so
(:func:`read_cache`).  :func:`run` builds every prompt from the tokenizer and the model's
config before it loads the weights, so a bad prompt or option fails in seconds.

Defaults and why:

- ``n_demos = textdata.DEFAULT_N_DEMOS`` (8): SST-2 prompts then take about 280 GPT-J tokens
  on average and under about 700 at most, far inside GPT-J's 2048-token context.
- ``batch_size = 8``: 8 SST-2 prompts of GPT-J-6B in bf16 need an estimated few hundred MiB
  of activations beside the 12 GiB of weights (only the last position's logits are kept;
  not measured on a GPU here), and prompts are sorted by length, so a batch carries little
  padding.
- probe layers ``"auto"``: every layer when the keys and values of all of them (float32,
  B x n x 5 offsets x Hkv x d x 2 arrays per layer, :func:`probe_layer_bytes`) fit in
  ``PROBE_BUDGET`` bytes, which holds for small models; otherwise as many evenly spaced interior
  layers as fit (GPT-J-6B, 872-1000 SST-2 examples x 8 demonstrations: 1.1-1.2 GiB a layer,
  so layers 7, 14 and 20).  The process peaks at about 1.5x the arrays: one array is copied
  while the examples are put back in order, :func:`save_outputs` holds float16 copies of both,
  and ``analysis.probe_accuracy`` copies the selection and report rows of one array.
  ``--probe-layers 16..21`` probes the paper's good layers; ``none`` skips the probes.

torch and transformers are imported inside the functions that need them; without
transformers they raise a one-line ValueError naming the extra to install.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import analysis, capture, textdata
from .constants import LLM_BATCH_SIZE, LLM_DTYPE_ALIASES, LLM_DTYPES, LLM_N_EXAMPLES
from .device import resolve_device
from .prompts import PromptBatch, collate
from .store import folder_lock, provenance, sha256_file

#: short names -> Hugging Face hub ids
MODEL_ALIASES = {
    "gpt-j-6b": "EleutherAI/gpt-j-6b",
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "pythia-160m": "EleutherAI/pythia-160m",
    "pythia-410m": "EleutherAI/pythia-410m",
    "pythia-1.4b": "EleutherAI/pythia-1.4b",
    "pythia-6.9b": "EleutherAI/pythia-6.9b",
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "llama-3-8b": "meta-llama/Meta-Llama-3-8B",
}

DTYPES = LLM_DTYPES
DTYPE_ALIASES = LLM_DTYPE_ALIASES
DEFAULT_BATCH_SIZE = LLM_BATCH_SIZE
DEFAULT_N_EXAMPLES = LLM_N_EXAMPLES
#: bytes of float32 keys + values held in memory for the probes under ``probe_layers="auto"``
#: (the process peaks at about 1.5x this; see the module docstring)
PROBE_BUDGET = 4 << 30
#: bump when the prompt building or the cached arrays change meaning
CACHE_VERSION = 2
_INSTALL = "pip install 'simkernel[llm]'"

#: the paper's Table 2 (GPT-J-6B; best head chosen on 700 examples, reported on 300)
PAPER_TABLE2 = {
    "sst2": {"icl_accuracy": 0.805, "agreement": 0.797},
    "mnli": {"icl_accuracy": 0.383, "agreement": 0.597},
    "rotten_tomatoes": {"icl_accuracy": 0.671, "agreement": 0.683},
    "tweet_eval_hate": {"icl_accuracy": 0.539, "agreement": 0.713},
    "tweet_eval_irony": {"icl_accuracy": 0.519, "agreement": 0.722},
    "tweet_eval_offensive": {"icl_accuracy": 0.542, "agreement": 0.753},
}


# ---------------------------------------------------------------------- models
def resolve_model(name: str) -> dict:
    """Where ``name`` points: ``{"name", "id", "local"}``.

    An existing folder is used as it is (``local`` True, ``id`` its absolute path); an alias
    of ``MODEL_ALIASES`` becomes its hub id; anything else that looks like a hub id
    (``org/name`` or a bare name) is taken as one.  A path that does not exist (it starts
    with ``.``, ``/`` or ``~``, or has more than one ``/``) is a one-line ValueError."""
    name = str(name).strip()
    if not name:
        raise ValueError("--model is empty; give an alias (" + ", ".join(MODEL_ALIASES) + "), a hub id or a folder")
    path = Path(name).expanduser()
    if path.is_dir():
        return {"name": name, "id": str(path.resolve()), "local": True}
    if name in MODEL_ALIASES:
        return {"name": name, "id": MODEL_ALIASES[name], "local": False}
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or path.exists():
        why = "is not a folder" if path.exists() else "does not exist"
        raise ValueError(f"model folder {name!r} {why}; give a folder made by save_pretrained, a hub id "
                         f"or an alias ({', '.join(MODEL_ALIASES)})")
    return {"name": name, "id": name, "local": False}


#: Hub repositories whose default branch is not the one to download: GPT-J-6B's main holds float32
#: weights (24 GiB); its float16 branch (12 GiB) is what the README runs.
RECOMMENDED_REVISIONS = {"EleutherAI/gpt-j-6b": "float16"}


def _download_hint(repo: str, revision: str | None) -> str:
    advice = ""
    if revision is None and repo in RECOMMENDED_REVISIONS:
        revision = RECOMMENDED_REVISIONS[repo]
        advice = f" and run with --revision {revision}"
    rev = f" --revision {revision}" if revision else ""
    rev_py = f", revision={revision!r}" if revision else ""
    return (f"download it on a machine with network (`hf download {repo}{rev}`, or `python -c \"from transformers "
            f"import AutoModelForCausalLM, AutoTokenizer; AutoTokenizer.from_pretrained({repo!r}{rev_py}); "
            f"AutoModelForCausalLM.from_pretrained({repo!r}{rev_py})\"`), then set HF_HOME to that cache{advice} "
            f"or pass --model the folder from `hf download {repo}{rev} --local-dir DIR`")


#: huggingface_hub errors that mean "not downloaded / not reachable / no such repo or file"
_MISSING_ERRORS = ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "EntryNotFoundError",
                   "RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError")
_MISSING_WORDS = ("couldn't connect", "could not connect", "offline", "outgoing traffic has been disabled",
                  "cannot find the requested files", "not a valid model identifier",
                  "does not appear to have a file named", "repository not found", "connection", "timed out")


def _is_missing(err: Exception) -> bool:
    """True when ``err`` (or an error it was raised from) says the files are not downloaded or
    cannot be reached: huggingface_hub's not-found and offline errors, a connection error, or
    transformers' wording of them."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        names = {c.__name__ for c in type(err).__mro__}
        if names & set(_MISSING_ERRORS) or any("Connect" in n or "Timeout" in n for n in names):
            return True
        if any(w in str(err).lower() for w in _MISSING_WORDS):
            return True
        err = err.__cause__ or err.__context__
    return False


def _unavailable(where: dict, revision, err: Exception) -> ValueError:
    """The one-line error for a model that cannot be loaded: the download hint when the files
    are missing or unreachable, else the error's first line."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if where["local"]:
        return ValueError(f"cannot load the model in folder {where['id']!r}: {first}")
    rev = f" (revision {revision})" if revision else ""
    if not _is_missing(err):
        return ValueError(f"cannot load model {where['id']!r}{rev}: {type(err).__name__}: {first}")
    return ValueError(f"model {where['id']!r}{rev} is not available offline ({type(err).__name__}); "
                      f"{_download_hint(where['id'], revision)}")


def _require(module: str):
    """Import ``module`` (transformers or huggingface_hub); a one-line ValueError when missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"simkernel llm needs the {module.split('.')[0]} package: {_INSTALL}") from None


def hub_commit(repo: str, revision: str | None = None) -> str | None:
    """The commit the local hub cache holds for ``repo`` at ``revision`` (a branch, tag or
    commit; default main), or None when it holds none.  Reads the cache only."""
    HF_HUB_CACHE = _require("huggingface_hub.constants").HF_HUB_CACHE
    rev = revision or "main"
    folder = Path(HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))
    if len(rev) == 40 and (folder / "snapshots" / rev).is_dir():
        return rev
    ref = folder / "refs" / rev
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


def model_identity(where: dict, revision: str | None = None) -> dict:
    """What identifies the weights without loading them: for a folder its path and the
    (name, size, mtime) of its files; for a hub id the id, revision and cached commit."""
    if where["local"]:
        folder = Path(where["id"])
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
        return {"folder": str(folder), "files": files}
    return {"hub_id": where["id"], "revision": revision, "commit": hub_commit(where["id"], revision)}


def planned_dtype(dtype: str = "auto", device: str = "auto", device_map: str | None = None) -> str:
    """The dtype the weights will be loaded in, without checking that the device exists (a
    cache hit needs no device): ``auto`` is bfloat16 when ``device_map`` is given, when
    ``device`` is ``cuda[:N]``, or when it is ``auto`` and a GPU is visible; float32 otherwise.
    This resolved dtype, not ``auto``, enters :func:`cache_key`."""
    dev = str(device).strip().lower()
    if device_map is not None:
        dev = "cuda"
    elif dev == "auto" and DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower()) == "auto":
        import torch

        dev = "cuda" if torch.cuda.is_available() else "cpu"
    return resolve_dtype(dtype, dev)


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` -> bfloat16 on CUDA, float32 elsewhere; bf16/fp16/fp32 are accepted aliases."""
    dtype = DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)} (or bf16, fp16, fp32)")
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return dtype


def load_tokenizer(name: str, revision: str | None = None):
    """The model's tokenizer with left padding and a pad token (EOS when it has none)."""
    AutoTokenizer = _require("transformers").AutoTokenizer
    where = resolve_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(where["id"], revision=revision)
    except (OSError, ValueError) as e:
        raise _unavailable(where, revision, e) from None
    # transformers builds an empty tokenizer (only its special tokens) for a folder without
    # tokenizer files, and every label word would then "tokenize to nothing"
    if len(tok) <= len(set(tok.all_special_tokens)):
        where_ = f"folder {where['id']!r}" if where["local"] else f"model {where['id']!r}"
        raise ValueError(f"{where_} has no tokenizer (no tokenizer.json or vocabulary files); save one beside "
                         f"the model with tokenizer.save_pretrained(folder)")
    tok.padding_side = "left"
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_config(name: str, revision: str | None = None):
    """The model's ``AutoConfig`` (layers, heads, context) without its weights."""
    AutoConfig = _require("transformers").AutoConfig
    where = resolve_model(name)
    try:
        return AutoConfig.from_pretrained(where["id"], revision=revision)
    except (OSError, ValueError) as e:
        raise _unavailable(where, revision, e) from None


def load_model(name: str, revision: str | None = None, dtype: str = "auto", device: str = "auto",
               device_map: str | None = None, *, tokenizer=None, config=None):
    """(model, tokenizer) from an alias, hub id or local folder, in eval mode.

    The model keeps transformers' default attention (sdpa); ``capture.capture`` switches to
    its recording implementation and back.  ``dtype`` auto is bfloat16 on CUDA and float32 on
    CPU.  ``device_map`` (e.g. ``"auto"``) spreads the layers over every visible GPU through
    accelerate instead of moving the model to ``device``.  Weights that are neither in a
    folder nor in the local hub cache (and cannot be downloaded) give a one-line ValueError
    with the command that downloads them.  ``tokenizer`` and ``config``, when the caller has
    loaded them already (:func:`load_tokenizer`, :func:`load_config`), are not loaded again."""
    AutoModelForCausalLM = _require("transformers").AutoModelForCausalLM
    import torch

    where = resolve_model(name)
    if config is None:
        config = load_config(name, revision)                  # fails fast, before the weights
    tok = tokenizer if tokenizer is not None else load_tokenizer(name, revision)
    dev = resolve_device("cuda" if device_map is not None and device == "auto" else device)
    dt = resolve_dtype(dtype, dev)
    kw = {"revision": revision, "dtype": getattr(torch, dt), "config": config}
    if device_map is not None:
        from importlib.util import find_spec

        if find_spec("accelerate") is None:
            raise ValueError("--device-map needs the accelerate package: pip install 'simkernel[llm]'")
        kw["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(where["id"], **kw)
    except (OSError, ValueError) as e:
        raise _unavailable(where, revision, e) from None
    if device_map is None:
        model.to(dev)
    model.eval()
    return model, tok


def context_length(config) -> int | None:
    """The longest prompt the model's position embeddings allow (None when unbounded)."""
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        v = getattr(config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


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
    return collate(examples, textdata.label_tokens(tokenizer, dataset), _pad_id(tokenizer)), demo_ids


def _standalone_examples(tokenizer, dataset, ids, max_text_tokens):
    return [textdata.build_example(tokenizer, dataset, int(i), [], max_text_tokens=max_text_tokens) for i in ids]


def standalone_batch(tokenizer, dataset, ids, *, max_text_tokens: int | None = None) -> PromptBatch:
    """The zero-demonstration prompts ("Input: <text> Output:") of ``dataset``'s rows ``ids``."""
    return collate(_standalone_examples(tokenizer, dataset, ids, max_text_tokens),
                   textdata.label_tokens(tokenizer, dataset), _pad_id(tokenizer))


def _pad_id(tokenizer) -> int:
    for v in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if v is not None:
            return int(v)
    return 0


# ---------------------------------------------------------------------- the model's work
@dataclass
class Outputs:
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


def probe_layer_bytes(config, n_examples: int, n_demos: int, n_offsets: int = len(analysis.PROBE_OFFSETS)) -> int:
    """Bytes of the float32 keys and values one probed layer holds for ``n_examples`` prompts
    of ``n_demos`` demonstrations: B x n x O x Hkv x d x 4 bytes x 2 arrays (``config``: the
    model's, for the kv heads Hkv and the head size d)."""
    H = int(config.num_attention_heads)
    hkv = int(getattr(config, "num_key_value_heads", None) or H)
    d = int(getattr(config, "head_dim", None) or config.hidden_size // H)
    return int(n_examples) * int(n_demos) * int(n_offsets) * hkv * d * 4 * 2


def probe_layer_list(spec, n_layers: int, per_layer_bytes: int) -> list[int]:
    """The layers whose keys and values are kept.  ``spec``: ``"auto"`` (all when they fit
    ``PROBE_BUDGET``, else that many evenly spaced interior layers, at least one), ``"all"``,
    ``"none"``, or a list of layer indices."""
    if isinstance(spec, str):
        if spec == "none":
            return []
        if spec == "all":
            return list(range(n_layers))
        if spec != "auto":
            raise ValueError(f"unknown probe layers {spec!r}; allowed: auto, all, none or layer indices")
        k = int(max(1, min(n_layers, PROBE_BUDGET // max(per_layer_bytes, 1))))
        if k >= n_layers:
            return list(range(n_layers))
        return sorted({int(round(x)) for x in np.linspace(0, n_layers - 1, k + 2)[1:-1]})
    layers = sorted({int(x) for x in spec})
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise ValueError(f"probe layer {bad[0]} does not exist; the model has layers 0..{n_layers - 1}")
    return layers


def length_order(batch: PromptBatch) -> np.ndarray:
    """(B,) the prompts longest first: an out-of-memory batch shows at once, and prompts of
    similar length share a batch, so little padding is computed."""
    return np.argsort(-batch.attention_mask.sum(1), kind="stable")


def _reordered(fn, batch: PromptBatch):
    """(fn(batch sorted by length), inv): ``result[inv]`` puts per-example results back in
    ``batch``'s order."""
    order = length_order(batch)
    res = fn(batch.subset(order))
    inv = np.empty_like(order)
    inv[order] = np.arange(order.size)
    return res, inv


def standalone_logp(model, batch: PromptBatch, batch_size: int, progress=None) -> np.ndarray:
    """(B, C) label log-probabilities of zero-demonstration prompts (``capture.forward_labels``)."""
    out, inv = _reordered(lambda b: capture.forward_labels(model, b, batch_size, progress), batch)
    return out[inv]


@dataclass
class Prepared:
    """The model-free half of :func:`compute` (:func:`prepare`): everything tokenized.

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


def prepare(tokenizer, config, dataset, n_demos: int = textdata.DEFAULT_N_DEMOS, mode: str = "random",
            seed: int = 0, n_examples: int = DEFAULT_N_EXAMPLES, *, pool=None, test_ids=None, probe_layers="auto",
            offsets=analysis.PROBE_OFFSETS, max_text_tokens: int | None = None) -> Prepared:
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
                                  max_text_tokens=max_text_tokens, max_length=context_length(config))
    p = prepare_batch(tokenizer, config, dataset, batch, test_ids, demo_ids, pool=pool, probe_layers=probe_layers,
                      offsets=offsets, max_text_tokens=max_text_tokens)
    p.meta.update(mode=mode, seed=int(seed), seconds={"prompts": round(time.perf_counter() - t0, 3)})
    return p


def prepare_batch(tokenizer, config, dataset, batch: PromptBatch, test_ids, demo_ids, *, pool=None,
                  probe_layers="auto", offsets=analysis.PROBE_OFFSETS,
                  max_text_tokens: int | None = None) -> Prepared:
    """:func:`prepare` for prompts already built (``batch`` with its ``test_ids`` (B,) and
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
    alone = collate(examples, batch.label_tokens, _pad_id(tokenizer))
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
    n_demos = demo_ids.shape[1]
    layers = probe_layer_list(probe_layers, int(config.num_hidden_layers),
                              probe_layer_bytes(config, len(test_ids), n_demos, offsets.size))
    lengths = batch.attention_mask.sum(1)
    meta = {"n_examples": int(len(test_ids)), "n_demos": int(n_demos), "context": context_length(config),
            "prompt_tokens": {"mean": float(lengths.mean()), "max": int(lengths.max()), "min": int(lengths.min())},
            "standalone_texts": int(len(alone)), "probe_layers": layers, "offsets": offsets.tolist(),
            "label_words": list(dataset.label_words), "label_tokens": batch.label_tokens.tolist(),
            "label_pieces": [tokenizer.decode([int(t)]) for t in batch.label_tokens],
            "dataset": {"name": dataset.name, "source": dataset.source, "rows": len(dataset),
                        "pool": None if same else {"name": pool.name, "source": pool.source, "rows": len(pool)}}}
    return Prepared(batch, test_ids, demo_ids, pool_ids, test_unique, alone, layers, offsets, meta)


def _in_order_half(a: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """``a[inv]`` with every value rounded to float16 (the cache's precision), kept float32;
    rounded in chunks of rows, so the reorder's copy is the only full copy."""
    out = a[inv]
    step = max(1, (64 << 20) // max(out[:1].nbytes, 1))
    for i in range(0, len(out), step):
        out[i:i + step] = out[i:i + step].astype(np.float16)
    return out


def _devices(model) -> str:
    """Where the weights are: ``cpu``, ``cuda:0``, or a comma list when they are spread."""
    return ",".join(sorted({str(p.device) for p in model.parameters()})) or "cpu"


def execute(model, prepared: Prepared, batch_size: int = DEFAULT_BATCH_SIZE, *, bar=None) -> Outputs:
    """Steps 2-3 of the module docstring on ``model``: run every text of ``prepared.alone``
    once, then capture the prompts.  The captured attention, keys and values are rounded to
    float16, the precision of the cache.  ``meta`` records the device, dtype and batch size.

    ``bar(desc, total)``: optional factory of progress bars (context managers with
    ``update(n)``)."""
    p = prepared
    bar = bar or _no_bar
    t1 = time.perf_counter()
    with bar("texts alone", len(p.alone)) as b:
        logp = standalone_logp(model, p.alone, batch_size, b.update)
    n_pool = p.pool_ids.size
    pool_logp = logp[:n_pool]
    if p.test_unique is None:
        test_logp = pool_logp[np.searchsorted(p.pool_ids, p.test_ids)]
    else:
        test_logp = logp[n_pool:][np.searchsorted(p.test_unique, p.test_ids)]
    t2 = time.perf_counter()
    layers = p.layers
    with bar("capture", len(p.test_ids)) as b:
        cap, inv = _reordered(lambda bb: capture.capture(model, bb, offsets=p.offsets if layers else None,
                                                         batch_size=batch_size, layers=layers or None,
                                                         progress=b.update), p.batch)
    t3 = time.perf_counter()
    # one array at a time, dropping each sorted original once it is reordered (memory)
    attn, cap.attn = _in_order_half(cap.attn, inv), None
    keys, cap.keys = (None if cap.keys is None else _in_order_half(cap.keys, inv)), None
    values, cap.values = (None if cap.values is None else _in_order_half(cap.values, inv)), None
    cap = capture.Capture(attn, cap.label_logp[inv], keys, values, cap.offsets, cap.layers)
    param = next(model.parameters())
    meta = dict(p.meta, device=_devices(model), dtype=str(param.dtype).removeprefix("torch."),
                batch_size=int(batch_size))
    meta["seconds"] = dict(p.meta.get("seconds", {}), standalone=round(t2 - t1, 3), capture=round(t3 - t2, 3))
    return Outputs(p.batch, cap, p.test_ids, p.demo_ids, test_logp, p.pool_ids, pool_logp, meta)


def compute(model, tokenizer, dataset, n_demos: int = textdata.DEFAULT_N_DEMOS, mode: str = "random",
            seed: int = 0, n_examples: int = DEFAULT_N_EXAMPLES, batch_size: int = DEFAULT_BATCH_SIZE, *, pool=None,
            test_ids=None, probe_layers="auto", offsets=analysis.PROBE_OFFSETS, max_text_tokens: int | None = None,
            bar=None) -> Outputs:
    """Steps 1-3 of the module docstring: :func:`prepare` with ``model.config``, then
    :func:`execute`."""
    prepared = prepare(tokenizer, model.config, dataset, n_demos, mode, seed, n_examples, pool=pool,
                       test_ids=test_ids, probe_layers=probe_layers, offsets=offsets, max_text_tokens=max_text_tokens)
    return execute(model, prepared, batch_size, bar=bar)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass


def _no_bar(desc, total):
    return _NoBar()


# ---------------------------------------------------------------------- the cache
def cache_key(model: dict, data: dict, *, n_demos: int, mode: str, seed: int, n_examples: int, dtype: str,
              probe_layers, offsets=analysis.PROBE_OFFSETS, max_text_tokens: int | None = None) -> str:
    """16 hex digits of the SHA-256 of everything that changes the model's outputs: the model
    identity (:func:`model_identity`), the data identity (``DataSpec.identity``), the prompt
    settings, the dtype and the probed layers.  ``dtype`` is the resolved one
    (:func:`planned_dtype`): ``auto`` keys as bfloat16 on a GPU and as float32 on CPU, so an
    auto run shares its cache with an explicit ``bfloat16`` / ``float32`` run on the same kind
    of device, and a CPU run never reuses a GPU run's outputs.  Not the device or the batch
    size (the attention is the same batched or alone), nor anything the analysis alone uses."""
    key = {"version": CACHE_VERSION, "model": model, "data": data, "n_demos": int(n_demos), "mode": mode,
           "seed": int(seed), "n_examples": int(n_examples), "dtype": dtype,
           "probe_layers": probe_layers if isinstance(probe_layers, str) else sorted(int(x) for x in probe_layers),
           "offsets": [int(o) for o in offsets], "max_text_tokens": max_text_tokens}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_path(out_dir, key: str) -> Path:
    return Path(out_dir) / f"outputs-{key}.npz"


_BATCH_FIELDS = ("input_ids", "attention_mask", "spans", "label_pos", "demo_labels", "gold", "label_tokens")


def capture_arrays(cap, layers) -> dict:
    """A capture's arrays as a cache file stores them: attention, keys and values in float16."""
    out = {"attn": cap.attn.astype(np.float16), "label_logp": cap.label_logp}
    if cap.keys is not None:
        out.update(keys=cap.keys.astype(np.float16), values=cap.values.astype(np.float16), offsets=cap.offsets,
                   layers=layers)
    return out


def capture_from(a: dict):
    """The :class:`capture.Capture` of a cache file's arrays (:func:`capture_arrays`), in float32."""
    keys = a["keys"].astype(np.float32) if "keys" in a else None
    values = a["values"].astype(np.float32) if "values" in a else None
    return capture.Capture(a["attn"].astype(np.float32), a["label_logp"], keys, values, a.get("offsets"),
                           a.get("layers"))


def write_npz(path, arrays: dict) -> Path:
    """One uncompressed ``.npz`` of ``arrays``, written atomically."""
    from .store import atomic_write

    path = Path(path)
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


class CacheUnreadable(ValueError):
    """A cache file that exists but cannot be read; ``reason`` is one line: the error's type and
    message, e.g. "BadZipFile: Bad CRC-32 for file 'attn.npy'"."""

    def __init__(self, path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"cached model outputs {str(path)!r} cannot be read ({reason}); delete the file to "
                         f"recompute them")


def read_npz(path, build):
    """``build(arrays)`` of a cache file; a damaged or incomplete file is a one-line
    :class:`CacheUnreadable` (a ValueError).  Every member is read whole, so the zip's CRC-32
    of each one catches a changed byte anywhere in the arrays."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return build({k: z[k] for k in z.files})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        detail = " ".join(str(e).split())[:120]
        raise CacheUnreadable(path, f"{type(e).__name__}: {detail}" if detail else type(e).__name__) from None


def read_cache(path, loader):
    """``(loader(path), None)`` for a readable cache file; ``(None, reason)`` for one that exists
    but cannot be read (``loader`` raised :class:`CacheUnreadable`; ``reason`` is its one line),
    which the caller recomputes like a missing one and replaces (the writer renames a complete
    file over it); ``(None, None)`` when there is no file.  The one place both ``simkernel llm``
    branches (text data, simulator worlds) decide that a damaged cache is a miss."""
    path = Path(path)
    if not path.is_file():
        return None, None
    try:
        return loader(path), None
    except CacheUnreadable as e:
        return None, e.reason


def save_outputs(path, outputs: Outputs) -> Path:
    """Write ``outputs`` as one uncompressed ``.npz`` (atomically): attention, keys and values
    in float16 (half the bytes; :func:`execute` rounds them to float16 before any analysis, so
    nothing is lost), the rest exact, ``meta`` as a JSON string."""
    cap = outputs.capture
    arrays = {f"batch_{k}": getattr(outputs.batch, k) for k in _BATCH_FIELDS}
    arrays.update(capture_arrays(cap, outputs.probe_layers), test_ids=outputs.test_ids,
                  demo_ids=outputs.demo_ids, test_logp=outputs.test_logp, pool_ids=outputs.pool_ids,
                  pool_logp=outputs.pool_logp, meta=np.array(json.dumps(outputs.meta, default=str)))
    return write_npz(path, arrays)


def load_outputs(path) -> Outputs:
    """Read what :func:`save_outputs` wrote; a damaged file is a one-line ValueError."""
    return read_npz(path, lambda a: Outputs(PromptBatch(*(a[f"batch_{k}"] for k in _BATCH_FIELDS)), capture_from(a),
                                            a["test_ids"], a["demo_ids"], a["test_logp"], a["pool_ids"],
                                            a["pool_logp"], json.loads(str(a["meta"]))))


# ---------------------------------------------------------------------- analysis
def analyse(outputs: Outputs, how: str = "max", n_select: int = 700, n_report: int = 300,
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
class Job:
    """What ``simkernel llm`` runs: the model's outputs (from the cache or computed) and the
    analysis.  ``info`` says which (``cache_hit``, ``model_loaded``, the cache file, and
    ``cache_damaged``: None, or why the cache file there could not be read, so that the outputs
    were recomputed) and how the outputs were computed (``device``, ``dtype``, ``batch_size``:
    the computing run's, also on a cache hit)."""

    outputs: Outputs
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
        n_select: int = 700, n_report: int = 300, split_seed: int = 0, probe_layers="auto",
        max_text_tokens: int | None = None, dtype: str = "auto", device: str = "auto",
        device_map: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE, bar=None, on_load=None) -> Job:
    """The whole protocol for one configuration, reusing ``out_dir/outputs-<hash>.npz`` when it
    exists: nothing of the model is loaded when the outputs for this (model, revision, data,
    n_demos, mode, seed, n_examples, dtype, probe layers, max_text_tokens) are cached, and the
    device is then not checked.  Otherwise the data, the tokenizer and the model's config are
    loaded and every prompt is built (:func:`prepare`) before the weights (``on_load(desc)``
    is called first).  The cache is written before the analysis, so a failed analysis keeps it."""
    t0 = time.perf_counter()
    where = resolve_model(model_name)
    data_id = data.identity()
    dt = planned_dtype(dtype, device, device_map)
    key = cache_key(model_identity(where, revision), data_id, n_demos=n_demos, mode=mode, seed=seed,
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
    is_gptj = where["id"] == MODEL_ALIASES["gpt-j-6b"]
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
    return Job(outputs, result, info, run_meta, title)


def _outputs(path, where, model_name, revision, data, data_id, dt, n_demos, mode, seed, n_examples, probe_layers,
             max_text_tokens, device, device_map, batch_size, bar, on_load):
    """(outputs, cache hit, why the cache could not be read or None): the cached model outputs at
    ``path``, else computed and cached (replacing a damaged file)."""
    cached, damaged = read_cache(path, load_outputs)
    if cached is not None:
        return cached, True, None
    dataset, pool = data.load()
    config = load_config(model_name, revision)
    tok = load_tokenizer(model_name, revision)
    prepared = prepare(tok, config, dataset, n_demos, mode, seed, n_examples, pool=pool,
                       probe_layers=probe_layers, max_text_tokens=max_text_tokens)
    if on_load is not None:
        on_load(f"loading {where['id']}")
    model, tok = load_model(model_name, revision, dt, device, device_map, tokenizer=tok, config=config)
    outputs = execute(model, prepared, batch_size, bar=bar)
    cfg = model.config
    outputs.meta["model"] = {"name": model_name, "id": where["id"], "local": where["local"], "revision": revision,
                             "commit": getattr(cfg, "_commit_hash", None) or
                             (None if where["local"] else hub_commit(where["id"], revision)),
                             "model_type": cfg.model_type, "layers": int(cfg.num_hidden_layers),
                             "heads": int(cfg.num_attention_heads), "dtype": dt,
                             "parameters": int(sum(p.numel() for p in model.parameters()))}
    outputs.meta["data"] = data_id
    path.parent.mkdir(parents=True, exist_ok=True)
    save_outputs(path, outputs)
    del model
    return outputs, False, damaged


def slug(text: str) -> str:
    """A folder-name-safe version of a model or data name."""
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(text).strip("/").split("/")[-1])
    return keep.strip("-.") or "model"


def default_out(model_name: str, data: DataSpec) -> Path:
    """runs/llm/<model>-<task or file stem>."""
    what = data.task if data.task is not None else Path(data.path).stem
    return Path("runs") / "llm" / f"{slug(model_name)}-{slug(what)}"


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
