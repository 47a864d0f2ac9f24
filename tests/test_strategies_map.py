"""simkernel strategies, the map: its config's checks (one line before anything is trained or
written), worlds with unseen concepts from the preset, snapshot hashes in done.json, the map
through a real Dask cluster (every cell, resumable), its summary over worlds and its figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from simkernel import strategies as S
from simkernel.presets import make_world, with_unseen

TINY = {
    "world": {"k": [1, 3], "seeds": [0, 1], "n_unseen": 2, "n_states": 4, "n_symbols": 6, "concentration": 0.3},
    "sizes": {"xs": {"model": "tiny", "n_embd": 16, "n_layer": 1, "n_head": 2}},
    "train": {"seeds": [0], "n_docs": 20, "doc_length": 64, "block_size": 24, "batch_size": 4, "max_steps": 6,
              "warmup_steps": 1, "eval_every": 3, "eval_docs": 2, "eval_blocks": 4, "target_gap": 1e-9},
    "eval": {"n_demos": [1, 3], "n_prompts": 12, "example_length": 3, "n_boot": 3},
}


# ---------------------------------------------------------------------- the world
def test_n_unseen_is_with_unseen_at_the_world_seed_and_leaves_other_worlds_alone():
    w = make_world("random", 5, n_concepts=3, n_unseen=2, n_states=4)
    ref = with_unseen(make_world("random", 5, n_concepts=3, n_states=4), 2, seed=5)
    for a in ("prior", "start", "transition", "emission"):
        np.testing.assert_array_equal(getattr(w, a), getattr(ref, a))
    assert w.meta["options"]["n_unseen"] == 2 and list(w.prior[3:]) == [0.0, 0.0]
    # built without it, a world keeps the options (and so the run folders) it always had
    assert "n_unseen" not in make_world("random", 5).meta["options"]
    # the unseen concepts do not depend on K: the same new concepts beside every K of a world seed
    w8 = make_world("random", 5, n_concepts=8, n_unseen=2, n_states=4)
    np.testing.assert_array_equal(w8.emission[8:], w.emission[3:])
    assert not any(np.allclose(w8.emission[8 + u], w8.emission[c]) for u in range(2) for c in range(8))


def test_n_unseen_is_only_for_the_random_preset():
    with pytest.raises(ValueError, match="unknown option 'n_unseen' for preset 'ginc-small'"):
        make_world("ginc-small", 0, n_unseen=2)


# ---------------------------------------------------------------------- the config
@pytest.mark.parametrize("patch, message", [
    ({"eval": {"predictor_names": ["bayes", "kernal"]}}, "unknown predictor 'kernal'"),
    ({"world": {"k": [2, 600]}}, "k 600 with n_unseen 2 gives 602 concepts; the random preset's map allows at most 512"),
    ({"world": {"k": [0, 2]}}, "k"),
    ({"eval": {"n_demos": [1, 8]}}, "n_demos 8 needs prompts of 34 symbols, beyond the trained context (block_size 24); with example length 3 at most n = 5"),
    ({"world": {"concentraton": 0.1}}, "unknown world option 'concentraton' (did you mean 'concentration'?)"),
    ({"train": {"runs_dir": "x"}}, "unknown training option 'runs_dir'"),
    ({"sizes": {"big": {"model": "huge"}}}, "size 'big' must be a table with model = one of"),
    ({"evals": {}}, "unknown key 'evals' in the strategies config (did you mean 'eval'?)"),
])
def test_bad_config_is_one_line(patch, message):
    cfg = {k: dict(v) for k, v in TINY.items()}
    for key, value in patch.items():
        cfg[key] = dict(cfg.get(key, {}), **value) if key != "sizes" else value
    with pytest.raises(ValueError) as e:
        S.check_map_config(cfg)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_config_on_the_command_line_exits_2_and_writes_nothing(tmp_path):
    from simkernel.cli import main

    cfg = tmp_path / "map.toml"
    cfg.write_text('[world]\nk = [1, 2]\n[eval]\npredictor_names = ["bayes", "kernal"]\n')
    r = CliRunner().invoke(main, ["strategies", str(cfg), "--out", str(tmp_path / "out"), "--runs",
                                  str(tmp_path / "runs")])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines()[-1].startswith("error: unknown predictor 'kernal'")
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_an_output_in_the_way_is_refused_before_anything_is_trained(tmp_path):
    from simkernel.cli import main

    (tmp_path / "file").write_text("x")
    r = CliRunner().invoke(main, ["strategies", "--quick", "--out", str(tmp_path / "file"), "--runs",
                                  str(tmp_path / "runs")])
    assert r.exit_code == 2 and "is a file" in r.output
    with pytest.raises(ValueError, match="exists and is not a folder"):        # the library's own check
        S.run(TINY, tmp_path / "file", runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_the_sweep_config_trains_every_cell_and_attributes_it():
    from simkernel import sweep
    from simkernel.commands import run_function

    scfg = S.sweep_config(TINY, "R")
    jobs = sweep.expand(scfg)
    assert len(jobs) == 2 * 2 * 1 * 1
    assert {j.train["overrides"]["n_concepts"] for j in jobs} == {1, 3}
    assert all(j.train["runs_dir"] == "R" and j.train["snapshot_steps"] == "log" for j in jobs)
    assert run_function("attribute") is S.evaluate


# ---------------------------------------------------------------------- the map on Dask
@pytest.fixture(scope="module")
def tiny_map(cluster, tmp_path_factory):
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("map")
    res = S.run(TINY, root / "out", runs_dir=root / "runs", scheduler=cluster.scheduler_address)
    return res, root


def test_the_map_has_every_cell_and_step(tiny_map):
    res, root = tiny_map
    assert not res.missing
    cells = {tuple(r[c] for c in S.MAP_COLUMNS) for r in res.rows}
    assert cells == {(k, "xs", w, 0) for k in (1, 3) for w in (0, 1)}
    # log snapshots 1, 2, 4 and the final checkpoint (step 6), each scored at every n and split
    assert {r["step"] for r in res.rows} == {1, 2, 4, 6}
    assert {(r["n_demos"], r["concepts"]) for r in res.rows} == {(n, s) for n in (1, 3) for s in ("seen", "unseen")}
    assert {r["predictor"] for r in res.rows if r["metric"] == "weight"} == set(S.MIXTURE_OF)
    gaps = [r["mean"] for r in res.rows if r["metric"] == "gap" and r["step"] == 6]
    assert gaps and all(np.isfinite(gaps))
    paths = res.write(root / "out")
    assert sorted(p.name for p in paths) == sorted(S.StrategiesMap.FILES)
    meta = json.loads((root / "out" / "strategies.json").read_text())
    assert meta["config"]["world"]["k"] == [1, 3] and meta["missing"] == [] and "versions" in meta


def test_the_summary_is_over_worlds_with_seeds_averaged_first(tiny_map):
    from simkernel.metrics import unit_ci

    res, _ = tiny_map
    key = (3, "xs", 6, 3, "unseen", "bayes", "tv")
    rows = [r for r in res.rows if (r["k"], r["size"], r["step"], r["n_demos"], r["concepts"], r["predictor"],
                                    r["metric"]) == key]
    got = next(r for r in res.summary if tuple(r[c] for c in S.SUMMARY_COLUMNS[:7]) == key)
    m, lo, hi, w = unit_ci([r["mean"] for r in rows], [r["world_seed"] for r in rows])
    assert (got["n_worlds"], got["n_runs"]) == (2, 2) and w == 2
    assert got["mean"] == pytest.approx(m, rel=1e-5) and got["ci_low"] == pytest.approx(lo, rel=1e-5)


def test_the_map_resumes_without_training_or_scoring_again(tiny_map, cluster):
    from simkernel import runs

    res, root = tiny_map
    again = S.run(TINY, root / "out", runs_dir=root / "runs", scheduler=cluster.scheduler_address)
    assert not any(j["ran"] for j in again.meta["jobs"])
    import pandas as pd

    pd.testing.assert_frame_equal(pd.DataFrame(again.rows), pd.DataFrame(res.rows))   # NaN gaps before the first eval
    # every run records its snapshots' hashes, so a damaged snapshot is found
    run_dir = next(p for p in (root / "runs").iterdir() if (p / "snapshots").is_dir())
    done = json.loads((run_dir / "done.json").read_text())
    assert any(k.startswith("snapshots/step-0000004/") for k in done["outputs"])
    weights = run_dir / "snapshots" / "step-0000004" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert any("snapshots/step-0000004/model.safetensors" in p for p in runs.verify_run(run_dir))


def test_the_figures_come_from_the_summary_alone(tiny_map, tmp_path):
    from simkernel import plots
    from simkernel.results import read_table

    res, root = tiny_map
    res.write(tmp_path)
    back = read_table(tmp_path / "summary.csv", S.SUMMARY_DTYPES).to_dict("records")
    paths = plots.plot_strategies(back, tmp_path, components=res.components)
    assert [p.name for p in paths] == list(plots.strategies.FIGURES)
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_closest_picks_the_smallest_mean_tv():
    meta = {"config": {"eval": {"n_demos": [4], "mixture_of": ["bayes", "kernel", "ngram"]}}}
    summary = [dict(k=2, size="s", step=8, n_demos=4, concepts="seen", predictor=p, metric="tv", mean=v, ci_low=v,
                    ci_high=v, n_worlds=3, n_runs=6) for p, v in (("bayes", 0.3), ("kernel", 0.1), ("ngram", 0.2),
                                                                   ("oracle", 0.01))]
    summary.append(dict(summary[0], predictor="kernel", metric="weight", mean=0.7))
    m = S.StrategiesMap([], summary, [], meta)
    # the oracle is not a component: nearer, but not a strategy a model could run
    assert m.closest("seen") == {(2, "s", 8): ("kernel", 0.1, 0.7)}


def test_the_published_config_is_the_default_map():
    import tomllib
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "strategies" / "default.toml"
    cfg = tomllib.loads(path.read_text())
    assert {k: v for k, v in cfg.items() if k != "description"} == S.DEFAULT_MAP
    # the floor for the default map: >= 4 K, >= 3 worlds, >= 2 training seeds, 2 sizes, log snapshots
    m = S.check_map_config(cfg)
    assert len(m["world"]["k"]) >= 4 and len(m["world"]["seeds"]) >= 3 and len(m["train"]["seeds"]) >= 2
    assert len(m["sizes"]) >= 2 and m["train"]["snapshot_steps"] == "log"
