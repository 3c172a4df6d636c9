"""Pause, resume, stop, cancel and scale on real crawls (issue 5): nothing lost, nothing twice.

Every crawl here runs for real: RQ burst workers (subprocesses) run Scrapy workers against a slow
local demo site (200 ms a page, so requests are in flight when a control arrives), and a
conductor loop in the test process moves the crawl through its states. Each crawl is then checked
item by item against the site's ground truth: every expected item stored exactly once, nothing
fetched that the rules exclude.

Timings are tight on purpose (heartbeat TTL 1.5 s through CRAWLSITE_HEARTBEAT_TTL, conductor lock
TTL 1 s) and every event is awaited by polling, never by a long fixed sleep.
"""

import json
import signal
import time
from pathlib import Path

import psutil
import pytest
from django.core.management import CommandError, call_command
from redis.exceptions import RedisError

from crawler import keys, state
from dashboard import engine, jobs
from dashboard.conductor import Conductor
from dashboard.models import ApiToken, Crawl, InvalidTransition
from demosite import start_site
from demosite.catalog import Profile
from launcher.redis import EmbeddedRedis
from tests.dashboard.test_engine import check_items_exactly_once, check_rules_respected, make_project
from tests.workers import kill_tree, start_rq_workers as start_burst_workers

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db(transaction=True)

HEARTBEAT_TTL = 1.5
# Small enough to crawl in a few seconds, big enough to be mid-crawl when a control arrives;
# traps on, so "nothing fetched that the rules exclude" means something.
SMALL = Profile("control", categories=3, products_per_category=16, per_page=6, traps=True)
PER_WORKER = 4  # CONCURRENT_REQUESTS of each worker


@pytest.fixture
def site():
    site = start_site(profile=SMALL, delay_ms=200)
    yield site
    site.stop()


@pytest.fixture
def procs():
    """RQ burst worker processes started by a test; whatever is left is killed at the end."""
    started = []
    yield started
    for proc in started:
        if proc.poll() is None:
            kill_tree(proc)


def start_rq_workers(procs, count):
    new = start_burst_workers(count, CRAWLSITE_HEARTBEAT_TTL=str(HEARTBEAT_TTL))
    procs.extend(new)
    return new


def launch(owner, site, workers, **settings):
    project = make_project(owner, site, CONCURRENT_REQUESTS=PER_WORKER, **settings)
    crawl = engine.launch(project, workers=workers)
    crawl.refresh_from_db()
    assert crawl.status == Crawl.RUNNING
    return crawl


