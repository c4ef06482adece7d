"""`edge-search report`: one self-contained HTML file, checked in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import optuna
import pytest

from edge_search.cli import main
from edge_search.pareto import pareto_points
from tests.conftest import require
from tests.dashboards import browser
from tests.shipping_study import STUDY, enter, shipping_study

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[2] / "docs"
FIGURES = ("pareto_front", "parallel_coordinates", "hypervolume", "latency_distributions", "knob_effects")


@pytest.fixture()
def report(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
           capsys: pytest.CaptureFixture[str]) -> Path:
    folder = enter(shipping_study(tmp_path_factory), monkeypatch)
    out = folder / "out" / "report.html"
    assert main(["report", "--study", STUDY, "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    return out


def test_report_is_one_self_contained_file(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    scripts_from_elsewhere = re.findall(r"<script[^>]+src=[^>]*>", text)
    assert scripts_from_elsewhere == []  # plotly.js is inlined: no CDN, opens offline
    assert len(text) > 3_000_000  # plotly.min.js itself is ~4.6 MB
    for key in FIGURES:
        assert f'id="fig-{key}"' in text
    study = optuna.load_study(study_name=STUDY, storage="sqlite:///edge-search.db")
    rows = re.findall(r"<tr><td data-v=\"(\d+)\"", text)
    assert [int(r) for r in rows] == [p.trial for p in pareto_points(study)]


def test_unknown_study_is_one_line_exit_2(report: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--study", "nope", "-o", "x.html"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no study named 'nope'" in err[0]


def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    require(browser.missing(), "EDGE_SEARCH_REQUIRE_BROWSER")
    with browser.chromium() as driver:
        driver.get(report.as_uri())
        deadline = time.monotonic() + 30
        count = 0
        while time.monotonic() < deadline:
            count = driver.execute_script(
                "return document.querySelectorAll('.js-plotly-plot .main-svg').length")
            if count >= 2 * len(FIGURES):  # every plot draws two SVG layers when done
                break
            time.sleep(0.2)
        assert count >= 2 * len(FIGURES), count
        js = driver.execute_script

        def n_of(selector: str) -> int:
            return int(js(f"return document.querySelectorAll('{selector}').length"))

        for key in FIGURES:  # each figure has rendered plot elements of its kind
            assert n_of(f"#fig-{key}.js-plotly-plot .main-svg") >= 2, key
        assert n_of("#fig-pareto_front .scatterlayer .point") >= 6 * 3
        assert n_of("#fig-parallel_coordinates .axis-title") >= 4
        assert n_of("#fig-hypervolume .scatterlayer .point") == 6
        assert n_of("#fig-latency_distributions .violinlayer path") > 0
        assert n_of("#fig-knob_effects .boxlayer path") > 0
        # the front table sorts on a click: by latency (column 3), then descending
        table = "#front tbody tr"
        n_rows = js(f"return document.querySelectorAll('{table}').length")
        assert n_rows >= 1
        header = driver.find_element("css selector", "#front th:nth-child(3)")
        header.click()
        col = (f"return Array.from(document.querySelectorAll('{table}'))"
               ".map(r => parseFloat(r.cells[2].dataset.v))")
        up = js(col)
        assert up == sorted(up)
        header.click()
        assert js(col) == sorted(up, reverse=True)
        errors = browser.console_errors(driver)
        assert errors == [], errors
        height = min(4000, int(js("return document.body.scrollHeight")) + 200)  # + browser chrome
        driver.set_window_size(1400, height)  # the whole report (up to 4000 px) in one picture
        time.sleep(1.0)  # plots are responsive: let them redraw at the new size
        png = driver.get_screenshot_as_png()
    assert not browser.is_blank(png)
    (tmp_path / "report.png").write_bytes(png)
    if os.environ.get("EDGE_SEARCH_UPDATE_DOCS"):  # the docs' picture: made by this test
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "report.png", DOCS / "report.png")
