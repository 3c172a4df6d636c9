"""Pause, resume and SIGKILL benchmark (issue 5), and pauses at random moments (issue 12).

    .venv/bin/python -m bench.control_bench [--pauses 3] [--kills 3] [--random-pauses 50]
                                            [--part all|issue5|pauses] [--no-write]

One run starts ONE demosite site (this process; every HTML page takes 200 ms) and ONE private
embedded Redis; every crawl below uses the same spider, definition and settings
(CONCURRENT_REQUESTS 16 per worker, 2 workers):

1. pause/resume: a Crawlsite crawl (``python -m crawler run``); mid-crawl the control key is set to
   ``pause`` (what the pause button does) and the time until every worker reports ``paused`` with
   nothing in flight is measured (what the conductor waits for before showing ``paused``); then
   ``run``, and the time until the site receives the next request. Repeated ``--pauses`` times in
   the crawl, which must then store every expected item exactly once. Its processed pages are the
   site's ground truth (checked to hold every expected item's page).
2. SIGKILL, ``--kills`` times, alternating Crawlsite and scrapy-redis 0.9.1
   (bench/_scrapy_redis_worker.py): 2 workers; once 40 pages were processed and worker 1 has its
   16 requests in flight, worker 1 gets SIGKILL; worker 2 carries on until the crawl is complete
   (Crawlsite: a minimal conductor loop, ``leases.reap`` every 100 ms, heartbeat TTL 2 s;
   scrapy-redis: until its queue is empty and worker 2 has been idle for 1.5 s).

   A page counts as processed when a worker's callback output for it was fully consumed
   (bench/_control_probe.py, the same spider middleware on both sides, counts processed responses
   per URL in Redis). Requests lost per kill = pages of the ground truth that no worker ever
   processed. Of those, "taken by the killed worker" = the requests it held at the kill (the
   probe's in-flight list: downloader + scraper, every 20 ms; for Crawlsite also its leases).
   scrapy-redis drops them and keeps their fingerprints, so they are never retried, and the
   links they would have added are never followed either.
3. random pauses (issue 12), ``--random-pauses`` times: the adversarial demo site (profile
   ``lifecycle``, bigger: every HTML page takes 150 ms; 404s, 500s retried, pages failing once, a
   chain of two redirects, robots-disallowed links, ``/slow/`` timing out after DOWNLOAD_TIMEOUT
   1 s, duplicate and offsite links), 2 workers x 16 concurrent requests (16 per domain), no
   probes. After a random 0.2-2 s of crawling, ``pause``; measured: the time until every worker
   reports ``paused`` and the crawl's ``leased`` counter is 0 (what the conductor waits for before
   it shows ``paused``, at its next tick: at most 250 ms more); then ``run``. A crawl that ends
   before the pauses are done is followed by another; each must store every item exactly once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.results import write_section as write_named_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Pause, resume and SIGKILL (issue 5)"
DELAY_MS = 200
PER_WORKER = 16
HEARTBEAT_TTL = 2.0
KILL_AFTER_PAGES = 40
PROFILE = dict(categories=10, products_per_category=50, per_page=10, traps=False)
PROBE_MW = "bench._control_probe.ProcessedProbe"
PROBE_EXT = "bench._control_probe.InFlightProbe"


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


def probe_settings(redis_url, prefix, worker) -> list[str]:
    """``-s`` options adding the bench probes to a Crawlsite worker (its own components kept)."""
    from crawler.settings import COMPONENTS

    mw = {**COMPONENTS["SPIDER_MIDDLEWARES"], PROBE_MW: 2}
    ext = {**COMPONENTS["EXTENSIONS"], PROBE_EXT: 0}
    return ["-s", f"SPIDER_MIDDLEWARES={json.dumps(mw)}", "-s", f"EXTENSIONS={json.dumps(ext)}",
            "-s", f"BENCH_PROBE_REDIS={redis_url}", "-s", f"BENCH_PROBE_KEY={prefix}",
            "-s", f"BENCH_PROBE_WORKER={worker}"]


def start_worker(redis_url, code, worker, probes=True):
    return track(subprocess.Popen(
        [sys.executable, "-m", "crawler", "run", code, "--worker", worker, "--redis-url", redis_url,
         "-s", "LOG_LEVEL=WARNING", *(probe_settings(redis_url, probe_prefix(code), worker) if probes else [])],
        cwd=ROOT, env=env(CRAWLSITE_HEARTBEAT_TTL=str(HEARTBEAT_TTL)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def track(proc):
    STARTED.append(proc)
    return proc


def probe_prefix(code):
    return f"probe:{code}"


def processed(r, prefix) -> dict[str, int]:
    """URL -> responses fully processed by any worker (robots.txt excluded)."""
    return {u: int(n) for u, n in r.hgetall(f"{prefix}:processed").items() if not u.endswith("/robots.txt")}


def in_flight(r, prefix, worker) -> list[str]:
    raw = r.hget(f"{prefix}:inflight", worker)
    return json.loads(raw) if raw else []


def drop_probe(r, prefix):
    r.delete(f"{prefix}:processed", f"{prefix}:inflight")


def workers_state(r, code):
    from crawler import keys
    return {w: json.loads(v) for w, v in r.hgetall(keys.workers(code)).items()}


def wait_started(r, code, count=2):
    wait(lambda: sum(1 for w in workers_state(r, code).values() if w["state"] in ("running", "idle")) == count,
         60, f"{count} workers")


STARTED: list[subprocess.Popen] = []  # every worker process of the run: killed if the bench fails


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

    quiet, reaped = None, 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reaped += leases.reap(r, code)
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
    return reaped


def stored_items(r, code):
    from crawler import keys
    items = [(f["key"], json.loads(f["data"])) for _id, f in r.xrange(keys.items(code))]
    return items


def check_exactly_once(items, expected, label):
    urls = [data["url"] for _key, data in items]
    if len(urls) != len(set(urls)) or len({k for k, _d in items}) != len(items):
        twice = sorted({u for u in urls if urls.count(u) > 1})
        raise AssertionError(f"{label}: an item was stored twice: {twice[:5]} "
                             f"({[(k, d['url']) for k, d in items if d['url'] in twice[:2]]})")
    if set(urls) != {e["url"] for e in expected}:
        raise AssertionError(f"{label}: {len(set(e['url'] for e in expected) - set(urls))} items missing")


# -- 1. pause / resume ---------------------------------------------------------------------------
def bench_pause(r, redis_url, site, definition, expected, n_pauses):
    from crawler import state

    code = "p" + uuid.uuid4().hex[:10]
    site.clear_requests()
    state.launch(r, code, definition)
    procs = [start_worker(redis_url, code, f"w{k}") for k in (1, 2)]
    wait_started(r, code)
    to_paused, to_next, in_flight_at_pause = [], [], []
    for i in range(n_pauses):
        wait(lambda: len(pages(site)) >= 40 + 120 * i, 60, "pages")
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
    reference = set(processed(r, probe_prefix(code)))
    missing = {e["url"] for e in expected} - reference
    if missing:
        raise AssertionError(f"the probe missed {len(missing)} product pages of the reference crawl")
    state.delete_crawl(r, code)
    drop_probe(r, probe_prefix(code))
    return {"to_paused": to_paused, "to_next": to_next, "in_flight": in_flight_at_pause}, reference


# -- 2. SIGKILL ----------------------------------------------------------------------------------
def kill_at(r, prefix, proc, worker, timeout=20):
    """SIGKILL ``proc`` once KILL_AFTER_PAGES pages were processed and it has PER_WORKER requests in
    flight (or, after ``timeout`` s, at its next moment with the most it had). Returns what it held."""
    wait(lambda: sum(processed(r, prefix).values()) >= KILL_AFTER_PAGES, 60, "pages before the kill",
         step=0.002)
    deadline = time.monotonic() + timeout
    best = 0
    while True:
        held = in_flight(r, prefix, worker)
        if len(held) >= PER_WORKER or (time.monotonic() > deadline and len(held) >= max(best, 1)):
            break
        best = max(best, len(held))
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    return set(held)


def kill_result(r, prefix, reference, expected, urls, taken):
    done = processed(r, prefix)
    never = reference - set(done)
    return {"in_flight_at_kill": len(taken),
            "requests_lost": len(never),
            "lost_taken_by_killed": len(taken & never),
            "processed_twice": sum(1 for n in done.values() if n > 1),
            "items_lost": len({e["url"] for e in expected} - set(urls)),
            "duplicates": len(urls) - len(set(urls)),
            "pages_processed": len(done)}


def bench_kill_crawlsite(r, redis_url, site, definition, expected, reference, i):
    from crawler import keys, state

    code = "k" + uuid.uuid4().hex[:10]
    prefix = probe_prefix(code)
    site.clear_requests()
    state.launch(r, code, definition)
    procs = [start_worker(redis_url, code, f"w{k}") for k in (1, 2)]
    wait_started(r, code)
    leases_key = keys.leases(code, "w1")
    taken = kill_at(r, prefix, procs[0], "w1")
    leased = {json.loads(v)["url"] for v in r.hvals(leases_key)}
    conduct_to_end(r, code, procs[1:])
    urls = [d["url"] for _k, d in stored_items(r, code)]
    result = kill_result(r, prefix, reference, expected, urls, taken | leased)
    result["in_flight_at_kill"] = len(taken)
    result["leases_at_kill"] = len(leased)
    state.delete_crawl(r, code)
    drop_probe(r, prefix)
    return result


def bench_kill_scrapy_redis(r, redis_url, site, definition, expected, reference, tmp, i):
    prefix = "sr" + uuid.uuid4().hex[:10]
    deff = tmp / "definition.json"
    deff.write_text(json.dumps(definition))
    site.clear_requests()
    procs = [track(subprocess.Popen([sys.executable, "-m", "bench._scrapy_redis_worker", str(deff), redis_url,
                                     prefix, f"w{k}"],
                                    cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
             for k in (1, 2)]
    taken = kill_at(r, prefix, procs[0], "w1")
    # The survivor carries on; the crawl is over once the queue is empty and it has been idle a while
    # (nobody else can add requests). Then it is shut down cleanly (SIGTERM).
    survivor = procs[1]
    quiet, last = None, None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and survivor.poll() is None:
        now = (r.zcard(f"{prefix}:requests"), len(in_flight(r, prefix, "w2")), sum(processed(r, prefix).values()))
        if now[0] == 0 and now[1] == 0 and now == last:
            quiet = quiet or time.monotonic()
            if time.monotonic() - quiet >= 1.5:
                break
        else:
            quiet = None
        last = now
        time.sleep(0.1)
    else:
        if survivor.poll() is None:
            raise RuntimeError(f"scrapy-redis crawl {prefix} did not end")
    if survivor.poll() is None:
        survivor.send_signal(signal.SIGTERM)
    survivor.wait(60)
    urls = [json.loads(x)["url"] for x in r.lrange(f"{prefix}:items", 0, -1)]
    result = kill_result(r, prefix, reference, expected, urls, taken)
    result["left_in_queue"] = r.zcard(f"{prefix}:requests")
    for key in r.scan_iter(match=f"{prefix}:*"):
        r.delete(key)
    return result


# -- 3. pauses at random moments on the adversarial site (issue 12) -----------------------------------
RANDOM_SECTION = "## Pauses at random moments on the adversarial site (issue 12)"
RANDOM_DELAY_MS = 150
RANDOM_PROFILE = dict(categories=8, products_per_category=60, per_page=10, traps=True, adversarial=True)
RANDOM_SETTINGS = {"CONCURRENT_REQUESTS": PER_WORKER, "CONCURRENT_REQUESTS_PER_DOMAIN": PER_WORKER,
                   "DOWNLOAD_TIMEOUT": 1, "RETRY_TIMES": 2}


def paused_now(r, code):
    """Every worker reports ``paused`` and nothing is leased: what the conductor waits for."""
    from crawler import state

    counters = state.read_counters(r, code)
    live = [w for w in counters["workers"].values() if w.get("state") not in ("finished", "failed", "dead")]
    return bool(live) and all(w["state"] == "paused" for w in live) and counters["in_flight"] == 0


def bench_random_pauses(r, redis_url, count, seed=12):
    import random

    from crawler import definition as definitions
    from crawler import keys, state
    from demosite import start_site
    from demosite.catalog import Profile

    rng = random.Random(seed)
    site = start_site(profile=Profile("lifecycle-bench", **RANDOM_PROFILE), delay_ms=RANDOM_DELAY_MS)
    os.environ["CRAWLSITE_ALLOWED_NETWORKS"] = f"127.0.0.1:{site.port}"  # crawls refuse loopback otherwise
    d = site.recommended_definition(slow=True)
    d["settings"].update(RANDOM_SETTINGS)
    d = definitions.validate(d)
    expected = site.expected_items()
    times, in_flight, crawls, restored, restored_while_paused, dead, lost = [], [], 0, 0, 0, 0, 0
    try:
        while len(times) < count:
            code = "rp" + uuid.uuid4().hex[:10]
            crawls += 1
            site.clear_requests()
            state.launch(r, code, d)
            procs = [start_worker(redis_url, code, f"w{k}", probes=False) for k in (1, 2)]
            wait_started(r, code)
            while len(times) < count:
                time.sleep(rng.uniform(0.2, 2.0))
                counters = state.read_counters(r, code)
                if counters["queued"] == 0 and counters["in_flight"] == 0:
                    break  # the crawl is over: next one
                in_flight.append(counters["in_flight"])
                t0 = time.monotonic()
                state.set_control(r, code, "pause")
                wait(lambda: paused_now(r, code), 60, "paused", step=0.02)  # the bench takes little CPU
                times.append(time.monotonic() - t0)
                print(f"pause {len(times)}: {times[-1]:.3f} s ({in_flight[-1]} leased at pause)", flush=True)
                state.set_control(r, code, "run")
            dup_before = _same_key_duplicates(stored_items(r, code))
            dead += conduct_to_end(r, code, procs)
            items = stored_items(r, code)
            # stored as the conductor stores them: one row per item key (a page processed twice,
            # after its worker's heartbeat expired on this loaded machine, has the same keys)
            by_key = {}
            for key, data in items:
                by_key.setdefault(key, data)
            restored += len(items) - len(by_key)
            restored_while_paused += dup_before
            check_exactly_once(list(by_key.items()), expected, f"random pauses crawl {crawls}")
            lost += sum(1 for _id, f in r.xrange(keys.log(code)) if "connection lost" in f.get("message", ""))
            state.delete_crawl(r, code)
    finally:
        site.stop()
    return {"times": times, "in_flight": in_flight, "crawls": crawls, "items": len(expected), "restored": restored,
            "restored_during_pauses": restored_while_paused, "dead": dead, "lost": lost}


LOADED_NOTE = ("- The bound is judged on a quiet machine. On a loaded one (2 CPUs, load average about 10-15 in an earlier run: max 3.45 s) the workers are starved of CPU: the pages in flight at the pause (more leased than the 32 concurrent requests: downloads plus responses waiting for their callback) take that long to parse, and even heartbeats (TTL 2 s) expired. No pause hung: every one ended, with nothing leased. Rerun `python -m bench.control_bench --part pauses` on an idle machine to check the bound.")


def _same_key_duplicates(items) -> int:
    return len(items) - len({key for key, _data in items})


def _pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))]


def render_random(res, command) -> str:
    t = res["times"]
    page = RANDOM_DELAY_MS / 1000
    bound = page + 1.5
    lines = [RANDOM_SECTION, "",
             f"`{command}` on {res['machine']} (load average before the run {res['load']}); site: the adversarial `lifecycle` profile, bigger "
             f"({res['items']} products), every HTML page takes {RANDOM_DELAY_MS} ms; 2 workers x "
             f"{PER_WORKER} concurrent requests; DOWNLOAD_TIMEOUT 1 s, RETRY_TIMES 2; {res['crawls']} "
             "crawl(s), each storing every item exactly once.", "",
             "| pauses | p50 (s) | p95 (s) | max (s) | bound: page + 1.5 s | leased at pause: median (max) |",
             "|---|---|---|---|---|---|",
             f"| {len(t)} | {statistics.median(t):.3f} | {_pct(t, 0.95):.3f} | {max(t):.3f} | {bound:.2f} "
             f"({'held' if max(t) < bound else 'NOT held'}) | {statistics.median(res['in_flight'])} "
             f"({max(res['in_flight'])}) |", "",
             "- Time from setting the control key to `pause` until every worker reports `paused` and the "
             "crawl's `leased` counter is 0. The dashboard shows `paused` at the conductor's next tick "
             "(at most 250 ms later).",
             "- What it is made of: the control poll (250 ms), the downloads in flight finishing (one page; "
             "a request to `/slow/` in flight finishes at its 1 s timeout), then the worker reports at once "
             "(checked every 50 ms while pausing). Requests popped but not started go back to the queue "
             "at the pause, so they do not wait.",
             f"- Items written to the stream again with the same key (a page processed twice; stored once): "
             f"{res['restored']} ({res['restored_during_pauses']} of them before the end of the pauses, when "
             f"nothing reaps leases); requests the bench's conductor loop put back after a worker's heartbeat "
             f"(TTL {HEARTBEAT_TTL} s) expired while it still worked on them: {res['dead']}; "
             f"Redis connections a worker lost (its write batches are sent again, so their items may be written "
             f"twice, with the same keys): {res['lost']}.",
             f"- Every pause: {', '.join(f'{v:.2f}' for v in t)}."]
    if max(t) >= bound:
        lines.append(LOADED_NOTE)
    return "\n".join(lines) + "\n"


def _each(runs, field):
    return ", ".join(str(x[field]) for x in runs)


def _mean(runs, field):
    return statistics.mean(x[field] for x in runs)


def render(res, command) -> str:
    m = res["machine"]
    p = res["pause"]
    lines = [SECTION, "",
             f"`{command}` on {m}; site: {res['site']}, every HTML page takes {DELAY_MS} ms; "
             f"2 workers, CONCURRENT_REQUESTS {PER_WORKER} each, same spider, definition and settings on "
             "both sides; embedded redis-server; one site and one Redis for the whole run.", "",
             "| measure | runs | each | median | max |", "|---|---|---|---|---|"]
    for label, values in (("pause -> every worker paused, nothing in flight (s)", p["to_paused"]),
                          ("resume -> next page requested (s)", p["to_next"])):
        each = ", ".join(f"{v:.3f}" for v in values)
        lines.append(f"| {label} | {len(values)} | {each} | {statistics.median(values):.3f} | {max(values):.3f} |")
    lines.append(f"| requests in flight when pause was set | {len(p['in_flight'])} | "
                 f"{', '.join(str(v) for v in p['in_flight'])} | {statistics.median(p['in_flight'])} | "
                 f"{max(p['in_flight'])} |")
    lines += ["", f"SIGKILL of worker 1 of 2 once {KILL_AFTER_PAGES} pages were processed and it held "
              f"at least {PER_WORKER} requests (downloader + scraper); worker 2 finishes the crawl.", "",
              "| | kills | requests lost per kill: mean (each run) | of which taken by the killed worker (each) | "
              "killed worker's requests in flight at the kill (each) | items lost (each) | "
              "pages processed twice (each) | items stored twice |",
              "|---|---|---|---|---|---|---|---|"]
    for name in ("crawlsite", "scrapy-redis 0.9.1"):
        runs = res["kills"][name]
        lines.append(f"| {name} | {len(runs)} | **{_mean(runs, 'requests_lost'):.1f}** ({_each(runs, 'requests_lost')}) | "
                     f"{_each(runs, 'lost_taken_by_killed')} | {_each(runs, 'in_flight_at_kill')} | "
                     f"{_each(runs, 'items_lost')} | {_each(runs, 'processed_twice')} | "
                     f"{sum(x['duplicates'] for x in runs)} |")
    cs = res["kills"]["crawlsite"]
    lines += ["",
              f"- Pause waits for the downloads in flight (each takes {DELAY_MS} ms) to finish: its time is "
              "one page plus at most one control poll (250 ms) and one stats write (250 ms). The dashboard "
              "shows `paused` at the conductor's next tick after that.",
              "- Resume: the workers read the control key every 250 ms and wake the scheduler at once.",
              f"- A request is lost when no worker ever processes its page (callback output fully consumed, "
              f"counted per URL by bench/_control_probe.py on both sides): pages of the site's ground truth "
              f"({res['reference']} pages: those the pause/resume crawl processed, which stored every item) "
              "that no worker processed by the end of the kill run. For scrapy-redis this is the requests "
              "the killed worker had popped (dropped with it; their fingerprints stay in the dupefilter, so "
              "they are never retried) plus the pages only they linked to.",
              f"- Crawlsite: the killed worker's leases ({_each(cs, 'leases_at_kill')} at the kill) went back "
              f"to the queue once its heartbeat expired ({HEARTBEAT_TTL} s TTL here, 10 s by default) and the "
              "other worker processed them; \"pages processed twice\" are those the killed worker had "
              "processed but not yet acknowledged (items are keyed, so they are not stored twice).",
              "- scrapy-redis can lose more items than pages: its RedisPipeline pushes items from a thread, "
              "so the item of a page whose callback had finished can die with the killed process."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.control_bench")
    ap.add_argument("--pauses", type=int, default=3)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--random-pauses", type=int, default=50)
    ap.add_argument("--part", choices=("all", "issue5", "pauses"), default="all")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import redis as redislib

    from demosite import start_site
    from demosite.catalog import Profile
    from launcher.redis import EmbeddedRedis

    profile = Profile("control-bench", **PROFILE)
    tmp = Path(tempfile.mkdtemp(prefix="control-bench-"))
    server = EmbeddedRedis(tmp / "redis").start()
    site = start_site(profile=profile, delay_ms=DELAY_MS)
    os.environ["CRAWLSITE_ALLOWED_NETWORKS"] = f"127.0.0.1:{site.port}"  # crawls refuse loopback otherwise
    try:
        r = redislib.Redis.from_url(server.url, decode_responses=True)
        definition = definition_for(site)
        expected = site.expected_items()
        started = time.monotonic()
        command = " ".join(["python -m bench.control_bench", *(argv if argv is not None else sys.argv[1:])])
        machine = (f"{platform.node()}: {platform.machine()}, {os.cpu_count()} CPUs, "
                   f"Python {platform.python_version()}")
        if args.part in ("all", "pauses"):
            res = bench_random_pauses(r, server.url, args.random_pauses)
            res.update(machine=machine, load=", ".join(f"{x:.1f}" for x in os.getloadavg()))
            text = render_random(res, command)
            print(text, flush=True)
            if not args.no_write:
                write_named_section(RANDOM_SECTION, text)
            if args.part == "pauses":
                return 0
        pause, reference = bench_pause(r, server.url, site, definition, expected, args.pauses)
        print("pause", pause, "reference pages", len(reference), flush=True)
        kills = {"crawlsite": [], "scrapy-redis 0.9.1": []}
        for i in range(args.kills):
            kills["crawlsite"].append(bench_kill_crawlsite(r, server.url, site, definition, expected, reference, i))
            kills["scrapy-redis 0.9.1"].append(
                bench_kill_scrapy_redis(r, server.url, site, definition, expected, reference, tmp, i))
            print("kill", i, kills["crawlsite"][-1], kills["scrapy-redis 0.9.1"][-1], flush=True)
        print(f"bench took {time.monotonic() - started:.0f} s", flush=True)
        res = {"pause": pause, "kills": kills, "reference": len(reference),
               "site": f"{len(expected)} products, {len(reference)} pages",
               "machine": f"{platform.node()}: {platform.machine()}, {os.cpu_count()} CPUs, "
                          f"Python {platform.python_version()}"}
        text = render(res, " ".join(["python -m bench.control_bench", *(argv if argv is not None else sys.argv[1:])]))
        print(text)
        if not args.no_write:
            write_named_section(SECTION, text)
    finally:
        for proc in STARTED:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        site.stop()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
