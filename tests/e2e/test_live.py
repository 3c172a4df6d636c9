"""The live dashboard in Chromium: create a project in the form, start it from the overview, watch the
crawl page update over the websocket until the crawl is finished."""

import shutil
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from demosite import start_site
from tests.dashboard.test_engine import start_rq_workers

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture
def site():
    site = start_site(profile="test")
    yield site
    site.stop()


def number(page, selector):
    return int(page.locator(selector).inner_text().replace(",", "").replace("\u202f", "").replace("\xa0", "") or 0)


def test_create_launch_and_watch_a_crawl_live(logged_in_page, live_asgi, site, conductor, artifacts):
    page = logged_in_page
    d = site.recommended_definition(slow=False)
    page.goto(f"{live_asgi.url}/projects/new/")
    page.fill("#id_name", "Live shop")
    page.fill("#id_start_urls", "\n".join(d["start_urls"]))
    page.fill("#id_allowed_domains", "\n".join(d["allowed_domains"]))
    page.fill("#id_follow_allow", "\n".join(d["follow"]["allow"]))
    page.fill("#id_follow_deny", "\n".join(d["follow"]["deny"]))
    page.fill("#id_item_url_pattern", d["item"]["url_pattern"])
    page.fill("#id_fields", "\n".join(f"{f['name']}: {f['selector']}" for f in d["item"]["fields"]))
    # Slow enough to watch: a few requests at a time with a small delay.
    page.fill("#id_settings", "CONCURRENT_REQUESTS = 2\nDOWNLOAD_DELAY = 0.05\nRETRY_TIMES = 0")
    page.fill("#id_workers", "2")
    page.locator("form button[type=submit]").last.click()
    page.wait_for_url(lambda url: "/projects/new/" not in url)

    page.goto(f"{live_asgi.url}/")
    card = page.locator(".project-card", has_text="Live shop")
    expect(card).to_be_visible()
    expect(page.locator('[data-live="connection"]')).to_have_attribute("data-state", "live")
    card.get_by_role("button", name="Start crawl").click()
    page.wait_for_url(f"{live_asgi.url}/crawls/**")
    code = page.url.rstrip("/").rsplit("/", 1)[-1]
    expect(page.locator('[data-live="connection"]')).to_have_attribute("data-state", "live")

    workers = start_rq_workers(2)
    try:
        # Counters and items change in the DOM while the crawl runs, with no reload.
        # Polled from Python: the page's Content-Security-Policy forbids wait_for_function's eval.
        deadline = time.monotonic() + 60
        while number(page, "[data-counter=pages]") == 0:
            assert time.monotonic() < deadline, "pages never rose"
            time.sleep(0.1)
        first_pages = number(page, "[data-counter=pages]")
        expect(page.locator('[data-live="items"] li').first).to_be_visible(timeout=60_000)
        # Field coverage arrives over the websocket too (the page opened before the first item).
        expect(page.locator('[data-live="coverage"] li[data-field-name="url"] [data-field="percent"]')).to_have_text(
            "100 %", timeout=30_000)
        expect(page.locator('[data-live="workers"] tr[data-worker]')).to_have_count(2, timeout=30_000)
        expect(page.locator('[data-live="status"]')).to_have_text("Finished", timeout=120_000)
    finally:
        for proc in workers:
            proc.wait(60)
    final_pages = number(page, "[data-counter=pages]")
    assert final_pages > first_pages
    assert number(page, "[data-counter=items]") == len(site.expected_items())
    expect(page.locator('[data-live="status-codes"] li[data-code="200"]')).to_be_visible()
    expect(page.locator('[data-live="status-codes"] li[data-code="404"]')).to_be_visible()
    assert page.locator(".chart canvas").count() >= 2
    page.screenshot(path=str(artifacts / "crawl-live.png"), full_page=True)
    shutil.copy(artifacts / "crawl-live.png", DOCS / "screenshot.png")

    # A page opened after the end draws the whole history from the snapshot.
    page.reload()
    expect(page.locator('[data-live="connection"]')).to_have_attribute("data-state", "live")
    expect(page.locator('[data-live="status"]')).to_have_text("Finished")
    assert number(page, "[data-counter=items]") == len(site.expected_items())

    # The overview shows the crawl's final numbers.
    page.goto(f"{live_asgi.url}/")
    row = page.locator(f'tr[data-crawl="{code}"]')
    expect(row.locator('[data-field="status"]')).to_have_text("Finished")
    expect(row.locator('[data-field="items"]')).to_have_text(str(len(site.expected_items())))

    # Narrow screens: nothing wider than the viewport.
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto(f"{live_asgi.url}/crawls/{code}/")
    expect(page.locator('[data-live="connection"]')).to_have_attribute("data-state", "live")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=str(artifacts / "crawl-live-narrow.png"), full_page=True)
