"""Run history: what a crawl leaves in the database so that it outlives Redis.

A crawl's time series, status codes, error counts and log lines live in Redis while it runs
(dashboard/live.py, crawler/extensions.py). The conductor copies them into the crawl's
:class:`~dashboard.models.CrawlHistory` every ``HISTORY_INTERVAL`` seconds while the crawl is
active (:func:`persist_many`, one Redis round trip and one row write per due crawl) and once more
when it ends or is cancelled (:func:`record_run`). What Redis lost meanwhile (a restart without
an append-only file) is kept: Redis's newer points are appended to the stored ones.

Runs of one project are listed with :func:`project_runs`; two runs are compared with
:func:`compare`.
"""

from __future__ import annotations

import json
import logging
import time

from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from crawler import keys, state
from crawler.counters import COUNTERS, SERIES
from dashboard import live
from dashboard.ingest import INVALID, REPLACED
from dashboard.models import Crawl, CrawlHistory, Item
from dashboard.redis import get_redis

log = logging.getLogger(__name__)

# Seconds between two copies of an active crawl's history (settings.HISTORY_INTERVAL overrides).
HISTORY_INTERVAL = 20.0
# Warning and error log lines kept per run.
LOG_LINES = 500
# Points kept per run: past this, every other point is dropped (the chart still covers the run).
SERIES_MAX = 2400
# Error counts by type, from the crawl's stats hash (crawler/extensions.py writes them).
ERROR_FIELDS = {"errors:download": "download", "errors:spider": "spider", "blocked_address": "blocked_address",
                "blocked_scheme": "blocked_scheme", "robots_forbidden": "robots_forbidden",
                "items_too_large": "items_too_large"}
# Item keys listed per side in a comparison (the counts are complete).
COMPARE_LIST = 50


# -- capture (Redis) and save (database) ---------------------------------------------------------


def _queue_reads(pipe, code):
    state.queue_counter_reads(pipe, code)
    pipe.lrange(keys.series(code), 0, -1)
    pipe.xrevrange(keys.log(code), count=LOG_LINES)


READS = state.COUNTER_READS + 2


def _parse(replies):
    counters = state.parse_counters(replies[:state.COUNTER_READS])
    raw_series, raw_log = replies[state.COUNTER_READS:READS]
    series = []
    for raw in raw_series or ():
        try:
            series.append(json.loads(raw))
        except ValueError:
            continue
    lines = [live.log_message(entry_id, f) for entry_id, f in reversed(raw_log or [])]
    return {"counters": counters, "series": series, "log": lines}


def errors_by_type(counters):
    """``{type: count}``: HTTP 4xx and 5xx responses, download and spider errors, refused requests."""
    raw = counters.get("stats", {})
    found = {}
    for code, n in counters.get("status", {}).items():
        if code[:1] in ("4", "5") and n:
            found[f"http_{code[0]}xx"] = found.get(f"http_{code[0]}xx", 0) + n
    for field, name in ERROR_FIELDS.items():
        value = raw.get(field, 0)
        if isinstance(value, int) and value:
            found[name] = value
    return found


def _merge_series(old, new):
    """Stored points older than Redis's first one, then Redis's (Redis may have lost the start)."""
    if not new:
        return old
    first = new[0][0] if new[0] else 0
    merged = [p for p in old if p and p[0] < first] + new
    while len(merged) > SERIES_MAX:
        merged = merged[::-1][::2][::-1]
    return merged


def _merge_log(old, new):
    seen = {line["id"] for line in new}
    merged = [line for line in old if line.get("id") not in seen] + new
    merged.sort(key=lambda line: (line.get("time") or 0))
    return merged[-LOG_LINES:]


def save(crawl, captured):
    """Merge ``captured`` (a :func:`_parse` result) into the crawl's history row."""
    counters = captured["counters"]
    has_redis = bool(counters.get("stats") or captured["series"])
    with transaction.atomic():
        row, _ = CrawlHistory.objects.select_for_update().get_or_create(crawl=crawl)
        fields = ["updated_at"]
        row.updated_at = timezone.now()
        if captured["series"]:
            row.series = _merge_series(row.series, captured["series"])
            row.series_fields = list(SERIES)
            fields += ["series", "series_fields"]
        if captured["log"]:
            row.log = _merge_log(row.log, captured["log"])
            fields.append("log")
        if has_redis:
            row.counters = {**{name: counters[name] for name in COUNTERS},
                            INVALID: int(counters["stats"].get(INVALID, 0) or 0),
                            REPLACED: int(counters["stats"].get(REPLACED, 0) or 0)}
            row.status_codes = counters["status"]
            row.errors = errors_by_type(counters)
            fields += ["counters", "status_codes", "errors"]
        row.save(update_fields=fields)
    return row


