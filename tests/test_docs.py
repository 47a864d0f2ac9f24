"""The README's and the docs' sample outputs, tables and module graph cannot go stale.

- Every output block is marked by the command it shows, ``<!-- output: COMMAND -->`` (stdout) or
  ``<!-- output (stderr): COMMAND -->``, right above a ```` ```text ```` block;
  ``<!-- output: python -->`` marks what the ```` ```python ```` block above it prints. Each
  command is run here as a user would run it (``bash -c`` in a fresh folder, the installed
  ``simkernel``, nothing cached, no network), and its output must equal the block line by line,
  but for timings ``(1.2 s)``, the folder it ran in and the hash of the llm's cache file. A text
  block without a marker fails: every sample output is either checked here or not shown.
- The experiment tables (``<!-- experiments/tables.py NAME -->``) are regenerated from the
  committed results in ``figures/`` by ``experiments/tables.py``, and every committed result
  JSON there has the keys a fresh run of its command writes now.
- The module table of docs/architecture.md is regenerated from the source by
  ``docs/gen_import_graph.py``.
- Every ``simkernel ...`` command line in a bash block or in inline code names real
  subcommands and options; every Python block compiles; every public module has an API page.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
#: The README's two Quick start commands, exactly.
QUICK_START = ("pip install -e . torch==2.13.0 && simkernel converge --n-demos 1..256",
               "pip install -e '.[test]' torch==2.13.0 && python -m pytest -q")
#: The documented one-liner that makes the tiny local model of docs/guide/llm.md.
TINY_LLM_LINE = ("python -c \"import sys; sys.path.insert(0, 'tests'); from llm_helpers import make_tiny_llm_dir; "
                 "make_tiny_llm_dir('tiny-llm')\"")
FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
MARKER = re.compile(r"<!-- output( \(stderr\))?: (.+?) -->[ \t]*\n$")
PLACEHOLDER = "/path/to"


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def blocks(path: Path):
    """(line number, info string, body, the text before the fence) of every fenced block."""
    text = path.read_text()
    for m in FENCE.finditer(text):
        yield text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2), text[:m.start()]


def output_blocks():
    """(id, command, stream, expected text, python code or None) of every marked output block."""
    out = []
    for path in doc_files():
        last_python = None
        for line, info, body, before in blocks(path):
            if info == "python":
                last_python = body
            m = MARKER.search(before[-400:])
            if info != "text" or not m:
                continue
            command, stream = m.group(2), "stderr" if m.group(1) else "stdout"
            code = None
            if command == "python":
                assert last_python is not None, f"{rel(path)}:{line}: `output: python` without a Python block above"
                code = last_python
            out.append((f"{rel(path)}:{line}", command, stream, body, code))
    return out


# ---------------------------------------------------------------------- running a shown command
def _sandbox(tmp: Path, command: str) -> Path:
    """A fresh folder to run one command in, holding what a repository checkout offers it."""
    tmp.mkdir(parents=True)
    for name in ("simkernel", "tests"):                 # read-only inputs: the shipped data, the helpers
        (tmp / name).symlink_to(ROOT / name, target_is_directory=True)
    if re.search(r"(^|\s)figures(\s|/|$)", command) and "--n-demos" not in command:
        shutil.copytree(ROOT / "figures", tmp / "figures")   # a copy: a command may write there
    return tmp


def _env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SIMKERNEL_"))}
    env.update(HF_HOME=str(tmp / "hf-home"), SIMKERNEL_PROGRESS="none", TRANSFORMERS_VERBOSITY="error",
               MPLBACKEND="Agg", HF_HUB_DISABLE_TELEMETRY="1")
    return env


@lru_cache(maxsize=None)
def tiny_llm(base: str) -> Path:
    """The tiny model, made by the one-liner docs/guide/llm.md tells the reader to run."""
    assert TINY_LLM_LINE in (DOCS / "guide" / "llm.md").read_text()
    where = _sandbox(Path(base) / "tiny-llm-maker", TINY_LLM_LINE)
    p = subprocess.run(["bash", "-c", TINY_LLM_LINE], cwd=where, env=_env(where), capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert (where / "tiny-llm" / "config.json").is_file()
    return where / "tiny-llm"


@lru_cache(maxsize=None)
def run_shown(command: str, code: str | None, base: str) -> tuple[int, str, str, tuple[str, ...]]:
    """(exit status, stdout, stderr, the folders to mask) of one shown command, run once per session."""
    n = len(list(Path(base).glob("run-*")))
    where = _sandbox(Path(base) / f"run-{n}", command)
    masks = [str(where)]
    if re.search(r"(^|\s)tiny-llm(\s|$)", command):
        model = tiny_llm(base)
        (where / "tiny-llm").symlink_to(model, target_is_directory=True)
        masks.append(str(model.parent))
    if code is not None:
        (where / "example.py").write_text(code)
        argv = [sys.executable, "example.py"]
    else:
        argv = ["bash", "-c", command]
    p = subprocess.run(argv, cwd=where, env=_env(where), capture_output=True, text=True, timeout=900)
    return p.returncode, p.stdout, p.stderr, tuple(masks)


def masked(text: str, folders) -> list[str]:
    for f in sorted(folders, key=len, reverse=True):
        text = text.replace(f, PLACEHOLDER)
    text = re.sub(r"\(\d+(\.\d+)? s\)", "(T s)", text)
    text = re.sub(r"outputs-[0-9a-f]{16}\.npz", "outputs-HASH.npz", text)
    return text.rstrip("\n").splitlines()


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("shown"))


OUTPUTS = output_blocks()


@pytest.mark.parametrize("where,command,stream,expected,code", OUTPUTS, ids=[o[0] for o in OUTPUTS])
def test_shown_output_is_what_the_command_prints(base, where, command, stream, expected, code):
    status, stdout, stderr, folders = run_shown(command, code, base)
    if stream == "stdout":
        assert status == 0, f"{where}: `{command}` failed:\n{stderr}"
        got = stdout
    else:
        assert status != 0, f"{where}: `{command}` was shown failing, but it succeeded"
        got = stderr
    got, want = masked(got, folders), masked(expected, ())
    assert got == want, f"{where}: `{command}` prints (timings masked):\n" + "\n".join(got)


def test_the_headline_world_warns_about_nothing(base):
    status, _out, stderr, _ = run_shown("simkernel converge --n-demos 1..256", None, base)
    assert status == 0 and stderr == ""


def test_the_headline_output_is_shown_and_checked_in_the_readme():
    shown = {(where.split(":")[0], command) for where, command, *_ in OUTPUTS}
    assert ("README.md", "simkernel converge --n-demos 1..256") in shown
    assert ("README.md", "python") in shown                    # the short example, run and compared
    assert ("docs/guide/bayes.md", "simkernel bayes") in shown


def test_every_output_block_is_checked():
    """A code block is a command to type (bash, python, toml) or an output checked above."""
    marked = {o[0] for o in OUTPUTS}
    for path in doc_files():
        for line, info, _body, _before in blocks(path):
            assert info in ("bash", "python", "toml", "text"), f"{rel(path)}:{line}: a block needs a language"
            if info == "text":
                assert f"{rel(path)}:{line}" in marked, \
                    f"{rel(path)}:{line}: an output block needs <!-- output: COMMAND --> right above it"


def test_python_blocks_compile():
    for path in doc_files():
        for line, info, body, _before in blocks(path):
            if info == "python":
                compile(body, f"{rel(path)}:{line}", "exec")


# ---------------------------------------------------------------------- generated tables
def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_experiment_tables_match_the_committed_results():
    tables = _load(ROOT / "experiments" / "tables.py").all_tables()
    shown = set()
    for path in doc_files():
        text = path.read_text()
        for name in re.findall(r"<!-- experiments/tables.py (\S+) -->", text):
            assert name in tables, f"{rel(path)}: unknown table {name!r}"
            marker = f"<!-- experiments/tables.py {name} -->\n"
            assert marker + tables[name] in text, \
                f"{rel(path)}: table {name!r} differs from `python experiments/tables.py {name}`"
            shown.add(name)
    assert {"table3", "bias", "summary:sigma_ablation", "summary:ginc", "summary:ginc_ood"} <= shown


#: How to make a fresh, tiny result of each command whose results are committed, for their keys.
TINY_WORLD = ["--preset", "random", "--set", "n_states=3", "--set", "n_symbols=6"]


def _fresh_json(command: str, name: str, tmp: Path) -> dict:
    import json

    from cli_helpers import ok

    out = tmp / f"{command}-{name}"
    if not out.exists():
        if command == "converge":
            ok(["converge", *TINY_WORLD, "--n-prompts", "6", "--n-demos", "1..4", "--out", out])
        else:
            ok(["phenomena", name, "--quick", "--out", out])
    return json.loads((out / f"{name}.json").read_text())


def _schema(d: dict) -> tuple:
    return sorted(d), sorted(d.get("config", {}))


def test_committed_results_have_the_schema_the_code_writes(tmp_path):
    """Every committed result JSON in figures/ of a command that runs in seconds (converge,
    phenomena) has the top-level and config keys that a fresh run of that command writes now:
    rerun its experiments/*.toml (python experiments/run.py) when the code's schema changes.
    (icl-eval, measure and llm-world results need a trained model and are not checked here.)"""
    import json

    stale = []
    checked = 0
    for path in sorted((ROOT / "figures").rglob("*.json")):
        d = json.loads(path.read_text())
        command = d.get("config", {}).get("command") if isinstance(d.get("config"), dict) else None
        if command not in ("converge", "phenomena"):
            continue
        fresh = _fresh_json(command, path.stem, tmp_path)
        checked += 1
        if _schema(d) != _schema(fresh):
            (top, cfg), (ftop, fcfg) = _schema(d), _schema(fresh)
            stale.append(f"{rel(path)}: missing {sorted(set(ftop) - set(top)) + sorted(set(fcfg) - set(cfg))}, "
                         f"extra {sorted(set(top) - set(ftop)) + sorted(set(cfg) - set(fcfg))}")
    assert checked >= 2 and (ROOT / "figures" / "convergence.json").is_file()
    assert not stale, "stale committed results (rerun their experiments config):\n" + "\n".join(stale)


def test_module_table_is_what_the_source_imports():
    gen = _load(DOCS / "gen_import_graph.py")
    assert gen.block() in (DOCS / "architecture.md").read_text(), \
        "docs/architecture.md is stale: run `python docs/gen_import_graph.py --write`"


def test_capture_and_analysis_import_nothing_of_the_simulator():
    graph = _load(DOCS / "gen_import_graph.py").graph()
    for start in ("capture", "analysis"):
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            for dep in set().union(*graph[m]) - seen:
                seen.add(dep)
                todo.append(dep)
        assert not seen & {"world", "bayes", "kernel", "sampling", "presets"}, (start, sorted(seen))


def test_every_public_module_has_an_api_page_in_the_nav():
    modules = {p.stem for p in (ROOT / "simkernel").glob("*.py")} - {"__init__"}
    # the command line is documented by the guide (docs/guide/), not by API pages
    packages = {p.parent.name for p in (ROOT / "simkernel").glob("*/__init__.py")} - {"cli"}
    pages = {p.stem for p in (DOCS / "api").glob("*.md")} - {"index"}
    assert pages == modules, f"add docs/api/<module>.md (and a nav entry) for {sorted(modules - pages)}; " \
                             f"remove {sorted(pages - modules)}"
    nav = (ROOT / "mkdocs.yml").read_text()
    index = (DOCS / "api" / "index.md").read_text()
    for m in modules:
        assert f"::: simkernel.{m}\n" in (DOCS / "api" / f"{m}.md").read_text()
        assert f"api/{m}.md" in nav, f"mkdocs.yml's nav lacks api/{m}.md"
        assert f"({m}.md)" in index, f"docs/api/index.md does not list {m}"
    # a package: an index page for the package and one page per module in it
    for pkg in packages:
        subs = {p.stem for p in (ROOT / "simkernel" / pkg).glob("*.py")} - {"__init__"}
        folder = DOCS / "api" / pkg
        got = {p.stem for p in folder.glob("*.md")} - {"index"}
        assert got == subs, f"docs/api/{pkg}/: add pages for {sorted(subs - got)}; remove {sorted(got - subs)}"
        assert f"::: simkernel.{pkg}\n" in (folder / "index.md").read_text()
        assert f"({pkg}/index.md)" in index, f"docs/api/index.md does not list the package {pkg}"
        for m in subs:
            assert f"::: simkernel.{pkg}.{m}\n" in (folder / f"{m}.md").read_text()
            assert f"api/{pkg}/{m}.md" in nav, f"mkdocs.yml's nav lacks api/{pkg}/{m}.md"
            assert f"({m}.md)" in (folder / "index.md").read_text(), f"docs/api/{pkg}/index.md does not list {m}"


