import json
import threading

import pytest
from scrapy import Request, Spider
from scrapy.http import JsonRequest
from scrapy.utils.request import RequestFingerprinter

from crawler import keys, leases, state
from crawler.dupefilter import RedisDupeFilter
from crawler.queue import RequestQueue, request_from_json, request_to_json

FP = RequestFingerprinter()


class _Spider(Spider):
    name = "s"

    def parse_item(self, response):
        pass

    def failed(self, failure):
        pass


def _enqueue(r, code, requests, spider=None):
    df = RedisDupeFilter(r, code)
    return df.enqueue([(None if q.dont_filter else FP.fingerprint(q), q.priority, request_to_json(q, spider))
                       for q in requests])


def test_request_json_round_trip_keeps_body_headers_meta_and_callback(r, code):
    spider = _Spider()
    req = Request("http://example.com/p?q=1", method="POST", body=b"\x00\xffbinary", priority=3,
                  headers={"X-Token": "abc"}, meta={"depth": 2, "obj": object()}, cb_kwargs={"k": [1]},
                  callback=spider.parse_item, dont_filter=True)
    data = request_to_json(req, spider)
    json.loads(data)  # plain JSON, never pickle
    back, seq, fp = request_from_json(data, spider)
    assert (back.url, back.method, back.body, back.priority) == (req.url, "POST", b"\x00\xffbinary", 3)
    assert back.headers[b"X-Token"] == b"abc" and back.meta == {"depth": 2} and back.cb_kwargs == {"k": [1]}
    assert back.callback == spider.parse_item and back.dont_filter and seq is None and fp is None


def test_plain_request_is_stored_compactly_with_its_fingerprint():
    spider = _Spider()
    req = Request("http://example.com/a", callback=spider.parse_item, meta={"depth": 3})
    fp = FP.fingerprint(req)
    data = json.loads(request_to_json(req, spider, fp))
    # only what differs from a default Request, and the fingerprint the popping worker reuses
    assert data == {"url": "http://example.com/a", "callback": "parse_item", "meta": {"depth": 3},
                    "fp": fp.hex()}
    back, _, back_fp = request_from_json(json.dumps(data), spider)
    assert back_fp == fp == FP.fingerprint(back)
    assert (back.callback, back.method, back.priority, back.dont_filter) == (spider.parse_item, "GET", 0, False)


@pytest.mark.parametrize("make", [
    lambda s: Request("http://e.com/c", cookies={"k": "v"}, flags=["f"], encoding="latin-1",
                      errback=s.failed, priority=-2),
    lambda s: JsonRequest("http://e.com/j", data={"q": [1, 2]}, callback=s.parse_item),
])
def test_every_request_field_and_subclass_round_trips(make):
    spider = _Spider()
    req = make(spider)
    back, _, _ = request_from_json(request_to_json(req, spider), spider)
    assert type(back) is type(req)
    for attr in ("url", "method", "body", "cookies", "encoding", "priority", "flags", "callback", "errback"):
        assert getattr(back, attr) == getattr(req, attr), attr
    assert back.headers.to_unicode_dict() == req.headers.to_unicode_dict()


def test_request_whose_callback_is_not_a_spider_method_is_refused():
    spider = _Spider()
    with pytest.raises(ValueError, match="not an instance method"):
        request_to_json(Request("http://e.com/", callback=lambda response: None), spider)


def test_queue_orders_by_priority_then_fifo(r, code):
    reqs = [Request(f"http://e.com/{i}", priority=p) for i, p in enumerate([0, 5, 0, 5, -1, 0])]
    assert _enqueue(r, code, reqs) == [True] * 6
    q = RequestQueue(r, code, "w1")
    order = []
    while (got := q.pop())[0] == "ok":
        order.append(request_from_json(got[1])[0].url.rsplit("/", 1)[1])
    assert order == ["1", "3", "0", "2", "5", "4"]


