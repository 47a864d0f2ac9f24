"""The command registry: which module's ``run()`` each library command is, and which of its
arguments receives trained run folders.

``sweep`` and ``experiments/run.py`` read this one table; adding a command is one line here.
Cheap to import (nothing but the standard library until :func:`run_function` is called).
"""

from __future__ import annotations

import importlib

#: command -> (module of simkernel with run(), the run() argument that receives trained run folders or None)
COMMANDS = {"converge": ("convergence", None), "bayes": ("posterior", None), "icl-eval": ("icl_eval", "run_dir"),
            "measure": ("alignment", "checkpoint"), "phenomena": ("phenomena", "run_dir"), "train": ("train", None),
            "regime": ("regime", None), "attribute": ("strategies", "run_dir")}
#: commands whose library call is not their module's run(): train's is train.train_world, and
#: attribute's (one trained run along training) strategies.evaluate, since strategies.run is the map
FUNCTIONS = {"train": ("train", "train_world"), "attribute": ("strategies", "evaluate")}
#: commands whose run() takes world_seeds, so that a grid may give world_seed (one world a job)
WORLD_SEEDS_COMMANDS = ("converge", "phenomena", "regime")


def run_function(command: str):
    """The library call behind ``command`` (``FUNCTIONS``, else its module's ``run``).  One-line
    ValueError for an unknown command."""
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {', '.join(COMMANDS)}, got {command!r}")
    module, name = FUNCTIONS.get(command, (COMMANDS[command][0], "run"))
    return getattr(importlib.import_module(f".{module}", __package__), name)
