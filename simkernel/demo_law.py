"""The law of one demonstration (x, y) as the prompt sampler draws it: y is emitted by a state
that can emit a label and be followed by the delimiter (the event E), so a demonstration's
label is conditioned on E.  Exact arrays from the forward pass over given inputs x (M, k-1);
``kernel.input_distribution`` builds on them.  ``weight`` is ``kernel.demo_weight(world)``
(K, S), passed in so that this module stays below ``kernel``.
"""

from __future__ import annotations

import numpy as np

from . import bayes
from .world import World


def demo_emission(world: World, weight: np.ndarray) -> np.ndarray:
    """(K, S, L): P(y = c | h_y = s) restricted to the states a demonstration's y can have
    (the delimiter can follow them), unnormalised: the sampler's event E in one array.
    ``weight`` (K, S): ``kernel.demo_weight(world)``; only where it is > 0 matters."""
    return world.emission[:, :, world.labels] * weight[..., None].astype(bool)


def demo_joint(world: World, x: np.ndarray, concept, weight: np.ndarray) -> np.ndarray:
    """(M, L) over every input x: Σ_θ π_θ P(x, y = c | θ, E) for the prior mixture (concept
    None), or P(x, y = c, E | θ) up to a positive factor for one concept.  Each concept's law is
    normalised by its own P(E | θ) before mixing, as the sampler draws θ from the prior and then
    an example conditioned on E."""
    fw = bayes.forward(world, x, prefixes=False)
    emit = demo_emission(world, weight)
    per = np.einsum("mks,ksl->mkl", fw.next_state, emit)                  # P(c, E | x, θ)
    keep = np.arange(world.n_concepts) == int(concept) if concept is not None else world.prior > 0
    lw = np.where(keep[None], fw.final, -np.inf)                           # log P(x | θ)
    m = np.max(lw, axis=0, keepdims=True)                                  # per concept: ratios only
    scale = np.where(np.isfinite(m), np.exp(lw - np.where(np.isfinite(m), m, 0.0)), 0.0)
    joint = scale[:, :, None] * per                                        # ∝ P(x, c, E | θ)
    if concept is not None:
        return joint[:, int(concept)]
    tot = joint.sum(axis=(0, 2))
    weight = np.where(tot > 0, world.prior / np.where(tot > 0, tot, 1.0), 0.0)
    return np.einsum("k,mkl->ml", weight, joint)


def label_given_x(world: World, x: np.ndarray, concepts: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(M, L): P(y = c | x, θ_m, E) for each draw's own concept."""
    fw = bayes.forward(world, x, prefixes=False)
    emit = demo_emission(world, weight)
    per = np.einsum("mks,ksl->mkl", fw.next_state, emit)[np.arange(len(x)), concepts]
    s = per.sum(axis=1, keepdims=True)
    return np.where(s > 0, per / np.where(s > 0, s, 1.0), 1.0 / per.shape[1])
