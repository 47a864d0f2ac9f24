"""The convergence figure (simkernel.plots): drawn from in-memory tables in the schema of
``simkernel converge``'s convergence.csv / convergence.json, old and new."""

import csv
import json
import math

import pytest

from simkernel import plots
from simkernel.plots import convergence as plots_conv

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PDF_MAGIC = b"%PDF-"
NS = (1, 2, 4, 8)
KERNELS = ("theory", "frequency")


def row(n, est, kernel, metric, mean, half=0.05, n_worlds=2):
    return {"n_demos": n, "estimator": est, "kernel": kernel, "metric": metric, "mean": mean,
            "ci_low": mean - half, "ci_high": mean + half, "n_prompts": 20, "n_worlds": n_worlds}


def new_rows():
    """Two kernels, two estimators, finite n and n = inf, and the reference rows."""
    rows = []
    for k, kernel in enumerate(KERNELS):
        for est in ("averaged", "normalised"):
            for n in NS:
                tv = 0.6 * n ** -0.5 + 0.1 * k
                rows += [row(n, est, kernel, "l1", 2 * tv), row(n, est, kernel, "tv", tv),
                         row(n, est, kernel, "kl", tv / 2), row(n, est, kernel, "agree", 1 - tv),
                         row(n, est, kernel, "acc", 0.5), row(n, est, kernel, "tv_limit", 0.5 * n ** -0.5)]
            # a CI through 0 and a limit that is exactly 0: both must draw on a log axis
            rows += [row("inf", est, kernel, "l1", 0.2 * k), row("inf", est, kernel, "tv", 0.1 * k, half=0.2),
                     row("inf", est, kernel, "kl", 0.01), row("inf", est, kernel, "agree", 0.9 - 0.3 * k),
                     row("inf", est, kernel, "acc", 0.6), row("inf", est, kernel, "tv_bayes", 0.1 * k),
                     row("inf", est, kernel, "limit_se", 0.0, half=0.0)]
        rows += [row(n, "-", kernel, "nonpositive_sum", 0.0, half=0.0) for n in (*NS, "inf")]
    rows += [row(n, "-", "bayes", "acc", 0.55) for n in (*NS, "inf")]
    rows += [row(n, "-", "bayes-vs-oracle", m, 0.2 / n if m != "agree" else 0.9)
             for n in NS for m in ("l1", "tv", "kl", "agree")]
    return rows


def new_fits():
    return {"theory/normalised": {"slope": -0.5, "floor": 0.0, "amplitude": 0.5, "degenerate": False,
                                  "metric": "tv_limit", "n_range": [2, 8]},
            # slope on the search bound: flagged, not drawn
            "frequency/normalised": {"slope": -3.0, "floor": 0.1, "amplitude": 1e-9, "degenerate": True,
                                     "metric": "tv_limit", "n_range": [2, 8]},
            "theory/averaged": {"slope": float("nan"), "floor": float("nan"), "amplitude": float("nan"),
                                "degenerate": True, "metric": "tv_limit", "n_range": [2, 8]}}


def old_rows():
    """The table before n_worlds and the n = inf rows: one estimator per line style, l1 first."""
    rows = []
    for kernel in ("theory", "oracle"):
        for est in ("averaged", "normalised"):
            for n in NS:
                tv = 0.5 * n ** -0.5
                rows += [row(n, est, kernel, m, v) for m, v in
                         (("l1", 2 * tv), ("tv", tv), ("kl", tv), ("agree", 1 - tv), ("acc", 0.5))]
    rows += [row(n, "-", "bayes", "acc", 0.5) for n in NS]
    rows += [row(n, "-", "bayes-vs-oracle", "l1", 0.1 / n) for n in NS]
    for r in rows:
        del r["n_worlds"]
    return rows


def as_csv_rows(rows):
    """What csv.DictReader gives back: every cell a string."""
    return [{k: str(v) for k, v in r.items()} for r in rows]


