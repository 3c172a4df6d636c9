"""The crawl's shared request queue: a priority ZSET of JSON requests, popped with a lease.

Member: the request as JSON (``Request.to_dict``), with a crawl-wide sequence number injected as
its first key (``{"seq":42,...}``) by the enqueue script (see :mod:`crawler.dupefilter`), so that
two equal requests (``dont_filter``) stay distinct members. The sequence number is also the
lease id. Score: ``-priority * 2**32 + seq``: higher priority first, then first in, first out.

Pop is one Lua step (``scripts.POP``): ZPOPMIN of up to ``count`` requests, HSET
``leases:WORKER`` seq -> member for each, HINCRBY ``stats.popped``; it never pops past
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

from . import keys, scripts

if TYPE_CHECKING:
    import redis
    from scrapy import Spider

logger = logging.getLogger(__name__)

PRIORITY_LIMIT = 2 ** 20  # |priority| is clamped so that the score stays an exact double
LEASE_META = "_cs_lease"  # request.meta key holding the lease id of a popped request


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def request_to_json(request: Request, spider: Spider | None = None) -> str:
    """Serialize a request as JSON (never pickle). Bytes (body, headers) are made JSON-safe."""
    d = request.to_dict(spider=spider)
    body = d.pop("body", b"")
    if body:
        d["body_b64"] = base64.b64encode(body).decode("ascii")
    d["headers"] = {
        k.decode("latin-1"): [v.decode("latin-1") for v in vs] for k, vs in d.get("headers", {}).items()
    }
    meta = {}
    for key, value in (d.get("meta") or {}).items():
        if key.startswith("_cs_") or key in ("download_latency", "download_slot"):
            continue
        if _jsonable(value):
            meta[key] = value
        else:
            logger.debug("Dropping non-JSON meta key %r of %s", key, request)
    d["meta"] = meta
    d["priority"] = max(-PRIORITY_LIMIT, min(PRIORITY_LIMIT, int(d.get("priority", 0))))
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False)


def request_from_json(data: str, spider: Spider | None = None) -> tuple[Request, str | None]:
    """Rebuild a request from a queue member; return it and its sequence number (lease id)."""
    d = json.loads(data)
    seq = d.pop("seq", None)
    body = d.pop("body_b64", None)
    if body is not None:
        d["body"] = base64.b64decode(body)
    request = request_from_dict(d, spider=spider)
    return request, (str(seq) if seq is not None else None)


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
        result = scripts.POP(self.redis, [self.queue_key, self.leases_key, self.stats_key],
                             [int(max_pages), max(1, int(count))])
        result = [r.decode() if isinstance(r, bytes) else r for r in result]
        return result[0], result[1:]

    def release_call(self, lease_ids: list[str]) -> scripts.Call:
        """Forget finished leases (their outcome is in Redis already): a call for ``scripts.run``."""
        return scripts.RELEASE.call([self.leases_key, self.stats_key], list(lease_ids))

    def release(self, lease_ids: list[str]) -> int:
        if not lease_ids:
            return 0
        return int(scripts.run(self.redis, [self.release_call(lease_ids)])[0])

    def return_leases(self, worker: str | None = None) -> int:
        """Put every request leased by ``worker`` (default: this one) back in the queue."""
        return return_leases(self.redis, self.code, worker or self.worker)

    def leased(self) -> int:
        return int(self.redis.hlen(self.leases_key))


def return_leases(redis: redis.Redis, code: str, worker: str) -> int:
    """Put every request leased by ``worker`` back in the crawl's queue; return how many."""
    return int(scripts.RETURN_LEASES(redis, [keys.leases(code, worker), keys.queue(code), keys.stats(code)], []))
