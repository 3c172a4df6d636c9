"""Politeness across the fleet (issue 16): per-domain limits hold for the crawl as a whole.

The first tests drive the queue scripts directly (several workers are several ``RequestQueue``
objects on one real Redis); the last ones run real worker processes against a site that counts the
requests it serves at once (``polite_site.py``). Times the limits are measured against are Redis's.
"""

import json
import signal
import time

from crawler import keys, leases, politeness, scripts, state
from crawler.queue import RequestQueue
from helpers import conduct, start_worker, stream_items
from polite_site import CountingHost, definition


def _seed(r, code, hosts, per_host):
    return state.seed(r, code, [f"http://{h}/p{i}" for h in hosts for i in range(per_host)])


def _hosts(members):
    return sorted(json.loads(m)["slot"] for m in members)


def _limits(r, code, **kw):
    politeness.write_limits(r, code, politeness.Limits(**{"randomize": False, **kw}))


# -- the queue scripts --------------------------------------------------------------------------------


def test_per_domain_concurrency_holds_across_workers(r, code):
    _seed(r, code, ["a.test", "b.test"], 5)
    _limits(r, code, limit=2)
    w1, w2 = RequestQueue(r, code, "w1"), RequestQueue(r, code, "w2")
    status, got = w1.pop_many(0, 8)
    assert status == "ok" and _hosts(got) == ["a.test", "a.test", "b.test", "b.test"]
    status, rest = w2.pop_many(0, 8)  # both domains are at their limit, crawl-wide
    assert status == "wait" and 0 < int(rest[0]) <= 1000
    assert r.hgetall(keys.in_flight(code)) == {"a.test": "2", "b.test": "2"}
    a_lease = next(json.loads(m)["seq"] for m in got if json.loads(m)["slot"] == "a.test")
    assert w1.release([str(a_lease)]) == 1  # a response handled: its slot comes back
    status, more = w2.pop_many(0, 8)
    assert status == "ok" and _hosts(more) == ["a.test"]
    assert r.zcard(keys.queue(code)) == 5  # every request still counted once in the crawl's queue


def test_a_busy_domain_never_blocks_the_others(r, code):
    _seed(r, code, ["slow.test"], 20)
    _seed(r, code, ["fast.test"], 20)
    _limits(r, code, limit=1)
    q = RequestQueue(r, code, "w1")
    taken = []
    for _ in range(5):
        status, got = q.pop_many(0, 8)
        assert status == "ok"
        taken += _hosts(got)
        q.release([k for k in r.hkeys(keys.leases(code, "w1")) if "fast" in r.hget(keys.leases(code, "w1"), k)])
    assert taken.count("slow.test") == 1 and taken.count("fast.test") == 5


def test_download_delay_is_kept_on_the_redis_clock(r, code):
    _seed(r, code, ["a.test"], 3)
    _limits(r, code, limit=8, delay=0.3)
    q = RequestQueue(r, code, "w1")
    assert q.pop_many(0, 8)[0] == "ok"
    assert r.hlen(keys.leases(code, "w1")) == 1  # one request per delay, whatever the batch size
    status, rest = RequestQueue(r, code, "w2").pop_many(0, 8)
    assert status == "wait" and 200 <= int(rest[0]) <= 300
    deadline = time.monotonic() + 5
    while (status := q.pop_many(0, 8)[0]) == "wait" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert status == "ok" and r.hlen(keys.leases(code, "w1")) == 2


def test_jitter_keeps_the_delay_between_half_and_one_and_a_half(r, code):
    _seed(r, code, ["a.test"], 2)
    politeness.write_limits(r, code, politeness.Limits(limit=8, delay=1.0, randomize=True))
    RequestQueue(r, code, "w1").pop_many(0, 1)
    assert 500 <= r.pttl(keys.slot_next_prefix(code) + "a.test") <= 1500


def test_returned_and_reaped_leases_give_their_slots_back(r, code):
    _seed(r, code, ["a.test"], 4)
    _limits(r, code, limit=2)
    w1, w2 = RequestQueue(r, code, "w1"), RequestQueue(r, code, "w2")
    assert len(w1.pop_many(0, 8)[1]) == 2
    assert w2.pop_many(0, 8)[0] == "wait"
    w1.return_leases()  # a pause's unstarted requests, a retiring worker
    assert r.hgetall(keys.in_flight(code)) == {}
    assert len(w2.pop_many(0, 8)[1]) == 2
    r.hset(keys.workers(code), "w2", json.dumps({"worker": "w2", "state": "running"}))
    assert leases.reap(r, code) == 2  # w2 has no heartbeat: it is dead, its slots come back
    assert r.hgetall(keys.in_flight(code)) == {}
    assert len(w1.pop_many(0, 8)[1]) == 2


