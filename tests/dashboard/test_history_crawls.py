"""Two real runs of a shop whose catalogue changes between them: the unique key removes the items
listed on several pages, validation marks items without a price, and comparing the runs shows the
items that appeared and disappeared. Runs through RQ workers, Scrapy and the conductor."""

import html
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.test import Client

from dashboard import engine
from dashboard.models import ApiToken, Crawl, CrawlHistory, Project
from tests.dashboard.test_engine import run_with_workers
from tests.servers import allow_crawling, disallow_crawling

pytestmark = pytest.mark.django_db(transaction=True)


class Shop:
    """Listing pages /list/1 and /list/2; ``catalogue`` maps a page to its products (sku, price)."""

    def __init__(self):
        self.catalogue = {}
        shop = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/":
                    body = "".join(f'<a href="/list/{n}">page {n}</a>' for n in sorted(shop.catalogue))
                elif self.path.startswith("/list/") and self.path[6:] in shop.catalogue:
                    body = "".join(
                        f'<div class="product"><span class="sku">{html.escape(sku)}</span>'
                        + (f'<span class="price">{price}</span>' if price else "") + "</div>"
                        for sku, price in shop.catalogue[self.path[6:]])
                else:
                    self.send_error(404)
                    return
                data = f"<html><body>{body}</body></html>".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        allow_crawling("127.0.0.1", self.port)
        return self

    def __exit__(self, *exc):
        disallow_crawling("127.0.0.1", self.port)
        self.server.shutdown()
        self.server.server_close()


def run(project):
    crawl = engine.launch(project, workers=1)
    run_with_workers([crawl])
    assert crawl.status == Crawl.FINISHED, crawl.reason
    return crawl


def test_two_runs_of_a_changing_shop_deduplicate_validate_and_compare(owner):
    with Shop() as shop:
        project = Project(owner=owner)
        project.set_definition(engine.validate_definition({
            "name": "Changing shop", "start_urls": [f"http://127.0.0.1:{shop.port}/"],
            "item": {"url_pattern": "/list/", "selector": ".product",
                     "fields": [{"name": "sku", "selector": ".sku::text"}, {"name": "price", "selector": ".price::text"}]},
            "unique_key": ["sku"],
            "validation": {"required": ["price"], "rules": [{"field": "price", "type": "number", "min": 0}]},
            "settings": {"ROBOTSTXT_OBEY": False, "DOWNLOAD_TIMEOUT": 5, "RETRY_TIMES": 0},
        }))
        project.save()
        # Run 1: B is listed on both pages; C has no price.
        shop.catalogue = {"1": [("A", "1.00"), ("B", "2.00")], "2": [("B", "2.00"), ("C", "")]}
        first = run(project)
        # Run 2: B and C are gone, D is new.
        shop.catalogue = {"1": [("A", "1.10")], "2": [("D", "4.00")]}
        second = run(project)

    assert sorted(i.data["sku"] for i in first.items.all()) == ["A", "B", "C"]
    assert first.stats["replaced"] == 1 and first.stats["invalid"] == 1
    assert first.items.get(data__sku="C").errors == ["price: required"]
    token = ApiToken.issue(owner)
    body = Client().get(f"/api/crawls/{first.code}", HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert body["invalid"] == 1 and body["replaced"] == 1 and body["counters"]["items"] == 4
    assert CrawlHistory.objects.get(crawl=first).series  # the chart's points, in the database

    compared = Client().get(f"/api/crawls/{second.code}/compare?with={first.code}",
                            HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert [e["values"]["sku"] for e in compared["appeared"]["first"]] == ["D"]
    assert sorted(e["values"]["sku"] for e in compared["disappeared"]["first"]) == ["B", "C"]
    assert compared["crawl"]["counters"]["invalid"] == 0 and compared["other"]["counters"]["invalid"] == 1

    client = Client()
    client.force_login(owner)
    new = client.get(f"/crawls/{second.code}/export?format=jsonl&only=new")
    assert [json.loads(line)["sku"] for line in b"".join(new.streaming_content).splitlines()] == ["D"]
