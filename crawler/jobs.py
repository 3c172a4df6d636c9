"""The RQ job: ``crawler.jobs.run_worker(code, worker_id)``.

Scrapy never runs inside the RQ work horse: the job runs ``python -m crawler run CODE --worker ID``
as a child process (which dies with its parent: PR_SET_PDEATHSIG on Linux), forwards SIGTERM and
SIGINT to it, waits, and returns ``{"code", "worker", "exit_code", "seconds"}``; a non-zero exit
code raises :class:`WorkerFailed` so RQ records the job as failed.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time

from . import keys

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


class WorkerFailed(RuntimeError):
    pass


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def run_worker(code: str, worker_id: str, redis_url: str | None = None) -> dict:
    keys.validate_code(code)
    keys.validate_worker(worker_id)
    cmd = [sys.executable, "-m", "crawler", "run", code, "--worker", worker_id]
    if redis_url:
        cmd += ["--redis-url", redis_url]
    started = time.monotonic()
    child = subprocess.Popen(cmd, preexec_fn=_die_with_parent)
    forwarded = []

    def forward(signum, frame):
        forwarded.append(signum)
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
    try:
        exit_code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    result = {"code": code, "worker": worker_id, "exit_code": exit_code,
              "seconds": round(time.monotonic() - started, 3)}
    if exit_code != 0:
        raise WorkerFailed(f"worker {worker_id} of crawl {code} exited with code {exit_code}")
    return result
