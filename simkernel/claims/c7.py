"""C7-<phenomenon>: the paper's qualitative predictions (THEORY.md §8), judged by a symmetric rule
with magnitudes.

Evidence: the ``phenomena`` sweep's ``verdicts`` table (one row per phenomenon; its verdict JSON
holds, for every effect, the per-world means of the paired per-prompt quantity for exact Bayes,
the theory kernel and the label frequencies, and the headroom TV(exact Bayes, oracle)).  For
every setting inside the claim's assumptions the kernel's effect is set against exact Bayes' (what
in-context learning is in the simulator): an effect in one without the other counts against the
kernel account, and the kernel must track exact Bayes better than label counting does.  Label
flips and restart-free order break the theory's assumptions: reported, never counted.
"""

from __future__ import annotations

import json
import math

import numpy as np

from ..constants import INVARIANCE_TOL, PHENOMENA
from ..metrics import ratio_ci, unit_ci
from ..plots.style import BAND_COLOUR, EXTRA_COLOURS, PREDICTOR_COLOURS, REFERENCE_COLOUR
from .base import (FAILED, INCONCLUSIVE, MIN_UNITS, NAN, OUT_OF_SCOPE, PASSED, REFUTED, SUPPORTED, Claim, as_float,
                   ci_text, done, few, fmt, overall)

KIND = "finite-n"
#: The kernel's effect agrees in magnitude with exact Bayes' when the ratio's interval lies inside.
AGREEMENT_BAND = (0.5, 2.0)
#: Percentile bootstrap of the ratio over worlds.
N_BOOT, BOOT_SEED = 2000, 0
#: The family-wise error of a phenomenon's verdict: its settings are judged at 1 − FAMILY_ALPHA / m.
FAMILY_ALPHA = 0.05
FAMILY = "ginc-small"
TITLES = {
    "retrieval": "Retrieving demonstrations similar to x_test acts like a smaller kernel bandwidth (less bias)",
    "labels": "Changing the label space or format misdirects the weighted vote",
    "shift": "Out-of-distribution inputs hurt (larger ε)",
    "order": "The kernel account and demonstration order (the kernel is order-invariant)",
    "prior": "A concept rare in pretraining is learned worse in context",
}
SOURCES = {
    "retrieval": "\"Retrieving demonstrations similar to x_test acts like a smaller kernel bandwidth: less bias\" "
                 "(THEORY.md §8)",
    "labels": "\"Changing the label space/format misdirects the weighted vote\" (THEORY.md §8)",
    "shift": "\"In-distribution, representative demonstrations help (smaller ε_θ)\" (THEORY.md §8)",
    "order": "\"Not explained (open): sensitivity to demonstration order\" (THEORY.md §8); the kernel estimate is "
             "order-invariant by construction",
    "prior": "derived reading of the bias term η²ε_θ: a concept rare in pretraining sits far from Σ_pretrain "
             "(THEORY.md §5, §8)",
}
_BASE_SCOPE = ("restart (Assumption 1)", "demonstrations i.i.d. from θ*", "labels consistent with the concept")
SCOPES = {name: _BASE_SCOPE for name in PHENOMENA}
SCOPES["labels"] = ("restart (Assumption 1)", "the label space changed (format); flipped labels are outside: the "
                    "paper lists robustness to them as unexplained")
SCOPES["order"] = ("restart (Assumption 1): in a restart world exact Bayes is order-invariant too, an identity",)
#: what each phenomenon's effect is, and the sign the kernel account predicts (0: none)
EFFECTS = {
    "retrieval": ("TV to the oracle, retrieved at the smallest bandwidth minus random", -1),
    "labels": ("mass on the remapped minus the original label, largest fraction", +1),
    "shift": ("accuracy at the largest shift minus unshifted", -1),
    "order": ("TV(original order, permuted order)", 0),
    "prior": ("TV to the oracle at the smallest prior minus the uniform prior", +1),
}
OUTSIDE_WHY = {"flip": "flipped labels are not consistent with the concept (the paper lists robustness to them as "
                       "unexplained, THEORY.md §8)",
               "restart-free": "a world without restart breaks Assumption 1 (demonstrations are not i.i.d.)"}
