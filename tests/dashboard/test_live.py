"""The live path end to end: the conductor's broadcast, rates, the time series, and a real websocket
client on a real ASGI server watching a real crawl."""

import json
import threading
import time

import pytest
from django.conf import settings
from django.test import Client
from websockets.sync.client import connect as ws_connect

from crawler import keys
from dashboard import engine, live
from dashboard.conductor import Conductor
from dashboard.models import Crawl, Project
from tests.dashboard.test_engine import make_project, site, start_rq_workers  # noqa: F401 (fixture)
from tests.servers import ThreadedServer

pytestmark = pytest.mark.django_db(transaction=True)


class Recorder:
    """Stands in for the channel layer in unit tests: keeps what would be sent."""

    def __init__(self):
        self.sent = []

    def send(self, messages, timeout=5.0):
        self.sent.extend(messages)


def test_rates_come_from_successive_counter_reads():
    meter = live.RateMeter(window=5)
    assert meter.update("c", 0, 0, now=100.0) == {"pages_per_s": 0.0, "items_per_s": 0.0}
    assert meter.update("c", 10, 4, now=101.0) == {"pages_per_s": 10.0, "items_per_s": 4.0}
    assert meter.update("c", 30, 4, now=102.0) == {"pages_per_s": 15.0, "items_per_s": 2.0}
    # Old reads leave the window.
    for t in range(103, 110):
        rates = meter.update("c", 30 + (t - 102) * 2, 4, now=float(t))
    assert rates["pages_per_s"] == 2.0 and rates["items_per_s"] == 0.0
    meter.forget(set())
    assert meter.reads == {}


def test_scraped_strings_are_clipped_and_only_http_urls_become_links():
    item = live.item_message({"id": 1, "key": "k", "url": "javascript:alert(1)", "data": {"t": "x" * 5000, "tags": list(range(100))}})
    assert item["link"] == ""
    assert len(item["data"]["t"]) == live.CLIP and len(item["data"]["tags"]) == 20
    assert live.item_message({"url": "https://shop.example/p/1", "data": {}})["link"] == "https://shop.example/p/1"
    assert live.item_message({"url": "u", "data": {"url": "u", "title": "Tea", "price": 3}})["summary"] == "title: Tea · price: 3"


def test_publish_writes_rates_series_and_sequence_and_sends_one_group_message(owner, redis_client):
    project = Project.objects.create(owner=owner, name="p", definition={})
    crawl = Crawl.objects.create(project=project, definition={}, status=Crawl.RUNNING)
    clock = iter(float(t) for t in range(1000, 2000)).__next__
    recorder = Recorder()
    publisher = live.Publisher(redis_client, broadcaster=recorder, clock=clock)
    redis_client.xadd(keys.log(crawl.code), {"worker": "w1", "level": "ERROR", "message": "old"})
    first = publisher.publish(crawl, {"pages": 1, "items": 0, "queued": 5, "seen": 6}, [])
    assert first["log"] == []  # older lines are in the snapshot, not repeated
    redis_client.xadd(keys.log(crawl.code), {"worker": "w1", "level": "ERROR", "message": "new"})
    items = [{"id": f"{n}-0", "key": f"k{n}", "url": f"http://x/{n}", "data": {}} for n in range(50)]
    second = publisher.publish(crawl, {"pages": 3, "items": 50, "queued": 4, "seen": 7}, items, stored=50)
    assert [line["message"] for line in second["log"]] == ["new"]
    assert second["seq"] == first["seq"] + 1
    assert len(second["items"]) == live.ITEMS_PER_UPDATE and second["items"][0]["key"] == "k49"  # newest first
    assert second["items_new"] == 50
    assert [group for group, _ in recorder.sent] == [keys.group(crawl.code)] * 2
    assert live.rates(crawl.code, redis_client) == second["rates"]
    series = [json.loads(p) for p in redis_client.lrange(keys.series(crawl.code), 0, -1)]
    assert [p[1] for p in series] == [1, 3]  # one point per second of the fake clock
    overview = publisher.publish_overview()
    assert overview[0][0] == keys.owner_group(owner.pk)
    assert json.loads(overview[0][1]["text"])["crawls"][0]["counters"]["pages"] == 3


