"""shift: x_test (or the x_i) drawn from a shifted input distribution: one-symbol typos, rare
symbols, tempered transitions; accuracy and distance to the oracle against the size of the
shift, with the shifted inputs' ε and (x_test shifts) the kernel's exact floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .. import bayes, kernel
from ..metrics import restrict
from ..sampling import sample_prompts
from ..validate import check_choices, check_floats, check_int
from ..world import World
from .common import (HEADROOM, Named, add_headroom, add_scores, demo_blocks, headroom, label_index, paired, predict,
                     row_value, tv_rows, with_demos)
from .registry import DEFAULT_FIGURE, CommonParams, FigureSpec, Measurement, Phenomenon

KINDS = ("typo", "rare", "tempered")
TARGETS = ("x_test", "demos")
#: tempered: temperature = 1 + TEMPER_SCALE · shift size.
TEMPER_SCALE = 9.0


@dataclass(frozen=True)
class Params(CommonParams):
    """n_demos: N; kinds: how inputs shift; shifts: the sizes in [0, 1]; targets: x_test and/or
    the demonstrations' x_i."""

    n_demos: int = 16
    kinds: tuple = KINDS
    shifts: tuple = (0.0, 0.25, 0.5, 1.0)
    targets: tuple = TARGETS
    QUICK = {"n_demos": 8, "shifts": (0.0, 1.0), "targets": ("x_test",)}

    def check(self) -> dict:
        return {"n_demos": check_int("n_demos", self.n_demos, 1),
                "kinds": tuple(check_choices("kinds", self.kinds, KINDS)),
                "shifts": tuple(check_floats("shifts", self.shifts, 0.0, 1.0)),
                "targets": tuple(check_choices("targets", self.targets, TARGETS))}


@dataclass(frozen=True)
class Setting:
    """Inputs of ``target`` shifted by ``kind`` at ``size``."""

    kind: str
    target: str
    size: float

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.target}:{self.size:g}"

    @property
    def group(self) -> str:
        return f"{self.kind}/{self.target}"

    @property
    def value(self) -> float:
        return self.size

    @classmethod
    def from_label(cls, label: str):
        group, _, size = label.rpartition(":")
        kind, _, target = group.partition("/")
        try:
            return cls(kind, target, float(size))
        except ValueError:
            return Named(label)


@dataclass(frozen=True)
class Info:
    """Per world index, the symbols each kind draws from."""

    symbols: dict

    def json(self) -> dict:
        return {"symbols": self.symbols}


def emittable(world: World) -> np.ndarray:
    """Non-delimiter symbols some state of a concept with prior > 0 can emit: (E,) symbols."""
    e = (world.emission[world.prior > 0] > 0).any(axis=(0, 1))
    e[world.delimiter] = False
    return np.flatnonzero(e)


