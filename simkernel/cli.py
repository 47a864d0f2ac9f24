"""The ``simkernel`` command line: the only place that parses options, prints, and maps
errors to exit codes.  Each command calls one library ``run()``, prints its
``summary_lines()`` and ``write()``s its files; nothing here computes or assembles results.

Every bad input ends in ONE line on stderr, ``error: <what was wrong and what is allowed>``,
and a non-zero exit status (2 for a usage error such as a malformed option, 1 for a value the
package rejects); never a traceback.  The library names its Python arguments in its errors
(``n_samples``, ``world_seeds=``); the group rewrites them as the command's flags.  Nothing here
imports torch or transformers, so ``--help`` stays fast.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from . import __version__
from .constants import (DEMO_MODES, ESTIMATORS, FEATURES, KERNELS, LLM_BATCH_SIZE, LLM_DTYPE_ALIASES, LLM_DTYPES,
                        LLM_N_EXAMPLES, MODEL_NAMES, PHENOMENA, REGIME_BAND, REGIME_N_CAP, REGIME_N_MAX, TEXT_N_DEMOS,
                        TEXT_TASKS, WEIGHTS)
from .options import (EXAMPLE_LENGTH, NONNEG, POSITIVE, Concepts, Int, NDemos, PositiveFloat, choice_list,
                      comma_words, distinct, distinct_seeds, parse_sets, probe_layers, progress_bar)
from .presets import PRESETS

DEFAULT_PRESET = "paper-c"
#: converge's world when none is named (``convergence.DEFAULT_PRESET``, kept here for --help).
CONVERGE_PRESET = "ginc-small"
TRAIN_WORLD = ("random", ("concentration=0.1",))


# ---------------------------------------------------------------------- errors -> one line
def _fail(msg: str, code: int) -> int:
    click.echo(f"error: {' '.join(str(msg).split())}", err=True)
    return code


def _command_of(group: click.Group, argv) -> click.Command:
    """The (sub)command that ``argv`` invokes, for naming its flags in an error."""
    cmd = group
    for a in argv:
        if not isinstance(cmd, click.Group) or a.startswith("-"):
            break
        if a not in cmd.commands:
            break
        cmd = cmd.commands[a]
    return cmd


def speak_flags(msg: str, command: click.Command | None) -> str:
    """The library's Python argument names in ``msg`` as ``command``'s flags: ``n_demos=5`` ->
    ``--n-demos 5``, ``overwrite=True`` -> ``--overwrite``, ``n_samples`` -> ``--n-samples``
    (bare names only when they hold an underscore, so that plain words stay words)."""
    if "`" in msg:        # a quoted command or code snippet keeps its own spelling
        parts = msg.split("`")
        return "`".join(speak_flags(t, command) if i % 2 == 0 else t for i, t in enumerate(parts))
    for p in getattr(command, "params", ()):
        if not isinstance(p, click.Option):
            continue
        flag = max((o for o in p.opts if o.startswith("--")), key=len, default=None)
        if flag is None:
            continue
        msg = re.sub(rf"\b{p.name}=True\b", flag, msg)
        msg = re.sub(rf"\b{p.name}=(?=\S)", f"{flag} ", msg)
        if "_" in p.name:
            msg = re.sub(rf"(?<![-\w.]){p.name}\b(?![.\w/])", flag, msg)
        msg = re.sub(rf"^{p.name}\b(?= must| is| has)", flag, msg)
    return msg


class _Group(click.Group):
    """A click group whose ``main`` turns every expected failure into one ``error:`` line."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
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
        except (click.Abort, KeyboardInterrupt):
            code = _fail("interrupted; no result file was written", 130)
        except ValueError as e:
            code = _fail(speak_flags(str(e), _command_of(self, argv)), 1)
        except OSError as e:
            where = f": {e.filename!r}" if getattr(e, "filename", None) else ""
            code = _fail(f"{e.strerror or type(e).__name__}{where}", 1)
        if standalone_mode:
            sys.exit(code)
        return code


# ---------------------------------------------------------------------- shared options
def _options(*opts):
    def deco(f):
        for opt in reversed(opts):
            f = opt(f)
        return f
    return deco


def _given(ctx, name) -> bool:
    from click.core import ParameterSource
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _clash(first: str, others) -> None:
    """A usage error when ``first`` was given with any of ``others`` ((flag, given) pairs)."""
    bad = [flag for flag, given in others if given]
    if bad:
        raise click.UsageError(f"{first} cannot be combined with {bad[0]}")


def world_options(default=DEFAULT_PRESET, many_seeds=False, what="the world"):
    """--preset | --world, --world-seed (repeatable with ``many_seeds``), --set NAME=VALUE."""
    seed = (click.option("--world-seed", "world_seeds", type=NONNEG, multiple=True, callback=distinct("world seed"),
                         help="Seed of the preset's random world; repeat for several worlds (the CIs are then "
                              "over worlds).  Default 0.") if many_seeds else
            click.option("--world-seed", type=NONNEG, default=0, show_default=True,
                         help="Seed of the preset's random world (not with --world)."))
    return _options(
        click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
                     help=f"Build {what} from this recipe (default {default}); `simkernel world --help` lists "
                          "each preset's options."),
        click.option("--world", "world_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Load the world from this .npz instead (not with --preset, --set, --world-seed)."),
        seed,
        click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
                     help="Override one preset option, e.g. --set n_states=20; repeatable."))


def _world_spec(preset, world_file, overrides, seed_name="world_seed") -> dict:
    """The library's world arguments; --world clashes are usage errors."""
    if world_file is not None:
        _clash("--world loads a saved world; it", [("--preset", preset is not None), ("--set", bool(overrides)),
                                                  ("--world-seed", _given(click.get_current_context(), seed_name))])
    return {"preset": preset, "overrides": parse_sets(overrides), "world_file": world_file}


