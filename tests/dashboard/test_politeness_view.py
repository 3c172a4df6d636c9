"""The crawl's politeness as every view shows it (issue 16): the top domains with their current
rate, in-flight count and limit, and the time workers waited for politeness; in the conductor's
update, in ``live.read`` (page snapshot, API) and on the crawl page."""

import pytest

from crawler import keys, politeness, state
from crawler.queue import RequestQueue
from dashboard import live
from dashboard.models import ApiToken, Crawl, Project

pytestmark = pytest.mark.django_db(transaction=True)


class Recorder:
    def __init__(self):
        self.sent = []

    def send(self, messages, timeout=5.0):
        self.sent.extend(messages)


def _running_crawl(owner, redis_client):
    project = Project.objects.create(owner=owner, name="p", definition={})
    crawl = Crawl.objects.create(project=project, definition={}, status=Crawl.RUNNING)
    state.seed(redis_client, crawl.code, [f"http://{h}.test/p{i}" for h in ("a", "b") for i in range(6)])
    politeness.write_limits(redis_client, crawl.code, politeness.Limits(limit=2, delay=0.5, randomize=False))
    return crawl


def test_update_shows_top_domains_with_rate_in_flight_and_limit(owner, redis_client):
    crawl = _running_crawl(owner, redis_client)
    clock = iter(float(t) for t in range(1000, 2000)).__next__
    publisher = live.Publisher(redis_client, broadcaster=Recorder(), clock=clock)
    publisher.domain_meter.update(crawl.code, {}, now=0.0)  # a first read before any pop
    RequestQueue(redis_client, crawl.code, "w1").pop_many(0, 8)
    redis_client.hincrby(keys.stats(crawl.code), "polite_wait_ms", 2500)
    message = publisher.publish(crawl, state.read_counters(redis_client, crawl.code), [])
    p = message["politeness"]
    assert (p["limit"], p["delay"], p["randomize"], p["site_wide"], p["wait_s"]) == (2, 0.5, False, False, 2.5)
    assert {d["domain"]: (d["pages"], d["in_flight"], d["limit"]) for d in p["domains"]} == {
        "a.test": (1, 1, 2), "b.test": (1, 1, 2)}  # one each: the delay holds the second back
    assert all(d["rate"] >= 0 for d in p["domains"])
    # the web process reads the same, with the rates the conductor measured
    reading = live.read(redis_client, [crawl])[crawl.code]
    view = live.crawl_view(crawl, reading)
    assert [d["domain"] for d in view["politeness"]["domains"]] == [d["domain"] for d in p["domains"]]
    assert view["politeness"]["domains"][0]["rate"] == p["domains"][0]["rate"]


def test_crawl_page_and_api_show_politeness(owner, client, redis_client):
    crawl = _running_crawl(owner, redis_client)
    RequestQueue(redis_client, crawl.code, "w1").pop_many(0, 8)
    client.force_login(owner)
    html = client.get(f"/crawls/{crawl.code}/").content.decode()
    assert 'data-domain="a.test"' in html and "Politeness" in html
    token = ApiToken.issue(owner)
    body = client.get(f"/api/crawls/{crawl.code}", HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert body["politeness"]["limit"] == 2
    assert {d["domain"] for d in body["politeness"]["domains"]} == {"a.test", "b.test"}


def test_an_ended_crawl_without_redis_state_shows_no_politeness(owner):
    project = Project.objects.create(owner=owner, name="p", definition={})
    crawl = Crawl.objects.create(project=project, definition={}, status=Crawl.FINISHED)
    assert live.crawl_view(crawl, {})["politeness"] is None


def test_project_form_says_the_domain_limits_hold_for_the_whole_crawl(owner, client):
    client.force_login(owner)
    html = client.get("/projects/new/").content.decode()
    assert "hold for the whole crawl, all its workers together" in html
