"""Recipes that build worlds: ``paper-c``, ``ginc`` (and its small restart variant
``ginc-small``) and ``random``.

Every recipe is a pure function of its options and an integer seed (numpy's PCG64 through
``np.random.default_rng``), so ``make_world(preset, seed)`` is identical on every run.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .validate import check_int, check_seed
from .validate import did_you_mean
from .world import World

# Each preset: its defaults (the allowed override names and their types come from these).
PRESETS: dict[str, dict] = {
    # The paper's Appendix C check: ONE random HMM shared by all tasks, a task = a start state.
    "paper-c": dict(n_states=80, n_symbols=100, n_tasks=8, concentration=0.1, n_labels=4,
                    delimiter=0, restart=True, smoothing=0.0),
    # GINC (Xie et al. 2022): state = (entity, property), one-hot emissions through a memory
    # matrix, concept = the property transition matrix.  smoothing is our one deliberate
    # change to GINC's numbers: see docs/theory.md, "The GINC trap".
    "ginc": dict(n_symbols=50, n_entities=10, n_properties=10, n_concepts=10, trans=0.1,
                 start=10.0, vic=0.9, restart=False, smoothing=1e-3, n_labels=0),
    # The headline world of `simkernel converge`: GINC's construction, small enough to enumerate
    # every input of length 2 (16^2), with the theory's delimiter restart (Assumption 1), so that
    # the theory kernel varies within a prompt and its limits are exact (docs/theory.md §19).
    "ginc-small": dict(n_symbols=16, n_entities=4, n_properties=4, n_concepts=4, trans=0.1,
                       start=10.0, vic=0.9, restart=True, smoothing=1e-3, n_labels=0),
    # Small fully random mixtures (each concept its own Dirichlet HMM), for tests and sweeps.
    "random": dict(n_concepts=4, n_states=8, n_symbols=12, concentration=1.0, n_labels=0,
                   delimiter=0, restart=True, smoothing=0.0),
}


#: options a preset accepts beyond PRESETS, recorded in the world's options only when given (so
#: that every world built without them keeps the identity, and the run folders, it always had)
EXTRA_OPTIONS: dict[str, dict] = {
    # n_unseen concepts with prior 0 after the n_concepts pretraining ones: with_unseen(world, n_unseen, seed)
    "random": dict(n_unseen=0),
}


def make_world(preset: str = "paper-c", seed: int = 0, **overrides) -> World:
    """Build a world from a preset plus overrides (see ``PRESETS`` and ``EXTRA_OPTIONS`` for names
    and defaults).

    ``n_labels=0`` means every symbol but the delimiter is a label; the random preset's
    ``n_unseen`` appends that many prior-0 concepts (:func:`with_unseen` at the world's seed)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}{did_you_mean(preset, PRESETS)}")
    seed = check_seed("seed", seed)
    extra = {k: _coerce(preset, k, overrides.pop(k), d) for k, d in EXTRA_OPTIONS.get(preset, {}).items()
             if k in overrides}
    opts = dict(PRESETS[preset])
    for name, value in overrides.items():
        if name not in opts:
            known = list(opts) + list(EXTRA_OPTIONS.get(preset, {}))
            raise ValueError(f"unknown option {name!r} for preset {preset!r}; allowed: {', '.join(known)}"
                             f"{did_you_mean(name, known)}")
        opts[name] = _coerce(preset, name, value, opts[name])
    rng = np.random.default_rng(seed)
    builder = {"paper-c": _paper_c, "ginc": _ginc, "ginc-small": _ginc, "random": _random}[preset]
    world = builder(rng, **opts)
    meta = dict(world.meta, preset=preset, seed=seed, options=dict(opts, **extra))
    world = World.from_arrays(world.prior, world.start, world.transition, world.emission,
                              world.delimiter, world.labels, world.restart, meta, world.extras)
    n_unseen = extra.get("n_unseen", 0)
    if n_unseen < 0:
        raise ValueError(f"n_unseen must be >= 0, got {n_unseen}")
    return with_unseen(world, n_unseen, seed) if n_unseen else world


def _coerce(preset, name, value, default):
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if kind is int:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"option {name!r} of preset {preset!r} must be {kind.__name__}, got {value!r}") from None


