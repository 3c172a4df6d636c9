"""RQ workers started by tests, and the guarantee that none outlives its test."""

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_started = []


def start_rq_workers(count):
    """``count`` burst RQ workers on queue ``crawls`` of the test Redis, each in its own process
    group (the work horse and the crawler subprocess included)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "rq.cli", "worker", "crawls", "--burst",
             "--serializer", "rq.serializers.JSONSerializer", "--url", os.environ["REDIS_URL"]],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        for _ in range(count)
    ]
    _started.extend(procs)
    return procs


def kill_leftover_workers():
    """Kill the process group of every worker a test started and did not see exit."""
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
