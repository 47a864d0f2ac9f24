"""Which algorithm a trained transformer runs: ``simkernel strategies CONFIG.toml``.

Two levels (docs/theory.md §23; the predictors and the attribution are ``attribution``'s):

- :func:`evaluate` one trained run along training: each concept split's prompts drawn once
  ('seen': prior > 0; 'unseen': prior 0, the concepts ``presets.with_unseen`` adds), every
  predictor computed once per split, then every checkpoint (:func:`run_checkpoints`: the
  log-scale snapshots training saved and the final checkpoint) scored on the same prompts and
  attributed.  Its result (:class:`StrategiesEval`, the result protocol) is strategies.csv
  (``EVAL_COLUMNS``) and strategies.json.  The sweep runs it as the command ``attribute``.
- :func:`run` the map: task diversity K (worlds of the ``random`` preset with K pretraining
  concepts and ``n_unseen`` prior-0 ones, from one generator), world seeds, model sizes and
  training seeds, every cell trained with snapshots and attributed through the sweep engine
  (``sweep.run``: Dask, resumable, one folder per job), then gathered into one tidy table with
  the cell's columns (``MAP_COLUMNS``) and a summary over worlds x training seeds
  (``SUMMARY_COLUMNS``: 95% t-intervals over worlds, training seeds averaged within a world).
  The config (:func:`check_map_config`; ``DEFAULT_MAP`` and ``QUICK_MAP`` are the defaults)::

      [world]                # the random preset; every key but k / seeds is a preset option
      k = [1, 4, 16, 64]     # pretraining concepts: the task-diversity axis
      seeds = [0, 1, 2]
      n_unseen = 8
      [sizes]                # name -> the model preset and its overrides
      xs = { model = "tiny", n_embd = 32 }
      [train]                # train_world options (TrainConfig fields, n_docs, doc_length, ...)
      seeds = [0, 1]
      max_steps = 512
      [eval]                 # evaluate's options
      n_demos = [1, 2, 4, 8, 15]

Nothing here prints; only the results' ``write()`` write (the map's sweep writes its own jobs).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .attribution import (CONCEPT_SPLITS, COLUMNS, DEFAULT_ALPHA, DEFAULT_ORDER, DEFAULT_PREDICTORS,
                          DEFAULT_SELECT_FRAC, FROM_PREDICT, MIXTURE_OF, NEED_DEMOS, attribute, check_predictors,
                          predictors, row, split_prompts)
from .metrics import tie_accuracy, tv, world_ci
from .validate import check_int, check_seed
from .world import World

#: Attribution rows along training need no bootstrap over prompts by default: the map's intervals
#: are over worlds and training seeds.
EVAL_N_BOOT = 20

# ---------------------------------------------------------------------- a trained run along training
#: strategies.csv: :func:`attribute`'s rows tagged with the checkpoint's step and n, plus the
#: reference rows (``REFERENCE_METRICS``).
EVAL_COLUMNS = ("step", "n_demos") + COLUMNS
EVAL_DTYPES = {"step": "int", "n_demos": "int", "concepts": "str", "predictor": "str", "metric": "str",
               "mean": "float", "ci_low": "float", "ci_high": "float", "n_prompts": "int", "n_worlds": "int"}
#: Beside the attribution, on the same held-out prompts: 'acc' (tie-fair accuracy of the argmax
#: against y_test) of predictor 'model' and of every predictor, and 'tv_oracle' (TV to the oracle)
#: of the model and of every predictor but the oracle.  They show where each predictor stands (exact
#: Bayes far from the oracle on unseen concepts); the predictors' rows repeat at every step.  And
#: 'gap' of predictor 'model': the run's validation loss minus the exact Bayes floor (nats/token)
#: at its last evaluation up to the checkpoint's step (NaN before the first), which says whether
#: the checkpoint is "trained near the Bayes loss".
REFERENCE_METRICS = ("acc", "tv_oracle", "gap")
#: A concept split's prompts: ``sampling.sample_prompt_set``'s group (icl_eval's id / ood) and the
#: offset added to the seed, so the two splits draw from different streams.
SPLIT_GROUPS = {"seen": ("id", 0), "unseen": ("ood", 1_000_003)}


def run_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """[(step, model folder)] of a training run in step order: its snapshots (``runs.snapshots``)
    and its final checkpoint (checkpoint/model), which stands in for a snapshot of the same step.
    One-line ValueError when the final checkpoint's step cannot be told."""
    from .runs import CHECKPOINT, checkpoint_step, run_status, snapshots

    run_dir = Path(run_dir)
    out = dict(snapshots(run_dir))
    final = run_dir / CHECKPOINT / "model"
    if (final / "config.json").is_file():
        step = checkpoint_step(run_dir)
        step = step if step is not None else (run_status(run_dir) or {}).get("step")
        if step is None:
            raise ValueError(f"run folder {str(run_dir)!r}: cannot tell the step of its checkpoint (no "
                             f"checkpoint/step.json, no done.json)")
        out[int(step)] = final
    return sorted(out.items())


