"""A sweep's combined tables: every job's tables, read back typed, one after the other.

``combine`` writes ``sweep.parquet/csv`` (the main table) and ``sweep.<name>.parquet/csv`` (each
other table) from the job folders.  Which tables a job has, their files, columns and dtypes come
from its done marker (the specs ``sweep_job.run_job`` recorded from ``result.tables()``), so no
command needs a branch here.  Each job table is read with ``results.read_table`` (typed); a column
takes one arrow type over the jobs (int with float makes float, anything else mixed makes
string).  Memory holds one job's table at a time (two passes: the types, then the rows).
"""

from __future__ import annotations

from pathlib import Path

from .sweep_job import canonical, one_line, table_specs

#: columns every combined table starts with, around the grid's
JOB_COLUMN, STATUS_COLUMNS = "job", ("status", "error")


#: The cells a combined table holds as null (pyarrow's CSV reader's defaults, which combined the
#: job tables before they were typed: the combined CSVs stay byte for byte what they were).
NULL_CELLS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "N/A",
              "NA", "NULL", "NaN", "n/a", "nan", "null")


def grid_value(v):
    """A grid value as a combined table holds it (lists and tables as their canonical JSON)."""
    return v if v is None or isinstance(v, (bool, int, float, str)) else canonical(v)


def _grid_type(values):
    """The arrow type of a grid column: int, float, bool or (mixed, lists) string."""
    import pyarrow as pa

    kinds = {type(v) for v in values if v is not None}
    if kinds == {bool}:
        return pa.bool_()
    if kinds and kinds <= {int}:
        return pa.int64()
    if kinds and kinds <= {int, float}:
        return pa.float64()
    return pa.string()


def _unify(types: list):
    """One arrow type for a column read with these types from the job tables: int and float make
    float, anything else mixed makes string."""
    import pyarrow as pa

    ts = set(types)
    if len(ts) == 1:
        return ts.pop()
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in ts):
        return pa.float64()
    return pa.string()


def dtype_of(arrow_type) -> str:
    """The results dtype of an arrow type (what ``SweepResult.table`` types a column as)."""
    import pyarrow as pa

    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_floating(arrow_type):
        return "float"
    return "str"


