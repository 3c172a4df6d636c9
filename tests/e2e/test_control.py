"""Pause and resume a real crawl from its page in Chromium (issue 5).

A project on a slow local demo site (200 ms a page, so requests are in flight when Pause is
clicked) is launched from its page; two RQ burst workers run it and a conductor thread moves it
through its states. The buttons follow the live status: a button that cannot apply is disabled
and clicking it does nothing.
"""

import re
import time

import pytest
from playwright.sync_api import expect

from dashboard.models import Crawl
from demosite import start_site
from demosite.catalog import Profile
from tests.workers import kill_tree
from tests.dashboard.test_engine import (check_items_exactly_once, check_rules_respected, make_project,
                                         start_rq_workers)

# ~120 pages; at 200 ms a page and one request at a time per worker the crawl lasts ~12 s:
# long enough to pause it mid-way from the page.
PROFILE = Profile("e2e-control", categories=4, products_per_category=25, per_page=10, traps=False)


@pytest.fixture
def site():
    site = start_site(profile=PROFILE, delay_ms=200)
    yield site
    site.stop()


@pytest.fixture
def rq_workers():
    """RQ burst workers; whatever is left at the end (work horses and crawler workers included) is killed."""
    started = []
    yield started
    for proc in started:
        if proc.poll() is None:
            kill_tree(proc)
        proc.wait(10)


def number(page, selector):
    text = page.locator(selector).inner_text()
    return int(text.replace(",", "").replace("\u202f", "").replace("\xa0", "") or 0)


def pages_above(page, count, timeout=30):
    """Wait until the live pages counter exceeds ``count`` (polled from Python: the page's CSP
    forbids the string evaluation ``page.wait_for_function`` uses)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = number(page, "[data-counter=pages]")
        if value > count:
            return value
        page.wait_for_timeout(100)
    raise AssertionError(f"the pages counter did not pass {count} in {timeout} s")


def test_pause_and_resume_from_the_crawl_page(logged_in_page, live_asgi, owner, site, conductor, rq_workers,
                                               artifacts):
    page = logged_in_page
    project = make_project(owner, site, "Slow shop", CONCURRENT_REQUESTS=1)

    page.goto(f"{live_asgi.url}/projects/{project.code}/")
    page.fill("#launch-workers", "2")
    page.locator(".launch-form button[type=submit]").click()
    page.wait_for_url(f"{live_asgi.url}/crawls/**")
    code = page.url.rstrip("/").rsplit("/", 1)[-1]
    crawl = Crawl.objects.get(code=code)
    assert crawl.workers == 2
    expect(page.locator('[data-live="connection"]')).to_have_attribute("data-state", "live")

    status = page.locator('[data-live="status"]')
    controls = page.locator("[data-crawl-controls]")
    pause = controls.locator('button[data-action="pause"]')
    resume = controls.locator('button[data-action="resume"]')
    stop = controls.locator('button[data-action="stop"]')
    cancel = controls.locator('button[data-action="cancel"]')

    # Running: pause and stop apply; resume and cancel do not.
    expect(status).to_have_text("Running")
    expect(pause).to_be_enabled()
    expect(stop).to_be_enabled()
    expect(resume).to_be_disabled()
    expect(cancel).to_be_disabled()
    assert cancel.get_attribute("title"), "a disabled button says why"

    rq_workers.extend(start_rq_workers(2))
    pages_above(page, 8)

    # A disabled button cannot be used: clicking Cancel while running submits nothing.
    cancel.click(force=True, timeout=2_000)
    page.wait_for_timeout(500)
    assert page.url.rstrip("/").endswith(code)
    crawl.refresh_from_db()
    assert crawl.status == Crawl.RUNNING
    expect(status).to_have_text("Running")

    # Pause: Pausing (in-flight downloads finish), then Paused; the buttons follow.
    pause.click()
    page.wait_for_url(f"{live_asgi.url}/crawls/{code}/")
    expect(status).to_have_text(re.compile("^(Pausing|Paused)$"))
    expect(status).to_have_text("Paused", timeout=15_000)
    expect(pause).to_be_disabled()
    expect(resume).to_be_enabled()
    expect(stop).to_be_enabled()
    expect(cancel).to_be_enabled()
    crawl.refresh_from_db()
    assert crawl.status == Crawl.PAUSED

    # Nothing is fetched while paused: the pages counter (and the site) stand still.
    page.wait_for_timeout(1_000)  # the last stats write of the workers lands
    paused_pages = number(page, "[data-counter=pages]")
    fetched = len(site.requests)
    assert 8 < paused_pages
    page.wait_for_timeout(2_000)
    assert number(page, "[data-counter=pages]") == paused_pages, "pages counted while paused"
    assert len(site.requests) == fetched, "pages fetched while paused"
    expect(status).to_have_text("Paused")
    page.screenshot(path=str(artifacts / "crawl-paused.png"), full_page=True)

    # Resume: the crawl continues at once and reaches Finished.
    resume.click()
    page.wait_for_url(f"{live_asgi.url}/crawls/{code}/")
    pages_above(page, paused_pages, timeout=10)
    expect(status).to_have_text("Finished", timeout=120_000)
    for button in (pause, resume, stop, cancel):
        expect(button).to_be_disabled()
    assert number(page, "[data-counter=items]") == len(site.expected_items())
    page.screenshot(path=str(artifacts / "crawl-control.png"), full_page=True)

    for proc in rq_workers:
        proc.wait(60)
    crawl.refresh_from_db()
    assert crawl.status == Crawl.FINISHED, crawl.reason
    check_items_exactly_once(crawl, site)
    check_rules_respected(site)