def test_pop_leases_and_return_puts_back_with_original_order(r, code):
    _enqueue(r, code, [Request(f"http://e.com/{i}") for i in range(3)])
    q = RequestQueue(r, code, "w1")
    status, member = q.pop()
    assert status == "ok" and len(q) == 2
    assert r.hgetall(keys.leases(code, "w1")) == {str(json.loads(member)["seq"]): member}
    assert state.read_counters(r, code)["in_flight"] == 1
    assert q.return_leases() == 1
    assert len(q) == 3 and not r.exists(keys.leases(code, "w1"))
    assert q.pop()[1] == member  # back at its place: first
    assert r.hget(keys.stats(code), "requeued") == "1"


def test_release_forgets_the_lease(r, code):
    _enqueue(r, code, [Request("http://e.com/a")])
    q = RequestQueue(r, code, "w1")
    _, member = q.pop()
    assert q.release([str(json.loads(member)["seq"])]) == 1
    assert q.leased() == 0 and state.read_counters(r, code)["in_flight"] == 0


def test_pop_refuses_at_max_pages_exactly_across_workers(r, code):
    _enqueue(r, code, [Request(f"http://e.com/{i}") for i in range(50)])
    got = []

    def work(w):
        q = RequestQueue(r, code, w)
        while (res := q.pop(max_pages=17))[0] == "ok":
            got.append(res[1])

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(got) == 17 and len(set(got)) == 17
    assert RequestQueue(r, code, "w9").pop(max_pages=17) == ("limit", None)
    assert r.hget(keys.stats(code), "limit:max_pages") == "1"


def test_reap_returns_leases_of_workers_without_heartbeat_and_marks_them_dead(r, code):
    _enqueue(r, code, [Request(f"http://e.com/{i}") for i in range(4)])
    alive, dead = RequestQueue(r, code, "w1"), RequestQueue(r, code, "w2")
    alive.pop(), dead.pop(), dead.pop()
    r.set(keys.heartbeat(code, "w1"), "1", ex=10)
    r.hset(keys.workers(code), mapping={"w1": json.dumps({"state": "running"}), "w2": json.dumps({"state": "running"})})
    assert leases.reap(r, code) == 2
    assert len(alive) == 3 and alive.leased() == 1 and dead.leased() == 0
    workers = state.read_counters(r, code)["workers"]
    assert workers["w2"]["state"] == "dead" and workers["w1"]["state"] == "running"
    assert leases.reap(r, code) == 0


def test_read_counters_in_one_round_trip(r, code):
    state.seed(r, code, ["http://e.com/", "http://e.com/", "http://e.com/x"])
    c = state.read_counters(r, code)
    assert (c["queued"], c["seen"], c["in_flight"], c["items"]) == (2, 2, 0, 0)


def test_batch_pop_respects_max_pages_exactly_across_workers(r, code):
    _enqueue(r, code, [Request(f"http://e.com/{i}") for i in range(60)])
    got = []

    def work(w):
        q = RequestQueue(r, code, w)
        while (res := q.pop_many(max_pages=23, count=5))[0] == "ok":
            assert 1 <= len(res[1]) <= 5
            got.extend(res[1])

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(got) == 23 and len(set(got)) == 23  # the last batch was cut to fit the limit
    assert r.hget(keys.stats(code), "popped") == "23" and state.read_counters(r, code)["in_flight"] == 23
    assert RequestQueue(r, code, "w1").pop_many(max_pages=23, count=5) == ("limit", [])
    assert r.hget(keys.stats(code), "limit:max_pages") == "1"
    assert len(RequestQueue(r, code, "w1")) == 60 - 23


def test_scripts_are_reloaded_after_script_flush(r, code):
    from crawler import scripts

    _enqueue(r, code, [Request("http://e.com/a"), Request("http://e.com/b")])
    r.script_flush()
    q = RequestQueue(r, code, "w1")
    status, members = q.pop_many(count=2)  # one script alone: EVALSHA, NOSCRIPT, load, EVALSHA
    assert status == "ok" and len(members) == 2
    r.script_flush()
    ids = [str(json.loads(m)["seq"]) for m in members]
    # several calls in one pipeline: those that got NOSCRIPT are re-run, in order
    assert scripts.run(r, [q.release_call(ids[:1]), q.release_call(ids[1:])]) == [1, 1]
    assert q.leased() == 0 and r.script_exists(*[s.sha for s in scripts.SCRIPTS]) == [True] * len(scripts.SCRIPTS)
