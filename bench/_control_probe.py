"""Probes used by bench/control_bench.py on BOTH sides (Crawlsite workers and scrapy-redis workers).

Settings (``-s`` on a Crawlsite worker, set directly by bench/_scrapy_redis_worker.py):
``BENCH_PROBE_REDIS`` (Redis URL), ``BENCH_PROBE_KEY`` (key prefix), ``BENCH_PROBE_WORKER`` (name).
Without ``BENCH_PROBE_REDIS`` both probes are disabled.

- ``ProcessedProbe`` (spider middleware): once a response's callback output has been consumed by
  the engine (its requests handed to the scheduler, its items to the pipelines), ``HINCRBY
  PREFIX:processed URL 1``. A page counts as processed only then: a response downloaded by a
  worker killed before its callback finished is not processed.
- ``InFlightProbe`` (extension): every 20 ms, ``HSET PREFIX:inflight WORKER JSON-list`` of the URLs
  this worker has taken and not finished (requests in the downloader + responses in the scraper).
"""

from __future__ import annotations

import json

import redis as redislib
from scrapy import signals
from scrapy.exceptions import NotConfigured
from twisted.internet import task


def _client(settings):
    url = settings.get("BENCH_PROBE_REDIS")
    if not url:
        raise NotConfigured
    return redislib.Redis.from_url(url, decode_responses=True), settings.get("BENCH_PROBE_KEY", "probe")


class ProcessedProbe:
    def __init__(self, r, prefix):
        self.r, self.key = r, f"{prefix}:processed"

    @classmethod
    def from_crawler(cls, crawler):
        return cls(*_client(crawler.settings))

    async def process_spider_output(self, response, result):
        async for x in result:
            yield x
        self.r.hincrby(self.key, response.url, 1)


class InFlightProbe:
    def __init__(self, crawler, r, prefix):
        self.crawler, self.r, self.key = crawler, r, f"{prefix}:inflight"
        self.worker = crawler.settings.get("BENCH_PROBE_WORKER", "w")
        self.loop = task.LoopingCall(self.report)
        crawler.signals.connect(self.opened, signal=signals.spider_opened)
        crawler.signals.connect(self.closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler, *_client(crawler.settings))

    def opened(self, spider):
        self.loop.start(0.02, now=True)

    def closed(self, spider, reason):
        if self.loop.running:
            self.loop.stop()
        self.r.hdel(self.key, self.worker)

    def report(self):
        engine = self.crawler.engine
        urls = {req.url for req in getattr(engine.downloader, "active", ())}
        slot = getattr(engine.scraper, "slot", None)
        for entry in getattr(slot, "active", ()) or ():
            urls.add(getattr(entry, "url", str(entry)))
        self.r.hset(self.key, self.worker, json.dumps(sorted(urls)))
