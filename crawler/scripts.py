"""Every Lua script of the crawler, called with EVALSHA.

redis-py's ``register_script`` makes a pipeline send ``SCRIPT EXISTS`` (one more round trip) on every
``execute()``. Here each script is loaded once (all of them together, in one MULTI, so that they
are either all present or all missing) and called with a bare EVALSHA, in a pipeline or alone; a
``NOSCRIPT`` reply (Redis restarted, ``SCRIPT FLUSH``) loads them again and re-runs the calls that
got it.

Ordering with NOSCRIPT: a pipeline of script calls (e.g. items, then lease releases) where an early
call got NOSCRIPT while a later one ran would break "the lease is released only once its output is
in Redis". It cannot happen: the release script is only ever loaded by workers, together with
every other worker script, so if the item or enqueue script is missing the release script is
missing too (the dashboard loads only the enqueue and return scripts, which release nothing).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Sequence

from redis.exceptions import NoScriptError

if TYPE_CHECKING:
    import redis

Call = tuple["Script", Sequence[Any], Sequence[Any]]  # (script, keys, args)

SCRIPTS: list[Script] = []


class Script:
    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()
        SCRIPTS.append(self)

    def __call__(self, redis: redis.Redis, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run the script now (one round trip; two more if Redis does not know it yet)."""
        try:
            return redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            load_all(redis)
            return redis.evalsha(self.sha, len(keys), *keys, *args)

    def call(self, keys: Sequence[Any], args: Sequence[Any]) -> Call:
        """A call for :func:`run`."""
        return (self, keys, args)


def load_all(redis: redis.Redis) -> None:
    pipe = redis.pipeline(transaction=True)
    for script in SCRIPTS:
        pipe.script_load(script.source)
    pipe.execute()


def run(redis: redis.Redis, calls: Sequence[Call]) -> list[Any]:
    """Run script calls in order, in one pipelined round trip; return their results."""
    if not calls:
        return []
    pipe = redis.pipeline(transaction=False)
    for script, keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    results = pipe.execute(raise_on_error=False)
    missing = [i for i, res in enumerate(results) if isinstance(res, NoScriptError)]
    if missing:
        load_all(redis)
        for i, res in zip(missing, run(redis, [calls[i] for i in missing])):
            results[i] = res
    for res in results:
        if isinstance(res, Exception):
            raise res
    return results


# -- dedupe and enqueue (crawler.dupefilter) --------------------------------------------------------
# KEYS: queue, stats, bucket keys...
# ARGV: local_duplicates, then per request 4 values: bucket key index (0 = dont_filter),
#       fingerprint as a decimal int64, priority, request JSON (starting with '{')
# -> one flag per request: 1 enqueued, 0 duplicate
ENQUEUE = Script("""
local out = {}
local seen, enq, dup = 0, 0, tonumber(ARGV[1])
for i = 2, #ARGV, 4 do
  local b = tonumber(ARGV[i])
  local fresh = 1
  if b > 0 then
    fresh = redis.call('SADD', KEYS[b], ARGV[i + 1])
    seen = seen + fresh
  end
  if fresh == 1 then
    local seq = redis.call('HINCRBY', KEYS[2], 'enqueued', 1)
    local score = -tonumber(ARGV[i + 2]) * 4294967296 + seq
    local member = '{"seq":' .. seq .. ',' .. string.sub(ARGV[i + 3], 2)
    redis.call('ZADD', KEYS[1], string.format('%.0f', score), member)
    enq = enq + 1
  else
    dup = dup + 1
  end
  out[#out + 1] = fresh
end
if seen > 0 then redis.call('HINCRBY', KEYS[2], 'seen', seen) end
if dup > 0 then redis.call('HINCRBY', KEYS[2], 'duplicates', dup) end
return out
""")

# -- the request queue and leases (crawler.queue) ----------------------------------------------------
# KEYS: queue, leases, stats   ARGV: max_pages (0 = no limit), count (at most this many)
# -> {"ok", member, ...} | {"empty"} | {"limit"}
POP = Script("""
local max_pages = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
if max_pages > 0 then
  local popped = tonumber(redis.call('HGET', KEYS[3], 'popped') or '0')
  if popped >= max_pages then
    redis.call('HSET', KEYS[3], 'limit:max_pages', '1')
    return {'limit'}
  end
  count = math.min(count, max_pages - popped)
end
local got = redis.call('ZPOPMIN', KEYS[1], count)
if #got == 0 then return {'empty'} end
local out = {'ok'}
for i = 1, #got, 2 do
  local member = got[i]
  local seq = string.match(member, '^{"seq":(%d+),')
  redis.call('HSET', KEYS[2], seq, member)
  out[#out + 1] = member
end
redis.call('HINCRBY', KEYS[3], 'popped', #out - 1)
redis.call('HINCRBY', KEYS[3], 'leased', #out - 1)
return out
""")

# KEYS: leases, queue, stats   -> number of requests put back
RETURN_LEASES = Script("""
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
""")

# KEYS: leases, stats   ARGV: lease ids -> number released
RELEASE = Script("""
local n = 0
for i = 1, #ARGV do n = n + redis.call('HDEL', KEYS[1], ARGV[i]) end
if n > 0 then redis.call('HINCRBY', KEYS[2], 'leased', -n) end
return n
""")

# -- items (crawler.pipelines) -----------------------------------------------------------------------
# KEYS: stats, items   ARGV: max_items (0 = no limit), worker, then per item 3 values: key, url, data
# -> one flag per item: 1 added to the stream, 0 dropped (over max_items)
ADD_ITEMS = Script("""
local max_items = tonumber(ARGV[1])
local room = 0
if max_items > 0 then
  room = max_items - tonumber(redis.call('HGET', KEYS[1], 'items') or '0')
end
local out, added, dropped = {}, 0, 0
for i = 3, #ARGV, 3 do
  if max_items > 0 and added >= room then
    dropped = dropped + 1
    out[#out + 1] = 0
  else
    redis.call('XADD', KEYS[2], '*', 'key', ARGV[i], 'url', ARGV[i + 1], 'worker', ARGV[2], 'data', ARGV[i + 2])
    added = added + 1
    out[#out + 1] = 1
  end
end
if added > 0 then redis.call('HINCRBY', KEYS[1], 'items', added) end
if dropped > 0 then
  redis.call('HSET', KEYS[1], 'limit:max_items', '1')
  redis.call('HINCRBY', KEYS[1], 'items_dropped', dropped)
end
return out
""")
