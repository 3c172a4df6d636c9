"""Pausing on an adversarial site (issue 12): every pause ends, no worker keeps a lease it is not
working on.

The ``lifecycle`` demo site answers slowly (150 ms a page) and has every path a lease can take:
404s, 500s that are retried (and pages that fail once, then answer), a chain of two redirects,
links robots.txt disallows, a page that times out (DOWNLOAD_TIMEOUT 3 s, retried; not less: a
robots.txt that timed out on a loaded machine would disallow the whole site, crawler.robots), duplicate
and offsite links. Two real worker processes with 16 concurrent requests each are paused at
random moments; each pause must reach ``paused`` on both workers with nothing leased, and the
crawl still ends with every expected item exactly once.

The bound waited for here is generous (a loaded machine): what fails is a pause that never ends.
The time a pause takes is measured by ``bench/control_bench.py`` (``pauses``).
"""

import random
import time

import pytest

from crawler import definition, keys, state
from demosite.server import PRIVATE_PREFIX, start_site
from helpers import conduct, start_worker, stream_items
from tests.plugins.installed_spiders import TEST_SPIDERS

PAGE_MS = 150
SETTINGS = {"CONCURRENT_REQUESTS": 16, "CONCURRENT_REQUESTS_PER_DOMAIN": 16, "DOWNLOAD_TIMEOUT": 3,
            "RETRY_TIMES": 2}
PAUSE_BOUND = 20.0  # seconds; a hung pause waits forever


def adversarial_definition(site, spider=""):
    d = site.recommended_definition(slow=True)  # /slow/ allowed: it times out
    d["settings"].update(SETTINGS)
    d = definition.validate(d)
    if spider:
        # a user's own spider, run with the same scheduler and leases: a name the operator
        # installed, whose class the dashboard freezes into the definition at launch
        d["spider"] = spider
        d["operator"] = {"spider_class": TEST_SPIDERS[spider]}
    return d


def _paused(r, code, workers):
    c = state.read_counters(r, code)
    states = {w: c["workers"].get(w, {}).get("state") for w in workers}
    leased = {w: r.hlen(keys.leases(code, w)) for w in workers}
    ok = all(s == "paused" for s in states.values()) and c["in_flight"] == 0 and not any(leased.values())
    return ok, (states, leased, c["in_flight"])


def wait_paused(r, code, workers, bound=PAUSE_BOUND):
    started = time.monotonic()
    seen = None
    while time.monotonic() - started < bound:
        ok, seen = _paused(r, code, workers)
        if ok:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"pause did not end in {bound} s: states, leases, in_flight = {seen}")


@pytest.mark.parametrize("spider", ["", "errback-shop"],
                         ids=["configurable", "errbacks"])
def test_every_pause_ends_with_no_lease_held_on_the_adversarial_site(r, code, redis_url, spider):
    site = start_site("lifecycle", delay_ms=PAGE_MS)
    rng = random.Random(12)
    workers = ["w1", "w2"]
    try:
        state.launch(r, code, adversarial_definition(site, spider))
        procs = [start_worker(redis_url, code, w) for w in workers]
        for _ in range(6):
            # a random moment: after a random number of further pages
            target = state.read_counters(r, code)["pages"] + rng.randint(2, 12)
            deadline = time.monotonic() + 30
            while state.read_counters(r, code)["pages"] < target and time.monotonic() < deadline:
                time.sleep(0.01)
            state.set_control(r, code, "pause")
            wait_paused(r, code, workers)
            state.set_control(r, code, "run")
        conduct(r, code, procs, timeout=120)
        assert [p.returncode for p in procs] == [0, 0]
        items = stream_items(r, code)
        assert len({i["key"] for i in items}) == len(items)
        got = sorted(i["data"]["url"] for i in items)
        assert got == sorted(i["url"] for i in site.expected_items())
        served = [p for _h, p in site.requests]
        assert not [p for p in served if p.startswith(PRIVATE_PREFIX)], "robots.txt not obeyed"
        assert served.count("/slow/") >= 1 and any(p.startswith("/moved/") for p in served)
        assert list(r.scan_iter(match=keys.leases_pattern(code))) == []
    finally:
        site.stop()


# -- the two rules, driven directly (no reactor, no engine) ------------------------------------------


def _scheduler(r, code, paused=False):
    from types import SimpleNamespace

    from scrapy import Spider
    from scrapy.utils.request import RequestFingerprinter

    from crawler.scheduler import RedisScheduler

    engine = SimpleNamespace(downloader=SimpleNamespace(total_concurrency=16, active=set()), paused=paused,
                             spider=None, _slot=SimpleNamespace(inprogress=set()))
    sched = RedisScheduler(r, code, "w1", fingerprinter=RequestFingerprinter(),
                           crawler=SimpleNamespace(engine=engine), pop_batch=8, idle_poll=0)
    sched.schedule_flush = lambda: None  # no reactor here: the test calls flush() itself
    sched.open(type("S", (Spider,), {"name": "s"})())
    return sched, engine


def test_requests_popped_but_not_started_go_back_to_the_queue(r, code):
    state.seed(r, code, [f"http://127.0.0.1:9/p{i}" for i in range(5)])
    sched, _engine = _scheduler(r, code, paused=True)
    assert sched._pop(8) == 5
    assert r.hlen(keys.leases(code, "w1")) == 5 and r.zcard(keys.queue(code)) == 0
    assert sched.return_unstarted() == 5
    sched.channel.wait()
    assert r.hlen(keys.leases(code, "w1")) == 0
    assert r.zcard(keys.queue(code)) == 5
    assert state.read_counters(r, code)["in_flight"] == 0
    assert len(sched.tracker) == 0 and not sched.has_pending_requests()
    assert sched.return_unstarted() == 0  # nothing left: nothing sent
    # the same requests, in the same order, for whoever pops next
    again, _ = _scheduler(r, code)
    assert again._pop(8) == 5
    assert [rq.url for rq in again._ready] == [f"http://127.0.0.1:9/p{i}" for i in range(5)]


def test_started_leases_are_released_once_their_request_left_the_engine(r, code):
    state.seed(r, code, [f"http://127.0.0.1:9/p{i}" for i in range(3)])
    sched, engine = _scheduler(r, code)
    assert sched._pop(8) == 3
    first, second = sched.next_request(), sched.next_request()  # started; the third is not
    engine._slot.inprogress.update({first, second})
    assert sched.sweep() == 0  # both still in the engine
    engine._slot.inprogress.discard(second)  # e.g. its errback and all it yielded are done
    assert sched.sweep() == 1
    sched.flush()
    assert r.hlen(keys.leases(code, "w1")) == 2  # the first (in progress), the third (not started)
    assert sched.sweep() == 0  # never a request not started
    engine._slot.inprogress.clear()
    assert sched.sweep() == 1
    sched.flush()
    assert r.hlen(keys.leases(code, "w1")) == 1
