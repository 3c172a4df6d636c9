"""Where crawls may connect: the network policy, as plain data and functions (no Scrapy, no Twisted).

A crawl definition comes from a user and a crawled page decides which links come next, so by
default a worker connects only to public addresses over ``http`` and ``https``. Refused:

* IPv4: "this network" 0/8, private 10/8, 172.16/12 and 192.168/16, CGNAT 100.64/10 (which holds
  the Alibaba metadata address), loopback 127/8, link-local 169.254/16 (the AWS/GCP/Azure metadata
  address), IETF protocol assignments 192.0.0/24, the documentation ranges, the deprecated 6to4
  relay 192.88.99/24, benchmarking 198.18/15, multicast 224/4 and reserved 240/4 (broadcast too).
* IPv6: everything outside global unicast 2000::/3 (unspecified, loopback, discard 100::/64,
  unique local fc00::/7, link-local fe80::/10, site-local, multicast ff00::/8, ...), plus the
  special ranges inside it: documentation, benchmarking, ORCHID, SRv6 and the local-use NAT64
  prefix 64:ff9b:1::/48.
* IPv6 forms that carry an IPv4 address are judged by that address: IPv4-mapped ``::ffff:a.b.c.d``
  (the kernel connects to a.b.c.d), NAT64 ``64:ff9b::a.b.c.d``, 6to4 ``2002:AABB:CCDD::``, and
  Teredo (server and client). IPv4-compatible ``::a.b.c.d`` is deprecated and always refused.

``CRAWLSITE_ALLOWED_NETWORKS`` (workers' environment) opens exceptions on purpose: a comma-separated
list of ``ADDRESS[/PREFIX][:PORT]`` entries, IPv6 in brackets (``127.0.0.1:8001``, ``10.0.0.0/8``,
``[::1]:8001``, ``[fd00::]/8:443``). An entry without a port opens every port of its addresses.

The policy is applied by :mod:`crawler.netguard` in the resolver that makes each connection.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Iterable

ENV_VAR = "CRAWLSITE_ALLOWED_NETWORKS"
SCHEMES = ("http", "https")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _nets(*pairs: tuple[str, str]) -> list[tuple[IPNetwork, str]]:
    return [(ipaddress.ip_network(net), label) for net, label in pairs]


REFUSED_V4 = _nets(
    ("0.0.0.0/8", "an unspecified ('this network') address"),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a shared (CGNAT) address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local (cloud metadata) address"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "an IETF protocol assignment"),
    ("192.0.2.0/24", "a documentation address"),
    ("192.88.99.0/24", "a 6to4 relay address"),
    ("192.168.0.0/16", "a private address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),
)
GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
REFUSED_V6 = _nets(
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("::/96", "an IPv4-compatible address (deprecated)"),
    ("100::/64", "a discard-only address"),
    ("fc00::/7", "a unique local (private) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
    # special ranges inside 2000::/3
    ("2001:2::/48", "a benchmarking address"),
    ("2001:10::/28", "an ORCHID address"),
    ("2001:db8::/32", "a documentation address"),
    ("3fff::/20", "a documentation address"),
    ("5f00::/16", "an SRv6 address"),
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
MAPPED = ipaddress.ip_network("::ffff:0:0/96")


class PolicyError(ValueError):
    """A bad ``CRAWLSITE_ALLOWED_NETWORKS`` entry; the message names it."""


@dataclass(frozen=True)
class Allowed:
    """One ``CRAWLSITE_ALLOWED_NETWORKS`` entry: a network and an optional port."""

    network: IPNetwork
    port: int | None = None

    def matches(self, ip: IPAddress, port: int) -> bool:
        return ip.version == self.network.version and ip in self.network and self.port in (None, port)

    def __str__(self) -> str:
        net = self.network
        text = str(net.network_address) if net.version == 4 else f"[{net.network_address}]"
        if net.prefixlen != net.max_prefixlen:
            text += f"/{net.prefixlen}"
        return text if self.port is None else f"{text}:{self.port}"


_ENTRY = re.compile(
    r"""^(?:
        \[(?P<v6>[0-9a-fA-F:.]+)(?:/(?P<v6pre_in>\d{1,3}))?\](?:/(?P<v6pre>\d{1,3}))?
      | (?P<v4>[0-9.]+)(?:/(?P<v4pre>\d{1,2}))?
    )(?::(?P<port>\d{1,5}))?$""",
    re.VERBOSE,
)


def parse_entry(entry: str) -> Allowed:
    """One ``ADDRESS[/PREFIX][:PORT]`` entry; :class:`PolicyError` naming it when it is not one."""
    text = entry.strip()
    m = _ENTRY.match(text)
    if m is None:
        hint = " (IPv6 addresses go in brackets, e.g. [::1]:8001)" if text.count(":") > 1 else ""
        raise PolicyError(f"{ENV_VAR}: entry {entry!r} is not ADDRESS[/PREFIX][:PORT]{hint}")
    if m["v6pre_in"] and m["v6pre"]:
        raise PolicyError(f"{ENV_VAR}: entry {entry!r} has two prefix lengths")
    address = m["v6"] or m["v4"]
    prefix = m["v6pre_in"] or m["v6pre"] or m["v4pre"]
    try:
        network = ipaddress.ip_network(f"{address}/{prefix}" if prefix else address, strict=True)
    except ValueError as exc:
        raise PolicyError(f"{ENV_VAR}: entry {entry!r} is not a valid address or network ({exc})") from None
    if m["v6"] and network.version != 6:
        raise PolicyError(f"{ENV_VAR}: entry {entry!r}: only IPv6 addresses go in brackets")
    port = None
    if m["port"] is not None:
        port = int(m["port"])
        if not 1 <= port <= 65535:
            raise PolicyError(f"{ENV_VAR}: entry {entry!r}: the port must be between 1 and 65535")
    return Allowed(network, port)


def parse_allowed(value: str | None) -> tuple[Allowed, ...]:
    """The entries of a ``CRAWLSITE_ALLOWED_NETWORKS`` value (empty: no exception)."""
    return tuple(parse_entry(part) for part in (value or "").split(",") if part.strip())


def _embedded_v4(ip: ipaddress.IPv6Address) -> list[tuple[ipaddress.IPv4Address, str]]:
    """The IPv4 addresses an IPv6 address carries, with the name of the form."""
    if ip in MAPPED:
        return [(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "IPv4-mapped")]
    if ip in NAT64:
        return [(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64")]
    if ip.sixtofour is not None:
        return [(ip.sixtofour, "6to4")]
    if ip.teredo is not None:
        server, client = ip.teredo
        return [(client, "Teredo client"), (server, "Teredo server")]
    return []


def _own_refusal(ip: IPAddress) -> str:
    if ip.version == 4:
        for net, label in REFUSED_V4:
            if ip in net:
                return label
        return ""
    for net, label in REFUSED_V6:
        if ip in net:
            return label
    if ip not in GLOBAL_UNICAST_V6 and ip not in MAPPED and ip not in NAT64:
        return "not a global unicast address"
    return ""


def refusal(ip: IPAddress) -> str:
    """Why the default policy refuses ``ip`` ("" when it is a public address)."""
    if ip.version == 6:
        ip = ipaddress.IPv6Address(int(ip))  # without a scope id
        for inner, form in _embedded_v4(ip):
            reason = _own_refusal(inner)
            if reason:
                return f"{ip} is {form} for {inner}, {reason}"
    reason = _own_refusal(ip)
    return f"{ip} is {reason}" if reason else ""


class Policy:
    """The default refusals, with the exceptions an operator opened."""

    def __init__(self, allowed: Iterable[Allowed] = ()):
        self.allowed = tuple(allowed)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Policy:
        return cls(parse_allowed((os.environ if environ is None else environ).get(ENV_VAR)))

    @classmethod
    def from_string(cls, value: str | None) -> Policy:
        return cls(parse_allowed(value))

    def check(self, address: str | IPAddress, port: int) -> str:
        """Why a connection to ``address`` port ``port`` is refused ("" when it may go ahead).

        ``address`` must be an IP address (a name is resolved first, by the caller); anything
        else is refused.
        """
        try:
            ip = address if not isinstance(address, str) else ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return f"{address!r} is not an IP address"
        plain = ipaddress.IPv6Address(int(ip)) if ip.version == 6 else ip
        candidates = [plain]
        if plain.version == 6 and plain in MAPPED:
            candidates.append(ipaddress.IPv4Address(int(plain) & 0xFFFFFFFF))  # the same socket
        if any(entry.matches(c, port) for entry in self.allowed for c in candidates):
            return ""
        return refusal(plain)

    def __str__(self) -> str:
        return ",".join(str(entry) for entry in self.allowed)


def scheme_allowed(url: str) -> bool:
    """True for http(s) URLs, the only ones a crawl fetches."""
    scheme, sep, _ = url.partition(":")
    return bool(sep) and scheme.lower() in SCHEMES
