"""The crawl's shared request queue: a priority ZSET of JSON requests, popped with a lease.

Member: the request as JSON (its fields that differ from a default ``Request``, and its fingerprint), with a crawl-wide sequence number injected as
its first key (``{"seq":42,...}``) by the enqueue script (see :mod:`crawler.dupefilter`), so that
two equal requests (``dont_filter``) stay distinct members. The sequence number is also the
lease id. Score: ``-priority * 2**32 + seq``: higher priority first, then first in, first out.

Each request is also queued in its slot's queue (its host, see :mod:`crawler.politeness`), and
the member carries its slot (``{"seq":42,"slot":"example.com",...}``).

Pop is one Lua step (``scripts.POP``): up to ``count`` requests of the slots eligible now (the
per-domain limits, crawl-wide), HSET ``leases:WORKER`` seq -> member for each, HINCRBY
``stats.popped``; it never pops past
``max_pages - popped`` and refuses (and sets ``stats['limit:max_pages']``) once ``popped`` reached
``max_pages``, so a page limit holds exactly across workers, batch or not. Returning leases (a
worker retiring, or the reaper after a heartbeat expired) moves every member of ``leases:WORKER``
back with its original score.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import TYPE_CHECKING, Any

from scrapy.http import Request
from scrapy.utils.request import request_from_dict

from . import keys, politeness, scripts

if TYPE_CHECKING:
    import redis
    from scrapy import Spider

logger = logging.getLogger(__name__)

PRIORITY_LIMIT = 2 ** 20  # |priority| is clamped so that the score stays an exact double
LEASE_META = "_cs_lease"  # request.meta key holding the lease id of a popped request


def _jsonable(value: Any) -> bool:
    if value is None or type(value) in (int, float, str, bool):
        return True
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _method_name(spider: Spider | None, func: Any) -> str | None:
    """The name of the spider method ``func`` is bound to, found without scanning the spider;
    None if that is not the case (Scrapy's ``Request.to_dict`` then looks for it, or refuses)."""
    name = getattr(func, "__name__", None)
    if spider is None or not name or getattr(func, "__self__", None) is not spider:
        return None
    if getattr(getattr(spider, name, None), "__func__", None) is not getattr(func, "__func__", None):
        return None
    return name


def _request_dict(request: Request, spider: Spider | None) -> dict[str, Any]:
    """The request's fields that differ from a default ``Request``, JSON-safe."""
    callback = errback = None
    if request.callback is not None:
        callback = _method_name(spider, request.callback)
    if request.errback is not None:
        errback = _method_name(spider, request.errback)
    if (type(request) is not Request or (request.callback is not None and callback is None)
            or (request.errback is not None and errback is None)):
        d = request.to_dict(spider=spider)  # a Request subclass, or a callback to look for: Scrapy's way
    else:
        d = {"url": request.url, "callback": callback, "errback": errback, "method": request.method,
             "headers": request.headers, "body": request.body, "cookies": request.cookies,
             "meta": request.meta, "encoding": request.encoding, "priority": request.priority,
             "dont_filter": request.dont_filter, "flags": request.flags, "cb_kwargs": request.cb_kwargs}
    body = d.pop("body", b"")
    if body:
        d["body_b64"] = base64.b64encode(body).decode("ascii")
    if d.get("headers"):
        d["headers"] = {k.decode("latin-1"): [v.decode("latin-1") for v in vs] for k, vs in d["headers"].items()}
    meta = {}
    source = dict(d.get("meta") or {})
    politeness.unmark(source)
    for key, value in source.items():
        if key.startswith("_cs_") or key in ("download_latency", "download_slot"):
            continue
        if _jsonable(value):
            meta[key] = value
        else:
            logger.debug("Dropping non-JSON meta key %r of %s", key, request)
    d["meta"] = meta
    d["priority"] = max(-PRIORITY_LIMIT, min(PRIORITY_LIMIT, int(d.get("priority", 0))))
    for key, default in _DEFAULTS.items():  # what request_from_dict would set anyway
        if key in d and d[key] == default:
            del d[key]
    return d


_DEFAULTS: dict[str, Any] = {"callback": None, "errback": None, "method": "GET", "headers": {}, "cookies": {},
                             "meta": {}, "encoding": "utf-8", "priority": 0, "dont_filter": False, "flags": [],
                             "cb_kwargs": {}}


def request_to_json(request: Request, spider: Spider | None = None, fingerprint: bytes | None = None) -> str:
    """Serialize a request as JSON (never pickle): its fields that differ from a default
    ``Request``, bytes (body, headers) made JSON-safe, and its fingerprint (hex) when given, which
    the worker that pops it uses instead of computing it again."""
    d = _request_dict(request, spider)
    if fingerprint is not None:
        d["fp"] = fingerprint.hex()
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False)