# ---------------------------------------------------------------------- command lines in the text
def _click_tree():
    import click

    from simkernel.cli import main

    def opts(cmd):
        return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")} | {"--help", "-h"}

    return main, opts, click.Group


def shown_command_lines():
    """(where, tokens) of every simkernel invocation in bash blocks and inline code."""
    out = []
    for path in doc_files():
        text = path.read_text()
        for line, info, body, _before in blocks(path):
            if info == "bash":
                for i, raw in enumerate(body.replace("\\\n", " ").splitlines()):
                    out.append((f"{rel(path)}:{line + 1 + i}", raw))
        prose = FENCE.sub("", text)
        for m in re.finditer(r"`(simkernel [^`]+)`", prose):
            out.append((f"{rel(path)} (inline)", m.group(1)))
    calls = []
    for where, raw in out:
        try:
            tokens = shlex.split(raw, comments=True)
        except ValueError:
            continue
        while tokens:
            cut = tokens.index("&&") if "&&" in tokens else len(tokens)
            part, tokens = tokens[:cut], tokens[cut + 1:]
            if "simkernel" in part:
                calls.append((where, part[part.index("simkernel") + 1:]))
            elif "simkernel.cli" in part:
                calls.append((where, part[part.index("simkernel.cli") + 1:]))
    return calls


