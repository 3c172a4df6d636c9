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
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Sequence

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from twisted.internet.interfaces import IReadDescriptor
from zope.interface import implementer

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

Call = tuple["Script", Sequence[Any], Sequence[Any]]  # (script, keys, args)
_Batch = tuple[Sequence[Call], Callable[[Any], None], bool]  # (calls, on_reply, resend)

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
    results = _reload_missing(redis, calls, pipe.execute(raise_on_error=False))
    for res in results:
        if isinstance(res, Exception):
            raise res
    return results


def _reload_missing(redis: redis.Redis, calls: Sequence[Call], results: list[Any]) -> list[Any]:
    """Results with every NOSCRIPT reply replaced by the result of running that call again."""
    missing = [i for i, res in enumerate(results) if isinstance(res, NoScriptError)]
    if missing:
        load_all(redis)
        for i, res in zip(missing, run(redis, [calls[i] for i in missing])):
            results[i] = res
    return results


class Channel:
    """Script calls on a connection of their own, sent without waiting for the replies.

    A worker's writes (new requests, items, lease releases) must reach Redis in the order they are
    made, but the worker need not stop while Redis runs them. :meth:`send` writes a batch of calls
    to the socket and returns; the replies are read as soon as they arrive (when a reactor is
    given, it watches the socket) or when a caller needs them (:meth:`wait`, :meth:`call`, which
    first read every reply still due). One connection keeps the order: Redis runs the commands of
    a connection one after the other, and replies come back in the same order.

    ``on_reply`` of a batch gets the list of results, or the first error (a Lua error, say). A
    NOSCRIPT reply loads the scripts and runs that call again, as :func:`run` does.

    A lost connection (Redis restarted, a network blip) drops the connection and fails the batches
    whose replies were due, except those sent with ``resend=True``: they are kept, in order, and
    sent again on a new connection before anything else, at the next :meth:`send` or
    :meth:`retry`. Such a batch may run twice (its reply may be what was lost), so only batches
    that may run twice are sent that way: the scheduler's writes (a request enqueued twice is a
    duplicate the second time, a release twice releases once, an item twice has the same key and
    is stored once), never a pop. A pop whose reply was lost may still have leased requests:
    :attr:`losses` tells the caller to look (see ``RedisScheduler.return_unknown_leases``).
    """

    def __init__(self, redis: redis.Redis, reactor: Any = None):
        self.redis = redis
        self.reactor = reactor
        self.conn: Any = None
        self.due: deque[_Batch] = deque()  # sent, reply not read yet
        self.unsent: deque[_Batch] = deque()  # to send, before anything else
        self.losses = 0  # connections lost so far
        self._reader: _ReplyReader | None = None

    @property
    def busy(self) -> bool:
        """True while replies are due or batches wait to be sent again."""
        return bool(self.due or self.unsent)

    def send(self, calls: Sequence[Call], on_reply: Callable[[Any], None], resend: bool = False) -> None:
        self.unsent.append((calls, on_reply, resend))
        self._send_unsent()

    def retry(self) -> None:
        """Send again what a lost connection left unsent (called from a timer)."""
        if self.unsent:
            self._send_unsent()

    def call(self, calls: Sequence[Call]) -> list[Any]:
        """Run ``calls`` now, after every batch sent before; return their results or raise."""
        box: list[Any] = []
        self.send(calls, box.append)
        self.wait()
        if not box:  # still unsent: the connection is down
            raise RedisConnectionError("Redis is unreachable")
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def wait(self) -> None:
        """Send what waits to be sent, then read every reply still due (blocking)."""
        self._send_unsent()
        try:
            while self.due:
                self._read_batch()
        except Exception as exc:
            self._lost(exc)

    def poll(self) -> None:
        """Read the replies that have arrived (the reactor saw the socket readable)."""
        try:
            while self.due and self.conn.can_read(timeout=0):
                self._read_batch()
            if not self.due and self.conn.can_read(timeout=0):
                # readable with nothing due: the server closed the connection
                raise RedisConnectionError("Redis closed the connection")
        except Exception as exc:
            self._lost(exc)

    def close(self) -> None:
        self.wait()
        self._unwatch()
        if self.conn is not None:
            self.redis.connection_pool.release(self.conn)
            self.conn = None

    def _send_unsent(self) -> None:
        while self.unsent:
            calls, on_reply, resend = self.unsent[0]
            try:
                if self.conn is None:
                    self.conn = self.redis.connection_pool.get_connection()
                packed = self.conn.pack_commands(
                    [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls])
            except RedisConnectionError as exc:
                self._lost(exc)
                return
            except Exception as exc:  # an argument Redis cannot take: this batch fails alone
                self.unsent.popleft()
                self._reply(on_reply, exc)
                continue
            try:
                # a health check (PING after a long idle time) is only possible with no reply due
                self.conn.send_packed_command(packed, check_health=not self.due)
            except Exception as exc:
                self._lost(exc)
                return
            self.due.append(self.unsent.popleft())
            self._watch()

    def _read_batch(self) -> None:
        calls, on_reply, _ = self.due[0]
        results: list[Any] = []
        for _ in calls:
            try:
                results.append(self.conn.read_response())
            except ResponseError as exc:
                results.append(exc)
        self.due.popleft()
        try:
            results = _reload_missing(self.redis, calls, results)
        except Exception as exc:  # loading the scripts failed: so does this batch
            results = [exc]
        error = next((res for res in results if isinstance(res, Exception)), None)
        self._reply(on_reply, error if error is not None else results)

    def _lost(self, exc: Exception) -> None:
        """The connection failed: drop it; batches to send again wait, the others fail."""
        self._unwatch()
        if self.conn is not None:
            self.conn.disconnect()
        self.losses += 1
        batches = [*self.due, *self.unsent]
        self.due = deque()
        self.unsent = deque(batch for batch in batches if batch[2])
        logger.warning("Redis connection lost (%s); %d write batches kept, to be sent again on a new one",
                       exc, len(self.unsent))
        for _, on_reply, resend in batches:  # after the state is set: a reply may send more
            if not resend:
                self._reply(on_reply, exc)

    @staticmethod
    def _reply(on_reply: Callable[[Any], None], result: Any) -> None:
        try:
            on_reply(result)
        except Exception:
            logger.exception("Handling a Redis reply failed")

    def _watch(self) -> None:
        """Have the reactor watch the connection (from the first send until it is dropped)."""
        if self.reactor is None or self._reader is not None:
            return
        sock = getattr(self.conn, "_sock", None)  # redis-py's socket (pinned version)
        if sock is None:  # no socket to watch: read the replies now, as without a reactor
            self.reactor.callLater(0, self.wait)
            return
        self._reader = _ReplyReader(self, sock.fileno())
        self.reactor.addReader(self._reader)

    def _unwatch(self) -> None:
        if self._reader is not None:
            self.reactor.removeReader(self._reader)
            self._reader = None


