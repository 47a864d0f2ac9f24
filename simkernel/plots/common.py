"""Reading tidy tables back for drawing: typed records and one-line errors naming the row."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

def as_float(v) -> float | None:
    try:
        return float(v.strip() if isinstance(v, str) else v)
    except (TypeError, ValueError):
        return None


def finite(*xs) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def load_results(folder, names, columns, records, what: str, hint: str) -> tuple[list[dict], dict]:
    """The rows of a tidy CSV and the dict of its JSON (``names`` = (csv, json) in ``folder``),
    with one-line ValueErrors naming what is missing or unreadable."""
    folder = Path(folder)
    f_csv, f_json = folder / names[0], folder / names[1]
    for f in (f_csv, f_json):
        if not f.is_file():
            raise ValueError(f"{str(folder)!r} holds no {f.name} ({hint.format(folder=folder)})")
    try:
        with open(f_csv, newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in columns if c not in header]
            if missing:
                raise ValueError(f"{str(f_csv)!r} lacks column {missing[0]!r}; expected {', '.join(columns)}")
            rows = records(list(reader))
        meta = json.loads(f_json.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise ValueError(f"cannot read the {what} results in {str(folder)!r} ({type(e).__name__})") from None
    if not rows:
        raise ValueError(f"{str(f_csv)!r} has no rows")
    if not isinstance(meta, dict):
        raise ValueError(f"{str(f_json)!r} does not hold a JSON object, as a {names[1]} must")
    return rows, meta


def checked_rows(rows, columns, what):
    """(index, row) of a tidy table (a list of dicts or a DataFrame) whose rows all hold ``columns``."""
    for i, r in enumerate(rows.to_dict("records") if hasattr(rows, "to_dict") else rows):
        missing = [c for c in columns if c not in r]
        if missing:
            raise ValueError(f"row {i} of the {what} table lacks column {missing[0]!r}; "
                             f"expected {', '.join(columns)}")
        yield i, r
