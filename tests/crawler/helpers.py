"""Test helpers (no fixtures): worker processes, a tiny conductor, dedupe memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from crawler import leases, state

from crawler import keys
from crawler.dupefilter import RedisDupeFilter


def fill_seen(r, code: str, n: int, buckets: int, batch: int = 2000) -> RedisDupeFilter:
    """Record ``n`` random fingerprints in the crawl's dedupe buckets (through the real script)."""
    df = RedisDupeFilter(r, code, buckets=buckets, cache_size=1)
    for start in range(0, n, batch):
        entries = [(os.urandom(20), 0, '{"url":"x"}') for _ in range(min(batch, n - start))]
        df.enqueue(entries)
        r.delete(keys.queue(code))  # only the dedupe memory is measured
    return df


def seen_bytes(r, code: str, buckets: int) -> tuple[int, dict]:
    """Total ``MEMORY USAGE`` of the bucket keys and their encodings."""
    pipe = r.pipeline(transaction=False)
    for b in range(buckets):
        pipe.memory_usage(keys.seen_bucket(code, b), samples=0)
    sizes = pipe.execute()
    pipe = r.pipeline(transaction=False)
    for b in range(buckets):
        pipe.object("encoding", keys.seen_bucket(code, b))
    encodings: dict = {}
    for enc in pipe.execute():
        encodings[enc] = encodings.get(enc, 0) + 1
    return sum(s or 0 for s in sizes), encodings


ROOT = Path(__file__).resolve().parents[2]


def worker_env(redis_url: str) -> dict:
    env = dict(os.environ, REDIS_URL=redis_url, PYTHONPATH=str(ROOT))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


FAST = ["-s", __import__("os").environ.get("CS_TEST_LOG", "LOG_LEVEL=WARNING"), "-s", "CRAWLSITE_HEARTBEAT_TTL=2"]


def start_worker(redis_url: str, code: str, worker: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "crawler", "run", code, "--worker", worker, *FAST, *extra],
        cwd=ROOT, env=worker_env(redis_url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def conduct(r, code: str, procs: list[subprocess.Popen], timeout: float = 60.0, grace: float = 1.0,
            reap: bool = False) -> dict:
    """A tiny conductor: ``finish`` once the queue is empty, nothing is leased and every worker
    is idle for ``grace`` seconds; then wait for the workers to exit. Returns the last counters."""
    deadline = time.monotonic() + timeout
    quiet_since = None
    while time.monotonic() < deadline:
        if reap:
            leases.reap(r, code)
        c = state.read_counters(r, code)
        live = [w for w in c["workers"].values() if w.get("state") not in ("finished", "failed", "dead")]
        idle = c["queued"] == 0 and c["in_flight"] == 0 and live and all(
            w.get("state") == "idle" for w in live)
        if idle:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= grace:
                state.set_control(r, code, "finish")
                break
        else:
            quiet_since = None
        if all(p.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    else:
        for p in procs:
            p.kill()
        raise AssertionError(f"crawl {code} did not finish in {timeout}s: {state.read_counters(r, code)}")
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            raise
    return state.read_counters(r, code)


def stream_items(r, code: str) -> list[dict]:
    out = []
    for _id, fields in r.xrange(keys.items(code)):
        out.append({"key": fields["key"], "worker": fields["worker"], "data": json.loads(fields["data"])})
    return out
