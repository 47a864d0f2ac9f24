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
    reference weights  (B, n) demonstration weights whose votes stand beside each chosen head:
                'theory_clipped' max(K(x_test, x_i), 0), 'similarity' and 'model_similarity'
                (``analysis`` adds the uniform vote, the head's shuffled weights and the best
                non-negative weights)

:func:`run` is ``simkernel measure``: one run folder, or several training seeds of one world
measured on the same prompts and pooled (:func:`pool`, runs as the unit of the interval);
:class:`MeasureRun` prints (``summary_lines``) and writes (``write``) the result.

torch is imported only through ``capture``; ``icl_eval``, ``store`` and ``plots`` inside the functions
that load runs and write results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import bayes, kernel
from .analysis import CI_LEVEL, PROBE_OFFSETS, REFERENCE_COLUMNS, Analysis, analyse, format_ci, prediction_similarity
from .capture import capture, forward_labels, label_distribution
from .constants import DEFAULT_N_SAMPLES, DEFAULT_RIDGE, N_REPORT, N_SELECT
from .kernel import kernel_values
from .metrics import restrict, world_ci
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
                 ridge: float = DEFAULT_RIDGE, seed: int = 0, *, kernel_set=None, curve=None) -> Truth:
    """The true kernel values and the exact / kernel / oracle / label-frequency predictions
    of ``prompts``.  ``kernel_set`` (a ``kernel.KernelSet`` of the same settings) and ``curve``
    (``bayes.icl_curve`` of ``prompts``), when the caller has them, are reused."""
    values, info = kernel_values(world, prompts, ("theory", "similarity"), features=features,
                                 n_samples=n_samples, ridge=ridge, seed=seed, kernel_set=kernel_set)
    labels = world.labels
    if curve is None:
        curve = bayes.icl_curve(world, prompts)
    p_bayes = restrict(curve.predictive[:, -1], labels)
    p_oracle = restrict(curve.oracle, labels)

    def vote(kv):
        return kernel.to_distribution(kernel.estimates(kv, prompts.labels, labels, "normalised"), "normalised")[:, -1]

    refs = {"bayes": p_bayes, "kernel": vote(values["theory"]), "oracle": p_oracle,
            "frequency": vote(np.ones_like(values["theory"]))}
    return Truth(values, refs, info.get("theory", {}))


@dataclass
class Prompted:
    """The prompts every run of one world is measured on, and their ground truth."""

    prompts: Prompts
    batch: PromptBatch
    truth: Truth


def prompted(world: World, n_prompts: int = 1000, n_demos: int = 16, example_length: int = 3, seed: int = 0,
             concepts="prior", n_samples: int = DEFAULT_N_SAMPLES) -> Prompted:
    """Sample the measurement prompts of ``world`` and compute their ground truth (no model):
    what :func:`measure_model` needs besides the model, shared by every run of the world."""
    prompts = sample_prompt_set(world, n_prompts, n_demos, example_length, seed=seed, concepts=concepts)
    batch = collate(examples_from_prompts(world, prompts), world.labels)
    return Prompted(prompts, batch, ground_truth(world, prompts, n_samples=n_samples, seed=seed))