def _positive(name, value, minimum=1):
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _dirichlet_rows(rng, concentration, shape):
    """Rows of the last axis ~ Dirichlet(concentration); renormalised so that float64
    round-off never trips the 1e-6 row-sum check."""
    if not concentration > 0:
        raise ValueError(f"concentration must be > 0, got {concentration}")
    g = rng.gamma(concentration, size=shape)
    # Gamma(0.1) underflows to exactly 0 on rare draws; an all-zero row gets the uniform.
    s = g.sum(axis=-1, keepdims=True)
    g = np.where(s > 0, g, 1.0)
    return g / g.sum(axis=-1, keepdims=True)


def _pick_labels(rng, V, delimiter, n_labels):
    others = np.array([o for o in range(V) if o != delimiter])
    if n_labels == 0:
        return others
    if not 1 <= n_labels <= len(others):
        raise ValueError(f"n_labels must be in 0..{len(others)} (0 = every non-delimiter symbol), got {n_labels}")
    return np.sort(rng.choice(others, size=n_labels, replace=False))


def _paper_c(rng, *, n_states, n_symbols, n_tasks, concentration, n_labels, delimiter, restart, smoothing):
    _positive("n_states", n_states)
    _positive("n_symbols", n_symbols, 2)
    _positive("n_tasks", n_tasks)
    if n_tasks > n_states:
        raise ValueError(f"n_tasks must be <= n_states ({n_states}): each task is its own start state, got {n_tasks}")
    if not 0 <= delimiter < n_symbols:
        raise ValueError(f"delimiter {delimiter} is outside the vocabulary 0..{n_symbols - 1}")
    T = _dirichlet_rows(rng, concentration, (n_states, n_states))
    E = _dirichlet_rows(rng, concentration, (n_states, n_symbols))
    task_states = rng.choice(n_states, size=n_tasks, replace=False)
    labels = _pick_labels(rng, n_symbols, delimiter, n_labels)
    start = np.zeros((n_tasks, n_states))
    start[np.arange(n_tasks), task_states] = 1.0
    world = World.from_arrays(np.full(n_tasks, 1.0 / n_tasks), start,
                              np.broadcast_to(T, (n_tasks, n_states, n_states)),
                              np.broadcast_to(E, (n_tasks, n_states, n_symbols)),
                              delimiter, labels, restart,
                              extras={"task_states": task_states})
    return world.smoothed(smoothing) if smoothing else world


def permutation_mixture(rng, m, temp):
    """GINC's transition block: m random m x m permutation matrices weighted by
    softmax((U(0,1)^m - 0.5) / temp).  Doubly stochastic; exact zeros where no drawn
    permutation maps i to j."""
    logits = (rng.random(m) - 0.5) / temp
    w = np.exp(logits - logits.max())
    w /= w.sum()
    out = np.zeros((m, m))
    for weight in w:
        out[np.arange(m), rng.permutation(m)] += weight
    return out


