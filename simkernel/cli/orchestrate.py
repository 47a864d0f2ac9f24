"""The commands over other commands' results: plot (redraw a figure from its tables), sweep (a
grid of runs on Dask) and report (the theory's claims as one page)."""

from __future__ import annotations

from pathlib import Path

import click

from ..options import parse_sets, POSITIVE, progress_bar
from .common import checking_arguments, fail, wrote


# ---------------------------------------------------------------------- plot
@click.group("plot", short_help="Redraw a figure from its tidy CSV and JSON.")
def plot_group():
    """Redraw a figure from the tidy CSV and JSON of a results folder (no recomputation)."""


def _plot_command(name, files, help_text, what=None):
    @plot_group.command(name, short_help=f"Redraw {files} from a folder's tables.", help=help_text)
    @click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Folder for the figures (default: FOLDER itself).")
    def cmd(folder, out):
        from .. import plots
        from ..store import check_results_dir

        load, redraw = getattr(plots, f"load_{what or name}"), getattr(plots, f"redraw_{what or name}")
        with checking_arguments():          # one-line errors before anything is created
            if out is not None:
                check_results_dir(out)
            load(folder)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        paths = redraw(folder, out)
        click.echo(f"wrote {', '.join(map(str, paths if isinstance(paths, list) else [paths]))}")
    return cmd


_plot_command("convergence", "convergence.png/.pdf", "Redraw convergence.png and convergence.pdf from FOLDER's "
                                                     "convergence.csv and .json.")
_plot_command("icl", "icl_vs_bayes.png", "Redraw icl_vs_bayes.png from FOLDER's icl_vs_bayes.csv and .json "
                                         "(written by `simkernel icl-eval`), without loading the model.")
_plot_command("measure", "the measurement figures", "Redraw attention_profile.png, head_scores.png and probes.png "
                                                    "from FOLDER's heads.csv, best.csv, profile.csv and probes.csv "
                                                    "(written by `simkernel measure` or `simkernel llm`).",
              "measurements")
_plot_command("strategies", "the strategies figures", "Redraw strategies_phase.png, strategies_training.png and "
                                                      "strategies_unseen.png from FOLDER's summary.csv and "
                                                      "strategies.json (written by `simkernel strategies`).")


@plot_group.command("sweep", short_help="A metric of a sweep against a grid column (seaborn).")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--x", "x", required=True, help="Column on the x axis: a grid column or a result column (e.g. n_demos).")
@click.option("--y", "y", required=True, help="The value: a result column (e.g. mean), or METRIC when the table is "
                                              "long (a metric column), e.g. --y tv.")
@click.option("--hue", default=None, help="Column that colours the lines (e.g. a grid column).")
@click.option("--table", default=None, help="One of the sweep's other tables (e.g. floors, fits); default the main one.")
@click.option("--where", "where", multiple=True, metavar="COLUMN=VALUE",
              help="Keep only rows with this value (repeatable), e.g. --where kernel=theory.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The PNG to write (default FOLDER/sweep_<y>_by_<x>.png).")
def plot_sweep_cmd(folder, x, y, hue, table, where, out):
    """Draw Y against X for every value of HUE, from a sweep's combined table (sweep.parquet),
    with the 95% interval over the other rows (worlds, seeds, ...) as a band."""
    from .. import plots, sweep

    with checking_arguments():
        res = sweep.load(folder)
    path = plots.plot_sweep(res.table(table), x, y, hue=hue, where=parse_sets(where),
                            out=out or Path(folder) / f"sweep_{y}_by_{x}.png",
                            title=f"{res.meta['config']['command']} sweep ({len(res.jobs)} jobs)")
    click.echo(f"wrote {path}")


