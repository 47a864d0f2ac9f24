"""simkernel: exact Bayesian in-context learning on mixtures of HMMs, against the theory's
kernel-regression estimator.

Public API (shapes in each docstring)::

    World, World.load, world.save      a mixture of concept HMMs and its .npz file
    make_world(preset, seed, **opts)   paper-c, ginc, random
    sample_prompts, sample_corpus      seeded Numba samplers
    log_likelihood, posterior_predictive, concept_posterior, oracle_predictive, icl_curve

Names load lazily, so ``import simkernel`` (and the CLI's ``--help``) does not pay for Numba
and SciPy until a function that needs them is used.
"""

from importlib import import_module

__version__ = "0.1.0"

_WHERE = {
    "World": "world",
    "make_world": "presets", "PRESETS": "presets",
    "sample_prompts": "sampling", "sample_corpus": "sampling", "Prompts": "sampling",
    "Corpus": "sampling",
    "log_likelihood": "bayes", "posterior_predictive": "bayes", "concept_posterior": "bayes",
    "oracle_predictive": "bayes", "icl_curve": "bayes", "forward": "bayes",
}

__all__ = [*_WHERE, "__version__"]


def __getattr__(name):
    if name in _WHERE:
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'simkernel' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
