"""The command line's option types, parsers and progress reporting (click): each a bad value's
one-line message naming the value and what is allowed.  No numerical work, nothing heavy imported,
so ``simkernel --help`` stays fast.
"""

from __future__ import annotations

import math
import os
import sys
import time

import click

from .validate import did_you_mean


# ---------------------------------------------------------------------- numbers
class Int(click.ParamType):
    """An integer >= ``minimum``, with a one-line message naming the bad value and the range."""

    name = "integer"

    def __init__(self, minimum: int):
        self.minimum = minimum

    def get_metavar(self, param, ctx=None):
        return f"INT>={self.minimum}"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            v = value
        else:
            try:
                v = int(str(value).strip(), 10)
            except ValueError:
                self.fail(f"{value!r} is not an integer; allowed: integers >= {self.minimum}", param, ctx)
        if v < self.minimum:
            self.fail(f"{v} is too small; allowed: integers >= {self.minimum}", param, ctx)
        return v


NONNEG = Int(0)
POSITIVE = Int(1)
EXAMPLE_LENGTH = Int(2)


class PositiveFloat(click.ParamType):
    name = "float"

    def __init__(self, what):
        self.what = what

    def convert(self, value, param, ctx):
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number; allowed: {self.what} > 0", param, ctx)
        if not (v > 0 and math.isfinite(v)):
            self.fail(f"{value} is not allowed; {self.what} must be > 0", param, ctx)
        return v


# ---------------------------------------------------------------------- --set NAME=VALUE
def parse_sets(values) -> dict:
    """``("n_states=20", "restart=false")`` -> ``{"n_states": "20", "restart": "false"}``
    (make_world coerces the strings to each option's type)."""
    out = {}
    for v in values:
        name, eq, value = v.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or not name or not value:
            raise click.UsageError(f"--set expected NAME=VALUE, got {v!r}")
        out[name] = value
    return out


# ---------------------------------------------------------------------- lists of n, choices, seeds
#: Largest n accepted by --n-demos (each prompt holds n demonstrations; memory grows with B·n·L).
N_DEMOS_LIMIT = 100_000


def parse_n_demos(text, limit: int = N_DEMOS_LIMIT, minimum: int = 1) -> list[int]:
    """``'1..4'`` -> [1, 2, 3, 4]; ``'1,2,8'`` -> [1, 2, 8]; mixtures ``'1,2,4..8'`` too.
    ``A..B`` is every n from A to B inclusive.  Returns the sorted distinct values; raises a
    one-line ValueError for anything else (empty items, n < ``minimum``, A > B, n > ``limit``)."""
    spec = str(text).strip()
    allowed = (f"n >= {minimum} as 'A..B' (every n from A to B), a comma list '1,2,8', "
               f"or a mixture '1,2,4..8'")
    if not spec:
        raise ValueError(f"empty; expected {allowed}")
    out = set()

    def where(item):
        return f"{item!r} in {spec!r}" if item != spec else repr(item)

    def number(tok, item):
        tok = tok.strip()
        if not (tok.isascii() and tok.isdigit()):            # rejects '', '-1', '+1', '1.5', 'a', '²'
            what = ("a negative number" if tok.startswith("-") and tok[1:].isascii() and tok[1:].isdigit()
                    else "not a whole number")
            raise ValueError(f"{where(item)}: {tok!r} is {what}; expected {allowed}")
        v = int(tok)
        if v < minimum:
            raise ValueError(f"{where(item)}: n must be >= {minimum}, got {v}; expected {allowed}")
        if v > limit:
            raise ValueError(f"{where(item)}: n must be <= {limit}, got {v}")
        return v

    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"empty item in {spec!r}; expected {allowed}")
        if ".." in item:
            a, _, b = item.partition("..")
            lo, hi = number(a, item), number(b, item)
            if lo > hi:
                raise ValueError(f"{where(item)}: the range is empty ({lo} > {hi}); write it low..high")
            out.update(range(lo, hi + 1))
        else:
            out.add(number(item, item))
    return sorted(out)


class NDemos(click.ParamType):
    name = "n-demos"

    def __init__(self, minimum: int = 1):
        self.minimum = minimum

    def get_metavar(self, param, ctx=None):
        return "A..B|N,N,..."

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            return parse_n_demos(value, minimum=self.minimum)
        except ValueError as e:
            self.fail(str(e), param, ctx)


class Concepts(click.ParamType):
    """'prior', 'id', 'ood' or a concept index (checked against the world later)."""

    name = "concepts"

    def get_metavar(self, param, ctx=None):
        return "prior|id|ood|INT"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        v = str(value).strip().lower()
        if v in ("prior", "id", "ood"):
            return v
        if v.isdigit():
            return int(v)
        self.fail(f"{value!r} is not one of prior, id, ood or a concept index 0..K-1", param, ctx)


