"""simkernel.report: the battery's configs, the glue from sweeps to claims, and the page (one
Markdown source rendered to HTML; offline; every reference a file beside it; in headless Chromium).
The claims' rules are tested in tests/test_claims.py, whose synthetic tables build the page here."""

from __future__ import annotations

import json
import math
import re
import tomllib
from types import SimpleNamespace

import pandas as pd
import pytest
from test_claims import (around, c1_rows, c1_worlds, c4_worlds, floors_frame, map_rows, SIZES, measure_meta, pooled_frame,
                         retrieval_json)

from simkernel import claims, report
from simkernel.claims import base, c1, c2, c3, c4, c5, c6, c7
from simkernel.report import check_in_browser, write_report


# ---------------------------------------------------------------------- the battery
def test_battery_configs_expand_and_round_trip_toml():
    from simkernel import sweep
    from simkernel.sampling import prompt_length

    for quick in (True, False):
        configs = report.battery(quick)
        assert list(configs) == list(report.SWEEPS)
        for key in ("regime", "converge"):
            assert configs[key]["grid"]["preset"] == ["ginc-small", "paper-c"]
            assert len(configs[key]["grid"]["world_seed"]) == (3 if quick else 20)
        smap = configs["strategies"]
        assert smap["command"] == "attribute" and smap["train"]["snapshot_steps"] == "log"
        assert prompt_length(max(smap["options"]["n_demos"]), smap["options"]["example_length"]) <= \
            smap["train"]["block_size"]
        assert configs["measure"]["train"]["seeds"] == [0, 1, 2]
        zipped = dict(zip(configs["phenomena"]["zip"]["name"], configs["phenomena"]["zip"]["n_demos"]))
        assert zipped["retrieval"] == report.PHENOMENA_N_DEMOS["retrieval"]
        for cfg in configs.values():
            assert tomllib.loads(report.to_toml(cfg)) == cfg
            if cfg["command"] in sweep.COMMANDS:
                assert sweep.expand(cfg)
        # the default map: 4 K x 3 worlds x 2 training seeds x 2 sizes
        assert len(sweep.expand(configs["strategies"])) == (4 if quick else 48)


def test_default_commands_name_each_claims_sweeps(tmp_path):
    cmds = report.default_commands(False, tmp_path / "r", tmp_path / "r" / "sweeps")
    assert cmds["*"] == [f"simkernel report --out {tmp_path / 'r'}"]
    assert [c.split()[2].rsplit("/", 1)[1] for c in cmds["C1"]] == ["regime.toml"]
    assert any("converge.toml" in c for c in cmds["C3"]) and any("phenomena" in c for c in cmds["C7-order"])
    other = report.default_commands(True, tmp_path / "r", tmp_path / "s")
    assert other["*"] == [f"simkernel report --quick --out {tmp_path / 'r'} --sweeps {tmp_path / 's'}"]


# ---------------------------------------------------------------------- from sweeps to claims
class FakeSweep(SimpleNamespace):
    """What claims_from_sweeps reads of a sweep.SweepResult: tables, table(name), jobs."""

    def table(self, name=None):
        return self.frames[name]


def test_claims_from_sweeps_reads_the_tables_and_the_job_folders(tmp_path):
    worlds = pd.concat([c1_worlds(8192, family="ginc-small"), c4_worlds([512.0, 1024.0, 2048.0], family="paper-c")],
                       ignore_index=True)
    fl = floors_frame("ginc-small", 4, lambda w, c: 0.2, lambda w, c: 0.01)
    results = {
        "regime": FakeSweep(tables={None: 1, "worlds": 1}, frames={None: c1_rows(worlds), "worlds": worlds},
                            jobs=[{"status": "done"}]),
        "converge": FakeSweep(tables={None: 1, "floors": 1}, frames={None: None, "floors": fl},
                              jobs=[{"status": "done"}]),
        "strategies": FakeSweep(tables={None: 1}, frames={None: map_rows({(4, "s"): (0.3, 0.1, 0.6, 0.02),
                                                                            (64, "s"): (0.3, 0.1, 0.6, 0.4)})},
                                jobs=[{"status": "done"}]),
        "measure": FakeSweep(tables={None: 1, "pooled": 1}, frames={None: None, "pooled": None},
                             jobs=[{"status": "failed", "error": "ValueError: boom"}]),
    }
    got = {r.claim: r for r in report.claims_from_sweeps(results, SIZES)}
    assert list(got) == [c.id for c in claims.REGISTRY]
    assert got["C1"].families["ginc-small"]["verdict"] == base.SUPPORTED
    assert got["C4"].extra["crossover"]["paper-c"]["worlds_crossed"] == 3
    assert got["C2"].verdict == base.SUPPORTED
    # C5 from the map: judged where the runs are near the Bayes loss, the far region reported outside
    assert got["C5"].verdict == base.SUPPORTED and [p["name"] for p in got["C5"].parts] == ["K = 4, size s"]
    assert any(o["setting"] == "K = 64, size s" for o in got["C5"].outside)
    assert "boom" in got["C6"].text and got["C6"].verdict == base.INCONCLUSIVE
    assert "the phenomena sweep did not run" in got["C7-order"].text