def measure_model(model, world: World, n_prompts: int = 1000, n_demos: int = 16, example_length: int = 3,
                  seed: int = 0, concepts="prior", how: str = "max", n_select: int = N_SELECT,
                  n_report: int = N_REPORT, offsets=PROBE_OFFSETS, batch_size: int = 32,
                  n_samples: int = DEFAULT_N_SAMPLES, progress=None, shared: Prompted | None = None):
    """Every measurement of ``model`` (a causal LM over the world's symbols) on freshly
    sampled prompts, with the ground truth attached: (Analysis, info).

    The kernels correlated with each head are the theory kernel ('theory'), the exact
    prediction similarity ('similarity') and the model's own ('model_similarity', from each
    input run alone); the references its vote is compared with (tie-fairly) are the model,
    gold, exact Bayes, the kernel estimator, the oracle and the label frequencies.  Beside the
    chosen heads stand the votes of the reference weights (B, n): the theory kernel clipped at 0
    ('theory_clipped'), the exact prediction similarity ('similarity') and the model's own
    ('model_similarity'), with analysis's uniform, shuffled and best votes.  ``shared``
    (:func:`prompted` of the same arguments) skips the sampling and the ground truth, so several
    runs of one world are measured on the same prompts; ``progress(stage)`` is called at each
    of :data:`MEASURE_STAGES`."""
    tick = progress or (lambda _msg: None)
    tick(MEASURE_STAGES[0])
    if shared is None:
        shared = prompted(world, n_prompts, n_demos, example_length, seed, concepts, n_samples)
    prompts, batch, truth = shared.prompts, shared.batch, shared.truth
    tick(MEASURE_STAGES[1])
    cap = capture(model, batch, offsets=offsets, batch_size=batch_size)
    tick(MEASURE_STAGES[2])
    alone, inv = standalone_batch(world, prompts)
    alone_logp = forward_labels(model, alone, batch_size=max(batch_size, 256))
    tick(MEASURE_STAGES[3])
    result = analyse_measured(cap, batch, truth, alone_logp, inv, how=how, n_select=n_select, n_report=n_report,
                              seed=seed)
    info = {"n_prompts": len(batch), "n_demos": n_demos, "example_length": example_length,
            "concepts": str(concepts), "prompt_length": int(batch.input_ids.shape[1]),
            "theory_kernel": truth.info}
    return result, info


def analyse_measured(cap, batch: PromptBatch, truth: Truth, alone_logp: np.ndarray, inv: np.ndarray,
                     how: str = "max", n_select: int = N_SELECT, n_report: int = N_REPORT, seed: int = 0) -> Analysis:
    """The analysis half of :func:`measure_model`, for a capture made elsewhere (e.g. of the
    same prompts rendered as text for a real LLM, ``llm_world``): ``cap`` of ``batch`` (B
    prompts, n demonstrations), ``truth`` their :func:`ground_truth`, ``alone_logp`` (U, L)
    the model's log P(label token) for every distinct input run alone and ``inv`` (B, n + 1)
    each prompt's inputs' rows in it (:func:`standalone_batch`; last column x_test)."""
    p_alone = label_distribution(alone_logp)
    p_demos, p_test = p_alone[inv[:, :-1]], p_alone[inv[:, -1]]
    kernels = dict(truth.kernels)
    kernels["model_similarity"] = prediction_similarity(p_test, p_demos)
    # a kernel as a_i: the theory's K can be negative (a vote against a label), attention cannot
    ref_w = {"theory_clipped": np.clip(truth.kernels["theory"], 0.0, None),
             "similarity": np.clip(truth.kernels["similarity"], 0.0, None),
             "model_similarity": kernels["model_similarity"]}
    return analyse(cap, batch, references=truth.references, kernels=kernels, reference_weights=ref_w, how=how,
                   n_select=n_select, n_report=n_report, seed=seed,
                   probe_targets={"keys": ("standalone", p_demos.argmax(-1))})


# ---------------------------------------------------------------------- simkernel measure as a call
#: the stages :func:`measure_model` reports through ``progress``, once each per run
MEASURE_STAGES = ("prompts and ground truth", "capture", "standalone predictions", "analysis")
#: the tables of one run's measurement (analysis owns their columns)
MEASURE_TABLES = ("heads.csv", "best.csv", "profile.csv", "probes.csv", "references.csv")
MEASURE_JSON = "measure.json"
#: references.csv of several runs: every run's rows, named by the run's folder
RUN_REFERENCE_COLUMNS = ("run",) + REFERENCE_COLUMNS
#: pooled.csv: per target and reference, the head-minus-reference difference over runs
#: (``unit`` 'runs': a t-interval over the runs' means; 'prompts' with one run), and how many
#: runs' own bootstrap CIs lie above / below 0
POOLED_COLUMNS = ("target", "reference", "n_runs", "unit", "head_agreement", "reference_agreement",
                  "difference", "lo", "hi", "n_prompts", "runs_above_0", "runs_below_0")
