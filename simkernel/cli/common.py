"""What every command shares: the one-line error and its exit status, the group that maps
library errors to flags, and the options several commands take (world, seed, device, out).
Nothing here imports torch or numba, so ``simkernel --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path

import click

from ..constants import N_REPORT, N_SELECT, WEIGHTS
from ..options import EXAMPLE_LENGTH, NONNEG, POSITIVE, distinct, parse_sets, progress_bar
from ..presets import PRESETS

DEFAULT_PRESET = "paper-c"
#: converge's world when none is named (``convergence.DEFAULT_PRESET``, kept here for --help).
CONVERGE_PRESET = "ginc-small"
TRAIN_WORLD = ("random", ("concentration=0.1",))


# ---------------------------------------------------------------------- errors -> one line
#: Exit statuses: what the user typed is wrong (as click's own usage errors); the run failed.
USAGE, FAILURE = 2, 1
#: Modules whose every ValueError is about an argument: the checks, world building and loading,
#: sampling (its draws cannot fail on valid arguments).
CHECK_MODULES = ("simkernel.validate", "simkernel.options", "simkernel.presets", "simkernel.world",
                 "simkernel.sampling")
#: Function names whose ValueError is about an argument: a library entry point's own checks at its
#: top (``run``), and the checkers (``check_out_dir``, ``_check_worlds``, ``parse_n_demos``, ...).
CHECK_FUNCTIONS = ("run", "check", "_check", "parse", "_parse", "validate", "_validate", "resolve", "_resolve")


def is_argument_error(exc: BaseException) -> bool:
    """Whether ``exc`` rejects what the user typed (exit 2) rather than reports a failure while
    the command ran (exit 1).  Decided by where it was raised and what it names: in the CLI
    itself or inside :func:`checking_arguments`, in a module of ``CHECK_MODULES``, by a function
    named in ``CHECK_FUNCTIONS`` (``run`` or a name starting with one of the others), or a
    message that opens with an argument of a library ``run()`` it passed through (the one error
    style: ``"n_samples is required ..."``).  A computation's own error is raised deeper."""
    if getattr(exc, "about_arguments", False):
        return True
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    if not frames:
        return False
    module = frames[-1].f_globals.get("__name__", "")
    func = frames[-1].f_code.co_name
    if module == "simkernel.cli" or module.startswith("simkernel.cli.") or module in CHECK_MODULES:
        return True
    if module.startswith("simkernel.") and (func == "run" or func.startswith(CHECK_FUNCTIONS[1:])):
        return True
    first = str(exc).split(" ", 1)[0]
    return any(f.f_code.co_name == "run" and f.f_globals.get("__name__", "").startswith("simkernel.")
               and first in _arguments(f.f_code) for f in frames)


def _arguments(code) -> tuple:
    """The names of a function's arguments, from its code object."""
    n = code.co_argcount + code.co_kwonlyargcount
    return code.co_varnames[:n]


def fail(msg: str, code: int) -> int:
    click.echo(f"error: {' '.join(str(msg).split())}", err=True)
    return code


def command_of(group: click.Group, argv) -> click.Command:
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


@contextlib.contextmanager
def checking_arguments():
    """Inside this block every ValueError is about what the user typed (exit 2): the checks a
    command makes before it starts (a run folder that is not one, an output folder in the way)."""
    try:
        yield
    except ValueError as e:
        e.about_arguments = True
        raise


class Group(click.Group):
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
                code = fail(e.format_message() + hint, e.exit_code)
        except click.ClickException as e:
            code = fail(e.format_message(), e.exit_code)
        except (click.Abort, KeyboardInterrupt):
            code = fail("interrupted; no result file was written", 130)
        except ValueError as e:
            code = fail(speak_flags(str(e), command_of(self, argv)), USAGE if is_argument_error(e) else FAILURE)
        except OSError as e:
            where = f": {e.filename!r}" if getattr(e, "filename", None) else ""
            code = fail(f"{e.strerror or type(e).__name__}{where}", FAILURE)
        if standalone_mode:
            sys.exit(code)
        return code


