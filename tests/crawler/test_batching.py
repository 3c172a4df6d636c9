"""Batched Redis I/O of a worker: several leases per pop, items written in batches with the releases.

Unit tests drive the scheduler and the item pipeline directly (no reactor: ``schedule_flush`` is
replaced and ``flush`` called by hand); the end-to-end test runs two worker processes.
"""

import asyncio
import json
import time
from types import SimpleNamespace

import pytest
from scrapy import Spider
from scrapy.exceptions import DropItem
from scrapy.http import HtmlResponse
from scrapy.utils.request import RequestFingerprinter

from crawler import definition, keys, scripts, state
from crawler.pipelines import RedisItemPipeline
from crawler.queue import RequestQueue
from crawler.scheduler import RedisScheduler
from helpers import start_worker, stream_items

FP = RequestFingerprinter()


class _Spider(Spider):
    name = "s"


def _scheduler(r, code, worker="w1", pop_batch=4, concurrency=16):
    engine = SimpleNamespace(downloader=SimpleNamespace(total_concurrency=concurrency, active=set()))
    sched = RedisScheduler(r, code, worker, fingerprinter=FP, crawler=SimpleNamespace(engine=engine),
                           pop_batch=pop_batch, idle_poll=0)
    sched.schedule_flush = lambda: None  # no reactor here: the tests call flush() themselves
    sched.open(_Spider())
    engine.scheduler = sched
    return sched


def _pipeline(r, code, worker, max_items, tracker=None, writer=None):
    writer = writer or SimpleNamespace(item_writer=None, schedule_flush=lambda: None)
    p = RedisItemPipeline(r, code, worker, max_items=max_items, tracker=tracker,
                          crawler=SimpleNamespace(engine=SimpleNamespace(scheduler=writer)))
    p.open_spider()
    return p


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


async def _process(p, items):
    tasks = [asyncio.ensure_future(p.process_item(item)) for item in items]
    await asyncio.sleep(0)  # every item is buffered
    p.flush()
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_pop_takes_a_small_batch_bounded_by_free_slots(r, code):
    state.seed(r, code, [f"http://e.com/{i}" for i in range(20)])
    sched = _scheduler(r, code, pop_batch=4)
    first = sched.next_request()
    assert first.url == "http://e.com/0" and RequestQueue(r, code, "w1").leased() == 4
    assert [sched.next_request().url for _ in range(3)] == [f"http://e.com/{i}" for i in (1, 2, 3)]
    assert RequestQueue(r, code, "w1").leased() == 4  # served from the batch: no round trip
    sched.crawler.engine.downloader.active = set(range(14))  # 2 free slots of 16
    sched.next_request()
    assert RequestQueue(r, code, "w1").leased() == 6
    sched.close("stopped")


def test_prefetched_leases_go_back_to_the_queue_on_stop(r, code):
    state.seed(r, code, [f"http://e.com/{i}" for i in range(10)])
    sched = _scheduler(r, code, pop_batch=4)
    sched.next_request()  # 4 leased: 1 handed to the engine, 3 ready
    assert sched.has_pending_requests() and state.read_counters(r, code)["in_flight"] == 4
    sched.close("stopped")
    c = state.read_counters(r, code)
    assert (c["queued"], c["in_flight"], c["stats"]["popped"], c["stats"]["requeued"]) == (10, 0, 0, 4)
    assert not r.exists(keys.leases(code, "w1"))


def test_prefetched_leases_go_back_to_the_queue_when_finished(r, code):
    """Closing "finished" releases the leases of started requests, but unstarted ones go back."""
    state.seed(r, code, [f"http://e.com/{i}" for i in range(10)])
    sched = _scheduler(r, code, pop_batch=4)
    started = sched.next_request()
    sched.close("finished")
    c = state.read_counters(r, code)
    assert (c["queued"], c["in_flight"], c["stats"]["popped"], c["stats"]["requeued"]) == (9, 0, 1, 3)
    assert started.url not in {json.loads(m)["url"] for m in r.zrange(keys.queue(code), 0, -1)}


def test_batched_items_respect_max_items_exactly(r, code):
    p1, p2 = _pipeline(r, code, "w1", max_items=7), _pipeline(r, code, "w2", max_items=7)
    got1 = run(_process(p1, [{"url": f"http://e.com/a{i}"} for i in range(5)]))
    assert got1 == [{"url": f"http://e.com/a{i}"} for i in range(5)]
    got2 = run(_process(p2, [{"url": f"http://e.com/b{i}"} for i in range(5)]))
    assert got2[:2] == [{"url": "http://e.com/b0"}, {"url": "http://e.com/b1"}]
    assert all(isinstance(x, DropItem) for x in got2[2:])  # one batch, cut at the limit
    assert run(_process(p1, [{"url": "http://e.com/a9"}])) and isinstance(
        run(_process(p1, [{"url": "http://e.com/a9"}]))[0], DropItem)
    items = stream_items(r, code)
    assert [i["data"]["url"] for i in items] == [f"http://e.com/a{i}" for i in range(5)] + [
        "http://e.com/b0", "http://e.com/b1"]
    assert {i["worker"] for i in items} == {"w1", "w2"}
    stats = r.hgetall(keys.stats(code))
    assert (stats["items"], stats["items_dropped"], stats["limit:max_items"]) == ("7", "5", "1")