def _load_world(preset, world_file, world_seed, overrides, default=DEFAULT_PRESET):
    from .presets import load_world

    spec = _world_spec(preset, world_file, overrides)
    return load_world(spec["preset"], world_seed, spec["overrides"], world_file, default=default)


def _seed(help_text="Sampling seed."):
    return click.option("--seed", type=NONNEG, default=0, show_default=True, help=help_text)


def _device():
    return click.option("--device", default="auto", show_default=True,
                        help="auto (cuda when a GPU is visible, else cpu), cpu, cuda, cuda:N.")


def _example_length(default=3, extra=""):
    return click.option("--example-length", type=EXAMPLE_LENGTH, default=default, show_default=True,
                        help="Tokens per example k >= 2: k-1 input tokens x and one label y." + extra)


def _out_dir(default, help_text):
    return click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=default,
                        show_default=default is not None, help=help_text)


def _heads(examples="prompts"):
    """--weight, --n-select, --n-report: how heads are weighed, chosen and reported (measure, llm)."""
    return _options(
        click.option("--weight", type=click.Choice(WEIGHTS), default="max", show_default=True,
                     help="A head's weight on a demonstration: the max attention over its span (the paper's), "
                          "the attention on its label token, or the span's mean."),
        click.option("--n-select", type=POSITIVE, default=700, show_default=True,
                     help=f"{examples.capitalize()} the best head is chosen on."),
        click.option("--n-report", type=POSITIVE, default=300, show_default=True,
                     help=f"Held-out {examples} it is reported on (both shrink in proportion when there are "
                          "fewer)."))


def _bar(total, desc, unit):
    """(bar, progress callback taking the number done) for a library ``progress=``."""
    bar = progress_bar(total, desc, unit)
    return bar, lambda done: bar.update(done - bar.n)


def _preset_help() -> str:
    return "\b\n" + "\n".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in opts.items())
                              for name, opts in PRESETS.items())


def _wrote(paths, elapsed) -> str:
    return f"wrote {', '.join(map(str, paths))} ({elapsed:.1f} s)"


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
    simkernel regime         where the estimators' central-limit regime begins, and the n at
                             which the kernel overtakes label counting (long prompts)
    simkernel phenomena      retrieval, label flips, input shift, order, pretraining prior:
                             exact Bayes, the kernel and a model, each with a verdict
    simkernel plot           redraw a figure from its tidy CSV and JSON (or plot a sweep)
    simkernel sweep          a grid of any command's runs on Dask: resumable, one tidy table
    simkernel report         the theory's claims C1-C7 over many worlds, as an HTML page
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
              help="Instead of building, load and validate this world .npz; with --out, re-save it.")
@click.option("--world-seed", "--seed", "seed", type=NONNEG, default=0, show_default=True,
              help="Seed of the preset's random draws: the same seed gives the same world (--seed is a "
                   "deprecated alias).")
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
              help="Override one preset option (listed below), e.g. --set n_states=20; repeatable.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Save the world to this .npz (replaced atomically).  Without --out nothing is written.")
def world_cmd(preset, from_file, seed, overrides, out):
    """Build a world from a preset (or check an existing one), print a summary, save it."""
    from .presets import load_world
    from .store import check_out_file, save_world

    if out is not None:
        if Path(out).suffix != ".npz":
            raise click.BadParameter(f"must end in .npz, got {str(out)!r}", param_hint="'--out'")
        check_out_file(out)
    if from_file is not None:
        _clash("--from loads a saved world; it", [("--preset", preset is not None), ("--set", bool(overrides)),
                                                 ("--world-seed", _given(click.get_current_context(), "seed"))])
    world, source = load_world(preset, seed, parse_sets(overrides), from_file)
    click.echo(repr(world))
    if out is not None:
        click.echo(f"wrote {save_world(world, out, source, seed if from_file is None else world.meta.get('seed'))}")


# ---------------------------------------------------------------------- sample
@main.group("sample")
def sample():
    """Sample pretraining corpora or in-context prompts from a world."""


@sample.command("corpus")
@world_options()
@click.option("--n-docs", type=POSITIVE, default=1000, show_default=True, help="Number of documents (GINC: 1000).")
@click.option("--doc-length", type=POSITIVE, default=10240, show_default=True,
              help="Symbols per document (GINC: 10240).")
@_seed("Sampling seed: the same seed and world give bit-identical documents.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to create with tokens.npy, offsets.npy, concepts.npy, world.npz, meta.json.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing non-empty --out folder (only once the new corpus is complete).")
def corpus_cmd(preset, world_file, world_seed, overrides, n_docs, doc_length, seed, out, overwrite):
    """Sample pretraining documents (one concept per document, drawn from the prior)."""
    import time

    from .store import check_out_dir, write_corpus

    check_out_dir(out, overwrite)
    world, source = _load_world(preset, world_file, world_seed, overrides)
    t0 = time.perf_counter()
    bar, tick = _bar(n_docs, "sampling", "doc")
    with bar:
        write_corpus(world, out, n_docs, doc_length, seed, overwrite=overwrite, progress=tick,
                     config={"command": "sample corpus", "world": source})
    click.echo(repr(world))
    click.echo(f"wrote {n_docs} documents x {doc_length} symbols to {out} ({time.perf_counter() - t0:.1f} s)")


@sample.command("prompts")
@world_options()
@click.option("--n-prompts", type=POSITIVE, default=2500, show_default=True,
              help="Number of prompts (GINC: 2500 per example length and n).")
@click.option("--n-demos", type=NONNEG, default=64, show_default=True,
              help="Demonstrations per prompt (>= 0); truncate later for smaller n.")
