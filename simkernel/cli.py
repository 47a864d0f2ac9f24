"""The ``simkernel`` command line: the only place that parses options, prints, and maps
errors to exit codes.

Every bad input ends in ONE line on stderr, ``error: <what was wrong and what is allowed>``,
and a non-zero exit status (2 for a usage error such as a malformed option, 1 for a value the
package rejects); never a traceback.  Output locations are checked before any long work, and
every file is written atomically, so a failed or interrupted command leaves nothing behind.

Heavy work (sampling, forward passes) is imported and run inside the commands; nothing here
imports torch or transformers.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import click

from . import __version__
from .constants import (CONVERGENCE_COLUMNS, DEFAULT_N_SAMPLES, DEFAULT_RIDGE, DEMO_MODES, ESTIMATORS, EXACT_LIMIT,
                        FEATURES, ICL_COLUMNS, KERNELS, LLM_BATCH_SIZE, LLM_DTYPE_ALIASES, LLM_DTYPES, LLM_N_EXAMPLES,
                        TEXT_N_DEMOS, TEXT_TASKS)
from .options import (EXAMPLE_LENGTH, NONNEG, POSITIVE, Concepts, Int, NDemos, PositiveFloat, choice_list,
                      comma_words, distinct, distinct_seeds, format_n_demos, parse_n_demos, parse_sets,
                      probe_layers, progress_bar)
from .presets import PRESETS
from .store import check_out_file as _store_out_file, check_results_dir, publish, sha256_file

DEFAULT_PRESET = "paper-c"


# ---------------------------------------------------------------------- error handling
def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def _fail(msg: str, code: int) -> int:
    click.echo(f"error: {_one_line(msg)}", err=True)
    return code


class _Group(click.Group):
    """A click group whose ``main`` turns every expected failure into one ``error:`` line."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        no_args_help = getattr(click.exceptions, "NoArgsIsHelpError", None)
        try:
            rv = super().main(args=args, prog_name=prog_name or "simkernel",
                              complete_var=complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except click.UsageError as e:
            if no_args_help is not None and isinstance(e, no_args_help):
                click.echo(e.ctx.get_help() if e.ctx else e.format_message())
                code = 0
            else:
                hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
                code = _fail(e.format_message() + hint, e.exit_code)
        except click.ClickException as e:
            code = _fail(e.format_message(), e.exit_code)
        except click.Abort:
            code = _fail("interrupted; nothing was written", 130)
        except ValueError as e:
            code = _fail(str(e), 1)
        except OSError as e:
            where = f": {e.filename!r}" if getattr(e, "filename", None) else ""
            code = _fail(f"{e.strerror or type(e).__name__}{where}", 1)
        if standalone_mode:
            sys.exit(code)
        return code


# ---------------------------------------------------------------------- option helpers
def check_out_file(path: Path, suffix: str = ".npz") -> Path:
    """An output file (``store.check_out_file``); a wrong suffix is a usage error of --out."""
    if Path(path).suffix != suffix:
        raise click.BadParameter(f"must end in {suffix}, got {str(path)!r}", param_hint="'--out'")
    return _store_out_file(path, suffix)


def load_or_build_world(preset, world_file, world_seed, overrides, *, world_opt="--world",
                        seed_opt=("--world-seed", "world_seed")):
    """The world named by the options, and a JSON-able description of where it came from."""
    from .presets import make_world
    from .world import World

    ctx = click.get_current_context()
    if world_file is not None:
        clash = [name for name, given in (("--preset", preset is not None), ("--set", bool(overrides)),
                                          (seed_opt[0], _given(ctx, seed_opt[1]))) if given]
        if clash:
            raise click.UsageError(f"{world_opt} loads a saved world; it cannot be combined with {clash[0]}")
        world = World.load(world_file)
        return world, {"file": str(world_file), "sha256": sha256_file(world_file), "meta": world.meta}
    preset = preset or DEFAULT_PRESET
    opts = parse_sets(overrides)
    world = make_world(preset, world_seed, **opts)
    return world, {"preset": preset, "seed": world_seed, "options": world.meta.get("options", {})}


def _given(ctx, name) -> bool:
    from click.core import ParameterSource
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def world_options(f):
    """--world | --preset [--world-seed] [--set NAME=VALUE ...] for sampling commands."""
    opts = [
        click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
                     help=f"Build the world from this recipe (default {DEFAULT_PRESET}). "
                          "paper-c: the paper's Appendix C setting (one random HMM, 8 tasks = 8 start states); "
                          "ginc: GINC's mixture of 10 concept HMMs; random: small random mixtures."),
        click.option("--world", "world_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Load the world from this .npz instead (made by `simkernel world` or elsewhere)."),
        click.option("--world-seed", type=NONNEG, default=0, show_default=True,
                     help="Seed of the preset's random world (not with --world)."),
        click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
                     help="Override one preset option, e.g. --set n_states=20; repeatable. "
                          "`simkernel world --help` lists the options of each preset."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _preset_help() -> str:
    lines = []
    for name, opts in PRESETS.items():
        lines.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in opts.items()))
    return "\b\n" + "\n".join(lines)


# ---------------------------------------------------------------------- the group
@click.group("simkernel", cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="simkernel", message="%(prog)s %(version)s")
def main():
    """simkernel: exact Bayesian in-context learning on mixtures of HMMs, to test the
    kernel-regression theory of ICL against.

    \b
    simkernel world          build a world (a mixture of concept HMMs) and save it as .npz
    simkernel sample corpus  sample pretraining documents into a folder
    simkernel sample prompts sample in-context prompts into one .npz
    simkernel bayes          exact Bayes versus n demonstrations
    simkernel converge       the theory's kernel estimators against exact Bayes, n = 1..N,
                             with a figure: the quick-start job
    simkernel plot           redraw a figure from its tidy CSV and JSON
    simkernel train          train a small transformer; its gap to the Bayes floor
    simkernel icl-eval       a trained model's in-context predictions against exact Bayes
                             and the theory kernel, in and out of distribution
    simkernel measure        attention, reconstruction and probes of a trained model
                             against the true kernel and exact Bayes
    simkernel llm            the kernel-regression measurements on a real Hugging Face LLM
                             (GPT-J-6B, GPT-2, Pythia, Llama): the paper's Table 2

    Every result carries its config, seed and package versions; outputs are written
    atomically, so a failed run leaves nothing half-written.
    """


# ---------------------------------------------------------------------- world
@main.command("world", short_help="Build a world from a preset, or check a world file; save it as .npz.",
              epilog="Preset options and defaults:\n\n" + _preset_help())
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
              help=f"Recipe to build the world from (default {DEFAULT_PRESET}).")
@click.option("--from", "from_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Instead of building, load and validate this world .npz (e.g. one made elsewhere); "
                   "with --out, re-save it in simkernel's format.")
@click.option("--world-seed", "--seed", "seed", type=NONNEG, default=0, show_default=True,
              help="Seed of the preset's random draws: the same seed gives the same world (the name every "
                   "other command uses; --seed is a deprecated alias).")
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
              help="Override one preset option (listed below), e.g. --set n_states=20; repeatable.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Save the world to this .npz (an existing file is replaced atomically). "
                   "Without --out nothing is written.")
