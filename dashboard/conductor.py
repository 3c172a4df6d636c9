"""The conductor: the one loop that watches every active crawl.

Only one conductor is active at a time: it holds a Redis lock with a TTL and renews it every
tick. A second conductor waits as a standby and takes over when the lock lapses.
"""

import json
import logging
import os
import socket
import time

from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.utils import timezone
from redis.exceptions import LockError, RedisError

from crawler import keys, leases, state
from dashboard import engine, live
from dashboard.models import Crawl, Item
from dashboard.redis import get_redis

# Worker states after which a worker does no more work.
DONE_STATES = ("finished", "failed", "dead")

log = logging.getLogger(__name__)


class Conductor:
    def __init__(self, redis=None, tick=None, lock_ttl=None):
        self.redis = redis or get_redis()
        self.tick_seconds = tick if tick is not None else settings.CONDUCTOR_TICK
        self.lock = self.redis.lock(
            keys.conductor_lock(),
            timeout=lock_ttl if lock_ttl is not None else settings.CONDUCTOR_LOCK_TTL,
            thread_local=False,
        )
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.active = False
        self.idle_since = {}  # crawl code -> monotonic time its work ran out
        self.live = live.Publisher(self.redis)
        self.drained = {}  # crawl code -> (count, newest items) stored since its last live update

    def hold_lock(self):
        """Acquire or renew the lock; return whether this process is the active conductor."""
        try:
            if self.active:
                self.lock.reacquire()
            else:
                self.active = self.lock.acquire(blocking=False)
                if self.active:
                    log.info("conductor %s is active", self.name)
        except LockError:
            log.warning("conductor %s lost its lock; standing by", self.name)
            self.active = False
        return self.active

    def release(self):
        if self.active:
            try:
                self.lock.release()
            except LockError:
                pass
            self.active = False

    def tick(self):
        """One pass over every active crawl."""
        crawls = list(Crawl.objects.active().select_related("project"))
        for crawl in crawls:
            try:
                self.watch(crawl)
            except RedisError:
                raise
            except Exception:
                log.exception("conductor: crawl %s", crawl.code)
        try:
            self.live.publish_overview()
        except Exception:
            log.exception("conductor: overview update")
        self.sweep_cancelled()
        # Forget what was kept for crawls that ended (watch() moved their status in place).
        active = {crawl.code for crawl in crawls if crawl.is_active}
        self.idle_since = {code: t for code, t in self.idle_since.items() if code in active}
        self.drained = {code: d for code, d in self.drained.items() if code in active}
        self.live.forget(active)

    def sweep_cancelled(self):
        """A worker still closing when its crawl was cancelled may write its last state after the
        purge: delete such leftovers of recently cancelled crawls."""
        since = timezone.now() - timezone.timedelta(minutes=2)
        for code in Crawl.objects.filter(status=Crawl.CANCELLED, finished_at__gte=since).values_list("code", flat=True):
            if self.redis.exists(keys.workers(code), keys.control(code)):
                state.delete_crawl(self.redis, code)

    def watch(self, crawl):
        if crawl.status == Crawl.PENDING:
            return  # its launch is under way (after commit)
        self.drain_items(crawl)
        leases.reap(self.redis, crawl.code)
        counters = state.read_counters(self.redis, crawl.code)
        if crawl.status == Crawl.RUNNING:
            self.check_running(crawl, counters)
        elif crawl.status == Crawl.FINISHING:
            self.check_finishing(crawl, counters)
        elif crawl.status == Crawl.PAUSING:
            self.check_pausing(crawl, counters)
        elif crawl.status == Crawl.STOPPING:
            self.check_stopping(crawl, counters)
        self.publish(crawl, counters)
        return counters

    def publish(self, crawl, counters):
        """One live update to the crawl's browsers (dashboard/live.py); never breaks the tick."""
        count, items = self.drained.pop(crawl.code, (0, []))
        try:
            self.live.publish(crawl, counters, items, stored=count)
        except Exception:
            log.exception("conductor: live update of crawl %s", crawl.code)

    def drain_items(self, crawl):
        """Move items from the crawl's stream to the database: insert idempotently, then ack."""
        stream = keys.items(crawl.code)
        batch = settings.CONDUCTOR_ITEM_BATCH
        try:
            # Entries read before but never acked (a conductor died mid-way) come first.
            entries = self.redis.xreadgroup(engine.ITEMS_GROUP, "conductor", {stream: "0"}, count=batch)
            if not entries or not entries[0][1]:
                entries = self.redis.xreadgroup(engine.ITEMS_GROUP, "conductor", {stream: ">"}, count=batch)
        except RedisError as exc:
            if "NOGROUP" not in str(exc):
                raise
            engine.ensure_items_group(self.redis, crawl.code)
            return 0
        if not entries or not entries[0][1]:
            return 0
        messages = entries[0][1]
        now = timezone.now()
        items = []
        for _id, fields in messages:
            if not fields:
                continue  # deleted entry
            try:
                data = without_lone_surrogates(json.loads(fields.get("data", "{}")))
            except ValueError:
                data = {"_raw": fields.get("data", "")}
            items.append(Item(
                crawl=crawl, key=fields.get("key", _id)[:100], url=fields.get("url", ""),
                data=data, worker=fields.get("worker", "")[:64], created_at=now,
            ))
        Item.objects.bulk_create(items, ignore_conflicts=True, batch_size=500)
        count, newest = self.drained.get(crawl.code, (0, []))
        newest = newest + [
            {"id": _id, "key": item.key, "url": item.url, "worker": item.worker, "data": item.data}
            for (_id, _fields), item in zip([m for m in messages if m[1]], items)
        ]
        self.drained[crawl.code] = (count + len(items), newest[-live.ITEMS_PER_UPDATE:])
        ids = [message_id for message_id, _fields in messages]
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(stream, engine.ITEMS_GROUP, *ids)
        pipe.xdel(stream, *ids)
        pipe.execute()
        return len(items)

    def check_running(self, crawl, counters):
        """Finish the crawl when a limit is hit or its work has run out for the grace period."""
        limits = crawl.limits()
        reason = ""
        if limits.get("max_duration") and crawl.duration and crawl.duration.total_seconds() >= limits["max_duration"]:
            reason = f"duration limit of {limits['max_duration']} s reached"
        elif limits.get("max_items") and counters["items"] >= limits["max_items"]:
            reason = f"item limit of {limits['max_items']} reached"
        if reason:
            self.begin_finishing(crawl, reason)
            return
        workers = counters["workers"]
        page_limit_hit = bool(limits.get("max_pages")) and counters["stats"].get("popped", 0) >= limits["max_pages"]
        out_of_work = (counters["queued"] == 0 or page_limit_hit) and counters["in_flight"] == 0
        starting = any(w.get("state") == "starting" for w in workers.values())
        if not out_of_work or starting or not workers:
            self.idle_since.pop(crawl.code, None)
            if workers and all(w.get("state") in DONE_STATES for w in workers.values()) and len(workers) >= crawl.launched_workers:
                self.fail_without_workers(crawl, workers)
            return
        since = self.idle_since.setdefault(crawl.code, time.monotonic())
        if time.monotonic() - since >= settings.CRAWL_IDLE_GRACE:
            if page_limit_hit:
                self.begin_finishing(crawl, f"page limit of {limits['max_pages']} reached")
            else:
                self.begin_finishing(crawl, "")

    def begin_finishing(self, crawl, reason):
        log.info("crawl %s finishing%s", crawl.code, f": {reason}" if reason else "")
        state.set_control(self.redis, crawl.code, "finish")
        engine.cancel_waiting_jobs(crawl)
        crawl.transition(Crawl.FINISHING, reason=reason)
        self.idle_since.pop(crawl.code, None)

    def check_finishing(self, crawl, counters):
        """Finished once no worker is left working and every item is in the database."""
        if self.working_workers(crawl, counters):
            return
        self.drain_all(crawl)
        crawl.finish(Crawl.FINISHED, stats=final_stats(crawl, counters))

    def fail_without_workers(self, crawl, workers):
        """Every worker is gone with work left (killed, crashed, or `make run` was stopped).

        The queue and dedupe are intact, so the crawl becomes ``stopped``: resuming it launches
        workers again and it carries on where it was.
        """
        messages = sorted({w.get("message") or w.get("state") for w in workers.values()} - {None})
        # A worker job still queued in RQ must not start crawling a stopped crawl later on.
        state.set_control(self.redis, crawl.code, "stop")
        engine.cancel_waiting_jobs(crawl)
        crawl.transition(Crawl.STOPPING)
        self.drain_all(crawl)
        counters = state.read_counters(self.redis, crawl.code)
        crawl.finish(
            Crawl.STOPPED,
            stats=final_stats(crawl, counters),
            reason="Every worker stopped before the crawl was done (" + "; ".join(messages) + "). Resume to continue.",
        )

    def working_workers(self, crawl, counters):
        """Workers still doing something, including jobs an RQ worker has started but not reported."""
        workers = counters["workers"]
        statuses = engine.job_statuses(crawl)
        return [w for w, s in workers.items() if s.get("state") not in DONE_STATES] + [
            w for w, s in statuses.items() if s == "started" and w not in workers
        ]

    def check_pausing(self, crawl, counters):
        """Paused once no live worker has anything in flight."""
        busy = [
            w for w, s in counters["workers"].items()
            if s.get("state") not in DONE_STATES and s.get("state") != "paused"
        ]
        if not busy and counters["in_flight"] == 0:
            crawl.transition(Crawl.PAUSED)

    def check_stopping(self, crawl, counters):
        """Stopped once every worker has drained and left; queue and dedupe stay for a resume."""
        if self.working_workers(crawl, counters):
            return
        engine.cancel_waiting_jobs(crawl)
        self.drain_all(crawl)
        counters = state.read_counters(self.redis, crawl.code)
        crawl.finish(Crawl.STOPPED, stats=final_stats(crawl, counters))

    def drain_all(self, crawl):
        while self.drain_items(crawl):
            pass

    def run(self, should_stop, max_ticks=None):
        ticks = 0
        try:
            while not should_stop():
                started = time.monotonic()
                try:
                    if self.hold_lock():
                        self.tick()
                except RedisError as exc:
                    # Redis restarting or unreachable: wait and try again, keep nothing half done.
                    log.warning("conductor tick failed: %s", exc)
                    self.active = False
                except DatabaseError as exc:
                    # A locked SQLite or a dropped PostgreSQL connection: the next tick starts afresh.
                    log.warning("conductor tick failed on the database: %s", exc)
                    close_old_connections()
                ticks += 1
                if max_ticks is not None and ticks >= max_ticks:
                    break
                elapsed = time.monotonic() - started
                _sleep_until(should_stop, max(0.0, self.tick_seconds - elapsed))
        finally:
            self.release()


def without_lone_surrogates(data):
    """A custom spider may scrape a lone UTF-16 surrogate (JSON can carry it as an escape); no
    UTF-8 export could then write the item. Such characters become U+FFFD before storage."""
    if isinstance(data, str):
        try:
            data.encode("utf-8")
            return data
        except UnicodeEncodeError:
            return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in data)
    if isinstance(data, dict):
        return {without_lone_surrogates(k): without_lone_surrogates(v) for k, v in data.items()}
    if isinstance(data, list):
        return [without_lone_surrogates(v) for v in data]
    return data


def final_stats(crawl, counters):
    stats = {name: counters.get(name, 0) for name in ("queued", "seen", "pages", "items", "errors", "items_too_large", "in_flight")}
    stats["status"] = counters["status"]
    stats["items_stored"] = crawl.items.count()
    stats["workers"] = len(counters["workers"])
    for name in ("blocked_address", "blocked_scheme"):  # refused by the network policy (crawler.netguard)
        stats[name] = int(counters["stats"].get(name, 0))
    return stats


def _sleep_until(should_stop, seconds):
    deadline = time.monotonic() + seconds
    while not should_stop():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))
