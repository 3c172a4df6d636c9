"""Worker extensions: heartbeat and live stats, the control key, and shipping warnings to Redis.

* :class:`WorkerStats` - every ``CRAWLSITE_STATS_INTERVAL`` (0.25 s) in one round trip: writes this
  worker's state JSON to ``workers``, refreshes ``hb:WORKER`` (TTL ``CRAWLSITE_HEARTBEAT_TTL``,
  10 s), adds this worker's new counts to the crawl-wide ``stats`` (pages, errors, status:NNN,
  items_too_large).
* :class:`Control` - every ``CRAWLSITE_CONTROL_INTERVAL`` (0.25 s) reads ``control`` and applies it:
  ``run`` (unpause), ``pause`` (``engine.pause()``: downloads in flight finish, nothing new starts,
  requests popped but not started go back to the queue; state ``pausing`` until nothing is in
  flight and no lease is held, then ``paused``, checked every ``CRAWLSITE_PAUSE_CHECK`` (0.05 s)
  while pausing and written to ``workers`` at once), ``stop`` (pause, let in-flight
  work finish, close the spider with reason ``stopped``; leases not finished go back to the queue,
  queue and dedupe stay), ``finish`` (close with reason ``finished`` once idle). While control is
  ``run`` or ``pause`` the spider never closes by itself (DontCloseSpider on ``spider_idle``): the
  conductor decides when the crawl is over. Polling the key is enough at this interval; the
  pub/sub channel is for other listeners (a blocking subscriber would need a thread).
* :class:`RedisLogHandler` - WARNING and above to the capped ``log`` stream.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import DontCloseSpider, NotConfigured
from scrapy.utils.defer import deferred_from_coro
from twisted.internet import task

from . import keys
from .connection import get_redis
from .queue import LEASE_META
from .counters import ITEMS_TOO_LARGE

if TYPE_CHECKING:
    import redis
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


def _in_flight(crawler: Crawler | None) -> int:
    """Downloads and callbacks in progress in this worker."""
    engine = getattr(crawler, "engine", None)
    if engine is None:
        return 0
    n = len(engine.downloader.active)
    slot = engine.scraper.slot
    if slot is not None:
        n += len(slot.queue) + len(slot.active) + slot.itemproc_size
    return n


class Control:
    """Applies the crawl's ``control`` key to this worker's engine."""

    def __init__(self, redis: redis.Redis, code: str, *, crawler: Crawler | None = None,
                 interval: float = 0.25, stop_timeout: float = 30.0, worker: str | None = None,
                 pause_check: float = 0.05):
        self.redis = redis
        self.code = keys.validate_code(code)
        self.worker = keys.validate_worker(worker) if worker else None
        self.crawler = crawler
        self.interval = interval
        self.stop_timeout = stop_timeout
        self.control = "run"
        self.state = "starting"
        self.closing = False
        self._stop_started: float | None = None
        self._loop: task.LoopingCall | None = None
        self.pause_check = pause_check
        self._pause_call: Any = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Control:
        s = crawler.settings
        if not s.get("CRAWLSITE_CRAWL"):
            raise NotConfigured("CRAWLSITE_CRAWL not set")
        ext = cls(get_redis(s.get("CRAWLSITE_REDIS_URL")), s["CRAWLSITE_CRAWL"], crawler=crawler,
                  interval=s.getfloat("CRAWLSITE_CONTROL_INTERVAL", 0.25),
                  stop_timeout=s.getfloat("CRAWLSITE_STOP_TIMEOUT", 30.0),
                  worker=s.get("CRAWLSITE_WORKER") or None,
                  pause_check=s.getfloat("CRAWLSITE_PAUSE_CHECK", 0.05))
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(ext.spider_idle, signal=signals.spider_idle)
        return ext

    def spider_opened(self, spider: Any) -> None:
        self.state = "running"
        self._loop = task.LoopingCall(self.tick)
        self._loop.start(self.interval, now=True)

    def spider_closed(self, spider: Any, reason: str) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._pause_call is not None and self._pause_call.active():
            self._pause_call.cancel()

    def spider_idle(self, spider: Any) -> None:
        if self.control not in ("finish", "stop"):
            raise DontCloseSpider

    @property
    def engine(self):
        return getattr(self.crawler, "engine", None)

    def _scheduler(self):
        engine = self.engine
        return engine.scheduler if engine is not None else None

    def _idle(self) -> bool:
        sched = self._scheduler()
        pending = sched.has_pending_requests() if sched is not None else False
        return _in_flight(self.crawler) == 0 and not pending

    def _close(self, reason: str) -> None:
        if self.closing or self.engine is None:
            return
        self.closing = True
        logger.info("Closing worker of crawl %s: %s", self.code, reason)
        deferred_from_coro(self.engine.close_spider_async(reason=reason))

    def tick(self) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(keys.control(self.code))
            if self.worker:
                pipe.sismember(keys.retired(self.code), self.worker)
            replies = pipe.execute()
            # No control key: the crawl's Redis state was deleted (cancelled). Reading that as
            # "run" would unpause the worker and keep it idling forever; leave instead.
            value = replies[0] or "stop"
            if isinstance(value, bytes):
                value = value.decode()
            if self.worker and replies[1]:
                value = "stop"  # this worker was retired by a scale-down: drain and leave
        except Exception:
            logger.warning("Cannot read the control key of crawl %s", self.code, exc_info=True)
            return
        self.apply(value)

    def apply(self, value: str) -> None:
        engine = self.engine
        if engine is None or self.closing:
            return
        self.control = value
        if value == "pause":
            if not engine.paused:
                logger.info("Pausing")
                engine.pause()
            if self._pause_call is None or not self._pause_call.active():
                self._check_pause()
        elif value == "stop":
            if self._stop_started is None:
                self._stop_started = time.monotonic()
                engine.pause()
            self.state = "stopping"
            if _in_flight(self.crawler) == 0 or time.monotonic() - self._stop_started > self.stop_timeout:
                self._close("stopped")
        elif value == "finish":
            if engine.paused:
                self._resume()
            self.state = "finishing"
            if self._idle():
                self._close("finished")
        else:  # run (and anything unknown)
            if engine.paused:
                self._resume()
            self._stop_started = None
            sched = self._scheduler()
            leases = len(getattr(sched, "tracker", ())) if sched is not None else 0
            if leases or not self._idle():
                self.state = "running"
            elif self._start_pending():
                # The spider's start() has not produced everything yet (a deployed spider's may
                # await something first): the crawl is not out of work, the conductor waits.
                self.state = "starting"
            else:
                self.state = "idle"

    def _start_pending(self) -> bool:
        """Whether the engine, otherwise idle, still reads the spider's start() (Scrapy's own
        ``spider_is_idle`` says no while start items or requests are left)."""
        engine = self.engine
        try:
            return engine is not None and engine.spider is not None and not engine.spider_is_idle()
        except RuntimeError:  # no engine slot yet: the spider is opening
            return True

    def _holds_leases(self) -> bool:
        sched = self._scheduler()
        return bool(len(getattr(sched, "tracker", ()))) if sched is not None else False

    def _check_pause(self) -> None:
        """Paused once nothing is in flight and no lease is held; until then, look again every
        ``pause_check`` seconds, and tell the dashboard the moment the worker is paused."""
        self._pause_call = None
        engine = self.engine
        if engine is None or self.closing or self.control != "pause" or not engine.paused:
            return
        sched = self._scheduler()
        if hasattr(sched, "return_unstarted"):
            sched.return_unstarted()  # popped, not started: back to the queue
            if _in_flight(self.crawler) == 0 and self._holds_leases():
                sched.sweep()  # nothing in progress: the leases left are finished
        before = self.state
        self.state = "pausing" if (_in_flight(self.crawler) or self._holds_leases()) else "paused"
        if self.state == "pausing":
            from twisted.internet import reactor  # imported here: importing it installs one

            self._pause_call = reactor.callLater(self.pause_check, self._check_pause)
        elif before != "paused":
            logger.info("Paused")
            self._report()

    def _report(self) -> None:
        """Write this worker's state now rather than at the next stats tick."""
        for ext in getattr(getattr(self.crawler, "extensions", None), "middlewares", ()):
            if isinstance(ext, WorkerStats) and ext.state not in ("finished", "failed"):
                ext.tick()

    def _resume(self) -> None:
        logger.info("Resuming")
        if self._pause_call is not None and self._pause_call.active():
            self._pause_call.cancel()
        self._pause_call = None
        self.engine.unpause()
        sched = self._scheduler()
        if hasattr(sched, "wake"):
            sched.wake()  # the paused engine may have gone to sleep: wake it now


