"""The Dagster UI, checked in a real headless Chromium (Debian's `chromium` package, driven by Playwright).

One module fixture materializes the tiny graph into a temporary DAGSTER_HOME while `dagster-webserver` starts
on the same instance; the tests then read the asset catalog, the lineage graph and metric_tables' latest
materialization (comparison table and chart) the way a person would. Screenshots go to the test's tmp folder
and to test-artifacts/ui/ at the repository root.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline import settings

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "ui"
CHROMIUM = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium")
ASSETS = [
    "manifests",
    "image_features",
    "language_model",
    "linear_map",
    "adapters",
    "captions",
    "caption_metrics",
    "vqa_answers",
    "vqa_metrics",
    "metric_tables",
]
REPORTS = ["image_prompt_readout", "caption_gallery", "rankings"]  # beside metric_tables, not upstream of it
# Playwright adds --headless, and --user-data-dir (a new empty folder) from launch_persistent_context.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DATA_PNG = re.compile(r"^data:image/png;base64,[A-Za-z0-9+/=]{100,}$")
MATERIALIZED = re.compile("Materialized")  # case-sensitive: not "Never materialized"
SERVER_START_TIMEOUT_S = 180
UI_TIMEOUT_MS = 60_000

if CHROMIUM is None and settings.browser_required():  # CI: the UI test must run
    pytest.fail(f"{settings.REQUIRE_BROWSER_ENV}=1 but Chromium is not installed (make browser)", pytrace=False)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no server log)"


def _wait_for_server(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dagster-webserver exited with {process.returncode}; its log:\n{_log_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(
        f"dagster-webserver did not answer {url}/server_info in {SERVER_START_TIMEOUT_S} s; its log:\n{_log_tail(log)}"
    )


def _stop(process: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM to the server's whole process group (it spawns a code server), SIGKILL what outlives grace_s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        process.poll()  # reaps the leader, which would otherwise keep the group alive as a zombie
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    """Base URL of a dagster-webserver whose instance holds one tiny materialization of every asset."""
    import dagster as dg

    from tests.tiny_run import materialize_tiny

    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # no screenshots left from an earlier run
    base = tmp_path_factory.mktemp("ui")
    home, storage = base / "dagster_home", base / "storage"
    home.mkdir()
    storage.mkdir()
    # No telemetry, and no "Join the Dagster community" dialog over the pages.
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "LIMBER_STORAGE": str(storage),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
    }
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = base / "webserver.log"
    process = None
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DAGSTER_HOME", str(home))
            mp.setenv("LIMBER_STORAGE", str(storage))
            with dg.DagsterInstance.get() as instance:
                # Create the SQLite storages here, before a second process opens them.
                instance.get_runs(limit=1)
                instance.all_instigator_state()
                # The server starts now so that its start-up (loading the code location) overlaps the
                # materialization; it reads the instance on every request, so it shows the later runs.
                with open(log, "wb") as log_file:
                    process = subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "dagster_webserver",
                            "-w",
                            "workspace.yaml",
                            "-h",
                            "127.0.0.1",
                            "-p",
                            str(port),
                        ],
                        cwd=REPO,
                        env=env,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                materialize_tiny(instance, storage)
        _wait_for_server(process, url, log)
        yield url
    finally:
        if process is not None:
            _stop(process)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1000},
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context, tmp_path, request):
    """A fresh tab; if the test fails, a screenshot of where it stood is saved as <test name>-failure.png."""
    page = browser_context.new_page()
    failed_before = request.session.testsfailed
    yield page
    if request.session.testsfailed > failed_before:  # the call's failure is counted before teardown
        try:
            _screenshot(page, tmp_path, f"{request.node.name}-failure")
        except Exception as error:  # the test's own failure is the one to report
            print(f"no failure screenshot: {error!r}")
    page.close()


def _screenshot(page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)
    return path


def _show_markdown(page, key: str):
    """Opens the [Show Markdown] dialog of one metadata row of the asset overview; returns the dialog."""
    from playwright.sync_api import expect

    row = page.locator("tr").filter(has=page.get_by_text(key, exact=True)).filter(has_text="[Show Markdown]")
    expect(row).to_have_count(1)
    row.get_by_text("[Show Markdown]").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(key)
    return dialog


def test_catalog_lists_every_asset(webserver, page, tmp_path):
    from playwright.sync_api import expect

    page.goto(f"{webserver}/assets")
    for name in ASSETS + REPORTS:
        expect(page.locator(f'a[href="/assets/{name}"]').first, name).to_be_visible()
    # The unpartitioned assets' status cell reads "Materialized · <date>" (else "Never materialized").
    # The catalog is a virtualized grid of divs, not a <table>: a row is a VirtualizedAssetRow_rowGrid__<hash>.
    for name in ("language_model", "metric_tables", "caption_gallery"):
        link = page.locator(f'a[href="/assets/{name}"]')
        row = page.locator('[class*="VirtualizedAssetRow_rowGrid"]').filter(has=link)
        expect(row, name).to_contain_text(MATERIALIZED)
    page.wait_for_load_state("networkidle")
    _screenshot(page, tmp_path, "catalog")


def test_lineage_graph_shows_every_asset(webserver, page, tmp_path):
    from playwright.sync_api import expect

    # metric_tables' upstream lineage is the whole graph; its nodes are HTML inside the SVG's foreignObjects.
    page.goto(f"{webserver}/assets/metric_tables?view=lineage&lineageScope=upstream&lineageDepth=100")
    graph = page.locator("svg foreignObject")
    for name in ASSETS:
        expect(graph.get_by_text(name, exact=True).first, name).to_be_visible()
    page.wait_for_load_state("networkidle")
    _screenshot(page, tmp_path, "lineage")


def test_metric_tables_shows_comparison_and_chart(webserver, page, tmp_path):
    from playwright.sync_api import expect

    page.goto(f"{webserver}/assets/metric_tables")
    # The overview's metadata table holds the latest materialization's entries.
    for key in ("path", "comparison_path", "rows", "comparison", "chart"):
        expect(page.locator("tr").filter(has=page.get_by_text(key, exact=True)).first, key).to_be_visible()
    page.wait_for_load_state("networkidle")
    _screenshot(page, tmp_path, "metric_tables")

    dialog = _show_markdown(page, "comparison")
    table = dialog.locator("table")
    expect(table).to_have_count(1)  # rendered markdown, not the raw text
    expect(table.locator("th").filter(has_text="CIDEr-D").first).to_be_visible()
    expect(table.locator("th").filter(has_text="VQA").first).to_be_visible()
    for backbone in ("blind", "efficientnet_lite0", "efficientnet_lite0_random"):
        expect(table.locator("td").get_by_text(backbone, exact=True), backbone).to_have_count(1)
    _screenshot(page, tmp_path, "metric_tables-comparison")
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()

    dialog = _show_markdown(page, "chart")
    image = dialog.locator("img")
    expect(image).to_have_count(1)
    expect(image).to_have_attribute("src", DATA_PNG)
    image.evaluate("i => i.decode()")  # rejects if the PNG does not decode
    width, height = image.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert width > 100 and height > 100, (width, height)
    _screenshot(page, tmp_path, "metric_tables-chart")


def test_caption_gallery_shows_every_system_as_pngs(webserver, page, tmp_path):
    from playwright.sync_api import expect

    page.goto(f"{webserver}/assets/caption_gallery")
    for task in ("captioning", "vqa"):
        dialog = _show_markdown(page, f"{task}_gallery")
        image = dialog.locator("img")
        expect(image).to_have_count(1)
        expect(image).to_have_attribute("src", DATA_PNG)
        image.evaluate("i => i.decode()")
        width, height = image.evaluate("i => [i.naturalWidth, i.naturalHeight]")
        assert width > 500 and height > 100, (task, width, height)
        _screenshot(page, tmp_path, f"caption_gallery-{task}")
        dialog.get_by_role("button", name="Close").click()
        expect(dialog).to_be_hidden()