def world_cmd(preset, from_file, seed, overrides, out):
    """Build a world from a preset (or check an existing one), print a summary, save it."""
    from .store import provenance, public_mode

    if out is not None:
        check_out_file(out)
    world, source = load_or_build_world(preset, from_file, seed, overrides,
                                        world_opt="--from", seed_opt=("--world-seed", "seed"))
    if out is not None:
        meta = {k: v for k, v in world.meta.items() if k != "provenance"}
        config = {"command": "world", "world": source}
        if "provenance" in world.meta:
            config["source_provenance"] = world.meta["provenance"]
        meta["provenance"] = provenance(config, seed if from_file is None else world.meta.get("seed"))
        dataclasses.replace(world, meta=meta).save(out)
        public_mode(out)
    click.echo(repr(world))
    if out is not None:
        click.echo(f"wrote {out}")


# ---------------------------------------------------------------------- sample
@main.group("sample")
def sample():
    """Sample pretraining corpora or in-context prompts from a world."""


@sample.command("corpus")
@world_options
@click.option("--n-docs", type=POSITIVE, default=1000, show_default=True,
              help="Number of documents (GINC: 1000).")
@click.option("--doc-length", type=POSITIVE, default=10240, show_default=True,
              help="Symbols per document (GINC: 10240).")
@click.option("--seed", type=NONNEG, default=0, show_default=True,
              help="Sampling seed: the same seed and world give bit-identical documents.")
@click.option("--out", type=click.Path(dir_okay=True, file_okay=False, path_type=Path), required=True,
              help="Folder to create with tokens.npy, offsets.npy, concepts.npy, world.npz, meta.json.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing non-empty --out folder (only once the new corpus is complete).")
def corpus_cmd(preset, world_file, world_seed, overrides, n_docs, doc_length, seed, out, overwrite):
    """Sample pretraining documents (one concept per document, drawn from the prior)."""
    from .store import check_out_dir, write_corpus

    try:
        check_out_dir(out, overwrite)
    except ValueError as e:            # the library names its argument; the user typed a flag
        raise ValueError(str(e).replace("overwrite=True", "--overwrite")) from None
    world, source = load_or_build_world(preset, world_file, world_seed, overrides)
    config = {"command": "sample corpus", "world": source}
    t0 = time.perf_counter()
    with progress_bar(n_docs, "sampling", "doc") as bar:
        write_corpus(world, out, n_docs, doc_length, seed, overwrite=overwrite, config=config,
                     progress=lambda done: bar.update(done - bar.n))
    click.echo(repr(world))
    click.echo(f"wrote {n_docs} documents x {doc_length} symbols to {out} "
               f"({time.perf_counter() - t0:.1f} s)")


@sample.command("prompts")
@world_options
@click.option("--n-prompts", type=POSITIVE, default=2500, show_default=True,
              help="Number of prompts (GINC: 2500 per example length and n).")
@click.option("--n-demos", type=NONNEG, default=64, show_default=True,
              help="Demonstrations per prompt (>= 0); truncate later for smaller n.")
@click.option("--example-length", type=EXAMPLE_LENGTH, default=3, show_default=True,
              help="Tokens per example k >= 2: k-1 input tokens x and one label y (GINC: 3, 5, 8, 10).")
@click.option("--seed", type=NONNEG, default=0, show_default=True, help="Sampling seed.")
@click.option("--concept", type=NONNEG, default=None,
              help="Draw every prompt from this concept (0..K-1, prior-0 concepts allowed); "
                   "default: each prompt's concept from the prior.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The .npz to write (an existing file is replaced atomically).")
def prompts_cmd(preset, world_file, world_seed, overrides, n_prompts, n_demos, example_length,
                seed, concept, out):
    """Sample in-context prompts [x_1 y_1 / ... x_n y_n / x_test] and their gold y_test."""
    from .sampling import sample_prompts
    from .store import write_prompts

    check_out_file(out)
    world, source = load_or_build_world(preset, world_file, world_seed, overrides)
    _check_concept(concept, world)
    prompts = sample_prompts(world, n_prompts, n_demos, example_length, seed, concept=concept)
    config = {"command": "sample prompts", "world": source, "n_prompts": n_prompts,
              "n_demos": n_demos, "example_length": example_length, "concept": concept}
    write_prompts(prompts, out, config, seed)
    click.echo(repr(world))
    click.echo(f"wrote {n_prompts} prompts of {n_demos} demonstrations (k={example_length}, "
               f"{prompts.tokens.shape[1]} tokens each) to {out}")


def _check_concept(concept, world):
    if concept is not None and concept >= world.n_concepts:
        raise click.BadParameter(f"{concept} is not a concept of this world; allowed: 0..{world.n_concepts - 1}",
                                 param_hint="'--concept'")


# ---------------------------------------------------------------------- bayes
@main.command("bayes")
@world_options
@click.option("--n-prompts", type=POSITIVE, default=256, show_default=True, help="Number of prompts.")
@click.option("--n-demos", type=NONNEG, default=64, show_default=True,
              help="Largest number of demonstrations N; results for n = 0, 1, 2, 4, ..., N.")
@click.option("--example-length", type=EXAMPLE_LENGTH, default=2, show_default=True,
              help="Tokens per example k >= 2: k-1 input tokens x and one label y.")
@click.option("--seed", type=NONNEG, default=0, show_default=True, help="Prompt sampling seed.")
@click.option("--concept", type=NONNEG, default=None,
              help="Draw every prompt from this concept (0..K-1); default: from the prior.")
@click.option("--method", type=click.Choice(["auto", "dense", "sparse"]), default="auto", show_default=True,
              help="Forward-pass implementation (auto picks sparse for sparse emissions).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/bayes"),
              show_default=True,
              help="Folder for bayes.csv and bayes.json (created if needed; those two files are replaced).")
def bayes_cmd(preset, world_file, world_seed, overrides, n_prompts, n_demos, example_length, seed,
              concept, method, out):
    """Exact Bayesian ICL versus the number of demonstrations n.

    Samples prompts, computes the exact concept posterior and posterior predictive for every
    n = 0..N in one forward pass, and prints, for n = 0, 1, 2, 4, ..., N: the mean posterior
    mass on the true concept, the Bayes accuracy against y_test (argmax over the world's
    labels), agreement of the Bayes argmax with the oracle's (true concept known), and the
    total variation between the two over labels.  Writes bayes.csv (tidy: n_demos, metric,
    mean, ci_low, ci_high, n_prompts; 95% normal-approximation CIs over prompts) and
    bayes.json (config, seed, versions).
    """
    from . import bayes
    from .store import write_csv, write_json

    check_results_dir(out)
    world, source = load_or_build_world(preset, world_file, world_seed, overrides)
    _check_concept(concept, world)
    with progress_bar(n_prompts, "exact Bayes", "prompt") as bar:
        res = bayes.run(world, n_prompts, n_demos, example_length, seed, concept=concept, method=method,
                        world_source=source, progress=lambda done: bar.update(done - bar.n))
    publish(out, {"bayes.csv": lambda p: write_csv(p, res.rows, bayes.SUMMARY_COLUMNS),
                  "bayes.json": lambda p: write_json(p, res.meta)})
    rows, ns, n_bad, elapsed = res.rows, res.ns, res.n_impossible, res.meta["elapsed_s"]

    oracle = next(r for r in rows if r["metric"] == "oracle_accuracy")
    click.echo(repr(world))
    click.echo(f"{n_prompts} prompts, example length {example_length}, concept "
               f"{'from the prior' if concept is None else concept}, seed {seed}")
    for line in bayes.summary_lines(rows, ns):
        click.echo(line)
    click.echo(f"oracle accuracy (true concept known): {oracle['mean']:.3f}")
    click.echo(f"prompts impossible under the pretraining mixture (left out where undefined): "
               f"{n_bad} of {n_prompts}")
    click.echo(f"wrote {out / 'bayes.csv'} and {out / 'bayes.json'} ({elapsed:.1f} s)")


