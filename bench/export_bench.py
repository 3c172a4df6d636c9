"""Benchmark of streamed exports (issue 6) against Scrapy's own feed exports, in the same run.

    python -m bench.export_bench [--items 1000000] [--formats jsonl,json,csv,xml,xlsx] [--no-write]

1. Builds a throwaway SQLite database (temporary CRAWLSITE_VAR_DIR) holding one crawl of N items.
2. Serves it with uvicorn (``crawlsite.asgi``, a subprocess, as in production) and downloads each
   format through the real view over HTTP, reading the body as it comes and throwing it away.
   A sampler polls the web process's RSS every 20 ms: the peak above its idle RSS is reported.
3. Baseline: Scrapy's feed export (a CrawlerProcess whose spider yields the same items, read
   from the same database, with ``FEEDS`` set to the format) writes the same items to a file.
   Scrapy has no Excel exporter: the xlsx baseline is XlsxWriter (constant_memory) writing the
   same rows straight to a file, without Django or HTTP.
The results replace the ``## Exports (issue 6)`` section of bench/RESULTS.md (``--no-write``: print only).
At 1,000,000 items a full run takes about 30 minutes on 2 cores, most of it in the baselines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ["jsonl", "json", "csv", "xml", "xlsx"]
FIELDS = ["title", "price", "description", "tags"]
RESULTS = ROOT / "bench" / "RESULTS.md"
HEADING = "## Exports (issue 6)"


def item(i: int) -> dict:
    return {
        "url": f"https://shop.example/products/{i}",
        "title": f"Product {i}: a \"quoted\", <b>bold</b> name",
        "price": f"{i % 1000}.{i % 100:02d} €",
        "description": ("Line one of a long description, with commas, quotes \" and HTML <p>. " * 3).strip(),
        "tags": ["sale", f"cat-{i % 50}", "😀"],
    }


# --- setup (runs inside a Django process pointed at the temporary directory) -------------------


def setup_db(count: int) -> dict:
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command
    from django.db import connection, transaction

    from dashboard.models import Crawl, Item, Project

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("bench", password="bench-pass-123")
    definition = {"name": "Bench shop", "item": {"fields": [{"name": f, "selector": "p", "many": f == "tags"}
                                                           for f in FIELDS]}}
    project = Project.objects.create(owner=user, name="Bench shop", definition=definition)
    crawl = Crawl.objects.create(project=project, definition=definition, status=Crawl.FINISHED)
    table = Item._meta.db_table
    sql = f"INSERT INTO {table} (crawl_id, key, url, data, worker, created_at) VALUES (%s, %s, %s, %s, '', %s)"
    now = "2026-01-01 00:00:00"
    with transaction.atomic(), connection.cursor() as cursor:
        batch = []
        for i in range(count):
            data = item(i)
            batch.append((crawl.pk, f"k{i}", data["url"], json.dumps(data), now))
            if len(batch) == 20_000:
                cursor.executemany(sql, batch)
                batch = []
        if batch:
            cursor.executemany(sql, batch)
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return {"code": crawl.code, "session": session.session_key, "db": str(settings.DATABASES["default"]["NAME"])}


# --- baselines (subprocesses without Django) -----------------------------------------------------


def _rows(db: str):
    import sqlite3

    con = sqlite3.connect(db)
    for (data,) in con.execute("SELECT data FROM dashboard_item ORDER BY id"):
        yield json.loads(data)


def baseline_scrapy(db: str, fmt: str, out: str) -> None:
    """Scrapy's feed export: a spider yields the stored items, FEEDS writes them to ``out``."""
    import scrapy
    from scrapy.crawler import CrawlerProcess

    class StoredItems(scrapy.Spider):
        name = "stored_items"

        async def start(self):
            print(f"IDLE_RSS {psutil.Process().memory_info().rss}", flush=True)
            for data in _rows(db):
                yield data

    process = CrawlerProcess({
        "FEEDS": {out: {"format": {"jsonl": "jsonlines"}.get(fmt, fmt), "encoding": "utf-8",
                        "fields": ["url", *FIELDS] if fmt == "csv" else None}},
        "LOG_LEVEL": "ERROR", "TELNETCONSOLE_ENABLED": False,
    })
    process.crawl(StoredItems)
    process.start()