@_example_length(3, "  GINC: 3, 5, 8, 10.")
@_seed()
@click.option("--concept", type=NONNEG, default=None,
              help="Draw every prompt from this concept (0..K-1, prior-0 concepts allowed); default: the prior.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The .npz to write (an existing file is replaced atomically).")
def prompts_cmd(preset, world_file, world_seed, overrides, n_prompts, n_demos, example_length, seed, concept, out):
    """Sample in-context prompts [x_1 y_1 / ... x_n y_n / x_test] and their gold y_test."""
    from .sampling import sample_prompts
    from .store import check_out_file, write_prompts

    if Path(out).suffix != ".npz":
        raise click.BadParameter(f"must end in .npz, got {str(out)!r}", param_hint="'--out'")
    check_out_file(out)
    world, source = _load_world(preset, world_file, world_seed, overrides)
    prompts = sample_prompts(world, n_prompts, n_demos, example_length, seed, concept=concept)
    write_prompts(prompts, out, {"command": "sample prompts", "world": source, "n_prompts": n_prompts,
                                 "n_demos": n_demos, "example_length": example_length, "concept": concept}, seed)
    click.echo(repr(world))
    click.echo(f"wrote {n_prompts} prompts of {n_demos} demonstrations (k={example_length}, "
               f"{prompts.tokens.shape[1]} tokens each) to {out}")


# ---------------------------------------------------------------------- bayes
@main.command("bayes")
@world_options()
@click.option("--n-prompts", type=POSITIVE, default=256, show_default=True, help="Number of prompts.")
@click.option("--n-demos", type=NONNEG, default=64, show_default=True,
              help="Largest number of demonstrations N; results for n = 0, 1, 2, 4, ..., N.")
@_example_length(2)
@_seed("Prompt sampling seed.")
@click.option("--concept", type=NONNEG, default=None,
              help="Draw every prompt from this concept (0..K-1); default: from the prior.")
@click.option("--method", type=click.Choice(["auto", "dense", "sparse"]), default="auto", show_default=True,
              help="Forward-pass implementation (auto picks sparse for sparse emissions).")
@_out_dir(Path("runs/bayes"), "Folder for bayes.csv and bayes.json (created if needed; both are replaced).")
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
    from .store import check_results_dir

    check_results_dir(out)
    world, source = _load_world(preset, world_file, world_seed, overrides)
    bar, tick = _bar(n_prompts, "exact Bayes", "prompt")
    with bar:
        res = bayes.run(world, n_prompts, n_demos, example_length, seed, concept=concept, method=method,
                        world_source=source, progress=tick)
    written = res.write(out)
    for line in res.summary_lines():
        click.echo(line)
    click.echo(_wrote(written, res.meta["elapsed_s"]))


# ---------------------------------------------------------------------- converge
@main.command("converge", short_help="Kernel estimators against exact Bayes for n = 1..N, with a figure.")
@world_options(f"{CONVERGE_PRESET}: GINC's construction with 16 symbols, 4 x 4 states, 4 concepts and the "
               "delimiter restart, where the theory kernel varies within a prompt", many_seeds=True)
@click.option("--n-demos", type=NDemos(), default="1..256", show_default=True,
              help="The n to report: 'A..B' (every n from A to B), a comma list '1,2,8', or a mixture "
                   "'1,2,4..8'.  Every prompt holds max(n) demonstrations; smaller n reuse the same prompts.")
@_example_length(3, "  2 is the setting of the paper's Table 3, where paper-c's kernel is constant within a "
                    "prompt.")
@click.option("--n-prompts", type=POSITIVE, default=200, show_default=True,
              help="Prompts per world and prompt seed.")
@click.option("--seed", "seeds", type=NONNEG, multiple=True, callback=distinct_seeds,
              help="Prompt sampling seed; repeat for several seeds (pooled within each world).  Default 0.")
@click.option("--concepts", type=Concepts(), default="prior", show_default=True,
              help="The prompts' concepts: 'prior' (drawn from the pretraining prior), 'id' / 'ood' (spread "
                   "evenly over the concepts with prior > 0 / = 0), or one concept index.")
@click.option("--estimator", "estimators", multiple=True, metavar="NAME[,NAME]",
              callback=choice_list(ESTIMATORS, "estimator"),
              help="averaged, normalised (uniform where Σ_i K <= 0), clipped (normalised with max(K, 0)); "
                   "repeatable or a comma list.  Default: all.")
@click.option("--kernel", "kernels", multiple=True, metavar="NAME[,NAME]", callback=choice_list(KERNELS, "kernel"),
              help="theory (Σ of the pretraining inputs), oracle (Σ_θ* of the prompt's concept), similarity "
                   "(P(o|x)ᵀP(o|x')), frequency (K ≡ 1: the label frequencies, the baseline); repeatable or a "
                   "comma list.  Default: all four.")
@click.option("--features", type=click.Choice(list(FEATURES)), default="belief", show_default=True,
              help="Feature map ψ(x): belief (label-conditioned beliefs, exactly linear) or operator (the "
                   "row-normalised rows of T_x pushed one step; not the paper's unnormalised vec(T_x)).")
@click.option("--ridge", type=PositiveFloat("the ridge"), default=0.01, show_default=True,
              help="λ = ridge · trace(Σ) / D is added to Σ before it is inverted.")
@click.option("--n-samples", type=POSITIVE, default=None,
              help="Monte Carlo inputs for Σ and the limits when the V^(k-1) inputs are too many to enumerate "
                   "(then required, e.g. 20000).")
