"""Item pipeline: items go to the crawl's ``items`` stream, with a stable key, in batches.

The key is ``<fingerprint of the source request, hex>:<index of the item in its response>``, so a
page crawled twice (after a worker was killed) yields the same keys and the dashboard stores its
items once.

Items are buffered and written by one Lua call per batch (``scripts.ADD_ITEMS``), in the
scheduler's round trip (:meth:`crawler.scheduler.RedisScheduler.flush`): requests enqueued, then
items, then lease releases, so a lease is never released before its items are in Redis. The item
is handed to the lease tracker as soon as it is buffered (the write that carries it comes before
any release). ``process_item`` returns then too, unless ``limits.max_items`` is set: the item is
as good as in Redis once buffered (if the worker dies first, its page's lease is still held and
the page is crawled again), and a failed write is logged by the scheduler. With ``max_items``,
``process_item`` waits for the verdict of the write: the limit holds exactly across workers, as
the counter check and the XADDs are one Lua step; an item over the limit is not written and raises
DropItem (and sets ``stats['limit:max_items']``).

An item whose JSON is larger than ``CRAWLSITE_MAX_ITEM_BYTES`` (the dashboard's setting, frozen in
the crawl's definition; 1 MiB by default) is never written: it is dropped, counted in the crawl's
``stats`` hash (``counters.ITEMS_TOO_LARGE``, pushed by :class:`~crawler.extensions.WorkerStats`) and
logged as a warning naming its page and size, which reaches the crawl's log stream.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy.exceptions import DropItem, NotConfigured
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.defer import Deferred

from . import keys, scripts
from .connection import get_redis
from .middlewares import LeaseTracker
from .settings import MAX_ITEM_BYTES
from .counters import ITEMS_TOO_LARGE

if TYPE_CHECKING:
    import redis
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


# Field coverage: fields of one item taken into account, and the longest field name counted.
FIELDS_PER_ITEM = 100
FIELD_NAME_MAX = 100


def is_filled(value: Any) -> bool:
    """Whether a field's value counts as present: not None, not blank text, not an empty list or
    mapping (a list counts when any of its values does)."""
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, dict):
        return bool(value)
    if isinstance(value, (list, tuple)):
        return any(is_filled(v) for v in value)
    return True


def filled_fields(data: dict) -> dict[str, bool]:
    """``{field: non-empty?}`` of an item (its first FIELDS_PER_ITEM fields), for the coverage count."""
    return {str(name)[:FIELD_NAME_MAX]: is_filled(value) for name, value in list(data.items())[:FIELDS_PER_ITEM]}


def coverage_args(items: list[dict[str, bool]]) -> tuple[str, list[str]]:
    """The batch's field names (JSON list) and, per item, its ``"1"``/``"0"`` string in that order:
    the coverage arguments of the item script (scripts.ADD_ITEMS)."""
    names: dict[str, int] = {}
    for flags in items:
        for name in flags:
            if name not in names and len(names) < scripts.FIELDS_MAX:  # as many as a crawl counts
                names[name] = len(names)
    strings = []
    for flags in items:
        chars = ["0"] * len(names)
        for name, filled in flags.items():
            if filled and name in names:
                chars[names[name]] = "1"
        strings.append("".join(chars).rstrip("0"))
    return json.dumps(list(names), ensure_ascii=False, separators=(",", ":")), strings


def item_keys(code: str) -> list[str]:
    """The keys the item script writes: the crawl's counters, its item stream, its field coverage."""
    return [keys.stats(code), keys.items(code), keys.fields(code)]


def items_call(code: str, worker: str, entries: list[tuple[list[str], dict[str, bool]]],
               max_items: int = 0) -> scripts.Call:
    """One item-script call writing ``entries``: ``([key, url, data JSON], {field: filled?})``."""
    names, flags = coverage_args([filled for _, filled in entries])
    args: list = [max_items, worker, names]
    for (fields, _), item_flags in zip(entries, flags):
        args += [*fields, item_flags]
    return scripts.ADD_ITEMS.call(item_keys(code), args)


