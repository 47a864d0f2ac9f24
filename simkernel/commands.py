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
            "regime": ("regime", None)}
#: commands whose run() takes world_seeds, so that a grid may give world_seed (one world a job)
WORLD_SEEDS_COMMANDS = ("converge", "phenomena", "regime")


def run_function(command: str):
    """The library call behind ``command`` (train: ``train.train_world``, the others their module's
    ``run``).  One-line ValueError for an unknown command."""
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {', '.join(COMMANDS)}, got {command!r}")
    if command == "train":
        from .train import train_world
        return train_world
    return importlib.import_module(f".{COMMANDS[command][0]}", __package__).run
