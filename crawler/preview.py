"""``python -m crawler.preview``: try a crawl definition on one page, as a worker would.

Reads ``{"definition": {...}, "url": "...", "depth": 0}`` (a validated definition) on stdin and
prints one JSON object on stdout:

* ``{"status", "url", "item_page", "items", "matches", "links": {"follow", "ignored"},
  "robots", "notes"}`` when the page was fetched (any HTTP status), or
* ``{"error": "refused" | "unreachable" | "too large", "detail": "..."}`` when it was not.

The page is fetched by Scrapy with the worker's settings (:func:`crawler.settings.fetch_settings`:
user agent, size limit, network guard in the resolver, only http and https), and read by the
built-in spider's own rules (:class:`crawler.extraction.Rules`). Differences, on purpose: no
retries, a download time limit of at most :data:`TIME_LIMIT` seconds, and robots.txt is fetched
and reported rather than obeyed, so a page a crawl would skip can still be tried (reported as a
crawl reads it, failing closed: :mod:`crawler.robots`). The output is
bounded (items, links, string lengths). Run as a subprocess of the dashboard: Scrapy's reactor
never runs in the web process.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor, wait
from itertools import islice
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import scrapy

from .extraction import OFF_DOMAIN, Rules, parsed
from .netpolicy import Policy, scheme_allowed
from .robots import ALLOW_ALL, MAX_REDIRECTS, verdict

TIME_LIMIT = 15.0  # seconds for one download (DOWNLOAD_TIMEOUT, if the definition's is longer)
MAX_ITEMS = 100
MAX_LINKS = 500
MAX_CHARS = 10_000  # per string value of an item
MAX_URL_CHARS = 2_000
MAX_HOSTS = 50  # distinct link hosts checked against the network policy
HOST_CHECK_SECONDS = 5.0

SCHEME = "scheme"
DEPTH = "depth"
NETWORK_GUARD = "network guard"


def _bounded(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_CHARS:
        return value[:MAX_CHARS] + "…"
    if isinstance(value, list):
        return [_bounded(v) for v in value[:MAX_ITEMS]]
    return value


def _failure_outcome(failure: Any, timeout: float, maxsize: int) -> dict[str, Any]:
    """The preview's answer for a page that could not be fetched."""
    from scrapy.exceptions import (
        CannotResolveHostError,
        DownloadCancelledError,
        DownloadConnectionRefusedError,
        DownloadTimeoutError,
    )
    from twisted.internet.error import ConnectionRefusedError, DNSLookupError, TimeoutError as TxTimeout

    from .netguard import BlockedAddress

    exc = failure.value
    if isinstance(exc, BlockedAddress):
        return {"error": "refused", "detail": f"Refused by the network policy: {str(exc).removeprefix('refused ')}"}
    if isinstance(exc, (DNSLookupError, CannotResolveHostError)):
        detail = "the host name does not resolve"
    elif isinstance(exc, (ConnectionRefusedError, DownloadConnectionRefusedError)):
        detail = "the connection was refused (nothing listens on that port)"
    elif isinstance(exc, (TxTimeout, DownloadTimeoutError)):
        detail = f"no answer within {timeout:g} s"
    elif isinstance(exc, DownloadCancelledError):  # what Scrapy's handler does past the size limit
        return {"error": "too large", "detail": f"The page is larger than DOWNLOAD_MAXSIZE ({maxsize:,} bytes): "
                                                "a crawl would not store it either."}
    else:
        detail = f"{type(exc).__name__}: {str(exc)[:300]}"
    return {"error": "unreachable", "detail": f"Could not fetch the page: {detail}."}


