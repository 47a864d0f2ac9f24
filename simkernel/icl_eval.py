"""In-context learning of a trained model against the exact Bayesian posterior predictive and
the theory kernel estimator.

For each number of demonstrations n the same prompts (sampled once with N = max(n)
demonstrations, then cut to n by ``Prompts.truncated``) are given to

    the model   its next-symbol distribution at the last position (after x_test), restricted
                to the world's labels and renormalised (the vocabulary is the world's symbols,
                so the prompt tokens are the input ids as they are);
    exact Bayes ``bayes.icl_curve(...).predictive[:, n]`` restricted to the labels;
    the oracle  P(y | x_test, true concept) restricted to the labels;
    the kernel  the theory kernel's estimate after the n demonstrations
                (``convergence.kernel_estimates``, with ``simkernel converge``'s defaults:
                theory kernel, belief features, ridge 0.01, Σ exact or from 20000 Monte Carlo
                inputs drawn with the prompt seed; both estimators), for n >= 1.

Metrics per prompt and n (``METRICS``), averaged with 95% CIs (``convergence.mean_ci``):
tv_bayes (total variation model vs Bayes), agree_bayes (same argmax), acc_model / acc_bayes /
acc_oracle (argmax == y_test), tv_oracle (model vs oracle), and for the kernel estimator
(``KERNEL_METRICS``; the normalised estimator unsuffixed, the averaged one with the suffix
``_averaged``): tv_kernel (model vs kernel), agree_kernel (same argmax), acc_kernel (the
kernel's argmax == y_test) and tv_kernel_bayes (kernel vs Bayes, the quantity ``simkernel
converge`` reports).  A prompt whose Bayes posterior is undefined (probability 0 under every
in-distribution concept) is left out of the metrics that need it.  n whose prompt is longer
than the model's context (n_positions) is skipped and reported.  The kernel metrics have no
row at n = 0 (no demonstrations to regress on); when the kernel cannot be computed for a
world (e.g. its features would exceed ``convergence.FEATURE_MEMORY_LIMIT``) they are left out
and the reason is recorded in ``info["kernel"]["skipped"]``.

torch is imported inside the functions that need it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import bayes, kernel
from .convergence import kernel_estimates, mean_ci, metrics, restrict
from .sampling import sample_prompt_set
from .world import World

BASE_METRICS = ("tv_bayes", "agree_bayes", "acc_model", "acc_bayes", "acc_oracle", "tv_oracle")
#: The kernel estimator's settings: ``simkernel converge``'s defaults, so that tv_kernel_bayes
#: here is the tv that converge reports for the same world, prompts and seed.
KERNEL_OPTIONS = {"kernel": "theory", "estimators": kernel.ESTIMATORS, "features": "belief",
                  "ridge": 0.01, "n_samples": 20_000}
_KERNEL_BASE = ("tv_kernel", "agree_kernel", "acc_kernel", "tv_kernel_bayes")


def kernel_metric(name: str, estimator: str) -> str:
    """'tv_kernel' for the normalised estimator (a distribution, like the model's), with the
    suffix '_averaged' for the averaged one."""
    return name if estimator == "normalised" else f"{name}_{estimator}"


KERNEL_METRICS = tuple(kernel_metric(m, e) for e in ("normalised", "averaged") for m in _KERNEL_BASE)
METRICS = BASE_METRICS + KERNEL_METRICS
COLUMNS = ("n_demos", "concepts", "metric", "mean", "ci_low", "ci_high", "n_prompts")
DEFAULT_N_DEMOS = (0, 1, 2, 4, 8, 16, 32, 64)


def prompt_length(n: int, example_length: int) -> int:
    """Symbols in a prompt of n demonstrations (each x, y, delimiter) then x_test."""
    return n * (example_length + 1) + example_length - 1


def context_of(model) -> int | None:
    """The model's n_positions (None when it has no such limit)."""
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "n_positions", None)
    return int(n) if n is not None else None


