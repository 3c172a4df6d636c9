"""The counting site (demosite/counting.py) opened to crawls, and a crawl definition for it."""

from __future__ import annotations

from demosite.counting import CountingHost as _CountingHost
from tests.servers import allow_crawling, disallow_crawling


class CountingHost(_CountingHost):
    def start(self):
        allow_crawling(self.address, self.port)  # before the workers start: they inherit it
        return super().start()

    def stop(self):
        disallow_crawling(self.address, self.port)
        super().stop()


def definition(hosts: list[CountingHost], **settings) -> dict:
    from crawler import definition as crawl_definition

    d = {
        "name": "Counting site",
        "start_urls": [h.url for h in hosts],
        "allowed_domains": [h.address for h in hosts],
        "follow": {"allow": ["/p/"], "deny": []},
        "limits": {"max_depth": 0, "max_pages": 0, "max_items": 0, "max_duration": 0},
        "item": {"url_pattern": "/p/", "selector": "", "fields": [{"name": "title", "selector": "h1::text",
                                                                    "many": False}]},
        "spider": "",
        "settings": {"CONCURRENT_REQUESTS": 16, **settings},
        "workers": 1,
    }
    return crawl_definition.validate(d)
