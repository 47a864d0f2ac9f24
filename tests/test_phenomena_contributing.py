"""The phenomena package's public surface: the worked example of docs/guide/contributing.md
runs as written (so it cannot go stale), the result protocol (tables with dtypes, the verdicts
table's canonical JSON), typed effect rows, parameter defaults, and redrawing from a CSV."""

from __future__ import annotations

import csv
import json
import math
import re
import sys
import types
from pathlib import Path

import pytest

from simkernel import phenomena as ph
from simkernel.constants import PHENOMENA

DOC = Path(__file__).resolve().parents[1] / "docs" / "guide" / "contributing.md"


def example_module():
    """The first python block of the contributing page, executed as a module."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "no python block in docs/guide/contributing.md"
    mod = types.ModuleType("shown_example")
    sys.modules[mod.__name__] = mod           # dataclasses look their module up by name
    try:
        exec(compile(blocks[0], str(DOC), "exec"), mod.__dict__)
    finally:
        del sys.modules[mod.__name__]
    return mod


@pytest.fixture
def shown():
    mod = example_module()
    ph.register(mod.PHENOMENON)
    yield mod
    ph.REGISTRY.pop("shown", None)


def test_contributing_example_runs(shown, tmp_path):
    res = ph.run("shown", quick=True, world_seeds=(0, 1), n_prompts=6)
    assert {r["setting"] for r in res.rows} == {"shown:1", "shown:4"}
    assert {r["n_demos"] for r in res.rows} == {1, 4}
    assert {r["n_worlds"] for r in res.rows} == {2} and {r["n_prompts"] for r in res.rows} == {12}
    assert {"bayes", "kernel", "frequency", "oracle"} <= {r["predictor"] for r in res.rows}
    assert res.meta["config"]["shown"] == [1, 4] and res.meta["config"]["n_prompts"] == 6
    assert res.verdict["kernel_change"]["worlds"] == [0, 1] and "kernel" in res.verdict["text"]
    paths = res.write(tmp_path / "o")
    assert sorted(p.name for p in paths) == ["shown.csv", "shown.json", "shown.png"]
    assert ph.defaults("shown", quick=True)["shown"] == [1, 4]
    with pytest.raises(ValueError, match="^shown must be"):
        ph.run("shown", quick=True, shown=(0,))
    # the example is not a built-in: the CLI's names stay as they are
    assert "shown" not in PHENOMENA and ph.NAMES == PHENOMENA


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match="^unknown phenomenon 'nope'; allowed: retrieval, labels, shift, order, prior$"):
        ph.run("nope")


def test_defaults_and_parameter_names():
    assert ph.defaults("order") == {"n_prompts": 200, "example_length": 3, "n_demos": [2, 4, 8, 16, 32],
                                    "n_permutations": 8}
    assert ph.defaults("labels", quick=True)["n_demos"] == 8 and ph.defaults("labels")["n_demos"] == 16
    assert ph.defaults("prior")["priors"] is None
    assert ph.parameter_names() >= {"n_prompts", "example_length", "n_demos", "n_permutations", "fractions", "modes",
                                    "priors", "concepts", "pool_size", "bandwidths", "selectors", "kinds", "shifts",
                                    "targets"}


def test_result_protocol_and_typed_effects(tmp_path):
    from simkernel.results import Result, read_table

    res = ph.run("retrieval", quick=True, world_seeds=(0,), n_prompts=6)
    assert isinstance(res, Result)
    tables = res.tables()
    main, verdicts = tables[None], tables["verdicts"]
    assert main.file == "retrieval.csv" and main.columns == ph.COLUMNS and main.rows == res.rows
    assert main.dtype("n_demos") == "float" and main.dtype("n_prompts") == "int" and main.dtype("setting") == "str"
    assert verdicts.file == "verdicts.csv" and verdicts.columns == ("name", "text", "verdict_json")
    (row,) = verdicts.rows
    assert row["name"] == "retrieval" and row["text"] == res.verdict["text"]
    # the sweep's canonical JSON: sorted keys, no spaces, non-JSON values as str
    assert row["verdict_json"] == json.dumps(res.verdict, sort_keys=True, default=str, separators=(",", ":"))
    assert json.loads(row["verdict_json"])["n_demos"] == res.verdict["n_demos"]
    # typed effects: the same rows, settings as objects whose label is the CSV's string
    effects = res.effects()
    assert [e.row() for e in effects] == res.rows
    by = {e.setting.label: e.setting for e in effects}
    assert by["random"] == ph.retrieval.RANDOM and by["kernel:0.1"] == ph.retrieval.Setting("kernel", 0.1)
    assert by["kernel:0.1"].group == "kernel" and by["kernel:0.1"].value == 0.1 and by["random"].value is None
    # write() publishes the command's own files only; the table reads back typed
    res.write(tmp_path / "o")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["retrieval.csv", "retrieval.json", "retrieval.png"]
    df = read_table(tmp_path / "o" / "retrieval.csv", main.spec()["dtypes"])
    assert df["n_prompts"].dtype.kind == "i" and df["mean"].dtype.kind == "f"


@pytest.mark.parametrize("cls, labels", [
    (ph.labels.Setting, ["flip:0", "format:0.25", "flip:1"]),
    (ph.shift.Setting, ["typo/x_test:0", "rare/demos:0.5"]),
    (ph.retrieval.Setting, ["random", "overlap:0.3", "kernel:inf"]),
    (ph.order.Setting, ["restart", "restart-free"]),
    (ph.prior.Setting, ["prior:rank3"]),
])
def test_setting_labels_round_trip(cls, labels):
    for label in labels:
        assert cls.from_label(label).label == label


def test_redraw_from_the_csv(tmp_path):
    """plot_phenomenon draws a CSV read back (strings) by the phenomenon's figure spec, and any
    other name's table by the generic one."""
    from simkernel.plots import plot_phenomenon

    res = ph.run("labels", quick=True, world_seeds=(0,), n_prompts=6, modes=("flip",))
    res.write(tmp_path / "o")
    with open(tmp_path / "o" / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for name in ("labels", "someone-else"):
        out = plot_phenomenon(rows, tmp_path / f"{name}.png", "t", name)
        assert out.stat().st_size > 1000
    effects = ph.effects_from_rows("labels", rows)
    assert effects[0].setting == ph.labels.Setting("flip", 0.0) and not math.isnan(effects[0].mean)
    with pytest.raises(ValueError, match="no rows"):
        plot_phenomenon([], tmp_path / "x.png", name="labels")
