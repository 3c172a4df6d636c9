"""The conductor: the one loop that watches every active crawl.

Only one conductor is active at a time: it holds a Redis lock with a TTL and renews it every
tick. A second conductor waits as a standby and takes over when the lock lapses.
"""

import logging
import os
import socket
import time

from django.conf import settings
from redis.exceptions import LockError, RedisError

from crawler import keys
from dashboard.redis import get_redis

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
        """One pass over every active crawl. The crawl engine fills this in."""

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