# ---------------------------------------------------------------------- sweep
@click.command("sweep", short_help="A grid of any command's runs on Dask, resumable, in one tidy table.")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the sweep (default sweeps/<CONFIG name>): jobs/, sweep.parquet, sweep.csv, sweep.json.")
@click.option("--workers", type=POSITIVE, default=None,
              help="Worker processes of the local Dask cluster, one thread each (default: the cores).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="A running Dask scheduler (tcp://host:8786) instead of a local cluster.")
@click.option("--retry-failed", is_flag=True, help="Run again the jobs that failed before (default: keep their error).")
@click.option("--verify", is_flag=True,
              help="Run nothing: check the sweep folder (CONFIG's --out, or CONFIG itself when it is a sweep folder): "
                   "every job finished, its outputs as its done marker recorded them (size and sha256), the "
                   "combined tables as sweep.json recorded them; exit 1 with one line per problem.")
def sweep_cmd(config, out, workers, scheduler, retry_failed, verify):
    """Run the grid of CONFIG (a TOML naming a command, its [options] and a [grid] of lists;
    see docs/guide/sweep.md) on Dask: one job per grid point, each in its own folder named by a
    hash of its call.  A rerun verifies every finished job against its done marker (its outputs'
    sizes and sha256), reruns the damaged ones and skips the rest; a failing job records its
    error and the others go on; Ctrl-C stops cleanly.  With --verify nothing runs."""
    from .. import sweep

    if verify:
        target = config if config.is_dir() else (out or Path("sweeps") / config.stem)
        if out is not None and config.is_dir():
            raise click.UsageError("give the sweep folder once: as CONFIG or as --out")
        check = sweep.verify(target)
        for line in check.summary_lines():
            click.echo(line)
        return 0 if check.ok else fail(f"{len(check.problems)} problem{'s' if len(check.problems) != 1 else ''} in "
                                        f"{target}: rerun `simkernel sweep CONFIG --out {target}` to rerun the "
                                        f"damaged and missing jobs", 1)
    if config.is_dir():
        raise click.UsageError(f"{config} is a folder: give the sweep's config TOML to run it (a folder only with "
                               f"--verify)")
    with checking_arguments():
        cfg = sweep.read_config(config)
    out = out or Path("sweeps") / config.stem
    bar = progress_bar(len(sweep.expand(cfg)), "sweep", "job")

    def tick(done, failed, running, total):
        bar.set_postfix(done=done, failed=failed, running=running, refresh=False)
        bar.update(done + failed - bar.n)

    def started(info):
        if info["dashboard"]:
            click.echo(f"Dask dashboard: {info['dashboard']}", err=True)

    def note(line):
        click.echo(f"warning: {line}", err=True)

    try:
        with bar:
            res = sweep.run(cfg, out, workers=workers, scheduler=scheduler, retry_failed=retry_failed, progress=tick,
                            on_start=started, notify=note)
    except sweep.SweepInterrupted as e:
        for line in e.result.summary_lines():
            click.echo(line)
        return fail(f"interrupted: the finished jobs are kept in {out}; run the same command again to resume", 130)
    for line in res.summary_lines():
        click.echo(line)
    written = res.write()
    if written:
        click.echo(wrote(written, res.meta["elapsed_s"]))
    else:
        click.echo(f"tables unchanged: {', '.join(str(p) for p in res.files())} (nothing ran, every job and table as "
                   f"recorded) ({res.meta['elapsed_s']:.1f} s)")
    failed = res.counts()["failed"]
    if failed:
        return fail(f"{failed} of {len(res.jobs)} jobs failed (their errors are above and in sweep.csv); fix the "
                     f"config and rerun, with --retry-failed to run them again", 1)
    return 0


# ---------------------------------------------------------------------- strategies
@click.command("strategies", short_help="Which predictor a trained transformer follows, over K, training and size.")
@click.argument("config", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--quick", is_flag=True, help="Two K, one world, tiny models, 48 steps (the CI's setting, about 20 s).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for strategies.csv, summary.csv, strategies.json and the figures "
                   "(default results/strategies, results/strategies-quick with --quick).")
@click.option("--sweeps", "sweeps_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the map's sweep (default OUT/sweep); a rerun resumes it.")
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Where the trained runs go (shared with train, icl-eval and the report).")
@click.option("--workers", type=POSITIVE, default=None, help="Local Dask worker processes (default: the cores).")
@click.option("--scheduler", default=None, metavar="ADDRESS", help="A running Dask scheduler instead of a local cluster.")
@click.option("--retry-failed", is_flag=True, help="Run the cells whose job failed again.")
def strategies_cmd(config, quick, out, sweeps_dir, runs_dir, workers, scheduler, retry_failed):
    """The map of which algorithm a transformer trained in a simulator world runs: for every
    number of pretraining concepts K, world, model size and training seed of CONFIG (a TOML with
    [world], [sizes], [train], [eval]; default: 4 K x 3 worlds x 2 sizes x 2 seeds), train with
    snapshots on a log scale, then score every snapshot against exact Bayes, the kernel, label
    frequencies, an in-context bigram rule, the uniform vote and the oracle, on prompts from the pretraining
    concepts ('seen') and from new ones ('unseen'), with the best convex mixture of them.  Runs
    through the sweep engine (Dask, resumable); writes tidy tables and three figures."""
    import time
    import tomllib

    from .. import plots, strategies

    t0 = time.perf_counter()
    out = out or Path("results/strategies-quick" if quick else "results/strategies")
    cfg = None
    if config is not None:
        try:
            cfg = tomllib.loads(config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise click.UsageError(f"cannot read {str(config)!r}: {' '.join(str(e).split())}") from None
    bar = progress_bar(None, "strategies", "run")

    def tick(done, failed, running, total):
        bar.total = total
        bar.set_postfix(done=done, failed=failed, running=running, refresh=False)
        bar.update(done + failed - bar.n)

    with bar:
        res = strategies.run(cfg, out, quick=quick, sweeps=sweeps_dir, runs_dir=runs_dir, workers=workers,
                             scheduler=scheduler, retry_failed=retry_failed, progress=tick,
                             notify=lambda line: click.echo(f"warning: {line}", err=True))
    written = res.write(out)
    if res.summary:
        written += plots.plot_strategies(res.summary, out, components=res.components,
                                         sizes=list(res.meta["config"]["sizes"]))
    for line in res.summary_lines():
        click.echo(line)
    click.echo(f"wrote {len(written)} files into {out} ({time.perf_counter() - t0:.1f} s)")
    if res.missing:
        return fail(f"{len(res.missing)} runs of the map failed or did not run (listed above); rerun with "
                    f"--retry-failed", 1)
    return 0


# ---------------------------------------------------------------------- report
@click.command("report", short_help="The theory's claims C1-C7 over many worlds: verdicts on an offline HTML page.")
@click.option("--quick", is_flag=True, help="Few worlds and tiny models (the CI's setting, under 2 minutes).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results/report"),
              show_default=True, help="Folder for index.html, report.md, report.json, the figures and the sweeps.")
@click.option("--workers", type=POSITIVE, default=None, help="Local Dask worker processes (default: the cores).")
@click.option("--scheduler", default=None, metavar="ADDRESS", help="A running Dask scheduler instead of a local cluster.")
@click.option("--sweeps", "sweeps_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the battery's sweeps (default OUT/sweeps); a rerun resumes them.")
def report_cmd(quick, out, workers, scheduler, sweeps_dir):
    """Run the verification battery through `simkernel sweep` (regime and converge over 20
    worlds of two preset families, the phenomena over 10 worlds, the strategies map of 48 trained
    models for C5, measure) and write a page with one section per claim of the theory: its
    kind (identity, asymptotic, bound, finite-n, comparison), source and scope, its figure, its
    numbers with CIs over worlds or training seeds, a word per preset family by a stated rule
    (supported / refuted / inconclusive / not reached / out of scope; a comparison gives its
    crossover n instead), the identity checks apart from the evidence, the settings outside the
    claim's assumptions, and the commands that reproduce it.  The page is checked in headless
    Chromium when it is installed.  A rerun resumes the sweeps."""
    import time

    from .. import report

    t0 = time.perf_counter()
    bar = progress_bar(None, "report", "job")

    def tick(name, done, failed, running, total):
        bar.total = total
        bar.set_description(f"report: {name}")
        bar.set_postfix(done=done, failed=failed, running=running, refresh=False)
        bar.update(done + failed - bar.n)

    with bar:
        res = report.run(quick=quick, out=out, workers=workers, scheduler=scheduler, progress=tick,
                         sweeps_dir=sweeps_dir, notify=lambda line: click.echo(f"warning: {line}", err=True))
    written = res.write(out)
    for line in res.summary_lines():
        click.echo(line)
    what = "quick report (the CI setting, not the published one)" if quick else "report"
    click.echo(f"{what} written to {out / 'index.html'} and {len(written) - 1} more files "
               f"({time.perf_counter() - t0:.1f} s)")
