"""Scrapy settings of one worker of one crawl, built from the crawl's definition."""

from __future__ import annotations

import math
import os
from typing import Any

from scrapy.settings import Settings, default_settings

from .definition import ALLOWED_SETTINGS
from .netpolicy import ENV_VAR as ALLOWED_NETWORKS, parse_allowed
from .registry import ENV as SPIDERS_ENV
from .registry import check_worker_spider, parse_spiders

CONFIGURABLE_SPIDER = "crawler.spiders.configurable.ConfigurableSpider"
DOWNLOAD_MAXSIZE = ALLOWED_SETTINGS["DOWNLOAD_MAXSIZE"]["default"]  # 32 MiB, never 0 (no limit)
MAX_ITEM_BYTES = 1024 * 1024  # an item's JSON; the dashboard's CRAWLSITE_MAX_ITEM_BYTES, frozen at launch

# Timing settings a deployment (or the test suite) may set from the environment, e.g.
# CRAWLSITE_HEARTBEAT_TTL=1.5 so a killed worker's leases come back quickly in tests.
ENV_FLOAT_SETTINGS = ("CRAWLSITE_HEARTBEAT_TTL", "CRAWLSITE_STOP_TIMEOUT", "CRAWLSITE_REDIS_GIVE_UP")

COMPONENTS: dict[str, Any] = {
    "SCHEDULER": "crawler.scheduler.RedisScheduler",
    "ITEM_PIPELINES": {"crawler.pipelines.RedisItemPipeline": 900},
    # outermost middlewares: they see the final outcome of each leased request
    "DOWNLOADER_MIDDLEWARES": {
        "crawler.middlewares.LeaseDownloaderMiddleware": 1,
        "crawler.netguard.NetworkGuardMiddleware": 2,
    },
    "SPIDER_MIDDLEWARES": {"crawler.middlewares.LeaseSpiderMiddleware": 1},
    "EXTENSIONS": {
        "crawler.extensions.WorkerStats": 100,
        "crawler.extensions.Control": 110,
        "crawler.extensions.RedisLog": 120,
        "scrapy.extensions.telnet.TelnetConsole": None,
        "scrapy.extensions.remote_control.RemoteControl": None,
    },
}


HTTP_HANDLER = "crawler.netguard.GuardedHTTPDownloadHandler"

# robots.txt fails closed (crawler.robots): Scrapy's middleware is replaced in the base list, at the
# same place, fixed at the highest priority so that deployed spiders get it too.
SCRAPY_ROBOTS = "scrapy.downloadermiddlewares.robotstxt.RobotsTxtMiddleware"
ROBOTS_MIDDLEWARE = "crawler.robots.FailClosedRobotsTxtMiddleware"
MIDDLEWARES_BASE = {(ROBOTS_MIDDLEWARE if name == SCRAPY_ROBOTS else name): order
                    for name, order in default_settings.DOWNLOADER_MIDDLEWARES_BASE.items()}

# The network policy (crawler.netpolicy, crawler.netguard), set at the highest priority so that
# neither a definition nor a deployed project's settings can loosen it: only http(s) has a
# download handler (Scrapy's file, data, ftp and s3 handlers are off), every connection goes
# through the guarding resolver, and Scrapy's DNS cache is off (the resolver never caches).
NETWORK: dict[str, Any] = {
    "DOWNLOAD_HANDLERS_BASE": {"http": HTTP_HANDLER, "https": HTTP_HANDLER},
    "DOWNLOAD_HANDLERS": {"http": HTTP_HANDLER, "https": HTTP_HANDLER, "data": None, "file": None, "ftp": None,
                          "s3": None},
    "TWISTED_REACTOR_ENABLED": True,
    "TWISTED_DNS_RESOLVER": "crawler.netguard.GuardedResolver",
    "DNSCACHE_ENABLED": False,
}


def allowed_networks(environ: dict[str, str] | None = None) -> str:
    """The worker's ``CRAWLSITE_ALLOWED_NETWORKS``, checked (:class:`crawler.netpolicy.PolicyError`
    naming the bad entry)."""
    value = (os.environ if environ is None else environ).get(ALLOWED_NETWORKS, "")
    parse_allowed(value)
    return value.strip()


def crawl_settings(definition: dict[str, Any], code: str, worker: str, redis_url: str | None = None,
                   overrides: dict[str, Any] | None = None, project: Settings | None = None) -> Settings:
    """Settings for ``python -m crawler run``: Scrapy defaults, our components, the definition.

    ``project`` is a deployed project's own settings (:func:`crawler.packages.load_settings`): they
    replace our defaults (bot name, robots.txt, log level...), and our components, the crawl's
    settings and the network policy are layered on top at the command line's priority. Component
    dicts are merged: the project's middlewares, extensions and pipelines stay, Crawlsite's item
    pipeline runs after the project's own.
    """
    limits = definition.get("limits") or {}
    return fetch_settings(definition, {
        "CRAWLSITE_CRAWL": code,
        "CRAWLSITE_WORKER": worker,
        "CRAWLSITE_REDIS_URL": redis_url,
        "CRAWLSITE_MAX_PAGES": int(limits.get("max_pages", 0)),
        "CRAWLSITE_MAX_ITEMS": int(limits.get("max_items", 0)),
        "CRAWLSITE_MAX_ITEM_BYTES": max_item_bytes(definition),
    }, COMPONENTS, overrides, project)


