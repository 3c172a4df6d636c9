"""The live dashboard's data: what the conductor broadcasts each tick and what a page gets on connect.

The conductor calls :func:`publish` once per active crawl per tick, with the counters it has just
read (one pipelined round trip) and the items it has just stored. ``publish`` then costs, whatever
the number of open pages: one pipelined round trip (rates, sequence number, time series point, new
log lines) and one channel-layer ``group_send`` to the crawl's group; :func:`publish_overview` adds
one ``group_send`` per user with active crawls. The message schema is in docs/websocket.md.

The web process builds snapshots (:func:`crawl_snapshot`, :func:`overview_snapshot`) from Redis and
the database when a page connects; it never polls.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from collections import deque

from channels.layers import get_channel_layer
from redis.exceptions import RedisError
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import F, Window
from django.db.models.functions import RowNumber
from django.urls import reverse

from crawler import keys, state
from crawler.counters import COUNTERS, DONE_STATES, SERIES, no_rates
from dashboard import jobs
from dashboard.models import Crawl, CrawlHistory, Project, transient_bound
from dashboard.redis import get_redis

log = logging.getLogger(__name__)

# At most this many of the newest items of one tick go to browsers (the database stores all).
ITEMS_PER_UPDATE = 20
# Items and log lines in a snapshot.
SNAPSHOT_ITEMS = 20
SNAPSHOT_LOG = 50
# New log lines read per tick, at most.
LOG_PER_UPDATE = 50
# The time series: one point per SERIES_INTERVAL seconds at first; when SERIES_CAP points are
# stored, every other point is dropped and the interval doubles, so the chart always covers the
# crawl's whole life in at most SERIES_CAP points.
SERIES_INTERVAL = 1.0
SERIES_CAP = 1200
# Rates are measured over this window (seconds) of counter reads.
RATE_WINDOW = 5.0
# Channel-layer sends in flight at once (a tick sends one update per active crawl).
SEND_CONCURRENCY = 32
# Scraped strings longer than this are cut in live messages (the item browser shows them whole).
CLIP = 300
SERIES_FIELDS = list(SERIES)
# The fields of the one view of a crawl that an overview row carries.
OVERVIEW_FIELDS = ("code", "project", "project_name", "status", "status_display", "reason", "counters", "rates",
                   "stalled", "overdue", "url")


# ---------------------------------------------------------------------------------------------
# Sending to the channel layer from the (synchronous) conductor


class Broadcaster:
    """Runs channel-layer sends on one event loop kept in a daemon thread.

    ``async_to_sync`` would start a new event loop per call from a plain thread, and channels-redis
    keeps its connections per event loop, so every tick would open a new Redis connection. One
    long-lived loop keeps one connection, and works whether or not the caller has a loop running.
    """

    def __init__(self, layer=None):
        self._layer = layer
        self._loop = None
        self._lock = threading.Lock()

    @property
    def layer(self):
        if self._layer is None:
            self._layer = get_channel_layer()
        return self._layer

    def _ensure_loop(self):
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="live-broadcaster", daemon=True)
                thread.start()
                self._loop = loop
            return self._loop

    def send(self, messages, timeout=5.0):
        """Send ``[(group, message), ...]`` concurrently; wait until all are handed to Redis."""
        if not messages:
            return
        layer = self.layer
        if layer is None:
            return

        async def send_all():
            # At most SEND_CONCURRENCY sends at once: channels-redis's connection pool is finite.
            limit = asyncio.Semaphore(SEND_CONCURRENCY)

            async def send_one(group, message):
                async with limit:
                    await layer.group_send(group, message)

            results = await asyncio.gather(*(send_one(g, m) for g, m in messages), return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    raise result

        asyncio.run_coroutine_threadsafe(send_all(), self._ensure_loop()).result(timeout)


_broadcaster = Broadcaster()


def get_broadcaster():
    return _broadcaster


# ---------------------------------------------------------------------------------------------
# Rates, kept by the conductor between ticks


class RateMeter:
    """Pages/s and items/s of each crawl from successive counter reads (a sliding window)."""

    def __init__(self, window=RATE_WINDOW):
        self.window = window
        self.reads = {}  # code -> deque of (monotonic time, pages, items)

    def update(self, code, pages, items, now=None):
        now = time.monotonic() if now is None else now
        reads = self.reads.setdefault(code, deque())
        reads.append((now, pages, items))
        while len(reads) > 2 and now - reads[1][0] >= self.window:
            reads.popleft()
        t0, p0, i0 = reads[0]
        elapsed = now - t0
        if elapsed <= 0:
            return {"pages_per_s": 0.0, "items_per_s": 0.0}
        return {
            "pages_per_s": round(max(0, pages - p0) / elapsed, 2),
            "items_per_s": round(max(0, items - i0) / elapsed, 2),
        }

    def forget(self, active_codes):
        for code in list(self.reads):
            if code not in active_codes:
                del self.reads[code]


class DomainMeter(RateMeter):
    """Requests/s of each top domain of each crawl (politeness), from the pops counted per domain."""

    def update(self, code, pops, now=None):
        """``pops``: ``{domain: requests popped so far}``; returns ``{domain: requests/s}``."""
        now = time.monotonic() if now is None else now
        reads = self.reads.setdefault(code, deque())
        reads.append((now, dict(pops)))
        while len(reads) > 2 and now - reads[1][0] >= self.window:
            reads.popleft()
        t0, first = reads[0]
        elapsed = now - t0
        return {d: (round(max(0, n - first.get(d, 0)) / elapsed, 2) if elapsed > 0 else 0.0) for d, n in pops.items()}


# ---------------------------------------------------------------------------------------------
# Building messages


def clip(value, limit=CLIP):
    """A copy of scraped ``value`` with long strings cut and long lists shortened (for live views)."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[: limit - 1] + "…"
    if isinstance(value, list):
        return [clip(v, limit) for v in value[:20]]
    if isinstance(value, dict):
        return {str(k)[:100]: clip(v, limit) for k, v in list(value.items())[:50]}
    return value