class WorkerStats:
    """Heartbeat, worker state and crawl-wide counters, every ``interval`` seconds."""

    COUNTERS = ("pages", "errors")
    # worker stats summed crawl-wide in the crawl's stats hash, under these fields
    SHIPPED_STATS = {"crawlsite/blocked_address": "blocked_address", "crawlsite/blocked_scheme": "blocked_scheme",
                     f"crawlsite/{ITEMS_TOO_LARGE}": ITEMS_TOO_LARGE,
                     "crawlsite/polite_wait_ms": "polite_wait_ms",
                     "robotstxt/forbidden": "robots_forbidden"}  # Scrapy's count, kept by crawler.robots

    def __init__(self, redis: redis.Redis, code: str, worker: str, *, crawler: Crawler | None = None,
                 interval: float = 0.25, ttl: float = 10.0, stats: Any = None, give_up: float = 60.0):
        self.redis = redis
        self.code = keys.validate_code(code)
        self.worker = keys.validate_worker(worker)
        self.crawler = crawler
        self.interval = interval
        self.ttl = ttl
        self.stats = stats
        self.counts: dict[str, int] = {}
        self._pushed: dict[str, int] = {}
        self.started_at = time.time()
        self.state = "starting"
        self.message = ""
        self._loop: task.LoopingCall | None = None
        self.give_up = give_up
        self._failing_since: float | None = None
        self._gave_up = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> WorkerStats:
        s = crawler.settings
        if not s.get("CRAWLSITE_CRAWL") or not s.get("CRAWLSITE_WORKER"):
            raise NotConfigured("CRAWLSITE_CRAWL / CRAWLSITE_WORKER not set")
        ext = cls(get_redis(s.get("CRAWLSITE_REDIS_URL")), s["CRAWLSITE_CRAWL"], s["CRAWLSITE_WORKER"],
                  crawler=crawler, interval=s.getfloat("CRAWLSITE_STATS_INTERVAL", 0.25),
                  ttl=s.getfloat("CRAWLSITE_HEARTBEAT_TTL", 10.0), stats=crawler.stats,
                  give_up=s.getfloat("CRAWLSITE_REDIS_GIVE_UP", 60.0))
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(ext.response_received, signal=signals.response_received)
        crawler.signals.connect(ext.spider_error, signal=signals.spider_error)
        crawler.signals.connect(ext.item_scraped, signal=signals.item_scraped)
        return ext

    # -- signals -----------------------------------------------------------------------------
    def _count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def response_received(self, response: Any, request: Any, spider: Any = None) -> None:
        if LEASE_META not in request.meta:
            return  # not a crawl page: robots.txt and other requests Scrapy makes by itself
        self._count("pages")
        self._count(f"status:{response.status}")
        if response.status >= 400:
            self._count("errors")

    def spider_error(self, failure: Any, response: Any, spider: Any = None) -> None:
        self._count("errors")
        self._count("errors:spider")  # errors by type, kept in the run's history

    def item_scraped(self, item: Any, response: Any, spider: Any = None) -> None:
        self._count("items_local")

    def download_error(self) -> None:
        self._count("errors")

    def spider_opened(self, spider: Any) -> None:
        self.state = "running"
        self._loop = task.LoopingCall(self.tick)
        self._loop.start(self.interval, now=True)

    def spider_closed(self, spider: Any, reason: str) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.state = "finished"
        self.message = reason
        self.tick(final=True)

    # -- state ---------------------------------------------------------------------------------
    def _control_state(self) -> str:
        for ext in getattr(getattr(self.crawler, "extensions", None), "middlewares", ()):
            if isinstance(ext, Control):
                return ext.state
        return self.state

    def snapshot(self) -> dict[str, Any]:
        engine = getattr(self.crawler, "engine", None)
        sched = engine.scheduler if engine is not None and engine.spider is not None else None
        leases = len(sched.tracker) if sched is not None and hasattr(sched, "tracker") else 0
        state = self.state if self.state in ("finished", "failed") else self._control_state()
        return {
            "worker": self.worker, "host": socket.gethostname(), "pid": os.getpid(), "state": state,
            "pages": self.counts.get("pages", 0), "items": self.counts.get("items_local", 0),
            "errors": self.counts.get("errors", 0), "in_flight": _in_flight(self.crawler),
            "leases": leases, "message": self.message,
            "started_at": self.started_at, "updated_at": time.time(),
        }

    def tick(self, final: bool = False) -> None:
        try:
            if self.stats is not None:  # download errors counted by the lease middleware
                n = int(self.stats.get_value("crawlsite/download_errors", 0))
                self.counts["errors_download"] = n
                for stat, field in self.SHIPPED_STATS.items():
                    value = int(self.stats.get_value(stat, 0))
                    if value:
                        self.counts[field] = value
            pipe = self.redis.pipeline(transaction=False)
            pushed = {}
            for name, value in self.counts.items():
                if name in ("items_local",):
                    continue
                delta = value - self._pushed.get(name, 0)
                if delta:
                    field = "errors" if name == "errors_download" else name
                    pipe.hincrby(keys.stats(self.code), field, delta)
                    if name == "errors_download":  # errors by type, kept in the run's history
                        pipe.hincrby(keys.stats(self.code), "errors:download", delta)
                    pushed[name] = value
            pipe.hset(keys.workers(self.code), self.worker, json.dumps(self.snapshot()))
            if final:
                pipe.delete(keys.heartbeat(self.code, self.worker))
            else:
                pipe.set(keys.heartbeat(self.code, self.worker), str(time.time()), px=int(self.ttl * 1000))
            pipe.execute()
            self._pushed.update(pushed)  # only once Redis has them: a failed write is retried
            self._failing_since = None
        except Exception as exc:
            # The whole traceback once; after that one line per failed write.
            logger.warning("Cannot write worker stats of crawl %s: %s", self.code, exc,
                           exc_info=self._failing_since is None)
            self._give_up_if_redis_is_gone()

    def _give_up_if_redis_is_gone(self) -> None:
        """A worker that cannot reach Redis for ``give_up`` seconds leaves: it can do nothing
        useful, and its leases come back to the queue through the heartbeat once Redis does."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            return
        engine = getattr(self.crawler, "engine", None)
        if now - self._failing_since >= self.give_up and engine is not None and not self._gave_up:
            self._gave_up = True
            self.message = "Redis unreachable"
            logger.error("Redis unreachable for %.0f s: worker %s of crawl %s leaves", self.give_up, self.worker, self.code)
            deferred_from_coro(engine.close_spider_async(reason="redis unreachable"))


class RedisLogHandler(logging.Handler):
    """Ships WARNING+ records to the crawl's capped ``log`` stream."""

    def __init__(self, redis: redis.Redis, code: str, worker: str, *, maxlen: int = 1000,
                 level: int = logging.WARNING):
        super().__init__(level)
        self.redis = redis
        self.key = keys.log(code)
        self.worker = worker
        self.maxlen = maxlen
        self._local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._local, "busy", False):  # a Redis error logging itself: no recursion
            return
        self._local.busy = True
        try:
            message = self.format(record)
            self.redis.xadd(self.key, {
                "worker": self.worker, "level": record.levelname, "logger": record.name,
                "message": message[:10000], "time": f"{record.created:.3f}",
            }, maxlen=self.maxlen, approximate=True)
        except Exception:
            pass  # never let logging break the crawl
        finally:
            self._local.busy = False


class RedisLog:
    """Installs :class:`RedisLogHandler` on the root logger while the spider is open."""

    def __init__(self, handler: RedisLogHandler):
        self.handler = handler

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RedisLog:
        s = crawler.settings
        if not s.get("CRAWLSITE_CRAWL") or not s.get("CRAWLSITE_WORKER"):
            raise NotConfigured("CRAWLSITE_CRAWL / CRAWLSITE_WORKER not set")
        handler = RedisLogHandler(get_redis(s.get("CRAWLSITE_REDIS_URL")), s["CRAWLSITE_CRAWL"],
                                  s["CRAWLSITE_WORKER"], maxlen=s.getint("CRAWLSITE_LOG_MAXLEN", 1000))
        handler.setFormatter(logging.Formatter("%(message)s"))
        ext = cls(handler)
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.spider_closed, signal=signals.spider_closed)
        return ext

    def spider_opened(self, spider: Any) -> None:
        logging.getLogger().addHandler(self.handler)

    def spider_closed(self, spider: Any, reason: str) -> None:
        logging.getLogger().removeHandler(self.handler)