def fetch_settings(definition: dict[str, Any], extra: dict[str, Any] | None = None,
                   components: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
                   project: Settings | None = None) -> Settings:
    """How a worker fetches for a definition: Scrapy defaults (or a deployed ``project``'s own
    settings), the definition's settings, the network policy and the size limit. ``extra`` and
    ``components`` add what a crawl needs on top (Redis scheduler, pipeline...), above a project's
    own settings; the preview (:mod:`crawler.preview`) uses it bare."""
    settings = project.copy() if project is not None else Settings()
    base = "command" if project is not None else "project"  # below a project's own settings
    ours = "cmdline" if project is not None else "project"  # above them
    settings.setdict({
        "BOT_NAME": "crawlsite",
        "LOG_LEVEL": "INFO",
        "ROBOTSTXT_OBEY": True,
        "TELNETCONSOLE_ENABLED": False,
        "DEPTH_LIMIT": int((definition.get("limits") or {}).get("max_depth", 0)),
        "DOWNLOAD_MAXSIZE": DOWNLOAD_MAXSIZE,
    }, priority=base)
    settings.setdict(extra or {}, priority=ours)
    for name, value in (components or {}).items():
        if project is not None and isinstance(value, dict):
            value = merged_components(name, settings.getdict(name), value)
        settings.set(name, value, priority="cmdline" if name == "SCHEDULER" else ours)
    for name, value in (definition.get("settings") or {}).items():
        if name in ALLOWED_SETTINGS and not (name == "USER_AGENT" and not value):
            settings.set(name, value, priority=ours)
    for name in ENV_FLOAT_SETTINGS:
        value = env_seconds(name)
        if value is not None:
            settings.set(name, value, priority=ours)
    for name, value in NETWORK.items():
        settings.set(name, value, priority="cmdline")
    settings.set("DOWNLOADER_MIDDLEWARES_BASE", MIDDLEWARES_BASE, priority="cmdline")
    settings.set(ALLOWED_NETWORKS, allowed_networks(), priority="cmdline")
    for name, value in (overrides or {}).items():
        if name in NETWORK:
            raise ValueError(f"{name} is fixed by the network policy")
        if name == ALLOWED_NETWORKS:
            parse_allowed(value)
        settings.set(name, value, priority="cmdline")
    # Warn at half the limit (Scrapy's own default of 32 MiB would equal ours, or exceed a
    # smaller one). A definition validated today never holds 0; an old one (or a project's own
    # setting) is clamped into the allowed range.
    maxsize = settings.getint("DOWNLOAD_MAXSIZE") or DOWNLOAD_MAXSIZE
    maxsize = min(maxsize, ALLOWED_SETTINGS["DOWNLOAD_MAXSIZE"]["max"])
    settings.set("DOWNLOAD_MAXSIZE", maxsize, priority="cmdline")
    settings.set("DOWNLOAD_WARNSIZE", maxsize // 2, priority="cmdline")
    return settings


def merged_components(name: str, theirs: dict, ours: dict) -> dict:
    """A deployed project's component dict with ours added (ours win on the same key). Our item
    pipeline gets an order after every pipeline of the project's."""
    merged = dict(theirs)
    for key, order in ours.items():
        if name == "ITEM_PIPELINES" and isinstance(order, int):
            orders = [v for v in theirs.values() if isinstance(v, int) and not isinstance(v, bool)]
            order = max([order] + [v + 1 for v in orders])
        merged[key] = order
    return merged


def env_seconds(name: str, default: float | None = None) -> float | None:
    """A timing setting read from the environment: a positive, finite number of seconds, or
    ``default`` when the variable is unset or empty. A bad value raises ValueError naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be more than 0 seconds, not {raw!r}")
    return value


def max_item_bytes(definition: dict[str, Any]) -> int:
    """The item size limit the dashboard froze in the definition (1 MiB if it froze none)."""
    value = (definition.get("operator") or {}).get("max_item_bytes")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else MAX_ITEM_BYTES


def spider_path(definition: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    """The dotted path of the spider class this worker imports.

    The built-in spider, or the path the dashboard froze for the definition's ``spider`` name
    (``operator.spider_class``), checked against this machine's ``CRAWLSITE_SPIDERS`` if set.
    Raises ValueError before importing anything it does not accept.
    """
    name = definition.get("spider") or ""
    if not name:
        return CONFIGURABLE_SPIDER
    path = (definition.get("operator") or {}).get("spider_class")
    environ = os.environ if environ is None else environ
    local = parse_spiders(environ[SPIDERS_ENV]) if environ.get(SPIDERS_ENV, "").strip() else None
    return check_worker_spider(name, path, local)
