"""Stop and cancel always end the workers (issue 11): a worker whose reactor is blocked for good is
ended by its RQ job, its leases go back to the queue, and its RQ worker is free for other jobs.

Real crawls: RQ burst workers run `python -m crawler run` on an operator-installed spider
("stuck": tests.crawler.custom_spiders.StuckSpider) whose callback for one page never returns in worker
w1, as a runaway regex would. Controls go through the JSON API. The grace period before the kill
is short here (CRAWLSITE_STOP_GRACE, CRAWLSITE_KILL_DELAY); every event is awaited by polling.
"""

import json
import time

import django_rq
import pytest
from rq.job import Job

from crawler import keys, state
from dashboard import engine, jobs
from dashboard.models import ApiToken, Crawl, Project, validate_definition
from demosite import start_site
from demosite.catalog import Profile
from tests.crawler.custom_spiders import StuckSpider
from tests.dashboard.test_control import crawl_keys, crawler_processes, wait_exit
from tests.dashboard.test_control import driver, procs  # noqa: F401 - fixtures
from tests.dashboard.test_engine import make_project
from tests.workers import start_rq_workers

pytestmark = pytest.mark.django_db(transaction=True)

GRACE = 2.0
KILL_DELAY = 1.0
TINY = Profile("stuck", categories=2, products_per_category=8, per_page=8, traps=False)


@pytest.fixture
def site():
    site = start_site(profile=TINY)
    yield site
    site.stop()


@pytest.fixture
def auth(owner):
    return {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(owner)}"}


def rq_workers(procs, count, heartbeat_ttl):
    new = start_rq_workers(count, CRAWLSITE_STOP_GRACE=str(GRACE), CRAWLSITE_KILL_DELAY=str(KILL_DELAY),
                           CRAWLSITE_HEARTBEAT_TTL=str(heartbeat_ttl))
    procs.extend(new)
    return new


def launch_stuck(owner, site):
    project = Project(owner=owner)
    project.set_definition(validate_definition({
        "name": "Stuck spider", "start_urls": [site.url + "/"],
        "spider": "stuck",  # tests.crawler.custom_spiders.StuckSpider (tests/plugins/installed_spiders.py)
        "settings": {"CONCURRENT_REQUESTS": 4, "DOWNLOAD_TIMEOUT": 5}, "workers": 1,
    }))
    project.save()
    crawl = engine.launch(project)
    crawl.refresh_from_db()
    assert crawl.status == Crawl.RUNNING
    return crawl


def stuck_url(redis, crawl):
    """The page whose callback w1 is stuck in, once the spider said so in the crawl's log."""
    for _id, entry in redis.xrange(keys.log(crawl.code)):
        if entry.get("worker") == "w1" and entry.get("message", "").startswith(StuckSpider.STUCK_MESSAGE):
            return entry["message"][len(StuckSpider.STUCK_MESSAGE):]
    return None


def urls(members):
    return {json.loads(member)["url"] for member in members}


def worker_state(redis, crawl, worker="w1"):
    raw = redis.hget(keys.workers(crawl.code), worker)
    return json.loads(raw) if raw else {}


def job(crawl, worker="w1"):
    queue = django_rq.get_queue("crawls")
    return Job.fetch(jobs.job_id(crawl.code, worker), connection=queue.connection, serializer=queue.serializer)


def api(client, auth, crawl, action):
    response = client.post(f"/api/crawls/{crawl.code}/{action}", **auth)
    assert response.status_code == 200, response.content
    return response.json()