def test_site_wide_budget_is_shared_by_two_crawls(r, code):
    other = code + "x"
    try:
        for c in (code, other):
            _seed(r, c, ["shared.test"], 3)
            politeness.write_limits(r, c, politeness.Limits(limit=1, randomize=False, site=True))
        _seed(r, other, ["own.test"], 1)
        assert RequestQueue(r, code, "w1").pop_many(0, 8)[0] == "ok"
        status, got = RequestQueue(r, other, "w1").pop_many(0, 8)
        assert status == "ok" and _hosts(got) == ["own.test"]  # shared.test is busy site-wide
        assert r.hget(keys.site_in_flight(), "shared.test") == "1"
        RequestQueue(r, code, "w1").release(r.hkeys(keys.leases(code, "w1")))
        assert r.hget(keys.site_in_flight(), "shared.test") is None
        # another crawl's release does not re-score this crawl's slot: it is looked at again soon
        deadline = time.monotonic() + 5
        while (got := RequestQueue(r, other, "w2").pop_many(0, 8))[0] == "wait" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _hosts(got[1]) == ["shared.test"]
        state.delete_crawl(r, other)  # cancelled while it held the site's slot: given back
        assert r.hget(keys.site_in_flight(), "shared.test") is None
    finally:
        state.delete_crawl(r, other)
        r.delete(keys.site_in_flight())


def test_autothrottle_delay_is_shared_and_follows_scrapys_rule(r, code):
    politeness.write_limits(r, code, politeness.Limits(autothrottle=True, delay=0.1, start_delay=1.0,
                                                       max_delay=3.0, target_concurrency=2.0, randomize=False))
    run = lambda samples: scripts.run(r, [politeness.throttle_call(code, samples)])  # noqa: E731
    run([("a.test", 0.4, 200)])  # target 0.2 s; (1.0 + 0.2) / 2 = 0.6 s
    assert r.hget(keys.throttle(code), "a.test") == "600"
    run([("a.test", 0.0, 500)])  # an error page never lowers it
    assert r.hget(keys.throttle(code), "a.test") == "600"
    run([("a.test", 10.0, 200)])  # 5 s wanted, kept at the maximum
    assert r.hget(keys.throttle(code), "a.test") == "3000"
    run([("a.test", 0.0, 200)] * 10)  # never below DOWNLOAD_DELAY
    assert r.hget(keys.throttle(code), "a.test") == "100"
    _seed(r, code, ["a.test"], 2)
    RequestQueue(r, code, "w1").pop_many(0, 1)
    assert 0 < r.pttl(keys.slot_next_prefix(code) + "a.test") <= 100


def test_many_domains_pop_only_the_ready_ones(r, code):
    _seed(r, code, [f"d{i}.test" for i in range(2000)], 1)
    _limits(r, code, limit=1, delay=30)
    q = RequestQueue(r, code, "w1")
    popped = 0
    while (status := q.pop_many(0, 64))[0] == "ok":
        popped += len(status[1])
    assert popped == 2000 and status[0] == "empty"


def test_bad_settings_in_the_environment_name_the_variable():
    import pytest

    with pytest.raises(ValueError, match="CRAWLSITE_SITE_LIMITS"):
        politeness.site_wide({"CRAWLSITE_SITE_LIMITS": "maybe"})
    assert politeness.site_wide({"CRAWLSITE_SITE_LIMITS": "1"}) is True
    assert politeness.site_wide({}) is False


# -- real workers against a site that counts ---------------------------------------------------------


