"""Datasette as documented: configuration for any file name, for 0.65 and 1.0, and the dashboard in Chromium."""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from analysis_support import fixture_database

DOCS = Path(__file__).resolve().parent.parent / "docs"
spec = importlib.util.spec_from_file_location("datasette_config", DOCS / "datasette_config.py")
assert spec is not None and spec.loader is not None
datasette_config = importlib.util.module_from_spec(spec)
spec.loader.exec_module(datasette_config)


@pytest.fixture(scope="module")
def account_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixtures in a database whose file is not called mailhook.db."""
    return fixture_database(tmp_path_factory.mktemp("datasette") / "accounts-2025.db")


def serve(command: list[str]) -> Iterator[str]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert process.stderr is not None
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()  # type: ignore[union-attr]
    try:
        while True:
            line = lines.get(timeout=30)
            found = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            if found:
                break
        yield found.group(1)
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stderr.close()


@pytest.fixture(scope="module")
def config(account_db: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths: dict[str, Path] = datasette_config.write(account_db, tmp_path_factory.mktemp("config"))
    return paths


@pytest.fixture(scope="module")
def datasette_065(account_db: Path, config: dict[str, Path]) -> Iterator[str]:
    # The documented command line for Datasette 0.65, with its default time limits.
    yield from serve([sys.executable, "-m", "datasette", "serve", str(account_db), "-m", str(config["metadata.json"]),
                      "--setting", "suggest_facets", "off", "-h", "127.0.0.1", "-p", "0"])


def get(base: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{base}/{path}", timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.slow
def test_a_database_of_any_file_name_gets_its_canned_queries_and_table_options(datasette_065: str) -> None:
    status, body = get(datasette_065, "accounts-2025/campaign_summary.json?_shape=array")
    assert status == 200 and json.loads(body), body[:300]
    status, body = get(datasette_065, "accounts-2025/texts.json?_search=callfire&_shape=objects")
    assert status == 200 and json.loads(body)["rows"]
    status, body = get(datasette_065, "accounts-2025/campaigns.json")
    assert status == 200 and "type" in json.loads(body)["facet_results"]  # the configured facets apply
    status, body = get(datasette_065, "accounts-2025/texts")
    assert status == 200 and "E.164" in body  # column descriptions from the metadata


@pytest.mark.slow
def test_the_dashboard_page_is_served(datasette_065: str) -> None:
    status, body = get(datasette_065, "-/dashboards/mailhook")
    assert status == 200 and "Daily volume" in body and "Campaign progress" in body
    status, body = get(datasette_065, "-/dashboards/mailhook/daily-volume")
    assert status == 200


def test_datasette_1_gets_metadata_and_configuration_apart(config: dict[str, Path]) -> None:
    meta = json.loads(config["metadata-1.0.json"].read_text())
    conf = json.loads(config["datasette.json"].read_text())
    assert set(meta["databases"]) == set(conf["databases"]) == {"accounts-2025"}
    assert "queries" not in meta["databases"]["accounts-2025"]
    assert "campaign_summary" in conf["databases"]["accounts-2025"]["queries"]
    texts_meta = meta["databases"]["accounts-2025"]["tables"]["texts"]
    assert "columns" in texts_meta and "fts_table" not in texts_meta and "sort_desc" not in texts_meta
    assert conf["databases"]["accounts-2025"]["tables"]["texts"]["fts_table"] == "events_fts"
    assert conf["settings"] == {"suggest_facets": False}
    charts = conf["plugins"]["datasette-dashboards"]["mailhook"]["charts"]
    assert {chart.get("db") for chart in charts.values()} <= {"accounts-2025", None}


@pytest.mark.slow
def test_datasette_1_serves_the_split_configuration(account_db: Path, config: dict[str, Path]) -> None:
    # Datasette 1.0 cannot share an environment with 0.65; point MAILHOOK_TEST_DATASETTE_1 at its executable.
    executable = os.environ.get("MAILHOOK_TEST_DATASETTE_1")
    if not executable:
        pytest.skip("set MAILHOOK_TEST_DATASETTE_1 to a Datasette 1.0 executable to run this")
    for base in serve([executable, "serve", str(account_db), "-m", str(config["metadata-1.0.json"]),
                       "-c", str(config["datasette.json"]), "-h", "127.0.0.1", "-p", "0"]):
        status, body = get(base, "accounts-2025/campaign_summary.json")
        assert status == 200 and json.loads(body)["rows"], body[:300]
        status, body = get(base, "accounts-2025/texts.json?_search=callfire")
        assert status == 200 and json.loads(body)["rows"]
        status, body = get(base, "accounts-2025/texts.json")
        assert "event_time" in body  # sorted as configured
        assert json.loads(body).get("sort_desc") in (None, "event_time")


@pytest.mark.slow
@pytest.mark.needs("chromium", "chromium")
def test_the_dashboard_draws_its_charts_in_headless_chromium(datasette_065: str, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium is not None
    common = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--window-size=1400,1100", "--virtual-time-budget=20000"]
    url = f"{datasette_065}/-/dashboards/mailhook"
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    # vega-embed draws each chart as an SVG or a canvas inside its container; metrics show their numbers.
    charts = re.findall(r'class="[^"]*\bvega-embed\b', dom)
    assert len(charts) >= 4, dom[:2000]
    assert dom.count("<canvas") + dom.count("<svg") >= 4
    shot = tmp_path / "dashboard.png"
    subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 20_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