class PreviewSpider(scrapy.Spider):
    """Fetches one page (and its site's robots.txt) and records what the crawl would do there."""

    name = "preview"

    def __init__(self, definition: dict[str, Any], url: str, depth: int, result: dict[str, Any], **kwargs: Any):
        super().__init__(**kwargs)
        self.definition = definition
        self.url = url
        self.depth = depth
        self.result = result
        self.rules = Rules(definition)

    async def start(self):
        parts = urlsplit(self.url)
        robots = urlunsplit((parts.scheme, parts.netloc, "/robots.txt", "", ""))
        yield scrapy.Request(robots, callback=self.got_robots, errback=self.robots_failed, dont_filter=True,
                             priority=1, meta={"redirect_ttl": MAX_REDIRECTS})
        yield scrapy.Request(self.url, callback=self.got_page, errback=self.page_failed, dont_filter=True,
                             meta={"depth": self.depth})

    # -- robots.txt: noted, not obeyed; read as a crawl reads it (crawler.robots) ---------------

    def _robots(self, allowed: bool | None, note: str) -> None:
        obeyed = self.settings.getbool("CRAWLSITE_PREVIEW_ROBOTS_OBEY")
        self.result["robots"] = {"obeyed": obeyed, "allowed": allowed, "note": note}

    def got_robots(self, response):
        from scrapy.utils.misc import load_object

        parser = load_object(self.settings.get("ROBOTSTXT_PARSER")).from_crawler(self.crawler, response.body)
        agent = self.settings.get("ROBOTSTXT_USER_AGENT") or self.settings.get("USER_AGENT")
        allowed = bool(parser.allowed(self.url, agent))
        self._robots(allowed, "robots.txt allows this page." if allowed else "robots.txt disallows this page.")

    def robots_failed(self, failure):
        from scrapy.spidermiddlewares.httperror import HttpError

        from .netguard import BlockedAddress

        if failure.check(HttpError):
            status = failure.value.response.status
            if verdict(status) == ALLOW_ALL:
                self._robots(True, f"No robots.txt (HTTP {status}): every page is allowed.")
            else:
                self._robots(False, f"robots.txt answered HTTP {status}: a crawl fetches no page of this site.")
        elif failure.check(BlockedAddress):
            self._robots(False, "robots.txt was refused by the network policy: a crawl fetches no page of this site.")
        else:
            self._robots(False, "robots.txt could not be fetched: a crawl fetches no page of this site.")

    # -- the page ---------------------------------------------------------------------------------

    def page_failed(self, failure):
        from scrapy.spidermiddlewares.httperror import HttpError

        if failure.check(HttpError):  # fetched, but a crawl does not parse error pages
            response = failure.value.response
            self.result.update(status=response.status, url=response.url, item_page=False)
            self.result["notes"].append(f"HTTP {response.status}: a crawl stores nothing from this page "
                                        "and follows none of its links.")
            return
        self.result.update(_failure_outcome(failure, self.settings.getfloat("DOWNLOAD_TIMEOUT"),
                                            self.settings.getint("DOWNLOAD_MAXSIZE")))

    def got_page(self, response):
        result = self.result
        result.update(status=response.status, url=response.url[:MAX_URL_CHARS])
        if not parsed(response):
            result["item_page"] = False
            result["notes"].append("Not an HTML or XML page: a crawl extracts nothing here and follows no links.")
            return
        if self.rules.refusal(response.url) == OFF_DOMAIN:
            result["notes"].append("This URL is outside allowed_domains: a crawl would not fetch it.")
        result["item_page"] = self.rules.is_item_page(response.url)
        if result["item_page"]:
            items = list(islice(self.rules.extract_items(response), MAX_ITEMS + 1))
            if len(items) > MAX_ITEMS:
                result["notes"].append(f"Only the first {MAX_ITEMS} items are shown.")
            result["items"] = [{k: _bounded(v) for k, v in item.items()} for item in items[:MAX_ITEMS]]
        elif self.rules.fields:
            result["notes"].append("The URL does not match the item pattern: a crawl stores no items from it.")
        result["matches"] = self.rules.matches(response)
        urls = self.rules.links(response)
        if len(urls) > MAX_LINKS:
            result["notes"].append(f"Only the first {MAX_LINKS} of {len(urls)} links are shown.")
        result["links"] = self.sort_links(urls[:MAX_LINKS])

    def sort_links(self, urls: list[str]) -> dict[str, list]:
        """Each link followed, or ignored with the first reason a crawl would drop it for."""
        max_depth = self.settings.getint("DEPTH_LIMIT")
        follow, ignored = [], []
        for url in urls:
            reason = ""
            if not scheme_allowed(url):
                reason = f"{SCHEME}: only http and https are fetched"
            else:
                reason = self.rules.refusal(url)
            if not reason and max_depth and self.depth + 1 > max_depth:
                reason = f"{DEPTH}: links here are at depth {self.depth + 1}, past max_depth {max_depth}"
            if reason:
                ignored.append({"url": url[:MAX_URL_CHARS], "reason": reason})
            else:
                follow.append(url[:MAX_URL_CHARS])
        return {"follow": follow, "ignored": ignored}


