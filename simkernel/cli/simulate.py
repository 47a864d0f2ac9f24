"""The simulator's commands: world, sample corpus / prompts, bayes, converge, regime and
phenomena.  Each parses, calls one library ``run()``, prints its summary and writes its files."""

from __future__ import annotations

from pathlib import Path

import click

from ..constants import DEFAULT_RIDGE, ESTIMATORS, FEATURES, KERNELS, PHENOMENA, REGIME_BAND, REGIME_N_CAP, REGIME_N_MAX
from ..options import (choice_list, Concepts, distinct_seeds, NDemos, NONNEG, parse_sets, POSITIVE, PositiveFloat,
                       progress_bar)
from ..presets import PRESETS
from .common import (checking_arguments, DEFAULT_PRESET, CONVERGE_PRESET, given, clash, world_options, world_spec, load_world_args,
                     seed_option, device_option, example_length_option, out_option, progress_pair, preset_help, wrote)


# ---------------------------------------------------------------------- world
@click.command("world", short_help="Build a world from a preset, or check a world file; save it as .npz.",
              epilog="Preset options and defaults:\n\n" + preset_help())
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
    from ..presets import load_world
    from ..store import check_out_file, save_world

    if out is not None:
        if Path(out).suffix != ".npz":
            raise click.BadParameter(f"must end in .npz, got {str(out)!r}", param_hint="'--out'")
        with checking_arguments():
            check_out_file(out)
    if from_file is not None:
        clash("--from loads a saved world; it", [("--preset", preset is not None), ("--set", bool(overrides)),
                                                 ("--world-seed", given(click.get_current_context(), "seed"))])
    world, source = load_world(preset, seed, parse_sets(overrides), from_file)
    click.echo(repr(world))
    if out is not None:
        click.echo(f"wrote {save_world(world, out, source, seed if from_file is None else world.meta.get('seed'))}")


# ---------------------------------------------------------------------- sample
@click.group("sample")
def sample():
    """Sample pretraining corpora or in-context prompts from a world."""


@sample.command("corpus")
@world_options()
@click.option("--n-docs", type=POSITIVE, default=1000, show_default=True, help="Number of documents (GINC: 1000).")
@click.option("--doc-length", type=POSITIVE, default=10240, show_default=True,
              help="Symbols per document (GINC: 10240).")
@seed_option("Sampling seed: the same seed and world give bit-identical documents.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to create with tokens.npy, offsets.npy, concepts.npy, world.npz, meta.json.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing non-empty --out folder (only once the new corpus is complete).")
def corpus_cmd(preset, world_file, world_seed, overrides, n_docs, doc_length, seed, out, overwrite):
    """Sample pretraining documents (one concept per document, drawn from the prior)."""
    import time

    from ..sampling import write_corpus
    from ..store import check_out_dir

    with checking_arguments():
        check_out_dir(out, overwrite)
    world, source = load_world_args(preset, world_file, world_seed, overrides)
    t0 = time.perf_counter()
    bar, tick = progress_pair(n_docs, "sampling", "doc")
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
@example_length_option(3, "  GINC: 3, 5, 8, 10.")
@seed_option()
@click.option("--concept", type=NONNEG, default=None,
              help="Draw every prompt from this concept (0..K-1, prior-0 concepts allowed); default: the prior.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The .npz to write (an existing file is replaced atomically).")
def prompts_cmd(preset, world_file, world_seed, overrides, n_prompts, n_demos, example_length, seed, concept, out):
    """Sample in-context prompts [x_1 y_1 / ... x_n y_n / x_test] and their gold y_test."""
    from ..sampling import sample_prompts
    from ..store import check_out_file, write_prompts

    if Path(out).suffix != ".npz":
        raise click.BadParameter(f"must end in .npz, got {str(out)!r}", param_hint="'--out'")
    with checking_arguments():
        check_out_file(out)
    world, source = load_world_args(preset, world_file, world_seed, overrides)
    prompts = sample_prompts(world, n_prompts, n_demos, example_length, seed, concept=concept)
    write_prompts(prompts, out, {"command": "sample prompts", "world": source, "n_prompts": n_prompts,
                                 "n_demos": n_demos, "example_length": example_length, "concept": concept}, seed)
    click.echo(repr(world))
    click.echo(f"wrote {n_prompts} prompts of {n_demos} demonstrations (k={example_length}, "
               f"{prompts.tokens.shape[1]} tokens each) to {out}")


# ---------------------------------------------------------------------- bayes
@click.command("bayes")
@world_options()
@click.option("--n-prompts", type=POSITIVE, default=256, show_default=True, help="Number of prompts.")
@click.option("--n-demos", type=NONNEG, default=64, show_default=True,
              help="Largest number of demonstrations N; results for n = 0, 1, 2, 4, ..., N.")
@example_length_option(2)
@seed_option("Prompt sampling seed.")
@click.option("--concept", type=NONNEG, default=None,
              help="Draw every prompt from this concept (0..K-1); default: from the prior.")
@click.option("--method", type=click.Choice(["auto", "dense", "sparse"]), default="auto", show_default=True,
              help="Forward-pass implementation (auto picks sparse for sparse emissions).")
@out_option(Path("results/bayes"), "Folder for bayes.csv and bayes.json (created if needed; both are replaced).")
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
    from .. import posterior
    from ..store import check_results_dir

    with checking_arguments():
        check_results_dir(out)
    world, source = load_world_args(preset, world_file, world_seed, overrides)
    bar, tick = progress_pair(n_prompts, "exact Bayes", "prompt")
    with bar:
        res = posterior.run(world, n_prompts, n_demos, example_length, seed, concept=concept, method=method,
                            world_source=source, progress=tick)
    written = res.write(out)
    for line in res.summary_lines():
        click.echo(line)
    click.echo(wrote(written, res.meta["elapsed_s"]))


