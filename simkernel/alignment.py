"""Simulator only: the measurement library's per-head weights against the ground truth.

``capture`` and ``analysis`` run on any causal LM and know nothing of HMMs.  In a simulated world the true
kernel K(x_test, x_i) (``kernel.kernel_values``) and the exact posterior predictive
(``bayes.icl_curve``) are known, so each head's demonstration weights a_i and its label vote
can be compared with them:

    kernels     'theory' K(x_test, x_i) with Σ of the pretraining inputs, and 'similarity'
                (the exact pretraining predictive P(o|x)ᵀP(o|x')); plus the model's own
                prediction similarity from standalone runs ('model_similarity')
    references  distributions over the labels (B, L), so that a tie in one of them is scored
                as a tie (``analysis`` compares each head's vote with them tie-fairly):
                'bayes' the exact posterior predictive after the prompt's n demonstrations,
                'kernel' the theory kernel estimator (normalised form), 'oracle'
                P(y | x_test, true concept), and 'frequency' the label frequencies of the
                prompt's demonstrations (the frequency kernel K ≡ 1: a head weighing every
                demonstration equally), the baseline every head is shown beside

torch is imported only through ``capture``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import bayes, kernel
from .analysis import PROBE_OFFSETS, analyse, prediction_similarity
from .capture import capture, forward_labels, label_distribution
from .constants import DEFAULT_N_SAMPLES, DEFAULT_RIDGE
from .kernel import kernel_values
from .metrics import restrict
from .prompts import Example, PromptBatch, collate
from .sampling import Prompts, sample_prompt_set
from .world import World


def label_index(world: World) -> np.ndarray:
    """(V,) symbol -> index in world.labels (-1 for symbols that are not labels)."""
    idx = np.full(world.n_symbols, -1, dtype=np.int64)
    idx[world.labels] = np.arange(len(world.labels))
    return idx


def examples_from_prompts(world: World, prompts: Prompts) -> list:
    """One :class:`Example` per prompt: demonstration i spans x_i through y_i (the
    delimiter after y_i is outside), positions straight from the sampler's layout."""
    idx = label_index(world)
    spans = np.stack([prompts.x_spans[:-1, 0], prompts.label_positions + 1], axis=1)
    return [Example(prompts.tokens[b].astype(np.int64), spans, prompts.label_positions,
                    idx[prompts.labels[b]], int(idx[prompts.y_test[b]]))
            for b in range(prompts.tokens.shape[0])]


def standalone_batch(world: World, prompts: Prompts) -> tuple[PromptBatch, np.ndarray]:
    """Every distinct input x (demonstrations and x_test) as a prompt of its own, and the
    (B, n + 1) index of each prompt's inputs into it (the last column is x_test)."""
    k = prompts.example_length
    xs = np.stack([prompts.tokens[:, s:s + k - 1] for s in prompts.x_spans[:, 0]], axis=1)
    uniq, inv = np.unique(xs.reshape(-1, k - 1), axis=0, return_inverse=True)
    empty = np.zeros((0, 2), np.int64)
    ex = [Example(u.astype(np.int64), empty, np.zeros(0, np.int64), np.zeros(0, np.int64)) for u in uniq]
    return collate(ex, world.labels), inv.reshape(xs.shape[:2])


@dataclass
class Truth:
    """Ground truth for B prompts of n demonstrations.

    kernels     {'theory' | 'similarity': (B, n)} K(x_test, x_i)
    references  {'bayes' | 'kernel' | 'oracle' | 'frequency': (B, L)} distributions over
                world.labels (NaN rows where undefined: a prompt with probability 0 under every
                in-distribution concept has no Bayes predictive)
    info        Σ details of the theory kernel
    """

    kernels: dict
    references: dict
    info: dict


def ground_truth(world: World, prompts: Prompts, features: str = "belief", n_samples: int = DEFAULT_N_SAMPLES,
                 ridge: float = DEFAULT_RIDGE, seed: int = 0) -> Truth:
    """The true kernel values and the exact / kernel / oracle / label-frequency predictions
    of ``prompts``."""
    values, info = kernel_values(world, prompts, ("theory", "similarity"), features=features,
                                 n_samples=n_samples, ridge=ridge, seed=seed)
    labels = world.labels
    curve = bayes.icl_curve(world, prompts)
    p_bayes = restrict(curve.predictive[:, -1], labels)
    p_oracle = restrict(curve.oracle, labels)

    def vote(kv):
        return kernel.to_distribution(kernel.estimates(kv, prompts.labels, labels, "normalised"), "normalised")[:, -1]

    refs = {"bayes": p_bayes, "kernel": vote(values["theory"]), "oracle": p_oracle,
            "frequency": vote(np.ones_like(values["theory"]))}
    return Truth(values, refs, info.get("theory", {}))


