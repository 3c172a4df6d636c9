"""What the built-in spider does with one page, read from a crawl definition: which pages hold
items, what each item holds, which links are followed and why the others are not.

One :class:`Rules` object serves the real spider (:mod:`crawler.spiders.configurable`) and the
preview (:mod:`crawler.preview`), so a preview shows exactly what a crawl of the same page does.
"""

from __future__ import annotations

from typing import Any, Iterator
from urllib.parse import urlsplit

from scrapy.http import TextResponse
from scrapy.linkextractors import LinkExtractor

from .definition import host_allowed, is_xpath
from .netpolicy import scheme_allowed
from .patterns import compile_pattern, search_any

# Why a link is not followed (the preview shows these words).
OFF_DOMAIN = "off-domain"
NO_ALLOW_MATCH = "no allow match"
DENY_PATTERN = "deny pattern"


def select(selector: Any, query: str):
    """Run a definition's selector: XPath when it starts with ``/``, ``(`` or ``./``, else CSS."""
    if is_xpath(query) or query.startswith(("./", "../")):
        return selector.xpath(query)
    return selector.css(query)


def _clean(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def parsed(response: Any) -> bool:
    """Whether the spider looks into ``response`` at all: markup it can parse (not a PDF, an
    image, or bytes that are no HTML/XML)."""
    if not isinstance(response, TextResponse):
        return False
    try:
        response.selector  # noqa: B018 - parse once
    except Exception:
        return False
    return True


class Rules:
    """The item and link rules of a definition, compiled once (regexes on RE2)."""

    def __init__(self, definition: dict[str, Any]):
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

    def is_item_page(self, url: str) -> bool:
        return bool(self.fields) and (self.item_url_re is None or search_any([self.item_url_re], url))

    def refusal(self, url: str) -> str:
        """Why the spider does not follow a link ("" when it does): outside the allowed domains,
        found by no allow pattern (when there are some), or found by a deny pattern."""
        # a link of another scheme (file:, ftp:) goes on to the scheduler, which drops and counts it
        if self.domains and scheme_allowed(url) and not host_allowed(urlsplit(url).hostname or "", self.domains):
            return OFF_DOMAIN
        if self.follow_allow and not search_any(self.follow_allow, url):
            return NO_ALLOW_MATCH
        if search_any(self.follow_deny, url):
            return DENY_PATTERN
        return ""

    def links(self, response: TextResponse) -> list[str]:
        """The URLs of the links on a page, in page order, each once."""
        return [link.url for link in self.link_extractor.extract_links(response)]

    def roots(self, response: TextResponse) -> list[Any]:
        """The nodes that are one item each: the item selector's matches, or the whole page."""
        return list(select(response, self.item_selector)) if self.item_selector else [response.selector]

    def extract_items(self, response: TextResponse) -> Iterator[dict[str, Any]]:
        for root in self.roots(response):
            item: dict[str, Any] = {"url": response.url}
            for field in self.fields:
                found = select(root, field["selector"])
                if field.get("many"):
                    item[field["name"]] = [v for v in (_clean(x) for x in found.getall()) if v != ""]
                else:
                    item[field["name"]] = _clean(found.get())
            yield item

    def matches(self, response: TextResponse) -> dict[str, Any]:
        """How many nodes each selector matched on the page: the item selector (in the page) and
        each field's selector (summed over the items)."""
        roots = self.roots(response)
        return {
            "item_selector": {"selector": self.item_selector, "nodes": len(roots)} if self.item_selector else None,
            "fields": {
                field["name"]: {"selector": field["selector"], "nodes": sum(len(select(r, field["selector"])) for r in roots)}
                for field in self.fields
            },
        }