@implementer(IReadDescriptor)
class _ReplyReader:
    """What the reactor watches while a :class:`Channel` has replies due."""

    def __init__(self, channel: Channel, fd: int):
        self.channel = channel
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        self.channel.poll()

    def connectionLost(self, reason: Any) -> None:
        pass

    def logPrefix(self) -> str:
        return "crawlsite-redis"


# -- dedupe and enqueue (crawler.dupefilter) --------------------------------------------------------
# KEYS: queue, stats, slots, bucket keys...
# ARGV: local_duplicates, slot queue prefix, then per request 5 values: bucket key index
#       (0 = dont_filter), fingerprint as a decimal int64, priority, request JSON (starting with
#       '{'), slot (host name)
# -> one flag per request: 1 enqueued, 0 duplicate
# Each request goes in the crawl's queue (member: the JSON with its seq and slot) and, by its seq
# with the same score, in its slot's queue; the slot is listed in ``slots`` (ready at once if new).
ENQUEUE = Script("""
local out = {}
local seen, enq, dup = 0, 0, tonumber(ARGV[1])
for i = 3, #ARGV, 5 do
  local b = tonumber(ARGV[i])
  local fresh = 1
  if b > 0 then
    fresh = redis.call('SADD', KEYS[b], ARGV[i + 1])
    seen = seen + fresh
  end
  if fresh == 1 then
    local seq = redis.call('HINCRBY', KEYS[2], 'enqueued', 1)
    local score = string.format('%.0f', -tonumber(ARGV[i + 2]) * 4294967296 + seq)
    local slot = ARGV[i + 4]
    local member = '{"seq":' .. seq .. ',"slot":' .. cjson.encode(slot) .. ',' .. string.sub(ARGV[i + 3], 2)
    redis.call('ZADD', KEYS[1], score, member)
    redis.call('ZADD', ARGV[2] .. slot, score, seq)
    redis.call('ZADD', KEYS[3], 'NX', 0, slot)
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

# Shared by the scripts that end leases: the slot of a queue member, and giving its slot back
# (one request less in flight; a slot parked at its limit becomes ready again).
_SLOTS_LUA = """
local BLOCKED = 4503599627370496
local function slot_of(member)
  return string.match(member, '^{"seq":%d+,"slot":"([^"]*)"')
end
local function give_back(inflight, slots, slot)
  if redis.call('HINCRBY', inflight, slot, -1) <= 0 then redis.call('HDEL', inflight, slot) end
  local score = redis.call('ZSCORE', slots, slot)
  if score and tonumber(score) >= BLOCKED then redis.call('ZADD', slots, 'XX', 0, slot) end
end
"""

# -- the request queue and leases (crawler.queue, crawler.politeness) ---------------------------------
# KEYS: queue, leases, stats, slots, politeness, crawl in-flight, site in-flight, crawl throttle,
#       site throttle, slot pops
# ARGV: max_pages (0 = no limit), count (at most this many), a random number in [0, 1) (jitter),
#       slot queue prefix, crawl next prefix, site next prefix
# -> {"ok", member, ...} | {"empty"} | {"limit"} | {"wait", ms until a slot may be ready}
# A slot is eligible when its score in ``slots`` (ready time) has passed, its ``next:`` key has
# expired (the delay since its last request) and fewer than ``limit`` of its requests are in
# flight crawl-wide (or site-wide). Taking a request: ZPOPMIN of the slot's queue, the member found
# in the crawl's queue by its unique score, leased; then the slot is in flight once more, its next
# request waits ``delay`` (AutoThrottle's shared delay if on, jittered if asked), and it is
# re-scored: removed (no request left), parked (at its limit) or ready at now + delay. Time is
# Redis's (TIME), never a worker's clock. Queue entries without slots (enqueued before this
# scheme) are popped as before once no slot has requests.
POP = Script(_SLOTS_LUA + """
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
local out = {'ok'}
if redis.call('ZCARD', KEYS[4]) == 0 then
  local got = redis.call('ZPOPMIN', KEYS[1], count)
  if #got == 0 then return {'empty'} end
  for i = 1, #got, 2 do
    local member = got[i]
    redis.call('HSET', KEYS[2], string.match(member, '^{"seq":(%d+),'), member)
    out[#out + 1] = member
  end
else
  local cfg = redis.call('HMGET', KEYS[5], 'limit', 'delay', 'jitter', 'autothrottle', 'start', 'site')
  local limit = tonumber(cfg[1]) or 0
  local delay = tonumber(cfg[2]) or 0
  local jitter = tonumber(cfg[3]) or 0
  local auto = cfg[4] == '1'
  local start = tonumber(cfg[5]) or delay
  local inflight, throttle, nextp = KEYS[6], KEYS[8], ARGV[5]
  if cfg[6] == '1' then inflight, throttle, nextp = KEYS[7], KEYS[9], ARGV[6] end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  -- a slot at its limit waits for a release of this crawl; site-wide, another crawl's release
  -- does not re-score it, so it is looked at again soon
  local parked = BLOCKED
  if cfg[6] == '1' then parked = now + 100 end
  local rnd = tonumber(ARGV[3]) or 0
  local steps = 0
  while #out <= count and steps < count + 100 do
    steps = steps + 1
    local ready = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 1)
    if #ready == 0 then break end
    local slot = ready[1]
    local qkey = ARGV[4] .. slot
    local wait = redis.call('PTTL', nextp .. slot)
    local busy = tonumber(redis.call('HGET', inflight, slot) or '0')
    if wait > 0 then
      redis.call('ZADD', KEYS[4], now + wait, slot)
    elseif limit > 0 and busy >= limit then
      redis.call('ZADD', KEYS[4], parked, slot)
    else
      local head = redis.call('ZPOPMIN', qkey)
      if #head == 0 then
        redis.call('ZREM', KEYS[4], slot)
      else
        local found = redis.call('ZRANGEBYSCORE', KEYS[1], head[2], head[2], 'LIMIT', 0, 1)
        if #found > 0 then
          local member = found[1]
          redis.call('ZREMRANGEBYSCORE', KEYS[1], head[2], head[2])
          redis.call('HSET', KEYS[2], head[1], member)
          out[#out + 1] = member
          busy = busy + 1
          redis.call('HSET', inflight, slot, busy)
          redis.call('ZINCRBY', KEYS[10], 1, slot)
          local d = delay
          if auto then d = tonumber(redis.call('HGET', throttle, slot) or start) end
          if jitter > 0 and d > 0 then
            rnd = (rnd + 0.6180339887) % 1
            d = d * (1 - jitter + 2 * jitter * rnd)
          end
          d = math.floor(d)
          if d > 0 then redis.call('SET', nextp .. slot, '1', 'PX', d) end
          if redis.call('ZCARD', qkey) == 0 then
            redis.call('ZREM', KEYS[4], slot)
          elseif limit > 0 and busy >= limit then
            redis.call('ZADD', KEYS[4], parked, slot)
          else
            redis.call('ZADD', KEYS[4], now + d, slot)
          end
        end
      end
    end
  end
  if #out == 1 then
    if redis.call('ZCARD', KEYS[1]) == 0 then return {'empty'} end
    -- until the earliest slot is ready; a slot parked at its limit waits for a release, which
    -- another worker may make at any time: look again soon
    local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
    local wait = 100
    if #first > 0 then wait = math.max(1, math.min(1000, tonumber(first[2]) - now)) end
    if #first > 0 and tonumber(first[2]) >= BLOCKED then wait = 100 end
    return {'wait', tostring(wait)}
  end
end
redis.call('HINCRBY', KEYS[3], 'popped', #out - 1)
redis.call('HINCRBY', KEYS[3], 'leased', #out - 1)
return out
""")

# KEYS: leases, queue, stats, slots, politeness, crawl in-flight, site in-flight
# ARGV: slot queue prefix, then lease ids (none: every lease) -> number of requests put back
RETURN_LEASES = Script(_SLOTS_LUA + """
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then ids = redis.call('HKEYS', KEYS[1]) end
local inflight = KEYS[6]
if redis.call('HGET', KEYS[5], 'site') == '1' then inflight = KEYS[7] end
local n = 0
for _, id in ipairs(ids) do
  local member = redis.call('HGET', KEYS[1], id)
  if member then
    local req = cjson.decode(member)
    local prio = tonumber(req['priority']) or 0
    local score = string.format('%.0f', -prio * 4294967296 + tonumber(req['seq']))
    redis.call('ZADD', KEYS[2], score, member)
    local slot = req['slot']
    if type(slot) == 'string' then
      give_back(inflight, KEYS[4], slot)
      redis.call('ZADD', ARGV[1] .. slot, score, req['seq'])
      redis.call('ZADD', KEYS[4], 'NX', 0, slot)
    end
    redis.call('HDEL', KEYS[1], id)
    n = n + 1
  end
end
if n > 0 then
  redis.call('HINCRBY', KEYS[3], 'requeued', n)
  redis.call('HINCRBY', KEYS[3], 'popped', -n)
  redis.call('HINCRBY', KEYS[3], 'leased', -n)
end
return n
""")

# KEYS: leases, stats, slots, politeness, crawl in-flight, site in-flight   ARGV: lease ids
# -> number released (each gives its slot back)
RELEASE = Script(_SLOTS_LUA + """
local inflight = KEYS[5]
if redis.call('HGET', KEYS[4], 'site') == '1' then inflight = KEYS[6] end
local n = 0
for i = 1, #ARGV do
  local member = redis.call('HGET', KEYS[1], ARGV[i])
  if member then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
    local slot = slot_of(member)
    if slot then give_back(inflight, KEYS[3], slot) end
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[2], 'leased', -n) end
return n
""")

# KEYS: politeness, crawl throttle, site throttle
# ARGV: per response 3 values: slot, latency (ms), status  -> number of slot delays changed
# Scrapy's AutoThrottle rule, on the delay shared by every worker: the target delay is
# latency / target concurrency; the new delay is the larger of that and the mean of the old delay
# and that, kept between the minimum (DOWNLOAD_DELAY) and AUTOTHROTTLE_MAX_DELAY; a non-200
# response never lowers it.
THROTTLE = Script("""
local cfg = redis.call('HMGET', KEYS[1], 'target', 'delay', 'max', 'start', 'site')
local target = tonumber(cfg[1]) or 1
local low = tonumber(cfg[2]) or 0
local high = tonumber(cfg[3]) or 60000
local start = tonumber(cfg[4]) or low
local key = KEYS[2]
if cfg[5] == '1' then key = KEYS[3] end
local changed = 0
for i = 1, #ARGV, 3 do
  local slot = ARGV[i]
  local old = tonumber(redis.call('HGET', key, slot) or start)
  local want = tonumber(ARGV[i + 1]) / target
  local new = math.min(math.max(low, math.max(want, (old + want) / 2)), high)
  if ARGV[i + 2] == '200' or new > old then
    redis.call('HSET', key, slot, math.floor(new))
    changed = changed + 1
  end
end
return changed
""")

# -- items (crawler.pipelines) -----------------------------------------------------------------------
# KEYS: stats, items, fields   ARGV: max_items (0 = no limit), worker, the batch's field names (JSON
# list), then per item 4 values: key, url, data, and a string of "1"/"0", one per field name in
# order ("1": the item's value is non-empty; missing at the end: "0").
# -> one flag per item: 1 added to the stream, 0 dropped (over max_items). The items added count
# their non-empty fields in the ``fields`` hash (field coverage, read by the dashboard): one HINCRBY
# per field per batch.
# Field coverage: at most this many distinct fields are counted per crawl (a spider yielding
# random keys cannot grow the hash without end).
FIELDS_MAX = 200

ADD_ITEMS = Script("""
local max_items = tonumber(ARGV[1])
local room = 0
if max_items > 0 then
  room = max_items - tonumber(redis.call('HGET', KEYS[1], 'items') or '0')
end
local ok, names = pcall(cjson.decode, ARGV[3])
if not ok or type(names) ~= 'table' then names = {} end
local filled = {}
for j = 1, #names do filled[j] = 0 end
local out, added, dropped = {}, 0, 0
for i = 4, #ARGV, 4 do
  if max_items > 0 and added >= room then
    dropped = dropped + 1
    out[#out + 1] = 0
  else
    redis.call('XADD', KEYS[2], '*', 'key', ARGV[i], 'url', ARGV[i + 1], 'worker', ARGV[2], 'data', ARGV[i + 2])
    local flags = ARGV[i + 3]
    for j = 1, math.min(#flags, #names) do
      if string.byte(flags, j) == 49 then filled[j] = filled[j] + 1 end
    end
    added = added + 1
    out[#out + 1] = 1
  end
end
if added > 0 then redis.call('HINCRBY', KEYS[1], 'items', added) end
if dropped > 0 then
  redis.call('HSET', KEYS[1], 'limit:max_items', '1')
  redis.call('HINCRBY', KEYS[1], 'items_dropped', dropped)
end
if added > 0 and #names > 0 then
  local nfields = redis.call('HLEN', KEYS[3])
  for j = 1, #names do
    local name = names[j]
    if type(name) == 'string' then
      local known = redis.call('HEXISTS', KEYS[3], name) == 1
      if known or nfields < {FIELDS_MAX} then
        if not known then nfields = nfields + 1 end
        redis.call('HINCRBY', KEYS[3], name, filled[j])
      end
    end
  end
end
return out
""".replace("{FIELDS_MAX}", str(FIELDS_MAX)))
