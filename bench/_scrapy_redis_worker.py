"""One scrapy-redis 0.9.1 worker for bench/control_bench.py (the comparison side).

    python -m bench._scrapy_redis_worker DEFINITION_JSON_FILE REDIS_URL PREFIX [WORKER]

Crawlsite's ConfigurableSpider with the same definition and settings as a Crawlsite worker, but
scrapy-redis's scheduler (requests popped from a Redis priority queue), RFPDupeFilter and
RedisPipeline (items pushed to the list PREFIX:items). SCHEDULER_PERSIST on, as a distributed
crawl needs.

Like a scrapy-redis ``RedisSpider``, the worker never closes by itself when its queue is empty
(``KeepAlive`` raises DontCloseSpider on idle; another worker may still add requests): the bench
ends it with SIGTERM once the crawl is quiet. The bench probes (bench/_control_probe.py) record
the pages processed and the requests in flight, exactly as on the Crawlsite workers.
"""

from __future__ import annotations

import json
import sys

from scrapy import signals
from scrapy.crawler import CrawlerProcess
from scrapy.exceptions import DontCloseSpider
from scrapy.settings import Settings

from crawler.definition import ALLOWED_SETTINGS
from crawler.spiders.configurable import ConfigurableSpider


class KeepAlive:
    """As scrapy-redis's RedisSpider: an idle worker waits for requests instead of closing."""

    @classmethod
    def from_crawler(cls, crawler):
        ext = cls()
        crawler.signals.connect(ext.spider_idle, signal=signals.spider_idle)
        return ext

    def spider_idle(self, spider):
        raise DontCloseSpider


def main(argv: list[str]) -> int:
    definition = json.loads(open(argv[0]).read())
    redis_url, prefix = argv[1], argv[2]
    worker = argv[3] if len(argv) > 3 else "w1"
    settings = Settings()
    settings.setdict({
        "BOT_NAME": "crawlsite",
        "LOG_LEVEL": "WARNING",
        "ROBOTSTXT_OBEY": True,
        "TELNETCONSOLE_ENABLED": False,
        "DEPTH_LIMIT": 0,
        "EXTENSIONS": {"scrapy.extensions.telnet.TelnetConsole": None,
                       "scrapy.extensions.remote_control.RemoteControl": None,
                       "bench._scrapy_redis_worker.KeepAlive": 0,
                       "bench._control_probe.InFlightProbe": 0},
        "SPIDER_MIDDLEWARES": {"bench._control_probe.ProcessedProbe": 2},
        "BENCH_PROBE_REDIS": redis_url,
        "BENCH_PROBE_KEY": prefix,
        "BENCH_PROBE_WORKER": worker,
        "SCHEDULER": "scrapy_redis.scheduler.Scheduler",
        "DUPEFILTER_CLASS": "scrapy_redis.dupefilter.RFPDupeFilter",
        "SCHEDULER_PERSIST": True,
        "SCHEDULER_QUEUE_KEY": f"{prefix}:requests",
        "SCHEDULER_DUPEFILTER_KEY": f"{prefix}:dupefilter",
        "ITEM_PIPELINES": {"scrapy_redis.pipelines.RedisPipeline": 300},
        "REDIS_ITEMS_KEY": f"{prefix}:items",
        "REDIS_URL": redis_url,
    }, priority="project")
    for name, value in (definition.get("settings") or {}).items():
        if name in ALLOWED_SETTINGS:
            settings.set(name, value, priority="project")
    process = CrawlerProcess(settings)
    process.crawl(ConfigurableSpider, definition=definition)
    process.start()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
