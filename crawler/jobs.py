"""The RQ job: ``crawler.jobs.run_worker(code, worker_id)``.

Scrapy never runs inside the RQ work horse: the job runs ``python -m crawler run CODE --worker ID``
as a child process, in a process group of its own (and killed if the work horse dies:
PR_SET_PDEATHSIG on Linux), forwards SIGTERM and SIGINT to it, and waits for it.

Stop and cancel always end the worker. A worker whose reactor is blocked (a spider callback that
never returns, a hung extension) never reads its control key, so while it waits the job watches,
every ``WATCH_INTERVAL`` seconds and in one pipelined read, whether the worker is to leave: the
crawl's control key says ``stop``, the key is gone (cancel deleted the crawl's Redis state), the
worker was retired by a scale-down, or the job itself got SIGTERM/SIGINT (the RQ worker is shutting
down). A worker that has not left ``CRAWLSITE_STOP_GRACE`` seconds later (default: the worker's
own ``CRAWLSITE_STOP_TIMEOUT``, 30 s, plus 10 s to close) gets SIGTERM, and
``CRAWLSITE_KILL_DELAY`` seconds after that SIGKILL, sent to its whole process group. Its leases
then go back to the queue at once, its state says it was killed and why (also a warning in the
crawl's log; nothing is written for a cancelled crawl), and the job returns: the RQ worker is free.
Pause never kills: a paused worker keeps its process.

Returns ``{"code", "worker", "exit_code", "seconds"}``, plus ``"killed": {"reason", "signal",
"grace"}`` when the job had to end the worker; a non-zero exit code of a worker that was not
killed raises :class:`WorkerFailed` so RQ records the job as failed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Callable, Sequence

from redis.exceptions import RedisError

from . import keys, leases
from .connection import get_redis
from .settings import env_seconds

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
WATCH_INTERVAL = 0.5  # seconds between two looks at the control key: one round trip each
STOP_TIMEOUT = 30.0  # a healthy worker's own bound on draining after stop (CRAWLSITE_STOP_TIMEOUT)
CLOSING_TIME = 10.0  # default grace: that bound plus this, so a draining worker is never killed
DEFAULT_KILL_DELAY = 5.0

WHY = {
    "stop": "the crawl was stopped",
    "cancel": "the crawl was cancelled",
    "retired": "the worker was retired by a scale-down",
    "shutdown": "its RQ worker is shutting down",
}


class WorkerFailed(RuntimeError):
    pass


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        # SIGKILL, as when RQ kills the work horse's process group (stop-job, cold shutdown): a
        # blocked worker ignores SIGTERM. Its leases come back when its heartbeat expires.
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class LeaveWatch:
    """Whether worker ``worker`` of crawl ``code`` is to leave: ``"stop"``, ``"cancel"``,
    ``"retired"`` or None, from one pipelined read per call. While Redis cannot be read, the last
    answer stands (a Redis blip neither arms nor disarms a kill)."""

    def __init__(self, redis, code: str, worker: str):
        self.redis = redis
        self.code = keys.validate_code(code)
        self.worker = keys.validate_worker(worker)
        self.last: str | None = None
        self._failing = False

    def __call__(self) -> str | None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(keys.control(self.code))
            pipe.sismember(keys.retired(self.code), self.worker)
            control, retired = pipe.execute()
        except RedisError as exc:
            if not self._failing:
                logger.warning("Cannot read the control key of crawl %s: %s", self.code, exc)
            self._failing = True
            return self.last
        self._failing = False
        if isinstance(control, bytes):
            control = control.decode()
        if control is None:
            self.last = "cancel"
        elif control == "stop":
            self.last = "stop"
        elif retired:
            self.last = "retired"
        else:
            self.last = None
        return self.last


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    """``signum`` to the child's process group (its pid: it leads a group of its own)."""
    try:
        os.killpg(child.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone


def end(child: subprocess.Popen, kill_delay: float) -> tuple[int, str]:
    """SIGTERM to the child's process group, then SIGKILL if the child is still there after
    ``kill_delay`` seconds. SIGKILL also reaches what the child started and left behind.
    Returns the exit code and the last signal the child itself needed."""
    _signal_group(child, signal.SIGTERM)
    try:
        child.wait(kill_delay)
        needed = "SIGTERM"
    except subprocess.TimeoutExpired:
        needed = "SIGKILL"
    _signal_group(child, signal.SIGKILL)
    return child.wait(), needed


def supervise(cmd: Sequence[str], leave: Callable[[], str | None], *, grace: float, kill_delay: float,
              interval: float = WATCH_INTERVAL) -> tuple[int, dict | None]:
    """Run ``cmd`` and wait for it; end it as described above once ``leave()`` has named a reason
    for ``grace`` seconds without the child leaving. A reason that goes away (a stop undone by a
    resume) disarms the kill. Returns the exit code and ``{"reason", "signal", "grace"}`` or None.

    If the wait itself is interrupted (RQ's job timeout raises in the work horse), the child is
    ended before the exception goes on: it never outlives its job.
    """
    child = subprocess.Popen(cmd, preexec_fn=_die_with_parent, process_group=0)
    shutdown: list[int] = []

    def forward(signum, frame):
        shutdown.append(signum)
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, forward)
        except ValueError:  # not in the main thread: cannot install handlers
            pass
    reason: str | None = None
    since: float | None = None
    try:
        while True:
            try:
                return child.wait(interval), None
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            current = "shutdown" if shutdown else leave()
            if current is None:
                reason = since = None
                continue
            if since is None:
                since = now
                logger.info("Worker process %d is to leave (%s)", child.pid, current)
            reason = current  # the latest: a stop followed by a cancel is a cancel
            if now - since >= grace:
                logger.warning("Worker process %d did not leave %.0f s after %s: ending it",
                               child.pid, grace, WHY.get(reason, reason))
                exit_code, needed = end(child, kill_delay)
                return exit_code, {"reason": reason, "signal": needed, "grace": grace}
    except BaseException:
        if child.poll() is None:
            end(child, kill_delay)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_worker(code: str, worker_id: str, redis_url: str | None = None) -> dict:
    keys.validate_code(code)
    keys.validate_worker(worker_id)
    grace = env_seconds("CRAWLSITE_STOP_GRACE")
    if grace is None:
        grace = env_seconds("CRAWLSITE_STOP_TIMEOUT", STOP_TIMEOUT) + CLOSING_TIME
    kill_delay = env_seconds("CRAWLSITE_KILL_DELAY", DEFAULT_KILL_DELAY)
    redis = get_redis(redis_url)
    cmd = [sys.executable, "-m", "crawler", "run", code, "--worker", worker_id]
    if redis_url:
        cmd += ["--redis-url", redis_url]
    started = time.monotonic()
    exit_code, killed = supervise(cmd, LeaveWatch(redis, code, worker_id), grace=grace, kill_delay=kill_delay)
    result = {"code": code, "worker": worker_id, "exit_code": exit_code,
              "seconds": round(time.monotonic() - started, 3)}
    if killed is not None:
        result["killed"] = killed
        record(redis, code, worker_id, killed)
        return result
    if exit_code != 0:
        raise WorkerFailed(f"worker {worker_id} of crawl {code} exited with code {exit_code}")
    return result


def record(redis, code: str, worker: str, killed: dict) -> None:
    """Leases back to the queue, the worker's state and a warning in the crawl's log."""
    message = (f"Worker {worker} was killed: it did not leave {killed['grace']:g} s after "
               f"{WHY.get(killed['reason'], killed['reason'])}, so it got SIGTERM")
    if killed["signal"] == "SIGKILL":
        message += (" and then SIGKILL (its reactor was blocked: a spider callback or extension that "
                    "never returns?)")
    message += ". Its leased requests went back to the queue."
    try:
        returned = leases.record_killed(redis, code, worker, killed, message)
    except RedisError:
        # Its leases come back when its heartbeat expires (the conductor's reaper).
        logger.exception("Cannot record that worker %s of crawl %s was killed", worker, code)
        return
    if returned is None:
        logger.warning("%s (the crawl's Redis state is gone: nothing recorded)", message)
    else:
        logger.warning("%s %d requests put back.", message, returned)
