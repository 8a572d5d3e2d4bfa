"""The search page at ``/`` in a real headless Chromium (Debian's ``chromium``, driven by the
``playwright`` package): load it, type a query, see the hits, save a screenshot."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from tests import serving_fixtures
from tests.serving_fixtures import running_server

# Fixtures shared with the other serving tests.
static_tower = serving_fixtures.static_tower
titles_index = serving_fixtures.titles_index

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TOKEN = "page-token"


@pytest.fixture(scope="module")
def browser() -> Any:
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium; CI installs it)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def expect_text(page: Any, selector: str, text: str) -> None:
    """Wait until ``selector`` shows ``text`` (a locator wait: the page's Content-Security-Policy
    forbids the string evaluation that ``wait_for_function`` uses)."""
    from playwright.sync_api import expect

    expect(page.locator(selector)).to_contain_text(text, timeout=30_000)


def artifact_path(tmp_path: Path, name: str) -> Path:
    """Where a test artifact goes: ``$CONTRALIGN_TEST_ARTIFACTS`` when set, else ``tmp_path``."""
    folder = Path(os.environ.get("CONTRALIGN_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def test_search_page_shows_hits(browser: Any, static_tower: Any, titles_index: Path,
                                tmp_path: Path) -> None:
    from contralign.index import load_index
    from contralign.serving.app import create_app

    query = "contrastive learning of sentence embeddings"
    expected = load_index(titles_index).search(static_tower, [query], 10)[0]
    with running_server(create_app(static_tower, titles_index)) as url:
        page = browser.new_page(viewport={"width": 1000, "height": 760})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url + "/")
        expect_text(page, "#about", "indexed")
        assert "204 texts indexed" in page.text_content("#about")
        page.fill("#query", query)
        page.press("#query", "Enter")
        page.wait_for_selector("li.hit")
        hits = page.locator("li.hit")
        assert hits.count() == 10  # the page asks for 10 by default
        assert [hits.nth(i).get_attribute("data-id") for i in range(10)] == [h.id for h in
                                                                             expected]
        assert hits.nth(0).locator(".text").text_content() == expected[0].text
        assert hits.nth(0).locator(".score").text_content() == f"{expected[0].score:.3f}"
        assert "hits in" in page.text_content("#status") and " ms" in page.text_content("#status")
        shot = artifact_path(tmp_path, "search-page.png")
        page.screenshot(path=str(shot), full_page=False)
        print(f"screenshot: {shot}")
        assert shot.stat().st_size > 1000 and not errors
        page.close()


def test_search_page_asks_for_the_token(browser: Any, static_tower: Any,
                                        titles_index: Path) -> None:
    from contralign.serving.app import create_app
    from contralign.serving.service import ServeSettings

    app = create_app(static_tower, titles_index, ServeSettings(token=TOKEN))
    with running_server(app) as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#token-row", state="visible")  # /info answered 401
        page.fill("#token", TOKEN)
        page.click("#token-save")
        expect_text(page, "#about", "indexed")
        page.fill("#query", "graph neural networks")
        page.press("#query", "Enter")
        page.wait_for_selector("li.hit")
        assert page.locator("li.hit").count() == 10
        page.close()


def test_search_page_reports_errors(browser: Any, static_tower: Any) -> None:
    """Without an index the page says how to start the server with one, and a search shows
    the server's message instead of hits."""
    from contralign.serving.app import create_app

    with running_server(create_app(static_tower)) as url:
        page = browser.new_page()
        page.goto(url + "/")
        expect_text(page, "#about", "--index")
        page.fill("#query", "anything")
        page.press("#query", "Enter")
        page.wait_for_selector("#status.error")
        assert "no index" in page.text_content("#status")
        assert page.locator("li.hit").count() == 0
        page.close()