# ---------------------------------------------------------------------- shared options
def stack(*opts):
    def deco(f):
        for opt in reversed(opts):
            f = opt(f)
        return f
    return deco


def given(ctx, name) -> bool:
    from click.core import ParameterSource
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def clash(first: str, others) -> None:
    """A usage error when ``first`` was given with any of ``others`` ((flag, given) pairs)."""
    bad = [flag for flag, given in others if given]
    if bad:
        raise click.UsageError(f"{first} cannot be combined with {bad[0]}")


def world_options(default=DEFAULT_PRESET, many_seeds=False, what="the world", seeds_default="0"):
    """--preset | --world, --world-seed (repeatable with ``many_seeds``; ``seeds_default`` is
    what --help says the seeds are when none is given), --set NAME=VALUE."""
    seed = (click.option("--world-seed", "world_seeds", type=NONNEG, multiple=True, callback=distinct("world seed"),
                         help="Seed of the preset's random world; repeat for several worlds (the CIs are then "
                              f"over worlds).  Default {seeds_default}.") if many_seeds else
            click.option("--world-seed", type=NONNEG, default=0, show_default=True,
                         help="Seed of the preset's random world (not with --world)."))
    return stack(
        click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
                     help=f"Build {what} from this recipe (default {default}); `simkernel world --help` lists "
                          "each preset's options."),
        click.option("--world", "world_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Load the world from this .npz instead (not with --preset, --set, --world-seed)."),
        seed,
        click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
                     help="Override one preset option, e.g. --set n_states=20; repeatable."))


def world_spec(preset, world_file, overrides, seed_name="world_seed") -> dict:
    """The library's world arguments; --world clashes are usage errors."""
    if world_file is not None:
        clash("--world loads a saved world; it", [("--preset", preset is not None), ("--set", bool(overrides)),
                                                  ("--world-seed", given(click.get_current_context(), seed_name))])
    return {"preset": preset, "overrides": parse_sets(overrides), "world_file": world_file}


def load_world_args(preset, world_file, world_seed, overrides, default=DEFAULT_PRESET):
    from ..presets import load_world

    spec = world_spec(preset, world_file, overrides)
    return load_world(spec["preset"], world_seed, spec["overrides"], world_file, default=default)


def seed_option(help_text="Sampling seed."):
    return click.option("--seed", type=NONNEG, default=0, show_default=True, help=help_text)


def device_option():
    return click.option("--device", default="auto", show_default=True,
                        help="auto (cuda when a GPU is visible, else cpu), cpu, cuda, cuda:N.")


def example_length_option(default=3, extra=""):
    return click.option("--example-length", type=EXAMPLE_LENGTH, default=default, show_default=True,
                        help="Tokens per example k >= 2: k-1 input tokens x and one label y." + extra)


def out_option(default, help_text):
    return click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=default,
                        show_default=default is not None, help=help_text)


def heads_options(examples="prompts"):
    """--weight, --n-select, --n-report: how heads are weighed, chosen and reported (measure, llm)."""
    return stack(
        click.option("--weight", type=click.Choice(WEIGHTS), default="max", show_default=True,
                     help="A head's weight on a demonstration: the max attention over its span (the paper's), "
                          "the attention on its label token, or the span's mean."),
        click.option("--n-select", type=POSITIVE, default=N_SELECT, show_default=True,
                     help=f"{examples.capitalize()} the best head is chosen on."),
        click.option("--n-report", type=POSITIVE, default=N_REPORT, show_default=True,
                     help=f"Held-out {examples} it is reported on (both shrink in proportion when there are "
                          "fewer)."))


def progress_pair(total, desc, unit):
    """(bar, progress callback taking the number done) for a library ``progress=``."""
    bar = progress_bar(total, desc, unit)
    return bar, lambda done: bar.update(done - bar.n)


def preset_help() -> str:
    return "\b\n" + "\n".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in opts.items())
                              for name, opts in PRESETS.items())


def wrote(paths, elapsed) -> str:
    return f"wrote {', '.join(map(str, paths))} ({elapsed:.1f} s)"