def item_message(item):
    """An item as sent to browsers: ``{id, key, url, link, worker, summary, data}``, long strings clipped.

    ``link`` is the URL only when it is http(s) (a scraped ``javascript:`` URL never becomes a link);
    ``summary`` is plain text (``field: value · ...``) that pages show with textContent.
    """
    url = item.get("url", "") or ""
    data = clip(item.get("data") or {})
    return {
        "id": str(item.get("id", "")),
        "key": item.get("key", ""),
        "url": clip(url, 2000),
        "link": url if url.lower().startswith(("http://", "https://")) and len(url) <= 2000 else "",
        "worker": item.get("worker", ""),
        "summary": summary(data),
        "data": data,
    }


def summary(data, limit=240):
    parts = []
    for name, value in data.items() if isinstance(data, dict) else ():
        if name == "url":
            continue
        if isinstance(value, (list, dict)):
            value = json.dumps(value, ensure_ascii=False)
        parts.append(f"{name}: {value}")
    return clip(" · ".join(parts), limit)


def workers_message(workers):
    rows = []
    for worker_id, s in sorted(workers.items(), key=lambda kv: _worker_order(kv[0])):
        rows.append({
            "worker": worker_id,
            "host": str(s.get("host", "")),
            "pid": s.get("pid"),
            "state": str(s.get("state", "unknown")),
            "pages": s.get("pages", 0),
            "items": s.get("items", 0),
            "errors": s.get("errors", 0),
            "in_flight": s.get("in_flight", 0),
            "started_at": s.get("started_at"),
            "updated_at": s.get("updated_at"),
            "message": str(s.get("message", "") or ""),
        })
    return rows


def _worker_order(worker_id):
    digits = worker_id[1:] if worker_id.startswith("w") else ""
    return (0, int(digits), "") if digits.isdigit() else (1, 0, worker_id)


