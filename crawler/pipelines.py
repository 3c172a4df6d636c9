"""Item pipeline: each item goes to the crawl's ``items`` stream, with a stable key.

The key is ``<fingerprint of the source request, hex>:<index of the item in its response>``, so a
page crawled twice (after a worker was killed) yields the same keys and the dashboard stores its
items once. ``limits.max_items`` holds exactly across workers: the counter check and the XADD
are one Lua step; an item over the limit raises DropItem (and sets ``stats['limit:max_items']``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy.exceptions import DropItem, NotConfigured

from . import keys
from .connection import get_redis
from .middlewares import LeaseTracker

if TYPE_CHECKING:
    import redis
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

# KEYS: stats, items   ARGV: max_items, key, url, worker, data -> stream id | false (limit)
ADD_ITEM_SCRIPT = """
local max_items = tonumber(ARGV[1])
if max_items > 0 and tonumber(redis.call('HGET', KEYS[1], 'items') or '0') >= max_items then
  redis.call('HSET', KEYS[1], 'limit:max_items', '1')
  redis.call('HINCRBY', KEYS[1], 'items_dropped', 1)
  return false
end
redis.call('HINCRBY', KEYS[1], 'items', 1)
return redis.call('XADD', KEYS[2], '*', 'key', ARGV[2], 'url', ARGV[3], 'worker', ARGV[4], 'data', ARGV[5])
"""


class RedisItemPipeline:
    def __init__(self, redis: redis.Redis, code: str, worker: str, *, max_items: int = 0,
                 tracker: LeaseTracker | None = None, stats: Any = None):
        self.redis = redis
        self.code = keys.validate_code(code)
        self.worker = keys.validate_worker(worker)
        self.max_items = int(max_items)
        self.tracker = tracker
        self.stats = stats
        self.keys = [keys.stats(code), keys.items(code)]
        self._add = redis.register_script(ADD_ITEM_SCRIPT)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RedisItemPipeline:
        s = crawler.settings
        if not s.get("CRAWLSITE_CRAWL") or not s.get("CRAWLSITE_WORKER"):
            raise NotConfigured("CRAWLSITE_CRAWL / CRAWLSITE_WORKER not set")
        return cls(get_redis(s.get("CRAWLSITE_REDIS_URL")), s["CRAWLSITE_CRAWL"], s["CRAWLSITE_WORKER"],
                   max_items=s.getint("CRAWLSITE_MAX_ITEMS", 0),
                   tracker=LeaseTracker.for_crawler(crawler), stats=crawler.stats)

    def process_item(self, item: Any) -> Any:
        data = ItemAdapter(item).asdict()
        payload = json.dumps(data, ensure_ascii=False, default=str, separators=(",", ":"))
        key = self.tracker.item_key(item) if self.tracker is not None else None
        if key is None:  # not from a tracked response (e.g. yielded by start()): key by content
            key = "item:" + hashlib.sha1(payload.encode("utf-8")).hexdigest()
        url = str(data.get("url", ""))
        if self._add(keys=self.keys, args=[self.max_items, key, url, self.worker, payload]) is None:
            if self.stats is not None:
                self.stats.inc_value("crawlsite/items_over_limit")
            raise DropItem(f"limits.max_items ({self.max_items}) reached")
        if self.stats is not None:
            self.stats.inc_value("crawlsite/items")
        return item