RULE = (f"Per setting inside the claim's assumptions (m of them; every interval of the judgement at the Bonferroni "
        f"level 1 - {FAMILY_ALPHA:g}/m, so that one refuting setting refutes with a family-wise error <= "
        f"{FAMILY_ALPHA:g}), with the per-world effects b_w (exact Bayes), k_w (theory "
        f"kernel) and f_w (label frequencies) of the paired per-prompt quantity: the ratio R = mean(k)/mean(b) with a "
        f"percentile bootstrap interval over worlds ({N_BOOT} resamples, seed {BOOT_SEED}; reported as mean(b)/mean(k) "
        f"when exact Bayes' t-interval includes 0, so that it stays finite), the agreement band "
        f"[{AGREEMENT_BAND[0]:g}, {AGREEMENT_BAND[1]:g}], and the null comparison |k_w - b_w| - |f_w - b_w| (t-interval "
        f"over worlds).  Supported: exact Bayes' interval excludes 0, the kernel's effect has its sign, R's interval "
        f"lies inside the band and the null comparison's below 0 (the kernel is closer to Bayes' effect than label "
        f"counting).  Refuted: opposite signs (both intervals exclude 0), or R's interval wholly outside the band (an "
        f"effect in the kernel without one in exact Bayes, or the reverse), or, where exact Bayes' interval excludes 0, "
        f"the null comparison's interval above 0.  "
        f"Inconclusive otherwise, and with < {MIN_UNITS} worlds.  A phenomenon is refuted when any setting inside "
        f"the assumptions refutes, supported when every judged setting supports, out of scope when none lies inside, "
        f"else inconclusive.  Settings outside the assumptions (label flips, restart-free order) are reported with "
        f"their numbers, never counted; a setting where exact Bayes is undefined is reported, not counted; a setting "
        f"where neither exact Bayes nor the kernel shows a detectable effect (and nothing refutes) is consistent and "
        f"not counted, on either side; the headroom TV(exact Bayes, oracle) of the unperturbed setting is reported "
        f"beside every setting.")


# ---------------------------------------------------------------------- effects from the verdict JSON
def effect(d) -> dict | None:
    """A phenomena effect dict -> {'ci': [mean, lo, hi], 'worlds', 'world_means'} (the per-world
    lists may be empty in an older sweep); None when it holds no number."""
    if not isinstance(d, dict) or not math.isfinite(as_float(d.get("mean"))) or int(d.get("n_prompts", 1) or 0) == 0:
        return None
    worlds = list(d.get("worlds") or [])
    means = [as_float(x) for x in (d.get("world_means") or [])]
    if len(worlds) != len(means):
        worlds, means = [], []
    return {"ci": [as_float(d.get("mean")), as_float(d.get("ci_low")), as_float(d.get("ci_high"))],
            "worlds": worlds, "world_means": means, "n_worlds": int(d.get("n_worlds", len(worlds)) or 0)}


def headroom_of(v: dict, setting_key: str | None = None) -> dict | None:
    """The verdict JSON's headroom (one effect-like dict, or one per setting)."""
    h = v.get("headroom")
    if isinstance(h, dict) and "mean" not in h and setting_key is not None:
        h = h.get(setting_key)
    return effect(h) if isinstance(h, dict) else None


def setting(name: str, scope: str, v: dict, getter, key=None, why: str = "") -> dict:
    """{'setting', 'scope': 'in' | 'outside', 'why', 'headroom', 'bayes', 'kernel', 'frequency'}: one
    setting of a verdict dict, each predictor's effect (:func:`effect` of ``getter(predictor)``)."""
    return {"setting": name, "scope": scope, "why": why, "headroom": headroom_of(v, key),
            **{p: effect(getter(p)) for p in ("bayes", "kernel", "frequency")}}


def retrieval_settings(v: dict) -> list[dict]:
    """Each selector at the smallest bandwidth against random demonstrations."""
    return [setting(f"{sel} selector, τ = {v.get('bandwidth')}, n = {v.get('n_demos')}", "in", v,
                    lambda p, res=v[sel]: (res.get(p) or {}).get("tv_oracle_minus_random"), sel)
            for sel in ("kernel", "similarity", "overlap") if isinstance(v.get(sel), dict)]