# ---------------------------------------------------------------------- converge
CONVERGE_FILES = ("convergence.csv", "floors.csv", "convergence.json", "convergence.png", "convergence.pdf")
CONVERGE_COLUMNS = CONVERGENCE_COLUMNS
CONVERGE_KERNELS = KERNELS
CONVERGE_ESTIMATORS = ESTIMATORS
#: The headline world of converge (no --preset, --world or --set): GINC's construction, small,
#: with the delimiter restart, where the theory kernel varies within a prompt (docs/theory.md §19).
CONVERGE_PRESET = "ginc-small"
def _check_concepts(concepts, world):
    import numpy as np
    if isinstance(concepts, int):
        if concepts >= world.n_concepts:
            raise click.BadParameter(f"{concepts} is not a concept of this world; allowed: prior, id, ood or "
                                     f"0..{world.n_concepts - 1}", param_hint="'--concepts'")
    elif concepts in ("id", "ood"):
        has = np.any(world.prior > 0) if concepts == "id" else np.any(world.prior == 0)
        if not has:
            raise click.BadParameter(f"the world has no {'in' if concepts == 'id' else 'out-of'}-distribution "
                                     f"concepts (prior {'> 0' if concepts == 'id' else '= 0'})",
                                     param_hint="'--concepts'")


def _world_title(world, source, n_worlds: int = 1) -> str:
    name = source.get("preset") or Path(source.get("file", "world")).name
    many = f" x {n_worlds} worlds" if n_worlds > 1 else ""
    return (f"{name}{many}: K={world.n_concepts} concepts, S={world.n_states} states, V={world.n_symbols} "
            f"symbols, {len(world.labels)} labels{'' if world.restart else ', no restart'}")


@main.command("converge", short_help="Kernel estimators against exact Bayes for n = 1..N, with a figure.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
              help=f"Build the world from this recipe (default {CONVERGE_PRESET}: GINC's construction with 16 "
                   "symbols, 4 x 4 states, 4 concepts and the delimiter restart, where the theory kernel varies "
                   "within a prompt).")
@click.option("--world", "world_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Load the world from this .npz instead (not with --preset, --set, --world-seed).")
@click.option("--world-seed", "world_seeds", type=NONNEG, multiple=True, callback=distinct("world seed"),
              help="Seed of the preset's random world; repeat for several worlds (the CIs are then over "
                   "worlds).  Default 0.")
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
              help="Override one preset option, e.g. --set n_states=20; repeatable.")
@click.option("--n-demos", type=NDemos(), default="1..256", show_default=True,
              help="The n to report: 'A..B' (every n from A to B inclusive), a comma list '1,2,8', or a "
                   "mixture '1,2,4..8'.  Every prompt holds max(n) demonstrations; the curve for smaller "
                   "n comes from the same prompts.")
@click.option("--example-length", type=EXAMPLE_LENGTH, default=3, show_default=True,
              help="Tokens per example k >= 2 (k-1 input tokens x, one label y).  2 (x a single token) is "
                   "the setting of the paper's Table 3, where paper-c's kernel is constant within a prompt.")
@click.option("--n-prompts", type=POSITIVE, default=200, show_default=True,
              help="Prompts per world and prompt seed.")
@click.option("--seed", "seeds", type=NONNEG, multiple=True, callback=distinct_seeds,
              help="Prompt sampling seed; repeat for several seeds (their prompts are pooled within each "
                   "world).  Default 0.")
@click.option("--concepts", type=Concepts(), default="prior", show_default=True,
              help="Where the prompts' concepts come from: 'prior' (drawn from the pretraining prior), "
                   "'id' / 'ood' (spread evenly over the concepts with prior > 0 / prior = 0), or one "
                   "concept index.")
@click.option("--estimator", "estimators", multiple=True, metavar="NAME[,NAME]",
              callback=choice_list(CONVERGE_ESTIMATORS, "estimator"),
              help="Kernel-regression estimator(s): averaged, normalised (undefined, so uniform, where "
                   "Σ_i K <= 0), clipped (normalised with max(K, 0)); repeatable or a comma list.  Default: all.")
@click.option("--kernel", "kernels", multiple=True, metavar="NAME[,NAME]",
              callback=choice_list(CONVERGE_KERNELS, "kernel"),
              help="Kernel(s): theory (Σ of the pretraining inputs), oracle (Σ_θ* of the prompt's own "
                   "concept), similarity (P(o|x)ᵀP(o|x')), frequency (K ≡ 1: the label frequencies, the "
                   "baseline); repeatable or a comma list.  Default: all four.")
@click.option("--features", type=click.Choice(list(FEATURES)), default="belief", show_default=True,
              help="Feature map ψ(x): belief (label-conditioned beliefs, exactly linear) or operator "
                   "(the rows of the operator T_x from every start state, row-normalised and pushed one step: "
                   "not the paper's unnormalised vec(T_x)).")
@click.option("--ridge", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_RIDGE, show_default=True,
              help="Ridge: λ = ridge · trace(Σ) / D is added to Σ before it is inverted.")
@click.option("--n-samples", type=POSITIVE, default=None,
              help="Monte Carlo inputs for Σ and the limits when the V^(k-1) inputs are too many to "
                   "enumerate (then required, e.g. 20000).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("figures"),
              show_default=True,
              help="Folder for convergence.{png,pdf,csv,json} and floors.csv (created if needed; the five "
                   "files are replaced only once all are complete).")
