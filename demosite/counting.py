"""A site that counts how many requests it serves at once, per host, and when each starts
(politeness tests and bench/politeness_bench.py).

One small threaded HTTP server per host (``127.0.0.1``, ``127.0.0.2``...: Linux answers on all of
127/8), each a domain of its own for Scrapy and for the shared limits. Page ``/p/N`` links to
``/p/2N+1`` and ``/p/2N+2`` below ``pages``, so a crawl of ``/p/0`` fetches every page once.
``robots.txt`` answers 404 at once and is not counted: each worker fetches it once per host, outside
the crawl's queue (see docs/crawler.md).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def do_GET(self):
        host: CountingHost = self.server.host  # type: ignore[attr-defined]
        if self.path == "/robots.txt":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        host.begin(self.path)
        try:
            if host.delay:
                time.sleep(host.delay)
            n = int(self.path.rsplit("/", 1)[-1]) if self.path.startswith("/p/") else 0
            links = "".join(f'<a href="/p/{k}">{k}</a>' for k in (2 * n + 1, 2 * n + 2) if k < host.pages)
            body = f"<html><body><h1>page {n}</h1>{links}</body></html>".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            host.end()


class CountingHost:
    """One domain: ``pages`` pages, each answered after ``delay`` seconds."""

    def __init__(self, address: str, pages: int, delay: float = 0.0):
        self.pages = pages
        self.delay = delay
        self.lock = threading.Lock()
        self.current = 0
        self.max_concurrent = 0
        self.starts: list[float] = []
        self.paths: list[str] = []
        self.server = ThreadingHTTPServer((address, 0), _Handler)
        self.server.daemon_threads = True
        self.server.host = self  # type: ignore[attr-defined]
        self.address = address
        self.port = self.server.server_address[1]
        self.url = f"http://{address}:{self.port}/p/0"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def begin(self, path: str = ""):
        with self.lock:
            self.paths.append(path)
            self.current += 1
            self.max_concurrent = max(self.max_concurrent, self.current)
            self.starts.append(time.monotonic())

    def reset(self):
        with self.lock:
            self.current = self.max_concurrent = 0
            self.starts, self.paths = [], []

    def end(self):
        with self.lock:
            self.current -= 1

    def max_in_window(self, seconds: float) -> int:
        """The most requests started within any ``seconds``-long window."""
        starts = sorted(self.starts)
        best, j = 0, 0
        for i, t in enumerate(starts):
            while starts[j] < t - seconds + 1e-9:
                j += 1
            best = max(best, i - j + 1)
        return best

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def max_rate(self, seconds: float = 1.0) -> float:
        """The most requests started in any ``seconds``-long window, per second."""
        return self.max_in_window(seconds) / seconds