POOLED_RULE = ("over training seeds: 'detected' when the rule holds in every run and the t-interval over runs of "
               "head minus uniform and of head minus shuffled both lie above 0; 'not detected' when the rule "
               "holds in no run and neither pooled interval lies above 0; 'mixed' otherwise")
#: The dtypes of references.csv and pooled.csv (``results.Table``; a column not named is a string).
REFERENCE_DTYPES = {"run": "str", "layer": "int", "head": "int", "head_agreement": "float",
                    "reference_agreement": "float", "difference": "float", "diff_lo": "float", "diff_hi": "float",
                    "n_examples": "int"}
POOLED_DTYPES = {"n_runs": "int", "head_agreement": "float", "reference_agreement": "float", "difference": "float",
                 "lo": "float", "hi": "float", "n_prompts": "int", "runs_above_0": "int", "runs_below_0": "int"}
#: the targets whose reference votes are printed, in this order (every target is in references.csv)
SHOWN_TARGETS = ("model", "bayes", "gold")


@dataclass
class RunMeasure:
    """One run folder's measurement: its :class:`analysis.Analysis`, ``info`` (prompt layout,
    the theory kernel's Σ), ``meta`` (its measure.json: config, seed, versions, summary, chosen
    heads, table schemas) and its figures' ``title``."""

    name: str
    run_dir: Path
    result: Analysis
    info: dict
    meta: dict
    title: str


@dataclass
class MeasureRun:
    """What :func:`run` returns: each run folder's :class:`RunMeasure` (one per training seed,
    all on the same prompts), the ``pooled`` rows (:data:`POOLED_COLUMNS`) and ``summary``
    (per target and reference the difference over runs, and the verdict), the command's
    ``meta`` (one run: that run's measure.json; several: the pooled one) and ``title``.

    :meth:`summary_lines` is what ``simkernel measure`` prints, :meth:`write` what it writes."""

    runs: list
    pooled: list
    summary: dict
    meta: dict
    title: str

    @property
    def result(self) -> Analysis:
        """The first (with one run folder: the) run's analysis."""
        return self.runs[0].result

    @property
    def info(self) -> dict:
        return self.runs[0].info

    def summary_lines(self) -> list[str]:
        """The printed summary: per run the model, the best head, the majority vote, the top heads,
        the head chosen per measure and the reference votes beside the chosen heads (with the
        per-run verdict); with several runs, the pooled differences and the pooled verdict."""
        lines = []
        many = len(self.runs) > 1
        for r in self.runs:
            if many:
                lines.append(f"== run {r.name} ({r.run_dir})")
            lines += _run_lines(r.result.summary, r.result)
        if many:
            lines += _pooled_lines(self.pooled, self.summary)
        return lines

    def reference_rows(self) -> list[dict]:
        """references.csv's rows: one run's as its analysis gives them; several runs' with a
        ``run`` column (:data:`RUN_REFERENCE_COLUMNS`)."""
        if len(self.runs) == 1:
            return self.runs[0].result.references
        return [{"run": r.name, **row} for r in self.runs for row in r.result.references]

    def tables(self) -> dict:
        """The result protocol's tables: references.csv (main) and, with several runs, pooled.csv
        ('pooled')."""
        from .results import Table

        columns = REFERENCE_COLUMNS if len(self.runs) == 1 else RUN_REFERENCE_COLUMNS
        out = {None: Table("references.csv", columns, {c: d for c, d in REFERENCE_DTYPES.items() if c in columns},
                           self.reference_rows())}
        if len(self.runs) > 1:
            out["pooled"] = Table("pooled.csv", POOLED_COLUMNS, POOLED_DTYPES, self.pooled)
        return out

    def write(self, out, copy_to=None) -> list[Path]:
        """Write the tables, measure.json and the figures into ``out`` (and copy them into
        ``copy_to``), each folder through ``store.publish`` (temporary files, then renames).
        One run: heads.csv, best.csv, profile.csv, probes.csv, references.csv, measure.json and
        the figures in ``out``.  Several: each run's files in ``out/<run name>``, and in ``out``
        references.csv (every run, a ``run`` column), pooled.csv, measure.json and
        references.png.  Returns the paths written."""
        from .plots import MEASURE_FIGURES, REFERENCES_FIGURE, plot_references
        from .store import publish, write_csv, write_json

        out = Path(out)
        copy_to = None if copy_to is None else Path(copy_to)
        self.meta["config"]["out"] = str(out)
        single_files = MEASURE_TABLES + MEASURE_FIGURES + (REFERENCES_FIGURE,)
        if len(self.runs) == 1:
            return publish(out, _run_writers(self.runs[0]), copy_to, remove=single_files + ("pooled.csv",))
        written = []
        for r in self.runs:
            r.meta["config"]["out"] = str(out / r.name)
            written += publish(out / r.name, _run_writers(r), None if copy_to is None else copy_to / r.name,
                               remove=single_files)
        rows = self.reference_rows()
        writers = {"references.csv": lambda p: write_csv(p, rows, RUN_REFERENCE_COLUMNS),
                   "pooled.csv": lambda p: write_csv(p, self.pooled, POOLED_COLUMNS),
                   MEASURE_JSON: lambda p: write_json(p, self.meta),
                   REFERENCES_FIGURE: lambda p: plot_references(rows, p, self.pooled, title=self.title)}
        # a single run's files from an earlier call would sit beside the pooled ones
        return written + publish(out, writers, copy_to, remove=tuple(f for f in single_files if f not in writers))


