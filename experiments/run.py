#!/usr/bin/env python
"""Run one experiment config: ``python experiments/run.py experiments/<name>.toml``.

A config names a simkernel command and the keyword arguments of its library ``run()``
(Python names); this script calls that function, prints its summary and writes its files into
``figures/<name>/`` (relative to the repository root) unless the config sets ``out``.  No
command line is built: an experiment is the library call a notebook would make.

Config layout::

    description = "what the figure shows"     # optional, not passed on
    command = "converge"                       # a command of simkernel.commands.COMMANDS: converge,
                                               # regime, bayes, icl-eval, measure, phenomena, train

    [options]                                  # keyword arguments of the command's run()
    preset = "paper-c"
    n_demos = "1..256"                         # n lists may be written as the CLI spells them
    world_seeds = [0, 1, 2]
    overrides = { n_concepts = 4 }

    [train]                                    # optional: the model(s) the command measures,
    preset = "ginc-small"                      # trained first when their run folder is missing
    seeds = [0, 1, 2]                          # (simkernel.train.train_world; one run per seed)
    target_gap = 0.005

Options: ``--dry-run`` prints the call without running it.  Errors are one ``error:`` line and
a non-zero exit status, as everywhere in simkernel.
"""

from __future__ import annotations

import inspect
import sys
import time
import tomllib
from pathlib import Path

#: command -> (module, the run() argument that receives the trained run folders): the one registry, the sweep's
from simkernel.commands import COMMANDS, run_function
from simkernel.validate import did_you_mean

ROOT = Path(__file__).resolve().parents[1]
KNOWN = {"description", "command", "options", "out", "train"}


def plan(config: dict, name: str) -> tuple[str, dict, dict | None, Path]:
    """(command, run() keyword arguments, training spec or None, output folder) of a config
    (``name``: its stem, for the default output folder).  One-line ValueErrors."""
    unknown = sorted(set(config) - KNOWN)
    if unknown:
        raise ValueError(f"unknown top-level key {unknown[0]!r}; allowed: {', '.join(sorted(KNOWN))}"
                         f"{did_you_mean(unknown[0], KNOWN)}")
    command = config.get("command", "converge")
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; allowed: {', '.join(COMMANDS)}{did_you_mean(command, COMMANDS)}")
    options = dict(config.get("options", {}))
    check_options(command, options)
    if "out" in options:
        raise ValueError("set out at the top level of the config, not in [options]")
    for key in ("n_demos",):
        if isinstance(options.get(key), str):
            from simkernel.options import parse_n_demos
            options[key] = parse_n_demos(options[key], minimum=0 if command == "icl-eval" else 1)
    train = config.get("train")
    if train is not None and COMMANDS[command][1] is None:
        raise ValueError(f"[train] is for commands that measure a trained model, not {command!r}")
    out = Path(config.get("out", f"figures/{name}"))
    return command, options, train, out if out.is_absolute() else ROOT / out


def check_options(command: str, options: dict) -> None:
    """A one-line error, with a 'did you mean', for an [options] key the command's run() lacks
    (a run() that takes **params checks its own)."""
    params = inspect.signature(run_function(command)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in options:
        if key not in params:
            raise ValueError(f"unknown option {key!r} of {command}; allowed: {', '.join(sorted(params))}"
                             f"{did_you_mean(key, params)}")


def trained_runs(train: dict) -> list[Path]:
    """The run folder of each training seed of ``train``, trained now where missing."""
    from simkernel.train import train_world

    spec = dict(train)
    seeds = spec.pop("seeds", [spec.pop("seed", 0)])
    runs_dir = Path(spec.pop("runs_dir", "runs"))
    runs_dir = runs_dir if runs_dir.is_absolute() else ROOT / runs_dir
    out = []
    for s in seeds:
        res = train_world(seed=s, runs_dir=runs_dir, **spec)
        print(res.summary_line(), flush=True)
        out.append(res.run_dir)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    dry = "--dry-run" in argv
    argv = [a for a in argv if a != "--dry-run"]
    if len(argv) != 1:
        print("error: usage: python experiments/run.py experiments/<name>.toml [--dry-run]", file=sys.stderr)
        return 2
    path = Path(argv[0])
    try:
        command, options, train, out = plan(tomllib.loads(path.read_text()), path.stem)
        module, run_arg = COMMANDS[command]
        shown = ", ".join(f"{k}={v!r}" for k, v in options.items())
        print(f"simkernel.{module}.run({shown}) -> {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}",
              flush=True)
        if dry:
            return 0
        t0 = time.perf_counter()
        if train is not None:
            runs = trained_runs(train)
            options[run_arg] = runs if command == "measure" and len(runs) > 1 else runs[0]
        result = run_function(command)(**options)
        written = result.write(out)
        for line in result.summary_lines():
            print(line)
        print(f"wrote {len(written)} files into {out} ({time.perf_counter() - t0:.1f} s)")
    except OSError as e:
        print(f"error: cannot read {str(path)!r} ({e.strerror or type(e).__name__})", file=sys.stderr)
        return 1
    except tomllib.TOMLDecodeError as e:
        print(f"error: {str(path)!r} is not valid TOML: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as e:
        print(f"error: {str(path)!r}: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