def labels_settings(v: dict) -> list[dict]:
    """Format (inside: the label space changed) and flip (outside: labels inconsistent with the concept)."""
    return [setting(f"{mode}, fraction {v.get('fraction')}, n = {v.get('n_demos')}",
                    "outside" if mode == "flip" else "in", v, lambda p, res=v[mode]: res.get(p), mode,
                    OUTSIDE_WHY["flip"] if mode == "flip" else "")
            for mode in ("format", "flip") if isinstance(v.get(mode), dict)]


def shift_settings(v: dict) -> list[dict]:
    """Each kind/target group at the largest shift against shift 0."""
    return [setting(f"{key}, shift {v.get('shift')}, n = {v.get('n_demos')}", "in", v,
                    lambda p, res=res: (res.get(p) or {}).get("shifted_minus_clean"), key)
            for key, res in v.items() if "/" in str(key) and isinstance(res, dict)]


def prior_settings(v: dict) -> list[dict]:
    """The smallest prior against the uniform one."""
    preds = v.get("predictors", {})
    return [setting(f"smallest prior vs uniform, n = {v.get('n_demos')}", "in", v,
                    lambda p: ((preds.get(p) or {}).get("vs_uniform") or [None])[-1], "prior")]


def order_settings(v: dict) -> list[dict]:
    """Restart-free worlds only (outside); restart worlds are an identity, checked by :func:`order_check`."""
    return [setting(f"restart-free worlds, n = {v.get('n_demos')}", "outside", v,
                    lambda p: {"bayes": v.get("bayes_restart_free"), "kernel": v.get("kernel_restart_free")}.get(p),
                    "restart-free", OUTSIDE_WHY["restart-free"])]


#: phenomenon -> the reader of its verdict dict's settings
SETTINGS = {"retrieval": retrieval_settings, "labels": labels_settings, "shift": shift_settings,
            "prior": prior_settings, "order": order_settings}


def settings(name: str, v: dict) -> list[dict]:
    """[{'setting', 'scope': 'in' | 'outside', 'why', 'bayes', 'kernel', 'frequency', 'headroom'}]
    of one phenomenon's verdict dict (each predictor an :func:`effect` or None)."""
    return SETTINGS[name](v) if name in SETTINGS else []


def order_check(v: dict) -> dict:
    """The restart-world order invariance as an identity check."""
    c = v.get("checks") or {}
    rb, km = as_float(c.get("restart_bayes_max_tv")), as_float(c.get("kernel_max_tv"))
    passed = bool(c.get("passed")) and rb < INVARIANCE_TOL and km < INVARIANCE_TOL
    return {"name": "restart worlds: exact Bayes and every kernel estimate are order-invariant",
            "verdict": PASSED if passed else FAILED,
            "text": (f"max TV under a permutation of the demonstrations: exact Bayes {fmt(rb)}, kernels {fmt(km)} "
                     f"(tolerance {INVARIANCE_TOL:g})") if c else "not checked: no checks in the verdict JSON"}


# ---------------------------------------------------------------------- the rule
def aligned(s: dict) -> tuple[list, dict]:
    """(worlds common to exact Bayes, the kernel and (when there) the label frequencies, {pred:
    per-world means in that order})."""
    preds = [p for p in ("bayes", "kernel", "frequency") if s.get(p) is not None and s[p]["worlds"]]
    if "bayes" not in preds or "kernel" not in preds:
        return [], {}
    common = [w for w in s["bayes"]["worlds"] if all(w in s[p]["worlds"] for p in preds)]
    vals = {p: np.array([s[p]["world_means"][s[p]["worlds"].index(w)] for w in common], float) for p in preds}
    return common, vals


_POSS = {"exact Bayes": "'", "the kernel": "'s"}


