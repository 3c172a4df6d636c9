"""A user's own spider, as Crawlsite runs it: a plain Scrapy spider, nothing Crawlsite-specific.

The crawl's start URLs are seeded into the shared queue and arrive at ``parse``; the spider's
requests and items go through Crawlsite's scheduler, dupefilter and pipeline like any other.
"""

import time

import scrapy


class ShopSpider(scrapy.Spider):
    name = "shop"

    def parse(self, response):
        for href in response.css("a::attr(href)").getall():
            if "/category/" in href or "/product/" in href:
                yield response.follow(href, callback=self.parse)
        if "/product/" in response.url:
            yield {
                "url": response.url,
                "title": response.css("h1::text").get("").strip(),
                "sku": response.css(".sku::text").get("").strip(),
                "price": response.css(".price::text").get("").strip(),
                "category": response.css(".category::text").get("").strip(),
            }


class NotASpider:
    """Named in a definition, it is refused: it is not a scrapy.Spider."""


class StuckSpider(ShopSpider):
    """ShopSpider whose callback for the first product page it gets never returns, in worker w1
    only: it blocks the worker's reactor as a runaway regex would (no control, no heartbeat, and
    SIGTERM is only noted). A later worker (a resumed crawl's) crawls that page normally, so a
    test can check that nothing was lost."""

    name = "stuck"
    STUCK_MESSAGE = "Stuck for good in the callback of "

    def parse(self, response):
        if "/product/" in response.url and self.settings.get("CRAWLSITE_WORKER") == "w1":
            self.logger.warning("%s%s", self.STUCK_MESSAGE, response.url)  # the crawl's log
            while True:
                time.sleep(0.05)
        yield from super().parse(response)