def converge_cmd(preset, world_file, world_seeds, overrides, n_demos, example_length, n_prompts, seeds,
                 concepts, estimators, kernels, features, ridge, n_samples, out):
    """The theory's kernel-regression estimators against the exact posterior, n = 1..N.

    For every world and prompt seed: samples prompts with max(n) demonstrations, computes the
    exact Bayesian posterior predictive for every n in one forward pass, every requested kernel
    estimate (kernel x estimator) in one cumulative pass, and each estimate's exact n -> ∞
    limit.  Prints the kernels' spread within prompts, the total variation to exact Bayes and
    the tie-fair argmax agreement of every kernel beside the label-frequency baseline, and per
    kernel and estimator the floor (the limit against exact Bayes and the oracle), the fitted
    slope of the distance to the limit and how often the kernel sum is <= 0.  CIs are over
    worlds when there are several (--world-seed), else over prompts.  Writes to --out:
    convergence.png / .pdf (the figure), convergence.csv (tidy: n_demos (an integer, or inf
    for the limit), estimator, kernel, metric, mean, ci_low, ci_high, n_prompts, n_worlds),
    floors.csv (per world and concept: the exact floor of every kernel and estimator, η, ε_θ)
    and convergence.json (config, seeds, versions, worlds, fits, spreads, Σ, warnings).
    """
    from .store import write_csv, write_json

    # ---- everything is validated before the long work
    check_results_dir(out)
    ctx = click.get_current_context()
    if world_file is not None:
        clash = [name for name, given in (("--preset", preset is not None), ("--set", bool(overrides)),
                                          ("--world-seed", _given(ctx, "world_seeds"))) if given]
        if clash:
            raise click.UsageError(f"--world loads a saved world; it cannot be combined with {clash[0]}")
    worlds, sources = [], []
    for ws in world_seeds:
        w, src = load_or_build_world(preset or (None if world_file else CONVERGE_PRESET), world_file, ws, overrides)
        worlds.append(w)
        sources.append(src)
    world, source = worlds[0], sources[0]
    _check_concepts(concepts, world)
    if world.n_symbols ** (example_length - 1) > EXACT_LIMIT and n_samples is None:
        raise click.UsageError(f"this world's {world.n_symbols}^{example_length - 1} = "
                               f"{world.n_symbols ** (example_length - 1):,} inputs are too many to enumerate "
                               f"(limit {EXACT_LIMIT:,}): give --n-samples N to use N Monte Carlo inputs for Σ "
                               f"and the limits")
    n_samples = DEFAULT_N_SAMPLES if n_samples is None else n_samples

    from . import convergence
    from .plots import plot_convergence

    kernels, estimators = tuple(kernels), tuple(estimators)
    labels = list(world_seeds) if world_file is None else ["file"]
    n_w = len(worlds)
    with progress_bar(n_w * len(seeds), "converge", "seed") as bar:
        def tick(msg, done):
            bar.set_description(msg[:60])
            bar.update(done - bar.n)

        result = convergence.run(worlds, n_demos, example_length, n_prompts, seeds=seeds, kernels=kernels,
                                 estimators=estimators, features=features, concepts=concepts,
                                 n_samples=n_samples, ridge=ridge, world_labels=labels, progress=tick,
                                 world_source=source if n_w == 1 else {**source, "seed": list(world_seeds)})
        bar.update(bar.total - bar.n)
    fits, info, meta = result.fits, result.info, result.meta
    rows, floors = result.tables()
    elapsed = meta["elapsed_s"]
    meta["config"].update(n_demos=format_n_demos(n_demos), out=str(out),
                          world_seeds=list(world_seeds) if world_file is None else None)
    meta["title"] = (f"{_world_title(world, source, n_w)}; k={example_length}, {n_prompts} prompts x {len(seeds)} "
                     f"seed{'s' if len(seeds) > 1 else ''}{' per world' if n_w > 1 else ''}, concepts {concepts}, "
                     f"{features} features")
    title = meta["title"]

    table = convergence.summary_lines(rows, fits, n_demos, kernels, estimators, info)

    # ---- every file complete before any is renamed into --out
    publish(out, {"convergence.csv": lambda p: write_csv(p, rows, CONVERGE_COLUMNS),
                  "floors.csv": lambda p: write_csv(p, floors, convergence.FLOOR_COLUMNS),
                  "convergence.json": lambda p: write_json(p, meta),
                  # one drawing makes both: the pdf lands beside the png in the temp folder
                  "convergence.png": lambda p: plot_convergence(rows, meta["fits"], p, p.with_suffix(".pdf"),
                                                                title=title),
                  "convergence.pdf": lambda p: None})

    click.echo(repr(world) + (f" x {n_w} worlds (seeds {', '.join(map(str, world_seeds))})" if n_w > 1 else ""))
    click.echo(f"{n_prompts} prompts x {len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})"
               f"{' per world' if n_w > 1 else ''}, example length {example_length}, concepts {concepts}, "
               f"{features} features, n = {format_n_demos(n_demos)}, limits "
               f"{'exact' if info['limits_exact'] else f'from {n_samples} Monte Carlo inputs'}")
    for line in table:
        click.echo(line)
    # the theory's bias term bounds the averaged estimator (population least squares, §9)
    for e in ("averaged",) if "averaged" in estimators else ():
        bt = info.get("bias_term", {}).get(e)
        if bt and bt.get("n_pairs", 0) >= 10 and math.isfinite(bt.get("rho", float("nan"))):
            click.echo(f"exact theory floor ({e}) against η²ε_θ over {bt['n_pairs']} (world, concept) pairs: "
                       f"Spearman {bt['rho']:.2f} (p = {bt['p_value']:.2g}); with ε_θ on the span of each "
                       f"concept's inputs {bt['rho_span']:.2f} (p = {bt['p_value_span']:.2g})")
    total_bad = sum(info["impossible_prompts"].values())
    if total_bad:
        click.echo(f"prompts impossible under the pretraining mixture (left out where undefined): "
                   f"{total_bad} of {n_prompts * len(seeds) * n_w}")
    for msg in info["warnings"]:
        click.echo(f"warning: {msg}", err=True)
    click.echo(f"wrote {', '.join(str(out / f) for f in CONVERGE_FILES)} ({elapsed:.1f} s)")


# ---------------------------------------------------------------------- train
#: simkernel.model.MODEL_PRESETS's names (kept here so that --help does not import torch).
MODEL_NAMES = ("tiny", "cpu", "ginc-4", "ginc-12", "ginc-16")
TRAIN_PRESET = "random"
TRAIN_WORLD_DEFAULTS = {"random": {"concentration": "0.1"}}


@main.command("train", short_help="Train a small transformer on a world's documents; gap to the Bayes floor.")
@click.option("--corpus", "corpus_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Corpus folder made by `simkernel sample corpus`.  Without it, a corpus is sampled "
                   "into the run folder from --preset/--world with --n-docs and --doc-length.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
              help=f"World recipe when sampling a corpus (default {TRAIN_PRESET} with concentration=0.1).")
@click.option("--world", "world_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Load the world from this .npz when sampling a corpus.")
@click.option("--world-seed", type=NONNEG, default=0, show_default=True, help="Seed of the preset's world.")
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
              help="Override one preset option, e.g. --set n_states=20; repeatable.")
@click.option("--n-docs", type=POSITIVE, default=2000, show_default=True, help="Documents to sample.")
@click.option("--doc-length", type=POSITIVE, default=1024, show_default=True, help="Symbols per sampled document.")
@click.option("--corpus-seed", type=NONNEG, default=0, show_default=True, help="Seed of the sampled corpus.")
@click.option("--model", "model_name", type=click.Choice(list(MODEL_NAMES)), default="cpu", show_default=True,
              help="Model preset: tiny (tests), cpu (CPU default), ginc-4/12/16 (GINC-sized, GPU).")
@click.option("--block-size", type=Int(2), default=128, show_default=True,
              help="Symbols per training block (at most the model's context).")
@click.option("--batch-size", type=POSITIVE, default=32, show_default=True, help="Blocks per step (per rank).")
@click.option("--lr", type=PositiveFloat("the learning rate"), default=1e-3, show_default=True,
              help="Peak learning rate (linear warm-up, cosine decay to a tenth).")
@click.option("--warmup", type=NONNEG, default=100, show_default=True, help="Warm-up steps.")
@click.option("--max-steps", type=POSITIVE, default=3000, show_default=True, help="Stop after this many steps.")
@click.option("--eval-every", type=POSITIVE, default=100, show_default=True, help="Steps between evaluations.")
@click.option("--target-gap", type=PositiveFloat("the target gap"), default=0.05, show_default=True,
              help="Stop when val loss - Bayes floor < this (nats/token).")
@click.option("--patience", type=POSITIVE, default=10, show_default=True,
              help="Stop after this many evaluations without improvement of the val loss.")