def persist_many(redis, crawls):
    """Copy the history of ``crawls`` from Redis (one round trip) to the database."""
    if not crawls:
        return
    pipe = redis.pipeline(transaction=False)
    for crawl in crawls:
        _queue_reads(pipe, crawl.code)
    replies = pipe.execute()
    for n, crawl in enumerate(crawls):
        save(crawl, _parse(replies[n * READS:(n + 1) * READS]))


class Keeper:
    """The conductor's periodic copy: each active crawl at most once per ``interval`` seconds."""

    def __init__(self, redis, interval=HISTORY_INTERVAL, clock=time.monotonic):
        self.redis = redis
        self.interval = interval
        self.clock = clock
        self.last = {}  # code -> when its history was last copied

    def tick(self, crawls):
        now = self.clock()
        due = [c for c in crawls if now - self.last.setdefault(c.code, now) >= self.interval]
        if not due:
            return []
        try:
            persist_many(self.redis, due)
        except Exception:
            log.exception("history: periodic copy failed")  # never breaks the conductor's tick
        for crawl in due:
            self.last[crawl.code] = now
        return due

    def forget(self, active_codes):
        self.last = {code: t for code, t in self.last.items() if code in active_codes}


def record_run(crawl, redis=None):
    """The run ended (finished, stopped, workers lost, cancelled, force-stopped): store its
    history and put the final ``invalid`` (exact, from the items) and ``replaced`` counts and the
    error counts by type in ``crawl.stats``. Call it before the crawl's Redis state is deleted."""
    try:
        redis = redis or get_redis()
        pipe = redis.pipeline(transaction=False)
        _queue_reads(pipe, crawl.code)
        captured = _parse(pipe.execute())
    except Exception:
        log.warning("history of crawl %s: Redis unreadable, keeping what is stored", crawl.code, exc_info=True)
        captured = {"counters": {"stats": {}, "status": {}}, "series": [], "log": []}
    row = save(crawl, captured)
    with transaction.atomic():
        locked = Crawl.objects.select_for_update().get(pk=crawl.pk)
        stats = dict(locked.stats or {})
        if not any(name in stats for name in COUNTERS) and row.counters:
            # Ended without final counters (cancelled while paused): those of its history.
            stats.update({name: row.counters.get(name, 0) for name in COUNTERS}, status=row.status_codes)
        if "coverage" not in stats and captured["counters"].get("coverage"):
            stats["coverage"] = captured["counters"]["coverage"]  # (idem) what workers counted in Redis
        stats[INVALID] = crawl.items.filter(invalid=True).count()
        stats[REPLACED] = int(row.counters.get(REPLACED, stats.get(REPLACED, 0)) or 0)
        stats["errors_by_type"] = row.errors
        Crawl.objects.filter(pk=crawl.pk).update(stats=stats)
    crawl.stats = stats
    return row


def stored(crawl):
    """The crawl's history row, or None."""
    try:
        return crawl.history
    except CrawlHistory.DoesNotExist:
        return None


# -- runs of a project, and comparing two runs ---------------------------------------------------


def run_row(crawl, reading=None):
    """One run in a project's list of runs (and in the API). ``reading``: the live reading of an
    active run (:func:`dashboard.live.read`): its numbers then come from Redis, as on the
    overview, instead of the final stats it does not have yet."""
    if crawl.is_active and reading:
        view = live.crawl_view(crawl, reading)
        numbers = {**view["counters"], INVALID: view["invalid"]}
    else:
        numbers = crawl.stats or {}
    duration = crawl.duration
    return {
        "code": crawl.code,
        "url": crawl.get_absolute_url(),
        "status": crawl.status,
        "status_display": crawl.get_status_display(),
        "trigger": crawl.trigger,
        "trigger_display": crawl.get_trigger_display(),
        "schedule_url": crawl.schedule.get_absolute_url() if crawl.schedule_id else None,
        "created_at": crawl.created_at,
        "duration_s": round(duration.total_seconds(), 1) if duration else None,
        "live": bool(crawl.is_active and reading),
        "pages": int(numbers.get("pages", 0) or 0),
        "items": int(numbers.get("items", 0) or 0),
        "errors": int(numbers.get("errors", 0) or 0),
        "invalid": int(numbers.get(INVALID, 0) or 0),
    }