@_out_dir(Path("figures"), "Folder for convergence.{png,pdf,csv,json} and floors.csv (the five files are "
                           "replaced only once all are complete).")
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
    from . import convergence
    from .store import check_results_dir

    check_results_dir(out)
    spec = _world_spec(preset, world_file, overrides, "world_seeds")
    bar = progress_bar(len(world_seeds) * len(seeds), "converge", "seed")

    def tick(msg, done):
        bar.set_description(msg[:60])
        bar.update(done - bar.n)

    with bar:
        res = convergence.run(None, n_demos, example_length, n_prompts, seeds=seeds, kernels=kernels,
                              estimators=estimators, features=features, concepts=concepts, n_samples=n_samples,
                              ridge=ridge, progress=tick, world_seeds=world_seeds, **spec)
        bar.update(bar.total - bar.n)
    written = res.write(out)
    for line in res.summary_lines():
        click.echo(line)
    for msg in res.info["warnings"]:
        click.echo(f"warning: {msg}", err=True)
    click.echo(_wrote(written, res.meta["elapsed_s"]))


# ---------------------------------------------------------------------- regime
@main.command("regime", short_help="Where the central-limit regime begins; when the kernel overtakes label counting.")
@world_options(f"{CONVERGE_PRESET}; a restart world (Assumption 1) whose inputs can be enumerated",
               many_seeds=True)
@_example_length(3)
@click.option("--n-prompts", type=POSITIVE, default=1000, show_default=True, help="Prompts per world.")
@click.option("--n-max", type=POSITIVE, default=REGIME_N_MAX, show_default=True,
              help="The grid n = 1, 2, 4, .., N; doubled past it while a world's regime or crossover is not "
                   "settled.")
@click.option("--n-cap", type=POSITIVE, default=REGIME_N_CAP, show_default=True,
              help="The grid never goes past this n.")
@click.option("--kernel", "kernels", multiple=True, metavar="NAME[,NAME]",
              callback=choice_list(("theory", "oracle"), "kernel"),
              help="theory (Σ of the pretraining inputs) and/or oracle (Σ_θ*); the label frequencies are always "
                   "computed.  Default: theory.")
@click.option("--estimator", "estimators", multiple=True, metavar="NAME[,NAME]",
              callback=choice_list(ESTIMATORS, "estimator"),
              help="averaged, normalised, clipped; repeatable or a comma list.  Default: normalised, averaged.")
@click.option("--band", type=PositiveFloat("the band"), default=REGIME_BAND, show_default=True,
              help="The regime begins where measured / predicted error stays within 1 ± band.")
@_seed("Prompt and demonstration seed.")
@click.option("--ridge", type=PositiveFloat("the ridge"), default=0.01, show_default=True,
              help="λ = ridge · trace(Σ) / D is added to Σ before it is inverted.")
@_out_dir(Path("figures/regime"), "Folder for regime.{csv,png,json} and regime_worlds.csv (replaced together).")
def regime_cmd(preset, world_file, world_seeds, overrides, example_length, n_prompts, n_max, n_cap, kernels,
               estimators, band, seed, ridge, out):
    """Where the kernel estimators' central-limit regime begins, and the n at which the kernel
    estimate overtakes the label frequencies.

    In a restart world the demonstrations are i.i.d. given the concept, so prompts of tens of
    thousands of demonstrations cost lookups, not forward passes.  For every world: the mean TV
    between each estimate and its exact limit, measured and predicted from the estimator's exact
    asymptotic covariance (c/√n); the regime begins where their ratio stays within 1 ± band, and
    the rate is judged past it only.  Also the crossover n× where the kernel's TV to exact Bayes
    falls below the label frequencies' for good (bootstrap CI over prompts, and its asymptotic
    prediction).  The grid doubles past --n-max while a world's regime or crossover is not settled
    (up to --n-cap).  Writes to --out: regime.csv (tidy: world, n_demos, kernel, estimator, metric,
    mean, ci_low, ci_high, n_prompts), regime_worlds.csv (per world: regime_n, slope, crossover, ...),
    regime.json and regime.png.
    """
    from . import regime
    from .store import check_results_dir

    check_results_dir(out)
    spec = _world_spec(preset, world_file, overrides, "world_seeds")
    if spec["preset"] is None and world_file is None:
        spec["preset"] = CONVERGE_PRESET
    bar = progress_bar(len(world_seeds) or 1, "regime", "world")

    def tick(msg, done, _total):
        bar.set_description(msg[:60])
        bar.update(done - bar.n)

    ctx = click.get_current_context()
    # choice_list gives every choice when none is named; regime's defaults are narrower
    kernels = kernels if _given(ctx, "kernels") else ("theory",)
    estimators = estimators if _given(ctx, "estimators") else regime.ESTIMATORS
    with bar:
        res = regime.run(world_seeds=world_seeds, example_length=example_length, n_prompts=n_prompts,
                         n_max=n_max, n_cap=n_cap, kernels=kernels, estimators=estimators, band=band, seed=seed,
                         ridge=ridge, progress=tick, **spec)
        bar.update(bar.total - bar.n)
    written = res.write(out)
    for line in res.summary_lines():
        click.echo(line)
    click.echo(_wrote(written, res.meta["elapsed_s"]))


# ---------------------------------------------------------------------- phenomena
@main.command("phenomena", short_help="An ICL phenomenon: exact Bayes, the kernel and a model, with a verdict.")
@click.argument("name", type=click.Choice(PHENOMENA))
@world_options("ginc-small", many_seeds=True)
@click.option("--quick", is_flag=True, help="A small setting (seconds): the tests' and a first look.")
@_seed("Prompt sampling seed.")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A training run folder (same world): adds the trained model as a predictor.")
@_device()
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="One of the phenomenon's own settings (see docs/guide/phenomena.md), e.g. "
                   "--param fractions=0,0.5,1; repeatable.")
