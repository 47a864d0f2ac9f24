"""``simkernel plot sweep``: one metric of a sweep's table against a grid axis."""

from __future__ import annotations

from pathlib import Path

from .style import DPI, save


def plot_sweep(table, x: str, y: str, path_png=None, *, hue: str | None = None, where: dict | None = None,
               title: str | None = None, out=None, dpi: int = DPI) -> Path:
    """Y against X, one line per value of HUE, from a sweep's combined table (a DataFrame:
    ``simkernel.sweep.SweepResult.table``): the line is the mean over the other rows (worlds,
    seeds, ...) and the band its 95% bootstrap interval (seaborn).  ``y`` is a column, or a value
    of the table's ``metric`` column (then the ``mean`` of those rows).  ``where``: {column:
    value as text} filters.  Failed jobs' rows are left out.  One-line ValueErrors name a
    missing column and the ones there are."""
    import seaborn as sns

    df = table[table["status"] == "done"] if "status" in table.columns else table
    for col, val in (where or {}).items():
        if col not in df.columns:
            raise ValueError(f"where column {col!r} is not in the table; allowed: {', '.join(df.columns)}")
        df = df[df[col].astype(str) == str(val)]
    value = y
    if y not in df.columns:
        if "metric" in df.columns and y in set(df["metric"]):
            df, value = df[df["metric"] == y], "mean"
        else:
            metrics = sorted(set(df["metric"])) if "metric" in df.columns else []
            raise ValueError(f"y {y!r} is neither a column nor a metric; allowed: {', '.join(df.columns)}"
                             + (f"; metrics: {', '.join(metrics)}" if metrics else ""))
    for name, col in (("x", x), ("hue", hue)):
        if col is not None and col not in df.columns:
            raise ValueError(f"{name} {col!r} is not a column of the table; allowed: {', '.join(df.columns)}")
    if df.empty:
        raise ValueError("no rows left to plot (every job failed, or the where filters match nothing)")
    df = df[[c for c in {x, value, hue} if c is not None]].copy()
    df = df[df[x].astype(str) != "inf"]        # exact n -> ∞ limits are not points on an n axis
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    if hue is not None:
        df[hue] = df[hue].astype(str)
    sns.lineplot(data=df, x=x, y=value, hue=hue, errorbar=("ci", 95), marker="o", ax=ax, seed=0)
    ax.set_xlabel(x)
    ax.set_ylabel(y if value == y else f"{y} (mean)")
    numeric = df[x].dtype.kind in "if"
    if numeric and df[x].min() > 0 and df[x].max() / df[x].min() >= 16:
        ax.set_xscale("log", base=2)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return save(fig, path_png if path_png is not None else out, dpi)


# ---------------------------------------------------------------------- simkernel regime