def _numeric(col, dtype: str):
    """A string column (nulls where a cell is missing) as int64, or as float64 when it is declared
    float, holds a missing value or is not all whole numbers (``inf``): :func:`results.typed`'s
    rule, in arrow's C++ parser (correctly rounded, as pandas' is)."""
    import pyarrow as pa
    import pyarrow.compute as pcomp

    if dtype == "int" and col.null_count == 0:
        try:
            return pcomp.cast(col, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass                                  # e.g. "inf" in a column of n
    return pcomp.cast(col, pa.float64())


def read_job_table(path: Path, spec: dict):
    """A job table as an arrow table with its spec's dtypes (``results.typed``): ints as int64 (a
    whole-number column that holds inf as float64), floats as float64, booleans as bool, strings
    as string.  An empty cell, 'nan' and the other spellings of a missing value in
    :data:`NULL_CELLS` are null whatever the dtype (the combined CSV writes an empty cell)."""
    import csv

    import pyarrow as pa
    import pyarrow.csv as pc

    from .results import typed

    import pyarrow.compute as pcomp

    declared = spec.get("dtypes") or {}
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    # every cell as text first (pyarrow refuses a row with too few or too many cells), then typed;
    # column by column and vectorised: a sweep reads every job table twice (scan, then write)
    raw = pc.read_csv(path, convert_options=pc.ConvertOptions(
        column_types={c: pa.string() for c in header}, strings_can_be_null=False,
        quoted_strings_can_be_null=False))
    nulls = pa.array(NULL_CELLS, pa.string())
    arrays = []
    for c in raw.column_names:
        col = raw.column(c).combine_chunks()
        empty = pcomp.is_in(col, value_set=nulls)
        dtype = declared.get(c, "str")
        if dtype == "str":
            arrays.append(pcomp.if_else(empty, pa.scalar(None, pa.string()), col))
        elif dtype in ("int", "float"):
            arrays.append(_numeric(pcomp.if_else(empty, pa.scalar(None, pa.string()), col), dtype))
        else:
            values = typed(col.to_pandas().to_frame(c), {c: dtype})[c].to_numpy()
            arrays.append(pa.array(values, mask=empty.to_numpy(zero_copy_only=False)))
    return pa.Table.from_arrays(arrays, names=raw.column_names)


def _specs_of(jobs, states) -> dict:
    """{table name: {job key: spec}} over the done jobs, the main table first, then the others in
    the order their first job lists them."""
    out: dict = {None: {}}
    for j, s in zip(jobs, states):
        if s.get("status") == "done":
            for name, spec in table_specs(s).items():
                out.setdefault(name, {})[j.key] = spec
    return out


def _scan(out: Path, jobs, states, specs_of: dict, damaged: dict) -> dict:
    """Pass 1, over every table before any is written: {name: {column: [(job key, arrow type)]}},
    and the damaged jobs in ``damaged`` (a job damaged in any of its tables is out of all)."""
    seen_of: dict = {}
    for name, specs in specs_of.items():
        seen = seen_of.setdefault(name, {})
        for j, s in zip(jobs, states):
            spec = specs.get(j.key)
            if s["status"] != "done" or j.key in damaged or spec is None:
                continue
            p = out / "jobs" / j.key / spec["file"]
            if not p.is_file():
                if name is None:
                    damaged[j.key] = f"{p}: missing"
                continue
            try:
                t = read_job_table(p, spec)
            except Exception as e:               # noqa: BLE001 (pandas and pyarrow raise their own errors)
                damaged[j.key] = f"{p}: cannot be read ({one_line(e)[:200]})"
                continue
            rows = ((s.get("outputs") or {}).get(p.name) or {}).get("rows")
            if rows is not None and rows != t.num_rows:
                damaged[j.key] = f"{p}: holds {t.num_rows} rows, its marker recorded {rows}"
                continue
            for f in t.schema:
                seen.setdefault(f.name, []).append((j.key, f.type))
    return seen_of


def _batch(schema, j, s, t, bad, grid_keys, grid_cols):
    """One job's rows of a combined table (``t`` None: one row with its status and error)."""
    import pyarrow as pa

    n = 1 if t is None else t.num_rows
    status, error = ("failed", f"damaged: {bad}") if bad else (s["status"], s.get("error"))
    cols = {JOB_COLUMN: [j.key] * n, "status": [status] * n, "error": [error] * n}
    cols.update({gc: [grid_value(j.grid.get(g))] * n for g, gc in zip(grid_keys, grid_cols)})
    arrays = []
    for f in schema:
        if f.name in cols:
            vals = cols[f.name]
            arrays.append(pa.array([None if v is None else (str(v) if pa.types.is_string(f.type) else v)
                                    for v in vals], f.type))
        elif t is not None and f.name in t.column_names:
            arrays.append(t.column(f.name).cast(f.type))
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def combine(out: Path, command: str, jobs: list, states: list[dict], grid_keys: list,
            damaged: dict | None = None, dtypes: dict | None = None) -> dict:
    """Write ``sweep.parquet/csv`` and ``sweep.<table>.parquet/csv`` of ``command``'s sweep from
    the job folders, each job table read by the spec its done marker recorded.  Returns {name:
    parquet path}; ``dtypes``, when given, receives {name: {column: dtype}} of every combined
    table (what ``SweepResult.table`` types them by).

    A done job whose table cannot be read, or holds another number of rows than its marker
    recorded, never becomes an empty row or a global parse error: it is entered in ``damaged``
    ({job key: 'path: what is wrong'}), stands in the main table as one row with status 'failed'
    and that error, and the other jobs' rows are written."""
    import pyarrow as pa
    import pyarrow.csv as pc
    import pyarrow.parquet as pq

    from .store import publish

    damaged = {} if damaged is None else damaged
    dtypes = {} if dtypes is None else dtypes
    specs_of = _specs_of(jobs, states)
    seen_of = _scan(out, jobs, states, specs_of, damaged)
    paths = {}
    for name, specs in specs_of.items():
        seen = {c: [t for k, t in ts if k not in damaged] for c, ts in seen_of[name].items()}
        seen = {c: _unify(ts) for c, ts in seen.items() if ts}
        if name is not None and not seen:
            continue
        grid_cols = [g if g not in seen else f"grid.{g}" for g in grid_keys]
        gtypes = [_grid_type([grid_value(j.grid.get(g)) for j in jobs]) for g in grid_keys]
        schema = pa.schema([(JOB_COLUMN, pa.string()), *zip(grid_cols, gtypes), ("status", pa.string()),
                            ("error", pa.string()), *seen.items()])
        stem = "sweep" if name is None else f"sweep.{name}"

        def write_both(pq_path, csv_path, specs=specs, schema=schema, name=name, grid_cols=grid_cols):
            with pq.ParquetWriter(pq_path, schema) as pw, pc.CSVWriter(csv_path, schema) as cw:
                for j, s in zip(jobs, states):   # pass 2: one job's rows at a time
                    bad, spec = damaged.get(j.key), specs.get(j.key)
                    p = out / "jobs" / j.key / spec["file"] if spec else None
                    if s["status"] == "done" and p is not None and p.is_file() and bad is None:
                        t = read_job_table(p, spec)
                    elif name is None:
                        t = None                 # a failed, missing or damaged job: one row with its error
                    else:
                        continue
                    batch = _batch(schema, j, s, t, bad, grid_keys, grid_cols)
                    pw.write_table(batch)
                    cw.write_table(batch)

        box = {}
        # both files complete before either is renamed in (publish writes both, then renames)
        publish(out, {f"{stem}.parquet": lambda p: box.setdefault("pq", p),
                      f"{stem}.csv": lambda p, write_both=write_both: write_both(box["pq"], p)})
        paths[name] = out / f"{stem}.parquet"
        dtypes[name] = {f.name: dtype_of(f.type) for f in schema}
    return paths