def rare_symbols(world: World, example_length: int) -> np.ndarray:
    """The emittable symbols in the lowest third of the pretraining inputs' symbol frequencies
    (at least one): (R,) symbols."""
    s = kernel.input_distribution(world, example_length, None)
    freq = np.zeros(world.n_symbols)
    for j in range(s.x.shape[1]):
        np.add.at(freq, s.x[:, j], s.weights)
    cand = emittable(world)
    order = cand[np.argsort(freq[cand], kind="stable")]
    return np.sort(order[:max(1, len(order) // 3)])


def tempered(world: World, temperature: float) -> World:
    """Every start, transition and emission row raised to 1 / temperature and renormalised (zeros
    stay zero; temperature > 1 flattens the rows)."""
    def t(a):
        b = np.where(a > 0, np.power(np.where(a > 0, a, 1.0), 1.0 / temperature), 0.0)
        return b / b.sum(-1, keepdims=True)
    return World.from_arrays(world.prior, t(world.start), t(world.transition), t(world.emission), world.delimiter,
                             world.labels, world.restart, world.meta)


def shift_inputs(world: World, x: np.ndarray, concepts: np.ndarray, kind: str, size: float, rng,
                 symbols: np.ndarray) -> np.ndarray:
    """Shifted copies of the inputs x (B, k-1) of the given concepts (B,).

    typo      with probability ``size`` one position of x (uniform) gets another symbol of ``symbols``
    rare      each position, with probability ``size``, becomes a uniform draw from ``symbols`` (rare ones)
    tempered  x drawn afresh from the concept with every row tempered at 1 + TEMPER_SCALE · size
              (``size`` 0 keeps x)
    typo and rare keep each example's label (a typo does not change the gold label, as in the paper's
    Table 1); a tempered input is a new input, labelled by its concept (:func:`labels_given_x`)."""
    B, L = x.shape
    out = x.copy()
    if size == 0 or L == 0:
        return out
    if kind == "typo":
        hit = np.flatnonzero(rng.random(B) < size)
        pos = rng.integers(0, L, size=hit.size)
        for b, j in zip(hit, pos):
            others = symbols[symbols != out[b, j]]
            if others.size:
                out[b, j] = rng.choice(others)
        return out
    if kind == "rare":
        mask = rng.random((B, L)) < size
        out[mask] = rng.choice(symbols, size=int(mask.sum()))
        return out
    wt = tempered(world, 1.0 + TEMPER_SCALE * size)
    for c in np.unique(concepts):
        sel = np.flatnonzero(concepts == c)
        draw = sample_prompts(wt, len(sel), 0, L + 1, int(rng.integers(2**31)), concept=int(c))
        out[sel] = draw.x_test()
    return out


def labels_given_x(ctx, x, concepts, rng):
    """y ~ P(y | x, true concept, y a label) for each row (x scored as a demonstration input starts),
    as label symbols; -1 where x is impossible under its concept.  (B,)"""
    orc = restrict(bayes.oracle_predictive(ctx.ks.ew, x, concepts), ctx.world.labels)
    ok = np.isfinite(orc).all(-1)
    u = rng.random(len(x))
    idx = (np.cumsum(np.where(ok[:, None], orc, 0.0), axis=1) < u[:, None] * np.where(ok, 1.0, 0.0)[:, None]).sum(1)
    return np.where(ok, ctx.world.labels[np.clip(idx, 0, len(ctx.world.labels) - 1)], -1)


def check_worlds(p: Params, worlds) -> None:
    """Every world must emit >= 2 non-delimiter symbols, or no input can be shifted."""
    for w in worlds:
        if emittable(w).size < 2:
            raise ValueError(f"kinds {list(p.kinds)} cannot shift the inputs of a world whose concepts emit fewer "
                             f"than 2 non-delimiter symbols: every shifted input would be impossible under every "
                             f"concept; allowed: worlds with >= 2 emittable symbols")


def shifted_prompts(ctx, base, blocks, setting: Setting, rng, symbols):
    """(prompts, shifted inputs) of one setting: x_test (with its gold label kept, or drawn anew
    for a tempered x_test) or the demonstrations' x_i (relabelled when tempered) shifted."""
    w, (B, n, k1) = ctx.world, blocks.shape
    k, kind, size = k1 - 1, setting.kind, setting.size
    if setting.target == "x_test":
        xt = shift_inputs(w, base.x_test(), base.concepts, kind, size, rng, symbols)
        # a typo or a rare word leaves the gold label as it was (the paper's protocol);
        # a tempered x_test is a new input, labelled by its concept
        ytest = base.y_test if size == 0 or kind != "tempered" else labels_given_x(ctx, xt, base.concepts, rng)
        ytest = np.where(ytest >= 0, ytest, base.y_test)
        prompts = with_demos(base, blocks, base.labels, x_test=xt)
        return replace(prompts, y_test=np.asarray(ytest, np.int32)), xt
    xd = blocks[:, :, :k - 1].reshape(B * n, k - 1)
    cd = np.repeat(base.concepts, n)
    xd2 = shift_inputs(w, xd, cd, kind, size, rng, symbols)
    yd = base.labels.reshape(-1) if size == 0 or kind != "tempered" else labels_given_x(ctx, xd2, cd, rng)
    nb = blocks.copy()
    nb[:, :, :k - 1] = xd2.reshape(B, n, k - 1)
    # an impossible x_i keeps its old label: the prompt is then counted impossible below
    yd = np.where(yd >= 0, yd, base.labels.reshape(-1)).reshape(B, n)
    nb[:, :, k - 1] = yd
    return with_demos(base, nb, yd), xd2


def add_eps_shift(ctx, table, setting, xs) -> None:
    """The shifted inputs' ε: Σ of their features against Σ_pretrain, in their span (n = inf row)."""
    pre = ctx.ks.theory()
    psi = ctx.ks.psi(np.ascontiguousarray(xs, dtype=np.int32))
    keep = np.linalg.norm(psi, axis=1) > 0
    if keep.sum() >= 2 and pre.form == "dense":
        m = kernel.fit_kernel(psi[keep], np.full(keep.sum(), 1.0 / keep.sum()), ridge=ctx.ks.ridge)
        eps = kernel.epsilon_theta(pre, m, kernel.support_basis(psi[keep]))
        table.add(setting, math.inf, "kernel", "eps_shift", ctx.wid, [eps])


def add_floor(ctx, prompts, table, setting) -> None:
    """The kernel's exact n -> ∞ limit at each (shifted) x_test, demonstrations from the concept's
    own (unshifted) distribution, against the oracle: the floor the shift leaves (n = inf rows)."""
    w = ctx.world
    _, info = kernel.kernel_values(w, prompts, ("theory",), kernel_set=ctx.ks, limits_for=("normalised", "clipped"))
    orc = restrict(bayes.oracle_predictive(ctx.ks.ew, prompts.x_test(), prompts.concepts), w.labels)
    for est, name in (("normalised", "kernel"), ("clipped", "clipped")):
        lim = kernel.to_distribution(info["limits"][("theory", est)].scores, est)
        ok = np.isfinite(orc).all(-1)
        table.add(setting, math.inf, name, "floor_tv", ctx.wid, np.where(ok, tv_rows(lim, orc), np.nan))


def measure(ctxs, p: Params, seed: int, tick, table) -> Info:
    B, n, k = p.n_prompts, p.n_demos, p.example_length
    symbols = {}
    total, done = len(ctxs) * len(p.kinds) * len(p.targets), 0
    for ctx in ctxs:
        w = ctx.world
        syms = {"typo": emittable(w), "rare": rare_symbols(w, k), "tempered": emittable(w)}
        symbols[str(ctx.wid)] = {kk: v.tolist() for kk, v in syms.items()}
        base = sample_prompts(w, B, n, k, seed)
        blocks = demo_blocks(base)
        clean = False
        for kind in p.kinds:
            for target in p.targets:
                tick(f"world {ctx.wid}: {kind} on {target}", done, total)
                done += 1
                for size in p.shifts:
                    rng = np.random.default_rng([seed, ctx.wid, KINDS.index(kind), TARGETS.index(target),
                                                 int(round(size * 1e6))])
                    setting = Setting(kind, target, size)
                    prompts, xs = shifted_prompts(ctx, base, blocks, setting, rng, syms[kind])
                    y = label_index(w.labels, prompts.y_test)
                    pr = predict(ctx, prompts)
                    if size == 0 and not clean:   # every kind and target leaves the prompts as they are at 0
                        add_headroom(table, n, ctx.wid, pr, y)
                        clean = True
                    imp = ~np.isfinite(pr["bayes"][:, 0]).all(-1)
                    table.add(setting, n, "bayes", "impossible_x", ctx.wid, imp.astype(float))
                    add_scores(table, setting, n, ctx.wid, pr, y)
                    add_eps_shift(ctx, table, setting, xs)
                    if target == "x_test":
                        add_floor(ctx, prompts, table, setting)
        if not clean:
            add_headroom(table, n, ctx.wid, predict(ctx, base), label_index(w.labels, base.y_test))
    return Info(symbols)


def verdict(m: Measurement) -> dict:
    table, p = m.table, m.params
    n, big = p.n_demos, max(p.shifts)
    out, bits = {"n_demos": n, "shift": big}, []
    for kind in p.kinds:
        for target in p.targets:
            g, shifted, clean = f"{kind}/{target}", Setting(kind, target, big), Setting(kind, target, 0.0)
            res = {}
            for pred in ("bayes", "kernel", "frequency", "oracle", "model"):
                d = paired(table, (shifted, n, pred, "acc"), (clean, n, pred, "acc"))
                if d["n_prompts"] == 0:
                    continue
                res[pred] = {"acc_clean": row_value(table, clean, n, pred, "acc"),
                             "acc_shifted": row_value(table, shifted, n, pred, "acc"),
                             "shifted_minus_clean": d, "hurts": bool(d["excludes_0"] and d["mean"] < 0)}
            res["impossible"] = row_value(table, shifted, n, "bayes", "impossible_x")
            res["eps_shift"] = [row_value(table, Setting(kind, target, s), math.inf, "kernel", "eps_shift")["mean"]
                                for s in p.shifts]
            if target == "x_test":
                res["kernel_floor"] = [row_value(table, Setting(kind, target, s), math.inf, "kernel",
                                                 "floor_tv")["mean"] for s in p.shifts]
            out[g] = res
            accs = ", ".join(f"{pred} {r['acc_clean']['mean']:.3f} → {r['acc_shifted']['mean']:.3f}"
                             f"{'' if r['shifted_minus_clean']['excludes_0'] else ' (n.s.)'}"
                             for pred, r in res.items() if isinstance(r, dict) and "acc_clean" in r)
            imp = res["impossible"]["mean"]
            bits.append(f"{g}: {accs}" + (f"; {imp:.0%} of prompts impossible under every concept" if imp > 0 else ""))
    text = (f"accuracy at n = {n}, clean → shift {big:g} (n.s.: the CI over worlds of the change includes 0): "
            + "; ".join(bits))
    rule = ("a shift hurts a predictor when the 95% CI over worlds of its per-prompt accuracy at the largest shift "
            "minus at shift 0 (same prompts and demonstrations) lies below 0")
    return {"text": text, "rule": rule, **out, "headroom": headroom(table, HEADROOM, n, "shift 0")}


FIGURE = FigureSpec(panels=DEFAULT_FIGURE.panels, xlabel="shift size", references=True)

PHENOMENON = Phenomenon("shift", Params, measure, verdict, Setting, FIGURE,
                        headline=(("acc", "max"), ("tv_oracle", "max"), ("floor_tv", math.inf)),
                        check_worlds=check_worlds)