# ---------------------------------------------------------------------- converge
@click.command("converge", short_help="Kernel estimators against exact Bayes for n = 1..N, with a figure.")
@world_options(f"{CONVERGE_PRESET}: GINC's construction with 16 symbols, 4 x 4 states, 4 concepts and the "
               "delimiter restart, where the theory kernel varies within a prompt", many_seeds=True)
@click.option("--n-demos", type=NDemos(), default="1..256", show_default=True,
              help="The n to report: 'A..B' (every n from A to B), a comma list '1,2,8', or a mixture "
                   "'1,2,4..8'.  Every prompt holds max(n) demonstrations; smaller n reuse the same prompts.")
@example_length_option(3, "  2 is the setting of the paper's Table 3, where paper-c's kernel is constant within a "
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
@click.option("--ridge", type=PositiveFloat("the ridge"), default=DEFAULT_RIDGE, show_default=True,
              help="λ = ridge · trace(Σ) / D is added to Σ before it is inverted.")
@click.option("--n-samples", type=POSITIVE, default=None,
              help="Monte Carlo inputs for Σ and the limits when the V^(k-1) inputs are too many to enumerate "
                   "(then required, e.g. 20000).")
@out_option(Path("results/converge"), "Folder for convergence.{png,pdf,csv,json} and floors.csv (the five files are "
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
    from .. import convergence
    from ..store import check_results_dir

    with checking_arguments():
        check_results_dir(out)
    spec = world_spec(preset, world_file, overrides, "world_seeds")
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
    click.echo(wrote(written, res.meta["elapsed_s"]))


# ---------------------------------------------------------------------- regime
@click.command("regime", short_help="Where the central-limit regime begins; when the kernel overtakes label counting.")
@world_options(f"{CONVERGE_PRESET}; a restart world (Assumption 1) whose inputs can be enumerated",
               many_seeds=True)
@example_length_option(3)
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
@seed_option("Prompt and demonstration seed.")
@click.option("--ridge", type=PositiveFloat("the ridge"), default=DEFAULT_RIDGE, show_default=True,
              help="λ = ridge · trace(Σ) / D is added to Σ before it is inverted.")
@out_option(Path("results/regime"), "Folder for regime.{csv,png,json} and regime_worlds.csv (replaced together).")
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
    from .. import regime
    from ..store import check_results_dir

    with checking_arguments():
        check_results_dir(out)
    spec = world_spec(preset, world_file, overrides, "world_seeds")
    if spec["preset"] is None and world_file is None:
        spec["preset"] = CONVERGE_PRESET
    bar = progress_bar(len(world_seeds) or 1, "regime", "world")

    def tick(msg, done, _total):
        bar.set_description(msg[:60])
        bar.update(done - bar.n)

    ctx = click.get_current_context()
    # choice_list gives every choice when none is named; regime's defaults are narrower
    kernels = kernels if given(ctx, "kernels") else ("theory",)
    estimators = estimators if given(ctx, "estimators") else regime.ESTIMATORS
    with bar:
        res = regime.run(world_seeds=world_seeds, example_length=example_length, n_prompts=n_prompts,
                         n_max=n_max, n_cap=n_cap, kernels=kernels, estimators=estimators, band=band, seed=seed,
                         ridge=ridge, progress=tick, **spec)
        bar.update(bar.total - bar.n)
    written = res.write(out)
    for line in res.summary_lines():
        click.echo(line)
    click.echo(wrote(written, res.meta["elapsed_s"]))


# ---------------------------------------------------------------------- phenomena
@click.command("phenomena", short_help="An ICL phenomenon: exact Bayes, the kernel and a model, with a verdict.")
@click.argument("name", type=click.Choice(PHENOMENA))
@world_options("ginc-small", many_seeds=True, seeds_default="0, 1, 2")
@click.option("--quick", is_flag=True, help="A small setting (seconds): the tests' and a first look.")
@seed_option("Prompt sampling seed.")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A training run folder (same world): adds the trained model as a predictor.")
@device_option()
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="One of the phenomenon's own settings (see docs/guide/phenomena.md), e.g. "
                   "--param fractions=0,0.5,1; repeatable.")
@out_option(Path("results/phenomena"), "Folder for NAME.csv, NAME.json and NAME.png.")
def phenomena_cmd(name, preset, world_file, world_seeds, overrides, quick, seed, run_dir, device, params, out):
    """Test one of the paper's ICL phenomena (§4.2) against exact answers: retrieval of similar
    demonstrations, label flips and new label formats, shifted inputs, the order of the
    demonstrations, and the pretraining prior of the test concept.  Predictors: exact Bayes,
    the theory kernel (normalised and clipped), the label frequencies, the oracle and, with
    --run, a trained model; CIs over worlds.  Writes NAME.csv (tidy), NAME.json (config, seeds,
    versions, the verdict and its numbers) and NAME.png."""
    from .. import phenomena
    from ..store import check_results_dir

    with checking_arguments():
        check_results_dir(out)
    spec = world_spec(preset, world_file, overrides, "world_seeds")
    if spec.pop("world_file") is not None:
        from ..world import World
        spec = {"worlds": [World.load(world_file)]}
    else:
        # the library's defaults (ginc-small, world seeds 0, 1, 2) unless the options say otherwise
        spec = {k: v for k, v in spec.items() if v}
        if given(click.get_current_context(), "world_seeds"):
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
    click.echo(wrote(written, res.elapsed_s))


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
