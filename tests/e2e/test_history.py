"""A cancelled crawl whose Redis state is gone still draws its charts (from the database), the
project page charts its runs, and the compare page lists what changed between two runs."""

import json

from playwright.sync_api import expect

from crawler import keys, pipelines, scripts, state
from dashboard import engine, live
from dashboard.models import Crawl
from dashboard.redis import get_redis
from tests.dashboard.factories import project_for

FIELDS = [{"name": "sku", "selector": ".sku::text"}]


def run_with_history(project, skus, points=3):
    """A run that went through Redis (series, items) and was then cancelled: Redis forgets it."""
    redis = get_redis()
    crawl = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.STOPPED)
    state.ensure_items_group(redis, crawl.code)
    entries = []
    for n, sku in enumerate(skus):
        data = {"url": f"http://shop.test/{sku}", "sku": sku}
        entries.append(([f"p:{n}", data["url"], json.dumps(data)], pipelines.filled_fields(data)))
    scripts.run(redis, [pipelines.items_call(crawl.code, "w1", entries)])
    redis.hset(keys.stats(crawl.code), mapping={"pages": len(skus), "status:200": len(skus)})
    publisher = live.Publisher(redis)
    clock = iter(range(1000, 2000))
    publisher.clock = lambda: float(next(clock))
    for _ in range(points):
        publisher.publish(crawl, state.read_counters(redis, crawl.code), [])
    engine.control(crawl, "cancel")
    assert not redis.exists(keys.series(crawl.code))
    return crawl


def test_ended_runs_chart_from_the_database_and_compare(logged_in_page, live_asgi, owner, artifacts):
    page = logged_in_page
    project = project_for(owner, "Shop", item={"fields": FIELDS}, unique_key=["sku"])
    before = run_with_history(project, ["a", "b"])
    Crawl.objects.filter(pk=before.pk).update(status=Crawl.FINISHED)
    after = run_with_history(project, ["a", "c"], points=4)

    page.goto(f"{live_asgi.url}/crawls/{after.code}/")
    expect(page.locator('[data-live="connection"]')).to_have_attribute("data-state", "live")
    expect(page.locator('[data-chart="rates"]')).to_have_attribute("data-points", "4")
    assert page.locator(".chart canvas").count() >= 2
    expect(page.locator('[data-counter="pages"]')).to_have_text("2")

    page.goto(f"{live_asgi.url}/projects/{project.code}/")
    expect(page.locator('[data-chart="runs"]')).to_have_attribute("data-points", "2")
    expect(page.locator("tr[data-run]")).to_have_count(2)
    page.screenshot(path=str(artifacts / "project-runs.png"), full_page=True)

    page.locator(f'tr[data-run="{after.code}"] a', has_text="compare").click()
    expect(page.locator('[data-count="appeared"]')).to_have_text("1")
    expect(page.locator('[data-keys="appeared"] li')).to_contain_text("sku=c")
    expect(page.locator('[data-keys="disappeared"] li')).to_contain_text("sku=b")
    page.screenshot(path=str(artifacts / "compare.png"), full_page=True)


def test_one_run_charts_over_hours_not_years(logged_in_page, live_asgi, owner):
    """A single run has no time span: the runs chart pads its time axis by an hour each side
    (uPlot alone stretched it over years)."""
    project = project_for(owner, "Once", item={"fields": FIELDS})
    Crawl.objects.create(project=project, definition=project.definition, status=Crawl.FINISHED)
    logged_in_page.goto(f"{live_asgi.url}/projects/{project.code}/")
    chart = logged_in_page.locator('[data-chart="runs"]')
    expect(chart).to_have_attribute("data-points", "1")
    assert int(chart.get_attribute("data-span")) == 7200


def test_the_overview_shows_no_alert_badge_for_a_crawl_that_is_fine(logged_in_page, live_asgi, owner):
    """Elements marked ``hidden`` stay hidden even when their class sets a display (the overview's
    empty 'stalled/overdue' badge showed as an orange pill on every row)."""
    project = project_for(owner, "Fine", item={"fields": FIELDS})
    crawl = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.FINISHED)
    logged_in_page.goto(f"{live_asgi.url}/")
    row = logged_in_page.locator(f'tr[data-crawl="{crawl.code}"]')
    expect(row.locator('[data-field="status"]')).to_be_visible()
    expect(row.locator('[data-field="alert"]')).to_be_hidden()
