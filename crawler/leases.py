"""Workers that are gone: their leases go back to the queue.

* :func:`reap` - the conductor's part: the leases of a worker whose heartbeat expired.
* :func:`record_killed` - the RQ job's part (:mod:`crawler.jobs`): the worker process it had to
  kill (it did not leave after stop, cancel or scale-down).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from . import keys
from .queue import return_leases

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

TERMINAL_STATES = ("finished", "failed", "dead")
LOG_MAXLEN = 1000  # as the workers' own RedisLogHandler (CRAWLSITE_LOG_MAXLEN)


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