def _ginc(rng, *, n_symbols, n_entities, n_properties, n_concepts, trans, start, vic, restart,
          smoothing, n_labels):
    _positive("n_symbols", n_symbols, 2)
    _positive("n_entities", n_entities)
    _positive("n_properties", n_properties, 2)
    _positive("n_concepts", n_concepts, 2)
    if not trans > 0 or not start > 0:
        raise ValueError(f"trans and start temperatures must be > 0, got trans={trans}, start={start}")
    if not 0 <= vic <= 1:
        raise ValueError(f"vic must be in [0, 1], got {vic}")
    if not 0 <= smoothing <= 1:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
    ne, npr = n_entities, n_properties
    S = ne * npr
    # Memory matrix: entity x property -> symbol, property 0 emits the delimiter (symbol 0).
    memory = rng.integers(1, n_symbols, size=(ne, npr))
    memory[:, 0] = 0
    # One entity chain for every concept, mixed with the identity (slowly changing entities).
    value_T = (1 - vic) * permutation_mixture(rng, ne, trans) + vic * np.eye(ne)
    slot_T = np.stack([permutation_mixture(rng, npr, trans) for _ in range(n_concepts)])
    start_logits = (rng.random((n_concepts, S)) - 0.5) / start
    start_p = np.exp(start_logits - start_logits.max(axis=1, keepdims=True))
    start_p /= start_p.sum(axis=1, keepdims=True)
    if smoothing:
        # Floor the factors, not the Kronecker product: entity and property stay independent
        # chains and the property matrix stays doubly stochastic.
        value_T = (1 - smoothing) * value_T + smoothing / ne
        slot_T = (1 - smoothing) * slot_T + smoothing / npr
    # State i = (entity i // npr, property i % npr)  ->  transition = kron(entity, property).
    transition = np.stack([np.kron(value_T, slot_T[k]) for k in range(n_concepts)])
    emission = np.zeros((S, n_symbols))
    emission[np.arange(S), memory.reshape(-1)] = 1.0
    n_id = n_concepts // 2
    prior = np.zeros(n_concepts)
    prior[:n_id] = 1.0 / n_id
    labels = _pick_labels(rng, n_symbols, 0, n_labels)
    extras = {"memory": memory, "slot_transition": slot_T,
              "value_transition": np.broadcast_to(value_T, (n_concepts, ne, ne)).copy()}
    return World.from_arrays(prior, start_p, transition,
                             np.broadcast_to(emission, (n_concepts, S, n_symbols)), 0, labels,
                             restart, meta={"in_distribution": list(range(n_id))}, extras=extras)


def _random(rng, *, n_concepts, n_states, n_symbols, concentration, n_labels, delimiter, restart, smoothing):
    _positive("n_concepts", n_concepts)
    _positive("n_states", n_states)
    _positive("n_symbols", n_symbols, 2)
    if not 0 <= delimiter < n_symbols:
        raise ValueError(f"delimiter {delimiter} is outside the vocabulary 0..{n_symbols - 1}")
    K, S, V = n_concepts, n_states, n_symbols
    world = World.from_arrays(np.full(K, 1.0 / K), _dirichlet_rows(rng, concentration, (K, S)),
                              _dirichlet_rows(rng, concentration, (K, S, S)),
                              _dirichlet_rows(rng, concentration, (K, S, V)), delimiter,
                              _pick_labels(rng, V, delimiter, n_labels), restart)
    return world.smoothed(smoothing) if smoothing else world


def load_world(preset: str | None = None, world_seed: int = 0, overrides: dict | None = None,
               world_file=None, *, default: str = "paper-c") -> tuple[World, dict]:
    """The world a command runs on, and a JSON-able record of where it came from.

    Either ``world_file`` (a saved .npz; then ``preset``, ``overrides`` and a non-zero
    ``world_seed`` are errors) or ``preset`` (``default`` when None) built at ``world_seed`` with
    ``overrides`` (option name -> value; strings are coerced as ``--set`` values are).  The
    record is ``{"file", "sha256", "meta"}`` or ``{"preset", "seed", "options"}``."""
    from pathlib import Path

    from .store import sha256_file

    if world_file is not None:
        if preset is not None or overrides:
            raise ValueError(f"world_file loads a saved world; it cannot be combined with "
                             f"{'preset' if preset is not None else 'overrides'}")
        world = World.load(world_file)
        return world, {"file": str(world_file), "sha256": sha256_file(Path(world_file)), "meta": world.meta}
    preset = default if preset is None else preset
    world = make_world(preset, world_seed, **dict(overrides or {}))
    return world, {"preset": preset, "seed": world_seed, "options": world.meta.get("options", {})}


class Worlds(NamedTuple):
    """The worlds a command runs on: ``worlds`` (list of World), ``labels`` (one per world: its
    seed, ``"file"`` for a saved world, or the ``meta["seed"]`` / index of a given World),
    ``source`` (where they came from: ``{"preset", "seed", "options"}`` with seed a list when
    several, ``{"file", "sha256", "meta"}``, or ``{"given": n}``) and ``records`` (one
    :func:`load_world` record per world)."""
    worlds: list
    labels: list
    source: dict
    records: list