def choice_list(allowed, what):
    """A callback for a repeatable option whose values may also be comma lists: returns the
    distinct values in the order given (the default when none is given)."""
    def callback(ctx, param, values):
        out = []
        for v in values or ():
            for item in str(v).split(","):
                item = item.strip().lower()
                if not item:
                    raise click.BadParameter(f"empty {what} in {v!r}; allowed: {', '.join(allowed)}", ctx, param)
                if item not in allowed:
                    raise click.BadParameter(f"unknown {what} {item!r}; allowed: {', '.join(allowed)}"
                                             f"{did_you_mean(item, allowed)}", ctx, param)
                if item not in out:
                    out.append(item)
        return tuple(out) if out else tuple(allowed)
    return callback


def distinct(what):
    """A callback for a repeatable seed option: the seeds given (default (0,)), each at most once."""
    def callback(ctx, param, values):
        values = tuple(values) or (0,)
        dup = sorted({s for s in values if values.count(s) > 1})
        if dup:
            raise click.BadParameter(f"{what} {dup[0]} is given twice: its prompts would be counted twice", ctx, param)
        return values
    return callback


distinct_seeds = distinct("seed")


def probe_layers(ctx, param, value):
    """'auto' | 'all' | 'none' | layer indices ('16..21', '3,7,14')."""
    v = str(value).strip().lower()
    if v in ("auto", "all", "none"):
        return v
    try:
        return parse_n_demos(v, minimum=0)
    except ValueError as e:
        raise click.BadParameter(f"{e}; or one of auto, all, none", ctx=ctx, param=param) from None


def comma_words(what):
    def callback(ctx, param, value):
        if value is None:
            return None
        words = tuple(w.strip() for w in str(value).split(","))
        if not all(words):
            raise click.BadParameter(f"empty {what} in {value!r}; expected a comma list", ctx=ctx, param=param)
        return words
    return callback


# ---------------------------------------------------------------------- progress
#: How long work reports progress: 'bar' (tqdm), 'plain' (a line per stage and per 10% on stderr)
#: or 'none'.  Default: a bar on a terminal, plain lines otherwise (a batch job, a log file).
PROGRESS_ENV = "SIMKERNEL_PROGRESS"


class PlainProgress:
    """tqdm's few methods the commands use, printing plain lines to stderr instead of redrawing
    a bar: one when the stage (description) changes and one per 10% of the work."""

    def __init__(self, total, desc, unit):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self._post = ""
        self._said = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self):
        pass

    def _line(self, text):
        click.echo(f"[{time.strftime('%H:%M:%S')}] {text}", err=True)

    def set_description(self, desc, refresh=True):
        if desc != self.desc:
            self.desc = desc
            self._line(desc)

    def set_postfix(self, post=None, refresh=True, **kw):
        self._post = ", ".join(f"{k} {v}" for k, v in {**(post or {}), **kw}.items())

    def set_postfix_str(self, text, refresh=True):
        if text and text != self._post:
            self._post = text
            self._line(f"{self.desc}: {text}")

    def update(self, k=1):
        self.n += k
        tenth = int(10 * self.n / self.total) if self.total else 10
        if tenth > self._said:
            self._said = tenth
            self._line(f"{self.desc}: {self.n}/{self.total} {self.unit}" + (f" ({self._post})" if self._post else ""))


def progress_bar(total, desc, unit):
    mode = os.environ.get(PROGRESS_ENV) or ("bar" if sys.stderr.isatty() else "plain")
    if mode == "plain":
        return PlainProgress(total, desc, unit)
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, disable=mode == "none", leave=False, file=sys.stderr)


class StagedBars:
    """One progress bar on screen at a time for work in stages (sampling, then training):
    ``show(name, total, unit, n, **postfix)`` closes the previous stage's bar when ``name``
    changes; numeric postfix values are shown to 3 decimals (None ones are left out)."""

    def __init__(self):
        self.name, self.bar, self.post = None, None, {}

    def __enter__(self):
        return self

    def show(self, name, total, unit, n, **postfix):
        if name != self.name:
            self.close()
            self.name, self.bar = name, progress_bar(total, name, unit).__enter__()
        self.bar.update(n - self.bar.n)
        self.post.update({k: f"{v:.3f}" for k, v in postfix.items() if v is not None})
        if self.post:
            self.bar.set_postfix(self.post, refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def __exit__(self, *exc):
        self.close()
        return False