def test_series_is_capped_and_still_covers_the_whole_crawl(owner, redis_client, monkeypatch):
    monkeypatch.setattr(live, "SERIES_CAP", 10)
    project = Project.objects.create(owner=owner, name="p", definition={})
    crawl = Crawl.objects.create(project=project, definition={}, status=Crawl.RUNNING)
    now = [0.0]
    publisher = live.Publisher(redis_client, broadcaster=Recorder(), clock=lambda: now[0])
    for t in range(100):
        now[0] = float(t)
        publisher.publish(crawl, {"pages": t}, [])
    series = [json.loads(p) for p in redis_client.lrange(keys.series(crawl.code), 0, -1)]
    assert len(series) < 10
    assert series[0][0] <= 16 and series[-1][0] >= 90  # from near the start to near the end
    assert [p[0] for p in series] == sorted(p[0] for p in series)


def session_cookie(user):
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def test_real_websocket_client_sees_counts_rise_during_a_real_crawl(owner, site):  # noqa: F811
    server = ThreadedServer().start()
    stop = threading.Event()
    conductor_thread = None
    procs = []
    try:
        crawl = engine.launch(make_project(owner, site), workers=1)
        url = f"ws://127.0.0.1:{server.port}/ws/crawls/{crawl.code}/"
        headers = {"Cookie": session_cookie(owner), "Origin": server.url}
        with ws_connect(url, additional_headers=headers, open_timeout=10) as ws:
            snapshot = json.loads(ws.recv(timeout=10))
            assert snapshot["type"] == "crawl.snapshot" and snapshot["code"] == crawl.code
            conductor = Conductor(tick=0.1)
            conductor_thread = threading.Thread(target=conductor.run, args=(stop.is_set,), daemon=True)
            conductor_thread.start()
            procs = start_rq_workers(1)
            seqs, pages, items, statuses, got_items = [], [], [], [], 0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                msg = json.loads(ws.recv(timeout=30))
                if msg["type"] != "crawl.update":
                    continue
                seqs.append(msg["seq"])
                pages.append(msg["counters"]["pages"])
                items.append(msg["counters"]["items"])
                statuses.append(msg["status"])
                got_items += len(msg["items"])
                if msg["status"] == Crawl.FINISHED:
                    break
        assert statuses[-1] == Crawl.FINISHED
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gaps, in order
        assert pages == sorted(pages) and items == sorted(items)  # counts only rise
        assert len(set(pages)) > 2, pages  # seen rising while it ran, not only at the end
        assert items[-1] == len(site.expected_items())
        assert got_items > 0
    finally:
        stop.set()
        if conductor_thread:
            conductor_thread.join(10)
        for proc in procs:
            proc.wait(30)
        server.stop()


def test_real_server_refuses_a_websocket_without_a_session(owner, site):  # noqa: F811
    server = ThreadedServer().start()
    try:
        crawl = Crawl.objects.create(project=make_project(owner, site), definition={}, status=Crawl.RUNNING)
        with ws_connect(f"ws://127.0.0.1:{server.port}/ws/crawls/{crawl.code}/",
                        additional_headers={"Origin": server.url}, open_timeout=10) as ws:
            with pytest.raises(Exception) as excinfo:
                ws.recv(timeout=10)
            assert ws.close_code == 4401, excinfo.value
        # A foreign Origin is refused at the handshake (AllowedHostsOriginValidator).
        with pytest.raises(Exception):
            with ws_connect(f"ws://127.0.0.1:{server.port}/ws/crawls/{crawl.code}/",
                            additional_headers={"Origin": "http://evil.example", "Cookie": session_cookie(owner)},
                            open_timeout=10) as ws:
                ws.recv(timeout=5)
    finally:
        server.stop()


@pytest.mark.django_db(transaction=True)
def test_a_job_waiting_for_a_free_rq_worker_shows_as_waiting(owner, site):
    """No RQ worker runs: the crawl's two jobs wait, and the page's snapshot says so."""
    crawl = engine.launch(make_project(owner, site), workers=2)
    crawl.refresh_from_db()
    snapshot = live.crawl_snapshot(crawl, [])
    assert [(w["worker"], w["state"]) for w in snapshot["workers"]] == [("w1", "waiting"), ("w2", "waiting")]
    assert snapshot["workers"][0]["message"] == "waiting for a free RQ worker"
