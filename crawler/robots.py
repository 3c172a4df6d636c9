"""robots.txt that fails closed (RFC 9309, section 2.3.1).

Scrapy's ``RobotsTxtMiddleware`` reads every robots.txt it could not get (a 5xx answer, a
timeout, a refused connection) as "no rules": under load a crawl would then fetch the pages the
site forbids. :class:`FailClosedRobotsTxtMiddleware` keeps Scrapy's machinery (one robots.txt
download per host, every request of that host waiting for it, redirects followed by Scrapy's
RedirectMiddleware, the ``robotstxt/*`` stats), makes every waiting request get the answer (Scrapy's
hands "allow all" to all but the first request waiting for a host's robots.txt, see
:meth:`FailClosedRobotsTxtMiddleware.robot_parser`) and changes what an unusable answer means:

* 2xx: the file's rules;
* 4xx (404 included): no rules, every page is allowed;
* anything else (5xx after Scrapy's retries, a 3xx left over, a download error or timeout, more
  than :data:`MAX_REDIRECTS` redirects): every page of the host is disallowed for the rest of the
  run, counted as ``robotstxt/forbidden`` like any page robots.txt forbids;
* robots.txt refused by the network policy (:class:`crawler.netguard.BlockedAddress`): every page
  of the host is refused the same way, as a refused address (``crawlsite/blocked_address``),
  without another connection attempt.

:func:`verdict` is the one rule, used by the middleware and by the preview (:mod:`crawler.preview`).
"""

from __future__ import annotations

import logging
from typing import Any

from scrapy.downloadermiddlewares.robotstxt import RobotsTxtMiddleware
from scrapy.http.request import NO_CALLBACK
from scrapy.utils.httpobj import urlparse_cached
from twisted.internet.defer import Deferred

from .netguard import BlockedAddress

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5  # RFC 9309 2.3.1.2: follow at least five consecutive redirects

RULES, ALLOW_ALL, DISALLOW_ALL = "rules", "allow all", "disallow all"


def verdict(status: int) -> str:
    """What a robots.txt answer with HTTP ``status`` means: its rules, or all pages allowed or
    disallowed (an answer that never came is :data:`DISALLOW_ALL`)."""
    if 200 <= status < 300:
        return RULES
    if 400 <= status < 500:
        return ALLOW_ALL
    return DISALLOW_ALL


class DisallowAll:
    """The parser of a host whose robots.txt could not be had: nothing is allowed."""

    def __init__(self, reason: str):
        self.reason = reason

    def allowed(self, url: Any, user_agent: Any) -> bool:
        return False


class Refused(DisallowAll):
    """The parser of a host whose robots.txt the network policy refused."""


class FailClosedRobotsTxtMiddleware(RobotsTxtMiddleware):
    """Scrapy's robots.txt middleware, failing closed (see the module's docstring)."""

    async def process_request(self, request: Any) -> None:
        if request.meta.get("dont_obey_robotstxt"):
            if request.callback is NO_CALLBACK and urlparse_cached(request).path == "/robots.txt":
                # our own robots.txt request: at most MAX_REDIRECTS redirects (RedirectMiddleware)
                request.meta.setdefault("redirect_ttl", MAX_REDIRECTS)
            return
        await super().process_request(request)

    async def robot_parser(self, request: Any) -> Any:
        """The parser of the request's host, once its robots.txt is settled. Scrapy hands the
        answer to the requests waiting for it through one Deferred, awaited by each as a Future:
        the first waiter takes the result and the Deferred passes ``None`` ("allow all") to the
        others. The settled parser is therefore read back from ``_parsers``, never from the wait."""
        await super().robot_parser(request)
        parser = self._parsers.get(urlparse_cached(request).netloc)
        if parser is None or isinstance(parser, Deferred):  # never settled to a parser: refuse
            return DisallowAll("its robots.txt was not settled")
        return parser

    def process_request_2(self, rp: Any, request: Any) -> None:
        if isinstance(rp, Refused):
            raise BlockedAddress(f"refused {request.url}: {rp.reason}")
        super().process_request_2(rp, request)

    async def _parse_robots(self, response: Any, netloc: str, request: Any) -> None:
        meaning = verdict(response.status)
        if meaning == RULES:
            await super()._parse_robots(response, netloc, request)
            return
        if meaning == ALLOW_ALL:
            await super()._parse_robots(response.replace(body=b""), netloc, request)
            return
        self._stats.inc_value("robotstxt/response_count")
        self._stats.inc_value(f"robotstxt/response_status_count/{response.status}")
        self._settle(netloc, DisallowAll(f"its robots.txt answered HTTP {response.status}"))

    def _robots_error(self, exc: Exception, netloc: str) -> None:
        if isinstance(exc, BlockedAddress):
            reason = str(exc).partition(": ")[2] or "refused by the network policy"
            self._settle(netloc, Refused(reason))
            return
        self._stats.inc_value(f"robotstxt/exception_count/{type(exc)}")
        self._settle(netloc, DisallowAll(f"its robots.txt could not be fetched ({type(exc).__name__}: "
                                         f"{str(exc)[:200]})"))

    def _settle(self, netloc: str, parser: DisallowAll) -> None:
        """Answer every request waiting for ``netloc``'s robots.txt, and the ones to come."""
        if not isinstance(parser, Refused):  # the network guard already logged the refusal
            logger.warning("No page of %s is fetched in this run: %s (robots.txt fails closed)",
                           netloc[:200], parser.reason)
        waiting = self._parsers[netloc]
        self._parsers[netloc] = parser  # type: ignore[assignment]
        waiting.callback(parser)  # type: ignore[union-attr]
