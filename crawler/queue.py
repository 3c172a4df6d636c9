"""The crawl's shared request queue: a priority ZSET of JSON requests, popped with a lease.

Member: the request as JSON (``Request.to_dict``), with a crawl-wide sequence number injected as
its first key (``{"seq":42,...}``) by the enqueue script (see :mod:`crawler.dupefilter`), so that
two equal requests (``dont_filter``) stay distinct members. The sequence number is also the
lease id. Score: ``-priority * 2**32 + seq``: higher priority first, then first in, first out.

Pop is one Lua step: ZPOPMIN, HSET ``leases:WORKER`` seq -> member, HINCRBY ``stats.popped``;
it refuses (and sets ``stats['limit:max_pages']``) once ``popped`` reached ``max_pages``, so a
page limit holds exactly across workers. Returning leases (a worker retiring, or the reaper after
a heartbeat expired) moves every member of ``leases:WORKER`` back with its original score.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import TYPE_CHECKING, Any

from scrapy.http import Request
from scrapy.utils.request import request_from_dict

from . import keys

if TYPE_CHECKING:
    import redis
    from scrapy import Spider

logger = logging.getLogger(__name__)

PRIORITY_LIMIT = 2 ** 20  # |priority| is clamped so that the score stays an exact double
LEASE_META = "_cs_lease"  # request.meta key holding the lease id of a popped request

# KEYS: queue, leases, stats   ARGV: max_pages (0 = no limit)
# -> {"ok", member} | {"empty"} | {"limit"}
POP_SCRIPT = """
local max_pages = tonumber(ARGV[1])
if max_pages > 0 then
  local popped = tonumber(redis.call('HGET', KEYS[3], 'popped') or '0')
  if popped >= max_pages then
    redis.call('HSET', KEYS[3], 'limit:max_pages', '1')
    return {'limit'}
  end
end
local got = redis.call('ZPOPMIN', KEYS[1])
if #got == 0 then return {'empty'} end
local member = got[1]
local seq = string.match(member, '^{"seq":(%d+),')
redis.call('HSET', KEYS[2], seq, member)
redis.call('HINCRBY', KEYS[3], 'popped', 1)
redis.call('HINCRBY', KEYS[3], 'leased', 1)
return {'ok', member}
"""

# KEYS: leases, queue, stats   -> number of requests put back
RETURN_LEASES_SCRIPT = """
local entries = redis.call('HVALS', KEYS[1])
for _, member in ipairs(entries) do
  local req = cjson.decode(member)
  local prio = tonumber(req['priority']) or 0
  local score = -prio * 4294967296 + tonumber(req['seq'])
  redis.call('ZADD', KEYS[2], string.format('%.0f', score), member)
end
local n = #entries
if n > 0 then
  redis.call('DEL', KEYS[1])
  redis.call('HINCRBY', KEYS[3], 'requeued', n)
  redis.call('HINCRBY', KEYS[3], 'popped', -n)
  redis.call('HINCRBY', KEYS[3], 'leased', -n)
end
return n
"""

# KEYS: leases, stats   ARGV: lease ids -> number released
RELEASE_SCRIPT = """
local n = 0
for i = 1, #ARGV do n = n + redis.call('HDEL', KEYS[1], ARGV[i]) end
if n > 0 then redis.call('HINCRBY', KEYS[2], 'leased', -n) end
return n
"""


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
        self._pop = redis.register_script(POP_SCRIPT)
        self._return = redis.register_script(RETURN_LEASES_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)

    def __len__(self) -> int:
        return int(self.redis.zcard(self.queue_key))

    def pop(self, max_pages: int = 0) -> tuple[str, str | None]:
        """Lease the next request: ``("ok", member)``, ``("empty", None)`` or ``("limit", None)``."""
        result = self._pop(keys=[self.queue_key, self.leases_key, self.stats_key], args=[int(max_pages)])
        status = result[0]
        if isinstance(status, bytes):
            status = status.decode()
            result = [status] + [r.decode() if isinstance(r, bytes) else r for r in result[1:]]
        return status, (result[1] if status == "ok" else None)

    def release(self, lease_ids: list[str], pipe=None) -> Any:
        """Forget finished leases (their outcome is in Redis already)."""
        if not lease_ids:
            return 0
        return self._release(keys=[self.leases_key, self.stats_key], args=list(lease_ids), client=pipe)

    def return_leases(self, worker: str | None = None) -> int:
        """Put every request leased by ``worker`` (default: this one) back in the queue."""
        key = keys.leases(self.code, worker) if worker else self.leases_key
        return int(self._return(keys=[key, self.queue_key, self.stats_key]))

    def leased(self) -> int:
        return int(self.redis.hlen(self.leases_key))


def return_leases(redis: redis.Redis, code: str, worker: str) -> int:
    """Put every request leased by ``worker`` back in the crawl's queue; return how many."""
    script = redis.register_script(RETURN_LEASES_SCRIPT)
    return int(script(keys=[keys.leases(code, worker), keys.queue(code), keys.stats(code)]))
