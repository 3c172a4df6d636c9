"""End-to-end: real worker processes (``python -m crawler run``) against the demo site."""

import json
import signal
import time
from collections import Counter


from crawler import definition, keys, leases, state
from helpers import conduct, start_worker, stream_items


def _launch(r, code, site, **settings):
    d = site.recommended_definition(slow=False)
    d["settings"].update(settings)
    state.launch(r, code, definition.validate(d))
    return d


def _wait(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _assert_complete(r, code, site):
    items = stream_items(r, code)
    keys_count = Counter(i["key"] for i in items)
    by_key = {i["key"]: i["data"] for i in items}
    got = sorted(json.dumps(d, sort_keys=True) for d in by_key.values())
    want = sorted(json.dumps(d, sort_keys=True) for d in site.expected_items())
    assert got == want  # every expected item, nothing else
    return keys_count


def _assert_rules_kept(site):
    served = site.requests
    assert not [p for h, p in served if p.startswith("/calendar/")]
    assert not [h for h, p in served if not h.startswith("127.0.0.1")]
    paths = Counter(p for h, p in served if p != "/robots.txt")
    assert not [p for p, n in paths.items() if n > 1 and p not in ("/broken/",)]  # each page once


def _assert_no_leases(r, code):
    assert list(r.scan_iter(match=keys.leases_pattern(code))) == []
    assert state.read_counters(r, code)["in_flight"] == 0


def test_one_worker_crawls_every_item_exactly_once(r, code, site, redis_url):
    _launch(r, code, site)
    proc = start_worker(redis_url, code, "w1")
    counters = conduct(r, code, [proc])
    assert proc.returncode == 0, proc.stdout.read()
    keys_count = _assert_complete(r, code, site)
    assert set(keys_count.values()) == {1}
    _assert_no_leases(r, code)
    _assert_rules_kept(site)
    assert counters["pages"] > 200 and counters["status"]["404"] >= 1 and counters["errors"] >= 2
    assert counters["workers"]["w1"]["state"] == "finished"
    assert not r.exists(keys.heartbeat(code, "w1"))


def test_two_worker_processes_share_the_crawl(r, code, site, redis_url):
    _launch(r, code, site, CONCURRENT_REQUESTS=4)
    procs = [start_worker(redis_url, code, "w1"), start_worker(redis_url, code, "w2")]
    counters = conduct(r, code, procs)
    assert [p.returncode for p in procs] == [0, 0]
    keys_count = _assert_complete(r, code, site)
    assert set(keys_count.values()) == {1}
    _assert_no_leases(r, code)
    _assert_rules_kept(site)
    assert {i["worker"] for i in stream_items(r, code)} == {"w1", "w2"}
    assert all(w["state"] == "finished" for w in counters["workers"].values())


def test_two_crawls_at_once_do_not_mix(r, redis_url):
    from demosite.server import start_site

    sites = [start_site("test"), start_site("test")]
    codes = ["mixa" + str(time.monotonic_ns())[-6:], "mixb" + str(time.monotonic_ns())[-6:]]
    try:
        for c, s in zip(codes, sites):
            _launch(r, c, s)
        procs = [start_worker(redis_url, c, "w1") for c in codes]
        for c, p in zip(codes, procs):
            conduct(r, c, [p])
        for c, s in zip(codes, sites):
            _assert_complete(r, c, s)
            _assert_no_leases(r, c)
            assert all(i["data"]["url"].startswith(s.url) for i in stream_items(r, c))
    finally:
        for s in sites:
            s.stop()
        for c in codes:
            state.delete_crawl(r, c)


def test_killed_worker_loses_nothing(r, code, redis_url):
    from demosite.server import start_site

    site = start_site("test", delay_ms=60)
    try:
        _launch(r, code, site, CONCURRENT_REQUESTS=8)
        victim = start_worker(redis_url, code, "w1")
        _wait(lambda: state.read_counters(r, code)["pages"] >= 40 and
              state.read_counters(r, code)["in_flight"] > 0, what="crawl in progress")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        assert state.read_counters(r, code)["in_flight"] > 0  # its leases are still held
        # the heartbeat (TTL 2 s in tests) expires; the reaper puts the requests back
        returned = _wait(lambda: leases.reap(r, code), timeout=10, what="heartbeat expiry")
        assert returned > 0
        assert state.read_counters(r, code)["workers"]["w1"]["state"] == "dead"
        heir = start_worker(redis_url, code, "w2")
        conduct(r, code, [heir], reap=True)
        assert heir.returncode == 0
        _assert_complete(r, code, site)  # every item, once by key (a page may have run twice)
        _assert_no_leases(r, code)
    finally:
        site.stop()


def test_pause_stops_fetching_and_resume_continues(r, code, redis_url):
    from demosite.server import start_site

    site = start_site("test", delay_ms=40)
    try:
        _launch(r, code, site, CONCURRENT_REQUESTS=4)
        proc = start_worker(redis_url, code, "w1")
        _wait(lambda: state.read_counters(r, code)["pages"] >= 20, what="some pages")
        state.set_control(r, code, "pause")
        _wait(lambda: state.read_counters(r, code)["workers"]["w1"]["state"] == "paused", what="paused")
        served = len(site.requests)
        queued = state.read_counters(r, code)["queued"]
        time.sleep(1.0)
        assert len(site.requests) == served  # nothing fetched while paused
        assert queued > 0 and state.read_counters(r, code)["queued"] == queued
        state.set_control(r, code, "run")
        _wait(lambda: len(site.requests) > served, timeout=3, what="fetching after resume")
        conduct(r, code, [proc])
        assert proc.returncode == 0
        _assert_complete(r, code, site)
        _assert_no_leases(r, code)
    finally:
        site.stop()


def test_idle_worker_picks_up_a_new_request_quickly(r, code, site, redis_url):
    d = site.recommended_definition(slow=False)
    d["follow"] = {"allow": ["/nothing-to-follow/"], "deny": []}
    state.launch(r, code, definition.validate(d))
    proc = start_worker(redis_url, code, "w1")
    try:
        _wait(lambda: state.read_counters(r, code)["workers"].get("w1", {}).get("state") == "idle"
              and state.read_counters(r, code)["pages"] >= 1, what="idle worker")
        time.sleep(1.0)  # well idle: Scrapy's engine would now sleep up to 5 s
        target = "/category/books/"
        t0 = time.monotonic()
        state.seed(r, code, [site.url + target])
        _wait(lambda: any(p == target for h, p in site.requests), timeout=10, what="pick-up")
        latency = time.monotonic() - t0
        print(f"\nidle pick-up latency: {latency * 1000:.0f} ms")
        assert latency < 2.5  # generous; the engine's own idle poll is 5 s
    finally:
        state.set_control(r, code, "finish")
        proc.wait(30)
    assert proc.returncode == 0


def test_stop_keeps_queue_and_hands_back_leases(r, code, redis_url):
    from demosite.server import start_site

    site = start_site("test", delay_ms=40)
    try:
        _launch(r, code, site, CONCURRENT_REQUESTS=4)
        proc = start_worker(redis_url, code, "w1")
        _wait(lambda: state.read_counters(r, code)["pages"] >= 15, what="some pages")
        state.set_control(r, code, "stop")
        assert proc.wait(30) == 0
        c = state.read_counters(r, code)
        assert c["queued"] > 0 and c["in_flight"] == 0 and c["workers"]["w1"]["state"] == "finished"
        state.set_control(r, code, "run")  # resume: relaunch a worker
        proc = start_worker(redis_url, code, "w1")
        conduct(r, code, [proc])
        _assert_complete(r, code, site)
        _assert_no_leases(r, code)
    finally:
        site.stop()



def test_pages_count_only_crawl_pages_not_robots_txt(r, code, redis_url):
    """Each worker fetches robots.txt itself; that is not a page of the crawl."""
    from demosite import start_site

    site = start_site(profile="demo")  # no redirects, errors or retries: one page per request
    try:
        _launch(r, code, site, ROBOTSTXT_OBEY=True)
        procs = [start_worker(redis_url, code, w) for w in ("w1", "w2")]
        counters = conduct(r, code, procs)
        robots = [p for _h, p in site.requests].count("/robots.txt")
        assert robots >= 1  # once per worker that got any request
        assert counters["pages"] == int(r.hget(keys.stats(code), "popped")) == len(site.requests) - robots
    finally:
        site.stop()


def test_worker_leaves_when_redis_is_gone_for_good(tmp_path, monkeypatch):
    """A worker whose Redis disappeared does not linger forever (CRAWLSITE_REDIS_GIVE_UP)."""
    import redis as redis_lib

    from demosite import start_site
    from launcher.redis import EmbeddedRedis

    monkeypatch.setenv("CRAWLSITE_REDIS_GIVE_UP", "2")
    server = EmbeddedRedis(tmp_path / "redis").start()
    site = start_site(profile="demo", delay_ms=300)
    proc = None
    try:
        r = redis_lib.Redis.from_url(server.url, decode_responses=True)
        _launch(r, "gone1", site, CONCURRENT_REQUESTS=1)
        proc = start_worker(server.url, "gone1", "w1")
        _wait(lambda: int(r.hget(keys.stats("gone1"), "pages") or 0) > 0, what="first page")
        server.stop()
        proc.communicate(timeout=30)  # raises TimeoutExpired if the worker lingers
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        server.stop()
        site.stop()
