"""A user's own spider, as Crawlsite runs it: a plain Scrapy spider, nothing Crawlsite-specific.

The crawl's start URLs are seeded into the shared queue and arrive at ``parse``; the spider's
requests and items go through Crawlsite's scheduler, dupefilter and pipeline like any other.
"""

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