# ---------------------------------------------------------------------- the page
def synthetic_results():
    worlds = pd.concat([c1_worlds(8192, family="ginc-small"), c1_worlds(256, family="paper-c")], ignore_index=True)
    fl = pd.concat([floors_frame(f, 5, lambda w, c: 0.1 + 0.01 * w, lambda w, c: 0.004,
                                 x_of=lambda f_, w, c: 100 * f_ * (1 + c)) for f in ("ginc-small", "paper-c")])
    c4t = pd.concat([c4_worlds([1.0, 1.0, 2.0, 1.0], family="ginc-small"),
                     c4_worlds([1024.0, 2048.0, 1500.0, math.inf], family="paper-c")], ignore_index=True)
    labels = {"n_demos": 16, "fraction": 1.0, "rule": "r",
              "flip": {"bayes": {"mean": -0.38, "ci_low": -0.45, "ci_high": -0.3, "n_prompts": 200}}}
    out = [c1.verdict(worlds, c1_rows(worlds)), c2.verdict(fl), c3.verdict(fl, n_boot=100), c4.verdict(c4t, c1_rows(c4t)),
           c5.verdict(map_rows({(1, "s"): (0.05, 0.2, 0.0, 0.01)}), SIZES),
           c6.verdict(pooled_frame((0.07, 0.03, 0.11), (0.1, 0.07, 0.13)), measure_meta("detected", [0.1, 0.2, 0.15])),
           c7.verdict("retrieval", retrieval_json(around(0.0), around(-0.3, seed=1), around(-0.29, seed=2))),
           c7.verdict("labels", labels)]
    out.append(claims.get("C7-order").not_run("the phenomena sweep did not run"))
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    results = synthetic_results()
    commands = {"*": ["simkernel report --quick --out figures/report"], "C1": ["simkernel sweep r.toml --out s/r"]}
    paths = write_report(results, out, meta={"title": "synthetic <report> & test", "created": "now"},
                         commands=commands)
    return out, results, paths


def test_write_report_files_and_json(written):
    out, results, paths = written
    assert {"index.html", "report.md", "report.json"} <= {p.name for p in paths}
    for r in results:
        png = out / r.figure
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    data = json.loads((out / "report.json").read_text())
    assert [c["claim"] for c in data["claims"]] == [r.claim for r in results]
    for c in data["claims"]:
        assert {"kind", "source", "scope", "families", "checks", "outside", "verdict", "rule", "overall_rule",
                "numbers", "title"} <= set(c)
        assert c["kind"] in base.KINDS and c["verdict"] in base.OVERALL
        assert all(f["verdict"] in base.VERDICTS for f in c["families"].values())
    by = {c["claim"]: c for c in data["claims"]}
    assert set(by["C4"]["crossover"]) == {"ginc-small", "paper-c"}
    assert by["C1"]["verdict"] == base.MIXED and data["overall_rule"] == base.OVERALL_RULE
    assert by["C2"]["checks"][0]["verdict"] == base.PASSED
    assert by["C7-labels"]["outside"][0]["setting"].startswith("flip")
    assert not list(out.glob(".simkernel.*"))                       # publish left no temp folder


def test_headline_table_has_a_column_per_family_and_the_checks_apart(written):
    out, results, _ = written
    page = (out / "index.html").read_text()
    table = page.split('<table id="verdicts"')[1].split("</table>")[0]
    head = re.findall(r"<th>(.*?)</th>", table)
    # C5 is measured in the strategies map's world family (the random preset), a column of its own
    assert head == ["claim", "statement", "kind", "source · scope", "ginc-small", "paper-c", "random", "overall"]
    assert table.count("<tr data-claim=") == len(results)
    row = table.split('<tr data-claim="C1">')[1].split("</tr>")[0]
    assert 'class="v supported"' in row and 'class="v not-reached"' in row and 'class="v mixed"' in row
    assert "not reached by n = 256" in row
    c4row = table.split('<tr data-claim="C4">')[1].split("</tr>")[0]
    assert "n× ≈ 1,500" in c4row and "measured" in c4row
    c5row = table.split('<tr data-claim="C5">')[1].split("</tr>")[0]
    assert c5row.count("–") == 2                                    # measured in the random family only
    c1row = row
    assert c1row.count("–") == 1                                    # C1: in ginc-small and paper-c, not random
    checks = page.split("Identity checks (a failure is a bug, not evidence)")[1].split("</table>")[0]
    assert "Σ_θ* removes the floor" in checks and "passed" in checks
    assert "Outside the claim" in page.split('<section id="c7-labels"')[1]