def trained_context(run_dir) -> int:
    """The block size the run trained on (checkpoint/train_config.json, else config.json's
    'train'): the longest prompt whose every position the model was trained at."""
    run_dir = Path(run_dir)
    for f, key in ((run_dir / "checkpoint" / "train_config.json", None), (run_dir / "config.json", "train")):
        try:
            cfg = json.loads(f.read_text())
            return int((cfg[key] if key else cfg)["block_size"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    raise ValueError(f"run folder {str(run_dir)!r}: cannot read the block size it trained on "
                     f"(checkpoint/train_config.json or config.json)")


def _check_splits(concepts, world, run_dir) -> tuple:
    names = (concepts,) if isinstance(concepts, str) else tuple(concepts)
    bad = [c for c in names if c not in CONCEPT_SPLITS]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(f"concepts must be a non-empty list of distinct 'seen' / 'unseen', got {list(names)!r}")
    if "unseen" in names and not (world.prior == 0).any():
        raise ValueError(f"the world of run {str(run_dir)!r} has no unseen concepts (prior 0): train on "
                         f"presets.with_unseen(world, n_unseen, seed), or pass concepts=('seen',)")
    return names


def _check_ns(n_demos, names, example_length, block, run_dir=None) -> list[int]:
    """n_demos as a sorted list; one-line error for an n whose prompt is beyond the trained context
    (of the run folder ``run_dir``, or of the map's runs when None)."""
    from .sampling import prompt_length
    from .validate import check_ints

    ns = check_ints("n_demos", n_demos, 1 if set(names) & set(NEED_DEMOS) else 0)
    if prompt_length(ns[-1], example_length) > block:
        fit = (block - example_length + 1) // (example_length + 1)
        raise ValueError(f"n_demos {ns[-1]} needs prompts of {prompt_length(ns[-1], example_length)} symbols, beyond "
                         f"the trained context{'' if run_dir is None else f' of run {str(run_dir)!r}'} "
                         f"(block_size {block}); with example length "
                         f"{example_length} at most n = {fit}")
    return ns


def _check_world(run_dir, world, checkpoints):
    """The run's world (its corpus's world.npz), checked against ``world`` (when given) and against
    each checkpoint's vocabulary; one-line errors."""
    from .icl_eval import run_paths
    from .phenomena.common import same_world

    _, world_file = run_paths(run_dir)
    own = World.load(world_file)
    if world is not None and not same_world(own, world):
        raise ValueError(f"run folder {str(run_dir)!r} was trained on another world ({world_file} holds "
                         f"{own!r}, not the world given)")
    for step, folder in checkpoints:
        try:
            vocab = int(json.loads((Path(folder) / "config.json").read_text())["vocab_size"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ValueError(f"checkpoint {str(folder)!r} has no readable config.json") from None
        if vocab != own.n_symbols:
            raise ValueError(f"checkpoint {str(folder)!r} (step {step}) is from another world: its vocabulary has "
                             f"{vocab} symbols, the run's world {own.n_symbols}")
    return own


def _pick_steps(checkpoints, steps, run_dir):
    if not checkpoints:
        raise ValueError(f"run folder {str(run_dir)!r} has no checkpoint; train it first")
    if steps is None:
        return checkpoints
    from .validate import check_ints

    want = check_ints("steps", steps, 0)
    have = dict(checkpoints)
    missing = [s for s in want if s not in have]
    if missing:
        raise ValueError(f"step {missing[0]} is not among the checkpoints of run {str(run_dir)!r}: "
                         f"{', '.join(str(s) for s, _ in checkpoints)}")
    return [(s, have[s]) for s in want]


def gaps_at(run_dir, steps) -> dict:
    """{step: the run's gap to the exact Bayes floor (nats/token) at its last evaluation at or
    before that step}, NaN before the first; the final checkpoint's from done.json when it has one."""
    from .runs import read_metrics, run_status

    evals = sorted((int(r["step"]), float(r["gap"])) for r in read_metrics(run_dir)
                   if isinstance(r.get("gap"), (int, float)) and "step" in r)
    done = run_status(Path(run_dir)) or {}
    out = {}
    for s in steps:
        past = [g for t, g in evals if t <= s]
        out[s] = past[-1] if past else math.nan
        if done.get("step") == s and isinstance(done.get("gap"), (int, float)):
            out[s] = float(done["gap"])
    return out


def _load_model(folder, device):
    from . import model as model_mod

    try:
        return model_mod.load_model(folder, device=device)
    except Exception as e:      # transformers / safetensors raise many types on a damaged folder
        raise ValueError(f"cannot load the model in {str(folder)!r} ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:120]})") from None


def _reference_rows(split, q, preds, y, held, tags) -> list[dict]:
    """``REFERENCE_METRICS`` rows of the model ``q`` (P, L) and of each predictor on the held-out prompts."""
    units = np.zeros(int(held.sum()), np.int64)
    rows = []
    for name, dist in {"model": q, **preds}.items():
        d = dist[held]
        per = {"acc": tie_accuracy(d, y[held])}
        if "oracle" in preds and name != "oracle":
            ok = np.isfinite(d).all(-1)
            per["tv_oracle"] = np.where(ok, tv(np.where(ok[:, None], d, 0.0), preds["oracle"][held]), np.nan)
        for metric, x in per.items():
            m, lo, hi, n, nw = world_ci(x[:, None], units)
            rows.append(row(split, name, metric, m[0], lo[0], hi[0], n[0], nw[0], tags))
    return rows


@dataclass
class StrategiesEval:
    """What :func:`evaluate` returns: ``rows`` (``EVAL_COLUMNS``) and ``meta`` (config, seed,
    versions, the world, the checkpoints scored, the trained context, where the time went)."""

    rows: list
    meta: dict

    FILES = ("strategies.csv", "strategies.json")

    def tables(self) -> dict:
        """``{None: strategies.csv}`` with typed columns (``results.Table``)."""
        from .results import Table

        return {None: Table(self.FILES[0], EVAL_COLUMNS, EVAL_DTYPES, self.rows)}

    def write(self, out) -> list:
        """Publish strategies.csv and strategies.json into the folder ``out``; returns the paths."""
        from .store import check_results_dir, publish, write_csv, write_json

        out = check_results_dir(Path(out))
        return publish(out, {self.FILES[0]: lambda p: write_csv(p, self.rows, EVAL_COLUMNS),
                             self.FILES[1]: lambda p: write_json(p, self.meta)})

    def summary_lines(self) -> list[str]:
        """Per concept split and n: one line per step with the model's TV to each predictor and the
        mixture, and the predictor closest to the model."""
        names = self.meta["config"]["predictors"] + ["mixture"]
        tvs = {(r["concepts"], r["n_demos"], r["step"], r["predictor"]): r["mean"] for r in self.rows
               if r["metric"] == "tv" and r["predictor"] != "model"}
        out = []
        for split in self.meta["config"]["concepts"]:
            for n in self.meta["config"]["n_demos"]:
                out.append(f"concepts {split}, n = {n}: TV(model, ·) on held-out prompts")
                out.append(f"  {'step':>8}  " + "  ".join(f"{p:>9}" for p in names) + "  closest")
                for step in self.meta["steps"]:
                    v = {p: tvs.get((split, n, step, p), math.nan) for p in names}
                    best = min((p for p in names[:-1] if math.isfinite(v[p])), key=v.get, default="-")
                    out.append(f"  {step:>8}  " + "  ".join(f"{v[p]:>9.4f}" for p in names) + f"  {best}")
        return out


def _prompt_sets(world, splits, ns, names, n_prompts, example_length, seed, order, alpha, tick):
    """{split: (prompts, predictors, y)}: each split's prompts drawn once with max(ns)
    demonstrations and every predictor computed ONCE on them (:func:`predictors`)."""
    from .phenomena.common import context
    from .sampling import sample_prompt_set

    ctx = context(world, example_length, seed=seed) if set(names) & set(FROM_PREDICT) else None
    idx = np.full(world.n_symbols, -1)
    idx[world.labels] = np.arange(world.labels.size)
    sets = {}
    for split in splits:
        group, offset = SPLIT_GROUPS[split]
        tick(f"{split}: prompts and predictors")
        prompts = sample_prompt_set(world, n_prompts, ns[-1], example_length, seed=seed + offset, concepts=group)
        sets[split] = (prompts, predictors(world, prompts, names, ns, order, alpha, seed, ctx), idx[prompts.y_test])
    return sets


def evaluate(run_dir, *, n_demos, n_prompts: int = 200, concepts=CONCEPT_SPLITS, steps=None, seed: int = 0,
             device="cpu", example_length: int = 3, predictor_names=DEFAULT_PREDICTORS, mixture_of=MIXTURE_OF,
             order: int = DEFAULT_ORDER, alpha: float = DEFAULT_ALPHA, n_boot: int = EVAL_N_BOOT,
             select_frac: float = DEFAULT_SELECT_FRAC, world=None, progress=None) -> StrategiesEval:
    """Which predictor a trained run follows, at every checkpoint it saved.

    Loads the run folder's world (its corpus's world.npz; checked against ``world`` when given),
    draws ``n_prompts`` prompts per concept split in ``concepts`` ('seen': the pretraining concepts,
    prior > 0; 'unseen': prior 0, see ``presets.with_unseen``) with max(n_demos) demonstrations of
    length ``example_length``, computes the predictors ``predictor_names`` ONCE per split for every
    n in ``n_demos``, then for each checkpoint (``run_checkpoints``: the snapshots and the final
    checkpoint; ``steps`` picks some) scores the model's label distribution on the same prompts
    (``icl_eval.model_predictive``) and :func:`attribute` s it (``mixture_of``, ``n_boot``,
    ``select_frac``, ``seed``), with the ``REFERENCE_METRICS`` rows beside.  Only prompts within the
    trained context (the run's block size) are scored.  Every check (the run folder, its world and
    checkpoints, the arguments) raises a one-line ValueError before any prompt is drawn or model run.
    ``progress``: callable(message).  Writes nothing."""
    import time

    from .device import resolve_device
    from .icl_eval import model_predictive
    from .store import provenance, world_summary

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    names, comps = check_predictors(predictor_names, "predictor_names"), check_predictors(mixture_of, "mixture_of")
    if [c for c in comps if c not in names]:
        raise ValueError(f"mixture_of names {[c for c in comps if c not in names][0]!r}, which predictor_names lacks")
    n_prompts, seed = check_int("n_prompts", n_prompts, 2), check_seed("seed", seed)
    example_length = check_int("example_length", example_length, 2)
    if not run_dir.is_dir():
        raise ValueError(f"run folder {str(run_dir)!r} does not exist")
    checkpoints = _pick_steps(run_checkpoints(run_dir), steps, run_dir)
    own = _check_world(run_dir, world, checkpoints)
    splits = _check_splits(concepts, own, run_dir)
    block = trained_context(run_dir)
    ns = _check_ns(n_demos, names, example_length, block, run_dir)
    dev = resolve_device(device)
    tick = progress or (lambda _msg: None)
    gaps = gaps_at(run_dir, [s for s, _ in checkpoints])
    sets = _prompt_sets(own, splits, ns, names, n_prompts, example_length, seed, order, alpha, tick)
    t_pred = time.perf_counter() - t0
    rows, t_model = [], 0.0
    for step, folder in checkpoints:
        tick(f"step {step}: model and attribution")
        t1 = time.perf_counter()
        model = _load_model(folder, dev)
        qs = {(s, n): model_predictive(model, sets[s][0].truncated(n).tokens, own.labels, dev) for s in splits for n in ns}
        t_model += time.perf_counter() - t1
        for (split, n), q in qs.items():
            prompts, preds, y = sets[split]
            pn = {k: v[:, ns.index(n)] for k, v in preds.items()}
            tags = {"step": step, "n_demos": n}
            rows += attribute(q, pn, concepts=[split] * len(q), mixture_of=comps, select_frac=select_frac,
                              n_boot=n_boot, seed=seed, tags=tags)
            held = ~split_prompts(len(q), np.zeros(len(q), np.int64), select_frac, seed)
            rows += _reference_rows(split, q, pn, y, held, tags)
            g = gaps.get(step, math.nan)
            rows.append(row(split, "model", "gap", g, g, g, 0, 1, tags))
    rows = [dict(r, **{c: float(f"{r[c]:.6g}") for c in ("mean", "ci_low", "ci_high")}) for r in rows]
    config = {"command": "strategies", "run": str(run_dir), "n_demos": ns, "n_prompts": n_prompts,
              "concepts": list(splits), "example_length": example_length, "predictors": list(names),
              "mixture_of": list(comps), "order": order, "alpha": alpha, "n_boot": n_boot, "select_frac": select_frac,
              "device": str(dev)}
    meta = provenance(config, seed, extra_packages=("torch",))
    meta.update(world=world_summary(own), steps=[s for s, _ in checkpoints], context=block,
                checkpoints={str(s): str(f) for s, f in checkpoints}, columns=list(EVAL_COLUMNS),
                elapsed_s={"total": round(time.perf_counter() - t0, 3), "predictors": round(t_pred, 3),
                           "model": round(t_model, 3)})
    return StrategiesEval(rows, meta)


# ---------------------------------------------------------------------- the map
#: The default map: 4 values of K x 3 worlds x 2 sizes x 2 training seeds = 48 runs of 768 steps
#: (1.6 M tokens each, from a corpus of 1 M: under 2 epochs, so no run memorises its documents)
#: with snapshots at 1, 2, 4, ..., 512 and the last step (experiments/strategies/default.toml holds the
#: same).  Blocks of 64 symbols: with example length 3, n <= 15 demonstrations fit the trained context.
DEFAULT_MAP = {
    "world": {"k": [1, 4, 16, 64], "seeds": [0, 1, 2], "n_unseen": 8, "n_states": 8, "n_symbols": 12,
              "concentration": 0.1},
    "sizes": {"xs": {"model": "tiny", "n_embd": 32}, "s": {"model": "tiny"}},
    "train": {"seeds": [0, 1], "n_docs": 4000, "doc_length": 256, "block_size": 64, "batch_size": 32,
              "max_steps": 768, "lr": 0.002, "warmup_steps": 32, "eval_every": 64, "target_gap": 1e-9,
              "snapshot_steps": "log"},
    "eval": {"n_demos": [1, 2, 4, 8, 15], "n_prompts": 200, "example_length": 3, "n_boot": EVAL_N_BOOT, "seed": 0},
}
#: CI's map (``--quick``): two K, one world, one training seed, the two sizes, 48 steps.
QUICK_MAP = {
    "world": {"k": [2, 8], "seeds": [0], "n_unseen": 4, "n_states": 6, "n_symbols": 10, "concentration": 0.1},
    "sizes": {"xs": {"model": "tiny", "n_embd": 32, "n_layer": 1}, "s": {"model": "tiny", "n_embd": 32}},
    "train": {"seeds": [0], "n_docs": 200, "doc_length": 128, "block_size": 32, "batch_size": 16, "max_steps": 48,
              "warmup_steps": 8, "eval_every": 16, "eval_blocks": 16, "target_gap": 1e-9, "snapshot_steps": "log"},
    "eval": {"n_demos": [1, 2, 4, 7], "n_prompts": 40, "example_length": 3, "n_boot": 5, "seed": 0},
}
MAP_KEYS = ("description", "world", "sizes", "train", "eval")
#: Concepts a map's world may hold (pretraining plus unseen): exact Bayes and the kernel run one
#: forward pass per concept per prompt, so the cost grows with them.
MAX_CONCEPTS = 512
#: The cell a map row belongs to, before :data:`EVAL_COLUMNS`.
MAP_COLUMNS = ("k", "size", "world_seed", "train_seed")
MAP_DTYPES = {"k": "int", "size": "str", "world_seed": "int", "train_seed": "int", **EVAL_DTYPES}
#: summary.csv: per cell of K, size, step, n, split, predictor and metric, the mean and 95%
#: t-interval over worlds (training seeds averaged within a world first), and how many worlds and
#: runs it rests on.
SUMMARY_COLUMNS = ("k", "size", "step", "n_demos", "concepts", "predictor", "metric", "mean", "ci_low", "ci_high",
                   "n_worlds", "n_runs")
SUMMARY_DTYPES = {"k": "int", "size": "str", "step": "int", "n_demos": "int", "concepts": "str", "predictor": "str",
                  "metric": "str", "mean": "float", "ci_low": "float", "ci_high": "float", "n_worlds": "int",
                  "n_runs": "int"}
#: The train_world options the map sets itself.
_MAP_TRAIN_OWN = ("preset", "world_seed", "overrides", "world_file", "model", "model_overrides", "seed", "runs_dir")


def _table(config, key) -> dict:
    block = config.get(key, {})
    if not isinstance(block, dict):
        raise ValueError(f"[{key}] must be a table, got {type(block).__name__}")
    return dict(block)


def check_map_config(config: dict, base: dict = DEFAULT_MAP) -> dict:
    """The map config with every value checked (one-line ValueErrors naming the key) and
    defaults filled in from ``base`` (:data:`DEFAULT_MAP`, or :data:`QUICK_MAP`): each of its
    tables replaces the keys it names, [sizes] as a whole.  Before anything is trained or written: the
    world (K >= 1, distinct, K + n_unseen <= MAX_CONCEPTS, every other key a random-preset option),
    the sizes (a model preset and its overrides), the training options (train_world's), and the
    evaluation (known predictors, every n inside the trained block)."""
    from .model import MODEL_PRESETS
    from .presets import EXTRA_OPTIONS, PRESETS, make_world
    from .sweep import train_allowed
    from .validate import check_ints, did_you_mean

    if not isinstance(config, dict):
        raise ValueError(f"a strategies config is a table, got {type(config).__name__}")
    unknown = sorted(set(config) - set(MAP_KEYS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} in the strategies config{did_you_mean(unknown[0], MAP_KEYS)}; "
                         f"allowed: {', '.join(MAP_KEYS)}")
    cfg = {k: dict(copy.deepcopy(base[k]), **_table(config, k)) for k in ("world", "train", "eval")}
    cfg["sizes"] = _table(config, "sizes") or copy.deepcopy(base["sizes"])
    if "description" in config:
        cfg["description"] = str(config["description"])
    world = cfg["world"]
    world["k"] = check_ints("k", world["k"], 1, distinct=True)
    world["seeds"] = check_ints("world seeds", world["seeds"], 0, distinct=True)
    world["n_unseen"] = check_int("n_unseen", world["n_unseen"], 1)
    if max(world["k"]) + world["n_unseen"] > MAX_CONCEPTS:
        raise ValueError(f"k {max(world['k'])} with n_unseen {world['n_unseen']} gives {max(world['k']) + world['n_unseen']} "
                         f"concepts; the random preset's map allows at most {MAX_CONCEPTS}")
    allowed = set(PRESETS["random"]) | set(EXTRA_OPTIONS["random"]) - {"n_concepts"}
    for key in set(world) - {"k", "seeds"}:
        if key not in allowed:
            raise ValueError(f"unknown world option {key!r}{did_you_mean(key, allowed)}; allowed: k, seeds, "
                             f"{', '.join(sorted(allowed))}")
    make_world("random", 0, **_world_options(world, world["k"][0]))      # the preset checks its values
    sizes = cfg["sizes"]
    for name, spec in sizes.items():
        if not isinstance(spec, dict) or spec.get("model") not in MODEL_PRESETS:
            raise ValueError(f"size {name!r} must be a table with model = one of {', '.join(MODEL_PRESETS)}, "
                             f"got {spec!r}")
    train = cfg["train"]
    train["seeds"] = check_ints("training seeds", train["seeds"], 0, distinct=True)
    t_allowed = train_allowed() - set(_MAP_TRAIN_OWN)
    for key in train:
        if key not in t_allowed:
            raise ValueError(f"unknown training option {key!r}{did_you_mean(key, t_allowed)}; allowed: "
                             f"{', '.join(sorted(t_allowed))} (world, size and seed come from [world] and [sizes])")
    ev = cfg["eval"]
    e_allowed = {"n_demos", "n_prompts", "example_length", "n_boot", "seed", "predictor_names", "mixture_of", "order",
                 "alpha", "select_frac", "concepts", "device"}
    for key in ev:
        if key not in e_allowed:
            raise ValueError(f"unknown eval option {key!r}{did_you_mean(key, e_allowed)}; allowed: "
                             f"{', '.join(sorted(e_allowed))}")
    names = check_predictors(ev.get("predictor_names", DEFAULT_PREDICTORS), "predictor_names")
    comps = check_predictors(ev.get("mixture_of", MIXTURE_OF), "mixture_of")
    if [c for c in comps if c not in names]:
        raise ValueError(f"mixture_of names {[c for c in comps if c not in names][0]!r}, which predictor_names lacks")
    if isinstance(ev["n_demos"], str):
        from .options import parse_n_demos
        ev["n_demos"] = parse_n_demos(ev["n_demos"], minimum=1)
    k_ex = check_int("example_length", ev.get("example_length", 3), 2)
    ev["n_demos"] = _check_ns(ev["n_demos"], names, k_ex, int(train.get("block_size", 128)))
    return cfg


def _world_options(world: dict, k: int) -> dict:
    return dict({key: v for key, v in world.items() if key not in ("k", "seeds")}, n_concepts=k)


def sweep_config(config: dict, runs_dir="runs", base: dict = DEFAULT_MAP) -> dict:
    """The ``sweep.run`` config of a map (checked, defaults from ``base``): the command
    ``attribute`` on every cell, its runs trained first into ``runs_dir`` (K through the world's
    overrides, the sizes zipped)."""
    cfg = check_map_config(config, base)
    world, train, ev = cfg["world"], dict(cfg["train"]), dict(cfg["eval"])
    seeds = train.pop("seeds")
    sizes = list(cfg["sizes"].values())
    return {"description": cfg.get("description", "simkernel strategies"), "command": "attribute",
            "options": dict(ev, device=ev.get("device", "cpu")),
            "train": dict(train, preset="random", runs_dir=str(runs_dir)),
            "grid": {"train.overrides": [_world_options(world, k) for k in world["k"]],
                     "train.world_seed": world["seeds"], "train.seed": seeds},
            "zip": {"train.model": [s["model"] for s in sizes],
                    "train.model_overrides": [{k: v for k, v in s.items() if k != "model"} for s in sizes]}}


def size_label(model: str, overrides) -> str:
    """A size's name when the map's [sizes] is not at hand: the model preset and its overrides."""
    over = overrides if isinstance(overrides, dict) else json.loads(overrides or "{}")
    return model + "".join(f" {k}={v}" for k, v in sorted(over.items()))


def cells(frame, sizes: dict | None = None):
    """The map's rows from its sweep's combined table (a DataFrame): the grid's columns replaced
    by ``MAP_COLUMNS`` (K from the world's overrides; the size's name from ``sizes``, the map's
    [sizes], else :func:`size_label`), the finished jobs' rows only; and the failed or missing
    jobs as [(k, size, world_seed, train_seed, error)]."""
    names = {size_label(s["model"], {k: v for k, v in s.items() if k != "model"}): n for n, s in (sizes or {}).items()}
    df = frame.copy()
    over = df["train.overrides"].map(lambda v: v if isinstance(v, dict) else json.loads(v))
    df["k"] = over.map(lambda o: int(o["n_concepts"]))
    labels = [size_label(m, o) for m, o in zip(df["train.model"], df["train.model_overrides"])]
    df["size"] = [names.get(lab, lab) for lab in labels]
    df["world_seed"] = df["train.world_seed"].astype(int)
    df["train_seed"] = df["train.seed"].astype(int)
    bad = df[df["status"] != "done"]
    missing = [(int(r.k), r.size, int(r.world_seed), int(r.train_seed), str(r.error)) for r in bad.itertuples()]
    good = df[df["status"] == "done"]
    return good[list(MAP_COLUMNS + EVAL_COLUMNS)].reset_index(drop=True), missing


def summarise(frame) -> list[dict]:
    """``SUMMARY_COLUMNS`` rows of the map's rows (a DataFrame of ``MAP_COLUMNS + EVAL_COLUMNS``):
    the units are worlds; a world's training seeds are averaged first (``metrics.unit_ci``)."""
    from .metrics import unit_ci

    out = []
    keys = ["k", "size", "step", "n_demos", "concepts", "predictor", "metric"]
    for key, g in frame.groupby(keys, sort=True):
        m, lo, hi, w = unit_ci(g["mean"].to_numpy(float), g["world_seed"].to_numpy())
        out.append(dict(zip(keys, key), mean=m, ci_low=lo, ci_high=hi, n_worlds=int(w), n_runs=len(g)))
    return [dict(r, **{c: float(f"{r[c]:.6g}") for c in ("mean", "ci_low", "ci_high")}) for r in out]


@dataclass
class StrategiesMap:
    """What :func:`run` returns: ``rows`` (``MAP_COLUMNS + EVAL_COLUMNS``, one per finished
    run's attribution row), ``summary`` (``SUMMARY_COLUMNS``), ``missing`` (the cells whose job
    failed or did not run: k, size, world seed, training seed, error), ``meta`` (the checked
    config, versions, the sweep's folder and per-job wall times, where the time went)."""

    rows: list
    summary: list
    missing: list
    meta: dict

    FILES = ("strategies.csv", "summary.csv", "strategies.json")

    def tables(self) -> dict:
        from .results import Table

        return {None: Table(self.FILES[0], MAP_COLUMNS + EVAL_COLUMNS, MAP_DTYPES, self.rows),
                "summary": Table(self.FILES[1], SUMMARY_COLUMNS, SUMMARY_DTYPES, self.summary)}

    def write(self, out) -> list:
        """Publish strategies.csv, summary.csv and strategies.json into ``out``; returns the paths."""
        from .store import check_results_dir, publish, write_csv, write_json

        out = check_results_dir(Path(out))
        return publish(out, {self.FILES[0]: lambda p: write_csv(p, self.rows, MAP_COLUMNS + EVAL_COLUMNS),
                             self.FILES[1]: lambda p: write_csv(p, self.summary, SUMMARY_COLUMNS),
                             self.FILES[2]: lambda p: write_json(p, dict(self.meta, missing=self.missing))})

    @property
    def components(self) -> tuple:
        """The mixture's components: the single predictors a model could be running."""
        return tuple(self.meta["config"]["eval"].get("mixture_of", MIXTURE_OF))

    def closest(self, concepts: str = "seen", n: int | None = None) -> dict:
        """{(k, size, step): (the single predictor with the smallest mean TV to the model, its TV,
        the kernel's mixture weight)} at ``n`` (default the largest), over the mixture's components."""
        comps = self.components
        n = n if n is not None else max(self.meta["config"]["eval"]["n_demos"])
        tvs, weights = {}, {}
        for r in self.summary:
            if r["concepts"] != concepts or r["n_demos"] != n:
                continue
            cell = (r["k"], r["size"], r["step"])
            if r["metric"] == "tv" and r["predictor"] in comps:
                tvs.setdefault(cell, {})[r["predictor"]] = r["mean"]
            if r["metric"] == "weight" and r["predictor"] == "kernel":
                weights[cell] = r["mean"]
        out = {}
        for cell, d in tvs.items():
            best = min(d, key=lambda p: d[p] if math.isfinite(d[p]) else math.inf)
            out[cell] = (best, d[best], weights.get(cell, math.nan))
        return out

    def summary_lines(self) -> list[str]:
        """Per split: the predictor closest to the model at the last step and the largest n, per
        K and size, with its TV and the kernel's mixture weight; then the missing cells."""
        cfg = self.meta["config"]
        n = max(cfg["eval"]["n_demos"])
        out = [f"strategies: {len(self.meta['cells'])} runs ({len(cfg['world']['k'])} K x {len(cfg['world']['seeds'])} "
               f"worlds x {len(cfg['sizes'])} sizes x {len(cfg['train']['seeds'])} training seeds), "
               f"n = {n}, the last checkpoint; 95% CIs over worlds"]
        for split in cfg["eval"].get("concepts", CONCEPT_SPLITS):
            best = self.closest(split, n)
            last = {}
            for (k, size, step), v in best.items():
                if step >= last.get((k, size), (-1, None))[0]:
                    last[(k, size)] = (step, v)
            out.append(f"  concepts {split}:")
            for (k, size), (step, (p, d, w)) in sorted(last.items()):
                out.append(f"    K = {k:>4}  size {size:<4} step {step:>6}: closest {p:<9} TV {d:.3f}; "
                           f"kernel weight {w:.2f}")
        for k, size, ws, ts, err in self.missing:
            out.append(f"  missing: K = {k}, size {size}, world {ws}, training seed {ts}: {err}")
        return out


def _time_split(jobs) -> dict:
    """Worker seconds summed over the finished jobs: training (each run's training loop, its
    evaluations included, from metrics.jsonl) and attribution (evaluate's own clock), and within
    attribution the predictors and the models' forward passes."""
    from .runs import read_metrics

    out = {"train": 0.0, "attribute": 0.0, "predictors": 0.0, "model_forward": 0.0}
    for j in jobs:
        try:
            meta = json.loads((Path(j["folder"]) / StrategiesEval.FILES[1]).read_text())
        except (OSError, ValueError, KeyError):
            continue
        el = meta.get("elapsed_s", {})
        out["attribute"] += float(el.get("total", 0.0))
        out["predictors"] += float(el.get("predictors", 0.0))
        out["model_forward"] += float(el.get("model", 0.0))
        evals = [r.get("elapsed_s") for r in read_metrics(meta["config"]["run"]) if r.get("elapsed_s") is not None]
        out["train"] += float(evals[-1]) if evals else 0.0
    return {k: round(v, 1) for k, v in out.items()}


def run(config: dict | None = None, out="results/strategies", *, quick: bool = False, sweeps=None, runs_dir="runs",
        workers: int | None = None, scheduler: str | None = None, retry_failed: bool = False, progress=None,
        notify=None) -> StrategiesMap:
    """The map: every cell of ``config`` (default :data:`DEFAULT_MAP`, or :data:`QUICK_MAP` with
    ``quick``; a config's tables replace those keys of the default, :func:`check_map_config`) trained with snapshots into
    ``runs_dir`` and attributed (:func:`evaluate`) through ``sweep.run`` in ``sweeps`` (default
    ``out``/sweep; a rerun resumes), gathered into a :class:`StrategiesMap` (not written: the CLI
    writes it into ``out``).  ``workers``/``scheduler``/``retry_failed``/``progress``: the sweep's.
    Every check happens before any training (one-line ValueErrors)."""
    from . import sweep
    from .store import check_results_dir, provenance

    t0 = time.perf_counter()
    base = QUICK_MAP if quick else DEFAULT_MAP
    cfg = check_map_config({} if config is None else config, base)
    check_results_dir(Path(out))          # an output in the way is refused before hours of training
    sweeps = Path(sweeps) if sweeps is not None else Path(out) / "sweep"
    scfg = sweep_config(cfg, runs_dir, base)
    res = sweep.run(scfg, sweeps, workers=workers, scheduler=scheduler, retry_failed=retry_failed, progress=progress,
                    notify=notify)
    frame, missing = cells(res.table(), cfg["sizes"])
    t1 = time.perf_counter()
    rows = frame.to_dict("records")
    summary = summarise(frame)
    jobs = [{"key": j["key"], "status": j["status"], "wall_s": j.get("wall_s"), "ran": j.get("ran")} for j in res.jobs]
    meta = provenance({"command": "strategies", **cfg, "runs_dir": str(runs_dir), "sweeps": str(sweeps)},
                      cfg["eval"].get("seed", 0), extra_packages=("torch",))
    meta.update(columns=list(MAP_COLUMNS + EVAL_COLUMNS), summary_columns=list(SUMMARY_COLUMNS),
                cells=[dict(zip(MAP_COLUMNS, c)) for c in sorted({tuple(r[c] for c in MAP_COLUMNS) for r in rows})],
                jobs=jobs, elapsed_s={"total": round(time.perf_counter() - t0, 3), "sweep": round(t1 - t0, 3),
                                      "jobs_wall": round(sum(j.get("wall_s") or 0 for j in res.jobs), 3),
                                      **_time_split(res.jobs)})
    return StrategiesMap(rows, summary, missing, meta)