@_out_dir(Path("figures/phenomena"), "Folder for NAME.csv, NAME.json and NAME.png.")
def phenomena_cmd(name, preset, world_file, world_seeds, overrides, quick, seed, run_dir, device, params, out):
    """Test one of the paper's ICL phenomena (§4.2) against exact answers: retrieval of similar
    demonstrations, label flips and new label formats, shifted inputs, the order of the
    demonstrations, and the pretraining prior of the test concept.  Predictors: exact Bayes,
    the theory kernel (normalised and clipped), the label frequencies, the oracle and, with
    --run, a trained model; CIs over worlds.  Writes NAME.csv (tidy), NAME.json (config, seeds,
    versions, the verdict and its numbers) and NAME.png."""
    from . import phenomena
    from .store import check_results_dir

    check_results_dir(out)
    spec = _world_spec(preset, world_file, overrides, "world_seeds")
    if spec.pop("world_file") is not None:
        from .world import World
        spec = {"worlds": [World.load(world_file)]}
    else:
        # the library's defaults (ginc-small, world seeds 0, 1, 2) unless the options say otherwise
        spec = {k: v for k, v in spec.items() if v}
        if _given(click.get_current_context(), "world_seeds"):
            spec["world_seeds"] = world_seeds
    extra = {k: _param_value(v) for k, v in parse_sets(params).items()}
    bar = progress_bar(None, name, "stage")

    def tick(msg, done, total):
        bar.total = total
        bar.set_description(f"{name}: {msg}"[:60])
        bar.update(done - bar.n)

    with bar:
        res = phenomena.run(name, seed=seed, quick=quick, run_dir=run_dir, device=device, progress=tick, **spec,
                            **extra)
    written = res.write(out)
    for line in res.summary_lines():
        click.echo(line)
    click.echo(_wrote(written, res.elapsed_s))


def _param_value(text: str):
    """'0,0.5,1' -> [0.0, 0.5, 1.0]; '3' -> 3; 'theory' -> 'theory'."""
    def one(t):
        for cast in (int, float):
            try:
                return cast(t)
            except ValueError:
                pass
        return t
    return [one(t.strip()) for t in text.split(",")] if "," in text else one(text.strip())


# ---------------------------------------------------------------------- train
@main.command("train", short_help="Train a small transformer on a world's documents; gap to the Bayes floor.")
@click.option("--corpus", "corpus_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Corpus folder made by `simkernel sample corpus`.  Without it, a corpus is sampled into the "
                   "run folder from the world options with --n-docs and --doc-length.")
@world_options(f"{TRAIN_WORLD[0]} with concentration=0.1", what="the world of the sampled corpus")
@click.option("--n-docs", type=POSITIVE, default=2000, show_default=True, help="Documents to sample.")
@click.option("--doc-length", type=POSITIVE, default=1024, show_default=True, help="Symbols per sampled document.")
@click.option("--corpus-seed", type=NONNEG, default=0, show_default=True, help="Seed of the sampled corpus.")
@click.option("--model", "model_name", type=click.Choice(MODEL_NAMES), default="cpu", show_default=True,
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
@_device()
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@_seed("Seed of the weights and of the batches.")
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
    from .options import StagedBars

    ctx = click.get_current_context()
    world = source = None
    if corpus_dir is not None:
        _clash("--corpus uses an existing corpus; it",
               [("--preset", preset is not None), ("--world", world_file is not None), ("--set", bool(overrides))]
               + [(f"--{o.replace('_', '-')}", _given(ctx, o)) for o in ("world_seed", "n_docs", "doc_length",
                                                                         "corpus_seed")])
    else:
        if world_file is None and preset is None and not overrides:
            preset, overrides = TRAIN_WORLD
        world, source = _load_world(preset, world_file, world_seed, overrides)

    from . import train as tr     # imports torch and transformers

    corpus_id = (tr.corpus_identity(corpus_dir) if corpus_dir is not None
                 else tr.sampled_corpus(source, n_docs, doc_length, corpus_seed))
    cfg = tr.TrainConfig(corpus=corpus_id, model=model_name, block_size=block_size, batch_size=batch_size,
                         lr=lr, warmup_steps=warmup, max_steps=max_steps, eval_every=eval_every,
                         target_gap=target_gap, patience=patience, ckpt_every=ckpt_every, seed=seed,
                         device=device, compile=compile_)
    with StagedBars() as bars:
        try:
            res = tr.run(cfg, runs_dir, corpus_dir=corpus_dir, world=world, resume=resume,
                         progress=lambda step, info: bars.show("training", max_steps, "step", step, loss=info["loss"],
                                                               gap=info.get("gap")),
                         sample_progress=lambda n: bars.show("sampling", n_docs, "doc", n))
        except tr.Interrupted as e:
            if e.rank != 0:       # under torchrun rank 0 speaks for the run
                return 130
            then = (f"and {e.checkpoint_text}; rerun the same command with --resume to continue" if e.has_checkpoint
                    else "but no checkpoint yet; rerun the same command to start over")
            return _fail(f"interrupted at step {e.step}: {str(e.run_dir)!r} holds {e.contents} {then}", 130)
    if res.rank == 0:
        if res.note:            # a damaged finished run trained again, or an older one's hashes recorded
            click.echo(f"warning: {res.note}", err=True)
        click.echo(res.summary_line())
    return 0


# ---------------------------------------------------------------------- icl-eval
@main.command("icl-eval", short_help="A trained model's in-context predictions against exact Bayes and the "
                                     "theory kernel, with a figure.")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="A training run folder (made by `simkernel train`).")
@click.option("--n-demos", type=NDemos(minimum=0), default="0,1,2,4,8,16,32,64", show_default=True,
              help="Numbers of demonstrations; n whose prompt exceeds the model's context is skipped.")