def counters_message(counters):
    return {name: int(counters.get(name, 0) or 0) for name in COUNTERS}


def log_message(entry_id, fields):
    return {
        "id": entry_id,
        "worker": fields.get("worker", ""),
        "level": fields.get("level", ""),
        "logger": fields.get("logger", ""),
        "message": clip(fields.get("message", ""), 1000),
        "time": _float(fields.get("time")),
    }


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def progress(counters):
    """Crawled vs discovered: pages done out of distinct URLs seen (dedupe)."""
    seen = counters.get("seen", 0)
    pages = counters.get("pages", 0)
    return {"done": pages, "total": seen, "percent": round(100.0 * pages / seen, 1) if seen else 0.0}


def point(now, counters, rates):
    """One point of the time series, in the order of ``SERIES`` (crawler/counters.py)."""
    values = {**counters_message(counters), **rates, "t": round(now, 3)}
    return [values[name] for name in SERIES]


# ---------------------------------------------------------------------------------------------
# The conductor's side


class Publisher:
    """Keeps what the conductor needs between ticks (rates, last log id) and sends the updates."""

    def __init__(self, redis, broadcaster=None, clock=time.time):
        self.redis = redis
        self.broadcaster = broadcaster or get_broadcaster()
        self.clock = clock
        self.meter = RateMeter()
        self.domain_meter = DomainMeter()
        self.log_cursor = {}  # code -> last log stream id sent
        self.overview = {}  # owner id -> {code: overview row} for this tick

    def publish(self, crawl, counters, new_items, stored=None):
        """Write rates, the sequence number and the series point; send one update to the crawl's group.

        Returns the message sent (tests and the overview use it).
        """
        return self.publish_many([(crawl, counters, new_items)], stored=stored)[0]

    def publish_many(self, entries, stored=None):
        """:meth:`publish` for many crawls: ``entries`` are ``(crawl, counters, new_items)``.

        Costs two pipelined round trips (three when a series is thinned) and one batch of
        channel-layer sends, whatever the number of crawls or of open pages.
        """
        if not entries:
            return []
        now = self.clock()
        pipe = self.redis.pipeline(transaction=False)
        prepared = []
        for crawl, counters, new_items in entries:
            code = crawl.code
            rates = self.meter.update(code, counters.get("pages", 0), counters.get("items", 0))
            polite = counters.get("politeness") or {}
            domain_rates = self.domain_meter.update(code, {d["domain"]: d["pages"] for d in polite.get("domains", ())})
            counters = {**counters, "domain_rates": domain_rates}
            live_key = keys.live(code)
            log_from = self.log_cursor.get(code)
            pipe.hincrby(live_key, "seq", 1)
            pipe.hmget(live_key, "interval", "last_point")
            pipe.hset(live_key, "rates", json.dumps({**rates, "domains": domain_rates, "at": now}))
            if log_from is None:
                pipe.xrevrange(keys.log(code), count=1)
            else:
                pipe.xrange(keys.log(code), min="(" + log_from, count=LOG_PER_UPDATE)
            prepared.append((crawl, counters, new_items, rates, log_from))
        replies = pipe.execute()

        messages, points = [], []
        for n, (crawl, counters, new_items, rates, log_from) in enumerate(prepared):
            code = crawl.code
            seq, (interval, last_point), _, log_entries = replies[4 * n:4 * n + 4]
            new_point = None
            interval = _float(interval) or SERIES_INTERVAL
            last_point = _float(last_point)
            finished = crawl.status in Crawl.TERMINAL or crawl.status == Crawl.STOPPED
            if finished:
                rates = no_rates()
            if last_point is None or now - last_point >= interval or finished:
                new_point = point(now, counters, rates)
                points.append((code, new_point, interval))

            lines = []
            if log_from is None:
                # First sight of this crawl by this conductor: the page's snapshot has older lines.
                self.log_cursor[code] = log_entries[0][0] if log_entries else "0-0"
            else:
                lines = [log_message(i, f) for i, f in log_entries]
                if log_entries:
                    self.log_cursor[code] = log_entries[-1][0]

            items = [item_message(i) for i in new_items[-ITEMS_PER_UPDATE:]]
            view = crawl_view(crawl, {**counters, "rates": rates}, now=now)
            message = {
                "type": "crawl.update",
                "seq": int(seq),
                "time": now,
                **view,
                "items": list(reversed(items)),  # newest first
                "items_new": len(new_items) if stored is None else stored,
                "log": lines,
                "point": new_point,
            }
            self.overview.setdefault(crawl.project.owner_id, {})[code] = overview_row(view)
            messages.append(message)
        self._append_points(points)
        self.broadcaster.send([(keys.group(m["code"]), encoded(m)) for m in messages])
        return messages

    def _append_points(self, points):
        if not points:
            return
        pipe = self.redis.pipeline(transaction=False)
        for code, new_point, _interval in points:
            pipe.rpush(keys.series(code), json.dumps(new_point))
            pipe.hset(keys.live(code), "last_point", new_point[0])
        lengths = pipe.execute()[0::2]
        for (code, _point, interval), length in zip(points, lengths):
            if length >= SERIES_CAP:
                # Thin out: keep every other point (always the newest), double the interval.
                series_key = keys.series(code)
                kept = self.redis.lrange(series_key, 0, -1)[::-1][::2][::-1]
                thin = self.redis.pipeline(transaction=True)
                thin.delete(series_key)
                thin.rpush(series_key, *kept)
                thin.hset(keys.live(code), "interval", interval * 2)
                thin.execute()

    def publish_overview(self):
        """One message per user with active crawls this tick: the rows of those crawls."""
        messages = [
            (keys.owner_group(owner), encoded({"type": "overview.update", "time": self.clock(), "crawls": list(rows.values())}))
            for owner, rows in self.overview.items()
        ]
        self.overview = {}
        self.broadcaster.send(messages)
        return messages

    def forget(self, active_codes):
        self.meter.forget(active_codes)
        self.domain_meter.forget(active_codes)
        for code in list(self.log_cursor):
            if code not in active_codes:
                del self.log_cursor[code]


