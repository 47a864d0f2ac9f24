"""In-context learning of a trained model against the exact Bayesian posterior predictive, the
theory kernel estimator and the label-frequency baseline.

For each number of demonstrations n the same prompts (sampled once with N = max(n)
demonstrations, then cut to n by ``Prompts.truncated``) are given to

    the model   its next-symbol distribution at the last position (after x_test), restricted
                to the world's labels and renormalised (the vocabulary is the world's symbols,
                so the prompt tokens are the input ids as they are);
    exact Bayes ``bayes.icl_curve(...).predictive[:, n]`` restricted to the labels;
    the oracle  P(y | x_test, true concept) restricted to the labels;
    the kernel  the theory kernel's estimate after the n demonstrations
                (``kernel.kernel_estimates``, with ``simkernel converge``'s defaults:
                theory kernel, belief features, ridge 0.01, Σ exact or from 20000 Monte Carlo
                inputs drawn with the prompt seed; every estimator), for n >= 1;
    label frequencies  the frequency kernel K ≡ 1 in the same call: the share of each label
                among the n demonstrations, the null model a kernel has to beat (n >= 1).

Metrics per prompt and n (``METRICS``), averaged with 95% CIs (``metrics.mean_ci``):
tv_bayes (total variation model vs Bayes), agree_bayes (same argmax), acc_model / acc_bayes /
acc_oracle (argmax == y_test), tv_oracle (model vs oracle); for the theory kernel
(``KERNEL_METRICS``; the normalised estimator unsuffixed, the others with the suffix
``_averaged`` / ``_clipped``): tv_kernel (model vs kernel), agree_kernel (same argmax),
acc_kernel (the kernel's argmax == y_test) and tv_kernel_bayes (kernel vs Bayes, the quantity
``simkernel converge`` reports); for the label frequencies (``FREQUENCY_METRICS``, one
estimator: every form is the same distribution when K ≡ 1): tv_frequency, agree_frequency,
acc_frequency and tv_frequency_bayes, named likewise.

Directions (``DIRECTION_METRICS``, n >= 1): distances say how far the model is from each
reference, not whether it departs from exact Bayes the way the kernel does.  Per prompt, with p
exact Bayes, q the model, k the theory kernel's normalised estimate (the one tv_kernel uses) and f
the label frequencies (all (L,) over the labels):

    dir_kernel     Pearson correlation over the L labels of q − p and k − p
    dir_frequency  the same with f − p in place of k − p (the reference direction)
    dir_gap        dir_kernel − dir_frequency of the same prompt (paired)

NaN where Bayes is undefined or either departure is constant over the labels (zero variance,
up to ``CONSTANT_ATOL``, the float32 round-off of a model's logits: e.g. a model that equals
exact Bayes, or a kernel estimate that does; two-label departures of distributions are
±(a, −a), so their correlation is ±1).  A row is the mean over the prompts where
the metric is defined (``n_prompts`` counts them).

Every argmax comparison is tie-fair (``metrics.tie_agreement`` / ``metrics.tie_accuracy``): an
argmax tie among m labels scores 1/m, the expected score of a uniformly random tie-break.  The
label frequencies tie whenever two labels have the same count, and a normalised kernel
estimate whose kernel sum is <= 0 is uniform (a tie among all labels), so the lowest-index
argmax would credit label 0 with every such prompt.

A prompt whose Bayes posterior is undefined (probability 0 under every in-distribution
concept) is left out of the metrics that need it.  n whose prompt is longer than the model's
context (n_positions) is skipped and reported.  The kernel and frequency metrics have no row
at n = 0 (no demonstrations to regress on).  When the theory kernel cannot be computed for a
world (e.g. its features would exceed ``kernel.FEATURE_MEMORY_LIMIT``) its metrics are
left out, the reason is recorded in ``info["kernel"]["skipped"]``, and the label frequencies
(which need no features) are still reported.

torch is imported inside the functions that need it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import bayes, kernel
from .constants import DEFAULT_N_SAMPLES, DEFAULT_RIDGE, ICL_COLUMNS
from .kernel import kernel_estimates
from .metrics import compare, mean_ci, restrict, tie_accuracy, tie_agreement
from .sampling import prompt_length, sample_prompt_set  # noqa: F401  (prompt_length re-exported)
from .world import World

BASE_METRICS = ("tv_bayes", "agree_bayes", "acc_model", "acc_bayes", "acc_oracle", "tv_oracle")
#: The kernel estimator's settings: ``simkernel converge``'s defaults, so that tv_kernel_bayes
#: here is the tv that converge reports for the same world, prompts and seed.  ``baseline``:
#: the kernel computed beside it in the same call (K ≡ 1, the label frequencies).
KERNEL_OPTIONS = {"kernel": "theory", "baseline": "frequency", "estimators": kernel.ESTIMATORS,
                  "features": "belief", "ridge": DEFAULT_RIDGE, "n_samples": DEFAULT_N_SAMPLES}
#: metric name -> the per-prompt score of :func:`_estimate_metrics` it holds
_KERNEL_BASE = {"tv_kernel": "tv", "agree_kernel": "agree", "acc_kernel": "acc", "tv_kernel_bayes": "tv_bayes"}


def kernel_metric(name: str, estimator: str) -> str:
    """'tv_kernel' for the normalised estimator (a distribution, like the model's), with the
    suffix '_averaged' / '_clipped' for the others."""
    return name if estimator == "normalised" else f"{name}_{estimator}"


_ESTIMATOR_ORDER = ("normalised",) + tuple(e for e in kernel.ESTIMATORS if e != "normalised")
KERNEL_METRICS = tuple(kernel_metric(m, e) for e in _ESTIMATOR_ORDER for m in _KERNEL_BASE)
#: The label-frequency baseline (the frequency kernel's normalised estimate), named like the kernel's.
_FREQUENCY_BASE = {m.replace("kernel", "frequency"): score for m, score in _KERNEL_BASE.items()}
FREQUENCY_METRICS = tuple(_FREQUENCY_BASE)
#: Per-prompt correlations of the model's departure from exact Bayes with the kernel's and the
#: label frequencies' (module docstring), and their paired difference.
DIRECTION_METRICS = ("dir_kernel", "dir_frequency", "dir_gap")
METRICS = BASE_METRICS + KERNEL_METRICS + FREQUENCY_METRICS + DIRECTION_METRICS
#: A departure whose centred L2 norm over the labels is at most this counts as constant (its
#: correlation undefined): the model's distribution comes from float32 logits, whose round-off
#: alone leaves departures near 1e-7 that point nowhere.
CONSTANT_ATOL = 1e-6
COLUMNS = ICL_COLUMNS
#: icl_vs_bayes.csv's dtypes (``results.Table``; concepts is set per result, see IclEvalRun.tables)
DTYPES = {"n_demos": "int", "mean": "float", "ci_low": "float", "ci_high": "float", "n_prompts": "int"}


def _as_label(v):
    """A concepts value as its CSV cell reads back: an integer where it is one ('2' -> 2)."""
    return int(v) if isinstance(v, str) and v.lstrip("-").isdigit() else v
DEFAULT_N_DEMOS = (0, 1, 2, 4, 8, 16, 32, 64)


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


def departure_correlation(a: np.ndarray, b: np.ndarray, atol: float = CONSTANT_ATOL) -> np.ndarray:
    """Per row, the Pearson correlation over the last axis of a (B, L) and b (B, L): (B,); NaN
    where a row of either is not finite or constant (centred L2 norm <= ``atol``)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    ok = np.isfinite(a).all(-1) & np.isfinite(b).all(-1)
    a = np.where(ok[:, None], a, 0.0)
    b = np.where(ok[:, None], b, 0.0)
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    ok &= (na > atol) & (nb > atol)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(-1) / (na * nb)
    # round-off can leave |r| a hair above 1
    return np.where(ok, np.clip(r, -1.0, 1.0), np.nan)


def _estimate_metrics(e, q, p, ok, y) -> dict:
    """One estimate e (B, L) against the model q (B, L), exact Bayes p (B, L; rows ``ok``) and
    y (B,): {'tv', 'agree', 'acc', 'tv_bayes'} per prompt, tie-fair."""
    return {"tv": 0.5 * np.abs(q - e).sum(-1), "agree": tie_agreement(q, e), "acc": tie_accuracy(e, y),
            "tv_bayes": np.where(ok, 0.5 * np.abs(np.where(ok[:, None], p, 0.0) - e).sum(-1), np.nan)}


def _estimates(world, prompts, kopts, seed, info, g, kernel_set=None):
    """The theory kernel's and the label frequencies' estimates, {(kernel, estimator): (B, N, L)}
    (the theory kernel's left out, with the reason in ``info``, when it cannot be computed)."""
    common = dict(features=kopts["features"], n_samples=kopts["n_samples"], ridge=kopts["ridge"], seed=seed,
                  kernel_set=kernel_set)
    try:
        est, kinfo = kernel_estimates(world, prompts, (kopts["kernel"], kopts["baseline"]), kopts["estimators"],
                                      **common)
        info["kernel"]["sigma"][str(g)] = kinfo[kopts["kernel"]]
        return est
    except ValueError as e:
        # the comparisons with Bayes and with the label frequencies stand on their own
        info["kernel"]["skipped"][str(g)] = " ".join(str(e).split())
    est, _ = kernel_estimates(world, prompts, (kopts["baseline"],), ("normalised",), **common)
    return est


def reference_estimates(world: World, prompts, seed: int, info: dict, group, kopts=None, kernel_set=None) -> dict:
    """{(kernel, estimator): (B, N, L)}: the theory kernel's estimates (``KERNEL_OPTIONS``; left
    out, with the reason in ``info["kernel"]["skipped"][group]``, when it cannot be computed)
    and the label frequencies' of ``prompts`` (N >= 1 demonstrations) after n = 1..N;
    ``info["kernel"]["sigma"][group]`` gets Σ's details.  ``info`` needs the "kernel" dict of
    :func:`evaluate`'s info.  ``kernel_set``: a ``kernel.KernelSet`` of these options to reuse."""
    kopts = kopts or dict(KERNEL_OPTIONS, estimators=list(KERNEL_OPTIONS["estimators"]))
    return _estimates(world, prompts, kopts, seed, info, group, kernel_set)


def prompt_metrics(q, curve, n: int, y, labels, kest=None, kopts=None) -> dict:
    """{metric: (B,) per-prompt score} of one model's label distribution ``q`` (B, L) after n
    demonstrations, against exact Bayes and the oracle (``curve``: ``bayes.icl_curve`` of the
    prompts with N >= n demonstrations) and, for n >= 1, the estimates ``kest`` of
    :func:`reference_estimates`; ``y`` (B,) the index of y_test in ``labels``.  Metrics in
    ``METRICS`` order, those defined here; NaN where a reference is undefined (prompts
    impossible under the mixture).  The one scoring of ``icl-eval`` and ``llm_world``."""
    kopts = kopts or KERNEL_OPTIONS
    kest = kest or {}
    kname, fname = kopts["kernel"], kopts["baseline"]
    oracle = restrict(curve.oracle, labels)                                  # (B, L)
    ok_oracle = np.isfinite(oracle).all(-1)
    p = restrict(curve.predictive[:, n], labels)
    ok = np.isfinite(p).all(-1)
    mb = compare(np.where(ok[:, None], p, 0.0), q, y)
    mo = compare(np.where(ok_oracle[:, None], oracle, 0.0), q, y)
    per = {"tv_bayes": np.where(ok, mb["tv"], np.nan),
           "agree_bayes": np.where(ok, mb["agree"], np.nan),
           "acc_model": mb["acc"],
           "acc_bayes": tie_accuracy(p, y),
           "acc_oracle": tie_accuracy(oracle, y),
           "tv_oracle": np.where(ok_oracle, mo["tv"], np.nan)}
    if n >= 1:
        for est in kopts["estimators"]:
            if (kname, est) in kest:
                mk = _estimate_metrics(kest[(kname, est)][:, n - 1], q, p, ok, y)
                per.update({kernel_metric(m, est): mk[score] for m, score in _KERNEL_BASE.items()})
        if (fname, "normalised") in kest:
            mf = _estimate_metrics(kest[(fname, "normalised")][:, n - 1], q, p, ok, y)
            per.update({m: mf[score] for m, score in _FREQUENCY_BASE.items()})
        # rows where Bayes is undefined are NaN in p, hence NaN here
        for metric, key in (("dir_kernel", (kname, "normalised")), ("dir_frequency", (fname, "normalised"))):
            if key in kest:
                per[metric] = departure_correlation(q - p, kest[key][:, n - 1] - p)
        if "dir_kernel" in per and "dir_frequency" in per:
            per["dir_gap"] = per["dir_kernel"] - per["dir_frequency"]
    return {m: per[m] for m in METRICS if m in per}


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
        kest = {}
        if keep[-1] < 1:
            info["kernel"]["skipped"][str(g)] = "no n >= 1: the kernel estimate needs a demonstration"
        else:
            tick(f"{g}: kernel estimator")
            kest = _estimates(world, prompts, kopts, seed, info, g)
        y = idx[prompts.y_test]
        bad_any = np.zeros(len(y), bool)
        for n in keep:
            tick(f"{g}: n = {n}")
            q = model_predictive(model, prompts.truncated(n).tokens, labels, device, batch_size)
            bad_any |= ~np.isfinite(restrict(curve.predictive[:, n], labels)).all(-1)
            per = prompt_metrics(q, curve, n, y, labels, kest, kopts)
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


# ---------------------------------------------------------------------- simkernel icl-eval as a call
METRIC_DESCRIPTIONS = {
    "tv_bayes": "total variation (labels) between the model and the exact posterior predictive",
    "agree_bayes": "argmax of the model == argmax of exact Bayes",
    "acc_model": "argmax of the model == y_test", "acc_bayes": "argmax of exact Bayes == y_test",
    "acc_oracle": "argmax of P(y | x_test, true concept) == y_test",
    "tv_oracle": "total variation between the model and the oracle",
    "tv_kernel": "total variation between the model and the theory kernel estimate (normalised estimator; n >= 1)",
    "agree_kernel": "argmax of the model == argmax of the kernel estimate",
    "acc_kernel": "argmax of the kernel estimate == y_test",
    "tv_kernel_bayes": "total variation between the kernel estimate and exact Bayes (as `simkernel converge` "
                       "reports it)",
    "*_averaged, *_clipped": "the same with the averaged (unnormalised) and the clipped (max(K, 0)) estimators",
    "tv_frequency, agree_frequency, acc_frequency, tv_frequency_bayes": "the same for the label frequencies of "
                                                                        "the demonstrations (K ≡ 1), the baseline "
                                                                        "of every kernel",
    "dir_kernel": "per prompt, Pearson correlation over the labels of (model − exact Bayes) and (theory kernel "
                  "estimate − exact Bayes), normalised estimator; NaN (left out) where either departure is constant "
                  "over the labels or Bayes is undefined; n >= 1",
    "dir_frequency": "the same with the label frequencies' departure (label frequencies − exact Bayes): the "
                     "reference direction",
    "dir_gap": "per prompt dir_kernel − dir_frequency (paired; NaN where either is), averaged over the prompts "
               "where both are defined",
    "ties": "every agree_* and acc_* scores an argmax tie among m labels 1/m"}


@dataclass
class IclEvalRun:
    """What :func:`run` returns: ``rows`` (``COLUMNS``; floats at 6 significant digits), ``info``
    (skipped n, impossible prompts, the kernel's options), ``meta`` (the JSON: config, seed,
    versions, the run's training config, metric definitions) and the figure's ``title``."""

    rows: list
    info: dict
    meta: dict
    title: str

    FILES = ("icl_vs_bayes.csv", "icl_vs_bayes.json", "icl_vs_bayes.png")

    def tables(self) -> dict:
        """The result protocol's tables: icl_vs_bayes.csv (main; concepts: a concept group such as
        'prior', or a concept's index)."""
        from .results import Table, label_dtype

        dtypes = dict(DTYPES, concepts=label_dtype(_as_label(r["concepts"]) for r in self.rows))
        return {None: Table(self.FILES[0], COLUMNS, dtypes, self.rows)}

    def write(self, out, copy_to=None) -> list:
        """Publish ``FILES`` into the folder ``out`` (and copy them into ``copy_to``)."""
        from .plots import plot_icl_vs_bayes
        from .store import check_results_dir, publish, write_csv, write_json

        out = check_results_dir(Path(out))
        if copy_to is not None:
            check_results_dir(Path(copy_to))
        meta = dict(self.meta, config=dict(self.meta["config"], out=str(out)))
        return publish(out, {self.FILES[0]: lambda p: write_csv(p, self.rows, COLUMNS),
                             self.FILES[1]: lambda p: write_json(p, meta),
                             self.FILES[2]: lambda p: plot_icl_vs_bayes(self.rows, p, title=self.title)},
                       copy_to=copy_to)

    def summary_lines(self) -> list[str]:
        """What ``simkernel icl-eval`` prints: skipped n, and per concept group one line per n."""
        info, rows = self.info, self.rows
        out = []
        if info["skipped_n"]:
            out.append(f"skipped n = {', '.join(map(str, info['skipped_n']))}: the prompt is longer than the "
                       f"model's context ({info['context']} symbols)")
        for g, why in info["kernel"]["skipped"].items():
            out.append(f"concepts {g}: no kernel estimator ({why})")
        for g in self.meta["config"]["concepts"]:
            out.append(f"concepts {g}: total variation over the labels; agreement and accuracy of the argmax "
                       f"(a tie among m labels scores 1/m)")
            out.append(f"  {'n':>5}  {'TV(model,Bayes)':>15}  {'TV(model,kernel)':>16}  {'TV(kernel,Bayes)':>16}  "
                       f"{'TV(freq,Bayes)':>14}  {'agree Bayes':>11}  acc model / Bayes / kernel / freq / oracle")
            sel = {(r["n_demos"], r["metric"]): r["mean"] for r in rows if r["concepts"] == str(g)}
            for n in sorted({r["n_demos"] for r in rows}):
                def v(m):
                    return f"{sel[(n, m)]:.3f}" if (n, m) in sel else "-"
                out.append(f"  {n:>5}  {v('tv_bayes'):>15}  {v('tv_kernel'):>16}  {v('tv_kernel_bayes'):>16}  "
                           f"{v('tv_frequency_bayes'):>14}  {v('agree_bayes'):>11}  {v('acc_model')} / "
                           f"{v('acc_bayes')} / {v('acc_kernel')} / {v('acc_frequency')} / {v('acc_oracle')}")
        bad = {g: c for g, c in info["impossible_prompts"].items() if c}
        if bad:
            out.append(f"prompts impossible under the pretraining mixture (left out of the Bayes metrics): {bad}")
        return out


def run(run_dir, n_demos=DEFAULT_N_DEMOS, example_length: int = 3, n_prompts: int = 200, seed: int = 0,
        concepts=None, device="auto", progress=None) -> IclEvalRun:
    """``simkernel icl-eval`` as a library call: load the run folder's model and world, and
    :func:`evaluate` it.  ``concepts``: a list of 'prior' / 'id' / 'ood' / concept indices
    (default :func:`default_concepts`); ``device``: 'auto', 'cpu', 'cuda', 'cuda:N'.  Writes
    nothing."""
    import time

    from .store import provenance, world_summary
    from .device import resolve_device

    run_dir = Path(run_dir)
    run_paths(run_dir)
    dev = resolve_device(device)
    model, world, model_dir, world_file = load_run(run_dir, device=dev)
    groups = list(concepts or ()) or default_concepts(world)
    for g in groups:
        if not isinstance(g, str) and not 0 <= int(g) < world.n_concepts:
            raise ValueError(f"{g} is not a concept of this world; allowed: prior, id, ood or "
                             f"0..{world.n_concepts - 1}")
    t0 = time.perf_counter()
    rows, info = evaluate(model, world, n_demos, example_length, n_prompts, seed=seed, concepts=groups,
                          device=dev, progress=progress)
    rows = [dict(r, **{c: float(f"{r[c]:.6g}") for c in ("mean", "ci_low", "ci_high")}) for r in rows]
    title = (f"model {run_dir.name} ({model.config.n_layer} layers, d {model.config.n_embd}) vs exact Bayes "
             f"and the theory kernel; k={example_length}, {n_prompts} prompts per group, seed {seed}")
    config = {"command": "icl-eval", "run": str(run_dir), "model_dir": str(model_dir), "world_file": str(world_file),
              "n_demos": ",".join(map(str, n_demos)), "example_length": example_length, "n_prompts": n_prompts,
              "concepts": [str(g) for g in groups], "device": str(dev)}
    meta = provenance(config, seed, extra_packages=("matplotlib", "torch"))
    try:
        meta["train_config"] = json.loads((run_dir / "config.json").read_text())
        done = run_dir / "done.json"
        meta["train_done"] = json.loads(done.read_text()) if done.is_file() else None
    except (OSError, ValueError):
        pass
    meta.update(title=title, world=world_summary(world), context=info["context"], skipped_n=info["skipped_n"],
                impossible_prompts=info["impossible_prompts"], elapsed_s=round(time.perf_counter() - t0, 3),
                columns=list(COLUMNS), metrics=METRIC_DESCRIPTIONS, kernel=info["kernel"])
    return IclEvalRun(rows, info, meta, title)