def guard_links(result: dict[str, Any], policy: Policy) -> None:
    """Move the followed links whose host the network guard refuses to ``ignored``: their names
    are resolved as the worker's resolver does, and refused when every address is (at most
    :data:`MAX_HOSTS` hosts, :data:`HOST_CHECK_SECONDS` in all; the others stay followed)."""
    from .netguard import GuardedResolver

    links = result.get("links")
    if not links or not links["follow"]:
        return
    targets: dict[tuple[str, int], None] = {}
    for url in links["follow"]:
        parts = urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            continue
        if parts.hostname:
            targets.setdefault((parts.hostname, port), None)
    checked = list(targets)[:MAX_HOSTS]

    def check(target: tuple[str, int]) -> str:
        host, port = target
        found = GuardedResolver._getaddrinfo(host, port, True, True)
        reasons = [policy.check(address.split("%", 1)[0], port) for _v, address, _f, _s in found]
        if reasons and all(reasons):
            return f"{reasons[0]} (port {port} not opened by CRAWLSITE_ALLOWED_NETWORKS)"
        return ""

    pool = ThreadPoolExecutor(max_workers=8)
    futures = {target: pool.submit(check, target) for target in checked}
    wait(futures.values(), timeout=HOST_CHECK_SECONDS)
    pool.shutdown(wait=False, cancel_futures=True)
    refused = {t: f.result() for t, f in futures.items() if f.done() and not f.cancelled() and f.result()}
    if not refused:
        return
    follow = []
    for url in links["follow"]:
        parts = urlsplit(url)
        target = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        if target in refused:
            links["ignored"].append({"url": url, "reason": f"{NETWORK_GUARD}: {refused[target]}"})
        else:
            follow.append(url)
    links["follow"] = follow


def preview(definition: dict[str, Any], url: str, depth: int = 0) -> dict[str, Any]:
    """Fetch ``url`` with ``definition``'s settings and report what a crawl does there."""
    from scrapy.crawler import CrawlerProcess

    from .settings import fetch_settings

    timeout = min(float((definition.get("settings") or {}).get("DOWNLOAD_TIMEOUT", TIME_LIMIT)), TIME_LIMIT)
    settings = fetch_settings(definition, overrides={
        "CRAWLSITE_PREVIEW_ROBOTS_OBEY": bool((definition.get("settings") or {}).get("ROBOTSTXT_OBEY", True)),
        "ROBOTSTXT_OBEY": False,  # fetched and reported by the spider instead
        "RETRY_ENABLED": False,
        "DOWNLOAD_TIMEOUT": timeout,
        "DNS_TIMEOUT": timeout,
        "CLOSESPIDER_TIMEOUT": timeout * 2 + 5,
        "LOG_LEVEL": "WARNING",
        "EXTENSIONS": {"scrapy.extensions.telnet.TelnetConsole": None},
    })
    result: dict[str, Any] = {"status": None, "url": url, "item_page": False, "items": [], "matches": {},
                              "links": {"follow": [], "ignored": []}, "robots": None, "notes": []}
    process = CrawlerProcess(settings)
    process.crawl(PreviewSpider, definition=definition, url=url, depth=depth, result=result)
    process.start()
    if result.get("error"):
        return {"error": result["error"], "detail": result["detail"]}
    if result["status"] is None:
        return {"error": "unreachable", "detail": f"Could not fetch the page within {timeout:g} s."}
    guard_links(result, Policy.from_string(settings.get("CRAWLSITE_ALLOWED_NETWORKS")))
    return result


def main() -> int:
    try:
        request = json.loads(sys.stdin.read(4 * 1024 * 1024))
        definition, url = request["definition"], request["url"]
        depth = request.get("depth", 0)
        if not isinstance(definition, dict) or not isinstance(url, str) or not isinstance(depth, int):
            raise ValueError("definition must be an object, url a string, depth an integer")
    except (ValueError, KeyError, TypeError) as exc:
        print(f"bad input: {exc}", file=sys.stderr)
        return 2
    json.dump(preview(definition, url, depth), sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