def _wait(predicate, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _crawl(r, code, redis_url, hosts, workers, **settings):
    state.launch(r, code, definition(hosts, **settings))
    return [start_worker(redis_url, code, f"w{i}") for i in range(1, workers + 1)]


def _assert_all_pages(r, code, hosts):
    urls = {i["data"]["url"] for i in stream_items(r, code)}
    assert urls == {f"http://{h.address}:{h.port}/p/{n}" for h in hosts for n in range(h.pages)}
    assert list(r.scan_iter(match=keys.leases_pattern(code))) == []
    assert r.hgetall(keys.in_flight(code)) == {}  # every slot given back


def test_four_workers_keep_two_at_once_through_pause_and_a_killed_worker(r, code, redis_url):
    host = CountingHost("127.0.0.1", pages=40, delay=0.15).start()
    try:
        procs = _crawl(r, code, redis_url, [host], 4, CONCURRENT_REQUESTS_PER_DOMAIN=2)
        _wait(lambda: len(host.starts) >= 10, "10 pages")
        state.set_control(r, code, "pause")
        _wait(lambda: all(w.get("state") == "paused" for w in state.read_counters(r, code)["workers"].values())
              and len(state.read_counters(r, code)["workers"]) == 4, "every worker paused")
        assert r.hgetall(keys.in_flight(code)) == {}  # a paused crawl holds no slot
        state.set_control(r, code, "run")
        holders = []
        _wait(lambda: holders.extend(i for i in range(4) if r.hlen(keys.leases(code, f"w{i + 1}")))
              or holders, "a worker holding a lease")
        procs[holders[0]].send_signal(signal.SIGKILL)  # its slots come back when its heartbeat expires
        conduct(r, code, [p for i, p in enumerate(procs) if i != holders[0]], timeout=120, reap=True)
        _assert_all_pages(r, code, [host])
        assert host.max_concurrent == 2  # the limit, used and never passed
    finally:
        for p in procs:
            p.kill()
        host.stop()


def test_four_workers_keep_the_download_delay(r, code, redis_url):
    host = CountingHost("127.0.0.1", pages=20).start()
    try:
        procs = _crawl(r, code, redis_url, [host], 4, DOWNLOAD_DELAY=0.25, RANDOMIZE_DOWNLOAD_DELAY=False)
        conduct(r, code, procs, timeout=120)
        _assert_all_pages(r, code, [host])
        assert host.max_in_window(2.0) <= 9  # one request every 0.25 s, crawl-wide
        assert int(state.read_counters(r, code)["stats"].get("polite_wait_ms", 0)) > 0  # shown on the page
    finally:
        host.stop()


def test_a_slow_domain_limited_to_one_leaves_the_other_at_full_speed(r, code, redis_url):
    slow = CountingHost("127.0.0.2", pages=8, delay=0.8).start()
    fast = CountingHost("127.0.0.3", pages=30).start()
    try:
        procs = _crawl(r, code, redis_url, [slow, fast], 2, CONCURRENT_REQUESTS_PER_DOMAIN=1)
        conduct(r, code, procs, timeout=120)
        _assert_all_pages(r, code, [slow, fast])
        assert slow.max_concurrent == 1 and fast.max_concurrent == 1
        # the fast domain was done while the slow one was still being crawled (no head-of-line blocking)
        assert max(fast.starts) < max(slow.starts)
    finally:
        slow.stop()
        fast.stop()


def test_a_worker_reports_latencies_to_the_shared_autothrottle(r, code):
    from types import SimpleNamespace

    from scrapy import Request, Spider
    from scrapy.http import HtmlResponse
    from scrapy.utils.request import RequestFingerprinter

    from crawler.scheduler import RedisScheduler

    engine = SimpleNamespace(downloader=SimpleNamespace(total_concurrency=16, active=set(), slots={}),
                             paused=False, spider=None, _slot=SimpleNamespace(inprogress=set()))
    limits = politeness.Limits(autothrottle=True, start_delay=1.0, target_concurrency=1.0, randomize=False)
    sched = RedisScheduler(r, code, "w1", fingerprinter=RequestFingerprinter(),
                           crawler=SimpleNamespace(engine=engine), idle_poll=0, limits=limits)
    sched.schedule_flush = lambda: None
    sched.open(type("S", (Spider,), {"name": "s"})())
    assert engine.downloader.per_slot_settings.get("a.test")["concurrency"] == 16  # Scrapy's limit never binds
    request = Request("http://a.test/1", meta={"download_latency": 0.2})
    sched.response_downloaded(HtmlResponse(request.url, status=200, request=request), request)
    own = Request("http://a.test/2", meta={"download_latency": 5.0})
    politeness.mark_popped(own)  # a request that asked Scrapy's AutoThrottle to leave it alone
    own.meta[politeness.USER_NO_THROTTLE] = True
    sched.response_downloaded(HtmlResponse(own.url, status=200, request=own), own)
    sched.flush()
    assert r.hget(keys.throttle(code), "a.test") == "600"  # (1.0 + 0.2) / 2: the first one only
    assert r.hget(keys.politeness(code), "autothrottle") == "1"