def _run_writers(r: RunMeasure) -> dict:
    """{file name: writer} of one run's tables, measure.json and figures."""
    from . import analysis
    from .plots import (MEASURE_FIGURES, REFERENCES_FIGURE, plot_attention_profile, plot_head_scores, plot_probes,
                        plot_references)
    from .store import write_csv, write_json

    res = r.result
    writers = {"heads.csv": lambda p: write_csv(p, res.heads, analysis.HEAD_COLUMNS),
               "best.csv": lambda p: write_csv(p, res.best, analysis.BEST_COLUMNS),
               "profile.csv": lambda p: write_csv(p, res.profile, analysis.PROFILE_COLUMNS),
               "probes.csv": lambda p: write_csv(p, res.probes, analysis.PROBE_COLUMNS),
               "references.csv": lambda p: write_csv(p, res.references, analysis.REFERENCE_COLUMNS),
               MEASURE_JSON: lambda p: write_json(p, r.meta),
               MEASURE_FIGURES[0]: lambda p: plot_attention_profile(res.profile, p, r.title),
               MEASURE_FIGURES[1]: lambda p: plot_head_scores(res.heads, res.best, p, title=r.title),
               REFERENCES_FIGURE: lambda p: plot_references(res.references, p, title=r.title)}
    if res.probes:
        writers[MEASURE_FIGURES[2]] = lambda p: plot_probes(res.probes, p, r.title)
    return writers


def _f(v, fmt=".3f") -> str:
    return "nan" if v is None or not np.isfinite(v) else format(v, fmt)


def _run_lines(s: dict, result: Analysis) -> list[str]:
    """The printed summary of one run's analysis (what `simkernel measure` printed before the
    references, then the references and the verdict)."""
    from .analysis import best_heads_table, reference_table, top_heads_table

    t2, base, nan = s["table2"], s["majority_baseline"], float("nan")
    lines = [f"{s['n_examples']} prompts x {s['n_demos']} demonstrations, {s['layers']} layers x {s['heads']} "
             f"heads; heads chosen on {s['n_select']} prompts, scored on {s['n_report']} held-out prompts",
             f"model: accuracy {_f(s['model_accuracy'])}, agreement with exact Bayes "
             f"{_f(s['model_matches'].get('bayes', nan))}, with the kernel estimator "
             f"{_f(s['model_matches'].get('kernel', nan))}",
             f"best head (agreement with the model): layer {t2['layer']} head {t2['head']}: held-out agreement "
             f"{_f(t2['agreement'])}, reconstructed accuracy {_f(t2['reconstructed_accuracy'])} "
             f"(model {_f(t2['icl_accuracy'])})",
             "majority vote of the demonstrations (held-out baseline, ties 1/m): agreement with the model "
             f"{_f(base.get('model', nan))}, with exact Bayes {_f(base.get('bayes', nan))}, "
             f"accuracy {_f(base.get('gold', nan))}",
             "top heads by agreement with the model on the selection prompts; held-out values:"]
    lines += top_heads_table(result.heads)
    lines.append("the head chosen per measure on the selection prompts:")
    lines += best_heads_table(result.best)
    lines += reference_table(s, SHOWN_TARGETS)
    return lines


