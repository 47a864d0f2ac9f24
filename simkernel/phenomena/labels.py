"""labels: the demonstrations' labels remapped with a fraction f: ``flip`` (a derangement of the
labels the concepts emit) and ``format`` (onto symbols no concept emits as a label); the mass
each predictor puts on the original and on the remapped label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import kernel
from ..metrics import tie_accuracy
from ..sampling import sample_prompts
from ..validate import check_choices, check_floats, check_int
from .common import (HEADROOM, Named, add_headroom, demo_blocks, headroom, label_index, paired, predict, row_value,
                     scores, undefined, with_demos)
from .registry import CommonParams, FigureSpec, Line, Measurement, Panel, Phenomenon

MODES = ("flip", "format")


@dataclass(frozen=True)
class Params(CommonParams):
    """n_demos: N; fractions: the shares f of remapped demonstrations; modes: flip and/or format."""

    n_demos: int = 16
    fractions: tuple = (0.0, 0.25, 0.5, 0.75, 1.0)
    modes: tuple = MODES
    QUICK = {"n_demos": 8, "fractions": (0.0, 0.5, 1.0)}

    def check(self) -> dict:
        return {"n_demos": check_int("n_demos", self.n_demos, 1),
                "fractions": tuple(check_floats("fractions", self.fractions, 0.0, 1.0)),
                "modes": tuple(check_choices("modes", self.modes, MODES))}


@dataclass(frozen=True)
class Setting:
    """A remapping (``mode``) of a fraction of the demonstrations' labels."""

    mode: str
    fraction: float

    @property
    def label(self) -> str:
        return f"{self.mode}:{self.fraction:g}"

    @property
    def group(self) -> str:
        return self.mode

    @property
    def value(self) -> float:
        return self.fraction

    @classmethod
    def from_label(cls, label: str):
        mode, _, f = label.partition(":")
        try:
            return cls(mode, float(f))
        except ValueError:
            return Named(label)


@dataclass(frozen=True)
class Info:
    """Per world index: the active labels, the format symbols, the scored label set and each
    mode's map on the active labels; the (mode, world) pairs skipped, with why."""

    maps: dict
    skipped: dict

    def json(self) -> dict:
        return {"maps": self.maps, **({"skipped": self.skipped} if self.skipped else {})}


def active_labels(world) -> np.ndarray:
    """The labels a demonstration's y can take under a concept with prior > 0 (the sampler's event:
    a label, then a delimiter can follow): (A,) symbols."""
    emit = world.emission[:, :, world.labels] * kernel.demo_weight(world)[..., None]
    return world.labels[(emit[world.prior > 0] > 0).any(axis=(0, 1))]


def label_maps(world, rng) -> tuple[dict, np.ndarray, np.ndarray]:
    """The two remappings of the labels phenomenon: {'flip': (V,) symbol map, 'format': (V,) or
    None}, the active labels A and the format symbols F.

    flip: a random cyclic derangement of A (every active label goes to another active label);
    format: A onto F = the non-delimiter symbols outside A (the labels no concept with prior > 0
    emits as y, then any other symbol), cyclically when |F| < |A|; None when F is empty."""
    V = world.n_symbols
    A = active_labels(world)
    order = rng.permutation(len(A))
    flip = np.arange(V)
    if len(A) >= 2:
        flip[A[order]] = A[np.roll(order, -1)]
    F = np.array([o for o in range(V) if o != world.delimiter and o not in set(A.tolist())], dtype=np.int64)
    fmt = None
    if F.size:
        fmt = np.arange(V)
        fmt[A[order]] = F[np.arange(len(A)) % F.size]
    return {"flip": flip, "format": fmt}, A, F


def remap(prompts, mapping: np.ndarray, fraction: float, priority: np.ndarray):
    """The prompts with the labels of round(fraction · N) demonstrations mapped through
    ``mapping`` ((V,) symbol map): those with the lowest ``priority`` (B, N) values, so that
    the remapped sets are nested in the fraction.  fraction 0 returns the very same prompts."""
    N = prompts.n_demos
    m = int(math.floor(fraction * N + 0.5))
    if m == 0:
        return prompts
    chosen = np.argsort(priority, axis=1, kind="stable")[:, :m]
    labels = prompts.labels.copy()
    rows = np.arange(labels.shape[0])[:, None]
    labels[rows, chosen] = mapping[labels[rows, chosen]]
    blocks = demo_blocks(prompts).copy()
    blocks[:, :, -2] = labels
    return with_demos(prompts, blocks, labels)


def add_label_scores(table, setting, n, wid, pr, y, y_new, fset):
    """Every predictor's rows of one remapped setting: the common scores plus the accuracy and
    mass on the original (y) and the remapped (y_new) label and, for format, on the format set."""
    rows = np.arange(len(y))
    for name, a in pr.items():
        a = a[:, 0]
        ok = np.isfinite(a).all(-1)
        table.add(setting, n, name, "undefined", wid, undefined(a))
        for metric, v in scores(a, pr["oracle"][:, 0], y).items():
            table.add(setting, n, name, metric, wid, v)
        table.add(setting, n, name, "acc_original", wid, np.where(ok, tie_accuracy(a, y), np.nan))
        table.add(setting, n, name, "acc_remapped", wid, np.where(ok, tie_accuracy(a, y_new), np.nan))
        table.add(setting, n, name, "mass_original", wid, a[rows, np.clip(y, 0, None)])
        table.add(setting, n, name, "mass_remapped", wid, a[rows, np.clip(y_new, 0, None)])
        if setting.mode == "format":
            table.add(setting, n, name, "mass_format_set", wid, a[:, fset].sum(-1))