@click.option("--ckpt-every", type=POSITIVE, default=500, show_default=True, help="Steps between checkpoints.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda if available, else cpu), cpu, cuda, cuda:N.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--seed", type=NONNEG, default=0, show_default=True, help="Seed of the weights and of the batches.")
@click.option("--resume", is_flag=True, help="Continue this config's interrupted run from its checkpoint.")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Run folders live here, each named by a hash of its config.")
def train_cmd(corpus_dir, preset, world_file, world_seed, overrides, n_docs, doc_length, corpus_seed,
              model_name, block_size, batch_size, lr, warmup, max_steps, eval_every, target_gap, patience,
              ckpt_every, device, compile_, seed, resume, runs_dir):
    """Train a small GPT-J on a world's documents until its held-out loss is within
    --target-gap of the exact Bayes floor (or --patience / --max-steps run out).  Rerunning a
    finished config prints where it is; --resume continues an interrupted one.  One run at a
    time per config: a second one refuses while the first holds the run folder."""
    ctx = click.get_current_context()
    world = None
    if corpus_dir is not None:
        clash = [n for n, g in (("--preset", preset is not None), ("--world", world_file is not None),
                                ("--set", bool(overrides))) + tuple((f"--{o.replace('_', '-')}", _given(ctx, o))
                                for o in ("world_seed", "n_docs", "doc_length", "corpus_seed")) if g]
        if clash:
            raise click.UsageError(f"--corpus uses an existing corpus; it cannot be combined with {clash[0]}")
    else:
        if world_file is None and preset is None and not overrides:
            preset, overrides = TRAIN_PRESET, tuple(f"{k}={v}" for k, v in TRAIN_WORLD_DEFAULTS[TRAIN_PRESET].items())
        world, wsource = load_or_build_world(preset, world_file, world_seed, overrides)

    from . import train as tr     # imports torch and transformers

    corpus_id = (tr.corpus_identity(corpus_dir) if corpus_dir is not None
                 else tr.sampled_corpus(wsource, n_docs, doc_length, corpus_seed))
    cfg = tr.TrainConfig(corpus=corpus_id, model=model_name, block_size=block_size, batch_size=batch_size,
                         lr=lr, warmup_steps=warmup, max_steps=max_steps, eval_every=eval_every,
                         target_gap=target_gap, patience=patience, ckpt_every=ckpt_every, seed=seed,
                         device=device, compile=compile_)
    import contextlib

    shown, post = {}, {}          # one bar on screen at a time: sampling, then training

    def show(name, total, unit, n):
        if shown.get("name") != name:
            if "stack" in shown:
                shown["stack"].close()
            stack = contextlib.ExitStack()
            shown.update(name=name, stack=stack, bar=stack.enter_context(progress_bar(total, name, unit)))
        shown["bar"].update(n - shown["bar"].n)

    def progress(step, info):
        post["loss"] = f"{info['loss']:.3f}"
        if "gap" in info:
            post["gap"] = f"{info['gap']:.3f}"
        show("training", max_steps, "step", step)
        shown["bar"].set_postfix(post, refresh=False)

    try:
        res = tr.run(cfg, runs_dir, corpus_dir=corpus_dir, world=world, resume=resume, progress=progress,
                     sample_progress=lambda n: show("sampling", n_docs, "doc", n))
    except tr.CheckpointExists as e:
        raise ValueError(f"run {str(e.run_dir)!r} has a checkpoint{f' at step {e.step}' if e.step is not None else ''} "
                         f"from an interrupted run; rerun with --resume to continue it, or remove the folder "
                         f"to start again") from None
    except tr.NoCheckpoint as e:
        raise ValueError(f"--resume: run {str(e.run_dir)!r} has no checkpoint to continue") from None
    except tr.Interrupted as e:
        if e.rank != 0:       # under torchrun rank 0 speaks for the run
            return 130
        next_step = (f"and {e.checkpoint_text}; rerun the same command with --resume to continue" if e.has_checkpoint
                     else "but no checkpoint yet; rerun the same command to start over")
        return _fail(f"interrupted at step {e.step}: {str(e.run_dir)!r} holds {e.contents} {next_step}", 130)
    finally:
        if "stack" in shown:
            shown["stack"].close()
    if res.rank != 0:
        return 0
    if res.status == "already trained":
        click.echo(f"already trained: {res.run_dir} (stopped at step {res.step} by {res.reason}; val "
                   f"{res.val_loss:.4f}, floor {res.floor:.4f}, gap {res.gap:.4f} nats/token)")
    else:
        click.echo(f"{res.run_dir}: stopped at step {res.step} by {res.reason} ({res.elapsed_s:.1f} s); "
                   f"val {res.val_loss:.4f}, Bayes floor {res.floor:.4f}, gap {res.gap:.4f} nats/token")
    return 0


# ---------------------------------------------------------------------- icl-eval
ICL_FILES = ("icl_vs_bayes.csv", "icl_vs_bayes.json", "icl_vs_bayes.png")


@main.command("icl-eval", short_help="A trained model's in-context predictions against exact Bayes and the "
                                     "theory kernel, with a figure.")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="A training run folder (made by `simkernel train`).")
@click.option("--n-demos", type=NDemos(minimum=0), default="0,1,2,4,8,16,32,64", show_default=True,
              help="Numbers of demonstrations; n whose prompt exceeds the model's context is skipped.")
@click.option("--example-length", type=EXAMPLE_LENGTH, default=3, show_default=True,
              help="Example length k: x has k - 1 symbols, then its label.")
@click.option("--n-prompts", type=POSITIVE, default=200, show_default=True, help="Prompts per concept group.")
@click.option("--seed", type=NONNEG, default=0, show_default=True, help="Prompt sampling seed.")
@click.option("--concepts", type=Concepts(), multiple=True,
              help="Concept group(s): prior, id, ood or an index; repeatable.  Default: id and ood when "
                   "the world has prior-0 concepts, else prior.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for icl_vs_bayes.csv/.json/.png (default: the run folder).")
@click.option("--figures", "to_figures", is_flag=True, help="Also copy the three files into ./figures.")
def icl_eval_cmd(run_dir, n_demos, example_length, n_prompts, seed, concepts, device, out, to_figures):
    """Evaluate a trained model's in-context learning: for every n, the model's next-symbol
    distribution after x_test (restricted to the labels) against the exact Bayesian posterior
    predictive, the theory kernel estimator (`simkernel converge`'s defaults: theory kernel,
    belief features, ridge 0.01; n >= 1), the label frequencies of the demonstrations (the
    baseline every kernel sits beside) and the oracle, on the same prompts.  Metrics (mean, 95%
    CI over prompts; agreement and accuracy tie-fair: a tie among m labels scores 1/m):
    tv_bayes, agree_bayes, acc_model, acc_bayes, acc_oracle, tv_oracle, tv_kernel, agree_kernel,
    acc_kernel, tv_kernel_bayes (normalised estimator; the averaged and clipped ones with the
    suffixes _averaged, _clipped), tv_frequency, agree_frequency, acc_frequency,
    tv_frequency_bayes.  Writes icl_vs_bayes.csv (tidy), .json (provenance) and .png (one row
    of panels per concept group: in- and out-of-distribution)."""
    from .icl_eval import run_paths
    from .store import write_csv, write_json

    run_paths(run_dir)                           # one-line errors before torch is imported
    out = run_dir if out is None else out
    check_results_dir(out)
    if to_figures:
        check_results_dir(Path("figures"))
    from . import icl_eval
    from .plots import plot_icl_vs_bayes

    res = icl_eval.run(run_dir, n_demos, example_length, n_prompts, seed=seed, concepts=list(concepts),
                       device=device)
    rows, info, meta, title = res.rows, res.info, res.meta, res.title
    meta["config"]["out"] = str(out)
    elapsed = meta["elapsed_s"]
    groups = meta["config"]["concepts"]
    publish(out, {ICL_FILES[0]: lambda p: write_csv(p, rows, ICL_COLUMNS),
                  ICL_FILES[1]: lambda p: write_json(p, meta),
                  ICL_FILES[2]: lambda p: plot_icl_vs_bayes(rows, p, title=title)},
            copy_to=Path("figures") if to_figures else None)

    if info["skipped_n"]:
        click.echo(f"skipped n = {', '.join(map(str, info['skipped_n']))}: the prompt is longer than the "
                   f"model's context ({info['context']} symbols)")
    for g, why in info["kernel"]["skipped"].items():
        click.echo(f"concepts {g}: no kernel estimator ({why})")
    for g in groups:
        click.echo(f"concepts {g}: total variation over the labels; agreement and accuracy of the argmax "
                   f"(a tie among m labels scores 1/m)")
        click.echo(f"  {'n':>5}  {'TV(model,Bayes)':>15}  {'TV(model,kernel)':>16}  {'TV(kernel,Bayes)':>16}  "
                   f"{'TV(freq,Bayes)':>14}  {'agree Bayes':>11}  {'acc model / Bayes / kernel / freq / oracle'}")
        sel = {(r["n_demos"], r["metric"]): r["mean"] for r in rows if r["concepts"] == str(g)}
        for n in sorted({r["n_demos"] for r in rows}):
            v = lambda m: f"{sel[(n, m)]:.3f}" if (n, m) in sel else "-"  # noqa: E731
            click.echo(f"  {n:>5}  {v('tv_bayes'):>15}  {v('tv_kernel'):>16}  {v('tv_kernel_bayes'):>16}  "
                       f"{v('tv_frequency_bayes'):>14}  {v('agree_bayes'):>11}  {v('acc_model')} / {v('acc_bayes')} / "
                       f"{v('acc_kernel')} / {v('acc_frequency')} / {v('acc_oracle')}")
    bad = {g: c for g, c in info["impossible_prompts"].items() if c}
    if bad:
        click.echo(f"prompts impossible under the pretraining mixture (left out of the Bayes metrics): {bad}")
    where = [str(out / f) for f in ICL_FILES] + ([str(Path("figures") / f) for f in ICL_FILES] if to_figures else [])
    click.echo(f"wrote {', '.join(where)} ({elapsed:.1f} s)")
    return 0