class RedisItemPipeline:
    TOO_LARGE_STAT = f"crawlsite/{ITEMS_TOO_LARGE}"

    def __init__(self, redis: redis.Redis, code: str, worker: str, *, max_items: int = 0,
                 tracker: LeaseTracker | None = None, stats: Any = None, crawler: Crawler | None = None,
                 max_item_bytes: int = MAX_ITEM_BYTES):
        self.redis = redis
        self.code = keys.validate_code(code)
        self.worker = keys.validate_worker(worker)
        self.max_items = int(max_items)
        self.max_item_bytes = int(max_item_bytes)
        self.tracker = tracker
        self.stats = stats
        self.crawler = crawler
        # ([key, url, data], {field: filled?}, fired when written)
        self._pending: list[tuple[list[str], dict[str, bool], Deferred | None]] = []
        self._writer: Any = None  # the RedisScheduler, which writes our batch in its round trip
        self._flush_call = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RedisItemPipeline:
        s = crawler.settings
        if not s.get("CRAWLSITE_CRAWL") or not s.get("CRAWLSITE_WORKER"):
            raise NotConfigured("CRAWLSITE_CRAWL / CRAWLSITE_WORKER not set")
        return cls(get_redis(s.get("CRAWLSITE_REDIS_URL")), s["CRAWLSITE_CRAWL"], s["CRAWLSITE_WORKER"],
                   max_items=s.getint("CRAWLSITE_MAX_ITEMS", 0),
                   max_item_bytes=s.getint("CRAWLSITE_MAX_ITEM_BYTES", MAX_ITEM_BYTES),
                   tracker=LeaseTracker.for_crawler(crawler), stats=crawler.stats, crawler=crawler)

    def open_spider(self) -> None:
        scheduler = getattr(getattr(self.crawler, "engine", None), "scheduler", None)
        if hasattr(scheduler, "item_writer"):
            scheduler.item_writer = self
            self._writer = scheduler

    def close_spider(self) -> None:
        # the scraper is idle by now: normally nothing is left
        self._writer.flush() if self._writer is not None else self.flush()

    async def process_item(self, item: Any) -> Any:
        data = ItemAdapter(item).asdict()
        payload = json.dumps(data, ensure_ascii=False, default=str, separators=(",", ":"))
        size = len(payload.encode("utf-8"))
        if size > self.max_item_bytes:
            self._drop_too_large(item, data, size)
        key = self.tracker.item_key(item) if self.tracker is not None else None
        if key is None:  # not from a tracked response (e.g. yielded by start()): key by content
            key = "item:" + hashlib.sha1(payload.encode("utf-8")).hexdigest()
        written: Deferred | None = Deferred() if self.max_items > 0 else None  # only a limit needs the verdict
        self._pending.append(([key, str(data.get("url", "")), payload], filled_fields(data), written))
        if self.tracker is not None:
            self.tracker.item_stored(item)  # may release its lease: in the same round trip, after it
        if self._writer is not None:
            self._writer.schedule_flush()
        elif self._flush_call is None or not self._flush_call.active():
            from twisted.internet import reactor

            self._flush_call = reactor.callLater(0, self.flush)
        if written is not None and not await maybe_deferred_to_future(written):
            if self.stats is not None:
                self.stats.inc_value("crawlsite/items_over_limit")
            raise DropItem(f"limits.max_items ({self.max_items}) reached")
        if self.stats is not None:
            self.stats.inc_value("crawlsite/items")
        return item

    def _drop_too_large(self, item: Any, data: dict, size: int) -> None:
        if self.stats is not None:
            self.stats.inc_value(self.TOO_LARGE_STAT)
        # the item_dropped signal that follows lets the lease tracker count the item as handled
        url = self.tracker.item_page_url(item) if self.tracker is not None else ""
        url = url or str(data.get("url", "") or "")
        logger.warning("Dropped an item of %d bytes from %s: larger than the %d bytes allowed "
                       "(CRAWLSITE_MAX_ITEM_BYTES)", size, url[:2000] or "(no URL)", self.max_item_bytes)
        # logged above at WARNING with the page and size; Scrapy's own line (with the whole
        # item) would only repeat a megabyte of it
        raise DropItem(f"item of {size} bytes over the {self.max_item_bytes}-byte limit", log_level="DEBUG")

    # -- batch ---------------------------------------------------------------------------------
    @property
    def buffered(self) -> bool:
        return bool(self._pending)

    def take_batch(self) -> tuple[scripts.Call, list[Deferred | None]] | None:
        """The buffered items as one script call, and what to fire with its result."""
        if not self._pending:
            return None
        pending, self._pending = self._pending, []
        call = items_call(self.code, self.worker, [(fields, filled) for fields, filled, _ in pending], self.max_items)
        return call, [d for _, _, d in pending]

    @staticmethod
    def batch_written(deferreds: list[Deferred | None], result: Any) -> None:
        """Fire each item's Deferred: True (in the stream), False (over max_items), or the error."""
        for i, d in enumerate(deferreds):
            if d is None:  # nobody waits for this one
                continue
            if isinstance(result, BaseException):
                d.errback(result)
            else:
                d.callback(bool(int(result[i])))

    def flush(self) -> None:
        """Write the buffered items now (without the scheduler, or at close)."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        batch = self.take_batch()
        if batch is None:
            return
        call, deferreds = batch
        try:
            result = scripts.run(self.redis, [call])[0]
        except Exception as exc:
            result = exc
        self.batch_written(deferreds, result)
