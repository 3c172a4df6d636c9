"""RQ workers started by tests, and the guarantee that none outlives its test."""

import os
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
_started = []


def start_rq_workers(count, **env_overrides):
    """``count`` burst RQ workers on queue ``crawls`` of the test Redis."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **env_overrides)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "rq.cli", "worker", "crawls", "--burst",
             "--serializer", "rq.serializers.JSONSerializer", "--url", os.environ["REDIS_URL"]],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    _started.extend(procs)
    return procs


def kill_tree(proc):
    """SIGKILL an RQ worker with everything below it. RQ puts each work horse in a process group
    of its own, so only walking the process tree reaches the horse and its crawler."""
    try:
        parent = psutil.Process(proc.pid)
        family = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)
    proc.wait()


def kill_leftover_workers():
    """Kill every worker a test started and did not see exit, with its horse and crawler."""
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            kill_tree(proc)
