"""The ``simkernel`` command line: the only place that parses options, prints, and maps
errors to exit codes.  Each command calls one library ``run()``, prints its
``summary_lines()`` and ``write()``s its files; nothing here computes or assembles results.

Every bad input ends in ONE line on stderr, ``error: <what was wrong and what is allowed>``,
and a non-zero exit status: 2 when what was typed is wrong (a malformed option, a value out of
range, an unknown preset option, a world file or output folder that cannot be used), 1 when
the run itself fails, 130 on Ctrl-C; never a traceback.  The library names its Python arguments
in its errors (``n_samples``, ``world_seeds=``); the group rewrites them as the command's flags.
Nothing here imports torch or transformers, so ``--help`` stays fast.

The commands live by job: ``simulate`` (world, sample, bayes, converge, regime, phenomena),
``models`` (train, icl-eval, measure, llm), ``orchestrate`` (plot, sweep, report); ``common``
holds the error mapping and the shared options.
"""

from __future__ import annotations

import click

from .. import __version__
from . import models, orchestrate, simulate
from .common import Group

# ---------------------------------------------------------------------- the group
@click.group("simkernel", cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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



for _cmd in (simulate.world_cmd, simulate.sample, simulate.bayes_cmd, simulate.converge_cmd, simulate.regime_cmd,
             simulate.phenomena_cmd, orchestrate.plot_group, orchestrate.sweep_cmd, orchestrate.report_cmd,
             orchestrate.strategies_cmd,
             models.train_cmd, models.icl_eval_cmd, models.measure_cmd, models.llm_cmd):
    main.add_command(_cmd)
