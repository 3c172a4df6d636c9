"""Where crawls may go, enforced where connections are made (the policy is :mod:`crawler.netpolicy`).

* :class:`GuardedResolver` is the reactor's name resolver in every worker
  (``TWISTED_DNS_RESOLVER``). Scrapy's HTTP handler connects through Twisted's
  ``HostnameEndpoint``, which asks the reactor's resolver for the addresses of the host, IP
  literals included, and connects only to what it is given. The resolver resolves the name
  itself (``getaddrinfo`` in the reactor's thread pool, bounded by ``DNS_TIMEOUT``), keeps the
  addresses the policy allows for that port and hands over only those, so the address checked is
  the address used: no second lookup, no cache, no DNS-rebinding window. It applies to every
  connection a worker makes: start URLs, links, redirects, robots.txt, proxies.
* When nothing is left, the lookup ends empty (Twisted raises ``DNSLookupError``);
  :class:`GuardedHTTPDownloadHandler` turns that into :class:`BlockedAddress` with the reason,
  which is not retried, and :class:`NetworkGuardMiddleware` counts it and logs it.
* Only ``http`` and ``https`` have a download handler (``crawler.settings``), both this HTTP/1.1
  handler (so Scrapy's HTTP/2 handler, and the httpx/aiohttp ones that resolve names their own way,
  are never used); the scheduler drops requests of other schemes before they are queued and
  counts them.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections import OrderedDict
from typing import Any, Sequence
from urllib.parse import urlsplit

from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler
from scrapy.exceptions import CannotResolveHostError, IgnoreRequest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IResolutionReceiver
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from .netpolicy import ENV_VAR, Policy, scheme_allowed

logger = logging.getLogger(__name__)

BLOCKED_STAT = "crawlsite/blocked_address"
SCHEME_STAT = "crawlsite/blocked_scheme"
LOGGED_PER_KIND = 20  # warnings per worker and kind; after that refusals are only counted


class BlockedAddress(IgnoreRequest):
    """The request's host has no address that crawls may reach."""


class _Refusals:
    """Why the last lookup of (host, port) came back empty, for the download handler to tell."""

    def __init__(self, size: int = 4096):
        self.size = size
        self._lock = threading.Lock()
        self._reasons: OrderedDict[tuple[str, int], str] = OrderedDict()

    def clear(self, host: str, port: int) -> None:
        with self._lock:
            self._reasons.pop((host.lower(), port), None)

    def record(self, host: str, port: int, reason: str) -> None:
        with self._lock:
            self._reasons[(host.lower(), port)] = reason
            self._reasons.move_to_end((host.lower(), port))
            while len(self._reasons) > self.size:
                self._reasons.popitem(last=False)

    def get(self, host: str, port: int) -> str:
        with self._lock:
            return self._reasons.get((host.lower(), port), "")


refusals = _Refusals()


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str):
        self.name = name
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