# ---------------------------------------------------------------------- measure
MEASURE_JSON = "measure.json"


@main.command("measure", short_help="Attention, reconstruction and probes of a trained model vs the true kernel.")
@click.option("--checkpoint", "checkpoint", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="A training run folder (made by `simkernel train`) or its checkpoint/model folder.")
@click.option("--n-prompts", type=Int(2), default=1000, show_default=True,
              help="Prompts (split into head-selection and held-out report sets).")
@click.option("--n-demos", type=POSITIVE, default=16, show_default=True,
              help="Demonstrations per prompt (16 x 4 + 2 = 66 symbols at k = 3, inside the default "
                   "run's 128-symbol training blocks).")
@click.option("--example-length", type=EXAMPLE_LENGTH, default=3, show_default=True,
              help="Example length k: x has k - 1 symbols, then its label.")
@click.option("--concepts", type=Concepts(), default="prior", show_default=True,
              help="Which concepts prompts come from: prior, id, ood or an index.")
@click.option("--weight", type=click.Choice(["max", "label", "mean"]), default="max", show_default=True,
              help="A head's weight on a demonstration: the max attention over its span (the paper), "
                   "the attention on its label, or the span mean.")
@click.option("--n-select", type=POSITIVE, default=700, show_default=True,
              help="Prompts that choose the best head (scaled down with the report set when fewer).")
@click.option("--n-report", type=POSITIVE, default=300, show_default=True,
              help="Held-out prompts the chosen head is scored on.")
@click.option("--seed", type=NONNEG, default=0, show_default=True, help="Prompt sampling and split seed.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the tables, measure.json and figures (default: RUN/measure).")
@click.option("--figures", "to_figures", is_flag=True, help="Also copy the files into ./figures/measure.")
def measure_cmd(checkpoint, n_prompts, n_demos, example_length, concepts, weight, n_select, n_report, seed,
                device, out, to_figures):
    """Measure kernel regression inside a trained model, against the ground truth.

    For prompts sampled from the run's world: the final token's attention in every layer and
    head; the attention profile over demonstration spans; each head's vote Σ_i a_i [y_i = c]
    against the model, the gold label, exact Bayes, the theory kernel estimator, the label
    frequencies (the uniform vote) and the oracle, by tie-fair agreement (a tie among m labels
    scores 1/m; head chosen on --n-select prompts, reported on --n-report others); within-prompt Pearson and Spearman correlation of a_i with the true
    kernel K(x_test, x_i) and the prediction similarity; ridge probes (λ = 0.01) from keys to
    the model's standalone prediction and from values to y_i at offsets -1..+3.  Writes
    heads.csv, best.csv, profile.csv, probes.csv, measure.json and three figures."""
    from .alignment import run_folder
    from .icl_eval import run_paths
    from .store import write_csv, write_json

    run_dir = run_folder(checkpoint)
    run_paths(run_dir)                           # one-line errors before torch is imported
    out = run_dir / "measure" if out is None else out
    check_results_dir(out)
    figures_dir = Path("figures") / "measure"
    if to_figures:
        check_results_dir(figures_dir)
    from . import alignment, analysis
    from .plots import MEASURE_FIGURES, plot_attention_profile, plot_head_scores, plot_probes

    with progress_bar(4, "measure", "stage") as bar:
        started = []

        def tick(stage):
            # each call starts a stage: the bar counts the stages already finished
            bar.update(1 if started else 0)
            started.append(stage)
            bar.set_postfix_str(stage)
        try:
            res = alignment.run(checkpoint, n_prompts, n_demos, example_length, concepts=concepts, weight=weight,
                                n_select=n_select, n_report=n_report, seed=seed, device=device, progress=tick)
        except ValueError as e:
            if "n_demos=" in str(e):         # the library names its argument, the user typed a flag
                raise click.BadParameter(str(e).replace("n_demos=", "").replace("n_demos", "--n-demos"),
                                         param_hint="--n-demos") from None
            raise
    result, meta, title = res.result, res.meta, res.title
    meta["config"]["out"] = str(out)
    elapsed = meta["elapsed_s"]
    writers = {"heads.csv": lambda p: write_csv(p, result.heads, analysis.HEAD_COLUMNS),
               "best.csv": lambda p: write_csv(p, result.best, analysis.BEST_COLUMNS),
               "profile.csv": lambda p: write_csv(p, result.profile, analysis.PROFILE_COLUMNS),
               "probes.csv": lambda p: write_csv(p, result.probes, analysis.PROBE_COLUMNS),
               MEASURE_JSON: lambda p: write_json(p, meta),
               MEASURE_FIGURES[0]: lambda p: plot_attention_profile(result.profile, p, title),
               MEASURE_FIGURES[1]: lambda p: plot_head_scores(result.heads, result.best, p, title=title)}
    if result.probes:
        writers[MEASURE_FIGURES[2]] = lambda p: plot_probes(result.probes, p, title)
    written = publish(out, writers, figures_dir if to_figures else None, remove=MEASURE_FIGURES)
    s = result.summary
    t2 = s["table2"]
    click.echo(f"{s['n_examples']} prompts x {s['n_demos']} demonstrations, {s['layers']} layers x {s['heads']} "
               f"heads; heads chosen on {s['n_select']} prompts, scored on {s['n_report']} held-out prompts")
    click.echo(f"model: accuracy {s['model_accuracy']:.3f}, agreement with exact Bayes "
               f"{s['model_matches'].get('bayes', float('nan')):.3f}, with the kernel estimator "
               f"{s['model_matches'].get('kernel', float('nan')):.3f}")
    click.echo(f"best head (agreement with the model): layer {t2['layer']} head {t2['head']}: held-out agreement "
               f"{t2['agreement']:.3f}, reconstructed accuracy {t2['reconstructed_accuracy']:.3f} "
               f"(model {t2['icl_accuracy']:.3f})")
    base = s["majority_baseline"]
    click.echo("majority vote of the demonstrations (held-out baseline, ties 1/m): agreement with the model "
               f"{base.get('model', float('nan')):.3f}, with exact Bayes {base.get('bayes', float('nan')):.3f}, "
               f"accuracy {base.get('gold', float('nan')):.3f}")
    click.echo("top heads by agreement with the model on the selection prompts; held-out values:")
    for line in analysis.top_heads_table(result.heads):
        click.echo(line)
    click.echo("the head chosen per measure on the selection prompts:")
    for line in analysis.best_heads_table(result.best):
        click.echo(line)
    click.echo(f"wrote {len(written)} files into {out}" + (f" and {figures_dir}" if to_figures else "")
               + f" ({elapsed:.1f} s)")
    return 0


