"""``run(name, ...)``: one registered phenomenon over its worlds, and what it returns.

The steps, the same for every phenomenon: validate the parameters (its params dataclass) and the
worlds; load the trained model, if any; build each world's :class:`~.common.Ctx` (one per
variant); let the phenomenon measure into an :class:`~.common.EffectTable`; ask it for its
verdict; wrap rows, verdict and provenance into a :class:`PhenomenonResult`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..presets import resolve_worlds
from ..results import Table
from ..sampling import prompt_length
from ..store import check_results_dir, provenance, publish, world_summary, write_csv, write_json
from ..validate import check_seed
from .common import (COLUMNS, DTYPES, METRIC_DESCRIPTIONS, PREDICTORS, EffectTable, canonical_json, context, jsonable,
                     same_world)
from .registry import FigureSpec, Measurement, get

#: The columns of the verdicts table (one row per run).
VERDICT_COLUMNS = ("name", "text", "verdict_json")

PREDICTOR_DESCRIPTIONS = {
    "bayes": "exact posterior predictive of the prompt shown",
    "kernel": "theory kernel (Σ pretraining, belief features, ridge 0.01), normalised",
    "clipped": "theory kernel with max(K, 0), normalised",
    "frequency": "label frequencies of the demonstrations (K ≡ 1)",
    "oracle": "P(y | x_test, true concept)", "model": "the trained model of run_dir"}


@dataclass
class PhenomenonResult:
    """What :func:`run` returns.  rows: tidy dicts with ``COLUMNS`` (floats at ``DIGITS``
    significant digits; n_demos an int, or inf for exact n -> ∞ quantities), the same as
    :meth:`effects` typed; verdict: ``text`` (one sentence), ``rule`` (how it was decided) and the
    numbers behind it; meta: the JSON (provenance: config, seeds, versions; the verdict; metric
    definitions; timings)."""

    name: str
    rows: list
    verdict: dict
    meta: dict
    elapsed_s: float
    title: str = ""
    #: (setting label, n, predictor, metric) -> (values (P,), world index (P,)): the per-prompt
    #: numbers behind every row, prompts in the same order for every key of a setting (and behind
    #: the verdict's headroom where that has no row: setting HEADROOM_SETTING)
    per_prompt: dict = field(default_factory=dict, repr=False)
    effect_rows: tuple = field(default=(), repr=False)
    figure: FigureSpec | None = field(default=None, repr=False)
    headline: tuple = field(default=(), repr=False)

    def effects(self) -> list:
        """The rows as typed :class:`~.common.Effect` (settings as the phenomenon's setting objects)."""
        return list(self.effect_rows)

    def tables(self) -> dict:
        """The result protocol: the main table ``<name>.csv`` and the derived ``verdicts`` table
        (one row: name, the verdict's text, its canonical JSON), which :meth:`write` does not write."""
        return {None: Table(f"{self.name}.csv", COLUMNS, dict(DTYPES), self.rows),
                "verdicts": Table("verdicts.csv", VERDICT_COLUMNS, {c: "str" for c in VERDICT_COLUMNS},
                                  [{"name": self.name, "text": self.verdict.get("text", ""),
                                    "verdict_json": canonical_json(self.verdict)}])}

    def summary_lines(self) -> list[str]:
        """The printed summary: one table per headline metric (settings x predictors, mean ± CI
        half-width at the largest n), then the verdict."""
        out = [self.title] if self.title else []
        for metric, n_pick in self.headline:
            out += headline_table(self.rows, metric, n_pick)
        out.append("verdict: " + self.verdict.get("text", ""))
        return out

    def write(self, out) -> list[Path]:
        """Publish ``<name>.csv``, ``<name>.json`` and ``<name>.png`` into ``out`` together
        (``store.publish``: all or none)."""
        from ..plots.phenomena import plot_effects

        out = check_results_dir(out)
        stem = self.name
        return publish(out, {
            f"{stem}.csv": lambda p: write_csv(p, self.rows, COLUMNS),
            f"{stem}.json": lambda p: write_json(p, self.meta),
            f"{stem}.png": lambda p: plot_effects(self.effects(), p, self.figure, self.title)})


def headline_table(rows, metric: str, n_pick) -> list[str]:
    """The lines of one printed table: settings x predictors of ``metric`` at n = ``n_pick``
    ('max': the largest finite n), mean ± CI half-width; [] when the metric has no rows."""
    sel = [r for r in rows if r["metric"] == metric]
    if not sel:
        return []
    preds = [p for p in (*PREDICTORS, *sorted({r["predictor"] for r in sel} - set(PREDICTORS)))
             if any(r["predictor"] == p for r in sel)]
    settings = list(dict.fromkeys(r["setting"] for r in sel))
    finite = sorted({r["n_demos"] for r in sel if r["n_demos"] != math.inf})
    n = (finite[-1] if finite else math.inf) if n_pick == "max" else n_pick
    w = max(20, *(len(p) + 2 for p in preds))
    sw = max(12, *(len(s) + 2 for s in settings))
    out = [f"{metric} at n = {'∞' if n == math.inf else n} (mean ± 95% CI half-width): "
           f"{METRIC_DESCRIPTIONS.get(metric, '')}",
           f"{'setting':<{sw}}" + "".join(f"{p:>{w}}" for p in preds)]
    by = {(r["setting"], r["predictor"]): r for r in sel if r["n_demos"] == n}
    for s in settings:
        out.append(f"{s:<{sw}}" + "".join(f"{cell(by.get((s, p))):>{w}}" for p in preds))
    return out


def cell(r) -> str:
    """'mean ± half-width' of one row (3 decimals, or 1 significant digit for tiny means); 'n/a'."""
    if r is None or not math.isfinite(r["mean"]):
        return "n/a"
    half = (r["ci_high"] - r["ci_low"]) / 2
    digits = 3 if abs(r["mean"]) >= 1e-3 or r["mean"] == 0 else 1
    f = "f" if digits == 3 else "e"
    return f"{r['mean']:.{digits}{f}} ± {half:.{digits}{f}}" if math.isfinite(half) else f"{r['mean']:.3g}"


# ---------------------------------------------------------------------- the run
def run(name: str, *, preset: str = "ginc-small", world_seeds=(0, 1, 2), overrides=None, worlds=None, seed: int = 0,
        quick: bool = False, run_dir=None, device: str = "auto", progress=None, **params) -> PhenomenonResult:
    """``simkernel phenomena NAME`` as a library call.

    preset, world_seeds, overrides: the worlds (``presets.resolve_worlds``), one per world seed;
    ``worlds`` (a list of World) replaces them.  seed: the prompt seed (and every other draw).
    quick: small defaults for every parameter not given (the tests' setting, seconds).
    run_dir: a folder made by ``simkernel train``; its model is added as predictor ``model`` and its
    world must be one of the experiment's worlds (``order``: or its restart twin), which is then the
    only world used.  device: the model's ('auto', 'cpu', 'cuda', ...).  progress: optional
    callable(message, done, total) between stages.  ``params``: the phenomenon's own knobs
    (its params dataclass, :func:`defaults`; unknown names are a ValueError listing the allowed
    ones).  Bad arguments raise a one-line ValueError naming the argument before any work.
    Writes nothing."""
    t0 = time.perf_counter()
    ph = get(name)
    seed = check_seed("seed", seed)
    p = ph.params.resolve(name, bool(quick), params)
    resolved = resolve_worlds(preset, world_seeds, overrides, None, worlds, default="ginc-small")
    world_list, labels = resolved.worlds, resolved.labels
    if ph.check_worlds is not None:
        ph.check_worlds(p, world_list)
    model_info = (None, None, "cpu")
    if run_dir is not None:
        model_info, world_list, labels = load_model(run_dir, device, world_list, labels, ph.variants)
        check_context(model_info[0], p)
    tick = progress or (lambda _m, _d, _t: None)
    model, model_world, dev = model_info
    ctxs = [context(v, p.example_length, seed, wi, model, model_world, dev, variant)
            for wi, w in enumerate(world_list) for variant, v in ph.variants(w)]
    table = EffectTable(labels)
    info = ph.measure(ctxs, p, seed, tick, table)
    tick("summary", 1, 1)
    effects = table.effects()
    rows = [e.row() for e in effects]
    model_setting = next((c.variant for c in ctxs if c.model is not None), None) if model is not None else None
    verdict = ph.verdict(Measurement(table, p, info, any(r["predictor"] == "model" for r in rows), model_setting))
    info_json = ({"model_setting": model_setting} if model is not None else {}) | info.json()
    config = {"command": "phenomena", "name": name, "preset": preset if worlds is None else None,
              "world_seeds": labels, "overrides": dict(overrides or {}), "seed": seed, "quick": bool(quick),
              "run_dir": None if run_dir is None else str(run_dir), "device": str(dev) if run_dir else None,
              "worlds": [w.meta for w in world_list] if worlds is not None else None, **p.config()}
    extra = ("matplotlib", "torch") if run_dir is not None else ("matplotlib",)
    meta = provenance(config, {"prompt": seed, "world": labels}, extra_packages=extra)
    elapsed = time.perf_counter() - t0
    title = (f"phenomenon '{name}': {world_list[0].meta.get('preset', 'custom')} worlds {labels}, "
             f"k = {p.example_length}, {p.n_prompts} prompts per world and setting, seed {seed}"
             + (f", model {Path(str(run_dir)).name}" if run_dir is not None else ""))
    meta.update(title=title, verdict=verdict, world=world_summary(world_list[0]), n_worlds=len(world_list),
                predictors=dict(PREDICTOR_DESCRIPTIONS), info=jsonable(info_json), elapsed_s=round(elapsed, 3),
                columns=list(COLUMNS),
                metrics={m: d for m, d in METRIC_DESCRIPTIONS.items() if any(r["metric"] == m for r in rows)},
                ci="95%: mean of the world means ± t(0.975, W-1) · sd / √W (worlds the unit), over prompts with one "
                   "world; clipped to the metric's range")
    return PhenomenonResult(name, rows, verdict, meta, elapsed, title, table.per_prompt(), tuple(effects),
                            ph.figure, ph.headline)


def check_context(model, p) -> None:
    """The longest prompt must fit the model's context."""
    ctx_len = getattr(getattr(model, "config", None), "n_positions", None)
    n_max = max(p.n_demos) if isinstance(p.n_demos, tuple) else p.n_demos
    if ctx_len is not None and prompt_length(n_max, p.example_length) > ctx_len:
        raise ValueError(f"n_demos {n_max} makes prompts of {prompt_length(n_max, p.example_length)} symbols, "
                         f"longer than the model's context ({ctx_len}); allowed: n_demos with "
                         f"n (k + 1) + k - 1 <= {ctx_len}")


def load_model(run_dir, device, worlds, labels, variants):
    """(model, its world, device) of a run folder, with its world matched against the
    experiment's worlds (or their ``variants``); the experiment then keeps the matching world only."""
    from ..device import resolve_device
    from ..icl_eval import load_run, run_paths

    run_paths(run_dir)
    dev = resolve_device(device)
    model, mworld, _model_dir, _world_file = load_run(run_dir, device=dev)
    for w, lab in zip(worlds, labels):
        if any(same_world(mworld, v) for _name, v in variants(w)):
            return (model, mworld, dev), [w], [lab]
    raise ValueError(f"run_dir {str(run_dir)!r} was trained on another world ({mworld!r}, meta "
                     f"{mworld.meta.get('preset')!r} seed {mworld.meta.get('seed')!r}) than the experiment's "
                     f"({len(worlds)} world(s): {worlds[0]!r}, seeds {labels}); allowed: the preset, overrides and "
                     f"world_seeds (or worlds=[...]) that built the run's world")