@implementer(IHostnameResolver)
class GuardedResolver:
    """An ``IHostnameResolver`` that hands out only the addresses the policy allows."""

    def __init__(self, reactor: Any, policy: Policy, timeout: float = 60.0):
        self.reactor = reactor
        self.policy = policy
        self.timeout = timeout

    @classmethod
    def from_crawler(cls, crawler: Any, reactor: Any) -> GuardedResolver:
        # ``crawler`` is the CrawlerProcess here: only its settings are used
        policy = Policy.from_string(crawler.settings.get(ENV_VAR) or "")
        return cls(reactor, policy, crawler.settings.getfloat("DNS_TIMEOUT"))

    def install_on_reactor(self) -> None:
        self.reactor.installNameResolver(self)
        if self.policy.allowed:
            logger.info("Crawls may also reach %s (%s)", self.policy, ENV_VAR)

    def resolveHostName(self, resolutionReceiver: IResolutionReceiver, hostName: str, portNumber: int = 0,
                        addressTypes: Sequence[type] | None = None,
                        transportSemantics: str = "TCP") -> IHostResolution:
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        refusals.clear(hostName, portNumber)
        want4 = not addressTypes or IPv4Address in addressTypes
        want6 = not addressTypes or IPv6Address in addressTypes
        literal = _literal(hostName)
        if literal is not None:  # no lookup: the address is the host
            self._deliver([(literal.version, str(literal), 0, 0)], resolutionReceiver, hostName, portNumber,
                          want4, want6)
            return resolution
        d = self._lookup(hostName, portNumber, want4, want6)
        d.addCallbacks(
            lambda found: self._deliver(found, resolutionReceiver, hostName, portNumber, want4, want6),
            lambda failure: resolutionReceiver.resolutionComplete(),  # no address: DNSLookupError
        )
        return resolution

    def _lookup(self, host: str, port: int, want4: bool, want6: bool) -> Deferred:
        """The addresses of ``host`` as ``(version, address, flowinfo, scope id)`` tuples: one
        ``getaddrinfo`` in the reactor's thread pool, given up after ``DNS_TIMEOUT``."""
        d = deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._getaddrinfo, host, port,
                              want4, want6)
        if self.timeout > 0:
            d.addTimeout(self.timeout, self.reactor)
        return d

    @staticmethod
    def _getaddrinfo(host: str, port: int, want4: bool, want6: bool) -> list[tuple[int, str, int, int]]:
        family = socket.AF_UNSPEC if want4 and want6 else socket.AF_INET if want4 else socket.AF_INET6
        try:
            infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        except (OSError, UnicodeError, ValueError):  # no such name, or not a name at all
            return []
        found = []
        for fam, _type, _proto, _canon, sockaddr in infos:
            if fam == socket.AF_INET:
                found.append((4, sockaddr[0], 0, 0))
            elif fam == socket.AF_INET6:
                found.append((6, sockaddr[0], sockaddr[2], sockaddr[3]))
        return found

    def _deliver(self, found: list[tuple[int, str, int, int]], receiver: IResolutionReceiver, host: str,
                 port: int, want4: bool, want6: bool) -> None:
        try:
            self._filter(found, receiver, host, port, want4, want6)
        finally:  # always: the connection attempt must not wait for an answer that never comes
            receiver.resolutionComplete()

    def _filter(self, found: list[tuple[int, str, int, int]], receiver: IResolutionReceiver, host: str,
                port: int, want4: bool, want6: bool) -> None:
        reasons: list[str] = []
        seen = set()
        for version, address, flowinfo, scope in found:
            if (version, address) in seen or (version == 4 and not want4) or (version == 6 and not want6):
                continue
            seen.add((version, address))
            reason = self.policy.check(address.split("%", 1)[0], port)
            if reason:
                reasons.append(reason)
            elif version == 4:
                receiver.addressResolved(IPv4Address("TCP", address, port))
            else:
                receiver.addressResolved(IPv6Address("TCP", address, port, flowinfo, scope))
        if reasons and len(reasons) == len(seen):
            text = reasons[0] if _literal(host) is not None else f"{host} resolves to {'; '.join(reasons[:4])}"
            refusals.record(host, port, f"{text} (port {port} not opened by {ENV_VAR})")


class GuardedHTTPDownloadHandler(HTTP11DownloadHandler):
    """Scrapy's HTTP/1.1 handler, telling a lookup refused by :class:`GuardedResolver` apart from
    a name that does not resolve: the former is :class:`BlockedAddress` (never retried)."""

    async def download_request(self, request: Any) -> Any:
        try:
            return await super().download_request(request)
        except CannotResolveHostError:
            parts = urlsplit(request.meta.get("proxy") or request.url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            reason = refusals.get(parts.hostname or "", port)
            if reason:
                raise BlockedAddress(f"refused {request.url}: {reason}") from None
            raise


class LogLimit:
    """Logs the first ``limit`` warnings of a kind, then says once that the rest are only counted."""

    def __init__(self, limit: int = LOGGED_PER_KIND):
        self.limit = limit
        self.logged = 0

    def warn(self, message: str, *args: Any) -> None:
        self.logged += 1
        if self.logged <= self.limit:
            logger.warning(message, *args)
        if self.logged == self.limit:
            logger.warning("Further refused requests of this kind are counted, not logged")


class NetworkGuardMiddleware:
    """Downloader middleware: refuses non-http(s) requests that reach the downloader anyway (the
    scheduler drops them earlier), and counts and logs the requests the resolver refused."""

    def __init__(self, stats: Any = None):
        self.stats = stats
        self._schemes = LogLimit()
        self._addresses = LogLimit()

    @classmethod
    def from_crawler(cls, crawler: Any) -> NetworkGuardMiddleware:
        return cls(stats=crawler.stats)

    def process_request(self, request: Any) -> None:
        if not scheme_allowed(request.url):
            refuse_scheme(request.url, self.stats, self._schemes)
            raise IgnoreRequest(f"refused {request.url[:200]}: only http and https are fetched")
        return None

    def process_exception(self, request: Any, exception: Exception) -> None:
        if isinstance(exception, BlockedAddress):
            if self.stats is not None:
                self.stats.inc_value(BLOCKED_STAT)
            self._addresses.warn("Refused %s", str(exception).removeprefix("refused ")[:500])
        return None


def refuse_scheme(url: str, stats: Any, throttle: LogLimit) -> None:
    """Count (and log, up to a limit) a request of a scheme crawls never fetch."""
    if stats is not None:
        stats.inc_value(SCHEME_STAT)
    scheme = urlsplit(url).scheme or url.partition(":")[0]
    throttle.warn("Refused %s: the %r scheme is never fetched (only http and https)", url[:200], scheme[:20])
