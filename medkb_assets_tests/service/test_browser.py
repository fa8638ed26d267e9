"""The Dagster web UI in a real browser: Debian's Chromium driven by Playwright.

Run ``scripts/install_browser.sh`` once to install Chromium; Playwright never downloads a browser
here. Screenshots land in the test's temporary folder and in ``artifacts/screenshots/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from medkb_assets_tests.service.conftest import (
    DagsterService,
    ExpectedDefinitions,
    SampleMaterialization,
    save_screenshot,
)

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# Headless with nothing that phones home: the test machines have no internet.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1920, "height": 1080}
PAGE_TIMEOUT_MS = 60_000

# The UI asks a fresh instance's first visitor to join the community in a modal that covers the
# page; the instance remembers the answer, so the test gives it once through the API.
SET_NUX_SEEN = "mutation SetNuxSeen { setNuxSeen }"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install_browser.sh (make test does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, dagster_service: DagsterService) -> Iterator[Page]:
    """A fresh browser page with the service's first-visit prompt already answered."""
    dagster_service.graphql(SET_NUX_SEEN)
    context = browser.new_context(viewport=VIEWPORT, base_url=dagster_service.url)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


def test_asset_graph_shows_every_asset_of_the_code_location(
    page: Page,
    expected_definitions: ExpectedDefinitions,
    materialized_sample: SampleMaterialization,
    tmp_path: Path,
):
    page.goto("/asset-groups")
    _expand_every_asset_group(page)
    nodes = page.locator("foreignObject")
    faiss_node = nodes.filter(has=page.get_by_text("faiss_index", exact=True)).last
    # Live data (latest event, checks, partitions) arrives after the layout.
    expect(page.get_by_text("Loading...", exact=True)).to_have_count(0, timeout=PAGE_TIMEOUT_MS)
    save_screenshot(page.screenshot(full_page=True), "asset_graph.png", tmp_path)

    for asset_key in expected_definitions.asset_keys:
        # A node is labelled with the last part of its asset key.
        label = asset_key.split("/")[-1]
        expect(nodes.get_by_text(label, exact=True).first).to_be_visible()
    expect(faiss_node.get_by_text("Materialized", exact=True)).to_be_visible()


def test_faiss_index_page_shows_the_current_index_version(
    page: Page, materialized_sample: SampleMaterialization, tmp_path: Path
):
    page.goto("/assets/faiss_index")
    metadata_row = page.get_by_role("row").filter(has=page.get_by_text("index_version", exact=True))
    version = metadata_row.get_by_text(materialized_sample.index_version, exact=True)
    version.wait_for()
    save_screenshot(page.screenshot(full_page=True), "faiss_index.png", tmp_path)

    expect(version).to_be_visible()


def _expand_every_asset_group(page: Page) -> None:
    """Opens every collapsed group of the global lineage graph and lays the graph out again."""
    page.locator("foreignObject").first.wait_for()
    collapsed = page.locator('foreignObject.group [aria-label="unfold_more"]')
    remaining = collapsed.count()
    while remaining:
        collapsed.first.click()
        remaining -= 1
        expect(collapsed).to_have_count(remaining)
    # The UI keeps the expanded groups in local storage; a reload fits the whole graph in view.
    page.reload()
    page.locator("foreignObject").first.wait_for()
