#!/usr/bin/env python
"""Run one experiment config: ``python experiments/run.py experiments/<name>.toml``.

A config names a simkernel command and its options; this script turns them into the very
command line the CLI takes (so an experiment runs exactly the code path of
``simkernel converge ...``), prints that command, and runs it with ``--out
figures/<name>/`` (relative to the repository root) unless the config sets ``out``.

Config layout::

    description = "what the figure shows"     # optional, not passed on
    command = "converge"                       # optional, default "converge"

    [options]                                  # every long option of the command, without "--"
    preset = "paper-c"
    n-demos = "1..256"
    seed = [0, 1, 2]                           # a list repeats the option
    kernel = ["theory", "oracle"]

    [options.set]                              # --set NAME=VALUE overrides of the preset
    n_concepts = 4

Options: ``--dry-run`` prints the command without running it.  Errors are one ``error:``
line and a non-zero exit status, as everywhere in simkernel.
"""

from __future__ import annotations

import shlex
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KNOWN = {"description", "command", "options", "out"}


def command_args(config: dict, name: str) -> list[str]:
    """The simkernel argument list of one config (``name``: the config's stem, for --out)."""
    unknown = sorted(set(config) - KNOWN)
    if unknown:
        raise ValueError(f"unknown top-level key {unknown[0]!r}; allowed: {', '.join(sorted(KNOWN))}")
    command = config.get("command", "converge")
    if not isinstance(command, str) or not command.strip():
        raise ValueError(f"command must be a simkernel command name, got {command!r}")
    options = config.get("options", {})
    if not isinstance(options, dict):
        raise ValueError("[options] must be a table of option = value")
    args = command.split()
    for key, value in options.items():
        opt = "--" + key.replace("_", "-")
        if opt == "--out":
            raise ValueError("set out at the top level of the config, not in [options]")
        if key == "set":
            if not isinstance(value, dict):
                raise ValueError("[options.set] must be a table of NAME = VALUE")
            for k, v in value.items():
                args += ["--set", f"{k}={_text(v)}"]
        elif isinstance(value, bool):
            if value:
                args.append(opt)
        elif isinstance(value, list):
            for v in value:
                args += [opt, _text(v)]
        elif isinstance(value, dict):
            raise ValueError(f"option {key!r} is a table; only [options.set] may be")
        else:
            args += [opt, _text(value)]
    out = Path(config.get("out", f"figures/{name}"))
    args += ["--out", str(out if out.is_absolute() else ROOT / out)]
    return args


def _text(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    dry = "--dry-run" in argv
    argv = [a for a in argv if a != "--dry-run"]
    if len(argv) != 1:
        print("error: usage: python experiments/run.py experiments/<name>.toml [--dry-run]", file=sys.stderr)
        return 2
    path = Path(argv[0])
    try:
        config = tomllib.loads(path.read_text())
        args = command_args(config, path.stem)
    except OSError as e:
        print(f"error: cannot read {str(path)!r} ({e.strerror or type(e).__name__})", file=sys.stderr)
        return 1
    except tomllib.TOMLDecodeError as e:
        print(f"error: {str(path)!r} is not valid TOML: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"error: {str(path)!r}: {e}", file=sys.stderr)
        return 1
    shown = [str(Path(a).relative_to(ROOT)) if a.startswith(str(ROOT)) else a for a in args]
    print("simkernel " + shlex.join(shown), flush=True)
    if dry:
        return 0
    from simkernel.cli import main as simkernel
    return simkernel(args, prog_name="simkernel", standalone_mode=False)


if __name__ == "__main__":
    sys.exit(main())
