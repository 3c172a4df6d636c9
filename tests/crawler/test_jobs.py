"""The RQ job's supervision of its worker process (crawler.jobs): escalation from SIGTERM to SIGKILL
of the whole process group, what arms and disarms it, and what is recorded in Redis afterwards.

The children here are small Python processes that say when they are ready through a file, so no
test depends on how fast the machine is; the escalation on a real crawl is in
tests/dashboard/test_stop_kills.py.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time

import psutil
import pytest

from crawler import jobs, keys, leases, state
from crawler.queue import RequestQueue

GRACE = 0.5
KILL_DELAY = 0.5


def child_cmd(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def gone(pid: int, timeout: float = 10.0) -> bool:
    """The process has exited (a zombie waiting for init to reap it counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def when_ready(path, reason="stop"):
    """A ``leave`` callable: ``reason`` once the child has written its ready file, else None."""
    return lambda: reason if path.exists() and path.read_text().strip() else None


# A child that ignores SIGTERM (as a worker whose reactor is blocked) and starts a grandchild that
# ignores it too; it writes "child-pid grandchild-pid" once both ignore SIGTERM.
STUBBORN = """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = subprocess.Popen([sys.executable, "-c",
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "sys.stdout.write('ok'); sys.stdout.flush(); time.sleep(600)"], stdout=subprocess.PIPE)
    grandchild.stdout.read(2)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {grandchild.pid}")
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    while True:
        time.sleep(0.05)
"""


def stubborn(ready):
    return child_cmd("import os\n" + textwrap.dedent(STUBBORN)) + [str(ready)]


def test_a_child_that_ignores_sigterm_gets_sigkilled_with_its_whole_process_group(tmp_path):
    ready = tmp_path / "ready"
    exit_code, killed = jobs.supervise(stubborn(ready), when_ready(ready), grace=GRACE, kill_delay=KILL_DELAY,
                                       interval=0.05)
    assert exit_code == -signal.SIGKILL
    assert killed == {"reason": "stop", "signal": "SIGKILL", "grace": GRACE}
    child, grandchild = map(int, ready.read_text().split())
    assert gone(child)
    assert gone(grandchild), "SIGKILL must reach the whole process group"


def test_a_child_that_honours_sigterm_ends_with_sigterm(tmp_path):
    ready = tmp_path / "ready"
    cmd = child_cmd(f"""
        import pathlib, time
        pathlib.Path({str(ready)!r}).write_text("up")
        while True:
            time.sleep(0.05)
    """)
    exit_code, killed = jobs.supervise(cmd, when_ready(ready, "retired"), grace=GRACE, kill_delay=30,
                                       interval=0.05)
    assert exit_code == -signal.SIGTERM
    assert killed == {"reason": "retired", "signal": "SIGTERM", "grace": GRACE}


def test_a_child_that_leaves_by_itself_is_not_killed(tmp_path):
    cmd = child_cmd("import sys; sys.exit(3)")
    assert jobs.supervise(cmd, lambda: "stop", grace=60, kill_delay=1, interval=0.05) == (3, None)


def test_a_stop_undone_before_the_grace_period_disarms_the_kill(tmp_path):
    """stop, then run again (a resume): the child lives on and leaves by itself later."""
    go = tmp_path / "go"
    calls = []

    def leave():
        calls.append(1)
        if len(calls) == 3:
            go.write_text("go")  # the child may leave now, long after the stop was undone
        return "stop" if len(calls) == 1 else None

    cmd = child_cmd(f"""
        import pathlib, time
        while not pathlib.Path({str(go)!r}).exists():
            time.sleep(0.02)
    """)
    # With one look that says "stop", the deadline is armed but never reached before "run".
    assert jobs.supervise(cmd, leave, grace=GRACE, kill_delay=KILL_DELAY, interval=0.05) == (0, None)
    assert len(calls) >= 3


def test_sigterm_to_the_job_is_forwarded_then_escalated(tmp_path):
    """The RQ worker shuts down: the job forwards SIGTERM; a child that ignores it is killed."""
    ready = tmp_path / "ready"
    sent = []

    def leave():
        if ready.exists() and ready.read_text().strip() and not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the job while it waits
        return None

    before = signal.getsignal(signal.SIGTERM)
    exit_code, killed = jobs.supervise(stubborn(ready), leave, grace=GRACE, kill_delay=KILL_DELAY, interval=0.05)
    assert exit_code == -signal.SIGKILL
    assert killed == {"reason": "shutdown", "signal": "SIGKILL", "grace": GRACE}
    assert signal.getsignal(signal.SIGTERM) == before, "the job's handler must be removed"
    assert gone(int(ready.read_text().split()[1]))


def test_the_child_never_outlives_an_interrupted_job(tmp_path):
    """RQ's job timeout raises inside the work horse while the job waits: the child is ended."""
    ready = tmp_path / "ready"

    class JobTimeout(Exception):
        pass

    def leave():
        if ready.exists() and ready.read_text().strip():
            raise JobTimeout()
        return None

    with pytest.raises(JobTimeout):
        jobs.supervise(stubborn(ready), leave, grace=60, kill_delay=KILL_DELAY, interval=0.05)
    child, grandchild = map(int, ready.read_text().split())
    assert gone(child) and gone(grandchild)


@pytest.mark.parametrize("name", ["CRAWLSITE_STOP_GRACE", "CRAWLSITE_KILL_DELAY", "CRAWLSITE_STOP_TIMEOUT"])
@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "inf", "1e999"])
def test_bad_timing_settings_are_refused_before_anything_starts(monkeypatch, redis_url, code, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        jobs.run_worker(code, "w1", redis_url)


@pytest.mark.parametrize("code_, worker", [("../x", "w1"), ("A", "w1"), ("", "w1"), ("x" * 33, "w1"),
                                           ("abc", "../w"), ("abc", "a b"), ("abc", ""), ("abc", "w" * 65)])
def test_bad_codes_and_workers_are_refused(redis_url, code_, worker):
    with pytest.raises(ValueError):
        jobs.run_worker(code_, worker, redis_url)


# -- what the job reads and writes in Redis ----------------------------------------------------------


def test_leave_watch_reads_stop_cancel_and_retirement(r, code):
    watch = jobs.LeaveWatch(r, code, "w2")
    state.set_control(r, code, "run")
    assert watch() is None
    state.set_control(r, code, "pause")
    assert watch() is None, "pause never ends a worker"
    state.retire_workers(r, code, ["w2"])
    assert watch() == "retired"
    assert jobs.LeaveWatch(r, code, "w1")() is None
    state.set_control(r, code, "stop")
    assert watch() == "stop"
    state.delete_crawl(r, code)
    assert watch() == "cancel"


def _lease_two(r, code, worker):
    state.launch(r, code, {"start_urls": ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b",
                                          "http://127.0.0.1:9/c"]})
    status, members = RequestQueue(r, code, worker).pop_many(count=2)
    assert status == "ok" and len(members) == 2
    r.hset(keys.workers(code), worker, json.dumps({"worker": worker, "state": "running", "pages": 7}))
    r.set(keys.heartbeat(code, worker), "1", ex=300)
    return members


