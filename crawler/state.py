"""Reading a crawl's live counters, and preparing a crawl in Redis (launch)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError
from scrapy import Request
from scrapy.utils.request import RequestFingerprinter

from . import keys, politeness
from .counters import COUNTERS, STATS_FIELD
from .dupefilter import DEFAULT_BUCKETS, RedisDupeFilter
from .queue import request_to_json, return_leases

if TYPE_CHECKING:
    import redis

CONTROL_VALUES = ("run", "pause", "stop", "finish")

# Counters of the crawl-wide ``stats`` hash besides those the scripts keep (seen, popped, items,
# leased...): pushed by each worker's WorkerStats.
PAGES = "pages"
ERRORS = "errors"


def read_counters(redis: redis.Redis, code: str) -> dict[str, Any]:
    """Every counter the dashboard shows, in ONE pipelined round trip.

    Returns ``{queued, seen, pages, items, errors, items_too_large, in_flight, status: {"200": n, ...},
    workers: {id: state dict}, stats: {raw stats hash}, control, coverage: {field: percent}}``. ``in_flight`` is the number of
    leased requests (``stats.leased``, kept by the pop, release and return scripts).
    """
    pipe = redis.pipeline(transaction=False)
    queue_counter_reads(pipe, code)
    return parse_counters(pipe.execute())


# Commands :func:`queue_counter_reads` adds to a pipeline (to read many crawls in one round trip).
COUNTER_READS = 5 + politeness.READS


def queue_counter_reads(pipe: Any, code: str) -> None:
    """Add the reads of one crawl's counters to ``pipe``; :func:`parse_counters` reads their replies."""
    pipe.zcard(keys.queue(code))
    pipe.hgetall(keys.stats(code))
    pipe.hgetall(keys.workers(code))
    pipe.get(keys.control(code))
    pipe.hgetall(keys.fields(code))
    politeness.queue_reads(pipe, code)


def parse_counters(replies: list[Any]) -> dict[str, Any]:
    queued, stats, states, control, fields = replies[:5]
    stats = stats or {}
    parsed = {}
    for worker, raw in (states or {}).items():
        try:
            parsed[worker] = json.loads(raw)
        except ValueError:
            parsed[worker] = {"worker": worker, "state": "unknown"}
        if not isinstance(parsed[worker], dict):
            parsed[worker] = {"worker": worker, "state": "unknown"}

    def num(name: str) -> int:
        try:
            return int(stats.get(name, 0))
        except (TypeError, ValueError):
            return 0

    status = {}
    for k, v in stats.items():
        if k.startswith("status:"):
            try:
                status[k.split(":", 1)[1]] = int(v)
            except (TypeError, ValueError):
                continue
    counters: dict[str, Any] = {name: num(STATS_FIELD[name]) for name in COUNTERS if name in STATS_FIELD}
    counters["queued"] = int(queued or 0)
    counters = {name: counters[name] for name in COUNTERS}
    counters.update({
        "status": status,
        "workers": parsed,
        "stats": {k: (int(v) if v.lstrip("-").isdigit() else v) for k, v in stats.items()},
        "control": control or "",
        "coverage": coverage(fields or {}, counters["items"]),
        "politeness": politeness.parse_reads(replies[5:COUNTER_READS], stats),
    })
    return counters


def coverage(filled: dict[str, Any], items: int) -> dict[str, float]:
    """``{field: percent of items with a non-empty value}`` (one decimal) from the ``fields``
    hash the item script keeps; empty until an item is stored."""
    if items <= 0:
        return {}
    out = {}
    for name, count in filled.items():
        try:
            out[name] = round(min(100.0, 100.0 * int(count) / items), 1)
        except (TypeError, ValueError):
            continue
    return dict(sorted(out.items()))


def ensure_items_group(redis: redis.Redis, code: str) -> None:
    """The consumer group through which the dashboard moves items from the stream to its database."""
    try:
        redis.xgroup_create(keys.items(code), keys.ITEMS_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def set_control(redis: redis.Redis, code: str, value: str) -> None:
    """Set the control key and publish the change on its channel."""
    if value not in CONTROL_VALUES:
        raise ValueError(f"control must be one of {CONTROL_VALUES}, not {value!r}")
    pipe = redis.pipeline(transaction=True)
    pipe.set(keys.control(code), value)
    pipe.publish(keys.control_channel(code), value)
    pipe.execute()


def retire_workers(redis: redis.Redis, code: str, workers: list[str]) -> None:
    """Ask ``workers`` to leave the crawl (scale down); wakes them through the control channel."""
    if not workers:
        return
    pipe = redis.pipeline(transaction=True)
    pipe.sadd(keys.retired(code), *[keys.validate_worker(w) for w in workers])
    pipe.publish(keys.control_channel(code), "retire")
    pipe.execute()


def seed(redis: redis.Redis, code: str, urls: list[str], buckets: int = DEFAULT_BUCKETS) -> int:
    """Enqueue start URLs through the normal dedupe path; return how many were new."""
    fingerprinter = RequestFingerprinter()
    df = RedisDupeFilter(redis, code, buckets=buckets)
    entries = []
    for url in urls:
        request = Request(url)
        fp = fingerprinter.fingerprint(request)
        entries.append((fp, 0, request_to_json(request, fingerprint=fp)))
    return sum(df.enqueue(entries))


def launch(redis: redis.Redis, code: str, definition: dict, buckets: int = DEFAULT_BUCKETS) -> int:
    """Write a validated definition, seed its start URLs, set control to ``run``."""
    redis.set(keys.definition(code), json.dumps(definition))
    new = seed(redis, code, definition.get("start_urls", []), buckets=buckets)
    ensure_items_group(redis, code)
    set_control(redis, code, "run")
    return new


def delete_crawl(redis: redis.Redis, code: str) -> int:
    """Delete every key of a crawl (a cancelled crawl). With a site-wide budget, its leases are
    given back first: the shared in-flight counts outlive the crawl."""
    if redis.hget(keys.politeness(code), "site") in ("1", b"1"):
        for key in redis.scan_iter(match=keys.leases_pattern(code), count=1000):
            key = key if isinstance(key, str) else key.decode()
            return_leases(redis, code, key[len(keys.leases_pattern(code)) - 1:])
    names = list(redis.scan_iter(match=keys.crawl_pattern(code), count=1000))
    return redis.delete(*names) if names else 0
