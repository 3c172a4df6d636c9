"""The conductor: the one loop that watches every active crawl and fires schedules.

Only one conductor is active at a time: it holds a Redis lock with a TTL and renews it every
tick. A second conductor waits as a standby and takes over when the lock lapses.
"""

import logging
import os
import socket
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.utils import timezone
from redis.exceptions import LockError, RedisError

from crawler import keys, leases, state
from crawler.counters import DONE_STATES
from dashboard import engine, history, ingest, jobs, live, monitors, schedules
from dashboard.models import Crawl
from dashboard.redis import get_redis

log = logging.getLogger(__name__)


@dataclass
class Observation:
    """What the conductor saw of one crawl in one tick, and what it decided from it.

    ``decision`` is an observed action of ``Crawl.LIFECYCLE`` (``paused``, ``stopped``, ``finish``,
    ``finished``, ``workers_lost``) or None. Applying it is a compare-and-set from the statuses the
    table allows: a user's action that landed after the observation wins.
    """

    crawl: Crawl
    counters: dict
    items: list = field(default_factory=list)
    decision: str | None = None
    reason: str = ""
    stall: str | None = None  # a reason: flag the crawl as stalled; "": clear the flag; None: leave it


class Conductor:
    def __init__(self, redis=None, tick=None, lock_ttl=None, clock=None):
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
        self.progress = {}  # crawl code -> (progress signature, monotonic time it last changed)
        self.live = live.Publisher(self.redis)
        self.history = history.Keeper(self.redis, interval=settings.HISTORY_INTERVAL)
        self.seen = set()  # crawls whose unacked items this conductor has recovered
        self.clock = clock or timezone.now  # schedules' "now"; tests pass their own clock

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
        """One pass over every active crawl: read them all, then observe, apply and publish each.

        Reads are batched across crawls (one round trip for every item stream, one database
        transaction for the items, one round trip for every crawl's counters, one for every
        worker's heartbeat), so a tick costs a handful of round trips whatever the number of crawls.
        """
        self.fire_schedules()  # first, so a fire launches within a tick of its due time
        crawls = list(Crawl.objects.active().select_related("project"))
        watched = [crawl for crawl in crawls if crawl.status != Crawl.PENDING]  # pending: launch under way
        items = ingest.drain_many(self.redis, watched, recover={c.code for c in watched} - self.seen)
        self.seen = {c.code for c in watched}
        readings = self.read(watched)
        observations = []
        for crawl in watched:
            try:
                observation = self.observe(crawl, readings[crawl.code], items[crawl.code])
                self.apply(observation)
                observations.append(observation)
            except RedisError:
                raise
            except Exception:
                log.exception("conductor: crawl %s", crawl.code)
        self.publish(observations)
        try:
            self.live.publish_overview()
        except Exception:
            log.exception("conductor: overview update")
        self.history.tick([o.crawl for o in observations if o.crawl.is_active])
        self.sweep_cancelled()
        # Forget what was kept for crawls that ended.
        active = {crawl.code for crawl in crawls if crawl.is_active}
        self.idle_since = {code: t for code, t in self.idle_since.items() if code in active}
        self.progress = {code: p for code, p in self.progress.items() if code in active}
        self.live.forget(active)
        self.history.forget(active)

    def fire_schedules(self):
        """Fire due schedules, start queued runs, stop runs past their max run time
        (dashboard/schedules.py); a failure is logged and retried next tick, from the database."""
        try:
            schedules.step(self.clock())
        except (RedisError, DatabaseError):
            raise
        except Exception:
            log.exception("conductor: schedules")

    def read(self, crawls):
        """Counters of every crawl (one round trip), after reaping the workers whose heartbeat
        expired (one round trip to check them all; a reaped crawl is read again)."""
        if not crawls:
            return {}
        readings = self._read_counters(crawls)
        candidates = {c.code: set(readings[c.code]["workers"]) | set(jobs.worker_ids(c.launched_workers))
                      for c in crawls}
        reaped = []
        expired = leases.expired(self.redis, candidates)
        for crawl in crawls:
            states = readings[crawl.code]["workers"]
            dead = [w for w, held in expired[crawl.code]
                    if held or (w in states and states[w].get("state") not in DONE_STATES)]
            if dead:
                leases.reap_workers(self.redis, crawl.code, dead, states)
                reaped.append(crawl)
        if reaped:
            readings.update(self._read_counters(reaped))
        return readings

    def _read_counters(self, crawls):
        pipe = self.redis.pipeline(transaction=False)
        for crawl in crawls:
            state.queue_counter_reads(pipe, crawl.code)
        replies = pipe.execute()
        n = state.COUNTER_READS
        return {crawl.code: state.parse_counters(replies[i * n:(i + 1) * n]) for i, crawl in enumerate(crawls)}

    def sweep_cancelled(self):
        """A worker still closing when its crawl was cancelled may write its last state after the
        purge: delete such leftovers of recently cancelled crawls."""
        since = timezone.now() - timezone.timedelta(minutes=2)
        for code in Crawl.objects.filter(status=Crawl.CANCELLED, finished_at__gte=since).values_list("code", flat=True):
            if self.redis.exists(keys.workers(code), keys.control(code)):
                state.delete_crawl(self.redis, code)

    # -- observe: read Redis, decide; nothing is written to the crawl's row -------------------------

    def observe(self, crawl, counters=None, items=None):
        """What ``crawl`` looks like in Redis, and the observed action it calls for. Without
        ``counters`` (read by :meth:`read`), this crawl is drained, reaped and read alone."""
        if crawl.status == Crawl.PENDING:
            return None  # its launch is under way (after commit)
        if counters is None:
            items = ingest.drain(self.redis, crawl)
            counters = self.read([crawl])[crawl.code]
        observation = Observation(crawl, counters, items or [])
        decide = {
            Crawl.RUNNING: self.decide_running,
            Crawl.FINISHING: self.decide_finishing,
            Crawl.PAUSING: self.decide_pausing,
            Crawl.STOPPING: self.decide_stopping,
        }.get(crawl.status)
        if decide is not None:
            decide(observation)
        return observation

    def decide_running(self, o):
        """Finish when a limit is hit or the work has run out for the grace period; stop when every
        worker is gone; flag a stall when work is queued and nothing moves."""
        crawl, counters = o.crawl, o.counters
        self.watch_progress(o)
        limits = crawl.limits()
        if limits.get("max_duration") and crawl.duration and crawl.duration.total_seconds() >= limits["max_duration"]:
            o.decision, o.reason = "finish", f"duration limit of {limits['max_duration']} s reached"
            return
        if limits.get("max_items") and counters["items"] >= limits["max_items"]:
            o.decision, o.reason = "finish", f"item limit of {limits['max_items']} reached"
            return
        workers = counters["workers"]
        page_limit_hit = bool(limits.get("max_pages")) and counters["stats"].get("popped", 0) >= limits["max_pages"]
        out_of_work = (counters["queued"] == 0 or page_limit_hit) and counters["in_flight"] == 0
        starting = any(w.get("state") == "starting" for w in workers.values())
        if not out_of_work or starting or not workers:
            self.idle_since.pop(crawl.code, None)
            if workers and all(w.get("state") in DONE_STATES for w in workers.values()) \
                    and len(workers) >= crawl.launched_workers:
                messages = sorted({w.get("message") or w.get("state") for w in workers.values()} - {None})
                o.decision = "workers_lost"
                o.reason = ("Every worker stopped before the crawl was done (" + "; ".join(messages)
                            + "). Resume to continue.")
            return
        since = self.idle_since.setdefault(crawl.code, time.monotonic())
        if time.monotonic() - since >= settings.CRAWL_IDLE_GRACE:
            o.decision = "finish"
            o.reason = f"page limit of {limits['max_pages']} reached" if page_limit_hit else ""

    def watch_progress(self, o):
        """A running crawl with work queued whose pages, errors, items and seen URLs have not moved
        for CRAWL_STALL_AFTER seconds is stalled; the flag clears when anything moves."""
        crawl, counters = o.crawl, o.counters
        signature = tuple(counters[n] for n in ("pages", "errors", "items", "seen"))
        now = time.monotonic()
        last = self.progress.get(crawl.code)
        if last is None or last[0] != signature:
            self.progress[crawl.code] = (signature, now)
            if crawl.stalled_since is not None:
                o.stall = ""
            return
        if counters["queued"] == 0 and counters["in_flight"] == 0:
            if crawl.stalled_since is not None:
                o.stall = ""
            return
        quiet = now - last[1]
        if quiet >= settings.CRAWL_STALL_AFTER:
            reason = self.stall_reason(crawl, counters, quiet)
            if reason != crawl.stalled_reason or crawl.stalled_since is None:
                o.stall = reason

    def stall_reason(self, crawl, counters, quiet):
        workers = counters["workers"]
        alive = [w for w, s in workers.items() if s.get("state") not in DONE_STATES]
        queued, in_flight = counters["queued"], counters["in_flight"]
        work = f"{queued} request(s) queued, {in_flight} in flight"
        if not alive:
            waiting = [w for w, s in jobs.statuses(crawl.code, crawl.launched_workers).items()
                       if s in jobs.WAITING and w not in workers]
            if waiting:
                return (f"No RQ worker is free: {len(waiting)} worker job(s) wait in queue "
                        f"'{jobs.QUEUE}' ({work}). Start more `rq worker {jobs.QUEUE}` processes.")
            return f"Every worker is gone ({work}). Stop and resume the crawl to relaunch its workers."
        return (f"{len(alive)} worker(s) alive but no page finished for {int(quiet)} s ({work}). "
                "The site may be unreachable or every request waiting on a slow download.")

    def decide_finishing(self, o):
        """Finished once no worker is left working and every item is in the database."""
        if not self.working_workers(o.crawl, o.counters):
            o.decision = "finished"

    def decide_pausing(self, o):
        """Paused once no live worker has anything in flight."""
        busy = [
            w for w, s in o.counters["workers"].items()
            if s.get("state") not in DONE_STATES and s.get("state") != "paused"
        ]
        if not busy and o.counters["in_flight"] == 0:
            o.decision = "paused"

    def decide_stopping(self, o):
        """Stopped once every worker has drained and left; queue and dedupe stay for a resume."""
        if not self.working_workers(o.crawl, o.counters):
            o.decision = "stopped"

    def working_workers(self, crawl, counters):
        """Workers still doing something, including jobs an RQ worker has started but not reported."""
        workers = counters["workers"]
        statuses = jobs.statuses(crawl.code, crawl.launched_workers)
        return [w for w, s in workers.items() if s.get("state") not in DONE_STATES] + [
            w for w, s in statuses.items() if s == "started" and w not in workers
        ]

    # -- apply: compare-and-set through the crawl's lifecycle methods --------------------------------

    def apply(self, o):
        crawl = o.crawl
        stalled_since = crawl.stalled_since
        if o.stall:
            crawl.flag_stalled(o.stall)
        elif o.stall == "" and crawl.clear_stalled() and stalled_since is not None:
            self.alert(monitors.on_recovered, crawl, stalled_since, reading=o.counters)
        if crawl.stalled_since is not None:
            self.alert(monitors.watch_stall, crawl, reading=o.counters)
        if o.decision is None:
            return
        if o.decision == "paused":
            changed = crawl.mark_paused()
        elif o.decision == "finish":
            changed = crawl.begin_finishing(o.reason)
            if changed:
                log.info("crawl %s finishing%s", crawl.code, f": {o.reason}" if o.reason else "")
        else:  # the crawl ends: store the last items, record the final counters
            ingest.drain_all(self.redis, crawl)
            counters = state.read_counters(self.redis, crawl.code)
            stats = engine.final_stats(crawl, counters)
            if o.decision == "finished":
                changed = crawl.mark_finished(stats)
            elif o.decision == "stopped":
                changed = crawl.mark_stopped(stats)
            else:
                changed = crawl.mark_workers_lost(stats, o.reason)
            o.counters = counters  # the run's end (history, then monitors) follows through run_ended
        if changed:
            self.idle_since.pop(crawl.code, None)
        else:
            log.info("crawl %s: %s not applied, its status changed meanwhile (now %s)", crawl.code, o.decision,
                     crawl.status)
        return changed

    def alert(self, check, *args, **kwargs):
        """A live monitor check (dashboard/monitors.py): it only queues notifications; a failure is
        logged and never breaks the tick."""
        try:
            check(*args, **kwargs)
        except Exception:
            log.exception("conductor: monitors of crawl %s", args[0].code)

    def publish(self, observations):
        """One live update per crawl to its browsers (dashboard/live.py); never breaks the tick."""
        try:
            for o in observations:
                live.add_detail(self.redis, o.crawl, o.counters)
            self.live.publish_many([(o.crawl, o.counters, o.items) for o in observations])
        except Exception:
            log.exception("conductor: live updates")

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


def _sleep_until(should_stop, seconds):
    deadline = time.monotonic() + seconds
    while not should_stop():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))
