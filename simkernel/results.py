"""The result protocol: what every command's ``run()`` returns, so that the CLI, ``sweep`` and
``report`` read any result the same way, with no per-command branches.

A result has

- ``meta``: a JSON-able dict of the config, seeds and package versions that made it;
- ``tables()``: ``{name: Table}``, the tidy tables it writes (``None`` names the main one), each
  with its file name in a result folder, its columns and their dtypes;
- ``summary_lines()``: what the CLI prints;
- ``write(out)``: its files in the folder ``out`` (tables, JSON, figures), atomically; returns
  the paths written.

A table's dtypes survive a CSV round trip: :func:`read_table` gives the columns back typed
(integers as int64, a whole-number column that holds ``inf`` as float, booleans as bool), so a
reader never re-types a column by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

#: The dtypes a table's column may have.
DTYPES = ("int", "float", "str", "bool")


@dataclass(frozen=True)
class Table:
    """One tidy table of a result.

    file: its file name in a result folder (``"convergence.csv"``); columns: the column names in
    order; dtypes: column -> one of :data:`DTYPES` (a column not named is ``str``); rows: a list of
    dicts keyed by column (the rows as computed, before any CSV)."""
    file: str
    columns: tuple
    dtypes: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)

    def __post_init__(self):
        bad = {c: d for c, d in self.dtypes.items() if d not in DTYPES}
        if bad:
            c, d = next(iter(bad.items()))
            raise ValueError(f"dtype of column {c!r} must be one of {', '.join(DTYPES)}, got {d!r}")
        extra = [c for c in self.dtypes if c not in self.columns]
        if extra:
            raise ValueError(f"dtypes names column {extra[0]!r}, which is not among the columns of {self.file}")

    def dtype(self, column: str) -> str:
        return self.dtypes.get(column, "str")

    def spec(self) -> dict:
        """The JSON-able description recorded beside the file (sweep's done marker):
        {'file', 'columns', 'dtypes'}."""
        return {"file": self.file, "columns": list(self.columns), "dtypes": {c: self.dtype(c) for c in self.columns}}

    def frame(self):
        """The rows as a pandas DataFrame with the declared dtypes."""
        import pandas as pd

        return typed(pd.DataFrame(list(self.rows), columns=list(self.columns)), self.spec()["dtypes"])


@runtime_checkable
class Result(Protocol):
    """What every command's ``run()`` returns (see the module docstring)."""
    meta: dict

    def tables(self) -> dict: ...

    def summary_lines(self) -> list: ...

    def write(self, out) -> list: ...


def label_dtype(values) -> str:
    """The dtype of a column of labels that are integers (world seeds) or names ('file'): "int"
    when every value is an integer, else "str"."""
    import numbers

    vals = list(values)
    return "int" if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in vals) else "str"


def _as_bool(v):
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no", ""):
            return False
        raise ValueError(f"not a boolean: {v!r}")
    return bool(v)


def typed(df, dtypes: dict):
    """``df`` with each column in ``dtypes`` cast to its dtype (a column missing from ``df`` is
    left missing; an int column with missing or infinite values becomes float, since neither has
    an integer form)."""
    import numpy as np
    import pandas as pd

    df = df.copy()
    for c, d in dtypes.items():
        if c not in df.columns:
            continue
        if d == "str":
            df[c] = df[c].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
        elif d == "bool":
            df[c] = df[c].map(_as_bool).astype(bool)
        else:
            num = pd.to_numeric(df[c], errors="coerce")
            whole = d == "int" and num.notna().all() and np.isfinite(num).all()
            df[c] = num.astype("int64") if whole else num.astype("float64")
    return df


def read_table(path, dtypes: dict | None = None):
    """A CSV written from a :class:`Table`, back as a DataFrame with its dtypes (``dtypes``: column
    -> dtype, e.g. from :meth:`Table.spec`; columns not named are read as strings)."""
    import pandas as pd

    df = pd.read_csv(Path(path), dtype=str, keep_default_na=False)
    return typed(df, dict({c: "str" for c in df.columns}, **(dtypes or {})))