def request_from_json(data: str, spider: Spider | None = None) -> tuple[Request, str | None, bytes | None]:
    """Rebuild a request from a queue member; return it, its sequence number (lease id) and the
    fingerprint it was enqueued with (None if it carries none)."""
    d = json.loads(data)
    seq = d.pop("seq", None)
    d.pop("slot", None)
    fp = d.pop("fp", None)
    body = d.pop("body_b64", None)
    if body is not None:
        d["body"] = base64.b64decode(body)
    request = request_from_dict(d, spider=spider)
    return request, (str(seq) if seq is not None else None), (bytes.fromhex(fp) if fp else None)


class RequestQueue:
    """The shared queue of one crawl, seen from one worker."""

    def __init__(self, redis: redis.Redis, code: str, worker: str = "w0"):
        self.redis = redis
        self.code = keys.validate_code(code)
        self.worker = keys.validate_worker(worker)
        self.queue_key = keys.queue(code)
        self.leases_key = keys.leases(code, worker)
        self.stats_key = keys.stats(code)

    def __len__(self) -> int:
        return int(self.redis.zcard(self.queue_key))

    def pop(self, max_pages: int = 0) -> tuple[str, str | None]:
        """Lease the next request: ``("ok", member)``, ``("empty", None)`` or ``("limit", None)``."""
        status, members = self.pop_many(max_pages, 1)
        return status, (members[0] if members else None)

    def pop_many(self, max_pages: int = 0, count: int = 1) -> tuple[str, list[str]]:
        """Lease up to ``count`` requests: ``("ok", members)``, ``("empty", [])`` or ``("limit", [])``."""
        return self.popped(scripts.run(self.redis, [self.pop_call(max_pages, count)])[0])

    def pop_call(self, max_pages: int = 0, count: int = 1) -> scripts.Call:
        """The pop of :meth:`pop_many` as a call, to run with others; :meth:`popped` reads its result."""
        return scripts.POP.call([self.queue_key, self.leases_key, self.stats_key, *politeness.pop_keys(self.code)],
                                [int(max_pages), max(1, int(count)), *politeness.pop_args(self.code)])

    @staticmethod
    def popped(result: list[Any]) -> tuple[str, list[str]]:
        """``(status, members)``; for ``wait`` (no slot eligible now, politeness) the one value is
        the milliseconds until the earliest slot may be."""
        result = [r.decode() if isinstance(r, bytes) else r for r in result]
        return result[0], result[1:]

    def release_call(self, lease_ids: list[str]) -> scripts.Call:
        """Forget finished leases (their outcome is in Redis already) and give their slots back: a
        call for ``scripts.run``."""
        return scripts.RELEASE.call([self.leases_key, self.stats_key, *politeness.release_keys(self.code)],
                                    list(lease_ids))

    def release(self, lease_ids: list[str]) -> int:
        if not lease_ids:
            return 0
        return int(scripts.run(self.redis, [self.release_call(lease_ids)])[0])

    def return_call(self, lease_ids: list[str]) -> scripts.Call:
        """Put the requests of these leases of this worker back in the queue: a call for
        ``scripts.run`` or a channel (running it twice puts them back once)."""
        return scripts.RETURN_LEASES.call(_return_keys(self.code, self.worker),
                                          [keys.slot_queue_prefix(self.code), *lease_ids])

    def return_leases(self, worker: str | None = None) -> int:
        """Put every request leased by ``worker`` (default: this one) back in the queue."""
        return return_leases(self.redis, self.code, worker or self.worker)

    def leased(self) -> int:
        return int(self.redis.hlen(self.leases_key))


def return_leases(redis: redis.Redis, code: str, worker: str, ids: list[str] | None = None) -> int:
    """Put the requests leased by ``worker`` (all, or those of the lease ids given) back in the
    crawl's queue; return how many."""
    if ids is not None and not ids:
        return 0
    return int(scripts.RETURN_LEASES(redis, _return_keys(code, worker), [keys.slot_queue_prefix(code), *(ids or [])]))


def _return_keys(code: str, worker: str) -> list[str]:
    return [keys.leases(code, worker), keys.queue(code), keys.stats(code), *politeness.release_keys(code)]
