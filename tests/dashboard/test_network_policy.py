"""Hostile pages cannot make a crawl read local files or reach internal services (issue 11, findings
1 and 3). Real crawls launched from the dashboard, run by RQ workers, of pages served here."""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from django.conf import settings

from crawler import keys
from dashboard import engine
from dashboard.models import Crawl, Project
from tests.dashboard.test_api import post_json
from tests.dashboard.test_engine import conduct_until_done
from tests.servers import ThreadedServer, allow_crawling, disallow_crawling
from tests.workers import start_rq_workers

SECRET = "s3cr3t-" + "7f1c0d9e" * 4


class CountingSite:
    """Pages served on 127.0.0.1 from a dict; every request is recorded (path)."""

    def __init__(self, pages=None):
        self.pages = pages or {}
        self.requests = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                site.requests.append(self.path)
                status, headers, body = site.pages.get(self.path, (404, {}, b"not here"))
                self.send_response(status)
                for name, value in {"Content-Type": "text/html; charset=utf-8", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class CountingDashboard(ThreadedServer):
    """The dashboard itself (the real ASGI app), counting every HTTP request it gets."""

    def __init__(self):
        from crawlsite.asgi import application

        self.paths = []

        async def app(scope, receive, send):
            if scope["type"] == "http":
                self.paths.append(scope["path"])
            await application(scope, receive, send)

        super().__init__(app=app)


@pytest.fixture
def dashboard():
    server = CountingDashboard().start()
    yield server
    server.stop()


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret-key"
    path.write_text(SECRET)
    return path


def page(title, links):
    anchors = "\n".join(f'<a href="{href}">link {i}</a>' for i, href in enumerate(links))
    return (200, {}, f"<!DOCTYPE html><html><head><title>{title}</title></head><body>{anchors}</body></html>".encode())


def launch(owner, start_url, allowed_domains=(), **settings_):
    project = Project(owner=owner)
    project.set_definition(engine.validate_definition({
        "name": "Hostile", "start_urls": [start_url], "allowed_domains": list(allowed_domains),
        "item": {"fields": [{"name": "title", "selector": "title::text"},
                            {"name": "text", "selector": "body ::text", "many": True}]},
        "settings": {"DOWNLOAD_TIMEOUT": 10, "RETRY_TIMES": 1, **settings_},
    }))
    project.save()
    return engine.launch(project, workers=1)


def run_to_the_end(crawl):
    procs = start_rq_workers(1)
    try:
        conduct_until_done([crawl], timeout=180)
    finally:
        for proc in procs:
            proc.wait(90)
    crawl.refresh_from_db()
    return crawl


def crawl_log(redis_client, crawl):
    return [fields["message"] for _id, fields in redis_client.xrange(keys.log(crawl.code))]


@pytest.mark.django_db(transaction=True)
def test_hostile_links_fetch_nothing_local_or_internal_and_the_crawl_ends(owner, dashboard, secret_file,
                                                                         redis_client):
    redis_port = urlsplit(settings.REDIS_URL).port
    dash = dashboard.port
    site = CountingSite()
    long_path = "/" + "a" * 2000 + "!"  # under Scrapy's URLLENGTH_LIMIT
    data_url = "data:text/html;base64," + base64.b64encode(f"<title>{SECRET}</title>".encode()).decode()
    site.pages.update({
        "/": page("Hostile", [
            f"file://{secret_file}",
            f"file://127.0.0.1{secret_file}",
            f"file://localhost{secret_file}",
            f"ftp://127.0.0.1:{site.port}/",  # an FTP client talking to an HTTP port: it used to hang
            f"ftp://127.0.0.1:{dash}/",
            data_url,
            f"http://127.0.0.1:{dash}/accounts/login/",
            f"http://localhost:{dash}/accounts/login/",
            f"http://0x7f000001:{dash}/healthz",
            f"http://127.0.0.1:{redis_port}/",
            "http://169.254.169.254/latest/meta-data/",
            "/to-dashboard", "/to-file", "/to-data", "/to-ftp",
            long_path,
            "/fine",
        ]),
        "/fine": page("Fine page", []),
        long_path: page("Long path", []),
        "/to-dashboard": (302, {"Location": f"http://127.0.0.1:{dash}/accounts/login/"}, b""),
        "/to-file": (302, {"Location": f"file://{secret_file}"}, b""),
        "/to-data": (302, {"Location": data_url}, b""),
        "/to-ftp": (302, {"Location": f"ftp://127.0.0.1:{site.port}/"}, b""),
    })
    allow_crawling("127.0.0.1", site.port)  # the hostile site itself, and nothing else
    try:
        # every host of the hostile links is an allowed domain: only the network policy stands in the way
        crawl = run_to_the_end(launch(owner, site.url + "/", allowed_domains=[
            "127.0.0.1", "localhost", "0x7f000001", "169.254.169.254"]))
    finally:
        disallow_crawling("127.0.0.1", site.port)
        site.stop()

    assert crawl.status == Crawl.FINISHED, crawl.reason
    assert dashboard.paths == []  # not even robots.txt
    assert sorted(site.requests) == sorted(["/robots.txt", "/", "/fine", long_path, "/to-dashboard", "/to-file",
                                            "/to-data", "/to-ftp"])
    items = list(crawl.items.all())
    assert sorted(item.data["title"] for item in items) == ["Fine page", "Hostile", "Long path"]
    everything = json.dumps([item.data for item in items]) + json.dumps(crawl_log(redis_client, crawl))
    assert SECRET not in everything
    assert "Log in" not in everything and "ERR" not in everything  # no dashboard page, no Redis reply
    # every refusal is counted, and visible in the crawl log
    # (Scrapy itself does not follow a redirect to another scheme: those stay 302 responses)
    # file:// links with a host and ftp:// links (file:///x, with no host, is Scrapy's offsite filter's)
    assert crawl.stats["blocked_scheme"] >= 4
    assert crawl.stats["blocked_address"] >= 8  # dashboard x3, Redis, metadata, each with its robots.txt
    log = "\n".join(crawl_log(redis_client, crawl))
    for refused in (f"file://127.0.0.1{secret_file}", f"file://localhost{secret_file}", f"ftp://127.0.0.1:{site.port}/",
                    f"http://127.0.0.1:{dash}/accounts/login/: 127.0.0.1 is a loopback address",
                    f"http://localhost:{dash}/accounts/login/: localhost resolves to",
                    f"http://127.0.0.1:{redis_port}/", "http://169.254.169.254/latest/meta-data/: 169.254.169.254 is a link-local"):
        assert f"Refused {refused}" in log, (refused, log)


@pytest.mark.django_db(transaction=True)
def test_a_name_that_resolves_to_loopback_is_refused_robots_txt_included(owner, redis_client):
    site = CountingSite({"/": page("Internal", [])})  # not opened in CRAWLSITE_ALLOWED_NETWORKS
    try:
        crawl = run_to_the_end(launch(owner, f"http://localhost:{site.port}/", ROBOTSTXT_OBEY=True))
    finally:
        site.stop()
    assert crawl.status == Crawl.FINISHED, crawl.reason
    assert site.requests == []
    assert crawl.items.count() == 0
    assert crawl.stats["blocked_address"] >= 2  # robots.txt, then the page
    assert any(m.startswith(f"Refused http://localhost:{site.port}/robots.txt: localhost resolves to 127.0.0.1")
               for m in crawl_log(redis_client, crawl)), crawl_log(redis_client, crawl)


@pytest.mark.django_db(transaction=True)
def test_the_port_opened_is_the_only_one(owner):
    """Opening a test site's port does not open its neighbours on the same address."""
    opened, other = CountingSite({"/": page("Opened", [])}), CountingSite({"/": page("Other", [])})
    opened.pages["/"] = page("Opened", [other.url + "/"])
    allow_crawling("127.0.0.1", opened.port)
    try:
        crawl = run_to_the_end(launch(owner, opened.url + "/"))
    finally:
        disallow_crawling("127.0.0.1", opened.port)
        opened.stop()
        other.stop()
    assert crawl.status == Crawl.FINISHED, crawl.reason
    assert other.requests == [] and "/" in opened.requests
    assert crawl.stats["blocked_address"] >= 1


@pytest.mark.django_db
@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "FILE:///etc/passwd", "file://127.0.0.1/etc/passwd", "ftp://127.0.0.1:8000/",
    "data:text/html,hello", "s3://bucket/key", "gopher://127.0.0.1:6379/_INFO", "javascript:alert(1)",
    "//127.0.0.1/", " file:///etc/passwd",
])
def test_a_start_url_of_another_scheme_is_refused_by_the_api(client, owner, url):
    from dashboard.models import ApiToken
    from tests.dashboard.factories import definition

    auth = {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(owner)}"}
    response = post_json(client, "/api/projects", definition(start_urls=[url]), **auth)
    assert response.status_code == 422
    assert "http(s)" in " ".join(response.json()["errors"]["start_urls.0"])
    assert not Project.objects.exists()