def encoded(message):
    """The channel-layer event for ``message``: JSON encoded once here, not once per open page."""
    return {"type": message["type"], "text": json.dumps(message, separators=(",", ":"), cls=DjangoJSONEncoder)}


def overview_row(view):
    """An overview row: a projection of :func:`crawl_view`."""
    return {name: view[name] for name in OVERVIEW_FIELDS}


# ---------------------------------------------------------------------------------------------
# The one view of a crawl: live update, snapshot, overview row and the API's crawl output


def read(redis, crawls, detail=True):
    """One read of the state of ``crawls``: ``{code: reading}`` where a reading is the counters of
    :func:`crawler.state.read_counters` plus ``rates`` (as the conductor measured them).

    Active crawls cost one pipelined round trip in all. With ``detail`` (one crawl's page or the
    API), a crawl also gets ``jobs`` (RQ statuses, when a launched worker has not reported) and,
    past the bound of a transient state, ``leases`` (requests each worker holds).
    """
    active = [c for c in crawls if c.is_active]
    readings = {c.code: {} for c in crawls}
    if not active:
        return readings
    pipe = redis.pipeline(transaction=False)
    for crawl in active:
        state.queue_counter_reads(pipe, crawl.code)
        pipe.hget(keys.live(crawl.code), "rates")
    replies = pipe.execute()
    step = state.COUNTER_READS + 1
    for n, crawl in enumerate(active):
        part = replies[n * step:(n + 1) * step]
        readings[crawl.code] = {**state.parse_counters(part), "rates": _parse_rates(part[-1]),
                                "domain_rates": _parse_domain_rates(part[-1])}
    if detail:
        for crawl in active:
            add_detail(redis, crawl, readings[crawl.code])
    return readings


