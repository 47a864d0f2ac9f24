"""The shape of the package (issue 20's measures), checked on the source so it cannot drift back:
modules a newcomer can read, dependencies that point down, distinct names for distinct things."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "simkernel"
SOURCES = sorted(ROOT.rglob("*.py"))
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 80


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT.parent))


@pytest.mark.parametrize("path", SOURCES, ids=_name)
def test_no_module_is_over_800_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_MODULE_LINES, f"{_name(path)} has {n} lines (at most {MAX_MODULE_LINES}): split it by job"


def test_no_function_is_over_80_lines_outside_plotting():
    # figure-drawing code is a list of artist calls, read top to bottom: exempt, as the issue says
    long = []
    for path in SOURCES:
        if path.parent.name == "plots":
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{_name(path)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 80 lines: " + "; ".join(long)


def test_no_private_name_is_imported_across_modules():
    bad = []
    for path in SOURCES:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("simkernel")):
                bad += [f"{_name(path)}:{node.lineno} {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "private names imported from another module: " + "; ".join(bad)


def _defined(path: Path) -> set:
    """The public names a module defines itself (functions, classes, assignments at top level)."""
    out = set()
    for node in _tree(path).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out |= {t.id for t in targets if isinstance(t, ast.Name)}
    return {n for n in out if not n.startswith("_")}


def test_the_two_llm_branches_share_no_public_name_but_run():
    shared = _defined(ROOT / "llm.py") & _defined(ROOT / "llm_world.py")
    assert shared == {"run"}, f"llm and llm_world both define {sorted(shared - {'run'})}: give distinct things distinct names"


@pytest.mark.parametrize("module", ["bayes", "kernel", "world", "metrics"])
def test_math_modules_hold_no_command(module):
    # a command wrapper (a run() that samples, scores and returns a result) lives above the math
    assert "run" not in _defined(ROOT / f"{module}.py")


def test_store_is_a_leaf():
    tree = _tree(ROOT / "store.py")
    typing_only = {id(sub) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING" for sub in node.body}
    imports = {node.module for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and node.level > 0 and id(node) not in typing_only}
    # validate and constants are leaves below store; nothing of the simulator (type hints aside)
    assert imports <= {"validate", "constants"}, f"store imports {sorted(imports)} at run time"
