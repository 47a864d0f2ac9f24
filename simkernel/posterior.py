"""``simkernel bayes`` as a library call: exact Bayes over prompts of growing n, summarised.

:func:`run` samples prompts, runs ``bayes.icl_curve`` over them in chunks and summarises, per n,
the posterior of the true concept, the accuracy of the Bayes predictive, its agreement and TV
with the oracle; :class:`BayesRun` is its result (``results`` protocol: bayes.csv, bayes.json).
The math lives in ``bayes``; this module only runs it and shapes the table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bayes import IclCurve, demo_counts, icl_curve
from .constants import BAYES_COLUMNS
from .metrics import compare, mean_ci, restrict, tie_accuracy
from .world import World

#: Prompts per icl_curve call: one progress step, and the unit that bounds memory.
CHUNK = 128
SUMMARY_METRICS = ("posterior_true", "bayes_accuracy", "oracle_agreement", "tv_oracle", "oracle_accuracy")
SUMMARY_COLUMNS = BAYES_COLUMNS
SUMMARY_DESCRIPTIONS = {
    "posterior_true": "P(true concept | n demonstrations, x_test)",
    "bayes_accuracy": "argmax of the Bayes predictive over the labels == y_test (a tie among m labels scores 1/m)",
    "oracle_agreement": "that argmax == the oracle's argmax (true concept known; tie-fair)",
    "tv_oracle": "total variation between Bayes and the oracle over the labels",
    "oracle_accuracy": "the oracle's argmax == y_test (a ceiling, the same for every n)"}
#: bayes.csv's dtypes (``results.Table``).
SUMMARY_DTYPES = {"n_demos": "int", "metric": "str", "mean": "float", "ci_low": "float", "ci_high": "float",
                  "n_prompts": "int"}


def summary(world: World, prompts, curve: IclCurve, ns) -> tuple[list[dict], int]:
    """Per-n summary of exact Bayes on ``prompts`` (rows with ``SUMMARY_COLUMNS``; metrics
    ``SUMMARY_METRICS``, over the labels, renormalised; mean and 95% normal-approximation CI
    over prompts) and the number of prompts whose posterior is undefined (probability 0 under
    the pretraining mixture) at some n.  A prompt is left out at the n where it is impossible."""
    labels = world.labels
    idx = np.full(world.n_symbols, -1)
    idx[labels] = np.arange(len(labels))
    y = idx[prompts.y_test]
    oracle = restrict(curve.oracle, labels)                                     # (B, L)
    pred = restrict(curve.predictive[:, list(ns)], labels)                      # (B, n, L)
    post_true = curve.posterior[np.arange(len(y)), :, prompts.concepts][:, list(ns)]
    bad = ~np.isfinite(pred).all(axis=-1) | ~np.isfinite(curve.posterior[:, list(ns)]).all(axis=-1)
    both = ~bad & np.isfinite(oracle).all(axis=-1)[:, None]
    m = compare(oracle[:, None], np.where(bad[..., None], 0.0, pred), y)
    per = {"posterior_true": np.where(bad, np.nan, post_true),
           "bayes_accuracy": np.where(bad, np.nan, tie_accuracy(np.where(bad[..., None], 0.0, pred), y)),
           "oracle_agreement": np.where(both, m["agree"], np.nan),
           "tv_oracle": np.where(both, m["tv"], np.nan),
           "oracle_accuracy": np.broadcast_to(tie_accuracy(oracle, y)[:, None], bad.shape)}
    rows = []
    for j, n in enumerate(ns):
        for metric in SUMMARY_METRICS:
            mean, lo, hi, cnt = mean_ci(per[metric][:, j])
            rows.append({"n_demos": int(n), "metric": metric, "mean": float(mean), "ci_low": float(lo),
                         "ci_high": float(hi), "n_prompts": int(cnt)})
    return rows, int(bad.any(axis=1).sum())


@dataclass
class BayesRun:
    """What :func:`run` returns: ``rows`` (``SUMMARY_COLUMNS``) for n = ``ns``, the prompts and
    their :class:`IclCurve`, the count of prompts impossible under the pretraining mixture, and
    ``meta`` (config, seed, package versions, world summary, timings: the JSON of the command)."""

    rows: list
    ns: list
    n_impossible: int
    prompts: object
    curve: IclCurve
    meta: dict
    world: World | None = None

    FILES = ("bayes.csv", "bayes.json")

    def tables(self) -> dict:
        """The result protocol's tables: bayes.csv (main)."""
        from .results import Table

        return {None: Table("bayes.csv", SUMMARY_COLUMNS, SUMMARY_DTYPES, self.rows)}

    def write(self, out) -> list:
        """Publish bayes.csv and bayes.json into the folder ``out`` (created if needed)."""
        from pathlib import Path

        from .store import check_results_dir, publish, write_csv, write_json

        out = check_results_dir(Path(out))
        return publish(out, {"bayes.csv": lambda p: write_csv(p, self.rows, SUMMARY_COLUMNS),
                             "bayes.json": lambda p: write_json(p, dict(self.meta, config=dict(
                                 self.meta["config"], out=str(out))))})

    def summary_lines(self) -> list[str]:
        """What ``simkernel bayes`` prints: the setting, one line per n, the oracle's accuracy
        and the prompts impossible under the pretraining mixture."""
        cfg = self.meta["config"]
        concept = cfg["concept"]
        oracle = next(r for r in self.rows if r["metric"] == "oracle_accuracy")
        return [repr(self.world),
                f"{cfg['n_prompts']} prompts, example length {cfg['example_length']}, concept "
                f"{'from the prior' if concept is None else concept}, seed {self.meta['seed']}",
                *summary_lines(self.rows, self.ns),
                f"oracle accuracy (true concept known): {oracle['mean']:.3f}",
                f"prompts impossible under the pretraining mixture (left out where undefined): "
                f"{self.n_impossible} of {cfg['n_prompts']}"]


