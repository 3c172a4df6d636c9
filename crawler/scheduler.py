"""The Redis scheduler: ``SCHEDULER = "crawler.scheduler.RedisScheduler"``.

* ``enqueue_request``: dedupe with Scrapy's request fingerprinter, first against a worker-local
  cache, then crawl-wide in one Lua step per batch (:mod:`crawler.dupefilter`). Requests are
  buffered and written in batches (below), always before the release of the lease they belong
  to. Each request is stored with its fingerprint, which the worker that pops it reuses (the
  item keys are made from it).
  Requests of a scheme other than http(s) (``file:``, ``ftp:``, ``data:``... links of a hostile
  page) are dropped first, counted in ``crawlsite/blocked_scheme`` and logged (up to a limit).
* ``next_request``: pops (leases) requests of the crawl's shared queue (:mod:`crawler.queue`),
  up to ``CRAWLSITE_POP_BATCH`` (default 8) per round trip and never more than the downloader has
  free slots for, so that every request popped starts at once (Scrapy's engine keeps asking while
  it has free slots) and no worker hoards work another could do; ``max_pages`` is enforced by the
  pop script. A lease is released when its request is finished (:mod:`crawler.middlewares`); the
  tick also releases every started lease whose request has left the engine (``sweep``).
* Pause: requests popped but not started go back to the queue at once
  (:meth:`RedisScheduler.return_unstarted`, called by the Control extension when it pauses the
  engine, and by a pop whose reply lands on a paused engine); so do those left on close.
* No waiting for Redis under the reactor: writes and pops go on the scheduler's own connection
  (:class:`crawler.scripts.Channel`), and their replies are read when they arrive, so the worker
  goes on parsing while Redis works.

  - Writes: one batch of script calls (EVALSHA, :mod:`crawler.scripts`) writes the buffered
    requests, then the item pipeline's buffered items (:mod:`crawler.pipelines`), then releases
    the finished leases; it is sent when control returns to the reactor. One batch is in flight
    at a time; what is buffered meanwhile goes in the next batch, sent when the reply comes (the
    reply also lets the item pipeline go on). The connection keeps the order, so a lease is still
    released only after everything it produced is in Redis.
  - Pops: when the engine asks and nothing is ready, ``next_request`` sends the buffered writes
    (unless a batch is in flight), then a pop in a batch of its own, and answers None; the reply
    puts the requests in the ready queue and hands the first to the public
    ``engine.crawl(request)``, which calls ``enqueue_request`` (the scheduler recognizes its own
    ready request and keeps it) and makes the engine ask again at once.
  - A lost connection: write batches are sent again on a new one (running one twice is
    harmless); a pop never is, and the tick puts back what a pop whose reply was lost had leased
    (:meth:`RedisScheduler.return_unknown_leases`).
  - Without a reactor (``CRAWLSITE_IDLE_POLL`` 0, unit tests), pops wait for their reply, with
    the buffered writes in the same round trip; ``flush()`` always waits (idle tick, close, tests).
* Politeness (:mod:`crawler.politeness`): the pop takes only requests of domains eligible now
  (per-domain concurrency and delay, crawl-wide). When work is queued but no domain is eligible,
  it answers ``wait`` with the time until the earliest may be: the scheduler pops again then
  (a reactor timer; the tick does not pop before), or at once when a write batch of its own came
  back (its releases gave slots back); the time spent so is counted in
  ``crawlsite/polite_wait_ms``. On open, Scrapy's own per-slot limits are loosened so that they
  never bind first; with AutoThrottle on, each response's latency is written with the next batch.
* Idle wake-up: Scrapy's engine polls an empty scheduler only every 5 seconds (its slot
  heartbeat) unless something calls ``engine.crawl()``. When the last pop found the queue empty,
  a looping call (``CRAWLSITE_IDLE_POLL``, default 0.1 s) pops again, and its reply wakes the
  engine as above.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.core.scheduler import BaseScheduler
from twisted.internet import task

from . import keys, politeness, scripts
from .connection import get_redis
from .dupefilter import DEFAULT_BUCKETS, RedisDupeFilter
from .middlewares import Lease, LeaseTracker
from .netguard import LogLimit, refuse_scheme
from .netpolicy import scheme_allowed
from .queue import RequestQueue, request_from_json, request_to_json, return_leases

if TYPE_CHECKING:
    import redis
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class RedisScheduler(BaseScheduler):
    def __init__(self, redis: redis.Redis, code: str, worker: str, *, fingerprinter: Any,
                 crawler: Crawler | None = None, tracker: LeaseTracker | None = None,
                 max_pages: int = 0, buckets: int = DEFAULT_BUCKETS, batch_size: int = 100,
                 pop_batch: int = 8, idle_poll: float = 0.1, stats: Any = None,
                 limits: politeness.Limits | None = None):
        self.redis = redis
        self.code = keys.validate_code(code)
        self.worker = keys.validate_worker(worker)
        self.crawler = crawler
        self.fingerprinter = fingerprinter
        self.queue = RequestQueue(redis, code, worker)
        self.df = RedisDupeFilter(redis, code, buckets=buckets)
        self.tracker = tracker if tracker is not None else LeaseTracker()
        self.tracker.on_done = self._lease_done
        self.max_pages = int(max_pages)
        self.batch_size = batch_size
        self.pop_batch = max(1, int(pop_batch))
        self.item_writer: Any = None  # the RedisItemPipeline registers itself: its items ride our flush
        self.idle_poll = idle_poll
        self.stats = stats
        self.spider: Spider | None = None
        self.limit_reached = False
        self._buffer: list[tuple[bytes | None, int, str]] = []
        self._to_release: list[str] = []
        self._ready: deque[Request] = deque()
        self._waking: set[Request] = set()
        self._starved = False
        self._popping = False  # a pop is in flight (its reply hands the requests to the engine)
        self._closing = False
        self._flush_call = None
        self._loop: task.LoopingCall | None = None
        self.channel = scripts.Channel(redis)
        self._filtered = 0  # duplicates found in the local cache, not yet in the stats
        self._losses_seen = 0  # connection losses of the channel already looked after
        self._refused_schemes = LogLimit()
        self.limits = limits if limits is not None else politeness.Limits()
        self._latencies: list[tuple[str, float, int]] = []  # AutoThrottle samples not yet sent
        self._wait_started: float | None = None  # since when pops find no slot eligible
        self._pop_not_before = 0.0  # monotonic time before which a starved worker does not pop
        self._wait_call: Any = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RedisScheduler:
        s = crawler.settings
        code, worker = s.get("CRAWLSITE_CRAWL"), s.get("CRAWLSITE_WORKER")
        if not code or not worker:
            raise ValueError("RedisScheduler needs the CRAWLSITE_CRAWL and CRAWLSITE_WORKER settings")
        return cls(
            get_redis(s.get("CRAWLSITE_REDIS_URL")), code, worker,
            fingerprinter=crawler.request_fingerprinter, crawler=crawler,
            tracker=LeaseTracker.for_crawler(crawler),
            max_pages=s.getint("CRAWLSITE_MAX_PAGES", 0),
            buckets=s.getint("CRAWLSITE_SEEN_BUCKETS", DEFAULT_BUCKETS),
            batch_size=s.getint("CRAWLSITE_ENQUEUE_BATCH", 100),
            pop_batch=s.getint("CRAWLSITE_POP_BATCH", 8),
            idle_poll=s.getfloat("CRAWLSITE_IDLE_POLL", 0.1),
            stats=crawler.stats,
            limits=politeness.Limits.from_settings(s),
        )

    # -- Scrapy scheduler API ------------------------------------------------------------------
    def open(self, spider: Spider) -> None:
        self.spider = spider
        politeness.write_limits(self.redis, self.code, self.limits)
        engine = getattr(self.crawler, "engine", None)
        if engine is not None:  # the shared limits rule: Scrapy's own per-slot ones never bind first
            politeness.loosen_downloader(engine.downloader)
        crawler_signals = getattr(self.crawler, "signals", None)
        if crawler_signals is not None and self.limits.autothrottle:  # latencies for the shared AutoThrottle
            crawler_signals.connect(self.response_downloaded, signal=signals.response_downloaded)
        if self.idle_poll > 0:  # under a running reactor: pops and writes do not wait for Redis
            from twisted.internet import reactor

            self.channel.reactor = reactor
            self._loop = task.LoopingCall(self._tick)
            self._loop.start(self.idle_poll, now=False)
        logger.info("Redis scheduler for crawl %s, worker %s (%d requests queued)",
                    self.code, self.worker, len(self.queue))

    def close(self, reason: str) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._wait_call is not None and self._wait_call.active():
            self._wait_call.cancel()
        self._closing = True
        self._done_waiting()
        self.channel.wait()  # a pop in flight lands in the ready queue, and goes back with it
        for request in self._ready:  # popped, never started: back to the queue with the rest
            self.tracker.forget(request)
        self._ready.clear()
        self.tracker.finish_all() if reason == "finished" else None
        if self._filtered:
            self._inc("dupefilter/filtered", self._filtered)
            self._filtered = 0
        try:
            self.flush()
        finally:
            self.channel.close()
        returned = self.queue.return_leases()  # anything still leased was not finished
        if returned:
            logger.info("Returned %d unfinished requests to the queue (%s)", returned, reason)
            self._inc("crawlsite/leases_returned", returned)

    def has_pending_requests(self) -> bool:
        return bool(self._ready or self._buffer or self._popping)

    def enqueue_request(self, request: Request) -> bool:
        if request in self._waking:  # our own ready request, handed over by engine.crawl()
            self._waking.discard(request)
            self._ready.appendleft(request)
            return True
        accepted = self._buffer_request(request)
        # told here rather than by the request_scheduled signal (one receiver less per link);
        # after the request is buffered, as the lease it belongs to may be finished now
        self.tracker.request_scheduled(request)
        return accepted

    def _buffer_request(self, request: Request) -> bool:
        if not scheme_allowed(request.url):  # file:, ftp:, data:...: never queued, counted
            refuse_scheme(request.url, self.stats, self._refused_schemes)
            return False
        fp = None
        if not request.dont_filter:
            fp = self.fingerprinter.fingerprint(request)
            if self.df.known(fp):
                self._filtered += 1  # added to the stats with the next batch
                self.df.count_duplicate()  # reported crawl-wide with the next batch
                return False
        try:
            data = request_to_json(request, self.spider, fp)
        except (TypeError, ValueError) as exc:  # e.g. a callback that is not a spider method
            logger.error("Cannot serialize %s: %s", request, exc)
            self._inc("crawlsite/unserializable")
            return False
        self._buffer.append((fp, request.priority, data))
        if len(self._buffer) >= self.batch_size:
            self.flush()
        else:
            self.schedule_flush()
        return True

    def next_request(self) -> Request | None:
        if not self._ready:
            if self.channel.reactor is None:  # no reactor (tests): pop and wait
                self._starved = self._pop(self._free_slots()) == 0
            else:  # the reply hands what it got to the engine (see wake())
                self._pop_soon(self._free_slots())
        if not self._ready:
            return None
        request = self._ready.popleft()
        self.tracker.start(request)
        return request

    def return_unstarted(self) -> int:
        """Put the requests popped but not started (the ready queue) back in the crawl's queue:
        a paused worker holds no lease it is not working on. Returns how many; the return is sent
        after the writes already sent, without waiting (it may run twice: the second finds
        nothing)."""
        if not self._ready:
            return 0
        ids = []
        for request in self._ready:
            lease = self.tracker.forget(request)
            if lease is not None:
                ids.append(lease.id)
        self._ready.clear()
        if ids:
            self.channel.send([self.queue.return_call(ids)], self._returned, resend=True)
            self._inc("crawlsite/leases_returned_unstarted", len(ids))
        return len(ids)

    def _returned(self, result: Any) -> None:
        if isinstance(result, Exception):
            logger.error("Returning unstarted requests to the queue failed: %s", result)
        if self._has_writes():  # writes buffered while this was in flight
            self.schedule_flush()

    def _engine_paused(self) -> bool:
        engine = getattr(self.crawler, "engine", None)
        return bool(engine is not None and engine.paused)

    def wake(self) -> None:
        """Make a sleeping engine ask for requests now (after a resume)."""
        engine = getattr(self.crawler, "engine", None)
        if engine is None or engine.spider is None or engine.paused:
            return
        if self._ready:
            request = self._ready.popleft()
            self._waking.add(request)
            engine.crawl(request)
            self._waking.discard(request)
        elif self.channel.reactor is not None and not engine.paused:
            self._pop_soon(self._free_slots())  # its reply hands a request to engine.crawl()
        else:
            self._starved = True  # the next tick pops and hands the request to engine.crawl()

    # -- internals -----------------------------------------------------------------------------
    def _inc(self, key: str, count: int = 1) -> None:
        if self.stats is not None:
            self.stats.inc_value(key, count)

    def _free_slots(self) -> int:
        """How many requests to pop: what the downloader can start now, at most ``pop_batch``."""
        downloader = getattr(getattr(self.crawler, "engine", None), "downloader", None)
        if downloader is None or not downloader.total_concurrency:
            return 1
        free = downloader.total_concurrency - len(downloader.active)
        return max(1, min(self.pop_batch, free))

    def _pop(self, count: int = 1) -> int:
        """Lease up to ``count`` requests into the ready queue and wait; return how many.

        The buffered writes go first, in the same round trip (after the batch in flight)."""
        return self._lease(self._write_and_wait([self.queue.pop_call(self.max_pages, count)])[0])

    def _pop_soon(self, count: int = 1) -> None:
        """Send a pop of up to ``count`` requests, after the buffered writes (unless a batch is in
        flight); do not wait: :meth:`_popped` takes the reply."""
        if self._popping or self._closing:
            return
        self._send_writes()
        self._popping = True
        # a batch of its own: writes are sent again after a lost connection, a pop never is
        self.channel.send([self.queue.pop_call(self.max_pages, count)], self._popped)

    def _popped(self, result: Any) -> None:
        self._popping = False
        if isinstance(result, Exception):
            logger.error("Popping requests from Redis failed: %s", result)
            self._starved = True  # the next tick tries again
        else:
            self._starved = self._lease(result[-1]) == 0
            if self._engine_paused() and not self._closing:
                self.return_unstarted()  # the pause came while the pop was on its way
            elif not self._starved and not self._closing:
                self.wake()
        if self._has_writes():
            self.schedule_flush()

    def _lease(self, result: list[Any]) -> int:
        """Take the requests of a pop's result into the ready queue; return how many."""
        status, members = self.queue.popped(result)
        if status == "wait":  # work is queued, but no slot may be fetched from yet (politeness)
            self._polite_wait(int(members[0]) / 1000.0 if members else self.idle_poll)
            return 0
        self._done_waiting()
        if status != "ok":
            if status == "limit" and not self.limit_reached:
                logger.info("Page limit (%d) reached for crawl %s", self.max_pages, self.code)
            self.limit_reached = status == "limit"
            return 0
        for member in members:
            request, lease_id, fp = request_from_json(member, self.spider)
            if fp is None:  # dont_filter requests are enqueued without one
                fp = self.fingerprinter.fingerprint(request)
            self.tracker.add(lease_id, request, fp.hex())
            politeness.mark_popped(request)
            self._ready.append(request)
        self._inc("crawlsite/popped", len(members))
        return len(members)

    def _polite_wait(self, seconds: float) -> None:
        """No slot is eligible for ``seconds``: pop again then (not before), and count the wait."""
        now = time.monotonic()
        if self._wait_started is None:
            self._wait_started = now
        self._pop_not_before = now + seconds
        if self.channel.reactor is not None and not self._closing:
            if self._wait_call is None or not self._wait_call.active():
                self._wait_call = self.channel.reactor.callLater(seconds, self._wait_over)

    def _wait_over(self) -> None:
        self._wait_call = None
        engine = getattr(self.crawler, "engine", None)
        if self._starved and not self._ready and not self._waking and not self._closing and (
                engine is None or not engine.paused):
            self._pop_soon(self._free_slots())

    def _done_waiting(self) -> None:
        """A pop got requests (or found the queue empty): the politeness wait, if any, is over."""
        self._pop_not_before = 0.0
        if self._wait_started is not None:
            self._inc("crawlsite/polite_wait_ms", int((time.monotonic() - self._wait_started) * 1000))
            self._wait_started = None

    def response_downloaded(self, response: Any, request: Any, spider: Any = None) -> None:
        """A latency for the shared AutoThrottle (sent with the next write batch)."""
        latency = request.meta.get("download_latency")
        if latency is None or request.meta.get(politeness.USER_NO_THROTTLE):
            return
        self._latencies.append((politeness.slot_of(request.url), float(latency), int(response.status)))
        self.schedule_flush()

    def _lease_done(self, lease: Lease) -> None:
        self._inc(f"crawlsite/leases_released/{lease.released_in}")
        self._to_release.append(lease.id)
        self.schedule_flush()

    def schedule_flush(self) -> None:
        """Send the buffered writes when control returns to the reactor."""
        if self._flush_call is None or not self._flush_call.active():
            from twisted.internet import reactor  # imported here: importing it installs one

            self.channel.reactor = reactor  # it reads the replies as they arrive
            self._flush_call = reactor.callLater(0, self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_call = None
        self._send_writes()

    def _send_writes(self) -> None:
        """Send the buffered writes as one batch, without waiting for its reply."""
        if self.channel.busy:  # the reply of the batch in flight sends this one
            return
        writes = self._take_writes()
        if writes is None:
            return
        calls, written = writes
        if calls:
            self.channel.send(calls, lambda result: self._writes_done(written, result), resend=True)
        else:
            written([])

    def _writes_done(self, written: Any, result: Any) -> None:
        if isinstance(result, Exception):
            logger.error("Writing to Redis failed: %s", result)
        written(result)
        if self._pop_not_before and not isinstance(result, Exception):
            # releases gave slots back: a worker waiting for politeness looks again now
            self._pop_not_before = 0.0
            self._wait_over()
        if self._has_writes():
            self.schedule_flush()

    def _has_writes(self) -> bool:
        return bool(self._buffer or self._to_release or self._latencies
                    or (self.item_writer is not None and self.item_writer.buffered))

    def flush(self) -> None:
        """Write buffered requests, then buffered items, then release finished leases: one round
        trip, after the batch in flight; return once it is done."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._write_and_wait()

    def _write_and_wait(self, then: list[scripts.Call] | None = None) -> list[Any]:
        """After the batch in flight, send the buffered writes and the calls ``then`` in one round
        trip and wait; return the results of ``then``."""
        self.channel.wait()
        writes = self._take_writes()
        calls, written = writes if writes is not None else ([], None)
        then = then or []
        try:
            results = self.channel.call([*calls, *then]) if calls or then else []
        except Exception as exc:
            if written is not None:
                written(exc)
            raise
        if written is not None:
            written(results[:len(calls)])
        return results[len(calls):]

    def _take_writes(self) -> tuple[list[scripts.Call], Any] | None:
        """The buffered writes as script calls (new requests, items, releases, in this order) and
        the function to call with their results (or the error); None if nothing is buffered."""
        items = self.item_writer.take_batch() if self.item_writer is not None else None
        if not self._buffer and not self._to_release and items is None and not self._latencies:
            return None
        buffer, self._buffer = self._buffer, []
        release, self._to_release = self._to_release, []
        calls = []
        if self._latencies:  # first: its result is not read
            calls.append(politeness.throttle_call(self.code, self._latencies))
            self._latencies = []
        first = len(calls)
        enqueue = self.df.enqueue_call(buffer)[0] if buffer else None
        if enqueue is not None:
            calls.append(enqueue)
        if items is not None:
            calls.append(items[0])
        if release:
            calls.append(self.queue.release_call(release))

        def written(results: Any) -> None:
            if isinstance(results, Exception):
                if items is not None:
                    self.item_writer.batch_written(items[1], results)
                return
            results = results[first:]
            new = sum(int(f) for f in results[0]) if enqueue is not None else 0
            if new:
                self._inc("crawlsite/enqueued", new)
            filtered, self._filtered = len(buffer) - new + self._filtered, 0
            if filtered:
                self._inc("dupefilter/filtered", filtered)
            if items is not None:  # last: this resumes the item pipeline
                self.item_writer.batch_written(items[1], results[1 if enqueue is not None else 0])

        return calls, written

    def return_unknown_leases(self) -> int:
        """Put back in the queue the requests Redis holds as leased by this worker that the worker
        does not know of: a pop whose reply a lost connection took. Call it with no pop in flight
        and no write batch unsent (else a lease could be returned while it is being taken or
        released); return how many went back."""
        losses = self.channel.losses
        known = set(self.tracker.leases) | set(self._to_release)
        unknown = [i for i in self.redis.hkeys(self.queue.leases_key) if i not in known]
        returned = return_leases(self.redis, self.code, self.worker, unknown)
        if returned:
            logger.warning("Returned %d requests leased by a pop whose reply was lost", returned)
            self._inc("crawlsite/leases_returned_unknown", returned)
        self._losses_seen = losses
        return returned

    def sweep(self) -> int:
        """Release the started leases whose request has left the engine: the engine keeps every
        request it started in its slot until the download, the callback or errback and all of
        their output are done, so what is not there any more is finished, whichever way it went
        (errbacks, exceptions, requests dropped by a middleware or a signal handler)."""
        engine = getattr(self.crawler, "engine", None)
        slot = getattr(engine, "_slot", None)  # Scrapy's engine slot (pinned version)
        in_progress = getattr(slot, "inprogress", None)
        if in_progress is None:
            return 0
        released = self.tracker.sweep(in_progress)
        if released:
            self._inc("crawlsite/leases_released_sweep", released)
        return released

    def _tick(self) -> None:
        try:
            self.channel.retry()  # writes a lost connection left unsent
            if self.channel.due:
                # replies the reactor has not handed over (a safety net, without waiting): read
                # what has arrived, so that a pop or write in flight cannot stay pending forever
                due = len(self.channel.due)
                self.channel.poll()
                if len(self.channel.due) < due:
                    self._inc("crawlsite/replies_read_by_tick", due - len(self.channel.due))
            if self.channel.losses != self._losses_seen and not self.channel.busy and not self._popping:
                self.return_unknown_leases()
            if self._has_writes():  # normally scheduled already: a safety net, without waiting
                self.schedule_flush()
            engine = getattr(self.crawler, "engine", None)
            if engine is None or engine.spider is None:
                return
            if len(self.tracker):
                self.sweep()  # releases are sent when control returns to the reactor
            if engine.paused and self._ready and not self._waking:
                self.return_unstarted()  # a safety net: Control and the pop reply do it already
            if (self._starved and not engine.paused and not self._ready and not self._waking
                    and time.monotonic() >= self._pop_not_before):
                self._pop_soon(self._free_slots())  # its reply wakes the engine
        except Exception:
            logger.exception("Redis scheduler tick failed")
