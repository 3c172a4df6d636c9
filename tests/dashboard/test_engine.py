"""Real crawls launched from the dashboard: RQ workers run Scrapy against the local test site,
the conductor drains items into the database and detects the end."""

import time

import pytest

from crawler import keys, state
from dashboard import engine, ingest, jobs
from dashboard.conductor import Conductor
from dashboard.models import Crawl, Project
from demosite import start_site
from tests.workers import start_rq_workers  # noqa: F401 (re-exported for other tests)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def site():
    site = start_site(profile="test")
    yield site
    site.stop()


def make_project(owner, site, name="Test shop", **settings):
    definition = site.recommended_definition(slow=False)
    definition["name"] = name
    definition["settings"] = {"CONCURRENT_REQUESTS": 8, "DOWNLOAD_TIMEOUT": 5, "RETRY_TIMES": 0, **settings}
    project = Project(owner=owner)
    project.set_definition(engine.validate_definition(definition))
    project.save()
    return project


def conduct_until_done(crawls, timeout=120):
    conductor = Conductor(tick=0.1)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if conductor.hold_lock():
                conductor.tick()
            for crawl in crawls:
                crawl.refresh_from_db()
            if all(c.is_terminal for c in crawls):
                return
            time.sleep(0.1)
    finally:
        conductor.release()
    raise AssertionError(f"crawls did not end: {[(c.code, c.status) for c in crawls]}")


def run_with_workers(crawls, workers=1):
    """Start ``workers`` burst RQ workers and conduct ``crawls`` until they end."""
    procs = start_rq_workers(workers)
    try:
        conduct_until_done(crawls)
    finally:
        for proc in procs:
            proc.wait(90)


def stored(crawl):
    return {item.data["url"]: item.data for item in crawl.items.all()}


def expected(site):
    return {item["url"]: item for item in site.expected_items()}


def check_items_exactly_once(crawl, site):
    items = list(crawl.items.all())
    assert len(items) == len({i.key for i in items}) == len({i.data["url"] for i in items})
    got = stored(crawl)
    want = expected(site)
    assert set(got) == set(want)
    for url, item in want.items():
        for field in ("sku", "title", "price", "category"):
            assert got[url][field] == item[field], (url, field)


def check_rules_respected(site):
    for host, path in site.requests:
        assert host.startswith("127.0.0.1"), f"out-of-domain fetch: {host}{path}"
        assert not path.startswith("/calendar/"), f"denied link fetched: {path}"


@pytest.mark.parametrize("workers", [1, 2])
def test_crawl_stores_every_expected_item_exactly_once(owner, site, workers):
    project = make_project(owner, site)
    crawl = engine.launch(project, workers=workers)
    crawl.refresh_from_db()
    assert crawl.status == Crawl.RUNNING
    run_with_workers([crawl], workers)
    assert crawl.status == Crawl.FINISHED, crawl.reason
    check_items_exactly_once(crawl, site)
    check_rules_respected(site)
    assert crawl.stats["items_stored"] == len(site.expected_items())
    assert crawl.stats["errors"] >= 2  # the 404 and the 500 are counted, the crawl carried on
    assert crawl.stats["status"].get("404", 0) >= 1


def test_two_crawls_at_once_do_not_mix(owner, site):
    other_site = start_site(profile="demo")
    try:
        first = engine.launch(make_project(owner, site, "first"), workers=1)
        second = engine.launch(make_project(owner, other_site, "second"), workers=1)
        procs = start_rq_workers(2)
        try:
            conduct_until_done([first, second])
        finally:
            for proc in procs:
                proc.wait(90)
        assert first.status == second.status == Crawl.FINISHED
        check_items_exactly_once(first, site)
        check_items_exactly_once(second, other_site)
    finally:
        other_site.stop()


def test_launch_refuses_when_redis_is_unreachable(owner, site, settings):
    project = make_project(owner, site)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    with pytest.raises(engine.LaunchError, match="Redis is unreachable"):
        engine.launch(project)
    assert not Crawl.objects.exists()


def test_launch_rejects_a_bad_worker_count(owner, site):
    project = make_project(owner, site)
    for bad in (0, 65, "2"):
        with pytest.raises(engine.LaunchError, match="workers must be a whole number from 1 to 64"):
            engine.launch(project, workers=bad)
    assert not Crawl.objects.exists()


def test_launch_writes_definition_seeds_and_jobs(owner, site, redis_client):
    crawl = engine.launch(make_project(owner, site), workers=3)
    assert redis_client.get(keys.control(crawl.code)) == "run"
    assert redis_client.zcard(keys.queue(crawl.code)) == 1
    statuses = jobs.statuses(crawl.code, crawl.launched_workers)
    assert statuses == {"w1": "queued", "w2": "queued", "w3": "queued"}
    jobs.cancel_waiting(crawl.code, jobs.worker_ids(crawl.launched_workers))
    assert set(jobs.statuses(crawl.code, crawl.launched_workers).values()) == {"canceled"}