def run(world: World | None = None, n_prompts: int = 256, n_demos: int = 64, example_length: int = 2, seed: int = 0,
        concept: int | None = None, method: str = "auto", world_source: dict | None = None,
        progress=None, *, preset: str | None = None, world_seed: int = 0, overrides=None,
        world_file=None) -> BayesRun:
    """``simkernel bayes`` as a library call: sample prompts (every concept from the prior, or
    ``concept``), run :func:`icl_curve` in chunks of ``CHUNK`` prompts and summarise n = 0, 1, 2,
    4, ..., n_demos.  The world: ``world``, or else ``preset`` (default paper-c) at ``world_seed``
    with ``overrides``, or ``world_file``.  ``progress(n_done)`` is called after each chunk;
    ``world_source`` is recorded in the config (how the world was made).  Writes nothing (see
    :meth:`BayesRun.write`)."""
    import time

    from .sampling import sample_prompts
    from .store import provenance, world_summary

    if world is None:
        from .presets import load_world
        world, world_source = load_world(preset, world_seed, overrides, world_file)
    elif preset is not None or overrides or world_file is not None:
        raise ValueError("world is given; preset, overrides and world_file describe a world to build instead")
    if concept is not None and not (0 <= int(concept) < world.n_concepts):
        raise ValueError(f"concept must be in 0..{world.n_concepts - 1}, got {concept}")
    t0 = time.perf_counter()
    prompts = sample_prompts(world, n_prompts, n_demos, example_length, seed, concept=concept)
    parts = []
    for a in range(0, n_prompts, CHUNK):
        b = min(a + CHUNK, n_prompts)
        parts.append(icl_curve(world, prompts.subset(a, b), method=method))
        if progress is not None:
            progress(b)
    curve = IclCurve(*(np.concatenate([getattr(p, f) for p in parts]) for f in IclCurve.__dataclass_fields__))
    ns = demo_counts(n_demos)
    rows, n_bad = summary(world, prompts, curve, ns)
    config = {"command": "bayes", "world": world_source or world.meta, "n_prompts": n_prompts,
              "n_demos": n_demos, "example_length": example_length, "concept": concept, "method": method}
    meta = provenance(config, seed)
    meta.update(world=world_summary(world), n_impossible=n_bad, elapsed_s=round(time.perf_counter() - t0, 3),
                files={"bayes.csv": "tidy table: " + ", ".join(SUMMARY_COLUMNS)},
                metrics=SUMMARY_DESCRIPTIONS)
    return BayesRun(rows, ns, n_bad, prompts, curve, meta, world)


def summary_lines(rows, ns) -> list[str]:
    """The printed table of :func:`summary`'s rows, one line per n."""
    by = {(r["n_demos"], r["metric"]): r["mean"] for r in rows}
    head = f"{'n':>5}  {'P(true concept)':>15}  {'Bayes acc':>9}  {'agree oracle':>12}  {'TV(Bayes,oracle)':>16}"
    out = [head]
    for n in ns:
        out.append(f"{n:>5}  {by[n, 'posterior_true']:>15.3f}  {by[n, 'bayes_accuracy']:>9.3f}  "
                   f"{by[n, 'oracle_agreement']:>12.3f}  {by[n, 'tv_oracle']:>16.3f}")
    return out