def write_results(folder, rows, meta):
    folder.mkdir(parents=True, exist_ok=True)
    columns = [c for c in plots.CONVERGENCE_COLUMNS if c in rows[0]]
    with open(folder / "convergence.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    (folder / "convergence.json").write_text(json.dumps(meta))


def assert_png_pdf(png, pdf):
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert pdf.read_bytes()[:5] == PDF_MAGIC
    assert pdf.read_bytes().rstrip().endswith(b"%%EOF")


# ---------------------------------------------------------------------- drawing
def test_draws_png_and_pdf(tmp_path):
    png, pdf = tmp_path / "c.png", tmp_path / "c.pdf"
    written = plots.plot_convergence(new_rows(), new_fits(), png, pdf, title="a world; k=3")
    assert written == [png, pdf]
    assert_png_pdf(png, pdf)
    assert png.stat().st_size > 20_000                  # three panels, not an empty canvas
    # atomic writes leave no temp files behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pdf", "c.png"]


def test_redraw_is_byte_identical(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    plots.plot_convergence(new_rows(), new_fits(), a, title="t")
    plots.plot_convergence(as_csv_rows(new_rows()), new_fits(), b, title="t")
    assert a.read_bytes() == b.read_bytes()


def test_rows_as_dataframe(tmp_path):
    pd = pytest.importorskip("pandas")
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    plots.plot_convergence(new_rows(), new_fits(), a)
    plots.plot_convergence(pd.DataFrame(new_rows()), new_fits(), b)
    assert a.read_bytes() == b.read_bytes()


def test_old_schema_still_draws(tmp_path):
    recs = plots_conv._records(as_csv_rows(old_rows()))
    assert {r["n_worlds"] for r in recs} == {1}
    assert not any(r["n_demos"] == math.inf for r in recs)
    png, pdf = tmp_path / "old.png", tmp_path / "old.pdf"
    # an old fit: metric "tv", no n_range, no degenerate flag
    fits = {"theory/normalised": {"slope": -0.5, "floor": 0.01, "amplitude": 0.5, "metric": "tv"}}
    plots.plot_convergence(old_rows(), fits, png, pdf)
    assert_png_pdf(png, pdf)


def test_partial_tables_draw(tmp_path):
    """One kernel, one estimator that is not normalised, no references, no fits; or only the
    references: each still draws."""
    only_freq = [r for r in new_rows() if r["kernel"] == "frequency" and r["estimator"] in ("averaged", "-")]
    only_refs = [r for r in new_rows() if r["kernel"] in ("bayes", "bayes-vs-oracle")]
    only_inf = [r for r in new_rows() if r["n_demos"] == "inf"]
    for i, rows in enumerate((only_freq, only_refs, only_inf)):
        png = tmp_path / f"{i}.png"
        plots.plot_convergence(rows, {}, png)
        assert png.read_bytes()[:8] == PNG_MAGIC


def test_primary_estimator_and_kernel_order():
    recs = plots_conv._records(new_rows())
    assert plots_conv._primary_estimator(recs) == "normalised"
    no_norm = [r for r in recs if r["estimator"] != "normalised"]
    assert plots_conv._primary_estimator(no_norm) == "averaged"
    # fixed order, whatever the row order; reference rows are not kernels
    assert plots_conv._kernels(recs[::-1], "normalised") == ["theory", "frequency"]


def test_series_and_limit_keep_inf_apart():
    recs = plots_conv._records(new_rows())
    n, m, _lo, _hi = plots_conv._series(recs, "theory", "normalised", "tv")
    assert n == list(NS)
    assert m[0] == pytest.approx(0.6)
    assert plots_conv._limit(recs, "frequency", "normalised", "tv") == pytest.approx((0.1, -0.1, 0.3))
    assert plots_conv._limit(recs, "theory", "normalised", "tv_limit") is None


def test_fit_helpers():
    fits = new_fits()
    assert plots_conv._fit_usable(fits["theory/normalised"])
    assert not plots_conv._fit_usable(fits["frequency/normalised"])          # flagged degenerate
    assert not plots_conv._fit_usable(fits["theory/averaged"])               # NaN
    assert not plots_conv._fit_usable({"slope": -0.5, "floor": 0.0, "amplitude": None})
    assert plots_conv._fit_range(fits["theory/normalised"], 1, 4) == (2, 4)   # cut to the table's n
    assert plots_conv._fit_range({}, 1, 8) == (1, 8)
    n, y = plots_conv._fit_curve(fits["theory/normalised"], 1, 4)
    assert n[0] == pytest.approx(1) and n[-1] == pytest.approx(4)
    assert y[0] == pytest.approx(0.5) and y[-1] == pytest.approx(0.25)   # on the fit's own scale


@pytest.fixture
def drawn(monkeypatch):
    """The figures plot_convergence saves, kept for inspection."""
    from matplotlib.figure import Figure

    figs, real = [], Figure.savefig

    def savefig(self, *args, **kwargs):
        figs.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figs


def test_degenerate_fit_is_flagged_not_drawn(tmp_path, drawn):
    plots.plot_convergence(new_rows(), new_fits(), tmp_path / "f.png")
    ax1, ax2, ax3 = drawn[0].axes
    legend = [t.get_text() for t in ax2.get_legend().get_texts()]
    assert any(t.startswith("frequency: (degenerate fit)") for t in legend)
    assert any(t.startswith("theory: slope -0.50") for t in legend)
    fit_lines = [ln for ln in ax2.get_lines() if ln.get_linestyle() == ":" and len(ln.get_xdata())]
    assert len(fit_lines) == 1                                            # theory's only
    assert min(fit_lines[0].get_xdata()) == pytest.approx(2)             # over n_range only
    assert max(fit_lines[0].get_xdata()) == pytest.approx(8)


def test_panels_say_what_they_plot(tmp_path, drawn):
    plots.plot_convergence(new_rows(), new_fits(), tmp_path / "f.png")
    ax1, ax2, ax3 = drawn[0].axes
    assert ax1.get_ylabel() == "TV to exact Bayes" and ax1.get_yscale() == "log"
    assert ax2.get_ylabel() == "TV to its n → ∞ limit" and ax2.get_yscale() == "log"
    assert ax3.get_ylabel() == "argmax agreement with exact Bayes (ties 1/m)"
    # the limits sit at an extra tick labelled ∞, right of the largest n
    for ax in (ax1, ax3):
        ticks = dict(zip([t.get_text() for t in ax.get_xticklabels()], ax.get_xticks()))
        assert ticks["∞"] > max(NS)
    assert "∞" not in [t.get_text() for t in ax2.get_xticklabels()]
    # the frequency baseline is dashed, the kernels solid
    styles = {ln.get_label(): ln.get_linestyle() for ln in ax1.get_lines()}
    assert styles["theory"] == "-" and styles[plots_conv.KERNEL_LABELS["frequency"]] == "--"


# ---------------------------------------------------------------------- bad tables: one-line errors
def test_non_numeric_mean_names_the_row():
    rows = as_csv_rows(new_rows())
    rows[7]["mean"] = "abc"
    with pytest.raises(ValueError) as e:
        plots_conv._records(rows)
    msg = str(e.value)
    assert "\n" not in msg
    assert "row 7" in msg and "mean" in msg and "'abc'" in msg
    assert repr(rows[7]["kernel"]) in msg and repr(rows[7]["metric"]) in msg


@pytest.mark.parametrize("column", ["mean", "ci_low", "ci_high", "n_prompts", "n_worlds"])
def test_inf_only_in_n_demos(column, tmp_path):
    rows = as_csv_rows(new_rows())
    rows[3][column] = "inf"
    with pytest.raises(ValueError, match=rf"row 3 .*{column}") as e:
        plots.plot_convergence(rows, {}, tmp_path / "x.png")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("value", ["0", "2.5", "-inf", "nan", "", "many"])
def test_bad_n_demos(value):
    rows = as_csv_rows(new_rows())
    rows[0]["n_demos"] = value
    with pytest.raises(ValueError, match="row 0 .*n_demos") as e:
        plots_conv._records(rows)
    assert "\n" not in str(e.value)


def test_inf_n_demos_spellings():
    for v in ("inf", "Inf", " inf", float("inf")):
        rows = new_rows()[:1]
        rows[0]["n_demos"] = v
        assert plots_conv._records(rows)[0]["n_demos"] == math.inf


def test_nan_mean_is_allowed(tmp_path):
    """A metric no prompt defined is NaN in the table: a gap in the line, not an error."""
    rows = new_rows()
    rows[1]["mean"] = float("nan")
    plots.plot_convergence(rows, {}, tmp_path / "x.png")


def test_missing_column():
    rows = new_rows()
    del rows[2]["estimator"]
    with pytest.raises(ValueError, match="row 2 .*lacks column 'estimator'"):
        plots_conv._records(rows)


def test_empty_table_and_bad_fits(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        plots.plot_convergence([], {}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="fits"):
        plots.plot_convergence(new_rows(), ["not", "a", "dict"], tmp_path / "x.png")
    # a damaged entry is no fit: drawn without it
    plots.plot_convergence(new_rows(), {"theory/normalised": "oops"}, tmp_path / "x.png")


# ---------------------------------------------------------------------- the folder round trip
def test_redraw_from_folder(tmp_path):
    src, out = tmp_path / "run", tmp_path / "figs"
    write_results(src, new_rows(), {"title": "sample world", "fits": new_fits(), "info": {}})
    rows, meta = plots.load_convergence(src)
    assert len(rows) == len(new_rows()) and meta["title"] == "sample world"
    assert sum(r["n_demos"] == math.inf for r in rows) == sum(r["n_demos"] == "inf" for r in new_rows())
    written = plots.redraw_convergence(src)
    assert [p.name for p in written] == ["convergence.png", "convergence.pdf"]
    assert_png_pdf(src / "convergence.png", src / "convergence.pdf")
    out.mkdir()
    plots.redraw_convergence(src, out)
    assert (out / "convergence.png").read_bytes() == (src / "convergence.png").read_bytes()


def test_redraw_old_folder(tmp_path):
    write_results(tmp_path, old_rows(), {"title": "old", "fits": {}})
    plots.redraw_convergence(tmp_path)
    assert_png_pdf(tmp_path / "convergence.png", tmp_path / "convergence.pdf")


def test_load_errors_are_one_line(tmp_path):
    rows = new_rows()
    for r in rows:
        del r["kernel"]
    write_results(tmp_path, rows, {"fits": {}})
    with pytest.raises(ValueError, match="lacks column 'kernel'") as e:
        plots.load_convergence(tmp_path)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------- the figure bugs a new user found
def lines_by_label(ax):
    return {ln.get_label(): ln for ln in ax.get_lines()}


def test_theory_is_drawn_over_the_oracle_and_both_stay_visible(tmp_path, drawn):
    rows = [dict(r, kernel="oracle") for r in new_rows() if r["kernel"] == "frequency"] + new_rows()
    plots.plot_convergence(rows, {}, tmp_path / "f.png")
    ax1 = drawn[0].axes[0]
    got = lines_by_label(ax1)
    theory, oracle = got["theory"], got[plots_conv.KERNEL_LABELS["oracle"]]
    # the thin theory line on top, the oracle a wider, pale stroke beneath it
    assert theory.get_zorder() > oracle.get_zorder()
    assert oracle.get_linewidth() >= 3 * theory.get_linewidth()
    assert oracle.get_alpha() is not None and oracle.get_alpha() < 1 and theory.get_alpha() in (None, 1)
    assert theory.get_linestyle() == "-"


def legend_markers(ax, marker):
    """The colours of the legend's markers of this shape (tuple handles draw one per colour)."""
    from matplotlib.colors import to_hex
    from matplotlib.lines import Line2D

    return [to_hex(ln.get_color()) for ln in ax.get_legend().findobj(Line2D) if ln.get_marker() == marker]


def test_inf_legend_markers_have_the_colours_of_the_inf_points(tmp_path, drawn):
    from matplotlib.colors import to_hex

    plots.plot_convergence(new_rows(), new_fits(), tmp_path / "f.png")
    ax1, _ax2, ax3 = drawn[0].axes
    kernels = {to_hex(plots_conv.KERNEL_COLOURS[k]) for k in KERNELS}
    black = to_hex("black")
    for ax in (ax1, ax3):
        assert any(t.get_text().startswith("∞:") for t in ax.get_legend().get_texts())
        # the ∞ points themselves: diamonds or ▼ right of the largest n
        points = {to_hex(ln.get_color()) for ln in ax.get_lines() if ln.get_marker() in ("D", "v")
                  and ln.get_xdata().size and ln.get_xdata()[0] > max(NS)}
        shown = set(legend_markers(ax, "D") + legend_markers(ax, "v"))
        # no stand-in colour: the legend's markers are the points' colours, every kernel's among them
        assert shown <= points and kernels <= shown, (shown, points)
    # panel 1: theory's limit is 0 (a ▼ on the foot), frequency's a diamond
    assert set(legend_markers(ax1, "v")) == {to_hex(plots_conv.KERNEL_COLOURS["theory"])}
    # panel 3: black only for exact Bayes' own line, whose diamond at ∞ is the oracle's accuracy
    assert set(legend_markers(ax3, "D")) == kernels | {black}


def test_a_reference_that_leaves_the_panel_says_so(tmp_path, drawn):
    plots.plot_convergence(new_rows(), new_fits(), tmp_path / "f.png")
    ax1 = drawn[0].axes[0]
    bottom = ax1.get_ylim()[0]
    ref = next(ln for ln in ax1.get_lines() if ln.get_label().startswith("exact Bayes vs the oracle"))
    first_below = next(n for n, y in zip(ref.get_xdata(), ref.get_ydata()) if y < bottom)
    assert f"below the panel from n = {first_below:g} on" in ref.get_label()
    # and a ▼ on the panel's foot where it leaves
    assert any(ln.get_marker() == "v" and list(ln.get_xdata()) == [first_below] for ln in ax1.get_lines())


def test_sampling_panel_legend_says_what_was_fitted(tmp_path, drawn):
    plots.plot_convergence(new_rows(), new_fits(), tmp_path / "a.png")
    legend = drawn[-1].axes[1].get_legend()
    # the fits have no floor (fixed at 0 against an exact limit): no "+ floor" claimed
    assert legend.get_title().get_text() == "dotted: fitted a·n^slope, n = 2..8"
    assert not any("floor" in t.get_text() for t in legend.get_texts())
    fits = new_fits()
    fits["theory/normalised"].update(floor=0.01, with_floor=True)
    plots.plot_convergence(new_rows(), fits, tmp_path / "b.png")
    legend = drawn[-1].axes[1].get_legend()
    assert legend.get_title().get_text() == "dotted: fitted a·n^slope + floor, n = 2..8"
    assert any(t.get_text() == "theory: slope -0.50, floor 0.01" for t in legend.get_texts())
