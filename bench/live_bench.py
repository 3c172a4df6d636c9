"""Live dashboard benchmark (issue 4): item-to-browser latency, and 1 vs 200 websocket viewers.

Real processes: an embedded redis-server, `uvicorn crawlsite.asgi` (web), `manage.py conductor` at the
default tick, and this process as the item writer (it plays the crawl's item pipeline: XADD to the
crawl's item stream, stamping the send time) and as the websocket viewers (asyncio `websockets`
clients with a session cookie and an Origin header, like a browser).

    .venv/bin/python -m bench.live_bench [--seconds 10] [--viewers 200]

Prints a Markdown section and writes it into bench/RESULTS.md under "## Live updates (issue 4)".
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.results import write_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Live updates (issue 4)"


def setup_environment(tmp):
    from launcher.redis import EmbeddedRedis, free_port

    redis_server = EmbeddedRedis(os.path.join(tmp, "redis")).start()
    os.environ.update({
        "REDIS_URL": redis_server.url, "RQ_REDIS_URL": redis_server.url,
        "DATABASE_URL": f"sqlite:///{tmp}/bench.sqlite3", "CRAWLSITE_VAR_DIR": os.path.join(tmp, "var"),
        "DJANGO_SETTINGS_MODULE": "crawlsite.settings", "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING",
    })
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return redis_server, free_port()


def make_crawl():
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    from crawler import keys, state
    from dashboard.models import Crawl, Project
    from dashboard.redis import get_redis

    user = get_user_model().objects.create_user("bench", password="bench-pass-123")
    definition = {"name": "bench", "start_urls": ["http://127.0.0.1:9/"], "workers": 1}
    project = Project.objects.create(owner=user, name="bench", definition=definition)
    crawl = Crawl.objects.create(project=project, definition=definition, status=Crawl.PENDING)
    crawl.mark_started()
    redis = get_redis()
    state.ensure_items_group(redis, crawl.code)
    redis.zadd(keys.queue(crawl.code), {"{}": 1})  # work left: the conductor never finishes it
    client = Client()
    client.force_login(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    return crawl, cookie


def start_processes(port):
    env = dict(os.environ)
    web = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "crawlsite.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "--lifespan", "off", "--ws", "websockets-sansio"],
        cwd=ROOT, env=env,
    )
    conductor = subprocess.Popen([sys.executable, "manage.py", "conductor"], cwd=ROOT, env=env,
                                 stdout=subprocess.DEVNULL)
    return web, conductor


def commandstats(redis):
    stats = redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}


def cpu_seconds(pid):
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def run_scenario(port, code, cookie, viewers, seconds, item_rate, redis):
    from websockets.asyncio.client import connect

    from crawler import keys

    url = f"ws://127.0.0.1:{port}/ws/crawls/{code}/"
    headers = {"Cookie": cookie, "Origin": f"http://127.0.0.1:{port}"}
    sockets = []
    for _ in range(viewers):
        ws = await connect(url, additional_headers=headers, open_timeout=30, max_size=2**22)
        snapshot = json.loads(await ws.recv())
        assert snapshot["type"] == "crawl.snapshot", snapshot
        sockets.append(ws)
    received = [[] for _ in sockets]  # per viewer: (seq, recv time, [sent times of items])
    recording = {"on": True}

    async def reader(index, ws):
        try:
            async for raw in ws:
                now = time.time()
                msg = json.loads(raw)
                if msg.get("type") == "crawl.update" and recording["on"]:
                    sent = [i["data"]["sent"] for i in msg.get("items", []) if "sent" in i.get("data", {})]
                    received[index].append((msg["seq"], now, sent, msg["time"]))
        except Exception:
            pass

    readers = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(sockets)]
    await asyncio.sleep(2)  # warm up
    stream = keys.items(code)
    seq_start = int(redis.hget(keys.live(code), "seq") or 0)
    pids = {"web": WEB.pid, "conductor": CONDUCTOR.pid, "redis": REDIS_SERVER.process.pid}
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    stats_before = commandstats(redis)
    net_before = redis.info("stats")["total_net_output_bytes"]
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < seconds:
        n += 1
        redis.xadd(stream, {"key": f"bench-{viewers}-{n}", "url": f"http://bench/{n}", "worker": "w1",
                            "data": json.dumps({"url": f"http://bench/{n}", "sent": time.time()})})
        await asyncio.sleep(1 / item_rate)
    elapsed = time.monotonic() - started
    stats_after = commandstats(redis)
    net_after = redis.info("stats")["total_net_output_bytes"]
    cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    seq_end = int(redis.hget(keys.live(code), "seq") or 0)
    await asyncio.sleep(1.5)  # let the last items arrive
    recording["on"] = False
    for ws in sockets:
        await ws.close()
    for task in readers:
        task.cancel()

    # Commands issued during the window, less this script's own XADD and INFO calls.
    delta = {k: stats_after.get(k, 0) - stats_before.get(k, 0) for k in stats_after}
    delta.pop("xadd", None)
    delta.pop("info", None)
    delta = {k: v for k, v in delta.items() if v}
    # Every viewer gets every update: the same gap-free run of sequence numbers.
    # updates sent during the window: seq_start+1 .. seq_end, each viewer must have each, in order
    wanted = list(range(seq_start + 1, seq_end + 1))
    received = [[m for m in r if seq_start < m[0] <= seq_end] for r in received]
    reference = wanted
    complete = all([m[0] for m in r] == wanted for r in received)
    latencies = sorted((t - s) * 1000 for r in received for _, t, sent, _ in r for s in sent)
    server = sorted((p - s) * 1000 for r in received[:1] for _, _, sent, p in r for s in sent)
    items_seen_by_first = sum(len(m[2]) for m in received[0])
    return {
        "viewers": viewers,
        "seconds": elapsed,
        "items_written": n,
        "updates": len(reference),
        "complete": complete,
        "items_seen_by_first": items_seen_by_first,
        "commands_per_s": sum(delta.values()) / elapsed,
        "commands": delta,
        "net_kb_per_s": (net_after - net_before) / elapsed / 1024,
        "cpu": {name: (cpu_after[name] - cpu_before[name]) / elapsed * 100 for name in pids},
        "p50": statistics.median(latencies) if latencies else None,
        "p95": latencies[int(0.95 * (len(latencies) - 1))] if latencies else None,
        "max": latencies[-1] if latencies else None,
        "server_p95": server[int(0.95 * (len(server) - 1))] if server else None,
    }


def wait_for_server(port):
    import socket

    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("web server did not start")


def report(results, args, tick):
    one, many = results
    ratio = many["commands_per_s"] / one["commands_per_s"]
    top = lambda r: ", ".join(f"{k} {v / r['seconds']:.1f}" for k, v in sorted(r["commands"].items(), key=lambda kv: -kv[1])[:8])
    lines = [
        SECTION,
        "",
        f"`python -m bench.live_bench --seconds {args.seconds} --viewers {args.viewers}` on "
        f"{platform.node() or 'this machine'}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}; embedded redis-server, one "
        f"uvicorn web process, `manage.py conductor` at the default tick ({tick * 1000:.0f} ms). The script writes "
        f"{args.item_rate} items/s into the crawl's item stream (as Scrapy's item pipeline does) and reads them at "
        "websocket clients that send a session cookie and an Origin header.",
        "",
        "| viewers | updates | every viewer got every update (gap-free seq) | item latency p50 / p95 / max (ms) | "
        "of which stored to broadcast, p95 (ms) | "
        "Redis commands/s (all but the script's XADD) | Redis output KB/s | CPU % web / conductor / redis |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['viewers']} | {r['updates']} | {'yes' if r['complete'] else 'NO'} | "
            f"{r['p50']:.0f} / {r['p95']:.0f} / {r['max']:.0f} | {r['server_p95']:.0f} | {r['commands_per_s']:.1f} | {r['net_kb_per_s']:.1f} | "
            f"{r['cpu']['web']:.0f} / {r['cpu']['conductor']:.0f} / {r['cpu']['redis']:.0f} |"
        )
    lines += [
        "",
        f"- Redis commands/s with {many['viewers']} viewers vs 1: **{ratio:.2f}x** (target within 10%). "
        "channels-redis's `group_send` costs the same number of commands whatever the group's size "
        "(ZREMRANGEBYSCORE + ZRANGE on the group, then per web *process* one ZREMRANGEBYSCORE and one EVAL "
        "that ZADDs the message once for all of that process's viewers); only the ZRANGE reply and the message's "
        "channel list grow with viewers (the output KB/s column).",
        f"- Item stored to websocket client, p95 {one['p95']:.0f} ms with 1 viewer and {many['p95']:.0f} ms with "
        f"{many['viewers']} (target < 500 ms at the default tick): an item waits at most one tick to be drained, "
        "stored in the database and broadcast. With 200 viewers the rest is the fan-out in the web process and "
        "this script reading 200 sockets on the same 2-CPU machine (its own CPU is not in the table).",
        f"- Commands/s by name, 1 viewer: {top(one)}.",
        f"- Commands/s by name, {many['viewers']} viewers: {top(many)}.",
        "- CPU is per process over the measured window (100 % = one core). The web process's CPU grows with "
        "viewers: it frames and writes each update once per websocket (the JSON text is encoded once, by the conductor).",
        "",
    ]
    return "\n".join(lines)


def write_results(section):
    write_section(SECTION, section)


def main():
    global WEB, CONDUCTOR, REDIS_SERVER
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--viewers", type=int, default=200)
    parser.add_argument("--item-rate", type=int, default=40)
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="crawlsite-live-bench-")
    REDIS_SERVER, port = setup_environment(tmp)
    from django.conf import settings

    from dashboard.redis import get_redis

    crawl, cookie = make_crawl()
    WEB, CONDUCTOR = start_processes(port)
    try:
        wait_for_server(port)
        redis = get_redis()
        results = []
        for viewers in (1, args.viewers):
            results.append(asyncio.run(run_scenario(port, crawl.code, cookie, viewers, args.seconds, args.item_rate, redis)))
            time.sleep(1)
        section = report(results, args, settings.CONDUCTOR_TICK)
        print(section)
        if not args.no_write:
            write_results(section)
    finally:
        for proc in (WEB, CONDUCTOR):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        REDIS_SERVER.stop()


WEB = CONDUCTOR = REDIS_SERVER = None

if __name__ == "__main__":
    main()