def judge_setting(s: dict, level: float = 0.95) -> dict:
    """{'verdict', 'why', 'ratio': (est, lo, hi), 'inverted', 'null': (m, lo, hi), 'W'} of one
    setting inside the assumptions (:data:`RULE`), every interval at ``level`` (the phenomenon's
    Bonferroni level: :func:`level_for`)."""
    out = {"ratio": (NAN,) * 3, "inverted": False, "null": (NAN,) * 3, "W": 0}
    if s.get("bayes") is None:
        return dict(out, verdict=None, why="exact Bayes undefined (every prompt impossible under the pretraining "
                                           "concepts): nothing to compare the kernel with")
    if s.get("kernel") is None:
        return dict(out, verdict=INCONCLUSIVE, why="no kernel number")
    worlds, vals = aligned(s)
    W = len(worlds)
    out["W"] = W
    if not worlds:
        return dict(out, verdict=INCONCLUSIVE, why="no per-world effects in the verdict JSON (an older phenomena "
                                                   "sweep)")
    if W < MIN_UNITS:
        return dict(out, verdict=INCONCLUSIVE, why=few(W))
    b, k = vals["bayes"], vals["kernel"]
    bm, blo, bhi, _ = unit_ci(b, worlds, level=level)
    km, klo, khi, _ = unit_ci(k, worlds, level=level)
    b_eff, k_eff = blo > 0 or bhi < 0, klo > 0 or khi < 0
    inverted = not b_eff
    ratio = (ratio_ci(b, k, N_BOOT, BOOT_SEED, level) if inverted else ratio_ci(k, b, N_BOOT, BOOT_SEED, level))
    null = (unit_ci(np.abs(k - b) - np.abs(vals["frequency"] - b), worlds, level=level)[:3] if "frequency" in vals
            else (NAN,) * 3)
    out.update(ratio=ratio, inverted=inverted, null=null)
    lo_b, hi_b = AGREEMENT_BAND
    r_in = math.isfinite(ratio[1]) and ratio[1] >= lo_b and ratio[2] <= hi_b
    r_out = math.isfinite(ratio[1]) and (ratio[2] < lo_b or ratio[1] > hi_b)
    if b_eff and k_eff and np.sign(bm) != np.sign(km):
        return dict(out, verdict=REFUTED, why="the kernel's effect has the opposite sign")
    if r_out:
        small = ratio[2] < lo_b                        # the numerator's effect is the smaller one
        num, den = ("exact Bayes", "the kernel") if inverted else ("the kernel", "exact Bayes")
        big, little = (den, num) if small else (num, den)
        why = (f"{big}{_POSS[big]} effect is far larger than {little}{_POSS[little]} (the ratio's interval lies "
               f"outside the band)")
        if small:
            why += ": an effect in the kernel without one in exact Bayes" if inverted else \
                ": an effect of exact Bayes the kernel misses"
        return dict(out, verdict=REFUTED, why=why)
    # only where exact Bayes moves: with no effect to track, |k - b| - |f - b| is mostly the kernel's noise
    # against label frequencies that may not move at all (|·| is biased upwards), and the ratio above
    # already judges an effect the kernel shows alone
    if b_eff and null[1] > 0:
        return dict(out, verdict=REFUTED, why="label counting tracks exact Bayes' effect better than the kernel")
    if not b_eff and not k_eff:
        # both null: the kernel agrees with exact Bayes that nothing happens, which neither
        # supports nor refutes "X changes in-context learning"; dropped symmetrically
        return dict(out, verdict=None, why=f"neither exact Bayes nor the kernel shows an effect detectable at the "
                                           f"{_level_text(level)} level (consistent; nothing to judge)")
    if b_eff and np.sign(km) == np.sign(bm) and r_in and null[2] < 0:
        return dict(out, verdict=SUPPORTED, why="the kernel shows exact Bayes' effect, of its size, closer than "
                                                "label counting")
    return dict(out, verdict=INCONCLUSIVE, why=f"no effect in exact Bayes detectable at the {_level_text(level)} level"
                if not b_eff else
                "an interval straddles its threshold")


def level_for(n_settings: int) -> float:
    """The interval level of each setting's judgement when a phenomenon has ``n_settings`` inside
    its assumptions: 1 − 0.05 / n_settings (Bonferroni), so that "one refuting setting refutes the
    phenomenon" keeps a family-wise error of at most 5%."""
    return 1.0 - FAMILY_ALPHA / max(int(n_settings), 1)


def _level_text(level: float) -> str:
    return f"{100 * level:.3g}%"