def test_shown_command_lines_use_real_subcommands_and_options():
    main, opts, Group = _click_tree()
    calls = shown_command_lines()
    assert len(calls) > 40
    for where, args in calls:
        cmd, path = main, ["simkernel"]
        while isinstance(cmd, Group) and args and not args[0].startswith("-") and not args[0].isupper():
            assert args[0] in cmd.commands, f"{where}: `{' '.join(path)} {args[0]}` is not a command"
            cmd, path, args = cmd.commands[args[0]], path + [args[0]], args[1:]
        known = opts(cmd) | ({"--version"} if cmd is main else set())
        for a in args:
            name = a.strip("[]").split("=")[0]
            if name.startswith("--") and len(name) > 2:
                assert name in known, f"{where}: `{' '.join(path)}` has no option {name}"


# ---------------------------------------------------------------------- the README
def test_readme_is_short_and_keeps_the_two_quick_start_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    quick = text[text.index("## Quick start"):]
    bash = [body.strip() for body in re.findall(r"```bash\n(.*?)```", quick, re.DOTALL)][:2]
    assert tuple(bash) == QUICK_START
    assert '"torch==2.13.0"' in (ROOT / "pyproject.toml").read_text()


def test_readme_links_resolve():
    """Relative links in the README (read on GitHub, outside the docs site) point at files."""
    text = FENCE.sub("", README.read_text())
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to missing {target}"


def test_docs_extra_builds_offline():
    """The site has no build step that fetches anything: no plugin but these, theme fonts off."""
    cfg = (ROOT / "mkdocs.yml").read_text()
    plugins = re.findall(r"^  - (\w[\w-]*)", cfg.split("\nplugins:\n", 1)[1].split("\n\n", 1)[0], re.MULTILINE)
    assert set(plugins) <= {"search", "autorefs", "mkdocstrings"}, plugins
    assert re.search(r"^  font: false$", cfg, re.MULTILINE)
    assert "\nstrict: true\n" in cfg
    for helper in ("hooks.py", "griffe_docstrings.py"):          # neither can reach the network
        tree = ast.parse((DOCS / helper).read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert imported <= {"__future__", "glob", "html", "os", "posixpath", "re", "griffe", "mkdocs"}, imported
