"""The built-in spider driven entirely by the crawl definition (no custom code)."""

from __future__ import annotations

from typing import Any, Iterator
from urllib.parse import urlsplit

import scrapy
from scrapy.http import TextResponse
from scrapy.linkextractors import LinkExtractor

from ..definition import host_allowed, is_xpath
from ..netpolicy import scheme_allowed
from ..patterns import compile_pattern, search_any
from .base import RedisSpider


def _select(selector: Any, query: str):
    if is_xpath(query) or query.startswith(("./", "../")):
        return selector.xpath(query)
    return selector.css(query)


def _clean(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


class ConfigurableSpider(RedisSpider):
    name = "configurable"

    def apply_definition(self, definition: dict[str, Any]) -> None:
        super().apply_definition(definition)
        follow = definition.get("follow") or {}
        item = definition.get("item") or {}
        # allowed domains are checked on the host name: LinkExtractor(allow_domains=) compares
        # the netloc, port included, so it would drop every link of http://127.0.0.1:8001/.
        # allow/deny are user regexes: LinkExtractor would run them on Python's backtracking
        # ``re``, so it only extracts, and they are searched in each link's URL with RE2, as
        # LinkExtractor does with ``re`` (crawler/patterns.py).
        self.link_extractor = LinkExtractor()
        self.follow_allow = [compile_pattern(p) for p in follow.get("allow") or ()]
        self.follow_deny = [compile_pattern(p) for p in follow.get("deny") or ()]
        self.domains = [d.lower() for d in definition.get("allowed_domains") or ()]
        pattern = item.get("url_pattern") or ""
        self.item_url_re = compile_pattern(pattern) if pattern else None
        self.item_selector = item.get("selector") or ""
        self.fields = list(item.get("fields") or [])

    def parse(self, response: scrapy.http.Response, **kwargs: Any) -> Iterator[Any]:
        if not isinstance(response, TextResponse):
            return  # PDF, images...: nothing to extract, no links to follow
        try:
            response.selector  # noqa: B018 - parse once; a response that is not markup is skipped
        except Exception:
            self.logger.warning("Cannot parse %s as HTML/XML", response.url)
            return
        if self.fields and (self.item_url_re is None or search_any([self.item_url_re], response.url)):
            yield from self.extract_items(response)
        for link in self.link_extractor.extract_links(response):
            if not self.follows(link.url):
                continue
            yield scrapy.Request(link.url, callback=self.parse)

    def follows(self, url: str) -> bool:
        """Whether a link is followed: in the allowed domains, found by an allow pattern (if
        any), by no deny pattern."""
        # a link of another scheme (file:, ftp:) goes on to the scheduler, which drops and counts it
        if self.domains and scheme_allowed(url) and not host_allowed(urlsplit(url).hostname or "", self.domains):
            return False
        if self.follow_allow and not search_any(self.follow_allow, url):
            return False
        return not search_any(self.follow_deny, url)

    def extract_items(self, response: TextResponse) -> Iterator[dict[str, Any]]:
        roots = _select(response, self.item_selector) if self.item_selector else [response.selector]
        for root in roots:
            item: dict[str, Any] = {"url": response.url}
            for field in self.fields:
                found = _select(root, field["selector"])
                if field.get("many"):
                    item[field["name"]] = [v for v in (_clean(x) for x in found.getall()) if v != ""]
                else:
                    item[field["name"]] = _clean(found.get())
            yield item
