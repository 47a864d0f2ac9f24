"""Argument checks with one error style, at the edge of every ``run()``.

Every check raises a one-line ``ValueError`` that names the Python argument, the value given
and what is allowed: ``"n_prompts must be an integer >= 1, got 0"``.  The CLI maps argument
names to its flags (``cli.common.speak_flags``), so the same message serves both.  Each check returns
the value normalised (a Python int, a sorted list of distinct ints, ...), so a caller writes
``n = check_int("n_prompts", n_prompts, 1)`` and uses ``n``.  numpy only; cheap to import.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["check_int", "check_ints", "check_float", "check_floats", "check_choice", "check_choices",
           "check_seed", "did_you_mean"]


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _bounds(minimum, maximum) -> str:
    if maximum is None:
        return f">= {minimum}"
    return f"in [{minimum}, {maximum}]"


def check_int(name: str, value, minimum: int = 0, maximum: int | None = None) -> int:
    """One integer (Python or numpy; not a bool, not a float) within [minimum, maximum]."""
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer {_bounds(minimum, maximum)}, got {value!r}")
    return int(value)


def check_seed(name: str, value) -> int:
    """A seed: a non-negative integer."""
    return check_int(name, value, 0)


def check_ints(name: str, values, minimum: int = 0, maximum: int | None = None, *, distinct: bool = False) -> list[int]:
    """One integer or a non-empty list of them, each within [minimum, maximum]; returned sorted
    without repeats, or, with ``distinct``, in the order given with repeats an error."""
    vals = [values] if _is_int(values) else values
    try:
        vals = list(vals)
    except TypeError:
        vals = None
    if not vals or not all(_is_int(v) and v >= minimum and (maximum is None or v <= maximum) for v in vals):
        raise ValueError(f"{name} must be an integer or a non-empty list of integers {_bounds(minimum, maximum)}, "
                         f"got {values!r}")
    if distinct:
        if len(set(int(v) for v in vals)) != len(vals):
            raise ValueError(f"{name} must be distinct integers, got {values!r}")
        return [int(v) for v in vals]
    return sorted(set(int(v) for v in vals))


def _in_range(x: float, lo, hi, lo_open: bool, hi_open: bool, allow_inf: bool) -> bool:
    if math.isnan(x) or (math.isinf(x) and not (allow_inf and x == math.inf)):
        return False
    above = x > lo if lo_open else x >= lo
    below = (hi is None or (x < hi if hi_open else x <= hi)) or (allow_inf and x == math.inf)
    return above and below


def _range_text(lo, hi, lo_open: bool, hi_open: bool, allow_inf: bool) -> str:
    if hi is None:
        text = f"> {lo:g}" if lo_open else f">= {lo:g}"
    else:
        text = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        text = "in " + text
    return text + (" or inf" if allow_inf else "")


def check_float(name: str, value, lo: float = -math.inf, hi: float | None = None, *, lo_open: bool = False,
                hi_open: bool = False, allow_inf: bool = False) -> float:
    """One real number within the range (closed unless ``lo_open`` / ``hi_open``; NaN never,
    +inf only with ``allow_inf``)."""
    if not _is_number(value) or not _in_range(float(value), lo, hi, lo_open, hi_open, allow_inf):
        raise ValueError(f"{name} must be a number {_range_text(lo, hi, lo_open, hi_open, allow_inf)}, got {value!r}")
    return float(value)


def check_floats(name: str, values, lo: float = -math.inf, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False, allow_inf: bool = False) -> list[float]:
    """One number or a non-empty list of them, each within the range; in the order given,
    without repeats."""
    vals = [values] if _is_number(values) else values
    try:
        vals = list(vals)
    except TypeError:
        vals = None
    if not vals or not all(_is_number(v) and _in_range(float(v), lo, hi, lo_open, hi_open, allow_inf) for v in vals):
        raise ValueError(f"{name} must be a number or a non-empty list of numbers "
                         f"{_range_text(lo, hi, lo_open, hi_open, allow_inf)}, got {values!r}")
    return list(dict.fromkeys(float(v) for v in vals))


def did_you_mean(value, allowed) -> str:
    """' (did you mean X?)' for the closest allowed name, or ''."""
    import difflib                # only on the error path: the CLI's --help stays light

    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(name: str, value, allowed) -> str:
    """One of ``allowed`` (strings); a near miss gets a 'did you mean'."""
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}{did_you_mean(value, allowed)}")
    return value


def check_choices(name: str, values, allowed) -> list[str]:
    """One of ``allowed`` or a non-empty list of them; in the order given, without repeats."""
    allowed = tuple(allowed)
    vals = [values] if isinstance(values, str) else values
    try:
        vals = list(vals)
    except TypeError:
        vals = None
    if not vals:
        raise ValueError(f"{name} must be one or more of {', '.join(allowed)}, got {values!r}")
    for v in vals:
        if not isinstance(v, str) or v not in allowed:
            raise ValueError(f"{name} must be one or more of {', '.join(allowed)}, got {v!r}"
                             f"{did_you_mean(v, allowed)}")
    return list(dict.fromkeys(vals))
