"""A no-op Scrapy extension used by bench/engine_bench.py on BOTH sides (plain Scrapy and Crawlsite
workers): prints, on stdout, the wall-clock time the spider opened, the first time the engine went
idle, and at close the number of pages received (robots.txt excluded) and the CPU time the process
used from spider_opened to the last of those pages. Nothing else."""

from __future__ import annotations

import sys
import time

from scrapy import signals


class BenchProbe:
    def __init__(self) -> None:
        self.pages = 0
        self.idle_at = None
        self.cpu_opened = 0.0
        self.cpu_last_page = 0.0

    @classmethod
    def from_crawler(cls, crawler):
        ext = cls()
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.spider_idle, signal=signals.spider_idle)
        crawler.signals.connect(ext.response_received, signal=signals.response_received)
        crawler.signals.connect(ext.spider_closed, signal=signals.spider_closed)
        return ext

    def _say(self, *words) -> None:
        print("BENCH", *words, flush=True, file=sys.stdout)

    def spider_opened(self, spider) -> None:
        self.cpu_opened = self.cpu_last_page = time.process_time()
        self._say("opened", repr(time.time()))

    def spider_idle(self, spider) -> None:
        if self.idle_at is None:
            self.idle_at = time.time()
            self._say("idle", repr(self.idle_at))

    def response_received(self, response, request, spider=None) -> None:
        if not response.url.endswith("/robots.txt"):
            self.pages += 1
            self.cpu_last_page = time.process_time()

    def spider_closed(self, spider, reason) -> None:
        # CPU seconds of this process from spider_opened to the last page received
        self._say("closed", repr(time.time()), self.pages, reason, repr(self.cpu_last_page - self.cpu_opened))
