"""Train a small transformer on a world's documents and measure its gap to the Bayes floor.

A plain PyTorch loop (nanoGPT-style): AdamW, linear warm-up then cosine decay, gradient
clipping, bf16 autocast on CUDA only, optional ``torch.compile``, DDP under ``torchrun``.

Data.  A training example is a block of ``block_size`` consecutive symbols that lies inside
one document; the block of step ``s`` on rank ``r`` is drawn from ``np.random.default_rng(
[seed, s, r])``, uniformly over every (document, offset) with room for the block.  So the data
position is the step number, and a resumed run sees exactly the batches it would have seen.

The Bayes floor.  Held-out documents are sampled from the same world with another seed
(``eval_seed``) and cut into non-overlapping blocks at offsets 0, B, 2B, ...  The model is
scored on predicting symbols 1..B-1 of each block from the ones before (symbol 0 has no
context: the vocabulary has no BOS).  The floor is the loss of the exact Bayes predictor on
the same symbols, given the same block and its offset t in the document:

    the hidden state at the block start under concept k  ~  start_k M_k^t,
    M_k = T_k (no restart),  M_k[s] = (1 - E_k[s, d]) T_k[s] + E_k[s, d] start_k (restart)

(the chain with the block's earlier symbols marginalised out; in a restart world a delimiter
sends the next state back to start).  With ll[k, j] = log P(block[:j+1] | k, t) from
``bayes.forward(init=..., prefixes=True)`` and the world's prior π, the loss of symbol j is

    -( logsumexp_k(log π_k + ll[k, j]) - logsumexp_k(log π_k + ll[k, j-1]) ).

The Bayes predictor also knows the offset t, which the model does not see, so the floor is a
true lower bound (and t's effect fades as the chain mixes).  gap = val loss - floor.

Run folder: ``runs_dir / <hash of the config>``::

    config.json     the training config (and where the corpus came from)
    corpus/         the corpus, when the run sampled its own
    metrics.jsonl   one JSON object per eval: step, train_loss, val_loss, floor, gap, lr, ...
    checkpoint/     model/ (save_pretrained: config.json + model.safetensors), state.pt
                    (optimizer, scheduler, step, RNG states, best, evals without improvement),
                    train_config.json, step.json; replaced atomically (temp folder + rename)
    snapshots/      step-XXXXXXX/ (config.json + model.safetensors): the model alone (no optimizer)
                    at ``cfg.snapshot_steps`` (:func:`snapshot_steps`; off by default), each
                    published atomically; a resumed run keeps them, a start from step 0 clears them
    done.json       written last: why training stopped, the final numbers and ``outputs``, the
                    size and SHA-256 of every file a later call reuses (see ``runs.run_outputs``)
    .lock           held (flock) by the one process training in the folder; see folder_lock

The folder's bookkeeping (its file names, done.json, verification, the exceptions that say what
it holds) lives in ``runs``; the loop and the checkpoint I/O here.  ``run`` is the library call
of ``simkernel train``: it decides whether the folder is finished, resumable or fresh, samples
the corpus, holds the lock and trains.  A finished run is trusted only once its files match
done.json's record (``runs.verify_run``); a damaged one is trained
again from step 0, and the result's ``note`` says why.  metrics.jsonl never holds a
step twice: a run that starts over empties it, a resumed one keeps exactly the rows up to its
checkpoint.  Ctrl-C raises ``Interrupted`` (a KeyboardInterrupt) saying what the folder holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import bayes, model as model_mod
from .sampling import sample_corpus
from .runs import (CHECKPOINT, CONFIG, CORPUS, DONE, METRICS, OUTPUTS, SNAPSHOTS, Interrupted, NoCheckpoint,
                   ensure_resumable, checkpoint_step, inspect_run, read_metrics, run_outputs, settle_run, snapshot_name)
from .sampling import read_corpus, write_corpus
from .store import (atomic_write, check_results_dir, folder_lock, publish_folder, read_meta, versions, write_csv,
                    write_json)
from .world import World

try:        # transformers' per-save progress bars would break the training bar
    from transformers.utils import logging as _hf_logging
    _hf_logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass


# ---------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    """Everything that decides a training run's result (the run folder is a hash of it).
    ``device`` and ``compile`` are how it runs, not what it computes, and are not hashed."""

    corpus: dict                      # where the corpus came from (see corpus_identity)
    model: str = "cpu"
    model_overrides: dict = field(default_factory=dict)
    block_size: int = 128
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_frac: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    max_steps: int = 3000
    eval_every: int = 100
    eval_docs: int = 8
    eval_blocks: int = 64
    target_gap: float = 0.05
    patience: int = 10
    ckpt_every: int = 500
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    snapshot_steps: object = None     # None (off) | "log" | a list of steps: see snapshot_steps()

    def hashed(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("device")
        d.pop("compile")
        # off, it is left out: a run without snapshots keeps the folder (hash) it always had
        s = d.pop("snapshot_steps")
        if s is not None:
            d["snapshot_steps"] = s if s == "log" else sorted({int(v) for v in s})
        return d

    def run_id(self) -> str:
        text = json.dumps(self.hashed(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_config(cfg: TrainConfig) -> None:
    """One-line ValueErrors for values no run can use (checked before any work)."""
    if cfg.model not in model_mod.MODEL_PRESETS:
        raise ValueError(f"unknown model preset {cfg.model!r}; allowed: {', '.join(model_mod.MODEL_PRESETS)}")
    ctx = int(cfg.model_overrides.get("n_positions", model_mod.MODEL_PRESETS[cfg.model]["n_positions"]))
    if not 2 <= cfg.block_size <= ctx:
        raise ValueError(f"block size {cfg.block_size} must be in 2..{ctx} (the context of model {cfg.model!r})")
    for name in ("batch_size", "max_steps", "eval_every", "eval_docs", "eval_blocks", "patience", "ckpt_every"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if not (isinstance(cfg.target_gap, (int, float)) and cfg.target_gap > 0 and math.isfinite(cfg.target_gap)):
        raise ValueError(f"target gap must be > 0 nats/token, got {cfg.target_gap!r}")
    if not cfg.lr > 0:
        raise ValueError(f"learning rate must be > 0, got {cfg.lr!r}")
    if cfg.warmup_steps < 0 or not 0 <= cfg.min_lr_frac <= 1:
        raise ValueError("warmup_steps must be >= 0 and min_lr_frac in [0, 1]")
    s = cfg.snapshot_steps
    if not (s is None or s == "log" or (isinstance(s, (list, tuple)) and s and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in s))):
        raise ValueError(f"snapshot_steps must be None, 'log' or a non-empty list of steps >= 1, got {s!r}")


def snapshot_steps(cfg: TrainConfig) -> list[int]:
    """The steps after which training saves the model's weights into snapshots/: none when
    ``cfg.snapshot_steps`` is None, 1, 2, 4, ... (2^k <= max_steps) for "log", else the given
    steps up to max_steps.  A run that stops early (target gap, patience) saves those it reached."""
    s = cfg.snapshot_steps
    if s is None:
        return []
    if s == "log":
        return [2 ** k for k in range(cfg.max_steps.bit_length())]
    return sorted({int(v) for v in s if v <= cfg.max_steps})


def save_snapshot(run_dir: Path, model, step: int) -> Path:
    """Write run_dir/snapshots/step-XXXXXXX (the model alone: config.json + model.safetensors)
    atomically; read back with ``runs.snapshots``."""
    return publish_folder(Path(run_dir) / SNAPSHOTS / snapshot_name(step), lambda tmp: model_mod.save_model(model, tmp))


def corpus_identity(corpus_dir) -> dict:
    """``TrainConfig.corpus`` for an existing corpus folder: its meta.json (config, seed, world,
    creation time) and its size.  Its path is not part of it, so a moved corpus keeps its runs.
    One-line ValueError when the folder is not a readable, non-empty corpus."""
    corpus_dir = Path(corpus_dir)
    if read_corpus(corpus_dir).tokens.size == 0:
        raise ValueError(f"corpus {str(corpus_dir)!r} is empty")
    meta = read_meta(corpus_dir)
    h = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()
    return {"meta_sha256": h, "seed": meta.get("seed"), "world": meta.get("world", {}).get("meta"),
            "n_tokens": int(np.load(corpus_dir / "tokens.npy", mmap_mode="r").size)}


def sampled_corpus(world_source: dict, n_docs: int, doc_length: int, seed: int) -> dict:
    """``TrainConfig.corpus`` for a corpus that ``run`` samples into the run folder: ``n_docs``
    documents of ``doc_length`` symbols from the world described by ``world_source`` (a JSON-able
    record of where the world came from), with sampling seed ``seed``."""
    return {"sampled": {"world": world_source, "n_docs": n_docs, "doc_length": doc_length, "seed": seed}}


def select_device(requested: str = "auto") -> torch.device:
    """:func:`device.torch_device` (the one resolver)."""
    from .device import torch_device
    return torch_device(requested)


# ---------------------------------------------------------------------- data
class BlockSampler:
    """Fixed-length blocks inside one document, uniform over every valid (document, offset)."""

    def __init__(self, corpus, block_size: int):
        lengths = np.diff(corpus.offsets)
        starts = np.maximum(lengths - block_size + 1, 0)
        if starts.sum() == 0:
            raise ValueError(f"block size {block_size} is longer than every document "
                             f"(the longest has {int(lengths.max())} symbols)")
        self.tokens = corpus.tokens
        self.doc_start = corpus.offsets[:-1]
        self.cum = np.cumsum(starts)
        self.block_size = block_size

    def batch(self, seed: int, step: int, rank: int, batch_size: int) -> np.ndarray:
        """(batch_size, block_size) int64 symbols for this (seed, step, rank)."""
        rng = np.random.default_rng([seed, step, rank])
        u = rng.integers(0, self.cum[-1], size=batch_size)
        doc = np.searchsorted(self.cum, u, side="right")
        off = u - np.concatenate([[0], self.cum[:-1]])[doc]
        pos = self.doc_start[doc] + off
        idx = pos[:, None] + np.arange(self.block_size)[None, :]
        return np.asarray(self.tokens[idx], dtype=np.int64)


@dataclass(frozen=True)
class EvalSet:
    """Held-out blocks (N, B) int64, their offsets in their documents (N,), and the exact
    Bayes loss of each predicted symbol (N, B-1) in nats."""

    blocks: np.ndarray
    offsets: np.ndarray
    bayes_loss: np.ndarray

    @property
    def floor(self) -> float:
        return float(self.bayes_loss.mean())


# the exact Bayes floor of a block is HMM math: it lives in bayes
block_start_states = bayes.block_start_states
bayes_block_loss = bayes.block_loss


def make_eval_set(world: World, doc_length: int, block_size: int, n_docs: int, n_blocks: int,
                  seed: int) -> EvalSet:
    """Non-overlapping blocks at offsets 0, B, 2B, ... of ``n_docs`` held-out documents,
    taken document by document round-robin, at most ``n_blocks``."""
    docs = sample_corpus(world, n_docs, doc_length, seed=seed)
    per_doc = doc_length // block_size
    picks = [(d, j) for j in range(per_doc) for d in range(n_docs)][:n_blocks]
    blocks = np.stack([docs.document(d)[j * block_size:(j + 1) * block_size] for d, j in picks]).astype(np.int64)
    offsets = np.array([j * block_size for _, j in picks], dtype=np.int64)
    return EvalSet(blocks, offsets, bayes.block_loss(world, blocks, offsets))


# ---------------------------------------------------------------------- loop pieces
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to lr over warmup_steps, then cosine decay to min_lr_frac * lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


def lm_loss(model, x: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-symbol cross-entropy of x[:, 1:] given x[:, :-1] (float32 logits)."""
    logits = model(input_ids=x).logits.float()
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                           reduction=reduction)


