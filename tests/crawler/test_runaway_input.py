"""Hostile input meets real workers: catastrophic regexes, huge pages, huge items, forged spiders.

Each test serves its own few pages and runs real ``python -m crawler run`` processes.
"""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from crawler import definition, keys, state
from crawler.counters import ITEMS_TOO_LARGE
from helpers import ROOT, conduct, start_worker, stream_items
from tests.servers import allow_crawling, disallow_crawling


class PagesSite:
    """Serves ``{path: html}`` on 127.0.0.1 and records every path requested."""

    def __init__(self, pages):
        self.pages = pages
        self.requests = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                site.requests.append(self.path)
                body = site.pages.get(self.path)
                if body is None:
                    self.send_response(404)
                    body = "<html><body>not found</body></html>"
                else:
                    self.send_response(200)
                data = body.encode()
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        allow_crawling("127.0.0.1", self.server.server_port)  # loopback is refused unless opened
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        disallow_crawling("127.0.0.1", self.server.server_port)
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pages_site():
    started = []

    def serve(pages):
        site = PagesSite(pages)
        started.append(site)
        return site

    yield serve
    for site in started:
        site.stop()


def page(title, *links, body=""):
    anchors = "".join(f'<a href="{href}">{href}</a>' for href in links)
    return f"<html><head><title>{title}</title></head><body><h1>{title}</h1>{anchors}{body}</body></html>"


FIELDS = [{"name": "title", "selector": "h1::text"}]
QUIET = {"ROBOTSTXT_OBEY": False, "RETRY_ENABLED": False}


def log_lines(r, code):
    return [fields for _id, fields in r.xrange(keys.log(code))]


def test_a_catastrophic_follow_pattern_runs_in_linear_time(r, code, redis_url, pages_site):
    """``(a+)+$`` against a 48-character ``aaaa…!`` link would backtrack for days on Python's
    ``re``; on RE2 the crawl ends, and the links it follows are exactly the ones the pattern
    finds (searched anywhere in the URL, as before)."""
    evil = "/" + "a" * 48 + "!"
    good = "/" + "a" * 48
    site = pages_site({"/": page("home", evil, good, "/denied-aaaa"), good: page("good"), evil: page("evil"),
                       "/denied-aaaa": page("denied")})
    state.launch(r, code, definition.validate({
        "name": "redos", "start_urls": [site.url + "/"],
        "follow": {"allow": ["(a+)+$"], "deny": ["(d+)+enied"]},
        "item": {"url_pattern": "(a+)+$", "fields": FIELDS}, "settings": QUIET,
    }))
    proc = start_worker(redis_url, code, "w1")
    conduct(r, code, [proc], timeout=120)
    assert proc.returncode == 0, proc.stdout.read()
    assert sorted(site.requests) == sorted(["/", good])  # the '!' link and the denied one never fetched
    assert [i["data"]["title"] for i in stream_items(r, code)] == ["good"]  # url_pattern: home has no a+ at the end


def test_a_page_over_download_maxsize_is_not_stored(r, code, redis_url, pages_site):
    big = page("big", body="<p>" + "x" * 20_000 + "</p>")
    site = pages_site({"/": page("home", "/big", "/small"), "/big": big, "/small": page("small")})
    state.launch(r, code, definition.validate({
        "name": "maxsize", "start_urls": [site.url + "/"],
        "item": {"fields": FIELDS}, "settings": {**QUIET, "DOWNLOAD_MAXSIZE": 4096},
    }))
    proc = start_worker(redis_url, code, "w1")
    counters = conduct(r, code, [proc], timeout=120)
    assert proc.returncode == 0, proc.stdout.read()
    assert sorted(i["data"]["title"] for i in stream_items(r, code)) == ["home", "small"]
    assert counters["errors"] >= 1  # the refused page is visible, not silently lost
    assert any("/big" in line["message"] and "4096" in line["message"] for line in log_lines(r, code))


def test_the_worker_applies_the_32_mib_default_and_never_an_unlimited_size():
    from crawler.settings import crawl_settings

    default = crawl_settings(definition.validate({"name": "x", "start_urls": ["http://a.test/"],
                                                  "item": {"fields": FIELDS}}), "c1", "w1")
    assert default.getint("DOWNLOAD_MAXSIZE") == 32 * 1024 * 1024
    assert 0 < default.getint("DOWNLOAD_WARNSIZE") < default.getint("DOWNLOAD_MAXSIZE")
    # a definition stored before the limit existed, with 0 (unlimited): clamped to the default
    old = crawl_settings({"start_urls": ["http://a.test/"], "settings": {"DOWNLOAD_MAXSIZE": 0}}, "c1", "w1")
    assert old.getint("DOWNLOAD_MAXSIZE") == 32 * 1024 * 1024


def test_an_item_over_the_byte_limit_is_dropped_counted_and_logged(r, code, redis_url, pages_site):
    huge = "é" * 3000  # 6000 bytes of JSON: over a 4096-byte limit, under it in characters
    site = pages_site({"/": page("home", "/huge", "/fine"), "/huge": page(huge), "/fine": page("fine")})
    frozen = definition.validate({"name": "item bytes", "start_urls": [site.url + "/"],
                                  "item": {"fields": FIELDS}, "settings": QUIET})
    frozen["operator"] = {"max_item_bytes": 4096}  # what the dashboard freezes at launch
    state.launch(r, code, frozen)
    proc = start_worker(redis_url, code, "w1")
    counters = conduct(r, code, [proc], timeout=120)
    assert proc.returncode == 0, proc.stdout.read()
    assert sorted(i["data"]["title"] for i in stream_items(r, code)) == ["fine", "home"]
    assert counters[ITEMS_TOO_LARGE] == 1
    assert int(r.hget(keys.stats(code), ITEMS_TOO_LARGE)) == 1
    size = len(json.dumps({"url": site.url + "/huge", "title": huge}, ensure_ascii=False,
                          separators=(",", ":")).encode())
    warnings = [line["message"] for line in log_lines(r, code) if line["level"] == "WARNING"]
    assert any(site.url + "/huge" in m and f"{size} bytes" in m and "4096" in m for m in warnings), warnings
    assert not r.exists(keys.leases(code, "w1")) and counters["in_flight"] == 0  # its page's lease was released


def test_a_worker_imports_no_spider_its_own_mapping_does_not_list(r, code, redis_url, tmp_path):
    """Someone able to write the crawl's definition in Redis names another class: a worker
    whose CRAWLSITE_SPIDERS does not list it refuses before importing anything."""
    marker = tmp_path / "imported"
    frozen = definition.validate({"name": "forged", "start_urls": ["http://127.0.0.1:9/"], "spider": "shop"},
                                 spiders={"shop"})
    frozen["operator"] = {"spider_class": "tests.crawler.import_probe.ProbeSpider"}
    state.launch(r, code, frozen)
    os.environ["IMPORT_PROBE_MARKER"] = str(marker)
    try:
        proc = start_worker(redis_url, code, "w1")
        output, _ = proc.communicate(timeout=60)
    finally:
        del os.environ["IMPORT_PROBE_MARKER"]
    assert proc.returncode == 1, output
    assert not marker.exists()
    worker = json.loads(r.hget(keys.workers(code), "w1"))
    assert worker["state"] == "failed" and "not installed on this worker" in worker["message"]
    # the probe works: a process that does import it leaves the marker
    subprocess.run([sys.executable, "-c", "import tests.crawler.import_probe"], cwd=ROOT, check=True,
                   env=dict(os.environ, IMPORT_PROBE_MARKER=str(marker)), timeout=60)
    assert marker.exists()