# ---------------------------------------------------------------------- plot
@main.group("plot", short_help="Redraw a figure from its tidy CSV and JSON.")
def plot_group():
    """Redraw a figure from the tidy CSV and JSON of a results folder (no recomputation)."""


def _redraw(folder, out, load, redraw) -> list:
    """Check --out, read FOLDER's results (a one-line error before anything is created), then
    redraw into --out (default: FOLDER)."""
    if out is not None:
        check_results_dir(out)
    load(folder)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    paths = redraw(folder, out)
    return paths if isinstance(paths, list) else [paths]


@plot_group.command("convergence", short_help="Redraw convergence.png/.pdf from a folder's csv and json.")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for convergence.png and .pdf (default: FOLDER itself).")
def plot_convergence_cmd(folder, out):
    """Redraw convergence.png and convergence.pdf from FOLDER's convergence.csv and .json."""
    from .plots import load_convergence, redraw_convergence

    paths = _redraw(folder, out, load_convergence, redraw_convergence)
    click.echo(f"wrote {', '.join(str(p) for p in paths)}")


@plot_group.command("icl", short_help="Redraw icl_vs_bayes.png from a folder's csv and json.")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for icl_vs_bayes.png (default: FOLDER itself).")
def plot_icl_cmd(folder, out):
    """Redraw icl_vs_bayes.png from FOLDER's icl_vs_bayes.csv and .json (written by
    `simkernel icl-eval`), without loading the model or recomputing anything."""
    from .plots import load_icl, redraw_icl

    paths = _redraw(folder, out, load_icl, redraw_icl)
    click.echo(f"wrote {', '.join(str(p) for p in paths)}")


@plot_group.command("measure", short_help="Redraw the measurement figures from a folder's tables.")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the figures (default: FOLDER itself).")
def plot_measure_cmd(folder, out):
    """Redraw attention_profile.png, head_scores.png and probes.png from FOLDER's heads.csv,
    best.csv, profile.csv and probes.csv (written by `simkernel measure` or `simkernel llm`)."""
    from .plots import load_measurements, redraw_measurements

    paths = _redraw(folder, out, load_measurements, redraw_measurements)
    click.echo(f"wrote {', '.join(str(p) for p in paths)}")


# ---------------------------------------------------------------------- llm
LLM_TASKS = TEXT_TASKS
LLM_TABLES = ("heads", "best", "profile", "probes")


@main.command("llm", short_help="The kernel-regression measurements on a real Hugging Face LLM (Table 2).")
@click.option("--model", "model_name", required=True, metavar="NAME",
              help="An alias (gpt-j-6b, gpt2, gpt2-medium, gpt2-large, gpt2-xl, pythia-160m/410m/1.4b/6.9b, "
                   "llama-2-7b, llama-3-8b), a hub id (org/name), or a folder made by save_pretrained.  "
                   "Hub weights must be downloaded beforehand (or reachable).")
@click.option("--revision", default=None, help="Hub branch, tag or commit (default: main).")
@click.option("--task", type=click.Choice(LLM_TASKS), default=None,
              help="A task of the paper, read through `datasets` (default sst2 unless --data is given).")
@click.option("--split", default=None, help="The task's evaluated split (default: sst2/mnli validation, the "
                                            "others test).")
@click.option("--data", "data_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A local .csv, .tsv (GLUE's sentence<TAB>label) or .jsonl file instead of --task; "
                   "demonstrations are drawn from its other rows.")
@click.option("--text-column", default="sentence", show_default=True, callback=comma_words("column"),
              help="With --data: the text column; 'premise,hypothesis' for a pair task.")
@click.option("--label-column", default="label", show_default=True, help="With --data: the label column "
                                                                          "(class indices or label words).")
@click.option("--label-words", default="Negative,Positive", show_default=True, callback=comma_words("label word"),
              help="With --data: the answer word of each class 0, 1, ... (scored on its first token).")
@click.option("--n-demos", type=POSITIVE, default=TEXT_N_DEMOS, show_default=True,
              help="Demonstrations per prompt (8 keeps SST-2 prompts near 300 GPT-J tokens, far inside 2048).")
@click.option("--demos", "mode", type=click.Choice(DEMO_MODES), default="random",
              show_default=True, help="How demonstrations are drawn: uniformly, class-balanced, or the most "
                                      "similar pool texts (TF-IDF), each example with its own seed.")
@click.option("--n-examples", type=Int(2), default=LLM_N_EXAMPLES, show_default=True,
              help="Test examples (a seeded subset when the split has more; all when it has fewer).")
@click.option("--weight", "how", type=click.Choice(["max", "label", "mean"]), default="max", show_default=True,
              help="A head's weight a_i on demonstration i: the max attention in its span (the paper's), the "
                   "attention on its label token, or the span's mean.")
@click.option("--n-select", type=POSITIVE, default=700, show_default=True, help="Examples the best head is chosen on.")
@click.option("--n-report", type=POSITIVE, default=300, show_default=True,
              help="Held-out examples it is reported on (both shrink in proportion when there are fewer).")
@click.option("--split-seed", type=NONNEG, default=0, show_default=True, help="Seed of the select/report split.")
@click.option("--seed", type=NONNEG, default=0, show_default=True,
              help="Seed of the test subset and of every example's demonstrations.")
@click.option("--probe-layers", default="auto", show_default=True, callback=probe_layers,
              help="Layers whose keys and values are probed: auto (all when their float32 keys and values fit "
                   "4 GiB, about 6 GiB at the peak; else evenly spaced ones), all, none, or indices such as "
                   "16..21 or 3,7,14.")
@click.option("--max-text-tokens", type=POSITIVE, default=None, help="Cut each text to this many tokens.")
@click.option("--dtype", type=click.Choice(LLM_DTYPES + tuple(LLM_DTYPE_ALIASES)), default="auto", show_default=True,
              help="auto: bfloat16 on CUDA, float32 on CPU (the cache key holds the resolved dtype).")
@click.option("--device", default="auto", show_default=True, help="auto (cuda if available), cpu, cuda, cuda:N.")
@click.option("--device-map", default=None,
              help="Spread the model over several GPUs through accelerate, e.g. 'auto' (instead of --device).")
@click.option("--batch-size", type=POSITIVE, default=LLM_BATCH_SIZE, show_default=True,
              help="Prompts per forward pass.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default runs/llm/<model>-<task>): tables, figures, llm.json and the cached "
                   "model outputs outputs-<hash>.npz.")
