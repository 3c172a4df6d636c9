"""A user's own spider, as Crawlsite runs it: a plain Scrapy spider, nothing Crawlsite-specific.

The crawl's start URLs are seeded into the shared queue and arrive at ``parse``; the spider's
requests and items go through Crawlsite's scheduler, dupefilter and pipeline like any other.
"""

import time
from urllib.parse import urljoin

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

class ErrbackShopSpider(scrapy.Spider):
    """A user's spider with an errback on every request and callbacks that raise: every lease path
    of a custom spider (issue 12). On the adversarial ``lifecycle`` demo site its items are exactly
    the site's expected items: errbacks (404, 500 given up, timeouts, robots.txt, offsite) yield no
    item, only a request the dupefilter drops; a listing callback raises after yielding its links."""

    name = "errback_shop"
    allowed_domains = ["127.0.0.1"]  # the mirror links on localhost are offsite: dropped
    FOLLOW = ("/category/", "/product/", "/old/", "/moved/", "/private/", "/slow/", "/broken/")

    def parse(self, response):
        for href in response.css("a::attr(href)").getall():
            url = response.urljoin(href)
            if any(part in url for part in self.FOLLOW) or "localhost" in url:  # offsite: dropped
                yield scrapy.Request(url, callback=self.parse, errback=self.failed)
        sku = response.css(".sku::text").get("").strip()
        if "/product/" in response.url and sku:
            yield {
                "url": response.urljoin(f"/product/{sku}/"),
                "title": response.css("h1::text").get("").strip(),
                "sku": sku,
                "price": response.css(".price::text").get("").strip(),
                "category": response.css(".category::text").get("").strip(),
            }
        if "page=2" in response.url:
            raise ValueError("a callback that fails after yielding its output")

    def failed(self, failure):
        # the output of an errback: a request that is a duplicate by now (the home page)
        yield scrapy.Request(urljoin(failure.request.url, "/"), callback=self.parse, errback=self.failed)