def _pooled_lines(pooled: list, summary: dict) -> list[str]:
    n = summary["n_runs"]
    lines = [f"== pooled over {n} runs (mean of the runs' held-out head-minus-reference differences, "
             f"{CI_LEVEL:.0%} t-interval over runs; runs whose own CI is above / below 0):",
             f"  {'target':<7} {'reference':<17} {'reference':>9} {'head':>6}  difference [CI]        runs >0 <0"]
    for row in (r for t in SHOWN_TARGETS for r in pooled if r["target"] == t):
        lines.append(f"  {row['target']:<7} {row['reference']:<17} {_f(row['reference_agreement']):>9} "
                     f"{_f(row['head_agreement']):>6}  {format_ci(row['difference'], row['lo'], row['hi']):<23} "
                     f"{row['runs_above_0']:>3} {row['runs_below_0']:>2}")
    v = summary["verdict"]
    lines.append(f"pooled verdict ({v['target']}): {v['verdict']} (per-run rule held in {v['runs_detected']} of {n} "
                 f"runs)" + ("; fewer than 3 training seeds" if n < 3 else ""))
    lines.append(f"  rule: {v['rule']}")
    return lines


def pool(runs: list) -> tuple[list, dict]:
    """(POOLED_COLUMNS rows, summary) over the :class:`RunMeasure` of several training seeds
    measured on the same prompts: per target and reference, the per-prompt held-out
    differences head minus reference (each run's own chosen head) pooled by
    ``metrics.world_ci`` with the run as the unit (a t-interval over the runs' means; one run:
    the normal interval over its prompts), and the verdict (:data:`POOLED_RULE`)."""
    first = runs[0].result
    rows = []
    for target, per in first.paired.items():
        if not all(target in r.result.paired for r in runs):
            continue
        for ref in (k for k in per if k != "head"):
            diffs = [r.result.paired[target]["head"] - r.result.paired[target][ref] for r in runs]
            unit = np.concatenate([np.full(d.size, i) for i, d in enumerate(diffs)])
            m, lo, hi, n_prompts, _ = world_ci(np.concatenate(diffs), unit)
            own = [next(x for x in r.result.references if (x["target"], x["reference"]) == (target, ref))
                   for r in runs]
            rows.append({"target": target, "reference": ref, "n_runs": len(runs),
                         "unit": "runs" if len(runs) > 1 else "prompts",
                         "head_agreement": float(np.nanmean([o["head_agreement"] for o in own])),
                         "reference_agreement": float(np.nanmean([o["reference_agreement"] for o in own])),
                         "difference": float(m), "lo": float(lo), "hi": float(hi), "n_prompts": int(n_prompts),
                         "runs_above_0": sum(o["diff_lo"] > 0 for o in own),
                         "runs_below_0": sum(o["diff_hi"] < 0 for o in own)})
    target = first.summary["verdict"]["target"]
    flags = [bool(r.result.summary["verdict"]["detected"]) for r in runs]
    above = {row["reference"]: row["lo"] > 0 for row in rows if row["target"] == target}
    pooled_ok = above.get("uniform", False) and above.get("shuffled", False)
    if all(flags) and (pooled_ok or len(runs) == 1):
        word = "detected"
    elif not any(flags) and not (above.get("uniform", False) or above.get("shuffled", False)):
        word = "not detected"
    else:
        word = "mixed"
    verdict = {"target": target, "verdict": word, "runs_detected": sum(flags), "n_runs": len(runs),
               "rule": first.summary["verdict"]["rule"] + "; " + POOLED_RULE}
    return rows, {"n_runs": len(runs), "verdict": verdict,
                  "pooled": {f"{r['target']}/{r['reference']}": {k: r[k] for k in ("difference", "lo", "hi")}
                             for r in rows}}