def resolve_worlds(preset: str | None = None, world_seeds=(0,), overrides: dict | None = None, world_file=None,
                   worlds=None, *, default: str = "paper-c") -> Worlds:
    """The one resolver of preset + world seeds + overrides, a saved world file, or World objects.

    Exactly one source: ``worlds`` (World objects, used as given), ``world_file`` (one saved
    world; ``world_seeds`` must then be the default), else ``preset`` (``default`` when None)
    built at each of ``world_seeds`` (an integer or distinct non-negative integers) with
    ``overrides`` (a dict of preset options).  One-line ValueErrors naming the argument."""
    from .validate import check_ints

    if worlds is not None:
        if world_file is not None or overrides:
            raise ValueError("worlds are used as given; they cannot be combined with world_file or overrides")
        ws = [worlds] if isinstance(worlds, World) else list(worlds)
        if not ws or not all(isinstance(w, World) for w in ws):
            raise ValueError("worlds must be a non-empty list of World objects (or None to build preset at world_seeds)")
        labels = [w.meta.get("seed", i) for i, w in enumerate(ws)]
        return Worlds(ws, labels, {"given": len(ws)}, [{"given": i} for i in range(len(ws))])
    if overrides is not None and not isinstance(overrides, dict):
        raise ValueError(f"overrides must be a dict of preset options, got {type(overrides).__name__}")
    if world_file is not None:
        seeds = [world_seeds] if isinstance(world_seeds, int) else list(world_seeds or ())
        if seeds not in ([], [0]):
            raise ValueError("world_seeds builds preset worlds; it cannot be combined with world_file")
        world, rec = load_world(preset, 0, overrides, world_file, default=default)   # it rejects preset / overrides
        return Worlds([world], ["file"], rec, [rec])
    seeds = check_ints("world_seeds", world_seeds, 0, distinct=True)
    built = [load_world(preset, s, overrides, default=default) for s in seeds]
    source = dict(built[0][1])
    if len(seeds) > 1:
        source["seed"] = seeds
    return Worlds([w for w, _ in built], seeds, source, [r for _, r in built])


def with_unseen(world: World, n_unseen: int, seed: int = 0) -> World:
    """``world`` plus ``n_unseen`` new concepts with prior 0, drawn with the ``random`` preset's
    recipe and options (start, transition and emission rows Dirichlet(concentration), the same
    smoothing) from ``np.random.default_rng([seed, 1])``: the salt keeps them from repeating the
    world's own draws when ``seed`` is its seed.  Documents never use a prior-0 concept, so exact
    Bayes over the pretraining concepts (prior > 0) is the memorising predictor, and prompts can
    be drawn from either set (``sampling.sample_prompt_set(..., concepts="id" / "ood")``).  Labels,
    delimiter and restart are the world's; ``meta["unseen"]`` records the call.  One-line
    ValueError for a world not made by the ``random`` preset (its recipe is the generator)."""
    n_unseen = check_int("n_unseen", n_unseen, 1)
    seed = check_seed("seed", seed)
    opts = world.meta.get("options") or {}
    if world.meta.get("preset") != "random" or "concentration" not in opts:
        raise ValueError(f"with_unseen draws new concepts with the random preset's recipe; this world was made by "
                         f"{world.meta.get('preset', 'no preset')!r}")
    rng = np.random.default_rng([seed, 1])
    S, V, eps = world.n_states, world.n_symbols, float(opts.get("smoothing", 0.0))
    start = _dirichlet_rows(rng, opts["concentration"], (n_unseen, S))
    trans = _dirichlet_rows(rng, opts["concentration"], (n_unseen, S, S))
    emis = _dirichlet_rows(rng, opts["concentration"], (n_unseen, S, V))
    start, trans = (1 - eps) * start + eps / S, (1 - eps) * trans + eps / S      # World.smoothed's rule
    meta = dict(world.meta, unseen={"n_unseen": n_unseen, "seed": seed, "seen": int(world.n_concepts)})
    return World.from_arrays(np.concatenate([world.prior, np.zeros(n_unseen)]),
                             np.concatenate([world.start, start]), np.concatenate([world.transition, trans]),
                             np.concatenate([world.emission, emis]), world.delimiter, world.labels,
                             world.restart, meta, world.extras)