def test_without_max_items_an_item_does_not_wait_for_its_write(r, code):
    p = _pipeline(r, code, "w1", max_items=0)
    item = {"url": "http://e.com/x"}
    assert run(p.process_item(item)) is item  # returned at once: nothing to decide
    assert stream_items(r, code) == [] and p.buffered  # buffered, written with the next batch
    p.flush()
    assert [i["data"]["url"] for i in stream_items(r, code)] == ["http://e.com/x"] and not p.buffered


def test_items_are_written_with_and_before_the_release_of_their_lease(r, code, monkeypatch):
    state.seed(r, code, ["http://e.com/p"])
    sched = _scheduler(r, code)
    tracker = sched.tracker
    pipeline = _pipeline(r, code, "w1", max_items=0, tracker=tracker, writer=sched)
    assert sched.item_writer is pipeline
    request = sched.next_request()
    response = HtmlResponse(request.url, body=b"<html></html>", request=request)
    tracker.response_downloaded(request, response)
    item = {"url": request.url}

    async def callback():
        yield item

    async def crawl():
        assert [x async for x in tracker.wrap_output(response, callback())] == [item]
        task = asyncio.ensure_future(pipeline.process_item(item))
        await asyncio.sleep(0)
        assert len(tracker) == 0  # done: the item is buffered, its release queued after it
        sched.flush()
        return await task

    rounds = []
    real_send = sched.channel.send
    monkeypatch.setattr(sched.channel, "send", lambda calls, on_reply: rounds.append([c[0] for c in calls])
                        or real_send(calls, on_reply))
    assert run(crawl()) is item
    assert rounds == [[scripts.ADD_ITEMS, scripts.RELEASE]]  # one round trip, items first
    fp = FP.fingerprint(request).hex()
    assert [i["key"] for i in stream_items(r, code)] == [f"{fp}:0"]  # the stable item key
    assert state.read_counters(r, code)["in_flight"] == 0 and not r.exists(keys.leases(code, "w1"))


def test_two_workers_keep_max_pages_and_max_items_exact(r, code, redis_url):
    from demosite import start_site

    site = start_site(profile="demo")  # no redirects, errors or retries: one page per request
    try:
        d = site.recommended_definition()
        d["limits"].update(max_pages=23, max_items=9)
        d["settings"].update(ROBOTSTXT_OBEY=False)
        state.launch(r, code, definition.validate(d))
        procs = [start_worker(redis_url, code, w, "-s", "CRAWLSITE_POP_BATCH=8") for w in ("w1", "w2")]
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # the conductor's job: finish at the limit
                c = state.read_counters(r, code)
                if (c["stats"].get("limit:max_pages") and c["in_flight"] == 0
                        and len(c["workers"]) == 2 and all(w["state"] == "idle" for w in c["workers"].values())):
                    break
                time.sleep(0.05)
            else:
                pytest.fail(f"the crawl never reached its page limit: {state.read_counters(r, code)}")
            state.set_control(r, code, "finish")
            assert [p.wait(30) for p in procs] == [0, 0]
        finally:
            for p in procs:
                p.kill() if p.poll() is None else None
        c = state.read_counters(r, code)
        assert c["stats"]["popped"] == 23 == len(site.requests) == c["pages"]  # each page fetched once
        assert c["items"] == 9 == len(stream_items(r, code)) and c["stats"]["limit:max_items"] == 1
        assert c["in_flight"] == 0 and c["queued"] > 0
    finally:
        site.stop()


def test_leases_taken_by_a_pop_whose_reply_was_lost_go_back(r, code):
    state.seed(r, code, [f"http://e.com/{i}" for i in range(6)])
    sched = _scheduler(r, code, pop_batch=2)
    started = sched.next_request()  # 2 leased: one started, one ready
    RequestQueue(r, code, "w1").pop_many(count=3)  # a pop the worker never heard back from
    assert state.read_counters(r, code)["in_flight"] == 5
    assert sched.return_unknown_leases() == 3
    c = state.read_counters(r, code)
    assert (c["queued"], c["in_flight"], c["stats"]["requeued"]) == (4, 2, 3)
    assert sched.return_unknown_leases() == 0  # what the worker holds stays leased
    assert sched.next_request() is not started
    sched.close("stopped")
