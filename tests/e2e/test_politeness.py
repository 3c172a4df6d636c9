"""The crawl page's Politeness card in Chromium: the top domains' in-flight counts change live."""

import json

from playwright.sync_api import expect

from crawler import keys, politeness, state
from crawler.queue import RequestQueue
from dashboard import live
from dashboard.models import Crawl, Project
from dashboard.redis import get_redis


def test_politeness_card_updates_live(logged_in_page, live_asgi, owner):
    page = logged_in_page
    redis = get_redis()
    project = Project.objects.create(owner=owner, name="p", definition={})
    crawl = Crawl.objects.create(project=project, definition={}, status=Crawl.RUNNING)
    state.seed(redis, crawl.code, ["http://a.test/1", "http://a.test/2", "http://b.test/1"])
    politeness.write_limits(redis, crawl.code, politeness.Limits(limit=1, randomize=False))
    queue = RequestQueue(redis, crawl.code, "w1")
    _, popped = queue.pop_many(0, 8)
    page.goto(f"{live_asgi.url}/crawls/{crawl.code}/")
    in_flight = page.locator('[data-live="domains"] tr[data-domain="a.test"] [data-field="in_flight"]')
    expect(in_flight).to_have_text("1")  # rendered by the server
    expect(page.locator('[data-live="politeness-summary"]')).to_contain_text("At most 1 request(s) in flight")
    lease = next(str(json.loads(m)["seq"]) for m in popped if json.loads(m)["slot"] == "a.test")
    queue.release([lease])
    redis.hincrby(keys.stats(crawl.code), "polite_wait_ms", 4200)
    publisher = live.Publisher(redis)
    for _ in range(40):  # until the page's websocket has joined (its snapshot shows it as well)
        publisher.publish(crawl, state.read_counters(redis, crawl.code), [])
        if in_flight.inner_text() == "0":
            break
        page.wait_for_timeout(250)
    expect(in_flight).to_have_text("0")  # only the page's script can have changed it
    expect(page.locator('[data-live="politeness-summary"]')).to_contain_text("waited 4.2 s")