def run_folder(path) -> Path:
    """A run folder from either the run folder or its checkpoint/model folder."""
    path = Path(path)
    if (path / "config.json").is_file() and path.name == "model" and path.parent.name == "checkpoint":
        return path.parent.parent
    return path


def _same_world(a: World, b: World) -> bool:
    return (a.delimiter == b.delimiter and a.restart == b.restart and np.array_equal(a.labels, b.labels)
            and all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("prior", "start", "transition", "emission")))


def _run_dirs(checkpoint) -> tuple[list[Path], list[str]]:
    """(run folders, their names) of :func:`run`'s ``checkpoint``: one or a list, every folder
    checked before any model is loaded, none twice; same-named folders get their index."""
    from .icl_eval import run_paths

    many = not isinstance(checkpoint, (str, os.PathLike))
    run_dirs = [run_folder(c) for c in (checkpoint if many else [checkpoint])]
    if not run_dirs:
        raise ValueError("checkpoint is an empty list; allowed: one run folder or a list of run folders")
    for d in run_dirs:
        run_paths(d)
    seen = {}
    for d in run_dirs:
        key = d.resolve()
        if key in seen:
            raise ValueError(f"checkpoint lists the run {str(d)!r} twice; allowed: distinct run folders")
        seen[key] = d
    names = [d.name for d in run_dirs]
    if len(set(names)) < len(names):              # same-named folders in different parents
        names = [f"{i}-{n}" for i, n in enumerate(names)]
    return run_dirs, names


def _check_run(run_dir, first_dir, world0, world, model, concepts, n_demos: int, example_length: int) -> None:
    """One-line ValueErrors: a run of another world than the first, a concept the world lacks,
    prompts longer than the model's context."""
    from .icl_eval import context_of, prompt_length

    if world is not world0 and not _same_world(world0, world):
        raise ValueError(f"checkpoint: run {str(run_dir)!r} was trained on another world than "
                         f"{str(first_dir)!r}; allowed: runs of one world (measured on the same prompts)")
    if not isinstance(concepts, str) and not 0 <= int(concepts) < world.n_concepts:
        raise ValueError(f"{concepts} is not a concept of this world; allowed: prior, id, ood or "
                         f"0..{world.n_concepts - 1}")
    length, ctx = prompt_length(n_demos, example_length), context_of(model)
    if ctx is not None and length > ctx:
        raise ValueError(f"n_demos={n_demos} demonstrations of length {example_length} make {length}-symbol "
                         f"prompts, longer than the model's context ({ctx}); allowed: n_demos <= "
                         f"{(ctx - example_length + 1) // (example_length + 1)}")