def default_concepts(world: World) -> list:
    """['id', 'ood'] when the world has prior-0 concepts, else ['prior']."""
    return ["id", "ood"] if (world.prior == 0).any() else ["prior"]


def model_predictive(model, tokens, labels, device="cpu", batch_size: int = 64) -> np.ndarray:
    """(B, L): the model's next-symbol distribution after the last token of each row,
    restricted to ``labels`` and renormalised.  ``model(input_ids=x).logits`` is (B, T, V)."""
    import torch

    tokens = np.asarray(tokens)
    labels = np.asarray(labels)
    out = np.empty((tokens.shape[0], labels.size))
    with torch.no_grad():
        for a in range(0, tokens.shape[0], batch_size):
            x = torch.as_tensor(tokens[a:a + batch_size].astype(np.int64), device=device)
            logits = model(input_ids=x).logits[:, -1].float()
            lp = torch.log_softmax(logits, dim=-1)[:, torch.as_tensor(np.array(labels, dtype=np.int64), device=device)]
            out[a:a + batch_size] = torch.softmax(lp, dim=-1).cpu().double().numpy()
    return out


def evaluate(model, world: World, n_demos_list=DEFAULT_N_DEMOS, example_length: int = 3,
             n_prompts: int = 200, seed: int = 0, concepts=None, device="cpu",
             batch_size: int = 64, progress=None) -> tuple[list[dict], dict]:
    """Tidy rows (``COLUMNS``) and an info dict: skipped n, impossible prompts per group, and
    ``kernel``: the estimator's options, Σ per group and, per group, why it was skipped.

    ``concepts``: a str or list of 'prior' / 'id' / 'ood' / concept index; default
    :func:`default_concepts`.  The model is put in eval mode."""
    ns = sorted(set(int(n) for n in n_demos_list))
    if not ns or ns[0] < 0:
        raise ValueError(f"n_demos must be integers >= 0, got {n_demos_list!r}")
    groups = default_concepts(world) if concepts is None else (
        [concepts] if isinstance(concepts, (str, int)) else list(concepts))
    ctx = context_of(model)
    skipped = [n for n in ns if ctx is not None and prompt_length(n, example_length) > ctx]
    keep = [n for n in ns if n not in skipped]
    if not keep:
        raise ValueError(f"every prompt is longer than the model's context ({ctx} symbols): with example "
                         f"length {example_length}, n = {ns[0]} needs {prompt_length(ns[0], example_length)}")
    if hasattr(model, "eval"):
        model.eval()
    labels = world.labels
    idx = np.full(world.n_symbols, -1)
    idx[labels] = np.arange(len(labels))
    kopts = dict(KERNEL_OPTIONS, estimators=list(KERNEL_OPTIONS["estimators"]))
    rows, info = [], {"skipped_n": skipped, "context": ctx, "impossible_prompts": {}, "groups": [str(g) for g in groups],
                      "kernel": {"options": kopts, "sigma": {}, "skipped": {}}}
    tick = progress or (lambda _msg: None)
    for g in groups:
        prompts = sample_prompt_set(world, n_prompts, keep[-1], example_length, seed=seed, concepts=g)
        curve = bayes.icl_curve(world, prompts)
        kest = None
        if keep[-1] < 1:
            info["kernel"]["skipped"][str(g)] = "no n >= 1: the kernel estimate needs a demonstration"
        else:
            tick(f"{g}: kernel estimator")
            try:
                kest, kinfo = kernel_estimates(world, prompts, (kopts["kernel"],), kopts["estimators"],
                                               features=kopts["features"], n_samples=kopts["n_samples"],
                                               ridge=kopts["ridge"], seed=seed)
                info["kernel"]["sigma"][str(g)] = kinfo[kopts["kernel"]]
            except ValueError as e:
                # the model comparison with Bayes stands on its own; only the kernel rows go
                info["kernel"]["skipped"][str(g)] = " ".join(str(e).split())
        y = idx[prompts.y_test]
        oracle = restrict(curve.oracle, labels)                                  # (B, L)
        ok_oracle = np.isfinite(oracle).all(-1)
        bad_any = np.zeros(len(y), bool)
        for n in keep:
            tick(f"{g}: n = {n}")
            q = model_predictive(model, prompts.truncated(n).tokens, labels, device, batch_size)
            p = restrict(curve.predictive[:, n], labels)
            ok = np.isfinite(p).all(-1)
            bad_any |= ~ok
            mb = metrics(np.where(ok[:, None], p, 0.0), q, y)
            mo = metrics(np.where(ok_oracle[:, None], oracle, 0.0), q, y)
            per = {"tv_bayes": np.where(ok, mb["tv"], np.nan),
                   "agree_bayes": np.where(ok, mb["agree"], np.nan),
                   "acc_model": mb["acc"],
                   "acc_bayes": np.where(ok, (p.argmax(-1) == y).astype(float), np.nan),
                   "acc_oracle": np.where(ok_oracle, (oracle.argmax(-1) == y).astype(float), np.nan),
                   "tv_oracle": np.where(ok_oracle, mo["tv"], np.nan)}
            if kest is not None and n >= 1:
                for est in kopts["estimators"]:
                    e = kest[(kopts["kernel"], est)][:, n - 1]                       # (B, L)
                    mk = metrics(e, q, y)
                    per[kernel_metric("tv_kernel", est)] = mk["tv"]
                    per[kernel_metric("agree_kernel", est)] = mk["agree"]
                    per[kernel_metric("acc_kernel", est)] = (e.argmax(-1) == y).astype(float)
                    per[kernel_metric("tv_kernel_bayes", est)] = np.where(ok, metrics(np.where(ok[:, None], p, 0.0),
                                                                                      e, y)["tv"], np.nan)
            for metric in (m for m in METRICS if m in per):
                m, lo, hi, cnt = mean_ci(per[metric])
                rows.append({"n_demos": n, "concepts": str(g), "metric": metric, "mean": float(m),
                             "ci_low": float(lo), "ci_high": float(hi), "n_prompts": int(cnt)})
        info["impossible_prompts"][str(g)] = int(bad_any.sum())
    return rows, info