def measure_model(model, world: World, n_prompts: int = 1000, n_demos: int = 16, example_length: int = 3,
                  seed: int = 0, concepts="prior", how: str = "max", n_select: int = 700,
                  n_report: int = 300, offsets=PROBE_OFFSETS, batch_size: int = 32,
                  n_samples: int = DEFAULT_N_SAMPLES, progress=None):
    """Every measurement of ``model`` (a causal LM over the world's symbols) on freshly
    sampled prompts, with the ground truth attached: (Analysis, info).

    The kernels correlated with each head are the theory kernel ('theory'), the exact
    prediction similarity ('similarity') and the model's own ('model_similarity', from each
    input run alone); the references its vote is compared with (tie-fairly) are the model,
    gold, exact Bayes, the kernel estimator, the oracle and the label frequencies."""
    tick = progress or (lambda _msg: None)
    prompts = sample_prompt_set(world, n_prompts, n_demos, example_length, seed=seed, concepts=concepts)
    batch = collate(examples_from_prompts(world, prompts), world.labels)
    tick("capture")
    cap = capture(model, batch, offsets=offsets, batch_size=batch_size)
    tick("standalone predictions")
    alone, inv = standalone_batch(world, prompts)
    p_alone = label_distribution(forward_labels(model, alone, batch_size=max(batch_size, 256)))
    p_demos, p_test = p_alone[inv[:, :-1]], p_alone[inv[:, -1]]
    tick("ground truth")
    truth = ground_truth(world, prompts, n_samples=n_samples, seed=seed)
    kernels = dict(truth.kernels)
    kernels["model_similarity"] = prediction_similarity(p_test, p_demos)
    tick("analysis")
    result = analyse(cap, batch, references=truth.references, kernels=kernels, how=how,
                     n_select=n_select, n_report=n_report, seed=seed,
                     probe_targets={"keys": ("standalone", p_demos.argmax(-1))})
    info = {"n_prompts": len(batch), "n_demos": n_demos, "example_length": example_length,
            "concepts": str(concepts), "prompt_length": int(batch.input_ids.shape[1]),
            "theory_kernel": truth.info}
    return result, info



# ---------------------------------------------------------------------- simkernel measure as a call
@dataclass
class MeasureRun:
    """What :func:`run` returns: the :class:`analysis.Analysis` (tidy tables and summary),
    ``info`` (prompt layout, the theory kernel's Σ), ``meta`` (the JSON of the command: config,
    seed, versions, summary, chosen heads, table schemas) and the figures' ``title``."""

    result: object
    info: dict
    meta: dict
    title: str


def run_folder(path) -> Path:
    """A run folder from either the run folder or its checkpoint/model folder."""
    path = Path(path)
    if (path / "config.json").is_file() and path.name == "model" and path.parent.name == "checkpoint":
        return path.parent.parent
    return path


def run(checkpoint, n_prompts: int = 1000, n_demos: int = 16, example_length: int = 3, concepts="prior",
        weight: str = "max", n_select: int = 700, n_report: int = 300, seed: int = 0, device="auto",
        progress=None) -> MeasureRun:
    """``simkernel measure`` as a library call: load a run folder's model and world (``checkpoint``:
    the run folder or its checkpoint/model folder) and :func:`measure_model` it.  A prompt longer
    than the model's context is a one-line ValueError naming ``n_demos`` and its largest allowed
    value.  Writes nothing."""
    import time

    from . import analysis
    from .icl_eval import context_of, load_run, prompt_length, run_paths
    from .store import provenance, world_summary
    from .capture import resolve_device

    run_dir = run_folder(checkpoint)
    run_paths(run_dir)
    dev = resolve_device(device)
    model, world, model_dir, world_file = load_run(run_dir, device=dev)
    if not isinstance(concepts, str) and not 0 <= int(concepts) < world.n_concepts:
        raise ValueError(f"{concepts} is not a concept of this world; allowed: prior, id, ood or "
                         f"0..{world.n_concepts - 1}")
    length, ctx = prompt_length(n_demos, example_length), context_of(model)
    if ctx is not None and length > ctx:
        raise ValueError(f"n_demos={n_demos} demonstrations of length {example_length} make {length}-symbol "
                         f"prompts, longer than the model's context ({ctx}); allowed: n_demos <= "
                         f"{(ctx - example_length + 1) // (example_length + 1)}")
    t0 = time.perf_counter()
    result, info = measure_model(model, world, n_prompts, n_demos, example_length, seed=seed, concepts=concepts,
                                 how=weight, n_select=n_select, n_report=n_report, progress=progress)
    config = {"command": "measure", "run": str(run_dir), "model_dir": str(model_dir), "world_file": str(world_file),
              "n_prompts": n_prompts, "n_demos": n_demos, "example_length": example_length,
              "concepts": str(concepts), "weight": weight, "n_select": n_select, "n_report": n_report,
              "probe_offsets": list(analysis.PROBE_OFFSETS), "probe_lambda": analysis.PROBE_LAMBDA, "device": str(dev)}
    meta = provenance(config, seed, extra_packages=("torch", "matplotlib"))
    title = (f"run {run_dir.name} ({model.config.n_layer} layers x {model.config.n_head} heads), "
             f"{n_prompts} prompts x {n_demos} demos, k={example_length}, weight {weight}")
    meta.update(title=title, world=world_summary(world), summary=result.summary, info=info, best=result.best,
                elapsed_s=round(time.perf_counter() - t0, 3),
                tables={"heads.csv": list(analysis.HEAD_COLUMNS), "best.csv": list(analysis.BEST_COLUMNS),
                        "profile.csv": list(analysis.PROFILE_COLUMNS), "probes.csv": list(analysis.PROBE_COLUMNS)})
    return MeasureRun(result, info, meta, title)
