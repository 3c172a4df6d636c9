"""One scrapy-redis 0.9.1 worker for bench/control_bench.py (the comparison side).

    python -m bench._scrapy_redis_worker DEFINITION_JSON_FILE REDIS_URL PREFIX

Crawlsite's ConfigurableSpider with the same definition and settings as a Crawlsite worker, but
scrapy-redis's scheduler (requests popped from a Redis priority queue), RFPDupeFilter and
RedisPipeline (items pushed to the list PREFIX:items). SCHEDULER_PERSIST on, as a distributed
crawl needs.
"""

from __future__ import annotations

import json
import sys

from scrapy.crawler import CrawlerProcess
from scrapy.settings import Settings

from crawler.definition import ALLOWED_SETTINGS
from crawler.spiders.configurable import ConfigurableSpider


def main(argv: list[str]) -> int:
    definition = json.loads(open(argv[0]).read())
    redis_url, prefix = argv[1], argv[2]
    settings = Settings()
    settings.setdict({
        "BOT_NAME": "crawlsite",
        "LOG_LEVEL": "WARNING",
        "ROBOTSTXT_OBEY": True,
        "TELNETCONSOLE_ENABLED": False,
        "DEPTH_LIMIT": 0,
        "EXTENSIONS": {"scrapy.extensions.telnet.TelnetConsole": None,
                       "scrapy.extensions.remote_control.RemoteControl": None},
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
