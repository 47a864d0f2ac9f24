"""simkernel: exact Bayesian in-context learning on mixtures of HMMs, against the theory's
kernel-regression estimator.

Public API (shapes in each docstring)::

    World, World.load, world.save      a mixture of concept HMMs and its .npz file
    make_world(preset, seed, **opts)   paper-c, ginc, random
    sample_prompts, sample_corpus      seeded Numba samplers
    log_likelihood, posterior_predictive, concept_posterior, oracle_predictive, icl_curve
"""

from .bayes import (concept_posterior, forward, icl_curve, log_likelihood, oracle_predictive,
                    posterior_predictive)
from .presets import PRESETS, make_world
from .sampling import Prompts, sample_corpus, sample_prompts
from .world import World

__version__ = "0.1.0"

__all__ = ["World", "make_world", "PRESETS", "sample_prompts", "sample_corpus", "Prompts",
           "log_likelihood", "posterior_predictive", "concept_posterior", "oracle_predictive",
           "icl_curve", "forward", "__version__"]
