"""Politeness across the fleet: per-domain limits that hold for the crawl as a whole.

Scrapy's ``CONCURRENT_REQUESTS_PER_DOMAIN``, ``DOWNLOAD_DELAY`` (with
``RANDOMIZE_DOWNLOAD_DELAY``) and AutoThrottle are per-process settings: eight workers would hit a
site eight times harder than the settings say. Here they live in the crawl's shared queue
(:mod:`crawler.scripts`, ``POP``): requests are queued per *slot* (the request's host name, as
Scrapy's download slots) as well as in the crawl's queue, and a pop only takes requests of slots
that are eligible now (fewer than the limit in flight crawl-wide, the delay since the slot's last
request passed, on Redis's clock). A slot's in-flight count is held by the leases: releasing a
lease (response handled, error, a paused worker's unstarted requests, the reaper after a dead
worker's heartbeat expired) gives the slot back.

* No head-of-line blocking: a busy slot does not hold a worker; it takes requests of other slots,
  and when no slot is eligible the pop answers ``wait`` with the time until the earliest one
  may be, and the scheduler pops again then (nothing is popped and held just to wait).
* Thousands of domains: ``slots`` is a ZSET by ready time; a pop looks only at slots whose time
  has come; a slot at its limit is parked far in the future until one of its leases is released.
* Per worker, Scrapy's own slot limits are made loose (:func:`loosen_downloader`: concurrency =
  ``CONCURRENT_REQUESTS``, no delay, AutoThrottle not adjusting) so they never bind before the
  shared ones.
* AutoThrottle: workers report each response's latency (``THROTTLE``, batched with their other
  writes); the shared per-slot delay follows Scrapy's rule.
* ``CONCURRENT_REQUESTS_PER_IP``: slots stay host names (the IP is only known after the worker's
  resolver ran, after the pop); when set, it is the per-host limit. Hosts sharing an IP each get
  their own budget: an approximation, documented in docs/crawler.md.
* Site-wide budgets (``CRAWLSITE_SITE_LIMITS=1`` in the workers' environment): in-flight counts,
  delays and AutoThrottle delays are kept in keys shared by every crawl, so two crawls of a site
  share its budget (each crawl applies its own limit to the shared count).
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from . import keys, scripts

if TYPE_CHECKING:
    import redis

SITE_ENV = "CRAWLSITE_SITE_LIMITS"
_SLOT_RE = re.compile(r"^[a-z0-9._:\-]{0,255}$")
_URL_RE = re.compile(r'^\{"url":"([^"\\]*)"')


def slot_of(url: str) -> str:
    """The slot of a URL: its host name, lower case ("" if it has none or an odd one)."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return ""
    return host if _SLOT_RE.match(host) else ""


def slot_of_json(data: str) -> str:
    """The slot of a request serialized by :func:`crawler.queue.request_to_json`."""
    m = _URL_RE.match(data)
    if m is not None:
        return slot_of(m.group(1))
    import json

    try:
        return slot_of(str(json.loads(data).get("url", "")))
    except (ValueError, AttributeError):
        return ""