def add_detail(redis, crawl, reading):
    """Add RQ statuses of workers that have not reported, and the leases each worker holds past
    the bound of a transient state (only then: it costs a round trip)."""
    workers = reading.get("workers", {})
    if crawl.is_active and crawl.launched_workers > len(workers) and "jobs" not in reading:
        reading["jobs"] = jobs.statuses(crawl.code, crawl.launched_workers)
    if crawl.overdue_since() is not None and "leases" not in reading:
        names = sorted(set(workers) | set(jobs.worker_ids(crawl.launched_workers)))
        pipe = redis.pipeline(transaction=False)
        for worker in names:
            pipe.hlen(keys.leases(crawl.code, worker))
        reading["leases"] = dict(zip(names, pipe.execute()))
    return reading


def crawl_view(crawl, reading, now=None):
    """The one shape of a crawl shown anywhere (docs/websocket.md, docs/api.md), from one reading.

    An ended crawl whose Redis state is gone shows the counters recorded when it ended.
    """
    counters = reading or {}
    if not crawl.is_active and crawl.stats and not counters.get("stats"):
        counters = {**counters, **{k: crawl.stats.get(k, 0) for k in COUNTERS}, "status": crawl.stats.get("status", {}),
                    "coverage": crawl.stats.get("coverage") or {}}
    current_rates = counters.get("rates") or no_rates()
    if not crawl.is_active:
        current_rates = no_rates()
    rows = with_waiting_workers(counters.get("workers", {}), counters.get("jobs", {}))
    quality = counters.get("stats") or {}
    if not crawl.is_active and "invalid" in (crawl.stats or {}):
        quality = crawl.stats  # recorded when the run ended (exact)
    return {
        "code": crawl.code,
        "project": crawl.project.code,
        "project_name": crawl.project.name,
        "trigger": crawl.trigger,
        "url": crawl_url(crawl.code),
        "status": crawl.status,
        "status_display": crawl.get_status_display(),
        "status_since": crawl.status_changed_at,
        "reason": crawl.reason,
        "workers_asked": crawl.workers,
        "counters": counters_message(counters),
        "rates": current_rates,
        "progress": progress(counters),
        "status_codes": counters.get("status", {}),
        "invalid": _int(quality.get("invalid")),  # items that failed validation (dashboard/ingest.py)
        "replaced": _int(quality.get("replaced")),  # items replaced by a later one with the same unique key
        "coverage": field_coverage(crawl, counters),
        "workers": workers_message(rows),
        "politeness": politeness_view(counters),
        "stalled": {"since": crawl.stalled_since, "reason": crawl.stalled_reason} if crawl.stalled_since else None,
        "overdue": overdue(crawl, counters, now),
        "created_at": crawl.created_at,
        "started_at": crawl.started_at,
        "finished_at": crawl.finished_at,
    }


def field_coverage(crawl, counters):
    """``{field: percent}`` of a crawl: every field seen in its items, plus the definition's
    fields that no item has carried yet (0 %) once items exist."""
    found = dict(counters.get("coverage") or {})
    if counters.get("items"):
        for name in crawl_fields(crawl.definition):
            found.setdefault(name, 0.0)
    return dict(sorted(found.items()))


def crawl_fields(definition):
    """Names of the fields a built-in definition extracts (``url`` included); [] for a custom spider."""
    fields = ((definition or {}).get("item") or {}).get("fields") or []
    names = [f.get("name") for f in fields if isinstance(f, dict) and f.get("name")]
    return ["url", *names] if names else []


def politeness_view(counters):
    """The crawl's shared per-domain limits, the time its workers waited for them, and the top
    domains with their current rate (requests/s), requests in flight and limit; None when unknown
    (an ended crawl whose Redis state is gone, or one no worker started yet)."""
    polite = counters.get("politeness")
    if not polite or not polite.get("configured"):
        return None
    rates_now = counters.get("domain_rates") or {}
    domains = [{**d, "rate": float(rates_now.get(d["domain"], 0.0))} for d in polite.get("domains", ())]
    return {**polite, "domains": domains}


