"""The Redis scheduler: ``SCHEDULER = "crawler.scheduler.RedisScheduler"``.

* ``enqueue_request``: dedupe with Scrapy's request fingerprinter, first against a worker-local
  cache, then crawl-wide in one Lua step per batch (:mod:`crawler.dupefilter`). Requests are
  buffered and flushed in batches: when the batch is full, when control returns to the reactor,
  and always before a lease is released or a request is popped.
* ``next_request``: pops (leases) requests of the crawl's shared queue (:mod:`crawler.queue`),
  up to ``CRAWLSITE_POP_BATCH`` (default 8) per round trip and never more than the downloader has
  free slots for, so that every request popped starts at once (Scrapy's engine keeps asking while
  it has free slots) and no worker hoards work another could do; ``max_pages`` is enforced by the
  pop script. A lease is released when its request is finished (:mod:`crawler.middlewares`); the
  leases of requests popped but not started (engine paused) go back to the queue on close.
* ``flush``: one round trip (EVALSHA, :mod:`crawler.scripts`) writes the buffered requests, then
  the item pipeline's buffered items (:mod:`crawler.pipelines`), then releases the finished leases.
* Idle wake-up: Scrapy's engine polls an empty scheduler only every 5 seconds (its slot
  heartbeat) unless something calls ``engine.crawl()``. When the last pop found the queue empty,
  a looping call (``CRAWLSITE_IDLE_POLL``, default 0.1 s) pops again; a request it gets is kept
  ready and handed to the public ``engine.crawl(request)``, which calls ``enqueue_request`` (the
  scheduler recognizes its own ready request and keeps it local) and wakes the engine at once.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from scrapy.core.scheduler import BaseScheduler
from twisted.internet import task

from . import keys, scripts
from .connection import get_redis
from .dupefilter import DEFAULT_BUCKETS, RedisDupeFilter
from .middlewares import Lease, LeaseTracker
from .queue import RequestQueue, request_from_json, request_to_json

if TYPE_CHECKING:
    import redis
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class RedisScheduler(BaseScheduler):
    def __init__(self, redis: redis.Redis, code: str, worker: str, *, fingerprinter: Any,
                 crawler: Crawler | None = None, tracker: LeaseTracker | None = None,
                 max_pages: int = 0, buckets: int = DEFAULT_BUCKETS, batch_size: int = 100,
                 pop_batch: int = 8, idle_poll: float = 0.1, stats: Any = None):
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
        self._flush_call = None
        self._loop: task.LoopingCall | None = None

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
        )

    # -- Scrapy scheduler API ------------------------------------------------------------------
    def open(self, spider: Spider) -> None:
        self.spider = spider
        if self.idle_poll > 0:
            self._loop = task.LoopingCall(self._tick)
            self._loop.start(self.idle_poll, now=False)
        logger.info("Redis scheduler for crawl %s, worker %s (%d requests queued)",
                    self.code, self.worker, len(self.queue))

    def close(self, reason: str) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for request in self._ready:  # popped, never started: back to the queue with the rest
            self.tracker.forget(request)
        self._ready.clear()
        self.tracker.finish_all() if reason == "finished" else None
        self.flush()
        returned = self.queue.return_leases()  # anything still leased was not finished
        if returned:
            logger.info("Returned %d unfinished requests to the queue (%s)", returned, reason)
            self._inc("crawlsite/leases_returned", returned)

    def has_pending_requests(self) -> bool:
        return bool(self._ready or self._buffer)

    def enqueue_request(self, request: Request) -> bool:
        if request in self._waking:  # our own ready request, handed over by engine.crawl()
            self._waking.discard(request)
            self._ready.appendleft(request)
            return True
        fp = None
        if not request.dont_filter:
            fp = self.fingerprinter.fingerprint(request)
            if self.df.known(fp):
                self._inc("dupefilter/filtered")
                self.df.count_duplicate()  # reported crawl-wide with the next batch
                return False
        try:
            data = request_to_json(request, self.spider)
        except ValueError as exc:  # e.g. a callback that is not a spider method
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
            self.flush()
            self._starved = self._pop(self._free_slots()) == 0
        return self._ready.popleft() if self._ready else None

    def wake(self) -> None:
        """Make a sleeping engine ask for requests now (after a resume)."""
        engine = getattr(self.crawler, "engine", None)
        if engine is None or engine.spider is None:
            return
        if self._ready:
            request = self._ready.popleft()
            self._waking.add(request)
            engine.crawl(request)
            self._waking.discard(request)
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
        """Lease up to ``count`` requests into the ready queue; return how many."""
        status, members = self.queue.pop_many(self.max_pages, count)
        if status != "ok":
            if status == "limit" and not self.limit_reached:
                logger.info("Page limit (%d) reached for crawl %s", self.max_pages, self.code)
            self.limit_reached = status == "limit"
            return 0
        for member in members:
            request, lease_id = request_from_json(member, self.spider)
            fp = self.fingerprinter.fingerprint(request).hex()
            self.tracker.add(lease_id, request, fp)
            self._ready.append(request)
        self._inc("crawlsite/popped", len(members))
        return len(members)

    def _lease_done(self, lease: Lease) -> None:
        self._inc(f"crawlsite/leases_released/{lease.released_in}")
        self._to_release.append(lease.id)
        self.schedule_flush()

    def schedule_flush(self) -> None:
        """Flush when control returns to the reactor."""
        if self._flush_call is None or not self._flush_call.active():
            from twisted.internet import reactor  # imported here: importing it installs one

            self._flush_call = reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """Write buffered requests, then buffered items, then release finished leases: one round trip."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        items = self.item_writer.take_batch() if self.item_writer is not None else None
        if not self._buffer and not self._to_release and items is None:
            return
        buffer, self._buffer = self._buffer, []
        release, self._to_release = self._to_release, []
        calls = []
        enqueue = self.df.enqueue_call(buffer)[0] if buffer else None
        if enqueue is not None:
            calls.append(enqueue)
        if items is not None:
            calls.append(items[0])
        if release:
            calls.append(self.queue.release_call(release))
        try:
            results = scripts.run(self.redis, calls)
        except Exception as exc:
            if items is not None:
                self.item_writer.batch_written(items[1], exc)
            raise
        if buffer:
            new = sum(int(f) for f in results[0]) if enqueue is not None else 0
            self._inc("crawlsite/enqueued", new)
            self._inc("dupefilter/filtered", len(buffer) - new)
        if items is not None:  # last: this resumes the item pipeline
            self.item_writer.batch_written(items[1], results[1 if enqueue is not None else 0])

    def _engine_idle(self) -> bool:
        engine = getattr(self.crawler, "engine", None)
        if engine is None or engine.scraper.slot is None:
            return False
        return not engine.downloader.active and engine.scraper.slot.is_idle() and not self._ready

    def _tick(self) -> None:
        try:
            self.flush()
            engine = getattr(self.crawler, "engine", None)
            if engine is None or engine.spider is None:
                return
            if self._engine_idle() and len(self.tracker):
                # nothing in progress: every lease held is finished (errbacks, middleware errors)
                released = self.tracker.finish_all()
                self._inc("crawlsite/leases_released_idle", released)
                self.flush()
            if self._starved and not engine.paused and not self._ready and not self._waking:
                if self._pop(self._free_slots()):
                    self._starved = False
                    request = self._ready.popleft()
                    self._waking.add(request)
                    engine.crawl(request)  # -> enqueue_request() keeps it ready; wakes the engine
                    self._waking.discard(request)
        except Exception:
            logger.exception("Redis scheduler tick failed")