def site_wide(environ: dict[str, str] | None = None) -> bool:
    """True if the operator asked for site-wide budgets (``CRAWLSITE_SITE_LIMITS``)."""
    value = (os.environ if environ is None else environ).get(SITE_ENV, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{SITE_ENV} must be 1 or 0, not {value!r}")


@dataclass(frozen=True)
class Limits:
    """A crawl's politeness settings, shared by its workers (times in seconds)."""

    limit: int = 8  # requests in flight per slot (0 = no limit)
    delay: float = 0.0  # minimum interval between two requests of a slot
    randomize: bool = True  # 0.5x .. 1.5x of the delay
    autothrottle: bool = False
    start_delay: float = 5.0
    max_delay: float = 60.0
    target_concurrency: float = 1.0
    site: bool = False

    @classmethod
    def from_settings(cls, settings: Any, site: bool | None = None) -> Limits:
        per_ip = settings.getint("CONCURRENT_REQUESTS_PER_IP", 0)
        return cls(
            limit=per_ip or settings.getint("CONCURRENT_REQUESTS_PER_DOMAIN", 8),
            delay=max(0.0, settings.getfloat("DOWNLOAD_DELAY", 0.0)),
            randomize=settings.getbool("RANDOMIZE_DOWNLOAD_DELAY", True),
            autothrottle=settings.getbool("AUTOTHROTTLE_ENABLED", False),
            start_delay=settings.getfloat("AUTOTHROTTLE_START_DELAY", 5.0),
            max_delay=settings.getfloat("AUTOTHROTTLE_MAX_DELAY", 60.0),
            target_concurrency=settings.getfloat("AUTOTHROTTLE_TARGET_CONCURRENCY", 1.0) or 1.0,
            site=site_wide() if site is None else site,
        )

    def fields(self) -> dict[str, Any]:
        """The ``politeness`` HASH fields (ms for times) read by the scripts and the live page."""
        ms = lambda seconds: int(round(seconds * 1000))  # noqa: E731
        return {"limit": max(0, int(self.limit)), "delay": ms(self.delay), "jitter": 0.5 if self.randomize else 0,
                "autothrottle": int(self.autothrottle), "start": ms(max(self.delay, self.start_delay)),
                "max": ms(max(self.delay, self.max_delay)), "target": self.target_concurrency,
                "site": int(self.site)}


def write_limits(redis: redis.Redis, code: str, limits: Limits) -> None:
    """Record the crawl's limits (each worker writes the same on start)."""
    redis.hset(keys.politeness(code), mapping=limits.fields())


def pop_keys(code: str) -> list[str]:
    return [keys.slots(code), keys.politeness(code), keys.in_flight(code), keys.site_in_flight(),
            keys.throttle(code), keys.site_throttle(), keys.slot_pops(code)]


def pop_args(code: str) -> list[Any]:
    return [f"{random.random():.6f}", keys.slot_queue_prefix(code), keys.slot_next_prefix(code),
            keys.site_next_prefix()]


def release_keys(code: str) -> list[str]:
    return [keys.slots(code), keys.politeness(code), keys.in_flight(code), keys.site_in_flight()]


def throttle_call(code: str, samples: list[tuple[str, float, int]]) -> scripts.Call:
    """Report ``(slot, latency in seconds, status)`` samples to the shared AutoThrottle."""
    args: list[Any] = []
    for slot, latency, status in samples:
        args += [slot, int(round(latency * 1000)), int(status)]
    return scripts.THROTTLE.call([keys.politeness(code), keys.throttle(code), keys.site_throttle()], args)


class _LooseSlots(dict):
    """``Downloader.per_slot_settings`` whose every slot has the worker's whole concurrency and no
    delay (what the user set for a slot in ``DOWNLOAD_SLOTS`` is kept otherwise)."""

    def __init__(self, base: dict, concurrency: int):
        super().__init__(base)
        self.concurrency = concurrency

    def get(self, key: Any, default: Any = None) -> dict:  # type: ignore[override]
        own = dict(super().get(key) or {})
        own.update(concurrency=self.concurrency, delay=0.0, jitter=0.0)
        return own


def loosen_downloader(downloader: Any) -> None:
    """Make this worker's Scrapy download slots never bind before the shared limits: every slot
    may use all of ``CONCURRENT_REQUESTS``, with no delay of its own."""
    total = int(getattr(downloader, "total_concurrency", 0) or 0) or 1024
    downloader.per_slot_settings = _LooseSlots(getattr(downloader, "per_slot_settings", {}) or {}, total)
    downloader.ip_concurrency = 0
    downloader.domain_concurrency = total
    for slot in getattr(downloader, "slots", {}).values():
        slot.concurrency, slot.delay = total, 0.0


# Request meta: Scrapy's AutoThrottle leaves the local slot delay alone (the shared one rules);
# whether the request asked for that itself is kept aside (the shared AutoThrottle honours it).
NO_LOCAL_THROTTLE = "autothrottle_dont_adjust_delay"
USER_NO_THROTTLE = "_cs_no_throttle"


def mark_popped(request: Any) -> None:
    """A popped request: Scrapy's local AutoThrottle must not adjust its slot's delay."""
    request.meta[USER_NO_THROTTLE] = request.meta.get(NO_LOCAL_THROTTLE) is True
    request.meta[NO_LOCAL_THROTTLE] = True


def unmark(meta: dict) -> None:
    """Before a popped request (or its retry) is queued again: its meta as the spider set it."""
    if meta.get(USER_NO_THROTTLE) is False:
        meta.pop(NO_LOCAL_THROTTLE, None)


# -- what the dashboard shows (crawler.state.read_counters) -----------------------------------------

TOP = 10  # domains shown, by requests popped
READS = 4  # commands queue_reads adds to a pipeline


def queue_reads(pipe: Any, code: str) -> None:
    """Add the reads of the crawl's politeness to ``pipe`` (in-flight hashes only hold the slots
    with requests in flight: their size is bounded by the fleet's concurrency, not the domains)."""
    pipe.zrevrange(keys.slot_pops(code), 0, TOP - 1, withscores=True)
    pipe.hgetall(keys.politeness(code))
    pipe.hgetall(keys.in_flight(code))
    pipe.hgetall(keys.site_in_flight())


def _num(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def parse_reads(replies: list[Any], stats: dict[str, Any]) -> dict[str, Any]:
    """The politeness part of a crawl's counters: its limits, the time its workers waited, and the
    top domains (requests popped, in flight now; the conductor adds their current rate)."""
    top, cfg, crawl_busy, site_busy = (list(replies) + [None] * READS)[:READS]
    cfg = cfg or {}
    site = str(cfg.get("site", "0")) == "1"
    busy = (site_busy if site else crawl_busy) or {}
    limit = int(_num(cfg.get("limit")))
    domains = [{"domain": str(slot), "pages": int(pops), "in_flight": int(_num(busy.get(slot))), "limit": limit}
               for slot, pops in (top or [])]
    return {
        "configured": bool(cfg),
        "limit": limit,
        "delay": _num(cfg.get("delay")) / 1000.0,
        "randomize": _num(cfg.get("jitter")) > 0,
        "autothrottle": str(cfg.get("autothrottle", "0")) == "1",
        "site_wide": site,
        "wait_s": round(_num((stats or {}).get("polite_wait_ms")) / 1000.0, 1),
        "domains": domains,
    }