def _setting_text(s: dict, j: dict | None) -> str:
    def e(p):
        return ci_text(s[p]["ci"]) if s.get(p) else "undefined" if p == "bayes" else "n/a"

    txt = f"{s['setting']}: exact Bayes {e('bayes')}, kernel {e('kernel')}, label frequencies {e('frequency')}"
    lv = f" ({_level_text(j['level'])} CI)" if j is not None and j.get("level", 0.95) != 0.95 else ""
    if j is not None and math.isfinite(j["ratio"][0]):
        txt += f", {'exact Bayes / kernel' if j['inverted'] else 'kernel / exact Bayes'} {ci_text(j['ratio'])}{lv}"
    if j is not None and math.isfinite(j["null"][0]):
        txt += f", |k - b| - |f - b| {ci_text(j['null'])}{lv}"
    if s.get("headroom"):
        txt += f"; headroom TV(exact Bayes, oracle) {ci_text(s['headroom']['ci'])}"
    return txt


def verdict(name: str, v: dict, text: str = "", *, family: str = FAMILY):
    """The claim C7-``name`` from one phenomenon's verdict dict (the phenomena sweep's
    verdict_json) and its sentence ``text``."""
    claim = CLAIMS[name]
    effect_name, sign = EFFECTS.get(name, ("effect", 0))
    parts, outside, numbers, plot_settings = [], [], {}, []
    found = settings(name, v)
    level = level_for(sum(s["scope"] == "in" for s in found))
    for s in found:
        j = dict(judge_setting(s, level), level=level) if s["scope"] == "in" else None
        for p, label in (("bayes", "exact Bayes"), ("kernel", "kernel"), ("frequency", "label frequencies (reference)")):
            if s.get(p):
                numbers[f"{s['setting']}: {label}"] = tuple(s[p]["ci"])
        if s.get("headroom"):
            numbers[f"{s['setting']}: headroom TV(exact Bayes, oracle)"] = tuple(s["headroom"]["ci"])
        if j is not None:
            lv = f" ({_level_text(level)} CI)" if level != 0.95 else ""
            numbers[f"{s['setting']}: {'exact Bayes / kernel' if j['inverted'] else 'kernel / exact Bayes'}{lv}"] = \
                j["ratio"]
            numbers[f"{s['setting']}: |k - b| - |f - b| (null comparison){lv}"] = j["null"]
        txt = _setting_text(s, j)
        if s["scope"] == "outside":
            outside.append({"setting": s["setting"], "why": s["why"], "text": txt})
        else:
            parts.append({"name": s["setting"], "verdict": j["verdict"] or "not counted", "text": f"{txt} ({j['why']})"})
        plot_settings.append({"setting": s["setting"], "scope": s["scope"],
                              **{p: (s[p]["ci"] if s.get(p) else None) for p in ("bayes", "kernel", "frequency")},
                              "ratio": list(j["ratio"]) if j else None, "inverted": bool(j and j["inverted"])})
    judged = [p for p in parts if p["verdict"] != "not counted"]
    dropped = len(parts) - len(judged)
    note = (f" ({dropped} not counted: exact Bayes undefined, or no effect in either)" if dropped else "")
    if not parts:
        word, head = OUT_OF_SCOPE, "no setting lies inside the claim's assumptions"
    elif any(p["verdict"] == REFUTED for p in judged):
        word = REFUTED
        head = f"{sum(p['verdict'] == REFUTED for p in judged)} of {len(judged)} judged settings refute{note}"
    elif judged and all(p["verdict"] == SUPPORTED for p in judged):
        word, head = SUPPORTED, f"all {len(judged)} judged settings support{note}"
    elif not judged:
        word = INCONCLUSIVE
        head = f"no setting inside the assumptions can be judged{note}"
    else:
        word = INCONCLUSIVE
        head = f"{sum(p['verdict'] == SUPPORTED for p in judged)} of {len(judged)} judged settings support{note}"
    predicts = {1: "> 0", -1: "< 0", 0: "0: the kernel estimate is order-invariant"}[sign]
    body = "; ".join([p["text"] for p in parts] + [f"outside the assumptions: {o['text']}" for o in outside])
    full = f"{effect_name} (the kernel account predicts {predicts}): {head}" + (f"; {body}" if body else "")
    checks = [order_check(v)] if name == "order" else []
    families = {family: {"verdict": word, "text": full, "short": head}}
    reference = (f"the phenomenon's own verdict: {text}" if text else
                 "label frequencies beside every predictor; exact Bayes and the oracle beside the kernel")
    return claim.result(overall(families), families, full, reference=reference, numbers=numbers, parts=parts,
                        outside=outside, checks=checks,
                        plot={"settings": plot_settings, "effect": effect_name, "band": list(AGREEMENT_BAND)},
                        extra={"phenomenon_rule": v.get("rule", "")})


