"""Plain single-process Scrapy (no Redis) with Crawlsite's configurable spider, for the bench.

    python -m bench._baseline DEFINITION_JSON_FILE ITEMS_JSONL_FILE

Same spider code (follow rules, field extraction) and same Scrapy settings as a Crawlsite worker,
but Scrapy's own scheduler (memory queues) and dupefilter, items written by a jsonlines feed.
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
    settings = Settings()
    settings.setdict({
        "BOT_NAME": "crawlsite",
        "LOG_LEVEL": "WARNING",
        "ROBOTSTXT_OBEY": True,
        "TELNETCONSOLE_ENABLED": False,
        "DEPTH_LIMIT": 0,
        "EXTENSIONS": {"scrapy.extensions.telnet.TelnetConsole": None,
                       "scrapy.extensions.remote_control.RemoteControl": None,
                       "bench._probe.BenchProbe": 0},
        "FEEDS": {argv[1]: {"format": "jsonlines", "encoding": "utf8"}},
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