@functools.lru_cache(maxsize=4096)
def crawl_url(code):
    return reverse("dashboard:crawl-detail", args=[code])


def with_waiting_workers(states, statuses):
    """Worker states plus a ``waiting`` row for each launched job no RQ worker has taken yet."""
    rows = dict(states)
    for worker, status in (statuses or {}).items():
        if worker not in rows and status in jobs.WAITING:
            rows[worker] = {"worker": worker, "state": "waiting", "message": "waiting for a free RQ worker"}
    return rows


def overdue(crawl, reading, now=None):
    """Past the bound of ``pausing``, ``stopping`` or ``finishing``: since when, and which worker
    holds what and why (the crawl page shows it next to the force stop button)."""
    since = crawl.overdue_since()
    if since is None:
        return None
    now = now or time.time()
    leases = reading.get("leases", {})
    statuses = reading.get("jobs", {})
    holders = []
    for worker in sorted(set(reading.get("workers", {})) | set(leases) | set(statuses), key=_worker_order):
        s = reading.get("workers", {}).get(worker)
        held = int(leases.get(worker, 0) or 0)
        if s is None:
            if statuses.get(worker) == "started":
                holders.append(_holder(worker, "started", held, 0, None, "its RQ job started but the worker never reported"))
            continue
        worker_state = str(s.get("state", "unknown"))
        in_flight = _int(s.get("in_flight"))
        if worker_state in DONE_STATES and not held:
            continue
        updated = _float(s.get("updated_at"))
        holders.append(_holder(worker, worker_state, held, in_flight, updated,
                               _why(crawl.status, worker_state, held, in_flight, updated, now)))
    return {"status": crawl.status, "since": since, "bound": transient_bound(crawl.status), "holders": holders}


def _holder(worker, worker_state, leases, in_flight, updated, why):
    return {"worker": worker, "state": worker_state, "leases": leases, "in_flight": in_flight,
            "last_heartbeat": updated, "why": why}


def _why(status, worker_state, leases, in_flight, updated, now):
    parts = []
    if worker_state in DONE_STATES:
        parts.append(f"it is {worker_state} but still holds {leases} leased request(s)")
    elif status == Crawl.PAUSING and worker_state == "paused":
        parts.append(f"it is paused but holds {leases} leased request(s)" if leases
                     else "it is paused; waiting for the crawl's in-flight count to reach 0")
    else:
        parts.append(f"it is still {worker_state}")
        if in_flight or leases:
            parts.append(f"{in_flight} download(s) in flight, {leases} leased request(s)")
    if updated is not None and now - updated > 5:
        parts.append(f"no heartbeat for {int(now - updated)} s")
    return "; ".join(parts)


def _int(value):
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


# ---------------------------------------------------------------------------------------------
# The web process's side (snapshots, the API's rates)


def rates(code, redis=None):
    """Latest pages/s and items/s the conductor measured for ``code``: ``{pages_per_s, items_per_s}``.

    Zeros when the conductor has not measured the crawl (not started, or its Redis state is gone).
    """
    raw = (redis or get_redis()).hget(keys.live(code), "rates")
    return _parse_rates(raw)


def _parse_domain_rates(raw):
    try:
        data = json.loads(raw) if raw else {}
        domains = data.get("domains") or {}
        return {str(d): float(v) for d, v in domains.items()}
    except (ValueError, AttributeError, TypeError):
        return {}


def _parse_rates(raw):
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = {}
    return {"pages_per_s": float(data.get("pages_per_s", 0.0)), "items_per_s": float(data.get("items_per_s", 0.0))}