def baseline_xlsx(db: str, out: str) -> None:
    import xlsxwriter

    print(f"IDLE_RSS {psutil.Process().memory_info().rss}", flush=True)
    workbook = xlsxwriter.Workbook(out, {"constant_memory": True, "strings_to_formulas": False,
                                         "strings_to_numbers": False, "strings_to_urls": False})
    sheet = workbook.add_worksheet("items")
    names = ["url", *FIELDS]
    for col, name in enumerate(names):
        sheet.write_string(0, col, name)
    for row, data in enumerate(_rows(db), start=1):
        for col, name in enumerate(names):
            value = data.get(name)
            sheet.write_string(row, col, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    workbook.close()


# --- measuring --------------------------------------------------------------------------------


class PeakRSS:
    """Samples a process's RSS every ``interval`` seconds in a thread; ``peak`` is the largest."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_baseline(env: dict, db: str, fmt: str, workdir: Path) -> dict:
    out = workdir / f"baseline.{fmt}"
    args = [sys.executable, "-m", "bench.export_bench", "--baseline", fmt, "--db", db, "--out", str(out)]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    idle = None
    start = time.perf_counter()
    with PeakRSS(proc.pid) as sampler:
        for line in proc.stdout:
            if line.startswith("IDLE_RSS "):  # imports done, first item next: the clock starts here
                idle = int(line.split()[1])
                start = time.perf_counter()
        proc.wait()
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"baseline {fmt} failed ({proc.returncode})")
    size = out.stat().st_size
    out.unlink()
    return {"bytes": size, "seconds": seconds, "peak_above_idle": sampler.peak - (idle or sampler.peak)}


def run_http(server_pid: int, port: int, session: str, code: str, fmt: str) -> dict:
    import requests

    url = f"http://127.0.0.1:{port}/crawls/{code}/export?format={fmt}"
    process = psutil.Process(server_pid)
    before = process.memory_info().rss
    start = time.perf_counter()
    first_byte = None
    total = 0
    with PeakRSS(server_pid) as sampler:
        with requests.get(url, cookies={"sessionid": session}, stream=True, timeout=3600) as response:
            response.raise_for_status()
            for part in response.iter_content(1024 * 1024):
                if first_byte is None:
                    first_byte = time.perf_counter() - start
                total += len(part)
    seconds = time.perf_counter() - start
    return {"bytes": total, "seconds": seconds, "first_byte": first_byte, "rss_before": before,
            "peak": sampler.peak, "filename": response.headers.get("Content-Disposition", "")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--no-write", dest="write", action="store_false",
                        help="only print; by default the results replace this section of bench/RESULTS.md")
    parser.add_argument("--baseline", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--setup", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.baseline:  # child: one baseline run
        if args.baseline == "xlsx":
            baseline_xlsx(args.db, args.out)
        else:
            baseline_scrapy(args.db, args.baseline, args.out)
        return
    if args.setup:  # child: build the database, print what the parent needs
        print("SETUP " + json.dumps(setup_db(args.items)), flush=True)
        return

    formats = [f for f in args.formats.split(",") if f]
    workdir = Path(tempfile.mkdtemp(prefix="crawlsite-export-bench-"))
    env = {**os.environ, "CRAWLSITE_VAR_DIR": str(workdir), "DJANGO_SETTINGS_MODULE": "crawlsite.settings",
           "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING", "TMPDIR": str(workdir)}
    env.pop("DATABASE_URL", None)
    server = None
    try:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "bench.export_bench", "--setup", "--items", str(args.items)],
                             cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
        info = json.loads(next(line for line in out.splitlines() if line.startswith("SETUP "))[6:])
        print(f"{args.items:,} items stored in {time.perf_counter() - t0:.0f} s "
              f"({Path(info['db']).stat().st_size / 1e6:.0f} MB of SQLite)", flush=True)

        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "crawlsite.asgi:application", "--host", "127.0.0.1",
             "--port", str(port), "--lifespan", "off", "--log-level", "warning", "--no-access-log"],
            cwd=ROOT, env=env)
        import requests

        for _ in range(200):
            try:
                # Warm up: a logged-in page and a tiny export load every module the exports use.
                requests.get(f"http://127.0.0.1:{port}/crawls/{info['code']}/items/",
                             cookies={"sessionid": info["session"]}, timeout=5).raise_for_status()
                break
            except requests.RequestException:
                time.sleep(0.1)
        else:
            raise SystemExit("uvicorn did not start")
        time.sleep(0.5)
        idle = psutil.Process(server.pid).memory_info().rss
        print(f"web process idle RSS {idle / 1e6:.0f} MB", flush=True)

        rows = []
        for fmt in formats:
            web = run_http(server.pid, port, info["session"], info["code"], fmt)
            base = run_baseline(env, info["db"], fmt, workdir)
            row = {
                "format": fmt,
                "web_mb": web["bytes"] / 1e6,
                "web_s": web["seconds"],
                "web_first_byte": web["first_byte"],
                "web_mbps": web["bytes"] / 1e6 / web["seconds"],
                "web_peak_above_idle_mb": (web["peak"] - idle) / 1e6,
                "base_mb": base["bytes"] / 1e6,
                "base_s": base["seconds"],
                "base_mbps": base["bytes"] / 1e6 / base["seconds"],
                "base_peak_above_idle_mb": base["peak_above_idle"] / 1e6,
            }
            row["speed_ratio"] = row["web_mbps"] / row["base_mbps"]
            rows.append(row)
            print(f"{fmt:5}  web {row['web_mb']:7.1f} MB in {row['web_s']:6.1f} s = {row['web_mbps']:5.1f} MB/s, "
                  f"first byte {row['web_first_byte']:.2f} s, peak RSS +{row['web_peak_above_idle_mb']:.1f} MB | "
                  f"baseline {row['base_mb']:7.1f} MB in {row['base_s']:6.1f} s = {row['base_mbps']:5.1f} MB/s, "
                  f"peak +{row['base_peak_above_idle_mb']:.1f} MB | speed ratio {row['speed_ratio']:.2f}",
                  flush=True)
        report = render(args.items, idle, rows)
        print(report)
        if args.write:
            write_section(report)
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, SQLite")


def render(count: int, idle: int, rows: list[dict]) -> str:
    lines = [
        HEADING,
        "",
        f"`python -m bench.export_bench --items {count}` on {time.strftime('%Y-%m-%d')}: {machine()}.",
        f"{count:,} stored items (url + 4 fields with quotes, HTML, a list, an emoji), each format downloaded",
        "over HTTP from uvicorn serving `crawlsite.asgi`; the body is read as it comes. Web peak is the",
        f"largest RSS of the web process minus its idle RSS ({idle / 1e6:.0f} MB, after a warm-up request).",
        "Baseline: Scrapy's feed export (FEEDS) of the same items, read from the same database, to a",
        "file, timed from the spider's start (imports excluded); for xlsx, XlsxWriter (constant_memory)",
        "writing the same rows to a file. Web CSV writes list values as JSON text, Scrapy joins them.",
        "",
        "| format | size MB | web s | web MB/s | first byte s | web peak RSS above idle MB "
        "| baseline s | baseline MB/s | baseline peak above idle MB | web / baseline speed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['format']} | {r['web_mb']:.1f} | {r['web_s']:.1f} | {r['web_mbps']:.1f} | {r['web_first_byte']:.2f} "
            f"| {r['web_peak_above_idle_mb']:.1f} | {r['base_s']:.1f} | {r['base_mbps']:.1f} "
            f"| {r['base_peak_above_idle_mb']:.1f} | {r['speed_ratio']:.2f} |"
        )
    worst = max(r["web_peak_above_idle_mb"] for r in rows)
    lines += ["", f"Target: < 150 MB above idle. Worst web peak: {worst:.1f} MB "
                  f"({'met' if worst < 150 else 'NOT met'})."]
    return "\n".join(lines) + "\n"


def write_section(report: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda m: report + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + report
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