def verdicts(table) -> dict:
    """{phenomenon: Result} from the phenomena sweep's ``verdicts`` table (name, text,
    verdict_json: the phenomenon's verdict dict as JSON)."""
    table = done(table)
    out = {}
    if table is None or table.empty:
        return out
    for _, row in table.iterrows():
        raw = row["verdict_json"]
        try:
            v = json.loads(raw) if isinstance(raw, str) else dict(raw)
        except (TypeError, ValueError):
            v = {}
        name = row["name"]
        if name in CLAIMS:
            out[name] = verdict(name, v, row["text"] if isinstance(row.get("text"), str) else "")
    return out


def _judge(name):
    def judge(tables: dict, info: dict):
        got = verdicts(tables["phenomena.verdicts"])
        if name not in got:
            raise LookupError(f"no verdict row for phenomenon {name!r}")
        return got[name]
    return judge


def draw(result, fig) -> None:
    """Each setting's effect for exact Bayes, the kernel and the label frequencies (95% CI over
    worlds; outside settings marked), and the ratio with the agreement band."""
    plot = result.plot
    sets = plot.get("settings") or []
    if not sets:
        raise ValueError("no data for a figure")
    ax, ax2 = fig.subplots(1, 2, width_ratios=[3, 2])
    for j, (p, col, lab) in enumerate((("bayes", REFERENCE_COLOUR, "exact Bayes"),
                                       ("kernel", PREDICTOR_COLOURS["kernel"], "theory kernel"),
                                       ("frequency", PREDICTOR_COLOURS["frequency"], "label frequencies"))):
        first = True
        for i, s in enumerate(sets):
            ci = s.get(p)
            if not ci or not math.isfinite(as_float(ci[0])):
                continue
            m, lo, hi = (as_float(x) for x in ci)
            err = [[max(m - lo, 0)], [max(hi - m, 0)]] if math.isfinite(lo) and math.isfinite(hi) else None
            ax.errorbar([m], [i + (j - 1) * 0.22], xerr=err, fmt="o", ms=4, capsize=3, color=col,
                        label=lab if first else None)
            first = False
    labels = [s["setting"] + (" (outside)" if s["scope"] == "outside" else "") for s in sets]
    ax.axvline(0, color=REFERENCE_COLOUR, lw=0.8)
    ax.set_yticks(range(len(sets)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(plot.get("effect", "effect") + " (95% CI over worlds)", fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    lo_b, hi_b = plot.get("band", AGREEMENT_BAND)
    ax2.axvspan(lo_b, hi_b, color=BAND_COLOUR, alpha=0.15, label="agreement band")
    ax2.axvline(1, color=BAND_COLOUR, lw=0.8)
    ax2.axvline(0, color=REFERENCE_COLOUR, lw=0.8)
    for i, s in enumerate(sets):
        r = s.get("ratio")
        if not r or not math.isfinite(as_float(r[0])):
            continue
        m, lo, hi = (float(np.clip(as_float(x), -2, 4)) for x in r)
        err = [[max(m - lo, 0)], [max(hi - m, 0)]] if math.isfinite(as_float(r[1])) else None
        ax2.errorbar([m], [i], xerr=err, fmt="s" if s["inverted"] else "o", ms=4, capsize=3,
                     color=EXTRA_COLOURS[1] if s["inverted"] else PREDICTOR_COLOURS["kernel"])
    ax2.set_yticks(range(len(sets)), [""] * len(sets))
    ax2.set_ylim(ax.get_ylim())
    ax2.set_xlim(-2, 4)
    ax2.set_xlabel("kernel / exact Bayes (squares: exact Bayes / kernel), clipped to [-2, 4]", fontsize=8)
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=7, frameon=False)


CLAIMS = {name: Claim(f"C7-{name}", TITLES[name], KIND, SOURCES[name], SCOPES[name], RULE,
                      reads=("phenomena.verdicts",), judge=_judge(name), draw=draw, families=(FAMILY,))
          for name in PHENOMENA if name in TITLES}