@torch.no_grad()
def evaluate(model, blocks: np.ndarray, device, batch_size: int = 64, autocast=None) -> float:
    """Mean next-symbol loss (nats/token) of ``model`` on the blocks (symbols 1..B-1)."""
    was = model.training
    model.eval()
    total, n = 0.0, 0
    for a in range(0, len(blocks), batch_size):
        x = torch.as_tensor(blocks[a:a + batch_size], device=device)
        with autocast():
            loss = lm_loss(model, x, reduction="sum")
        total += float(loss)
        n += x.shape[0] * (x.shape[1] - 1)
    model.train(was)
    return total / n


def _rng_states() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_states(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, cfg: TrainConfig, state: dict) -> Path:
    """Write run_dir/checkpoint atomically: a complete temp folder renamed into place."""
    def build(tmp: Path):
        model_mod.save_model(model, tmp / "model")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": _rng_states(), **state}, tmp / "state.pt")
        (tmp / "train_config.json").write_text(json.dumps(cfg.hashed(), indent=2, sort_keys=True, default=str))
        # the step, readable without loading state.pt (GBs of optimizer state for big models)
        (tmp / "step.json").write_text(json.dumps({"step": int(state["step"])}))

    return publish_folder(run_dir / CHECKPOINT, build)


def _diff_configs(saved: dict, now: dict, prefix="") -> list[str]:
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k, "<absent>"), now.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff_configs(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: checkpoint {a!r} vs now {b!r}")
    return out


def load_checkpoint(run_dir: Path, cfg: TrainConfig, model, optimizer, scheduler) -> dict:
    """Restore model, optimizer, scheduler and RNG states from run_dir/checkpoint; returns the
    saved loop state.  One-line ValueError when it is missing, corrupt or for another config."""
    ck = run_dir / CHECKPOINT
    if not ck.is_dir():
        raise NoCheckpoint(run_dir)
    try:
        saved_cfg = json.loads((ck / "train_config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot resume: checkpoint {str(ck)!r} is corrupt: cannot read train_config.json "
                         f"({type(e).__name__})") from None
    now = json.loads(json.dumps(cfg.hashed(), sort_keys=True, default=str))
    diff = _diff_configs(saved_cfg, now)
    if diff:
        raise ValueError(f"cannot resume: checkpoint {str(ck)!r} does not match this config: " + "; ".join(diff))
    try:
        from safetensors.torch import load_file
        weights = load_file(str(ck / "model" / "model.safetensors"))
        state = torch.load(ck / "state.pt", map_location="cpu", weights_only=False)
    except Exception as e:     # safetensors / pickle raise many types on a damaged file
        raise ValueError(f"cannot resume: checkpoint {str(ck)!r} is corrupt ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:120]})") from None
    target = getattr(model, "module", model)
    target = getattr(target, "_orig_mod", target)
    own = target.state_dict()
    bad = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in weights and not k.endswith(".attn.bias") and "masked_bias" not in k]
    if bad or missing:
        what = (f"tensor {bad[0]} has shape {tuple(weights[bad[0]].shape)}, the model needs "
                f"{tuple(own[bad[0]].shape)}") if bad else f"tensor {missing[0]} is missing"
        raise ValueError(f"cannot resume: checkpoint {str(ck)!r} does not match the model: {what}")
    target.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_states(state["rng"])
    return state


# ---------------------------------------------------------------------- the run
#: train.csv, a training call's table (the sweep's table of a train job): one row per call
TRAIN_COLUMNS = ("run_dir", "status", "reason", "step", "val_loss", "floor", "gap", "elapsed_s")
TRAIN_DTYPES = {"run_dir": "str", "status": "str", "reason": "str", "step": "int", "val_loss": "float",
                "floor": "float", "gap": "float", "elapsed_s": "float"}


@dataclass
class RunResult:
    """What a training call did.  Losses in nats/token; ``elapsed_s`` is this call's wall time
    (sampling included); ``rank`` is this process's rank under torchrun (0 otherwise)."""

    run_dir: Path
    status: str                 # "trained" | "already trained"
    reason: str                 # why it stopped: target_gap | patience | max_steps (| interrupted: stop_after)
    step: int
    val_loss: float
    floor: float
    gap: float
    metrics: list               # the rows of metrics.jsonl
    elapsed_s: float = 0.0
    rank: int = 0
    note: str = ""              # one line when the folder needed care: a damaged run trained again, an older
                                # run's hashes recorded; "" otherwise

    def summary_line(self) -> str:
        """One line: where the run is, why it stopped and its gap to the Bayes floor."""
        if self.status == "already trained":
            return (f"already trained: {self.run_dir} (stopped at step {self.step} by {self.reason}; val "
                    f"{self.val_loss:.4f}, floor {self.floor:.4f}, gap {self.gap:.4f} nats/token)")
        return (f"{self.run_dir}: stopped at step {self.step} by {self.reason} ({self.elapsed_s:.1f} s); "
                f"val {self.val_loss:.4f}, Bayes floor {self.floor:.4f}, gap {self.gap:.4f} nats/token")

    def summary_lines(self) -> list[str]:
        """What ``simkernel train`` prints: :meth:`summary_line`."""
        return [self.summary_line()]

    @property
    def meta(self) -> dict:
        """The result's JSON-able description (the run folder holds its config.json and done.json)."""
        return {"command": "train", "run_dir": str(self.run_dir), "status": self.status, "reason": self.reason,
                "step": self.step, "elapsed_s": self.elapsed_s, "rank": self.rank, "note": self.note}

    def tables(self) -> dict:
        """``{None: train.csv}``: one row of :data:`TRAIN_COLUMNS` (``results.Table``)."""
        from .results import Table

        row = {c: str(getattr(self, c)) if c == "run_dir" else getattr(self, c) for c in TRAIN_COLUMNS}
        return {None: Table("train.csv", TRAIN_COLUMNS, TRAIN_DTYPES, [row])}

    def write(self, out) -> list:
        """Write train.csv (:meth:`tables`) into the folder ``out``; returns [its path]."""
        t = self.tables()[None]
        return [write_csv(Path(out) / t.file, t.rows, t.columns)]


def _ddp_env():
    """(rank, world_size, local_rank) from torchrun's environment, else (0, 1, 0)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world_size); under torchrun (WORLD_SIZE > 1) joins the process group once
    (nccl on CUDA, gloo on CPU).  Safe to call repeatedly."""
    rank, world_size, _ = _ddp_env()
    if world_size > 1:
        import torch.distributed as dist
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world_size


def barrier() -> None:
    """Wait for every rank (no-op outside DDP)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _data(cfg: TrainConfig, corpus_dir) -> tuple[World, BlockSampler, EvalSet]:
    """The corpus's world, its block sampler and the held-out blocks with their Bayes floor
    (documents sampled with the corpus's seed + 1, as long as its longest document)."""
    corpus = read_corpus(corpus_dir)
    world = World.load(Path(corpus_dir) / "world.npz")
    sampler = BlockSampler(corpus, cfg.block_size)
    doc_length = int(np.diff(corpus.offsets).max())
    meta_seed = read_meta(corpus_dir).get("seed") or 0
    evalset = make_eval_set(world, doc_length, cfg.block_size, cfg.eval_docs, cfg.eval_blocks,
                            seed=int(meta_seed) + 1)
    return world, sampler, evalset


def _optimizer(net, cfg: TrainConfig, device: torch.device):
    """(AdamW, its LambdaLR schedule :func:`lr_at`); weight decay on matrices only."""
    decay = [p for n, p in net.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in net.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg) / cfg.lr)
    return optimizer, scheduler


def _wrapped(net, cfg: TrainConfig, device: torch.device, ddp: bool):
    """``net`` as the loop calls it: compiled (``cfg.compile``) and in DDP under torchrun."""
    model = net
    if cfg.compile:
        model = torch.compile(model)
    if ddp:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def _autocast(device: torch.device):
    """A factory of the forward pass's context: bf16 autocast on CUDA, nothing elsewhere."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _step(model, net, x: torch.Tensor, optimizer, scheduler, cfg: TrainConfig, autocast) -> float:
    """One optimisation step on the batch ``x`` (b, block_size); returns its training loss."""
    with autocast():
        loss = lm_loss(model, x)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
    optimizer.step()
    scheduler.step()
    return float(loss.detach())


def _stop_reason(row: dict, state: dict, cfg: TrainConfig) -> str | None:
    """After an evaluation ``row``: "target_gap", "patience" or None (go on); counts the
    evaluations without improvement in ``state``."""
    if row["val_loss"] < state["best"] - 1e-4:
        state["best"], state["bad_evals"] = row["val_loss"], 0
    else:
        state["bad_evals"] += 1
    if row["gap"] < cfg.target_gap:
        return "target_gap"
    if state["bad_evals"] >= cfg.patience:
        return "patience"
    return None


def train(cfg: TrainConfig, corpus_dir, run_dir, *, resume: bool = False, progress=None,
          log=None, stop_after: int | None = None) -> RunResult:
    """Train (or continue) the run of ``cfg`` in ``run_dir`` on the corpus at ``corpus_dir``.

    ``progress``: optional callable(step, info dict) after every step; ``log``: callable(str)
    for messages; ``stop_after``: stop (with a checkpoint, without done.json) after that many
    total steps, as an interruption would (for tests)."""
    check_config(cfg)
    run_dir = Path(run_dir)
    device = select_device(cfg.device)
    rank, world_size = init_distributed(device)
    world, sampler, evalset = _data(cfg, corpus_dir)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    net = model_mod.build_model(cfg.model, world.n_symbols, **cfg.model_overrides).to(device)
    optimizer, scheduler = _optimizer(net, cfg, device)
    state = {"step": 0, "best": math.inf, "bad_evals": 0, "metrics": []}
    if resume:
        state = load_checkpoint(run_dir, cfg, net, optimizer, scheduler)
    metrics, step, recent = list(state["metrics"]), int(state["step"]), list(state.get("recent", []))
    if rank == 0:
        _restart_metrics(run_dir, metrics)
        if not resume:      # a start from step 0 keeps no weights of an earlier start
            shutil.rmtree(run_dir / SNAPSHOTS, ignore_errors=True)
    snaps = set(snapshot_steps(cfg))
    model = _wrapped(net, cfg, device, world_size > 1)
    autocast = _autocast(device)

    def checkpoint():
        if rank == 0:
            save_checkpoint(run_dir, net, optimizer, scheduler, cfg,
                            {"step": step, "best": state["best"], "bad_evals": state["bad_evals"],
                             "metrics": metrics, "recent": recent, "data_position": step})

    reason = None
    model.train()
    t0 = time.perf_counter()
    tokens_seen = 0
    while True:
        if step >= cfg.max_steps:
            reason = "max_steps"
            break
        if stop_after is not None and step >= stop_after:
            break
        x = torch.as_tensor(sampler.batch(cfg.seed, step, rank, cfg.batch_size), device=device)
        train_loss = _step(model, net, x, optimizer, scheduler, cfg, autocast)
        step += 1
        recent.append(train_loss)
        tokens_seen += x.numel() * world_size
        info = {"loss": train_loss}
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            val = evaluate(net, evalset.blocks, device, autocast=autocast)
            row = _eval_row(step, recent, val, evalset.floor, scheduler, tokens_seen, time.perf_counter() - t0)
            recent = []
            metrics.append(row)
            if rank == 0:
                _log_row(run_dir, row, log)
            info["gap"] = row["gap"]
            reason = _stop_reason(row, state, cfg)
        if step in snaps and rank == 0:
            save_snapshot(run_dir, net, step)
        if progress is not None:
            progress(step, info)
        if reason is not None:
            break
        if step % cfg.ckpt_every == 0:
            checkpoint()

    checkpoint()
    last = metrics[-1] if metrics else {}
    if reason is not None and rank == 0:
        _write_done(run_dir, reason, step, last, evalset.floor)
    if world_size > 1:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
    return RunResult(run_dir, "trained", reason or "interrupted", step, last.get("val_loss", math.nan),
                     evalset.floor, last.get("gap", math.nan), metrics, time.perf_counter() - t0, rank)


def _eval_row(step: int, recent: list, val: float, floor: float, scheduler, tokens_seen: int,
              elapsed: float) -> dict:
    """metrics.jsonl's row of an evaluation: the mean training loss since the last one, the
    validation loss, the Bayes floor, the gap, the learning rate, the throughput (tokens/s)."""
    return {"step": step, "train_loss": float(np.mean(recent)), "val_loss": val, "floor": floor,
            "gap": val - floor, "lr": scheduler.get_last_lr()[0],
            "tokens_per_s": tokens_seen / elapsed if elapsed > 0 else None, "elapsed_s": elapsed}


def _restart_metrics(run_dir: Path, metrics: list) -> None:
    """metrics.jsonl holding exactly ``metrics``: an interrupted run may have logged rows past its
    checkpoint (or, without one, rows this run is about to log again), and a run continues
    from exactly the rows of the state it starts from."""
    text = "".join(json.dumps(r) + "\n" for r in metrics)
    atomic_write(run_dir / METRICS, lambda f: f.write(text.encode()))


def _log_row(run_dir: Path, row: dict, log=None) -> None:
    """Append an evaluation ``row`` to metrics.jsonl (and say it through ``log``)."""
    with open(run_dir / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")
    if log is not None:
        log(f"step {row['step']}: train {row['train_loss']:.4f} val {row['val_loss']:.4f} floor "
            f"{row['floor']:.4f} gap {row['gap']:.4f}")


def _write_done(run_dir: Path, reason: str, step: int, last: dict, floor: float) -> None:
    """done.json: why training stopped, the final numbers and the record of the files a later
    call reuses.  The record is taken after the last checkpoint and metrics row, and done.json
    still comes last: a crash before it leaves an unfinished run, never an unverifiable one."""
    write_json(run_dir / DONE, {"reason": reason, "step": step, "val_loss": last.get("val_loss"),
                                "floor": floor, "gap": last.get("gap"), "versions": versions(),
                                "torch": torch.__version__, OUTPUTS: run_outputs(run_dir)})


def prepare_run_dir(runs_dir, cfg: TrainConfig, config_record: dict) -> Path:
    """Create runs_dir/<run id> with config.json (kept if it exists); returns the folder."""
    run_dir = Path(runs_dir) / cfg.run_id()
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / CONFIG).is_file():
        write_json(run_dir / CONFIG, config_record)
    return run_dir


def _finished_result(run_dir: Path, done: dict, rank: int, t0: float, note: str = "") -> RunResult:
    nan = math.nan
    return RunResult(run_dir, "already trained", done.get("reason"), int(done.get("step", 0)),
                     done.get("val_loss") if done.get("val_loss") is not None else nan,
                     done.get("floor") if done.get("floor") is not None else nan,
                     done.get("gap") if done.get("gap") is not None else nan,
                     read_metrics(run_dir), time.perf_counter() - t0, rank, note)


def _already_trained(run_dir: Path, rank: int, t0: float, note: str = "") -> RunResult | None:
    """The "already trained" result of a finished run whose files are as done.json records them
    (sizes and SHA-256); None for any other folder (unfinished, older or damaged)."""
    state, done, _ = inspect_run(run_dir)
    return _finished_result(run_dir, done, rank, t0, note) if state == "intact" else None


def _check_corpus_args(cfg: TrainConfig, corpus_dir, world) -> dict | None:
    """``cfg.corpus["sampled"]`` (the corpus ``run`` samples from ``world``), or None for an existing
    corpus at ``corpus_dir``; one-line ValueErrors when the arguments do not fit ``cfg.corpus``."""
    spec = cfg.corpus.get("sampled") if isinstance(cfg.corpus, dict) else None
    if spec is not None:
        if world is None or corpus_dir is not None:
            raise ValueError("cfg.corpus is sampled_corpus(...): pass world= (the world to sample), not corpus_dir=")
        for name in ("n_docs", "doc_length"):
            v = spec.get(name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"cfg.corpus['sampled'][{name!r}] must be an integer >= 1, got {v!r}")
    else:
        if corpus_dir is None or world is not None:
            raise ValueError("cfg.corpus names an existing corpus: pass corpus_dir=, not world=")
        if corpus_identity(corpus_dir) != cfg.corpus:
            raise ValueError(f"corpus_dir {str(corpus_dir)!r} is not the corpus that cfg.corpus describes "
                             f"(build cfg with corpus=corpus_identity(corpus_dir))")
    return spec


def _ready_folder(runs_dir, cfg: TrainConfig, record: dict, spec: dict | None, world, sample_progress):
    """On rank 0 under the lock: settle a finished run that is not intact (``runs.settle_run``),
    write config.json, and sample the corpus into the folder when ``spec`` asks for one that is
    not there yet.  Returns ``settle_run``'s (note, discarded)."""
    run_dir = Path(runs_dir) / cfg.run_id()
    note, discarded = settle_run(run_dir)
    prepare_run_dir(runs_dir, cfg, record)
    corpus_dir = run_dir / CORPUS
    if spec is not None and not (corpus_dir / "meta.json").is_file():
        write_corpus(world, corpus_dir, spec["n_docs"], spec["doc_length"], spec["seed"], overwrite=True,
                     config={"command": "train", "world": spec["world"]}, progress=sample_progress)
    return note, discarded


def run(cfg: TrainConfig, runs_dir, *, corpus_dir=None, world: World | None = None, resume: bool = False,
        progress=None, sample_progress=None) -> RunResult:
    """Train the run of ``cfg`` in ``runs_dir / cfg.run_id()``, or report it if it is finished.

    The corpus is ``corpus_dir`` when ``cfg.corpus`` is ``corpus_identity(corpus_dir)``; when it
    is ``sampled_corpus(...)``, ``world`` (the World it describes) is sampled into the run
    folder's corpus/ (kept, so a rerun reuses it).  Writes only into ``runs_dir``.

    - finished (done.json) with every file done.json records as recorded (size and SHA-256):
      returns status "already trained" and touches nothing;
    - finished but damaged (a recorded file missing or changed, done.json unreadable): removes
      done.json, the checkpoint and config.json and trains again from step 0 (``resume`` is
      then ignored); the result's ``note`` names the run and what was wrong;
    - finished before done.json recorded its files: checks what needs no record (see
      ``runs.verify_run``), then records the hashes into done.json ("already trained", with a
      ``note`` saying so), or trains again as above if the checks fail;
    - a checkpoint: ``resume=True`` continues it, else ``CheckpointExists``;
    - no checkpoint (fresh, or interrupted before one): starts from step 0, emptying metrics.jsonl;
      ``resume=True`` then raises ``NoCheckpoint``.
    While training, the folder is locked (``folder_lock``; by rank 0 only under torchrun, as only
    rank 0 writes): a second run of the same config gets ``FolderBusy``.  Ctrl-C raises
    ``Interrupted``, which says what the folder holds and whether a rerun needs ``resume=True``.

    ``progress``: callable(step, {"loss": float, "gap": float at evaluations}) after every step;
    ``sample_progress``: callable(documents sampled so far); both on rank 0 only.
    Bad arguments raise one-line ValueErrors before any file is written."""
    t0 = time.perf_counter()
    check_config(cfg)
    device = select_device(cfg.device)
    runs_dir = check_results_dir(runs_dir, "runs folder")
    spec = _check_corpus_args(cfg, corpus_dir, world)
    run_dir = runs_dir / cfg.run_id()
    rank, _, _ = _ddp_env()
    state, done, _ = inspect_run(run_dir)
    if state == "intact":
        return _finished_result(run_dir, done, rank, t0)
    if state == "fresh":
        ensure_resumable(run_dir, resume)
    # an older or damaged finished run is settled by rank 0 under the lock; every rank looked
    # before any could change the folder (rank 0 passes init_distributed only once all have)
    discarded = state == "damaged"

    rank, _ = init_distributed(device)
    corpus_dir = run_dir / CORPUS if spec is not None else Path(corpus_dir)
    record = {"command": "train", "train": cfg.hashed(), "corpus_dir": str(corpus_dir)}
    last_step = [(checkpoint_step(run_dir) or 0) if resume and not discarded else 0]   # the step Ctrl-C reports

    def tracked(step, info):
        last_step[0] = step
        if progress is not None and rank == 0:
            progress(step, info)

    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    lock = folder_lock(run_dir) if rank == 0 else contextlib.nullcontext()
    with lock:
        try:
            note = ""
            if rank == 0:
                note, discarded = _ready_folder(runs_dir, cfg, record, spec, world, sample_progress)
            barrier()
            # Decided again under the lock: another run may have finished or checkpointed
            # between the checks above and taking the lock.  Every rank sees the same folder.
            done = _already_trained(run_dir, rank, t0, note)
            if done is not None:
                return done
            resume = resume and not discarded
            ensure_resumable(run_dir, resume)
            res = train(cfg, corpus_dir, run_dir, resume=resume, progress=tracked)
            res.note = note
        except KeyboardInterrupt:
            raise Interrupted(run_dir, last_step[0], rank) from None
    res.elapsed_s = time.perf_counter() - t0
    return res


def train_world(preset: str | None = "random", world_seed: int = 0, overrides=None, world_file=None, *,
                n_docs: int = 2000, doc_length: int = 1024, corpus_seed: int = 0, runs_dir="runs",
                resume: bool = False, progress=None, sample_progress=None, **config) -> RunResult:
    """``simkernel train`` without ``--corpus`` as one call: the world (``preset`` at
    ``world_seed`` with ``overrides``, default the random preset with concentration 0.1, or
    ``world_file``), a corpus of ``n_docs`` x ``doc_length`` symbols sampled with ``corpus_seed``
    into the run folder, and ``config`` (any other :class:`TrainConfig` field: model, seed,
    target_gap, ...).  Gives the same run folder as the command with the same options."""
    from .presets import load_world

    if preset == "random" and overrides is None and world_file is None:
        overrides = {"concentration": "0.1"}        # the command's default world
    if world_file is not None:
        preset = None
    unknown = sorted(set(config) - set(TrainConfig.__dataclass_fields__) - {"corpus"})
    if unknown:
        raise ValueError(f"unknown training option {unknown[0]!r}; allowed: "
                         f"{', '.join(f for f in TrainConfig.__dataclass_fields__ if f != 'corpus')}")
    world, source = load_world(preset, world_seed, overrides, world_file)
    cfg = TrainConfig(corpus=sampled_corpus(source, n_docs, doc_length, corpus_seed), **config)
    return run(cfg, runs_dir, world=world, resume=resume, progress=progress, sample_progress=sample_progress)
