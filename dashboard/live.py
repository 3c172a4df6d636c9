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
import json
import logging
import threading
import time
from collections import deque

from channels.layers import get_channel_layer

from crawler import keys, state
from dashboard import engine

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
# Scraped strings longer than this are cut in live messages (the item browser shows them whole).
CLIP = 300
SERIES_FIELDS = ["t", "pages", "items", "queued", "seen", "errors", "in_flight", "pages_per_s", "items_per_s"]
COUNTER_FIELDS = ("queued", "seen", "pages", "items", "errors", "items_too_large", "in_flight")


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
            results = await asyncio.gather(*(layer.group_send(g, m) for g, m in messages), return_exceptions=True)
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
    return {name: int(counters.get(name, 0) or 0) for name in COUNTER_FIELDS}


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
    return [round(now, 3)] + [int(counters.get(n, 0) or 0) for n in ("pages", "items", "queued", "seen", "errors", "in_flight")] + [
        rates["pages_per_s"], rates["items_per_s"]]


# ---------------------------------------------------------------------------------------------
# The conductor's side


class Publisher:
    """Keeps what the conductor needs between ticks (rates, last log id) and sends the updates."""

    def __init__(self, redis, broadcaster=None, clock=time.time):
        self.redis = redis
        self.broadcaster = broadcaster or get_broadcaster()
        self.clock = clock
        self.meter = RateMeter()
        self.log_cursor = {}  # code -> last log stream id sent
        self.overview = {}  # owner id -> {code: overview row} for this tick

    def publish(self, crawl, counters, new_items, stored=None):
        """Write rates, the sequence number and the series point; send one update to the crawl's group.

        Returns the message sent (tests and the overview use it).
        """
        code = crawl.code
        now = self.clock()
        rates = self.meter.update(code, counters.get("pages", 0), counters.get("items", 0))
        live_key = keys.live(code)
        log_from = self.log_cursor.get(code)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(live_key, "seq", 1)
        pipe.hmget(live_key, "interval", "last_point")
        pipe.hset(live_key, "rates", json.dumps({**rates, "at": now}))
        if log_from is None:
            pipe.xrevrange(keys.log(code), count=1)
        else:
            pipe.xrange(keys.log(code), min="(" + log_from, count=LOG_PER_UPDATE)
        seq, (interval, last_point), _, log_entries = pipe.execute()

        new_point = None
        interval = _float(interval) or SERIES_INTERVAL
        last_point = _float(last_point)
        finished = crawl.status in ("finished", "stopped", "failed", "cancelled")
        if finished:
            rates = {"pages_per_s": 0.0, "items_per_s": 0.0}
        if last_point is None or now - last_point >= interval or finished:
            new_point = point(now, counters, rates)
            self._append_point(code, new_point, interval)

        lines = []
        if log_from is None:
            # First sight of this crawl by this conductor: the page's snapshot has older lines.
            if log_entries:
                self.log_cursor[code] = log_entries[0][0]
            else:
                self.log_cursor[code] = "0-0"
        else:
            lines = [log_message(i, f) for i, f in log_entries]
            if log_entries:
                self.log_cursor[code] = log_entries[-1][0]

        items = [item_message(i) for i in new_items[-ITEMS_PER_UPDATE:]]
        message = {
            "type": "crawl.update",
            "seq": int(seq),
            "code": code,
            "time": now,
            "status": crawl.status,
            "reason": crawl.reason,
            "counters": counters_message(counters),
            "rates": rates,
            "progress": progress(counters),
            "status_codes": counters.get("status", {}),
            "workers": workers_message(engine.with_waiting_workers(crawl, counters.get("workers", {}))),
            "items": list(reversed(items)),  # newest first
            "items_new": len(new_items) if stored is None else stored,
            "log": lines,
            "point": new_point,
        }
        self.overview.setdefault(crawl.project.owner_id, {})[code] = overview_row(crawl, counters, rates)
        self.broadcaster.send([(keys.group(code), encoded(message))])
        return message

    def _append_point(self, code, new_point, interval):
        series_key = keys.series(code)
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(series_key, json.dumps(new_point))
        pipe.hset(keys.live(code), "last_point", new_point[0])
        length, _ = pipe.execute()
        if length >= SERIES_CAP:
            # Thin out: keep every other point (always the newest), double the interval.
            points = self.redis.lrange(series_key, 0, -1)
            kept = points[::-1][::2][::-1]
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(series_key)
            pipe.rpush(series_key, *kept)
            pipe.hset(keys.live(code), "interval", interval * 2)
            pipe.execute()

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
        for code in list(self.log_cursor):
            if code not in active_codes:
                del self.log_cursor[code]