@_example_length(3)
@click.option("--n-prompts", type=POSITIVE, default=200, show_default=True, help="Prompts per concept group.")
@_seed("Prompt sampling seed.")
@click.option("--concepts", type=Concepts(), multiple=True,
              help="Concept group(s): prior, id, ood or an index; repeatable.  Default: id and ood when the world "
                   "has prior-0 concepts, else prior.")
@_device()
@_out_dir(None, "Folder for icl_vs_bayes.csv/.json/.png (default: the run folder).")
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
    from .store import check_results_dir

    run_paths(run_dir)                           # one-line errors before torch is imported
    out = check_results_dir(run_dir if out is None else out)
    copy_to = check_results_dir(Path("figures")) if to_figures else None
    from . import icl_eval

    res = icl_eval.run(run_dir, n_demos, example_length, n_prompts, seed=seed, concepts=list(concepts),
                       device=device)
    written = res.write(out, copy_to=copy_to)
    for line in res.summary_lines():
        click.echo(line)
    click.echo(_wrote(written, res.meta["elapsed_s"]))


# ---------------------------------------------------------------------- measure
@main.command("measure", short_help="Attention, reconstruction and probes of a trained model vs the true kernel.")
@click.option("--checkpoint", "checkpoints", type=click.Path(file_okay=False, path_type=Path), required=True,
              multiple=True, help="A training run folder (made by `simkernel train`) or its checkpoint/model "
                                  "folder; repeat for several training seeds of one world (same prompts).")
@click.option("--n-prompts", type=Int(2), default=1000, show_default=True,
              help="Prompts (split into head-selection and held-out report sets).")
@click.option("--n-demos", type=POSITIVE, default=16, show_default=True,
              help="Demonstrations per prompt (16 x 4 + 2 = 66 symbols at k = 3, inside 128-symbol blocks).")
@_example_length(3)
@click.option("--concepts", type=Concepts(), default="prior", show_default=True,
              help="Which concepts prompts come from: prior, id, ood or an index.")
@_heads()
@_seed("Prompt sampling and split seed.")
@_device()
@_out_dir(None, "Folder for the tables, measure.json and figures (default: RUN/measure of the first run).")
@click.option("--figures", "to_figures", is_flag=True, help="Also copy the files into ./figures/measure.")
def measure_cmd(checkpoints, n_prompts, n_demos, example_length, concepts, weight, n_select, n_report, seed,
                device, out, to_figures):
    """Measure kernel regression inside a trained model, against the ground truth.

    For prompts sampled from the run's world: the final token's attention in every layer and
    head; the attention profile over demonstration spans; each head's vote Σ_i a_i [y_i = c]
    beside the votes of reference weights (uniform, the theory kernel clipped at 0, the
    prediction similarity, the best non-negative weights, the head's own weights shuffled),
    scored against the model, the gold label, exact Bayes and the oracle by tie-fair agreement
    (a tie among m labels scores 1/m; head chosen on --n-select prompts, reported on --n-report
    others, head-minus-reference differences with paired bootstrap CIs); within-prompt
    correlation of a_i with the true kernel and the prediction similarity; ridge probes of keys
    and values.  Writes heads.csv, best.csv, profile.csv, probes.csv, measure.json and figures."""
    from .alignment import run_folder
    from .icl_eval import run_paths
    from .store import check_results_dir

    run_dirs = [run_folder(c) for c in checkpoints]
    for d in run_dirs:
        run_paths(d)                           # one-line errors before torch is imported
    out = check_results_dir(run_dirs[0] / "measure" if out is None else out)
    copy_to = check_results_dir(Path("figures") / "measure") if to_figures else None
    from . import alignment

    bar, tick = _bar(4 * len(run_dirs), "measure", "stage")
    with bar:
        res = alignment.run(checkpoints if len(checkpoints) > 1 else checkpoints[0], n_prompts, n_demos,
                            example_length, concepts=concepts, weight=weight, n_select=n_select,
                            n_report=n_report, seed=seed, device=device,
                            progress=lambda stage: (bar.update(1), bar.set_postfix_str(stage)))
    written = res.write(out, copy_to=copy_to)
    for line in res.summary_lines():
        click.echo(line)
    click.echo(f"wrote {len(written)} files into {out}" + (f" and {copy_to}" if to_figures else "")
               + f" ({res.meta['elapsed_s']:.1f} s)")


# ---------------------------------------------------------------------- plot
@main.group("plot", short_help="Redraw a figure from its tidy CSV and JSON.")
def plot_group():
    """Redraw a figure from the tidy CSV and JSON of a results folder (no recomputation)."""


def _plot_command(name, files, help_text, what=None):
    @plot_group.command(name, short_help=f"Redraw {files} from a folder's tables.", help=help_text)
    @click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Folder for the figures (default: FOLDER itself).")
    def cmd(folder, out):
        from . import plots
        from .store import check_results_dir

        load, redraw = getattr(plots, f"load_{what or name}"), getattr(plots, f"redraw_{what or name}")
        if out is not None:
            check_results_dir(out)
        load(folder)                        # a one-line error before anything is created
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
    from . import plots, sweep

    res = sweep.load(folder)
    path = plots.plot_sweep(res.table(table), x, y, hue=hue, where=parse_sets(where),
                            out=out or Path(folder) / f"sweep_{y}_by_{x}.png",
                            title=f"{res.meta['config']['command']} sweep ({len(res.jobs)} jobs)")
    click.echo(f"wrote {path}")


