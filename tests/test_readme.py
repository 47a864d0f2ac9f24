"""The README's sample outputs cannot go stale: its headline run is rerun here and compared line by
line, and its experiment tables are regenerated from the committed results
(``experiments/tables.py``)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from cli_helpers import ok

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def headline_block() -> list[str]:
    """The code block the Quick start says `simkernel converge --n-demos 1..256` prints."""
    start = README.index("`simkernel converge --n-demos 1..256` prints")
    block = README[start:].split("```", 2)[1]
    return block.strip("\n").splitlines()


def test_headline_output_is_what_the_command_prints(tmp_path):
    """Every printed line but the timing of the last one, as the README shows it."""
    result = ok(["converge", "--n-demos", "1..256", "--out", tmp_path])
    got = result.output.rstrip("\n").splitlines()
    want = headline_block()
    assert len(got) == len(want)
    for g, w in zip(got[:-1], want[:-1]):
        assert g == w
    # the last line names the files and the time: only the time (and the folder) may differ
    norm = lambda line: re.sub(r"\(\d+\.\d s\)", "(T s)", line.replace(str(tmp_path), "figures"))  # noqa: E731
    assert norm(got[-1]) == norm(want[-1])
    assert result.stderr == ""                 # the headline world warns about nothing


def test_experiment_tables_match_the_committed_results():
    spec = importlib.util.spec_from_file_location("tables", ROOT / "experiments" / "tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    for name, text in tables.all_tables().items():
        marker = f"<!-- experiments/tables.py {name} -->\n"
        if marker not in README:
            continue                            # not every table is shown
        assert marker + text in README, f"README table {name!r} differs from `python experiments/tables.py {name}`"
    shown = re.findall(r"<!-- experiments/tables.py (\S+) -->", README)
    assert {"table3", "bias", "summary:sigma_ablation"} <= set(shown)


def test_bayes_output_is_what_the_command_prints(tmp_path):
    start = README.index("`simkernel bayes` (all defaults) prints")
    want = README[start:].split("```", 2)[1].strip("\n").splitlines()
    got = ok(["bayes", "--out", tmp_path]).output.rstrip("\n").splitlines()
    assert got[:-1] == want[:-1]
    norm = lambda line: re.sub(r"\(\d+\.\d s\)", "(T s)", line.replace(str(tmp_path), "runs/bayes"))  # noqa: E731
    assert norm(got[-1]) == norm(want[-1])
