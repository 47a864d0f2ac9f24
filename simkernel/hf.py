"""Loading Hugging Face causal LMs and tokenizers: hub names, local folders, dtype, device.

Both LLM branches (``llm``: text tasks, ``llm_world``: simulator worlds) load their model
here.  A name is an alias of :data:`MODEL_ALIASES`, a hub id or a folder made by
``save_pretrained`` (:func:`resolve_model`); the dtype ``auto`` is resolved before anything
loads (:func:`planned_dtype`), so a cache key can name it without a device.  Weights that are
neither in a folder nor in the local hub cache (and cannot be downloaded) are a one-line
ValueError with the command that downloads them.

Before any weights load, :func:`memory_plan` estimates what the run needs from the config
(weights exactly, from the model built on the meta device; one batch's activations; the
captured attention and the probed keys and values on the host), :func:`memory_line` says it in
one line, and :func:`check_memory` refuses, in one line naming the memory needed and the
options, a run that does not fit the memory available (host RAM: ``MemAvailable``; a GPU: its
free memory).

torch, transformers and huggingface_hub are imported inside the functions that need them
(``simkernel --help`` imports none); without them a one-line ValueError names the extra to
install.
"""

from __future__ import annotations

from pathlib import Path

from .constants import LLM_DTYPE_ALIASES, LLM_DTYPES
from .device import resolve_device

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
INSTALL = "pip install 'simkernel[llm]'"


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
        raise ValueError(f"simkernel llm needs the {module.split('.')[0]} package: {INSTALL}") from None


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
    This resolved dtype, not ``auto``, enters ``cache.cache_key``."""
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
               device_map: str | None = None, *, tokenizer=None, config=None, workload: dict | None = None,
               report=None):
    """(model, tokenizer) from an alias, hub id or local folder, in eval mode.

    The model keeps transformers' default attention (sdpa); ``capture.capture`` switches to
    its recording implementation and back.  ``dtype`` auto is bfloat16 on CUDA and float32 on
    CPU.  ``device_map`` (e.g. ``"auto"``) spreads the layers over every visible GPU through
    accelerate instead of moving the model to ``device``.  Weights that are neither in a
    folder nor in the local hub cache (and cannot be downloaded) give a one-line ValueError
    with the command that downloads them.  ``tokenizer`` and ``config``, when the caller has
    loaded them already (:func:`load_tokenizer`, :func:`load_config`), are not loaded again.

    Before the weights load, :func:`memory_plan` estimates the memory (``workload``: its keyword
    arguments, the run's batch size, prompt length, prompts and probe bytes), ``report(line)``
    receives :func:`memory_line`, and :func:`check_memory` raises the one-line ValueError when
    it does not fit the memory available (host RAM, or the GPU's)."""
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
            raise ValueError(f"--device-map needs the accelerate package: {INSTALL}")
        kw["device_map"] = device_map
    if device_map is None and dev.startswith("cuda") and dt == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"the GPU of device {dev!r} cannot run bfloat16; use --dtype float16 (or float32)")
    try:
        plan = memory_plan(config, dt, dev, **(workload or {}))
    except Exception as e:                    # an architecture the estimate cannot build: load unchecked
        plan = None
        if report is not None:
            report(f"memory: no estimate for {type(config).__name__} ({type(e).__name__}: {e}"[:200] + ")")
    if plan is not None:
        if report is not None:
            report(memory_line(plan))
        check_memory(plan, device_map)
    try:
        model = AutoModelForCausalLM.from_pretrained(where["id"], **kw)
    except (OSError, ValueError) as e:
        raise _unavailable(where, revision, e) from None
    if device_map is None:
        model.to(dev)
    model.eval()
    return model, tok


def weight_bytes(config, dtype: str = "float32") -> int:
    """Bytes of the weights (parameters in ``dtype``, buffers in their own dtype) of the causal LM
    ``config`` describes: the model is built on the meta device (no memory, about 2 s for 6B
    parameters) and its tensors counted; tied weights count once."""
    AutoModelForCausalLM = _require("transformers").AutoModelForCausalLM
    import torch

    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, resolve_dtype(dtype, "cpu")))
    return int(sum(t.numel() * t.element_size() for t in list(meta.parameters()) + list(meta.buffers())))