def test_conductor_stores_lone_surrogates_as_replacement_characters(owner, redis_client):
    """Exports write UTF-8: a lone surrogate from a custom spider must not break them later."""
    import json as jsonlib

    from tests.dashboard.factories import project_for

    project = project_for(owner)
    crawl = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.RUNNING)
    state.ensure_items_group(redis_client, crawl.code)
    raw = jsonlib.dumps({"url": "http://127.0.0.1:9/p", "title": "a\ud800b", "tags": ["\udfff"]})
    redis_client.xadd(keys.items(crawl.code), {"key": "fp:0", "url": "http://127.0.0.1:9/p", "worker": "w1", "data": raw})
    assert len(ingest.drain(redis_client, crawl)) == 1
    item = crawl.items.get()
    assert item.data == {"url": "http://127.0.0.1:9/p", "title": "a\ufffdb", "tags": ["\ufffd"]}
    assert jsonlib.dumps(item.data, ensure_ascii=False).encode("utf-8")


def test_crawl_whose_workers_all_died_stops_and_resumes_to_the_end(owner, monkeypatch, redis_client):
    """`make run` interrupted mid-crawl (every worker killed): the crawl becomes stopped with a
    reason, nothing is lost, and resuming it finishes with every item exactly once."""
    from tests.workers import kill_tree

    monkeypatch.setenv("CRAWLSITE_HEARTBEAT_TTL", "1.5")
    site = start_site(profile="demo", delay_ms=300)  # ~73 pages, two at a time: ~11 s of crawling
    try:
        crawl = engine.launch(make_project(owner, site, CONCURRENT_REQUESTS=2), workers=1)
        [proc] = start_rq_workers(1)
        conductor = Conductor(tick=0.1)
        deadline = time.monotonic() + 60
        while crawl.items.count() < 3:
            assert time.monotonic() < deadline, "no items arrived"
            conductor.hold_lock() and conductor.tick()
            time.sleep(0.1)
        kill_tree(proc)  # the RQ worker, its work horse and the crawler
        crawl.refresh_from_db()
        assert crawl.status == Crawl.RUNNING
        while True:
            assert time.monotonic() < deadline + 30, f"crawl stayed {crawl.status}: {crawl.reason} {crawl.stats} {redis_client.hgetall(keys.workers(crawl.code))}"
            conductor.hold_lock() and conductor.tick()
            crawl.refresh_from_db()
            if crawl.status == Crawl.STOPPED:
                break
            time.sleep(0.1)
        assert "Resume to continue" in crawl.reason
        engine.control(crawl, "resume")
        procs = start_rq_workers(1)
        conductor.release()
        conduct_until_done([crawl])
        for p in procs:
            p.wait(90)
        assert crawl.status == Crawl.FINISHED, crawl.reason
        check_items_exactly_once(crawl, site)
    finally:
        site.stop()


def test_a_custom_spider_class_runs_with_the_shared_queue_and_pipeline(owner):
    """A definition naming the user's own Scrapy spider: every expected item exactly once."""
    from dashboard.models import validate_definition

    site = start_site(profile="demo")
    try:
        project = Project(owner=owner)
        project.set_definition(validate_definition({
            "name": "Custom spider", "start_urls": [site.url + "/"],
            "spider": "shop",
            "settings": {"CONCURRENT_REQUESTS": 8}, "workers": 2,
        }))
        project.save()
        crawl = engine.launch(project)
        procs = start_rq_workers(2)
        conduct_until_done([crawl])
        for proc in procs:
            proc.wait(90)
        assert crawl.status == Crawl.FINISHED, crawl.reason
        check_items_exactly_once(crawl, site)
        check_rules_respected(site)
    finally:
        site.stop()


def test_a_spider_that_is_not_installed_is_refused():
    from crawler.definition import DefinitionError
    from dashboard.models import validate_definition

    for path, message in [("tests.crawler.custom_spiders.ShopSpider", "by name"),
                          ("tests.crawler.nowhere.Spider", "by name"), ("not a path", "unknown spider")]:
        with pytest.raises(DefinitionError) as info:
            validate_definition({"name": "x", "start_urls": ["http://127.0.0.1:9/"], "spider": path})
        assert "spider" in info.value.errors
        assert message.lower() in " ".join(info.value.errors["spider"]).lower()
        assert "available: errback-shop, not-a-spider, shop, stuck" in " ".join(info.value.errors["spider"]).lower()


def test_an_rq_job_stopped_mid_crawl_loses_nothing(owner, monkeypatch):
    """Stopping a worker's RQ job (django-rq's "stop" button) kills its work horse: the crawler
    below it dies with it, its leased requests come back, the other worker finishes the crawl."""
    import django_rq
    from rq.command import send_stop_job_command

    monkeypatch.setenv("CRAWLSITE_HEARTBEAT_TTL", "1.5")
    site = start_site(profile="demo", delay_ms=200)
    try:
        crawl = engine.launch(make_project(owner, site, CONCURRENT_REQUESTS=2), workers=2)
        procs = start_rq_workers(2)
        conductor = Conductor(tick=0.1)
        deadline = time.monotonic() + 60
        while jobs.statuses(crawl.code, crawl.launched_workers).get("w1") != "started" or crawl.items.count() < 2:
            assert time.monotonic() < deadline, "w1 never started working"
            conductor.hold_lock() and conductor.tick()
            time.sleep(0.1)
        send_stop_job_command(django_rq.get_connection("crawls"), jobs.job_id(crawl.code, "w1"))
        conductor.release()
        conduct_until_done([crawl])
        for proc in procs:
            proc.wait(90)
        assert crawl.status == Crawl.FINISHED, crawl.reason
        assert jobs.statuses(crawl.code, crawl.launched_workers)["w1"] in ("stopped", "failed")
        check_items_exactly_once(crawl, site)
    finally:
        site.stop()