def run(checkpoint, n_prompts: int = 1000, n_demos: int = 16, example_length: int = 3, concepts="prior",
        weight: str = "max", n_select: int = N_SELECT, n_report: int = N_REPORT, seed: int = 0, device="auto",
        progress=None) -> MeasureRun:
    """``simkernel measure`` as a library call: load each run folder's model and world
    (``checkpoint``: a run folder or its checkpoint/model folder, or a list of them, e.g. the
    runs of several training seeds of one world) and :func:`measure_model` it; every run is
    measured on the same prompts (the same ``seed``) and split, the runs are pooled by
    :func:`pool`.  ``progress(stage)`` is called at each of :data:`MEASURE_STAGES` for each run.
    One-line ValueErrors: a prompt longer than a model's context names ``n_demos`` and its
    largest allowed value; runs of different worlds, or one run twice, name ``checkpoint``.
    Writes nothing (:meth:`MeasureRun.write` does).

    The verdict: in each run, a kernel-regression head is detected when the head chosen on the
    selection prompts by agreement with exact Bayes beats, on the held-out prompts, both the
    uniform (majority) vote and its own shuffled weights, each paired-bootstrap 95% CI of the
    difference lying above 0 (``analysis.VERDICT_RULE``); over runs it is 'detected' when that
    holds in every run and the t-intervals over runs of both differences lie above 0, 'not
    detected' when it holds in no run and neither pooled interval lies above 0, 'mixed'
    otherwise (:data:`POOLED_RULE`); fewer than 3 runs is flagged in the printed verdict."""
    import time

    from . import analysis
    from .device import resolve_device
    from .icl_eval import load_run
    from .store import provenance, world_summary

    run_dirs, names = _run_dirs(checkpoint)
    dev = resolve_device(device)
    config = {"command": "measure", "n_prompts": n_prompts, "n_demos": n_demos, "example_length": example_length,
              "concepts": str(concepts), "weight": weight, "n_select": n_select, "n_report": n_report,
              "probe_offsets": list(analysis.PROBE_OFFSETS), "probe_lambda": analysis.PROBE_LAMBDA,
              "n_permutations": analysis.N_PERMUTATIONS, "n_bootstrap": analysis.N_BOOTSTRAP, "device": str(dev)}
    t_all = time.perf_counter()
    runs, shared, world0 = [], None, None
    for name, run_dir in zip(names, run_dirs):
        model, world, model_dir, world_file = load_run(run_dir, device=dev)
        world0 = world if world0 is None else world0
        _check_run(run_dir, run_dirs[0], world0, world, model, concepts, n_demos, example_length)
        t0 = time.perf_counter()
        if shared is None:
            shared = prompted(world, n_prompts, n_demos, example_length, seed, concepts)
        result, info = measure_model(model, world, n_prompts, n_demos, example_length, seed=seed, concepts=concepts,
                                     how=weight, n_select=n_select, n_report=n_report, progress=progress,
                                     shared=shared)
        del model
        cfg = {**config, "run": str(run_dir), "model_dir": str(model_dir), "world_file": str(world_file)}
        meta = provenance(cfg, seed, extra_packages=("torch", "matplotlib"))
        title = (f"run {run_dir.name} ({result.summary['layers']} layers x {result.summary['heads']} heads), "
                 f"{n_prompts} prompts x {n_demos} demos, k={example_length}, weight {weight}")
        meta.update(title=title, world=world_summary(world), summary=result.summary, info=info, best=result.best,
                    elapsed_s=round(time.perf_counter() - t0, 3),
                    tables={"heads.csv": list(analysis.HEAD_COLUMNS), "best.csv": list(analysis.BEST_COLUMNS),
                            "profile.csv": list(analysis.PROFILE_COLUMNS), "probes.csv": list(analysis.PROBE_COLUMNS),
                            "references.csv": list(analysis.REFERENCE_COLUMNS)})
        runs.append(RunMeasure(name, run_dir, result, info, meta, title))
    pooled, summary = pool(runs)
    if len(runs) == 1:
        r = runs[0]
        r.meta["pooled"] = summary
        return MeasureRun(runs, pooled, summary, r.meta, r.title)
    title = (f"{len(runs)} runs of one world ({', '.join(names)}), {n_prompts} prompts x {n_demos} demos, "
             f"k={example_length}, weight {weight}")
    meta = provenance({**config, "runs": [str(d) for d in run_dirs]}, seed, extra_packages=("torch", "matplotlib"))
    meta.update(title=title, world=world_summary(world0), summary=summary,
                runs={r.name: {"run": str(r.run_dir), "summary": r.result.summary, "best": r.result.best}
                      for r in runs},
                elapsed_s=round(time.perf_counter() - t_all, 3),
                tables={"references.csv": list(RUN_REFERENCE_COLUMNS), "pooled.csv": list(POOLED_COLUMNS),
                        "<run>/": f"each run's tables, as listed in <run>/{MEASURE_JSON}"})
    return MeasureRun(runs, pooled, summary, meta, title)
