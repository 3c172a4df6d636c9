"""robots.txt fails closed (crawler.robots): one real crawl over hosts whose robots.txt misbehaves.

Each host (its own port, so its own robots.txt) serves the same pages: ``/`` links to two public
pages and two under ``/private/``. What its robots.txt does decides what a crawl may fetch there.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Request, Response
from scrapy.http.request import NO_CALLBACK
from scrapy.utils.test import get_crawler
from twisted.internet.defer import Deferred

from crawler import definition, keys, state
from crawler.netguard import BlockedAddress
from crawler.robots import ALLOW_ALL, DISALLOW_ALL, RULES, FailClosedRobotsTxtMiddleware, verdict
from crawler.settings import fetch_settings
from helpers import conduct, start_worker
from tests.servers import allow_crawling, disallow_crawling

PUBLIC = ["/", "/a", "/b"]
PRIVATE = ["/private/x", "/private/y"]
RULES_TXT = b"User-agent: *\nDisallow: /private/\n"
HANG_S = 20.0  # far past the crawl's DOWNLOAD_TIMEOUT; the site lets go when it stops
SLOW_S = 0.3  # a robots.txt that comes late, but in time


class RobotsSite:
    """Serves the four pages on 127.0.0.1; ``robots`` says how it answers /robots.txt. Counts the
    requests per path."""

    def __init__(self, robots: str):
        self.robots = robots
        self.requests: Counter[str] = Counter()
        self.released = threading.Event()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                site.requests[self.path] += 1
                status, headers, body = site.answer(self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        allow_crawling("127.0.0.1", self.port)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def answer(self, path: str) -> tuple[int, dict, bytes]:
        text = {"Content-Type": "text/plain"}
        if path.startswith("/robots") and path.endswith(".txt"):
            if self.robots == "503":
                return 503, text, b"busy"
            if self.robots == "404":
                return 404, text, b"none"
            if self.robots == "hang":
                self.released.wait(HANG_S)
                return 503, text, b"too late"
            if self.robots == "slow":
                self.released.wait(SLOW_S)
            if self.robots.startswith("redirect"):  # redirectN: N redirects, then the rules
                hop = int(path[len("/robots"):-len(".txt")] or 0)
                if hop < int(self.robots[len("redirect"):]):
                    return 301, {"Location": f"/robots{hop + 1}.txt"}, b""
            return 200, text, RULES_TXT
        if path in PUBLIC + PRIVATE:
            links = "".join(f'<a href="{p}">{p}</a>' for p in PUBLIC + PRIVATE) if path == "/" else ""
            return 200, {"Content-Type": "text/html"}, f"<html><body><h1>{path}</h1>{links}</body></html>".encode()
        return 404, text, b"not here"

    def pages(self) -> set[str]:
        return {p for p in self.requests if not (p.startswith("/robots") and p.endswith(".txt"))}

    def stop(self) -> None:
        self.released.set()
        disallow_crawling("127.0.0.1", self.port)
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sites():
    made: dict[str, RobotsSite] = {}
    yield lambda *kinds: made.update({k: RobotsSite(k) for k in kinds}) or made
    for site in made.values():
        site.stop()


def test_robots_txt_that_cannot_be_had_disallows_the_host(r, code, redis_url, sites):
    """503 (after retries) and a robots.txt that never comes (timeout) fetch no page of their host;
    404 fetches every page; rules, reached directly or through five redirects, are obeyed; six
    redirects are too many (no page). Private start URLs popped at once with the first request of
    their host wait for its late robots.txt."""
    hosts = sites("503", "hang", "404", "rules", "redirect5", "redirect6", "slow")
    starts = [h.url + "/" for h in hosts.values()] + [hosts["slow"].url + p for p in PRIVATE + ["/a"]]
    state.launch(r, code, definition.validate({
        "name": "robots", "start_urls": starts, "allowed_domains": ["127.0.0.1"],
        "item": {"fields": [{"name": "title", "selector": "h1::text"}]},
        "settings": {"DOWNLOAD_TIMEOUT": 2.0, "RETRY_TIMES": 1, "ROBOTSTXT_OBEY": True},
    }))
    proc = start_worker(redis_url, code, "w1")
    counters = conduct(r, code, [proc], timeout=90)
    assert proc.returncode == 0, proc.stdout.read()

    for closed in ("503", "hang", "redirect6"):
        assert hosts[closed].pages() == set(), closed
    assert hosts["503"].requests["/robots.txt"] == 2  # retried once, as any 503
    assert hosts["404"].pages() == set(PUBLIC + PRIVATE)
    for ruled in ("rules", "redirect5", "slow"):
        assert hosts[ruled].pages() == set(PUBLIC), ruled
        assert not [p for p in hosts[ruled].requests if p.startswith("/private/")]
    assert hosts["redirect5"].requests["/robots5.txt"] == 1
    assert "/robots6.txt" not in hosts["redirect6"].requests  # the sixth redirect is not followed
    # refused by robots: 3 start URLs of closed hosts, 2 private pages of each host with rules
    assert int(counters["stats"]["robots_forbidden"]) == 3 + 2 * 3
    log = "\n".join(f.get("message", "") for _id, f in r.xrange(keys.log(code)))
    assert f"No page of 127.0.0.1:{hosts['503'].port} is fetched in this run: its robots.txt answered HTTP 503" in log


def test_verdict_of_each_answer():
    assert [verdict(s) for s in (200, 204, 301, 304, 401, 403, 404, 410, 429, 500, 503)] == [
        RULES, RULES, DISALLOW_ALL, DISALLOW_ALL, ALLOW_ALL, ALLOW_ALL, ALLOW_ALL, ALLOW_ALL, ALLOW_ALL,
        DISALLOW_ALL, DISALLOW_ALL]


def test_the_middleware_replaces_scrapys_and_caps_robots_redirects():
    settings = fetch_settings({"settings": {}})
    base = settings.getdict("DOWNLOADER_MIDDLEWARES_BASE")
    assert base["crawler.robots.FailClosedRobotsTxtMiddleware"] == 100
    assert "scrapy.downloadermiddlewares.robotstxt.RobotsTxtMiddleware" not in base

    mw = FailClosedRobotsTxtMiddleware(get_crawler(settings_dict={"ROBOTSTXT_OBEY": True}))
    ours = Request("http://shop.example/robots.txt", callback=NO_CALLBACK, meta={"dont_obey_robotstxt": True})
    users = Request("http://shop.example/robots.txt", meta={"dont_obey_robotstxt": True})
    for request in (ours, users):
        asyncio.run(mw.process_request(request))
    assert ours.meta["redirect_ttl"] == 5 and "redirect_ttl" not in users.meta


def test_a_host_whose_robots_txt_the_network_refused_is_refused_as_such():
    crawler = get_crawler(settings_dict={"ROBOTSTXT_OBEY": True})
    crawler.stats.open_spider()
    mw = FailClosedRobotsTxtMiddleware(crawler)
    for netloc, exc in (("a.example", BlockedAddress("refused http://a.example/robots.txt: a.example is private")),
                        ("b.example", TimeoutError("slow"))):
        mw._parsers[netloc] = Deferred()
        mw._robots_error(exc, netloc)
    with pytest.raises(BlockedAddress, match=r"^refused http://a.example/p: a.example is private$"):
        mw.process_request_2(mw._parsers["a.example"], Request("http://a.example/p"))
    with pytest.raises(IgnoreRequest, match="^Forbidden by robots.txt$"):
        mw.process_request_2(mw._parsers["b.example"], Request("http://b.example/p"))
    assert crawler.stats.get_value("robotstxt/forbidden") == 1
    page = Response("http://c.example/robots.txt", status=404, body=b"User-agent: *\nDisallow: /\n")
    mw._parsers["c.example"] = Deferred()
    asyncio.run(mw._parse_robots(page, "c.example", Request("http://c.example/p")))
    mw.process_request_2(mw._parsers["c.example"], Request("http://c.example/p"))  # 404: allowed, body ignored


def test_every_request_waiting_for_a_robots_txt_gets_its_rules():
    """Scrapy hands the parser to the first waiter only (the others got None: allow all)."""
    mw = FailClosedRobotsTxtMiddleware(get_crawler(settings_dict={"ROBOTSTXT_OBEY": True}))

    async def three_wait():
        mw._parsers["d.example"] = Deferred()
        waiting = [asyncio.ensure_future(mw.robot_parser(Request(f"http://d.example/{n}"))) for n in range(3)]
        await asyncio.sleep(0)
        rules = Response("http://d.example/robots.txt", status=200, body=RULES_TXT)
        await mw._parse_robots(rules, "d.example", Request("http://d.example/0"))
        return await asyncio.gather(*waiting)

    parsers = asyncio.run(three_wait())
    assert [p.allowed("http://d.example/private/x", "bot") for p in parsers] == [False, False, False]
