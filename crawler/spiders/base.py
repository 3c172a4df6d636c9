"""RedisSpider: a spider whose crawl definition comes from Redis (or a ``definition`` attribute)."""

from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator

import scrapy

from .. import keys
from ..connection import get_redis

logger = logging.getLogger(__name__)


class RedisSpider(scrapy.Spider):
    """Base of Crawlsite spiders.

    ``self.definition`` is the crawl's frozen definition: the ``definition`` attribute if given
    (class attribute or spider argument), else the crawl's ``definition`` key in Redis.
    ``start()`` yields the start URLs as ordinary (deduplicated) requests: every worker may yield
    them, the shared dupefilter keeps one of each, and a resumed crawl does not re-crawl them.
    """

    name = "crawlsite"
    definition: dict[str, Any] | None = None

    @classmethod
    def from_crawler(cls, crawler, *args: Any, **kwargs: Any):
        spider = super().from_crawler(crawler, *args, **kwargs)
        if spider.definition is None:
            spider.definition = cls.load_definition(crawler.settings)
        spider.apply_definition(spider.definition)
        return spider

    @staticmethod
    def load_definition(settings) -> dict[str, Any]:
        code = settings.get("CRAWLSITE_CRAWL")
        if not code:
            return {}
        raw = get_redis(settings.get("CRAWLSITE_REDIS_URL")).get(keys.definition(code))
        if not raw:
            raise ValueError(f"crawl {code} has no definition in Redis ({keys.definition(code)})")
        return json.loads(raw)

    def apply_definition(self, definition: dict[str, Any]) -> None:
        """Hook: configure the spider from the definition (start URLs, allowed domains)."""
        if definition.get("start_urls") and not getattr(self, "start_urls", None):
            self.start_urls = list(definition["start_urls"])
        if definition.get("allowed_domains") and not getattr(self, "allowed_domains", None):
            self.allowed_domains = list(definition["allowed_domains"])

    async def start(self) -> AsyncIterator[Any]:
        for url in getattr(self, "start_urls", ()) or ():
            yield scrapy.Request(url, callback=self.parse)
