"""The built-in spider driven entirely by the crawl definition (no custom code).

What it does with each page (items, links) is :class:`crawler.extraction.Rules`, shared with the
preview (:mod:`crawler.preview`).
"""

from __future__ import annotations

from typing import Any, Iterator

import scrapy

from ..extraction import Rules, parsed
from .base import RedisSpider


class ConfigurableSpider(RedisSpider):
    name = "configurable"

    def apply_definition(self, definition: dict[str, Any]) -> None:
        super().apply_definition(definition)
        self.rules = Rules(definition)

    def parse(self, response: scrapy.http.Response, **kwargs: Any) -> Iterator[Any]:
        if not parsed(response):  # PDF, images...: nothing to extract, no links to follow
            if isinstance(response, scrapy.http.TextResponse):
                self.logger.warning("Cannot parse %s as HTML/XML", response.url)
            return
        if self.rules.is_item_page(response.url):
            yield from self.rules.extract_items(response)
        for url in self.rules.links(response):
            if self.follows(url):
                yield scrapy.Request(url, callback=self.parse)

    def follows(self, url: str) -> bool:
        """Whether a link is followed: in the allowed domains, found by an allow pattern (if
        any), by no deny pattern."""
        return not self.rules.refusal(url)