# ---------------------------------------------------------------------- sweep
@main.command("sweep", short_help="A grid of any command's runs on Dask, resumable, in one tidy table.")
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
    from . import sweep

    if verify:
        target = config if config.is_dir() else (out or Path("sweeps") / config.stem)
        if out is not None and config.is_dir():
            raise click.UsageError("give the sweep folder once: as CONFIG or as --out")
        check = sweep.verify(target)
        for line in check.summary_lines():
            click.echo(line)
        return 0 if check.ok else _fail(f"{len(check.problems)} problem{'s' if len(check.problems) != 1 else ''} in "
                                        f"{target}: rerun `simkernel sweep CONFIG --out {target}` to rerun the "
                                        f"damaged and missing jobs", 1)
    if config.is_dir():
        raise click.UsageError(f"{config} is a folder: give the sweep's config TOML to run it (a folder only with "
                               f"--verify)")
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
        return _fail(f"interrupted: the finished jobs are kept in {out}; run the same command again to resume", 130)
    for line in res.summary_lines():
        click.echo(line)
    written = res.write()
    if written:
        click.echo(_wrote(written, res.meta["elapsed_s"]))
    else:
        click.echo(f"tables unchanged: {', '.join(str(p) for p in res.files())} (nothing ran, every job and table as "
                   f"recorded) ({res.meta['elapsed_s']:.1f} s)")
    failed = res.counts()["failed"]
    if failed:
        return _fail(f"{failed} of {len(res.jobs)} jobs failed (their errors are above and in sweep.csv); fix the "
                     f"config and rerun, with --retry-failed to run them again", 1)
    return 0


# ---------------------------------------------------------------------- report
@main.command("report", short_help="The theory's claims C1-C7 over many worlds: verdicts on an offline HTML page.")
@click.option("--quick", is_flag=True, help="Few worlds and tiny models (the CI's setting, under 2 minutes).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("figures/report"),
              show_default=True, help="Folder for index.html, report.md, report.json, the figures and the sweeps.")
@click.option("--workers", type=POSITIVE, default=None, help="Local Dask worker processes (default: the cores).")
@click.option("--scheduler", default=None, metavar="ADDRESS", help="A running Dask scheduler instead of a local cluster.")
@click.option("--sweeps", "sweeps_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the battery's sweeps (default OUT/sweeps); a rerun resumes them.")
def report_cmd(quick, out, workers, scheduler, sweeps_dir):
    """Run the verification battery through `simkernel sweep` (regime and converge over 20
    worlds of two preset families, the phenomena over 10 worlds, icl-eval on 3 worlds x 3
    trained models, measure) and write a page with one section per claim of the theory: its
    kind (identity, asymptotic, bound, finite-n, comparison), source and scope, its figure, its
    numbers with CIs over worlds or training seeds, a word per preset family by a stated rule
    (supported / refuted / inconclusive / not reached / out of scope; a comparison gives its
    crossover n instead), the identity checks apart from the evidence, the settings outside the
    claim's assumptions, and the commands that reproduce it.  The page is checked in headless
    Chromium when it is installed.  A rerun resumes the sweeps."""
    import time

    from . import report

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
    click.echo(f"wrote {out / 'index.html'} and {len(written) - 1} more files ({time.perf_counter() - t0:.1f} s)")


# ---------------------------------------------------------------------- llm
@main.command("llm", short_help="The kernel-regression measurements on a real Hugging Face LLM (Table 2).")
@click.option("--model", "model_name", required=True, metavar="NAME",
              help="An alias (gpt-j-6b, gpt2, gpt2-medium/large/xl, pythia-160m/410m/1.4b/6.9b, llama-2-7b, "
                   "llama-3-8b), a hub id (org/name), or a folder made by save_pretrained.  Hub weights must be "
                   "downloaded beforehand (or reachable).")
@click.option("--revision", default=None, help="Hub branch, tag or commit (default: main).")
@click.option("--task", type=click.Choice(TEXT_TASKS), default=None,
              help="A task of the paper, read through `datasets` (default sst2 unless --data is given).")
@click.option("--split", default=None, help="The task's split (default: sst2/mnli validation, the others test).")
@click.option("--data", "data_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A local .csv, .tsv (GLUE's sentence<TAB>label) or .jsonl file instead of --task; "
                   "demonstrations are drawn from its other rows.")
@click.option("--text-column", default="sentence", show_default=True, callback=comma_words("column"),
              help="With --data: the text column; 'premise,hypothesis' for a pair task.")
@click.option("--label-column", default="label", show_default=True,
              help="With --data: the label column (class indices or label words).")
@click.option("--label-words", default="Negative,Positive", show_default=True, callback=comma_words("label word"),
              help="With --data: the answer word of each class 0, 1, ... (scored on its first token).")
@click.option("--n-demos", default=None, metavar="N|LIST",
              help=f"Demonstrations per prompt (default {TEXT_N_DEMOS}: SST-2 prompts near 300 GPT-J tokens); with a "
                   f"simulator world a list of n, e.g. 0,1,2,4,8,16 (the default).")
@world_options("none: a text task", many_seeds=True, what="a simulator world whose prompts are rendered as text "
               "(instead of --task/--data; docs/guide/llm-world.md)")
@click.option("--demos", "mode", type=click.Choice(DEMO_MODES), default="random", show_default=True,
              help="How demonstrations are drawn: uniformly, class-balanced, or the most similar pool texts "
                   "(TF-IDF), each example with its own seed.")
@click.option("--n-examples", type=Int(2), default=LLM_N_EXAMPLES, show_default=True,
              help="Test examples (a seeded subset when the split has more; all when it has fewer).")
@_heads("examples")
@click.option("--split-seed", type=NONNEG, default=0, show_default=True, help="Seed of the select/report split.")
@_seed("Seed of the test subset and of every example's demonstrations.")
@click.option("--probe-layers", default="auto", show_default=True, callback=probe_layers,
              help="Layers whose keys and values are probed: auto (all when their float32 keys and values fit "
                   "4 GiB; else evenly spaced ones), all, none, or indices such as 16..21 or 3,7,14.")