def llm_cmd(model_name, revision, task, split, data_file, text_column, label_column, label_words, n_demos, mode,
            n_examples, how, n_select, n_report, split_seed, seed, probe_layers, max_text_tokens, dtype, device,
            device_map, batch_size, out):
    """The paper's §5 measurements on a real causal LM: the model's own ICL accuracy, the final
    token's attention profile over the demonstrations, each head's kernel-regression
    reconstruction of the prediction (Table 2: best head chosen on --n-select examples,
    reported on --n-report held-out ones), the correlation of each head's weights with the
    prediction similarity P(o|x_test)ᵀP(o|x_i), and ridge probes of keys (-> the
    demonstration's standalone prediction) and values (-> its label) at label position -1..+3.

    Writes heads.csv, best.csv, profile.csv, probes.csv (tidy), llm.json (config, model id and
    revision, data, seed, versions, summary), attention_profile.png, head_scores.png,
    probes.png, and caches the model's outputs as outputs-<hash>.npz: rerunning with another
    --weight, --n-select/--n-report or --split-seed does not run the model again.
    """
    from . import llm

    ctx = click.get_current_context()
    if data_file is not None and task is not None:
        raise click.UsageError("--data reads a local file; it cannot be combined with --task")
    if data_file is None:
        given = [f"--{o.replace('_', '-')}" for o in ("text_column", "label_column", "label_words") if _given(ctx, o)]
        if given:
            raise click.UsageError(f"{given[0]} describes a --data file; it cannot be used with a --task")
    elif split is not None:
        raise click.UsageError("--split selects a --task split; a --data file is read whole")

    from .analysis import BEST_COLUMNS, HEAD_COLUMNS, PROBE_COLUMNS, PROFILE_COLUMNS
    from .plots import MEASURE_FIGURES, MEASURE_FILES, plot_attention_profile, plot_head_scores, plot_probes
    from .store import provenance, write_csv, write_json

    if data_file is not None:
        data = llm.DataSpec(path=str(data_file), text_column=text_column, label_column=label_column,
                            label_words=label_words)
    else:
        data = llm.DataSpec(task=task or "sst2", split=split)
    llm.resolve_model(model_name)                      # a one-line error before anything is created
    out = llm.default_out(model_name, data) if out is None else out
    check_results_dir(out)

    t0 = time.perf_counter()
    job = llm.run(model_name, data, out, revision=revision, n_demos=n_demos, mode=mode, seed=seed,
                  n_examples=n_examples, how=how, n_select=n_select, n_report=n_report, split_seed=split_seed,
                  probe_layers=probe_layers, max_text_tokens=max_text_tokens, dtype=dtype, device=device,
                  device_map=device_map, batch_size=batch_size,
                  bar=lambda desc, total: progress_bar(total, desc, "prompt"),
                  on_load=lambda msg: click.echo(msg, err=True) if sys.stderr.isatty() else None)
    elapsed = time.perf_counter() - t0
    res, meta_out = job.analysis, job.outputs.meta
    model_meta = meta_out.get("model", {})
    s = res.summary
    is_gptj = llm.resolve_model(model_name)["id"] == llm.MODEL_ALIASES["gpt-j-6b"]
    paper = llm.PAPER_TABLE2.get(data.task) if is_gptj else None
    config = {"command": "llm", "model": model_name, "revision": revision, "task": data.task, "split": split,
              "data": None if data_file is None else str(data_file),
              "text_column": list(text_column) if data_file is not None else None,
              "label_column": label_column if data_file is not None else None,
              "label_words": list(label_words) if data_file is not None else None,
              "n_demos": n_demos, "demos": mode, "n_examples": n_examples, "weight": how, "n_select": n_select,
              "n_report": n_report, "split_seed": split_seed, "probe_layers": probe_layers,
              "max_text_tokens": max_text_tokens, "dtype": dtype, "device": device, "device_map": device_map,
              "batch_size": batch_size, "out": str(out)}
    meta = provenance(config, seed, extra_packages=("matplotlib", "torch", "transformers", "datasets", "tokenizers",
                                                    "accelerate"))
    title = (f"{model_meta.get('id', model_name)} on {data.task or Path(data.path).name}: "
             f"{s['n_examples']} examples x {s['n_demos']} demonstrations ({mode}, seed {seed})")
    meta.update(title=title, model=model_meta, data=meta_out.get("data"), dataset=meta_out.get("dataset"),
                cache=job.info,
                outputs={k: v for k, v in meta_out.items() if k not in ("model", "data", "dataset")},
                summary=s, table2=s["table2"], paper_table2=paper, best=res.best,
                columns={"heads": list(HEAD_COLUMNS), "best": list(BEST_COLUMNS), "profile": list(PROFILE_COLUMNS),
                         "probes": list(PROBE_COLUMNS)},
                elapsed_s=round(elapsed, 3))
    writers = {MEASURE_FILES[t]: (lambda p, t=t, cols=cols: write_csv(p, getattr(res, t), cols))
               for t, cols in zip(LLM_TABLES, (HEAD_COLUMNS, BEST_COLUMNS, PROFILE_COLUMNS, PROBE_COLUMNS))}
    writers["llm.json"] = lambda p: write_json(p, meta)
    writers[MEASURE_FIGURES[0]] = lambda p: plot_attention_profile(res.profile, p, title)
    writers[MEASURE_FIGURES[1]] = lambda p: plot_head_scores(res.heads, res.best, p, title=title)
    if res.probes:
        writers[MEASURE_FIGURES[2]] = lambda p: plot_probes(res.probes, p, title)
    written = publish(out, writers, remove=MEASURE_FIGURES)

    ds = meta_out.get("dataset", {})
    pool = ds.get("pool")
    click.echo(f"model {model_meta.get('id', model_name)}"
               + (f" (revision {model_meta['revision']})" if model_meta.get("revision") else "")
               + (f" commit {str(model_meta['commit'])[:10]}" if model_meta.get("commit") else "")
               + f": {model_meta.get('model_type', '?')}, {s['layers']} layers x {s['heads']} heads, "
               f"{model_meta.get('dtype', '?')}")
    click.echo(f"data {ds.get('source', '?')}: {s['n_examples']} of {ds.get('rows', '?')} examples; "
               f"{s['n_demos']} {mode} demonstrations each from "
               f"{pool['source'] if pool else 'the other rows'}, seed {seed}")
    tokens = meta_out.get("prompt_tokens", {})
    where = "read from the cache" if job.info["cache_hit"] else "computed and cached"
    click.echo(f"prompts: {tokens.get('mean', float('nan')):.0f} tokens on average, {tokens.get('max', '?')} at most; "
               f"model outputs {where} ({Path(job.info['cache_file']).name})")
    for line in llm.table2_lines(s, data.task or Path(data.path).stem, paper):
        click.echo(line)
    sim = [b for b in res.best if b["measure"] == "pearson" and b["reference"] == "similarity"]
    if sim:
        b = sim[0]
        click.echo(f"prediction similarity: best head L{b['layer']} H{b['head']}, Pearson r {b['report']:.3f} held out "
                   f"(weights a_i vs P(o|x_test)ᵀP(o|x_i) within a prompt)")
    for vec in ("keys", "values"):
        rows = [r for r in res.probes if r["vector"] == vec]
        if rows:
            b = max(rows, key=lambda r: r["accuracy"])
            probed = ", ".join(map(str, meta_out.get("probe_layers", [])))
            click.echo(f"{vec} probe -> {b['target']}: best {b['accuracy']:.3f} held out (layer {b['layer']} head "
                       f"{b['head']} offset {b['offset']:+d}; layers {probed})")
    click.echo(f"wrote {', '.join(map(str, written))} ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    main()
