"""order: R random permutations of each prompt's demonstrations; mean TV between the original
and the permuted prediction, in the restart world and its restart-free twin.

In a restart world exact Bayes is order-invariant, and every kernel estimate is by construction:
the built-in invariance check (max TV < ``INVARIANCE_TOL``).  A restart-free world carries the
hidden state through the delimiter, so exact Bayes may see the order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..metrics import tie_agreement, tv
from ..sampling import sample_prompts
from ..validate import check_int, check_ints
from .common import (INVARIANCE_TOL, Named, fmt, label_index, paired, permute_demos, predict, round_sig, row_value,
                     scores, stack_prompts, with_restart)
from .registry import CommonParams, FigureSpec, Line, Measurement, Panel, Phenomenon


@dataclass(frozen=True)
class Params(CommonParams):
    """n_demos: the prompt lengths (each a prefix of the longest); n_permutations: R."""

    n_demos: tuple = (2, 4, 8, 16, 32)
    n_permutations: int = 8
    QUICK = {"n_demos": (2, 6), "n_permutations": 3}

    def check(self) -> dict:
        return {"n_demos": tuple(check_ints("n_demos", self.n_demos, 1)),
                "n_permutations": check_int("n_permutations", self.n_permutations, 1)}


@dataclass(frozen=True)
class Setting:
    """The world type: restart (Assumption 1) or its restart-free twin."""

    restart: bool

    @property
    def label(self) -> str:
        return "restart" if self.restart else "restart-free"

    group = label

    @property
    def value(self):
        return None

    @classmethod
    def from_label(cls, label: str):
        return cls(label == "restart") if label in ("restart", "restart-free") else Named(label)


@dataclass(frozen=True)
class Info:
    """The invariance check: the largest TV under a permutation of exact Bayes in restart worlds
    and of every kernel estimate, against ``INVARIANCE_TOL``."""

    restart_bayes_max_tv: float
    kernel_max_tv: float

    @property
    def passed(self) -> bool:
        return bool(self.restart_bayes_max_tv < INVARIANCE_TOL and self.kernel_max_tv < INVARIANCE_TOL)

    def checks(self) -> dict:
        return {"restart_bayes_max_tv": self.restart_bayes_max_tv, "kernel_max_tv": self.kernel_max_tv,
                "tolerance": INVARIANCE_TOL, "passed": self.passed}

    def json(self) -> dict:
        return {"checks": self.checks()}


def variants(world) -> tuple:
    """Each world is measured twice: with restart and without."""
    return (("restart", with_restart(world, True)), ("restart-free", with_restart(world, False)))


def measure(ctxs, p: Params, seed: int, tick, table) -> Info:
    ns, R, B, k = p.n_demos, p.n_permutations, p.n_prompts, p.example_length
    worst = {"bayes": 0.0, "kernel": 0.0}
    for ci, ctx in enumerate(ctxs):
        tick(f"{ctx.variant}, world {ctx.wid}", ci, len(ctxs))
        w = ctx.world
        setting = Setting(bool(w.restart))
        prompts = sample_prompts(w, B, ns[-1], k, seed)
        y = label_index(w.labels, prompts.y_test)
        rng = np.random.default_rng([seed, ctx.wid, int(w.restart), 17])
        for n in ns:
            base = prompts.truncated(n)
            perms = np.argsort(rng.random((R, B, n)), axis=-1)                  # R x B uniform permutations
            shuffled = stack_prompts([permute_demos(base, perms[r]) for r in range(R)])
            p0 = predict(ctx, base)
            p1 = predict(ctx, shuffled)
            for name, a in p0.items():
                a = a[:, 0]
                b = p1[name][:, 0].reshape(R, B, -1)
                d = tv(b, a[None])                                                # (R, B)
                table.add(setting, n, name, "tv_perm", ctx.wid, d.mean(0))
                table.add(setting, n, name, "argmax_change", ctx.wid, (1.0 - tie_agreement(b, a[None])).mean(0))
                for metric, v in scores(a, p0["oracle"][:, 0], y).items():
                    table.add(setting, n, name, metric, ctx.wid, v)
                if np.isfinite(d).any() and (name in ("kernel", "clipped", "frequency")
                                             or (name == "bayes" and w.restart)):
                    key = "bayes" if name == "bayes" else "kernel"
                    worst[key] = max(worst[key], float(np.nanmax(d)))
    return Info(worst["bayes"], worst["kernel"])


def verdict(m: Measurement) -> dict:
    table, p, info = m.table, m.params, m.info
    n = p.n_demos[-1]
    free = row_value(table, Setting(False), n, "bayes", "tv_perm")
    rest = row_value(table, Setting(True), n, "bayes", "tv_perm")
    kern = row_value(table, Setting(False), n, "kernel", "tv_perm")
    sensitive = math.isfinite(free["mean"]) and free["ci_low"] > 0
    checks = info.checks()
    nums = {"n_demos": n, "bayes_restart_free": free, "bayes_restart": rest, "kernel_restart_free": kern,
            "checks": checks}
    text = (f"at n = {n}, exact Bayes changes by TV {fmt(free)} under a permutation of the demonstrations in the "
            f"restart-free worlds ({'order-sensitive: the CI over worlds excludes 0' if sensitive else 'no order sensitivity detected: the CI over worlds reaches 0'}), "
            f"against {rest['mean']:.1e} in the restart worlds and {kern['mean']:.1e} for the kernel "
            f"(invariance check {'passed' if checks['passed'] else 'FAILED'}: both below {INVARIANCE_TOL:g})")
    if m.has_model:
        setting = Setting(m.model_setting == "restart")
        mod = row_value(table, setting, n, "model", "tv_perm")
        bay = row_value(table, setting, n, "bayes", "tv_perm")
        share = bay["mean"] / mod["mean"] if mod["mean"] > 0 else float("nan")
        diff = paired(table, (setting, n, "model", "tv_perm"), (setting, n, "bayes", "tv_perm"))
        nums.update(model=mod, bayes_same_world=bay, share_of_model=round_sig(share), model_minus_bayes=diff)
        text += (f"; the trained model ({setting.label} world) changes by {fmt(mod)}, so exact Bayes already has "
                 f"{share:.0%} of the model's order sensitivity (model − Bayes {fmt(diff)}"
                 f"{', CI excludes 0' if diff['excludes_0'] else ', CI includes 0'})")
    rule = ("order-sensitive: the 95% CI over worlds of the mean TV(original, permuted) at the largest n excludes 0; "
            "invariance check: max TV < 1e-12 for exact Bayes in restart worlds and every kernel estimate; "
            "share = mean TV of Bayes / of the model in the model's world")
    return {"text": text, "rule": rule, "order_sensitive_bayes_restart_free": sensitive, **nums}


FIGURE = FigureSpec(
    panels=(Panel((Line("tv_perm", at="all"),), "TV(original order, permuted order)", (0, None)),),
    x="n", xlabel="n (demonstrations)", xscale="log2", title="{group} world", title_size=10, size=(5.2, 2.5, 4.0))

PHENOMENON = Phenomenon("order", Params, measure, verdict, Setting, FIGURE, headline=(("tv_perm", "max"),),
                        variants=variants)