def measure(ctxs, p: Params, seed: int, tick, table) -> Info:
    B, n, k = p.n_prompts, p.n_demos, p.example_length
    maps_json, skipped = {}, {}
    for ci, ctx in enumerate(ctxs):
        tick(f"world {ctx.wid}", ci, len(ctxs))
        w = ctx.world
        rng = np.random.default_rng([seed, ctx.wid, 23])
        maps, A, F = label_maps(w, rng)
        label_set = np.array(sorted(set(w.labels.tolist()) | set(F.tolist())), dtype=np.int64)
        maps_json[str(ctx.wid)] = {"active": A.tolist(), "format_symbols": F.tolist(), "label_set": label_set.tolist(),
                                   **{m: {int(a): int(v[a]) for a in A} for m, v in maps.items() if v is not None}}
        prompts = sample_prompts(w, B, n, k, seed)
        priority = rng.random((B, n))
        y = label_index(label_set, prompts.y_test)
        clean = None
        for mode in p.modes:
            mapping = maps[mode]
            if mapping is None:
                skipped[f"{mode}/{ctx.wid}"] = "no symbol outside the active labels"
                continue
            y_new = label_index(label_set, mapping[prompts.y_test])
            fset = np.isin(label_set, F)
            for f in p.fractions:
                pr = predict(ctx, remap(prompts, mapping, f, priority), label_set)
                if f == 0 and clean is None:
                    clean = pr                    # remap at 0 returns the very prompts: every mode's f = 0
                add_label_scores(table, Setting(mode, f), n, ctx.wid, pr, y, y_new, fset)
        add_headroom(table, n, ctx.wid, clean if clean is not None else predict(ctx, prompts, label_set), y)
    return Info(maps_json, skipped)


def verdict(m: Measurement) -> dict:
    table, p = m.table, m.params
    n = p.n_demos
    f = max(p.fractions)
    out, parts = {"n_demos": n, "fraction": f}, []
    for mode in p.modes:
        s = Setting(mode, f)
        verdicts = {}
        for pred in ("bayes", "kernel", "frequency", "oracle", "model"):
            d = paired(table, (s, n, pred, "mass_remapped"), (s, n, pred, "mass_original"))
            if d["n_prompts"] == 0:
                continue
            side = ("follows the demonstrations" if d["excludes_0"] and d["mean"] > 0 else
                    "follows the pretraining concepts" if d["excludes_0"] and d["mean"] < 0 else "undecided")
            verdicts[pred] = dict(d, side=side, mass_original=row_value(table, s, n, pred, "mass_original"),
                                  mass_remapped=row_value(table, s, n, pred, "mass_remapped"),
                                  undefined=row_value(table, s, n, pred, "undefined"))
        out[mode] = verdicts
        bits = []
        for pred, d in verdicts.items():
            if d["n_prompts"] == 0 or not math.isfinite(d["mean"]):
                und = d["undefined"]["mean"]
                bits.append(f"{pred} undefined ({und:.0%} of prompts impossible)")
            else:
                bits.append(f"{pred} {d['mass_original']['mean']:.2f} vs {d['mass_remapped']['mean']:.2f} ({d['side']})")
        parts.append(f"{mode} f = {f:g}: mass on the original vs the remapped label: " + "; ".join(bits))
    for mode in p.modes:
        d = row_value(table, Setting(mode, f), n, "bayes", "undefined")
        if math.isfinite(d["mean"]) and d["mean"] > 0:
            parts.append(f"exact Bayes has no answer for {d['mean']:.0%} of the {mode} prompts (probability 0 "
                         f"under every concept with prior > 0)")
    rule = ("a predictor follows the demonstrations (the pretraining concepts) when the 95% CI over worlds of its "
            "per-prompt mass_remapped − mass_original at the largest fraction lies above (below) 0; undecided otherwise")
    return {"text": f"n = {n}: " + "; ".join(parts), "rule": rule, **out,
            "headroom": headroom(table, HEADROOM, n, "fraction 0")}


FIGURE = FigureSpec(
    panels=(Panel((Line("mass_original", suffix=": y_test"),
                   Line("mass_remapped", style="--", suffix=": remapped label")),
                  "probability on the label (n = {n})", (-0.02, 1.02)),),
    xlabel="f (share of demonstrations remapped)", title="{group}: labels of a fraction f of the demonstrations remapped",
    size=(5.6, 3.0, 4.2))

PHENOMENON = Phenomenon("labels", Params, measure, verdict, Setting, FIGURE,
                        headline=(("mass_original", "max"), ("mass_remapped", "max")))