def test_page_is_the_markdown_rendered_offline(written):
    out, results, _ = written
    page, md = (out / "index.html").read_text(), (out / "report.md").read_text()
    assert "://" not in page and "//cdn" not in page.lower() and "@import" not in page
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert refs
    for ref in refs:
        if ref.startswith("#"):
            assert f'id="{ref[1:]}"' in page
        else:
            assert (out / ref).is_file(), ref
    assert page.count('<section id="') == len(results) == md.count('<section id="')
    assert md.count("\n## ") == len(results) + 1                       # + the identity checks
    # the Markdown tables came out as HTML tables, the fenced commands as code, the text escaped
    assert "<td>ginc-small</td>" in page and "| preset family |" in md
    assert '<code class="language-bash">simkernel sweep r.toml --out s/r' in page
    assert "synthetic &lt;report&gt; &amp; test" in page and "<report>" not in page
    for r in results:
        assert f"]({r.figure})" in md and f'src="{r.figure}"' in page
        assert r.rule.split(" ")[0] in page


def test_markdown_escapes_what_would_become_markup():
    assert report._md("Σ_θ* a * b [x](y) <b> & ε_θ _x_") == r"Σ_θ\* a \* b \[x\](y) &lt;b&gt; &amp; ε_θ \_x\_"
    assert report._cell("a | b") == r"a \| b"
    assert report.source_short(c1.SOURCE) == "THEORY.md §5"
    assert report.source_short(c4.SOURCE) == "project extension"
    assert report.scope_short(c1.SCOPE) == "restart; demonstrations i.i.d. from θ*"


def test_write_report_rejects_bad_claims(tmp_path):
    r = synthetic_results()[0]
    with pytest.raises(ValueError, match="claims"):
        write_report([], tmp_path, meta={}, commands={})
    with pytest.raises(ValueError, match="twice"):
        write_report([r, r], tmp_path, meta={}, commands={})
    with pytest.raises(ValueError, match="Result"):
        write_report([r.as_dict()], tmp_path, meta={}, commands={})


def test_summary_lines():
    rep = report.Report(synthetic_results(), {}, {})
    lines = rep.summary_lines()
    assert lines[0].startswith("C1") and "ginc-small: supported; paper-c: not reached" in lines[0]
    assert any(line.startswith("identity checks: C2 passed") for line in lines)


def test_chromium_missing_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setattr(report.shutil, "which", lambda _name: None)
    with pytest.raises(ValueError, match=r"^chromium not found: apt-get install chromium$"):
        check_in_browser(tmp_path / "index.html", tmp_path / "shot.png")


def _chromium():
    try:
        return report.find_chromium()
    except ValueError:
        return None


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (apt-get install chromium)")
def test_page_in_headless_chromium(written, tmp_path):
    out, results, _ = written
    res = check_in_browser(out / "index.html", out / report.SCREENSHOT)
    assert res["ok"], res["problems"]
    assert res["images_loaded"] == f"{len(results)}/{len(results)}"
    assert res["verdict_rows"] == len(results) == res["sections"]
    shot = out / report.SCREENSHOT
    assert shot.stat().st_size > 20_000
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[:2] == (4000, 1280) and float(img[..., :3].std()) > 0.02      # not a blank page
    # a missing figure is caught
    (out / results[0].figure).rename(tmp_path / "moved.png")
    try:
        bad = check_in_browser(out / "index.html", tmp_path / "shot.png")
        assert not bad["ok"] and any("images loaded" in p for p in bad["problems"])
    finally:
        (tmp_path / "moved.png").rename(out / results[0].figure)




# ---------------------------------------------------------------------- where a report may go
def test_run_refuses_an_out_that_is_not_a_report_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    (tmp_path / "a-file").write_text("x")
    ran = []
    monkeypatch.setattr(report, "battery", lambda quick: ran.append(quick))
    for out in ("/", str(tmp_path / "home"), "~", ".", str(tmp_path), "notes", "a-file"):
        with pytest.raises(ValueError, match=r"^out must ") as e:
            report.run(quick=True, out=out)
        assert "\n" not in str(e.value) and repr(out) in str(e.value)
    assert ran == []                                     # refused before anything ran
    # new, empty, or written by a report before: accepted
    (tmp_path / "empty").mkdir()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.json").write_text("{}")
    for out in ("new", "empty", "old"):
        assert report.check_out(out) == report.Path(out)
    assert report.DEFAULT_OUT == "results/report"


def test_a_quick_reports_summary_says_so():
    results = synthetic_results()
    counts = report.Report(results, {}, {}).summary_lines()
    quick = report.Report(results, {"config": {"quick": True}}, {}).summary_lines()
    line = next(x for x in quick if x.startswith("quick report"))
    assert line.startswith("quick report (CI setting") and line.endswith(counts[quick.index(line)])
    assert not any(x.startswith("quick report") for x in counts)