def test_stop_ends_a_stuck_worker_frees_its_rq_worker_and_loses_nothing(owner, site, driver, procs,
                                                                       redis_client, client, auth):
    crawl = launch_stuck(owner, site)
    # Served before the RQ worker starts: a worker opens only the test sites running when it starts.
    other_site = start_site(profile=TINY)
    # A long heartbeat TTL: the conductor's reaper cannot be what ends this worker.
    [first] = rq_workers(procs, 1, heartbeat_ttl=300)
    url = driver.until(lambda: stuck_url(redis_client, crawl), 60, "w1 to be stuck in its callback")
    [stuck] = crawler_processes(crawl.code, "w1")
    assert url in urls(redis_client.hvals(keys.leases(crawl.code, "w1")))

    # Another crawl's job waits for the only RQ worker, which the stuck worker holds.
    try:
        other = engine.launch(make_project(owner, other_site, name="Other shop"), workers=1)
        assert api(client, auth, crawl, "stop")["status"] == Crawl.STOPPING

        driver.until_status(crawl, Crawl.STOPPED, timeout=60)
        stuck.wait(10)  # the crawler process is gone...
        assert not crawler_processes(crawl.code)
        worker = worker_state(redis_client, crawl)
        assert worker["state"] == "failed"
        assert worker["killed"] == {"reason": "stop", "signal": "SIGKILL", "grace": GRACE}
        assert "was killed" in worker["message"]
        log = [e for _id, e in redis_client.xrange(keys.log(crawl.code)) if e["worker"] == "w1"]
        assert any(e["level"] == "WARNING" and "was killed" in e["message"] for e in log), log
        # ...its leases are back in the queue, the stuck page among them...
        assert redis_client.hlen(keys.leases(crawl.code, "w1")) == 0
        assert state.read_counters(redis_client, crawl.code)["in_flight"] == 0
        assert url in urls(redis_client.zrange(keys.queue(crawl.code), 0, -1))
        assert job(crawl).get_status() == "finished"
        assert job(crawl).return_value()["killed"]["reason"] == "stop"

        # ...and its RQ worker takes the waiting job: the other crawl runs to its end.
        driver.until(lambda: other.refresh_from_db() or other.is_terminal, 90, "the other crawl to end")
        assert other.status == Crawl.FINISHED, other.reason
        assert other.items.count() == len(other_site.expected_items())
        wait_exit([first], timeout=30, driver=driver)
    finally:
        other_site.stop()

    # Resume: a new worker (w2) crawls what w1 held, the stuck page too; every item exactly once.
    assert api(client, auth, crawl, "resume")["status"] == Crawl.RUNNING
    rq_workers(procs, 1, heartbeat_ttl=300)
    driver.finish(crawl, site)
    assert url in {item.data["url"] for item in crawl.items.all()}
    wait_exit(procs, timeout=30, driver=driver)


def test_pause_never_kills_and_cancel_ends_a_stuck_worker(owner, site, driver, procs, redis_client, client, auth):
    crawl = launch_stuck(owner, site)
    # A short heartbeat TTL, as in the pause documented in docs/operations.md.
    [first] = rq_workers(procs, 1, heartbeat_ttl=2)
    driver.until(lambda: stuck_url(redis_client, crawl), 60, "w1 to be stuck in its callback")
    [stuck] = crawler_processes(crawl.code, "w1")

    # Pause cannot reach a blocked reactor: the crawl shows `pausing` until w1's heartbeat
    # expires, then w1 shows as dead, its leases are back, and the crawl is `paused`.
    assert api(client, auth, crawl, "pause")["status"] == Crawl.PAUSING
    driver.until_status(crawl, Crawl.PAUSED, timeout=60)
    assert worker_state(redis_client, crawl)["state"] == "dead"
    assert state.read_counters(redis_client, crawl.code)["in_flight"] == 0
    # Pause never kills: the process lives on past the grace period and the kill delay.
    observe_until = time.monotonic() + GRACE + KILL_DELAY + 2
    while time.monotonic() < observe_until:
        driver.tick()
        assert stuck.is_running(), "a paused worker was killed"
        time.sleep(0.1)
    assert job(crawl).get_status() == "started"

    assert api(client, auth, crawl, "cancel")["status"] == Crawl.CANCELLED
    driver.until(lambda: not crawler_processes(crawl.code), 60, "the stuck worker to be ended")
    wait_exit([first], timeout=30, driver=driver)  # its RQ worker is free (and had nothing else to do)
    assert job(crawl).get_status() == "finished"
    assert job(crawl).return_value()["killed"] == {"reason": "cancel", "signal": "SIGKILL", "grace": GRACE}
    # Nothing of the cancelled crawl comes back to Redis.
    for _ in range(3):
        driver.tick()
    assert crawl_keys(redis_client, crawl) == []
    crawl.refresh_from_db()
    assert crawl.status == Crawl.CANCELLED