@click.option("--max-text-tokens", type=POSITIVE, default=None, help="Cut each text to this many tokens.")
@click.option("--dtype", type=click.Choice(LLM_DTYPES + tuple(LLM_DTYPE_ALIASES)), default="auto", show_default=True,
              help="auto: bfloat16 on CUDA, float32 on CPU (the cache key holds the resolved dtype).")
@_device()
@click.option("--device-map", default=None,
              help="Spread the model over several GPUs through accelerate, e.g. 'auto' (instead of --device).")
@click.option("--batch-size", type=POSITIVE, default=LLM_BATCH_SIZE, show_default=True,
              help="Prompts per forward pass.")
@_out_dir(None, "Run folder (default runs/llm/<model>-<task>): tables, figures, llm.json and the cached model "
                "outputs outputs-<hash>.npz.")
def llm_cmd(model_name, revision, task, split, data_file, text_column, label_column, label_words, n_demos, preset,
            world_file, world_seeds, overrides, mode, n_examples, weight, n_select, n_report, split_seed, seed,
            probe_layers, max_text_tokens, dtype, device, device_map, batch_size, out):
    """The paper's §5 measurements on a real causal LM: the model's own ICL accuracy, the final
    token's attention profile over the demonstrations, each head's kernel-regression
    reconstruction of the prediction (Table 2: best head chosen on --n-select examples,
    reported on --n-report held-out ones) beside the uniform vote and the other references,
    the correlation of each head's weights with the prediction similarity
    P(o|x_test)ᵀP(o|x_i), and ridge probes of keys (-> the demonstration's standalone
    prediction) and values (-> its label) at label position -1..+3.

    Writes heads.csv, best.csv, profile.csv, probes.csv (tidy), llm.json (config, model id and
    revision, data, seed, versions, summary), attention_profile.png, head_scores.png,
    probes.png, and caches the model's outputs as outputs-<hash>.npz: rerunning with another
    --weight, --n-select/--n-report or --split-seed does not run the model again.
    """
    from . import llm
    from .store import check_results_dir

    ctx = click.get_current_context()
    if preset is not None or world_file is not None:
        return _llm_world(ctx, model_name, revision, preset, world_file, world_seeds, overrides, n_demos, weight,
                          n_select, n_report, seed, probe_layers, dtype, device, batch_size, out)
    if n_demos is None:
        n_demos = TEXT_N_DEMOS
    else:
        n_demos = POSITIVE.convert(n_demos, ctx.command.params[[p.name for p in ctx.command.params].index("n_demos")],
                                   ctx)
    if data_file is not None:
        _clash("--data reads a local file; it", [("--task", task is not None), ("--split", split is not None)])
        data = llm.DataSpec(path=str(data_file), text_column=text_column, label_column=label_column,
                            label_words=label_words)
    else:
        _clash("--task", [(f"--{o.replace('_', '-')} (it describes a --data file)", _given(ctx, o))
                          for o in ("text_column", "label_column", "label_words")])
        data = llm.DataSpec(task=task or "sst2", split=split)
    llm.resolve_model(model_name)                      # a one-line error before anything is created
    out = check_results_dir(llm.default_out(model_name, data) if out is None else out)
    job = llm.run(model_name, data, out, revision=revision, n_demos=n_demos, mode=mode, seed=seed,
                  n_examples=n_examples, how=weight, n_select=n_select, n_report=n_report, split_seed=split_seed,
                  probe_layers=probe_layers, max_text_tokens=max_text_tokens, dtype=dtype, device=device,
                  device_map=device_map, batch_size=batch_size,
                  bar=lambda desc, total: progress_bar(total, desc, "prompt"),
                  on_load=lambda msg: click.echo(msg, err=True) if sys.stderr.isatty() else None)
    written = job.write(out)
    for line in job.summary_lines():
        click.echo(line)
    click.echo(_wrote(written, job.meta["elapsed_s"]))


def _llm_world(ctx, model_name, revision, preset, world_file, world_seeds, overrides, n_demos, weight, n_select,
               n_report, seed, probe_layers, dtype, device, batch_size, out):
    """`simkernel llm --preset/--world`: the LM on a simulator world's prompts rendered as text."""
    from . import llm, llm_world
    from .options import parse_n_demos
    from .store import check_results_dir

    _clash("--preset/--world renders a simulator world; it", [
        (f"--{o.replace('_', '-')}", _given(ctx, o)) for o in
        ("task", "split", "data_file", "text_column", "label_column", "label_words", "mode", "n_examples",
         "split_seed", "max_text_tokens", "device_map")])
    spec = _world_spec(preset, world_file, overrides, "world_seeds")
    if world_file is None:
        spec.pop("world_file")
        spec["world_seeds"] = tuple(world_seeds) or (0,)
    else:
        spec = {"world_file": world_file}
    if n_demos is not None:
        try:
            spec["n_demos"] = parse_n_demos(n_demos, minimum=0)
        except ValueError as e:
            raise click.BadParameter(str(e), ctx=ctx, param_hint="--n-demos") from None
    llm.resolve_model(model_name)
    out = check_results_dir(llm_world.default_out(model_name, preset, world_file) if out is None else out)
    res = llm_world.run(model_name, revision=revision, weight=weight, n_select=n_select, n_report=n_report, seed=seed,
                        probe_layers=probe_layers, dtype=dtype, device=device, batch_size=batch_size, cache_dir=out,
                        **spec)
    written = res.write(out)
    for line in res.summary_lines():
        click.echo(line)
    click.echo(_wrote(written, res.meta.get("elapsed_s", 0.0)))


if __name__ == "__main__":  # pragma: no cover
    main()
