"""Reaping: the leases of a worker whose heartbeat expired go back to the queue."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from . import keys
from .counters import DONE_STATES as TERMINAL_STATES
from .queue import return_leases

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)


def _worker_of(code: str, leases_key: str) -> str:
    return leases_key[len(keys.leases_pattern(code)) - 1:]


def reap(redis: redis.Redis, code: str) -> int:
    """Return the leases of every worker of ``code`` whose ``hb:`` key expired; mark them ``dead``.

    Returns the number of requests put back in the queue. Called by the dashboard's conductor.
    """
    workers = redis.hgetall(keys.workers(code))
    candidates = set(workers)
    for key in redis.scan_iter(match=keys.leases_pattern(code), count=1000):
        candidates.add(_worker_of(code, key if isinstance(key, str) else key.decode()))
    candidates = sorted(candidates)
    if not candidates:
        return 0
    pipe = redis.pipeline(transaction=False)
    for worker in candidates:
        pipe.exists(keys.heartbeat(code, worker))
    alive = pipe.execute()
    total = 0
    for worker, is_alive in zip(candidates, alive):
        if is_alive:
            continue
        returned = return_leases(redis, code, worker)
        total += returned
        raw = workers.get(worker)
        try:
            state = json.loads(raw) if raw else {"worker": worker}
        except ValueError:
            state = {"worker": worker}
        if state.get("state") not in TERMINAL_STATES:
            state.update(state="dead", in_flight=0, updated_at=time.time())
            redis.hset(keys.workers(code), worker, json.dumps(state))
        if returned:
            logger.warning("Crawl %s: worker %s stopped heartbeating; %d requests put back", code, worker, returned)
    return total


def force_release(redis: redis.Redis, code: str, message: str) -> int:
    """Put every worker's leased requests of ``code`` back in the queue and mark each worker that
    has not ended ``gone`` (a force stop: the crawl stops now, whatever its workers do).

    Returns the number of requests put back. Queue and dedupe are kept, so a resume carries on.
    """
    workers = redis.hgetall(keys.workers(code))
    candidates = set(workers)
    for key in redis.scan_iter(match=keys.leases_pattern(code), count=1000):
        candidates.add(_worker_of(code, key if isinstance(key, str) else key.decode()))
    total = 0
    now = time.time()
    for worker in sorted(candidates):
        total += return_leases(redis, code, worker)
        raw = workers.get(worker)
        try:
            state = json.loads(raw) if raw else {"worker": worker}
        except ValueError:
            state = {"worker": worker}
        if state.get("state") not in TERMINAL_STATES:
            state.update(state="gone", in_flight=0, leases=0, message=message, updated_at=now)
            redis.hset(keys.workers(code), worker, json.dumps(state))
    if total:
        logger.warning("Crawl %s force-stopped: %d requests put back in the queue", code, total)
    return total