def crawl_snapshot(crawl, items, redis=None):
    """The full picture of one crawl for a page that just connected.

    ``items`` are the newest stored items (newest first) as dicts ``{id, key, url, worker, data}``.
    An ended crawl's page works without Redis too: its history is in the database.
    """
    try:
        redis = redis or get_redis()
        reading = read(redis, [crawl])[crawl.code]
        pipe = redis.pipeline(transaction=False)
        pipe.hget(keys.live(crawl.code), "seq")
        pipe.lrange(keys.series(crawl.code), 0, -1)
        pipe.xrevrange(keys.log(crawl.code), count=SNAPSHOT_LOG)
        seq, raw_series, log_entries = pipe.execute()
        if not crawl.is_active and not reading:
            # An ended crawl: what is left in Redis (workers, status codes) until it is cleaned up.
            reading = state.read_counters(redis, crawl.code)
    except RedisError:
        if crawl.is_active:
            raise
        return _snapshot(crawl, {}, 0, items, [], [])
    series = []
    for raw in raw_series:
        try:
            series.append(json.loads(raw))
        except ValueError:
            continue
    return _snapshot(crawl, reading, seq, items, [log_message(i, f) for i, f in reversed(log_entries)], series)


def _snapshot(crawl, reading, seq, items, log_lines, series):
    kept = CrawlHistory.objects.filter(crawl=crawl).first() if not crawl.is_active or not series else None
    if kept is not None:
        # Redis lost it (cancelled, restarted, unreachable) or the run is over: what the database kept.
        if len(kept.series) > len(series):
            series = kept.series
        if not log_lines:
            log_lines = [log_message(line.get("id", ""), line) for line in kept.log[-SNAPSHOT_LOG:]]
    return {
        "type": "crawl.snapshot",
        "seq": int(seq or 0),
        "time": time.time(),
        **crawl_view(crawl, reading),
        "items": [item_message(i) for i in items],
        "log": log_lines,
        "series_fields": SERIES_FIELDS,
        "series": series,
    }


def overview_snapshot(crawls, redis=None):
    """Rows for every given crawl (one Redis round trip): live counters for active ones, final
    stats for ended ones."""
    readings = read(redis or get_redis(), crawls, detail=False)
    return {"type": "overview.snapshot", "time": time.time(),
            "crawls": [overview_row(crawl_view(c, readings[c.code])) for c in crawls]}


def recent_crawls(user, per_project):
    """The ``per_project`` newest crawls of each of ``user``'s projects, in one query."""
    rank = Window(RowNumber(), partition_by=[F("project_id")], order_by=[F("created_at").desc(), F("id").desc()])
    return list(Crawl.objects.for_user(user).select_related("project").annotate(rank=rank)
                .filter(rank__lte=per_project).order_by("project__name", "project_id", "-created_at", "-id"))


def crawl_page_context(crawl):
    """Context for the live crawl page: the same snapshot a websocket gets, for the first paint."""
    items = [
        {"id": i.pk, "key": i.key, "url": i.url, "worker": i.worker, "data": i.data}
        for i in crawl.items.order_by("-id")[:SNAPSHOT_ITEMS]
    ]
    try:
        snapshot = crawl_snapshot(crawl, items)
    except Exception:  # Redis down: the page still renders; the websocket will catch up
        log.warning("live snapshot of crawl %s failed", crawl.code, exc_info=True)
        snapshot = None
    return {"live": snapshot}


def overview_page_context(user, per_project=5):
    """Context for the overview: each project of ``user`` with its newest crawls and their rows.

    Two queries (projects, then every project's newest crawls at once) and one Redis round trip.
    """
    projects = list(Project.objects.for_user(user).order_by("name", "id"))
    crawls = recent_crawls(user, per_project)
    try:
        rows = {row["code"]: row for row in overview_snapshot(crawls)["crawls"]}
    except Exception:
        log.warning("live overview failed", exc_info=True)
        rows = {c.code: overview_row(crawl_view(c, {})) for c in crawls}
    by_project = {}
    for crawl in crawls:
        by_project.setdefault(crawl.project_id, []).append(crawl)
    for project in projects:
        project.recent_crawls = by_project.get(project.pk, [])
        project.rows = [rows[c.code] for c in project.recent_crawls]
    return {"projects": projects}