def memory_plan(config, dtype: str, device: str = "cpu", *, batch_size: int = 8, tokens: int = 512,
                prompts: int = 0, probe_bytes: int = 0, full_logits: bool = False) -> dict:
    """The memory a run will need, in bytes, estimated from ``config`` before loading:

    weights   :func:`weight_bytes` in ``dtype`` (exact)
    forward   one batch of ``batch_size`` prompts of ``tokens`` tokens: hidden states (about 6
              vectors of d per token) and the MLP's two (tokens, inner) arrays in ``dtype``, one
              layer's float32 attention scores (B, H, T, T), and the float32 logits (their
              log-softmax too): the last position's only, or every position's (``full_logits``:
              document scoring)
    capture   the host arrays of the captured attention rows, (prompts, L, H, T) float32, twice
              (the text branch copies them once while putting prompts back in order)
    probes    the probed keys and values, ``probe_bytes`` (``capture.probe_layer_bytes`` x layers), x 1.5
    total     their sum; ``device``, ``dtype`` recorded beside them"""
    d = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or config.d_model)
    H, L = int(config.num_attention_heads), int(config.num_hidden_layers)
    inner = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d)
    V, e = int(config.vocab_size), {"float32": 4}.get(dtype, 2)
    B, T = int(batch_size), int(tokens)
    logits = B * (T if full_logits else 1) * V * 4 * 3
    forward = B * T * (6 * d + 2 * inner) * e + B * H * T * T * 4 + logits
    plan = {"weights": weight_bytes(config, dtype), "forward": int(forward),
            "capture": int(prompts) * L * H * T * 4 * 2, "probes": int(1.5 * probe_bytes)}
    plan["total"] = sum(plan.values())
    plan.update(device=str(device), dtype=dtype)
    return plan


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def memory_line(plan: dict) -> str:
    """One line: ``memory: needs about X (weights W dtype + forward F + capture C + probes P); Y available (where)``."""
    avail, where = available_memory(plan["device"])
    have = "unknown memory available" if avail is None else f"{_gib(avail)} available ({where})"
    return (f"memory: needs about {_gib(plan['total'])} (weights {_gib(plan['weights'])} {plan['dtype']} + forward "
            f"{_gib(plan['forward'])} + capture {_gib(plan['capture'])} + probes {_gib(plan['probes'])}); {have}")


def host_available_bytes() -> int | None:
    """Host memory available for new allocations: ``MemAvailable`` of /proc/meminfo, else
    psutil's ``virtual_memory().available`` when installed, else None (unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def available_memory(device: str) -> tuple:
    """(bytes or None, where): the free memory of the GPU for ``cuda[:N]`` (``torch.cuda.mem_get_info``),
    else the host's (:func:`host_available_bytes`)."""
    if str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free), f"GPU {device}"
    return host_available_bytes(), "host RAM"


def check_memory(plan: dict, device_map: str | None = None) -> None:
    """A one-line ValueError when ``plan``'s total (:func:`memory_plan`) exceeds the memory
    available on its device, naming what is needed and the options.  With ``device_map``
    (accelerate places or offloads the layers) and when the memory is unknown, nothing is checked."""
    if device_map is not None:
        return
    avail, where = available_memory(plan["device"])
    if avail is None or plan["total"] <= avail:
        return
    opts = ["--dtype bfloat16"] if plan["dtype"] == "float32" else []
    opts += ["--device-map auto (with accelerate, on GPUs)", "a smaller --batch-size or model"]
    raise ValueError(f"the model needs about {_gib(plan['total'])} (weights {_gib(plan['weights'])} {plan['dtype']}) "
                     f"but only {_gib(avail)} of {where} is available; options: {', '.join(opts)}")


def context_length(config) -> int | None:
    """The longest prompt the model's position embeddings allow (None when unbounded)."""
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        v = getattr(config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def model_record(model, name: str, revision: str | None, dtype: str) -> dict:
    """What a run records of a loaded ``model`` (loaded as ``name`` at ``revision`` in ``dtype``):
    where it came from, the hub commit, its type, layers, heads, dtype and parameter count."""
    where, cfg = resolve_model(name), model.config
    return {"name": name, "id": where["id"], "local": where["local"], "revision": revision,
            "commit": getattr(cfg, "_commit_hash", None) or
            (None if where["local"] else hub_commit(where["id"], revision)),
            "model_type": cfg.model_type, "layers": int(cfg.num_hidden_layers),
            "heads": int(cfg.num_attention_heads), "dtype": dtype,
            "parameters": int(sum(p.numel() for p in model.parameters()))}


def pad_id(tokenizer) -> int:
    """The id that pads a prompt on the left: the tokenizer's pad token, else its EOS, else 0."""
    for v in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if v is not None:
            return int(v)
    return 0


def slug(text: str) -> str:
    """A folder-name-safe version of a model or data name (its last path part)."""
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(text).strip("/").split("/")[-1])
    return keep.strip("-.") or "model"