def encoded(message):
    """The channel-layer event for ``message``: JSON encoded once here, not once per open page."""
    return {"type": message["type"], "text": json.dumps(message, separators=(",", ":"))}


def overview_row(crawl, counters, rates):
    return {
        "code": crawl.code,
        "project": crawl.project_id,
        "project_name": crawl.project.name,
        "status": crawl.status,
        "status_display": crawl.get_status_display(),
        "counters": counters_message(counters),
        "rates": rates,
        "url": crawl.get_absolute_url(),
    }


# ---------------------------------------------------------------------------------------------
# The web process's side (snapshots, the API's rates)


def rates(code, redis=None):
    """Latest pages/s and items/s the conductor measured for ``code``: ``{pages_per_s, items_per_s}``.

    Zeros when the conductor has not measured the crawl (not started, or its Redis state is gone).
    """
    from dashboard.redis import get_redis

    raw = (redis or get_redis()).hget(keys.live(code), "rates")
    return _parse_rates(raw)


def _parse_rates(raw):
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = {}
    return {"pages_per_s": float(data.get("pages_per_s", 0.0)), "items_per_s": float(data.get("items_per_s", 0.0))}


def read_live(redis, code):
    """Counters (one round trip) plus this module's live state (a second round trip)."""
    counters = state.read_counters(redis, code)
    pipe = redis.pipeline(transaction=False)
    pipe.hmget(keys.live(code), "seq", "rates")
    pipe.lrange(keys.series(code), 0, -1)
    pipe.xrevrange(keys.log(code), count=SNAPSHOT_LOG)
    (seq, raw_rates), raw_series, log_entries = pipe.execute()
    series = []
    for raw in raw_series:
        try:
            series.append(json.loads(raw))
        except ValueError:
            continue
    return counters, int(seq or 0), _parse_rates(raw_rates), series, log_entries


def crawl_snapshot(crawl, items, redis=None):
    """The full picture of one crawl for a page that just connected.

    ``items`` are the newest stored items (newest first) as dicts ``{id, key, url, worker, data}``.
    For an ended crawl whose Redis state is gone, counters come from ``Crawl.stats``.
    """
    from dashboard.redis import get_redis

    redis = redis or get_redis()
    counters, seq, current_rates, series, log_entries = read_live(redis, crawl.code)
    if crawl.status not in crawl.ACTIVE and crawl.stats and not counters["stats"]:
        counters = {**counters, **{k: crawl.stats.get(k, 0) for k in COUNTER_FIELDS},
                    "status": crawl.stats.get("status", {})}
    if crawl.status not in crawl.ACTIVE:
        current_rates = {"pages_per_s": 0.0, "items_per_s": 0.0}
    return {
        "type": "crawl.snapshot",
        "seq": seq,
        "code": crawl.code,
        "time": time.time(),
        "status": crawl.status,
        "reason": crawl.reason,
        "counters": counters_message(counters),
        "rates": current_rates,
        "progress": progress(counters),
        "status_codes": counters.get("status", {}),
        "workers": workers_message(engine.with_waiting_workers(crawl, counters.get("workers", {}))),
        "workers_asked": crawl.workers,
        "items": [item_message(i) for i in items],
        "log": [log_message(i, f) for i, f in reversed(log_entries)],
        "series_fields": SERIES_FIELDS,
        "series": series,
    }


def overview_snapshot(crawls, redis=None):
    """Rows for every given crawl: live counters for active ones, final stats for ended ones."""
    from dashboard.redis import get_redis

    redis = redis or get_redis()
    rows = []
    for crawl in crawls:
        if crawl.is_active:
            counters = state.read_counters(redis, crawl.code)
            current_rates = rates(crawl.code, redis)
        else:
            counters = {k: crawl.stats.get(k, 0) for k in COUNTER_FIELDS} if crawl.stats else {}
            current_rates = {"pages_per_s": 0.0, "items_per_s": 0.0}
        rows.append(overview_row(crawl, counters, current_rates))
    return {"type": "overview.snapshot", "time": time.time(), "crawls": rows}


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
    """Context for the overview: each project of ``user`` with its newest crawls and their rows."""
    from dashboard.models import Project

    projects = list(Project.objects.for_user(user).order_by("name", "id"))
    crawls = []
    for project in projects:
        project.recent_crawls = list(project.crawls.select_related("project").order_by("-created_at", "-id")[:per_project])
        crawls.extend(project.recent_crawls)
    try:
        rows = {row["code"]: row for row in overview_snapshot(crawls)["crawls"]}
    except Exception:
        log.warning("live overview failed", exc_info=True)
        rows = {c.code: overview_row(c, {}, {"pages_per_s": 0.0, "items_per_s": 0.0}) for c in crawls}
    for project in projects:
        project.rows = [rows[c.code] for c in project.recent_crawls]
    return {"projects": projects}
