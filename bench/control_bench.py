"""Pause, resume and SIGKILL benchmark (issue 5).

    .venv/bin/python -m bench.control_bench [--pauses 3] [--kills 3] [--no-write]

One run starts ONE demosite site (this process; every HTML page takes 200 ms) and ONE private
embedded Redis, then:

1. pause/resume: a Crawlsite crawl on 2 workers (``python -m crawler run``, CONCURRENT_REQUESTS 4
   each); mid-crawl the control key is set to ``pause`` (what the pause button does) and the time
   until every worker reports ``paused`` with nothing in flight is measured (what the conductor
   waits for before showing ``paused``); then ``run``, and the time until the site receives the
   next request. Repeated ``--pauses`` times in the crawl, which must then store every expected
   item exactly once.
2. SIGKILL: the same crawl on 2 workers, one killed with SIGKILL once 40 pages were fetched, the
   other carries on. Crawlsite with a minimal conductor loop (``leases.reap`` every 100 ms,
   heartbeat TTL 2 s); scrapy-redis 0.9.1 (bench/_scrapy_redis_worker.py, same spider, same
   settings). Requests lost per kill = pages a full crawl fetches (the pause/resume crawl's
   pages) never requested in the kill run. Items lost = expected items not stored.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Pause, resume and SIGKILL (issue 5)"
DELAY_MS = 200
PER_WORKER = 4
HEARTBEAT_TTL = 2.0


def env(**extra) -> dict:
    e = dict(os.environ, PYTHONPATH=str(ROOT), **extra)
    e.pop("DJANGO_SETTINGS_MODULE", None)
    return e


def definition_for(site) -> dict:
    d = site.recommended_definition(slow=False)
    d["settings"] = {"CONCURRENT_REQUESTS": PER_WORKER, "DOWNLOAD_TIMEOUT": 10, "RETRY_TIMES": 0}
    return d


def pages(site) -> list[str]:
    return [path for _host, path in site.requests if path != "/robots.txt"]


def start_worker(redis_url, code, worker):
    return subprocess.Popen(
        [sys.executable, "-m", "crawler", "run", code, "--worker", worker, "--redis-url", redis_url,
         "-s", "LOG_LEVEL=WARNING"],
        cwd=ROOT, env=env(CRAWLSITE_HEARTBEAT_TTL=str(HEARTBEAT_TTL)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def workers_state(r, code):
    from crawler import keys
    return {w: json.loads(v) for w, v in r.hgetall(keys.workers(code)).items()}


def wait(predicate, timeout, what, step=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise RuntimeError(f"timed out waiting for {what}")


def conduct_to_end(r, code, procs, timeout=180, grace=1.0):
    """Minimal conductor: reap leases; finish once the queue is empty and nothing is leased."""
    from crawler import keys, leases, state

    quiet = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leases.reap(r, code)
        counters = state.read_counters(r, code)
        live = [w for w in counters["workers"].values() if w.get("state") not in ("finished", "failed", "dead")]
        leased = sum(r.hlen(k) for k in r.scan_iter(match=keys.leases_pattern(code)))
        if counters["queued"] == 0 and leased == 0 and all(w.get("in_flight", 0) == 0 for w in live):
            quiet = quiet or time.monotonic()
            if time.monotonic() - quiet >= grace:
                state.set_control(r, code, "finish")
                break
        else:
            quiet = None
        time.sleep(0.1)
    else:
        raise RuntimeError(f"crawl {code} did not end: {state.read_counters(r, code)}")
    for p in procs:
        if p.poll() is None:
            p.wait(60)


def stored_items(r, code):
    from crawler import keys
    items = [(f["key"], json.loads(f["data"])) for _id, f in r.xrange(keys.items(code))]
    return items


def check_exactly_once(items, expected, label):
    urls = [data["url"] for _key, data in items]
    if len(urls) != len(set(urls)) or len({k for k, _d in items}) != len(items):
        raise AssertionError(f"{label}: an item was stored twice")
    if set(urls) != {e["url"] for e in expected}:
        raise AssertionError(f"{label}: {len(set(e['url'] for e in expected) - set(urls))} items missing")


# -- 1. pause / resume ---------------------------------------------------------------------------
def bench_pause(r, redis_url, site, definition, expected, n_pauses):
    from crawler import state

    code = "p" + uuid.uuid4().hex[:10]
    site.clear_requests()
    state.launch(r, code, definition)
    procs = [start_worker(redis_url, code, f"w{k}") for k in (1, 2)]
    wait(lambda: sum(1 for w in workers_state(r, code).values() if w["state"] == "running") == 2, 60, "2 workers")
    to_paused, to_next, in_flight_at_pause = [], [], []
    for i in range(n_pauses):
        wait(lambda: len(pages(site)) >= 20 + 40 * i, 60, "pages")
        in_flight_at_pause.append(sum(w.get("in_flight", 0) for w in workers_state(r, code).values()))
        t0 = time.monotonic()
        state.set_control(r, code, "pause")
        wait(lambda: all(w["state"] == "paused" and w.get("in_flight", 0) == 0
                         for w in workers_state(r, code).values()), 30, "paused")
        to_paused.append(time.monotonic() - t0)
        time.sleep(1.0)
        before = len(site.requests)
        t1 = time.monotonic()
        state.set_control(r, code, "run")
        wait(lambda: len(site.requests) > before, 30, "the next page")
        to_next.append(time.monotonic() - t1)
    conduct_to_end(r, code, procs)
    check_exactly_once(stored_items(r, code), expected, "pause/resume crawl")
    reference = set(pages(site))
    state.delete_crawl(r, code)
    return {"to_paused": to_paused, "to_next": to_next, "in_flight": in_flight_at_pause}, reference


# -- 2. SIGKILL ----------------------------------------------------------------------------------
def kill_at(site, proc, after_pages):
    wait(lambda: len(pages(site)) >= after_pages, 60, "pages before the kill", step=0.002)
    n_before = len(site.requests)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    return n_before


def bench_kill_crawlsite(r, redis_url, site, definition, expected, reference, i):
    from crawler import keys, state

    code = "k" + uuid.uuid4().hex[:10]
    site.clear_requests()
    state.launch(r, code, definition)
    procs = [start_worker(redis_url, code, f"w{k}") for k in (1, 2)]
    wait(lambda: sum(1 for w in workers_state(r, code).values() if w["state"] == "running") == 2, 60, "2 workers")
    kill_at(site, procs[0], 40)
    held = r.hlen(keys.leases(code, "w1"))
    conduct_to_end(r, code, procs[1:])
    items = stored_items(r, code)
    urls = [d["url"] for _k, d in items]
    result = {"items_lost": len({e["url"] for e in expected} - set(urls)),
              "duplicates": len(urls) - len(set(urls)),
              "requests_lost": len(reference - set(pages(site))), "leases_at_kill": held}
    state.delete_crawl(r, code)
    return result


def bench_kill_scrapy_redis(r, redis_url, site, definition, expected, reference, tmp, i):
    prefix = "sr" + uuid.uuid4().hex[:10]
    deff = tmp / "definition.json"
    deff.write_text(json.dumps(definition))
    site.clear_requests()
    procs = [subprocess.Popen([sys.executable, "-m", "bench._scrapy_redis_worker", str(deff), redis_url, prefix],
                              cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in (1, 2)]
    kill_at(site, procs[0], 40)
    procs[1].wait(180)
    urls = [json.loads(x)["url"] for x in r.lrange(f"{prefix}:items", 0, -1)]
    result = {"items_lost": len({e["url"] for e in expected} - set(urls)),
              "duplicates": len(urls) - len(set(urls)),
              "requests_lost": len(reference - set(pages(site))),
              "left_in_queue": r.zcard(f"{prefix}:requests")}
    for key in r.scan_iter(match=f"{prefix}:*"):
        r.delete(key)
    return result


def render(res, command) -> str:
    m = res["machine"]
    p = res["pause"]
    lines = [SECTION, "",
             f"`{command}` on {m}; site: {res['site']}, every HTML page takes {DELAY_MS} ms; "
             f"2 workers, CONCURRENT_REQUESTS {PER_WORKER} each; embedded redis-server.", "",
             "| measure | runs | median | max |", "|---|---|---|---|"]
    for label, values in (("pause -> every worker paused, nothing in flight (s)", p["to_paused"]),
                          ("resume -> next page requested (s)", p["to_next"]),
                          ("requests in flight when pause was set", p["in_flight"])):
        lines.append(f"| {label} | {len(values)} | {statistics.median(values):.3f} | {max(values):.3f} |")
    lines += ["", "| SIGKILL of 1 of 2 workers after 40 pages | kills | requests lost per kill (each) | "
              "items lost (each) | items stored twice |", "|---|---|---|---|---|"]
    for name in ("crawlsite", "scrapy-redis 0.9.1"):
        runs = res["kills"][name]
        lines.append(f"| {name} | {len(runs)} | {', '.join(str(x['requests_lost']) for x in runs)} | "
                     f"{', '.join(str(x['items_lost']) for x in runs)} | {sum(x['duplicates'] for x in runs)} |")
    lines += ["",
              f"- Pause waits for the downloads in flight (each takes {DELAY_MS} ms) to finish: its time is "
              "one page plus at most one control poll (250 ms) and one stats write (250 ms). The dashboard "
              "shows `paused` at the conductor's next tick after that.",
              "- Resume: the workers read the control key every 250 ms and wake the scheduler at once.",
              f"- Crawlsite: the killed worker's leases ({', '.join(str(x.get('leases_at_kill')) for x in res['kills']['crawlsite'])} "
              f"at the kill) went back to the queue once its heartbeat expired ({HEARTBEAT_TTL} s TTL here, "
              "10 s by default) and the other worker fetched them. scrapy-redis pops requests out of Redis "
              "for good: whatever the killed process had popped (in the downloader, or responses not yet "
              "parsed, and so the links they would have added) is never crawled.",
              "- Requests lost = pages of a full crawl of the site (the pause/resume crawl, which stored "
              "every item) never requested after the kill run ended."]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    old = path.read_text() if path.exists() else "# Benchmark results\n\n"
    pattern = re.compile(r"^## Pause, resume and SIGKILL \(issue 5\)\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _m: text + "\n", old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new.rstrip("\n") + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.control_bench")
    ap.add_argument("--pauses", type=int, default=3)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import redis as redislib

    from demosite import start_site
    from demosite.catalog import Profile
    from launcher.redis import EmbeddedRedis

    profile = Profile("control-bench", categories=8, products_per_category=30, per_page=10, traps=False)
    tmp = Path(tempfile.mkdtemp(prefix="control-bench-"))
    server = EmbeddedRedis(tmp / "redis").start()
    site = start_site(profile=profile, delay_ms=DELAY_MS)
    try:
        r = redislib.Redis.from_url(server.url, decode_responses=True)
        definition = definition_for(site)
        expected = site.expected_items()
        pause, reference = bench_pause(r, server.url, site, definition, expected, args.pauses)
        print("pause", pause, "reference pages", len(reference), flush=True)
        kills = {"crawlsite": [], "scrapy-redis 0.9.1": []}
        for i in range(args.kills):
            kills["crawlsite"].append(bench_kill_crawlsite(r, server.url, site, definition, expected, reference, i))
            kills["scrapy-redis 0.9.1"].append(
                bench_kill_scrapy_redis(r, server.url, site, definition, expected, reference, tmp, i))
            print("kill", i, kills["crawlsite"][-1], kills["scrapy-redis 0.9.1"][-1], flush=True)
        res = {"pause": pause, "kills": kills,
               "site": f"{len(expected)} products, {len(reference)} pages",
               "machine": f"{platform.node()}: {platform.machine()}, {os.cpu_count()} CPUs, "
                          f"Python {platform.python_version()}"}
        text = render(res, "python -m bench.control_bench " + " ".join(argv if argv is not None else sys.argv[1:]))
        print(text)
        if not args.no_write:
            write_section(ROOT / "bench" / "RESULTS.md", text)
    finally:
        site.stop()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
