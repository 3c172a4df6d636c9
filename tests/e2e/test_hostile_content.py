"""Scraped content is hostile: a real crawl of a site full of script injections, then every page
that shows its items, URLs and log lines is opened in Chromium. The test fails if any script
runs (a dialog opens, or a payload sets ``window.__pwned``), and checks the payloads show as text."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import expect

from crawler import keys
from dashboard import engine
from dashboard.conductor import Conductor
from dashboard.models import Crawl, Project
from dashboard.redis import get_redis
from tests.dashboard.test_engine import start_rq_workers
from tests.servers import allow_crawling, disallow_crawling

PAYLOADS = [
    "<script>window.__pwned = 'script'</script>",
    "<img src=x onerror=\"window.__pwned = 'onerror'\">",
    "<a href=\"javascript:window.__pwned = 'href'\">click</a>",
    "<svg onload=\"window.__pwned = 'svg'\"></svg>",
    "</td></tr></table><b><i>broken markup",
    "\"><script>alert('quote-break')</script>",
]


class HostileHandler(BaseHTTPRequestHandler):
    """Pages whose text holds the payloads, entity-encoded so the spider extracts them as text."""

    def do_GET(self):
        from html import escape

        if self.path == "/":
            links = "".join(f'<a href="/p/{i}/">p{i}</a>' for i in range(len(PAYLOADS)))
            body = f"<html><head><title>home</title></head><body>{links}</body></html>"
        elif self.path.startswith("/p/"):
            i = int(self.path.split("/")[2])
            payload = escape(PAYLOADS[i])
            body = (
                f"<html><head><title>{payload}</title></head><body><h1>{payload}</h1>"
                f"<p class='note'>{payload}</p><a class='link' href='javascript:alert(1)'>x</a></body></html>"
            )
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def hostile_site():
    server = ThreadingHTTPServer(("127.0.0.1", 0), HostileHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    allow_crawling("127.0.0.1", server.server_port)  # crawls refuse loopback unless opened
    yield f"http://127.0.0.1:{server.server_port}"
    disallow_crawling("127.0.0.1", server.server_port)
    server.shutdown()


def crawl_hostile_site(owner, url):
    project = Project(owner=owner)
    project.set_definition(engine.validate_definition({
        "name": "<script>window.__pwned='project'</script>",
        "start_urls": [url + "/"],
        "item": {"url_pattern": "/p/", "fields": [
            {"name": "title", "selector": "h1::text", "many": False},
            {"name": "note", "selector": ".note::text", "many": False},
            {"name": "link", "selector": "a.link::attr(href)", "many": False},
        ]},
        "settings": {"ROBOTSTXT_OBEY": False, "RETRY_ENABLED": False},
    }))
    project.save()
    crawl = engine.launch(project, workers=1)
    workers = start_rq_workers(1)
    conductor = Conductor(tick=0.1)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            if conductor.hold_lock():
                conductor.tick()
            crawl.refresh_from_db()
            if crawl.is_terminal:
                break
            time.sleep(0.1)
    finally:
        conductor.release()
        for proc in workers:
            proc.wait(60)
    assert crawl.status == Crawl.FINISHED, crawl.reason
    assert crawl.items.count() == len(PAYLOADS)
    # A worker's warning carrying hostile text, as a log line on the crawl page.
    get_redis().xadd(keys.log(crawl.code), {
        "worker": "w1", "level": "WARNING", "logger": "scrapy",
        "message": PAYLOADS[1] + " " + PAYLOADS[0], "time": str(time.time()),
    })
    return crawl


def test_no_scraped_content_runs_as_script(logged_in_page, live_asgi, owner, hostile_site, artifacts):
    page = logged_in_page
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    crawl = crawl_hostile_site(owner, hostile_site)
    first_item = crawl.items.order_by("id").first()
    pages = [
        "/",
        "/projects/",
        f"/projects/{crawl.project.code}/",
        f"/crawls/{crawl.code}/",
        f"/crawls/{crawl.code}/items/",
        f"/crawls/{crawl.code}/items/?q=script",
        f"/crawls/{crawl.code}/items/{first_item.key}.json",
    ]
    for path in pages:
        page.goto(live_asgi.url + path)
        page.wait_for_load_state("networkidle")
        if path == f"/crawls/{crawl.code}/":
            expect(page.locator('[data-live="connection"]')).to_have_attribute("data-state", "live")
        # Open every collapsed value so that its content is rendered too.
        for details in page.locator("details").all():
            details.evaluate("el => el.open = true")
        for link in page.locator("a[href^='javascript:']").all():
            raise AssertionError(f"{path}: a javascript: link was rendered: {link.get_attribute('href')}")
        assert page.evaluate("window.__pwned === undefined"), f"{path}: a payload ran ({page.evaluate('window.__pwned')})"
        assert dialogs == [], f"{path}: a dialog opened: {dialogs}"
    page.goto(f"{live_asgi.url}/crawls/{crawl.code}/items/")
    body = page.locator("body").inner_text()
    assert "<script>window.__pwned = 'script'</script>" in body  # shown as text, intact
    page.screenshot(path=str(artifacts / "hostile-items.png"), full_page=True)
    page.goto(f"{live_asgi.url}/crawls/{crawl.code}/")
    expect(page.locator("body")).to_contain_text("<img src=x onerror=")
    page.screenshot(path=str(artifacts / "hostile-crawl.png"), full_page=True)
    data = json.loads(page.evaluate("fetch('%s/crawls/%s/items/%s.json').then(r => r.text())" % (live_asgi.url, crawl.code, first_item.key)))
    title = data["data"]["title"] if "data" in data else data["title"]
    assert title in PAYLOADS  # the JSON view returns the value untouched