def test_a_killed_worker_hands_back_its_leases_and_says_why(r, code):
    leased = _lease_two(r, code, "w1")
    killed = {"reason": "stop", "signal": "SIGKILL", "grace": 2.0}
    assert leases.record_killed(r, code, "w1", killed, "Worker w1 was killed: because") == 2
    assert r.hlen(keys.leases(code, "w1")) == 0
    assert set(leased) <= set(r.zrange(keys.queue(code), 0, -1))
    assert state.read_counters(r, code)["in_flight"] == 0
    worker = json.loads(r.hget(keys.workers(code), "w1"))
    assert worker["state"] == "failed" and worker["killed"] == killed and worker["pages"] == 7
    assert worker["message"] == "Worker w1 was killed: because"
    assert not r.exists(keys.heartbeat(code, "w1"))
    [(_id, entry)] = r.xrange(keys.log(code))
    assert entry["level"] == "WARNING" and entry["worker"] == "w1" and "killed" in entry["message"]
    # The conductor's reaper leaves a killed worker as it is.
    leases.reap(r, code)
    assert json.loads(r.hget(keys.workers(code), "w1"))["state"] == "failed"


def test_nothing_is_written_back_for_a_cancelled_crawl(r, code):
    _lease_two(r, code, "w1")
    state.delete_crawl(r, code)
    killed = {"reason": "cancel", "signal": "SIGKILL", "grace": 2.0}
    assert leases.record_killed(r, code, "w1", killed, "gone") is None
    assert list(r.scan_iter(match=keys.crawl_pattern(code))) == []