class Driver:
    """The conductor loop of `make run`, driven from the test: tick, then look."""

    def __init__(self, redis):
        self.redis = redis
        self.conductor = self.new_conductor()

    @staticmethod
    def new_conductor():
        return Conductor(tick=0.1, lock_ttl=1.0)

    def tick(self):
        try:
            if self.conductor.hold_lock():
                self.conductor.tick()
        except RedisError:
            self.conductor.active = False  # as Conductor.run: Redis restarting, try again

    def kill_conductor(self):
        """The conductor process dies: no release, its lock lapses after its TTL."""
        self.conductor = self.new_conductor()

    def until(self, predicate, timeout=60, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.tick()
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def until_status(self, crawl, *statuses, timeout=60):
        def reached():
            crawl.refresh_from_db()
            return crawl.status in statuses

        self.until(reached, timeout, f"crawl {crawl.code} to be {'/'.join(statuses)} (is {crawl.status})")

    def until_pages(self, site, count, timeout=60):
        self.until(lambda: len(site.requests) >= count, timeout, f"{count} pages fetched")

    def until_workers_running(self, crawl, count, timeout=60):
        def running():
            workers = state.read_counters(self.redis, crawl.code)["workers"]
            return sum(1 for w in workers.values() if w.get("state") in ("running", "idle")) >= count

        self.until(running, timeout, f"{count} workers of {crawl.code} running")

    def finish(self, crawl, site, timeout=120):
        self.until(lambda: _terminal(crawl), timeout, "the crawl to end")
        assert crawl.status == Crawl.FINISHED, (crawl.status, crawl.reason)
        check_items_exactly_once(crawl, site)
        check_rules_respected(site)
        assert crawl.stats["items_stored"] == len(site.expected_items())

    def release(self):
        self.conductor.release()


def _terminal(crawl):
    crawl.refresh_from_db()
    return crawl.is_terminal


@pytest.fixture
def driver(redis_client):
    driver = Driver(redis_client)
    yield driver
    driver.release()


def wait_exit(procs, timeout=30, driver=None):
    """Wait for RQ burst workers to exit (ticking the conductor meanwhile, if given)."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
        if time.monotonic() > deadline:
            raise AssertionError(f"RQ workers still running after {timeout} s")
        if driver is not None:
            driver.tick()
        time.sleep(0.05)


def control_key(redis, crawl):
    return redis.get(keys.control(crawl.code))


def crawl_keys(redis, crawl):
    return sorted(redis.scan_iter(match=keys.crawl_pattern(crawl.code), count=1000))


def crawler_processes(code, worker=None):
    """The `python -m crawler run CODE --worker ID` children of the RQ work horses."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if "crawler" in cmd and "run" in cmd and code in cmd and "-m" in cmd:
            if worker is None or cmd[cmd.index("--worker") + 1] == worker:
                found.append(proc)
    return found


# -- pause and resume -----------------------------------------------------------------------------


def test_pause_waits_for_in_flight_then_nothing_is_fetched_and_resume_finishes(owner, site, driver, procs,
                                                                               redis_client):
    crawl = launch(owner, site, workers=2)
    start_rq_workers(procs, 2)
    driver.until_workers_running(crawl, 2)
    driver.until_pages(site, 12)

    crawl = engine.control(crawl, "pause")
    assert crawl.status == Crawl.PAUSING
    crawl.refresh_from_db()
    assert crawl.status == Crawl.PAUSING
    assert control_key(redis_client, crawl) == "pause"
    started = time.monotonic()
    driver.until_status(crawl, Crawl.PAUSED, timeout=10)
    assert time.monotonic() - started < 5
    counters = state.read_counters(redis_client, crawl.code)
    assert counters["in_flight"] == 0
    assert all(w["state"] == "paused" for w in counters["workers"].values()), counters["workers"]

    fetched = len(site.requests)
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        driver.tick()
        time.sleep(0.1)
    assert len(site.requests) == fetched, "pages fetched while paused"
    crawl.refresh_from_db()
    assert crawl.status == Crawl.PAUSED
    assert redis_client.zcard(keys.queue(crawl.code)) > 0

    crawl = engine.control(crawl, "resume")
    assert crawl.status == Crawl.RUNNING
    assert control_key(redis_client, crawl) == "run"
    resumed = time.monotonic()
    driver.until_pages(site, fetched + 1, timeout=5)
    assert time.monotonic() - resumed < 2, "resume must continue within a second or so"
    driver.finish(crawl, site)
    wait_exit(procs)


# -- stop and resume ------------------------------------------------------------------------------


def test_stop_frees_the_workers_keeps_queue_and_dedupe_and_resume_relaunches(owner, site, driver, procs,
                                                                              redis_client):
    crawl = launch(owner, site, workers=2)
    first = start_rq_workers(procs, 2)
    driver.until_workers_running(crawl, 2)
    driver.until_pages(site, 12)

    crawl = engine.control(crawl, "stop")
    assert crawl.status == Crawl.STOPPING
    assert control_key(redis_client, crawl) == "stop"
    driver.until_status(crawl, Crawl.STOPPED, timeout=30)
    wait_exit(first, timeout=20, driver=driver)  # the RQ burst workers had nothing left to do: slots freed
    assert all(p.returncode == 0 for p in first)
    assert not crawler_processes(crawl.code)
    assert redis_client.zcard(keys.queue(crawl.code)) > 0
    assert state.read_counters(redis_client, crawl.code)["seen"] > 0
    assert not list(redis_client.scan_iter(match=keys.leases_pattern(crawl.code))) or all(
        redis_client.hlen(k) == 0 for k in redis_client.scan_iter(match=keys.leases_pattern(crawl.code)))
    fetched = len(site.requests)
    assert fetched < 60  # the crawl really was stopped half way

    crawl = engine.control(crawl, "resume")
    assert crawl.status == Crawl.RUNNING
    crawl.refresh_from_db()
    assert crawl.launched_workers == 4  # w3 and w4 launched again
    assert set(jobs.statuses(crawl.code, crawl.launched_workers)) == {"w1", "w2", "w3", "w4"}
    start_rq_workers(procs, 2)
    driver.finish(crawl, site)
    wait_exit(procs)
    # Dedupe was kept: no page of the first half was fetched again (robots.txt aside).
    pages = [path for _host, path in site.requests if path != "/robots.txt"]
    assert len(pages) == len(set(pages)), "a page was fetched twice"


# -- any sequence --------------------------------------------------------------------------------


def test_pause_resume_stop_resume_scale_up_stores_every_item_once(owner, site, driver, procs, redis_client):
    crawl = launch(owner, site, workers=2)
    first = start_rq_workers(procs, 2)
    driver.until_workers_running(crawl, 2)
    driver.until_pages(site, 8)

    engine.control(crawl, "pause")
    driver.until_status(crawl, Crawl.PAUSED, timeout=10)
    engine.control(crawl, "resume")
    driver.until_pages(site, len(site.requests) + 6, timeout=10)

    engine.control(crawl, "stop")
    driver.until_status(crawl, Crawl.STOPPED, timeout=30)
    wait_exit(first, timeout=20, driver=driver)

    crawl = engine.control(crawl, "resume")
    start_rq_workers(procs, 2)
    driver.until_workers_running(crawl, 2)
    crawl.refresh_from_db()
    crawl = engine.scale(crawl, 3)
    assert crawl.workers == 3
    assert jobs.statuses(crawl.code, crawl.launched_workers)["w5"] == "queued"
    start_rq_workers(procs, 1)
    driver.finish(crawl, site)
    wait_exit(procs)
    assert crawl.launched_workers == 5


# -- failures: a worker SIGKILLed, the conductor killed, Redis restarted ----------------------------


def test_a_worker_killed_with_sigkill_loses_nothing(owner, site, driver, procs, redis_client):
    crawl = launch(owner, site, workers=2)
    start_rq_workers(procs, 2)
    driver.until_workers_running(crawl, 2)
    driver.until_pages(site, 10)
    leases_key = keys.leases(crawl.code, "w1")
    driver.until(lambda: redis_client.hlen(leases_key) > 0, 10, "w1 to hold leases")
    [victim] = crawler_processes(crawl.code, "w1")
    held = redis_client.hlen(leases_key)
    victim.send_signal(signal.SIGKILL)
    victim.wait(5)
    killed_at = time.monotonic()

    # Its leases come back once its heartbeat expires; the other worker carries on.
    driver.until(lambda: redis_client.hlen(leases_key) == 0, 15, "w1's leases to return")
    assert time.monotonic() - killed_at < HEARTBEAT_TTL + 3
    worker = json.loads(redis_client.hget(keys.workers(crawl.code), "w1"))
    assert worker["state"] == "dead"
    assert held > 0
    driver.finish(crawl, site)
    wait_exit(procs)
    assert jobs.statuses(crawl.code, crawl.launched_workers)["w1"] == "failed"


def test_conductor_killed_and_restarted_mid_crawl(owner, site, driver, procs, redis_client):
    crawl = launch(owner, site, workers=2)
    start_rq_workers(procs, 2)
    driver.until_workers_running(crawl, 1)
    driver.until_pages(site, 10)
    driver.kill_conductor()  # dies while running: its lock is still held
    driver.until_pages(site, 20)
    assert redis_client.exists(keys.conductor_lock())

    # ...and again while the crawl is pausing: the new conductor completes the pause.
    engine.control(crawl, "pause")
    driver.kill_conductor()
    driver.until_status(crawl, Crawl.PAUSED, timeout=15)
    engine.control(crawl, "resume")
    driver.until_pages(site, len(site.requests) + 4, timeout=10)
    driver.kill_conductor()
    driver.finish(crawl, site)
    wait_exit(procs)


@pytest.fixture
def shared_redis():
    """The suite's embedded Redis (tests/plugins/embedded_redis.py), to restart it in place."""
    from tests.plugins import embedded_redis

    return embedded_redis._state


def test_redis_restarted_while_paused_then_resume_finishes(owner, site, driver, procs, redis_client,
                                                           shared_redis):
    crawl = launch(owner, site, workers=2)
    start_rq_workers(procs, 2)
    driver.until_workers_running(crawl, 2)
    driver.until_pages(site, 12)
    engine.control(crawl, "pause")
    driver.until_status(crawl, Crawl.PAUSED, timeout=10)

    # Turn the append-only file on (as `make run` has it) and wait until it holds everything.
    redis_client.config_set("appendonly", "yes")
    driver.until(lambda: _aof_ready(redis_client), 20, "the AOF rewrite")
    queued = redis_client.zcard(keys.queue(crawl.code))
    seen = state.read_counters(redis_client, crawl.code)["seen"]
    assert queued > 0 and seen > 0

    old = shared_redis["server"]
    old.stop()  # SIGTERM: redis-server flushes the AOF
    new = EmbeddedRedis(old.data_dir, port=old.port, persistent=True).start()
    shared_redis["server"] = new

    assert redis_client.zcard(keys.queue(crawl.code)) == queued
    assert state.read_counters(redis_client, crawl.code)["seen"] == seen
    assert control_key(redis_client, crawl) == "pause"
    fetched = len(site.requests)
    for _ in range(5):
        driver.tick()
        time.sleep(0.1)
    crawl.refresh_from_db()
    assert crawl.status == Crawl.PAUSED
    assert len(site.requests) == fetched

    engine.control(crawl, "resume")
    driver.until_pages(site, fetched + 1, timeout=10)
    driver.finish(crawl, site)
    wait_exit(procs)


def test_redis_restarted_mid_crawl_loses_nothing(owner, site, driver, procs, redis_client, shared_redis):
    """Redis goes away while both workers crawl: the writes they had sent are sent again on a new
    connection, requests leased by a pop whose reply was lost go back, and the crawl ends with
    every item exactly once."""
    crawl = launch(owner, site, workers=2)
    start_rq_workers(procs, 2)
    driver.until_workers_running(crawl, 2)
    redis_client.config_set("appendonly", "yes")
    driver.until(lambda: _aof_ready(redis_client), 20, "the AOF rewrite")
    driver.until_pages(site, 12)

    old = shared_redis["server"]
    old.stop()  # SIGTERM: redis-server flushes the AOF
    new = EmbeddedRedis(old.data_dir, port=old.port, persistent=True).start()
    shared_redis["server"] = new

    fetched = len(site.requests)
    driver.until_pages(site, fetched + 6, timeout=15)  # the workers carry on
    driver.finish(crawl, site)
    wait_exit(procs)


def _aof_ready(redis):
    info = redis.info("persistence")
    return (info.get("aof_enabled") == 1 and not info.get("aof_rewrite_in_progress")
            and not info.get("aof_rewrite_scheduled"))


# -- refusals (409) ------------------------------------------------------------------------------


def _snapshot(redis, crawl):
    crawl.refresh_from_db()
    return crawl.status, control_key(redis, crawl)


def _refused(crawl, action, match, redis, client, auth):
    """``action`` is refused by the engine, the API (409) and crawlctl, and nothing changes."""
    before = _snapshot(redis, crawl)
    with pytest.raises(InvalidTransition, match=match):
        engine.control(crawl, action)
    assert _snapshot(redis, crawl) == before
    response = client.post(f"/api/crawls/{crawl.code}/{action}", **auth)
    assert response.status_code == 409, response.content
    assert response.json()["detail"].startswith(f"Crawl {crawl.code}") or crawl.code in response.json()["detail"]
    assert _snapshot(redis, crawl) == before
    with pytest.raises(CommandError, match=match):
        call_command("crawlctl", crawl.code, action)
    assert _snapshot(redis, crawl) == before


def test_controls_that_cannot_apply_are_refused_with_a_reason_and_change_nothing(owner, client, procs, driver,
                                                                                 redis_client):
    site = start_site(profile=SMALL)  # fast: this crawl only has to reach its end
    try:
        auth = {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(owner)}"}
        crawl = launch(owner, site, workers=1)  # running, its job waits for an RQ worker
        _refused(crawl, "resume", "is already running", redis_client, client, auth)
        _refused(crawl, "cancel", "pause or stop it before cancelling", redis_client, client, auth)

        engine.control(crawl, "pause")
        _refused(crawl, "pause", "is already pausing", redis_client, client, auth)
        driver.until_status(crawl, Crawl.PAUSED, timeout=10)  # no worker has started: nothing in flight
        _refused(crawl, "pause", "is already paused", redis_client, client, auth)

        response = client.post(f"/api/crawls/{crawl.code}/resume", **auth)
        assert response.status_code == 200, response.content
        start_rq_workers(procs, 1)
        driver.finish(crawl, site)
        wait_exit(procs)

        for action in ("pause", "resume", "cancel"):
            _refused(crawl, action, "it is finished", redis_client, client, auth)
        _refused(crawl, "stop", "finished", redis_client, client, auth)
        response = client.post(f"/api/crawls/{crawl.code}/scale", json.dumps({"workers": 2}),
                               content_type="application/json", **auth)
        assert response.status_code == 409
        assert "finished" in response.json()["detail"]
        with pytest.raises(CommandError, match="finished"):
            call_command("crawlctl", crawl.code, "scale", "2")
        crawl.refresh_from_db()
        assert crawl.status == Crawl.FINISHED and crawl.workers == 1
        check_items_exactly_once(crawl, site)
    finally:
        site.stop()


# -- cancel ---------------------------------------------------------------------------------------


def test_cancel_of_a_paused_crawl_deletes_its_redis_state_and_keeps_its_items(owner, site, driver, procs,
                                                                             redis_client):
    crawl = launch(owner, site, workers=2)
    start_rq_workers(procs, 2)
    driver.until_workers_running(crawl, 2)
    driver.until(lambda: crawl.items.count() >= 5, 30, "some items stored")
    engine.control(crawl, "pause")
    driver.until_status(crawl, Crawl.PAUSED, timeout=10)

    crawl = engine.control(crawl, "cancel")
    assert crawl.status == Crawl.CANCELLED
    stored = crawl.items.count()
    assert stored >= 5
    driver.until(lambda: not crawl_keys(redis_client, crawl), 10, "the crawl's Redis keys to go")
    # The workers leave: their RQ burst workers exit and nothing more is fetched.
    wait_exit(procs, timeout=20, driver=driver)
    assert not crawler_processes(crawl.code)
    for _ in range(3):
        driver.tick()
    assert crawl_keys(redis_client, crawl) == []
    crawl.refresh_from_db()
    assert crawl.status == Crawl.CANCELLED
    assert crawl.items.count() == stored  # items already stored stay
    want = {item["url"] for item in site.expected_items()}
    assert {item.data["url"] for item in crawl.items.all()} <= want
    check_rules_respected(site)


# -- scale down -----------------------------------------------------------------------------------


def test_scale_down_retires_a_worker_that_hands_back_its_leases(owner, site, driver, procs, redis_client):
    crawl = launch(owner, site, workers=2)
    start_rq_workers(procs, 2)
    driver.until_workers_running(crawl, 2)
    driver.until_pages(site, 10)

    crawl = engine.scale(crawl, 1)
    assert crawl.workers == 1
    assert redis_client.smembers(keys.retired(crawl.code)) == {"w2"}

    def retired():
        raw = redis_client.hget(keys.workers(crawl.code), "w2")
        return raw and json.loads(raw)["state"] == "finished"

    driver.until(retired, 15, "w2 to retire")
    assert json.loads(redis_client.hget(keys.workers(crawl.code), "w2"))["message"] == "stopped"
    assert redis_client.hlen(keys.leases(crawl.code, "w2")) == 0
    driver.until(lambda: any(p.poll() is not None for p in procs), 15, "an RQ worker to exit")
    assert not crawler_processes(crawl.code, "w2")
    crawl.refresh_from_db()
    assert crawl.status == Crawl.RUNNING
    w1 = json.loads(redis_client.hget(keys.workers(crawl.code), "w1"))
    assert w1["state"] in ("running", "idle")
    driver.finish(crawl, site)
    wait_exit(procs)
    assert jobs.statuses(crawl.code, crawl.launched_workers)["w2"] == "finished"