# ---------------------------------------------------------------------- run folders
def run_paths(run_dir) -> tuple[Path, Path]:
    """(model folder, world.npz) of a training run folder; one-line ValueErrors when missing.
    The world is the corpus's world.npz: the corpus folder named in config.json (as written,
    then relative to the run folder's parent's parent), else run_dir/corpus."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run folder {str(run_dir)!r} does not exist")
    model_dir = run_dir / "checkpoint" / "model"
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"run folder {str(run_dir)!r} has no checkpoint (checkpoint/model/config.json); "
                         f"train it first with `simkernel train`")
    cands = []
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
        if cfg.get("corpus_dir"):
            c = Path(cfg["corpus_dir"])
            cands += [c, run_dir.parent.parent / c] if not c.is_absolute() else [c]
    except (OSError, ValueError, AttributeError):
        pass
    cands.append(run_dir / "corpus")
    for c in cands:
        if (c / "world.npz").is_file():
            return model_dir, c / "world.npz"
    raise ValueError(f"run folder {str(run_dir)!r}: cannot find its corpus's world.npz (looked in "
                     f"{', '.join(repr(str(c)) for c in cands)})")


def load_run(run_dir, device="cpu"):
    """(model in eval mode on ``device``, world, model folder, world file) of a run folder."""
    from . import model as model_mod

    model_dir, world_file = run_paths(run_dir)
    try:
        model = model_mod.load_model(model_dir, device=device)
    except Exception as e:      # transformers / safetensors raise many types on a damaged folder
        raise ValueError(f"cannot load the model in {str(model_dir)!r} ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:120]})") from None
    return model, World.load(world_file), model_dir, world_file
