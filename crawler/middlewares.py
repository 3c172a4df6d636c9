"""Lease tracking: when is a popped request finished, so that its lease can be released?

A request popped from the crawl's queue is *leased* (``leases:WORKER``). Its lease is released
only once everything it produced is in Redis:

* a response: when the callback's output is exhausted (seen by :class:`LeaseSpiderMiddleware`,
  the outermost spider middleware), every request it yielded has been handed to the scheduler
  (which calls :meth:`LeaseTracker.request_scheduled` for every request it is given) and every
  item it yielded was buffered for Redis by
  :class:`crawler.pipelines.RedisItemPipeline` (:meth:`LeaseTracker.item_stored`) or left the item
  pipelines otherwise (``item_scraped`` / ``item_dropped`` / ``item_error``);
* a download error or IgnoreRequest without an errback (seen by :class:`LeaseDownloaderMiddleware`,
  the outermost downloader middleware): at once, nothing else comes of it;
* a redirect or retry (a downloader middleware returned a new request, which carries the lease in
  its meta): when the new request reaches the scheduler;
* anything else (an errback, a custom spider's errback too; an exception in a callback or a
  middleware; a request that a ``request_scheduled`` signal handler dropped before it reached the
  scheduler): when the request has left Scrapy's engine. The engine holds every request it
  started in its slot (``inprogress``) until the download, the callback or errback, and all of
  their output (requests scheduled, items through the item pipelines) are done; the scheduler's
  tick (every ``CRAWLSITE_IDLE_POLL``) releases the started leases whose request is no longer
  there (:meth:`LeaseTracker.sweep`). That rule alone would be enough; the events above release
  sooner.

A request leased but not started (popped into the scheduler's ready queue while the engine is
paused, or when a pop's reply lands after a pause) is never released: it goes back to the queue
(:meth:`crawler.scheduler.RedisScheduler.return_unstarted`), so a paused worker holds no lease.

Releases are batched by the scheduler with its pending enqueues and the pipeline's buffered items,
in one pipelined round trip, releases last: a request or an item buffered (not yet written) is
therefore as good as in Redis for the lease it belongs to.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from scrapy import Request, signals
from scrapy.exceptions import IgnoreRequest

from .queue import LEASE_META

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger(__name__)


class Lease:
    __slots__ = ("released_in", "id", "request", "response", "fingerprint", "state", "pending", "callback_done",
                 "item_ids", "next_index", "started")

    def __init__(self, lease_id: str, request: Request, fingerprint: str):
        self.id = lease_id
        self.request = request
        self.fingerprint = fingerprint
        self.response: Any = None
        self.state = "download"  # download -> response -> callback -> done
        self.pending = 0  # requests and items yielded and not yet in Redis
        self.callback_done = False
        self.item_ids: list[int] = []
        self.next_index = 0
        self.started = False  # handed to the engine (else: popped, waiting in the ready queue)


class LeaseTracker:
    """The leases held by one worker, and the bookkeeping that tells when each is finished."""

    _by_crawler: "weakref.WeakKeyDictionary[Crawler, LeaseTracker]" = weakref.WeakKeyDictionary()

    def __init__(self, on_done: Callable[[Lease], None] | None = None):
        self.on_done = on_done or (lambda lease: None)
        self.leases: dict[str, Lease] = {}
        self.by_request: dict[Request, Lease] = {}
        self.by_response: dict[Any, Lease] = {}
        self.children: dict[Request, Lease] = {}
        self.item_keys: dict[int, str] = {}
        self.item_leases: dict[int, Lease | None] = {}  # yielded items -> lease (None: counted)

    @classmethod
    def for_crawler(cls, crawler: Crawler) -> LeaseTracker:
        tracker = cls._by_crawler.get(crawler)
        if tracker is None:
            tracker = cls._by_crawler[crawler] = cls()
            for sig in (signals.item_scraped, signals.item_dropped, signals.item_error):
                crawler.signals.connect(tracker.item_finished, signal=sig)
        return tracker

    def __len__(self) -> int:
        return len(self.leases)

    # -- lifecycle ---------------------------------------------------------------------------
    def add(self, lease_id: str, request: Request, fingerprint: str) -> Lease:
        lease = Lease(lease_id, request, fingerprint)
        self.leases[lease_id] = lease
        self.by_request[request] = lease
        request.meta[LEASE_META] = lease_id
        return lease

    def done(self, lease: Lease) -> None:
        if lease.state == "done":
            return
        lease.released_in = lease.state
        lease.state = "done"
        self.leases.pop(lease.id, None)
        self.by_request.pop(lease.request, None)
        if lease.response is not None:
            self.by_response.pop(lease.response, None)
        for item_id in lease.item_ids:
            self.item_keys.pop(item_id, None)
            self.item_leases.pop(item_id, None)
        for child, owner in list(self.children.items()) if lease.pending > 0 else ():
            if owner is lease:
                del self.children[child]
        self.on_done(lease)

    def _maybe_done(self, lease: Lease) -> None:
        if lease.callback_done and lease.pending <= 0:
            self.done(lease)

    def forget(self, request: Request) -> Lease | None:
        """Stop tracking a request that was leased but never started (it goes back to the queue);
        return its lease."""
        lease = self.by_request.pop(request, None)
        if lease is not None:
            self.leases.pop(lease.id, None)
        return lease

    def start(self, request: Request) -> None:
        """The request leaves the ready queue for the engine."""
        lease = self.by_request.get(request)
        if lease is not None:
            lease.started = True

    def sweep(self, in_progress: Any) -> int:
        """Release every started lease whose request is not ``in_progress`` any more (the engine
        is done with it and with everything it produced); return how many."""
        over = [lease for lease in self.leases.values() if lease.started and lease.request not in in_progress]
        for lease in over:
            self.done(lease)
        return len(over)

    def finish_all(self) -> int:
        """Every lease is finished (the worker is idle): release them all."""
        held = list(self.leases.values())
        for lease in held:
            self.done(lease)
        return len(held)

    # -- events ------------------------------------------------------------------------------
    def response_downloaded(self, request: Request, response: Response) -> None:
        lease = self.by_request.get(request)
        if lease is not None and lease.state == "download":
            lease.state = "response"
            lease.response = response
            self.by_response[response] = lease

    def download_failed(self, request: Request) -> None:
        lease = self.by_request.get(request)
        if lease is not None and lease.state == "download" and request.errback is None:
            self.done(lease)  # the failure is only logged: nothing else comes of it

    def request_scheduled(self, request: Request, spider: Any = None) -> None:
        lease = self.children.pop(request, None)
        if lease is not None:
            lease.pending -= 1
            self._maybe_done(lease)
            return
        lease = self.leases.get(request.meta.get(LEASE_META, ""))
        if lease is not None and lease.request is not request and lease.state == "download":
            self.done(lease)  # a redirect or a retry replaces the leased request

    def item_stored(self, item: Any) -> None:
        """The item is buffered for Redis, to be written before any lease released after this."""
        lease = self.item_leases.get(id(item))
        if lease is not None:
            self.item_leases[id(item)] = None  # counted: its item signal only forgets it
            self._item_handled(lease)

    def item_finished(self, item: Any = None, response: Any = None, **kwargs: Any) -> None:
        if id(item) in self.item_leases:
            lease = self.item_leases.pop(id(item))
        else:  # e.g. an item replaced by an earlier pipeline: its response tells the lease
            lease = self.by_response.get(response) if response is not None else None
        if lease is not None:
            self._item_handled(lease)

    def _item_handled(self, lease: Lease) -> None:
        if lease.state != "done":
            lease.pending -= 1
            self._maybe_done(lease)

    def item_key(self, item: Any) -> str | None:
        return self.item_keys.get(id(item))

    def item_page_url(self, item: Any) -> str:
        """URL of the page whose callback yielded ``item`` ("" if not from a tracked response)."""
        lease = self.item_leases.get(id(item))
        source = lease.response if lease is not None and lease.response is not None else getattr(lease, "request", None)
        return getattr(source, "url", "") or ""

    async def wrap_output(self, response: Response, result: AsyncIterator[Any]) -> AsyncIterator[Any]:
        lease = self.by_response.get(response)
        if lease is None:
            async for out in result:
                yield out
            return
        lease.state = "callback"
        try:
            async for out in result:
                if isinstance(out, Request):
                    self.children[out] = lease
                    lease.pending += 1
                elif out is not None:
                    key = f"{lease.fingerprint}:{lease.next_index}"
                    lease.next_index += 1
                    self.item_keys[id(out)] = key
                    self.item_leases[id(out)] = lease
                    lease.item_ids.append(id(out))
                    lease.pending += 1
                yield out
        finally:
            lease.callback_done = True
            self._maybe_done(lease)

    def callback_failed(self, response: Response) -> None:
        lease = self.by_response.get(response)
        if lease is not None and lease.state == "response":
            # no middleware recovered from the exception: no output will follow
            lease.callback_done = True
            self._maybe_done(lease)


class LeaseDownloaderMiddleware:
    """Outermost downloader middleware: sees the final response or failure of a leased request."""

    def __init__(self, tracker: LeaseTracker, stats: Any = None):
        self.tracker = tracker
        self.stats = stats

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> LeaseDownloaderMiddleware:
        return cls(LeaseTracker.for_crawler(crawler), crawler.stats)

    def process_response(self, request: Request, response: Response) -> Response:
        self.tracker.response_downloaded(request, response)
        return response

    def process_exception(self, request: Request, exception: Exception) -> None:
        if self.stats is not None and not isinstance(exception, IgnoreRequest):
            self.stats.inc_value("crawlsite/download_errors")
        self.tracker.download_failed(request)
        return None


class LeaseSpiderMiddleware:
    """Outermost spider middleware: counts what each response's callback yields."""

    def __init__(self, tracker: LeaseTracker):
        self.tracker = tracker
        # Scrapy's process_spider_output hook is the tracker's own async generator: every output
        # of every callback passes here, so one generator layer rather than two
        self.process_spider_output = tracker.wrap_output

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> LeaseSpiderMiddleware:
        return cls(LeaseTracker.for_crawler(crawler))

    def process_spider_exception(self, response: Response, exception: Exception) -> None:
        self.tracker.callback_failed(response)
        return None
