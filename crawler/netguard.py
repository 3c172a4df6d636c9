"""Where crawls may go: a downloader middleware that refuses requests to internal addresses.

A crawl definition comes from a user, and a crawled page decides which links come next, so a
crawl must not be able to reach the machine's neighbours: the cloud metadata service
(169.254.169.254, fd00:ec2::254), link-local and unspecified addresses are always refused;
private, loopback and other reserved ranges are refused too when
``CRAWLSITE_BLOCK_PRIVATE_NETWORKS`` is on (environment variable of the same name on workers).

The check resolves the host and looks at every address it resolves to; a redirect produces a new
request, which passes through this middleware again. Residual risk: Scrapy resolves the name once
more when it connects, so a DNS server that answers differently the second time (DNS rebinding)
is not caught here; block egress to internal ranges at the network level where that matters.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from typing import Any
from urllib.parse import urlsplit

from scrapy.exceptions import IgnoreRequest

logger = logging.getLogger(__name__)

# Always refused: instance metadata services and addresses that are never a public web site.
ALWAYS_BLOCKED = [
    ipaddress.ip_network(net)
    for net in (
        "169.254.0.0/16",  # IPv4 link-local, includes 169.254.169.254 (AWS, GCP, Azure metadata)
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "0.0.0.0/8",
        "::/128",
    )
]
# Refused when CRAWLSITE_BLOCK_PRIVATE_NETWORKS is on.
PRIVATE = [
    ipaddress.ip_network(net)
    for net in (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "100.64.0.0/10",
        "::1/128", "fc00::/7", "::ffff:0:0/96",
    )
]


class BlockedAddress(IgnoreRequest):
    """The request's host resolves to an address crawls may not reach."""


def blocked_reason(address: str, block_private: bool) -> str:
    """Why ``address`` may not be crawled, or "" when it may."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for net in ALWAYS_BLOCKED:
        if ip in net:
            return f"{address} is a link-local or metadata address"
    if block_private:
        for net in PRIVATE:
            if ip in net:
                return f"{address} is a private or loopback address"
        if ip.is_reserved or ip.is_multicast:
            return f"{address} is a reserved address"
    return ""


def env_block_private() -> bool:
    return os.environ.get("CRAWLSITE_BLOCK_PRIVATE_NETWORKS", "").strip().lower() in ("1", "true", "yes", "on")


class NetworkGuardMiddleware:
    def __init__(self, block_private: bool = False, stats: Any = None):
        self.block_private = block_private
        self.stats = stats

    @classmethod
    def from_crawler(cls, crawler: Any) -> NetworkGuardMiddleware:
        block = crawler.settings.getbool("CRAWLSITE_BLOCK_PRIVATE_NETWORKS", False) or env_block_private()
        return cls(block_private=block, stats=crawler.stats)

    async def process_request(self, request: Any) -> None:
        parts = urlsplit(request.url)
        host = parts.hostname
        if not host or parts.scheme not in ("http", "https"):
            return None
        reason = await self.check_host(host, parts.port or (443 if parts.scheme == "https" else 80))
        if reason:
            if self.stats is not None:
                self.stats.inc_value("crawlsite/blocked_address")
            logger.warning("Refused %s: %s", request.url, reason)
            raise BlockedAddress(f"refused {request.url}: {reason}")
        return None

    async def check_host(self, host: str, port: int) -> str:
        try:
            return blocked_reason(host, self.block_private)
        except ValueError:
            pass  # a name, not an address literal: resolve it
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, RuntimeError):
            return ""  # unresolvable: the download itself fails and is counted as an error
        for info in infos:
            reason = blocked_reason(info[4][0], self.block_private)
            if reason:
                return f"{host} resolves to {reason}"
        return ""
