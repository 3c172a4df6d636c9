"""Workers that are gone: their leases go back to the queue.

* :func:`reap` - the conductor's part: the leases of a worker whose heartbeat expired.
* :func:`record_killed` - the RQ job's part (:mod:`crawler.jobs`): the worker process it had to
  kill (it did not leave after stop, cancel or scale-down).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Iterable

from . import keys
from .counters import DONE_STATES as TERMINAL_STATES
from .queue import return_leases

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

LOG_MAXLEN = 1000  # as the workers' own RedisLogHandler (CRAWLSITE_LOG_MAXLEN)


def _worker_of(code: str, leases_key: str) -> str:
    return leases_key[len(keys.leases_pattern(code)) - 1:]


def reap(redis: redis.Redis, code: str) -> int:
    """Return the leases of every worker of ``code`` whose ``hb:`` key expired; mark them ``dead``.

    Returns the number of requests put back in the queue. The dashboard's conductor checks many
    crawls at once with :func:`expired` and :func:`reap_workers`; this is the one-crawl form.
    """
    raw = redis.hgetall(keys.workers(code))
    candidates = set(raw)
    for key in redis.scan_iter(match=keys.leases_pattern(code), count=1000):
        candidates.add(_worker_of(code, key if isinstance(key, str) else key.decode()))
    if not candidates:
        return 0
    states = {w: _parsed(w, v) for w, v in raw.items()}
    dead = [w for w, held in expired(redis, {code: candidates})[code] if held or w in states]
    return reap_workers(redis, code, dead, states)


def _parsed(worker: str, raw: str | None) -> dict:
    try:
        state = json.loads(raw) if raw else None
    except ValueError:
        state = None
    return state if isinstance(state, dict) else {"worker": worker}


def expired(redis: redis.Redis, candidates: dict[str, Iterable[str]]) -> dict[str, list[tuple[str, int]]]:
    """For each crawl code, the candidate workers whose heartbeat expired, with the number of
    requests each still leases: ``{code: [(worker, leased), ...]}``. One round trip for the
    heartbeats of all, and one more only when some expired."""
    order = [(code, w) for code, workers in candidates.items() for w in sorted(workers)]
    found: dict[str, list[tuple[str, int]]] = {code: [] for code in candidates}
    if not order:
        return found
    pipe = redis.pipeline(transaction=False)
    for code, worker in order:
        pipe.exists(keys.heartbeat(code, worker))
    gone = [pair for pair, alive in zip(order, pipe.execute()) if not alive]
    if not gone:
        return found
    pipe = redis.pipeline(transaction=False)
    for code, worker in gone:
        pipe.hlen(keys.leases(code, worker))
    for (code, worker), leased in zip(gone, pipe.execute()):
        found[code].append((worker, int(leased)))
    return found


def reap_workers(redis: redis.Redis, code: str, workers: Iterable[str], states: dict[str, dict]) -> int:
    """Put the leases of ``workers`` (whose heartbeat expired) back in the queue and mark those
    that had not ended ``dead``. ``states`` are the parsed worker states of the crawl."""
    total = 0
    for worker in workers:
        returned = return_leases(redis, code, worker)
        total += returned
        state = dict(states.get(worker) or {"worker": worker})
        if state.get("state") not in TERMINAL_STATES:
            state.update(state="dead", in_flight=0, updated_at=time.time())
            redis.hset(keys.workers(code), worker, json.dumps(state))
        if returned:
            logger.warning("Crawl %s: worker %s stopped heartbeating; %d requests put back", code, worker, returned)
    return total


def record_killed(redis: redis.Redis, code: str, worker: str, killed: dict, message: str) -> int | None:
    """A worker process was killed: put its leases back in the queue at once, mark it ``failed``
    with ``killed`` (why and how) and ``message``, and add ``message`` to the crawl's log as a warning.

    Returns the number of requests put back, or None when the crawl's Redis state is gone (a
    cancelled crawl): then nothing is written, so that no key of that crawl comes back.
    """
    returned = return_leases(redis, code, worker)  # nothing to return (and no write) once deleted
    workers_key = keys.workers(code)

    def write(pipe) -> bool:
        if not pipe.exists(keys.control(code)):
            return False
        raw = pipe.hget(workers_key, worker)
        try:
            state = json.loads(raw) if raw else {}
        except ValueError:
            state = {}
        now = time.time()
        state.update(worker=worker, state="failed", killed=killed, message=message, in_flight=0,
                     leases=0, updated_at=now)
        pipe.multi()
        pipe.hset(workers_key, worker, json.dumps(state))
        pipe.delete(keys.heartbeat(code, worker))
        pipe.xadd(keys.log(code), {"worker": worker, "level": "WARNING", "logger": __name__,
                                   "message": message, "time": f"{now:.3f}"},
                  maxlen=LOG_MAXLEN, approximate=True)
        return True

    # WATCH the control key: a cancel that deletes the crawl meanwhile makes this write nothing.
    written = redis.transaction(write, keys.control(code), workers_key, value_from_callable=True)
    return returned if written else None


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