def project_runs(project, limit=100, redis=None):
    """The project's newest ``limit`` runs, newest first. Active runs show their live numbers:
    all of them read in one pipelined Redis round trip (:func:`dashboard.live.read`), the same
    reading the overview uses; ended runs show their final stats. Redis unreachable: active runs
    show what is stored."""
    crawls = list(project.crawls.select_related("project", "schedule").order_by("-created_at", "-id")[:limit])
    active = [c for c in crawls if c.is_active]
    readings = {}
    if active:
        try:
            readings = live.read(redis or get_redis(), active, detail=False)
        except Exception:
            log.warning("live numbers of the runs of project %s: Redis unreadable", project.code, exc_info=True)
    return [run_row(c, readings.get(c.code)) for c in crawls]


def previous_finished(crawl):
    """The project's last finished run before ``crawl`` (None if there is none)."""
    return (Crawl.objects.filter(project_id=crawl.project_id, status=Crawl.FINISHED, created_at__lt=crawl.created_at)
            .exclude(pk=crawl.pk).order_by("-created_at", "-id").first())


def not_in(items, other):
    """``items`` whose item key (``ident``) is not among ``other`` crawl's items."""
    return items.filter(~Exists(Item.objects.filter(crawl=other, ident=OuterRef("ident"))))


def _side(crawl):
    stats = crawl.stats or {}
    row = stored(crawl)
    counters = {name: int(stats.get(name, (row.counters if row else {}).get(name, 0)) or 0) for name in COUNTERS}
    duration = crawl.duration.total_seconds() if crawl.duration else None
    rates = {
        "pages_per_s": round(counters["pages"] / duration, 2) if duration else 0.0,
        "items_per_s": round(counters["items"] / duration, 2) if duration else 0.0,
    }
    return {
        "code": crawl.code,
        "status": crawl.status,
        "trigger": crawl.trigger,
        "started_at": crawl.started_at,
        "finished_at": crawl.finished_at,
        "duration_s": round(duration, 1) if duration else None,
        "counters": {**counters, INVALID: int(stats.get(INVALID, 0) or 0), REPLACED: int(stats.get(REPLACED, 0) or 0)},
        "rates": rates,
        "status_codes": stats.get("status") or (row.status_codes if row else {}),
        "errors_by_type": stats.get("errors_by_type") or (row.errors if row else {}),
        "coverage": stats.get("coverage", {}),
    }


def _keys(items, key_fields, limit):
    rows = []
    seen = set()
    for ident, url, data in items.order_by("id").values_list("ident", "url", "data").iterator(chunk_size=500):
        if ident in seen:
            continue
        seen.add(ident)
        entry = {"key": ident, "url": url}
        if key_fields:
            entry["values"] = {name: (data or {}).get(name) for name in key_fields}
        rows.append(entry)
        if len(rows) >= limit:
            break
    return rows


def compare(crawl, other, limit=COMPARE_LIST):
    """``crawl`` against ``other`` (usually an earlier run): both sides' numbers, and the item
    keys that appeared (in ``crawl`` only) or disappeared (in ``other`` only): distinct counts and
    the first ``limit`` of each."""
    key_fields = list((crawl.definition or {}).get("unique_key") or [])
    appeared = not_in(crawl.items.all(), other)
    disappeared = not_in(other.items.all(), crawl)
    return {
        "crawl": _side(crawl),
        "other": _side(other),
        "item_key": ("unique key: " + ", ".join(key_fields)) if key_fields else "url",
        "appeared": {"count": appeared.values("ident").distinct().count(),
                     "first": _keys(appeared, key_fields, limit)},
        "disappeared": {"count": disappeared.values("ident").distinct().count(),
                        "first": _keys(disappeared, key_fields, limit)},
    }


def compare_rows(result):
    """A comparison as ``(label, this run, other run)`` rows for the compare page."""
    a, b = result["crawl"], result["other"]
    rows = [("status", a["status"], b["status"]), ("trigger", a["trigger"], b["trigger"]),
            ("duration (s)", a["duration_s"], b["duration_s"])]
    rows += [(name, a["counters"].get(name, 0), b["counters"].get(name, 0)) for name in a["counters"]]
    rows += [(name.replace("_", " "), a["rates"][name], b["rates"][name]) for name in a["rates"]]
    for key, label, zero in (("status_codes", "HTTP {}", 0), ("errors_by_type", "errors: {}", 0),
                             ("coverage", "coverage of {} (%)", None)):
        for name in sorted(set(a[key]) | set(b[key])):
            rows.append((label.format(name), a[key].get(name, zero), b[key].get(name, zero)))
    return rows
