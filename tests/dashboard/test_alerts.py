"""Field coverage, monitors and notification channels (issue 15, docs/alerts.md).

Deliveries run as real RQ jobs of the ``tasks`` queue, in an RQ ``SimpleWorker`` of the test
process (the delivery log is written to the test database, which a worker subprocess could not
reach with SQLite). Webhooks go to a receiver served here, opened with ``allow_crawling`` like
any test site.
"""

import hashlib
import hmac
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone
from rq import SimpleWorker

from crawler import keys, state
from dashboard import engine, monitors, notify, tasks
from dashboard.conductor import Conductor
from dashboard.models import Alert, ApiToken, Channel, Crawl, Delivery, Monitor
from launcher.redis import free_port
from tests.dashboard.factories import project_for
from tests.dashboard.test_lifecycle import crawl_in, tick_until, worker
from tests.servers import allow_crawling, disallow_crawling

SECRET = "webhook-secret-" + "0123456789abcdef"


class Receiver:
    """A webhook endpoint: records every POST (headers and raw body), answers ``status``."""

    def __init__(self, status=200):
        self.status = status
        self.headers = {}
        self.hang = threading.Event()  # set: answer nothing until release
        self.release = threading.Event()
        self.posts = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.posts.append((dict(self.headers), body))
                if receiver.hang.is_set():
                    receiver.release.wait(120)
                self.send_response(receiver.status)
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        allow_crawling("127.0.0.1", self.port)

    def stop(self):
        self.release.set()
        disallow_crawling("127.0.0.1", self.port)
        self.server.shutdown()
        self.server.server_close()

    def messages(self):
        return [json.loads(body) for _headers, body in self.posts]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def auth(owner):
    return {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(owner)}"}


def run_tasks():
    """Run every job of the ``tasks`` queue (and their retries) in a real RQ worker, here."""
    queue = tasks.tasks_queue()
    SimpleWorker([queue], connection=queue.connection, serializer=queue.serializer).work(burst=True)


def post(client, path, body, auth):
    return client.post(path, json.dumps(body), content_type="application/json", **auth)


def verify(headers, body, secret=SECRET):
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers.get("X-Crawlsite-Signature", ""), expected)


# -- API: monitors and channels, bad input ------------------------------------------------------


@pytest.mark.django_db
def test_monitors_and_channels_api_validates_each_field_and_hides_secrets(client, owner, auth, receiver):
    project = project_for(owner, "Shop", start_urls=["http://127.0.0.1:9/"])
    base = f"/api/projects/{project.code}"
    bad_monitors = [
        ({"kind": "nope"}, "kind"),
        ({"kind": "items_min"}, "min_items"),
        ({"kind": "items_min", "min_items": 2.5}, "min_items"),
        ({"kind": "error_rate", "max_percent": 101}, "max_percent"),
        ({"kind": "field_coverage", "field": "price", "min_percent": 90}, "field"),  # not extracted
        ({"kind": "field_coverage", "min_percent": 90}, "field"),
        ({"kind": "stalled", "minutes": "soon"}, "minutes"),
    ]
    for body, field in bad_monitors:
        response = post(client, f"{base}/monitors", body, auth)
        assert response.status_code == 422, body
        assert field in response.json()["errors"], (body, response.json())
        assert field in response.json()["detail"]
    assert Monitor.objects.count() == 0

    made = post(client, f"{base}/monitors", {"kind": "field_coverage", "field": "title", "min_percent": 90}, auth)
    assert made.status_code == 201
    assert made.json()["threshold"] == 90 and made.json()["field"] == "title"
    assert [m["id"] for m in client.get(f"{base}/monitors", **auth).json()] == [made.json()["id"]]

    bad_channels = [
        ({"kind": "pigeon"}, "kind"),
        ({"kind": "webhook", "url": "ftp://example.com/x"}, "url"),
        ({"kind": "webhook", "url": "file:///etc/passwd"}, "url"),
        ({"kind": "webhook", "url": "http://169.254.169.254/latest"}, "url"),  # cloud metadata
        ({"kind": "webhook", "url": f"http://127.0.0.1:{free_port()}/x"}, "url"),  # loopback, port not opened
        ({"kind": "slack", "url": "http://[::1]/x"}, "url"),
        ({"kind": "webhook", "url": "http://user:pw@example.com/x"}, "url"),
        ({"kind": "webhook", "url": "https://example.com/x", "secret": "short"}, "secret"),
        ({"kind": "email", "emails": ["not an address"]}, "emails"),
        ({"kind": "email"}, "emails"),
    ]
    for body, field in bad_channels:
        response = post(client, f"{base}/channels", body, auth)
        assert response.status_code == 422, body
        assert field in response.json()["errors"], (body, response.json())
    assert "refused address" in post(client, f"{base}/channels", bad_channels[3][0], auth).json()["errors"]["url"][0]
    loopback = post(client, f"{base}/channels", bad_channels[4][0], auth).json()["errors"]["url"][0]
    assert "not opened by CRAWLSITE_ALLOWED_NETWORKS" in loopback  # says how to open it
    assert Channel.objects.count() == 0

    made = post(client, f"{base}/channels", {"kind": "webhook", "url": receiver.url, "secret": SECRET}, auth)
    assert made.status_code == 201, made.content
    assert SECRET not in made.content.decode() and made.json()["new_secret"] is None
    generated = post(client, f"{base}/channels", {"kind": "webhook", "url": receiver.url}, auth).json()
    assert len(generated["new_secret"]) >= 32  # shown this once
    listed = client.get(f"{base}/channels", **auth).content.decode()
    assert SECRET not in listed and generated["new_secret"] not in listed
    client.force_login(owner)
    page = client.get(project.get_absolute_url()).content.decode()
    assert SECRET not in page and generated["new_secret"] not in page and made.json()["id"] in page

    assert client.delete(f"{base}/channels/{generated['id']}", **auth).status_code == 204
    assert client.delete(f"{base}/channels/{generated['id']}", **auth).status_code == 404
    assert Channel.objects.count() == 1


@pytest.mark.django_db
def test_the_project_page_shows_form_errors_next_to_the_field(client, owner):
    project = project_for(owner)
    client.force_login(owner)
    response = client.post(f"/projects/{project.code}/channels/new", {"kind": "webhook", "url": "gopher://x/"})
    assert response.status_code == 422
    assert 'data-error="url"' in response.content.decode() and "http://" in response.content.decode()
    response = client.post(f"/projects/{project.code}/monitors/new", {"kind": "items_min", "threshold": ""})
    assert response.status_code == 422 and 'data-error="threshold"' in response.content.decode()
    assert not Channel.objects.exists() and not Monitor.objects.exists()


# -- monitors against recorded numbers ------------------------------------------------------------


@pytest.mark.django_db
def test_each_final_monitor_compares_the_runs_numbers_with_its_threshold(owner):
    project = project_for(owner)
    previous = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.FINISHED,
                                    stats={"items": 200, "pages": 200})
    crawl = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.FINISHED,
                                 stats={"items": 100, "pages": 50, "errors": 10, "invalid": 7,
                                        "coverage": {"url": 100.0, "title": 40.0}})
    assert previous.created_at <= crawl.created_at
    for kind, field, threshold in [("status", "", None), ("items_min", "", 150), ("items_drop", "", 60),
                                   ("error_rate", "", 25), ("field_coverage", "title", 30),
                                   ("invalid_max", "", 5), ("invalid_max", "", 7), ("stalled", "", 1)]:
        Monitor.objects.create(project=project, kind=kind, field=field, threshold=threshold)
    got = [(r["kind"], r["passed"], r["value"]) for r in monitors.check(crawl)]
    assert got == [("status", True, "finished"), ("items_min", False, 100), ("items_drop", False, 50.0),
                   ("error_rate", True, 20.0), ("field_coverage", True, 40.0), ("invalid_max", False, 7),
                   ("invalid_max", True, 7), ("stalled", True, 0)]
    lost = monitors.check(crawl, action="workers_lost", monitors=[Monitor(kind="status")])
    assert lost[0]["passed"] is False


# -- deliveries -----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_webhook_gets_a_signed_test_message_and_a_name_resolving_to_a_refused_address_is_refused(owner,
                                                                                                   receiver):
    project = project_for(owner)
    channel = Channel.objects.create(project=project, kind=Channel.WEBHOOK, url=receiver.url, secret=SECRET)
    notify.send_test(channel, owner)
    run_tasks()
    [(headers, body)] = receiver.posts
    assert verify(headers, body) and json.loads(body)["event"] == "test"
    assert json.loads(body)["project"] == {"id": project.code, "name": project.name}
    assert [d.outcome for d in Delivery.objects.all()] == ["delivered"]

    # "localhost" passes validation (a name), but resolves to loopback on a port that is not opened.
    closed = Channel.objects.create(project=project, kind=Channel.WEBHOOK, secret=SECRET,
                                    url=f"http://localhost:{free_port()}/hook")
    with pytest.raises(notify.Refused, match="refused address"):
        notify.send(closed, {"event": "test"})


@pytest.mark.django_db
def test_a_webhook_redirect_is_not_followed_and_a_hanging_answer_is_cut_at_the_time_limit(owner, receiver):
    project = project_for(owner)
    channel = Channel.objects.create(project=project, kind=Channel.WEBHOOK, url=receiver.url, secret=SECRET)
    receiver.status, receiver.headers = 302, {"Location": "http://169.254.169.254/latest/meta-data/"}
    with pytest.raises(notify.DeliveryError, match="HTTP 302"):
        notify.send(channel, {"event": "test"})
    assert len(receiver.posts) == 1  # the redirect was not followed

    receiver.status, receiver.headers = 200, {}
    receiver.hang.set()
    try:
        with pytest.raises(notify.DeliveryError, match="no answer within 0.5 s"):
            notify.post(receiver.url, b"{}", {}, timeout=0.5)
        assert not receiver.release.is_set()  # given up while the endpoint still held the answer
    finally:
        receiver.hang.clear()
        receiver.release.set()


@pytest.mark.django_db
def test_a_name_lookup_that_hangs_is_cut_at_the_send_time_limit(monkeypatch):
    """getaddrinfo has no time limit of its own (a silent DNS server cannot be served here: the
    system resolver is replaced by one that never answers until released)."""
    asked, release = threading.Event(), threading.Event()
    system = socket.getaddrinfo

    def silent_dns(host, *args, **kwargs):
        if host != "hooks.example":
            return system(host, *args, **kwargs)
        asked.set()
        release.wait(30)
        raise OSError("released")

    monkeypatch.setattr(socket, "getaddrinfo", silent_dns)
    try:
        with pytest.raises(notify.DeliveryError, match=r"^cannot resolve hooks.example: no answer within 0.5 s$"):
            notify.post("http://hooks.example/hook", b"{}", {}, timeout=0.5)
        assert asked.is_set() and not release.is_set()  # given up while the lookup still hung
    finally:
        release.set()
        monkeypatch.undo()


@pytest.mark.django_db
def test_send_test_is_rate_limited_per_user_in_the_api_and_the_page(client, owner, outsider, auth, settings,
                                                                     redis_client):
    settings.CHANNEL_TESTS_PER_MINUTE = 2
    project = project_for(owner)
    channel = Channel.objects.create(project=project, kind=Channel.WEBHOOK, url="http://127.0.0.1:9/", secret=SECRET)
    api_path = f"/api/projects/{project.code}/channels/{channel.public_id}/test"
    assert client.post(api_path, **auth).status_code == 202
    minute = int(time.time() // 60)
    for m in (minute, minute + 1):  # this minute and the next: the test may straddle them
        redis_client.set(keys.rate("channel-test", owner.pk, m), 2)
    answer = client.post(api_path, **auth)
    assert answer.status_code == 429
    assert 1 <= int(answer["Retry-After"]) <= 61
    assert answer.json()["detail"].startswith("At most 2 test notifications a minute: try again in ")
    client.force_login(owner)
    page = client.post(f"/projects/{project.code}/channels/{channel.public_id}/test", follow=True)
    assert "No test notification sent. At most 2 test notifications a minute" in page.content.decode()
    assert Alert.objects.filter(event=Alert.TEST).count() == 1  # only the first one
    notify.send_test(channel, outsider)  # another user's count is their own: no error
    assert Alert.objects.filter(event=Alert.TEST).count() == 2


@pytest.mark.django_db(transaction=True)
def test_an_endpoint_that_is_down_is_retried_then_marked_failed_without_delaying_the_run_end(owner, settings,
                                                                                           client):
    settings.ALERT_RETRY_INTERVALS = [0, 0]
    port = free_port()  # nothing listens there
    allow_crawling("127.0.0.1", port)
    try:
        project = project_for(owner)
        Monitor.objects.create(project=project, kind=Monitor.ITEMS_MIN, threshold=10)
        Channel.objects.create(project=project, kind=Channel.WEBHOOK, url=f"http://127.0.0.1:{port}/", secret=SECRET)
        crawl = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.FINISHING)
        crawl.mark_finished({"items": 3, "pages": 3})  # the run end: checks and enqueues, sends nothing
        crawl.refresh_from_db()
        assert crawl.status == Crawl.FINISHED and crawl.checks[0]["passed"] is False
        assert Alert.objects.filter(crawl=crawl, event=Alert.RUN_ENDED).count() == 1
        assert not Delivery.objects.exists()  # no attempt was made in the caller (the conductor)
        run_tasks()
    finally:
        disallow_crawling("127.0.0.1", port)
    attempts = list(Delivery.objects.order_by("id").values_list("attempt", "outcome"))
    assert attempts == [(1, "retrying"), (2, "retrying"), (3, "failed")]
    assert "cannot connect to 127.0.0.1 port" in Delivery.objects.first().detail
    client.force_login(owner)
    log = client.get(f"/api/projects/{project.code}/deliveries").json()
    assert [d["outcome"] for d in log] == ["failed", "retrying", "retrying"] and log[0]["crawl"] == crawl.code
    assert "failed" in client.get(project.get_absolute_url()).content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_stalled_crawl_alerts_once_and_recovers_once(owner, redis_client, receiver, settings):
    settings.CRAWL_STALL_AFTER = 0.3
    settings.ALERT_RETRY_INTERVALS = []
    crawl = crawl_in(owner, Crawl.RUNNING, redis_client)
    Monitor.objects.create(project=crawl.project, kind=Monitor.STALLED, threshold=0)
    Channel.objects.create(project=crawl.project, kind=Channel.WEBHOOK, url=receiver.url, secret=SECRET)
    stats = worker(redis_client, crawl, "w1", worker_state="running")
    conductor = Conductor(redis=redis_client)

    def stalled():
        crawl.refresh_from_db()
        return crawl.stalled_since is not None

    tick_until(conductor, stalled, "the stalled flag")
    for _ in range(5):  # more ticks while stalled: still one alert
        conductor.tick()
    stats.counts["pages"] = 1  # a page finishes: progress resumes
    stats.tick()
    tick_until(conductor, lambda: not stalled(), "the flag to clear")
    for _ in range(3):
        conductor.tick()
    run_tasks()
    events = [m["event"] for m in receiver.messages()]
    assert events == ["run.stalled", "run.recovered"]
    assert all(verify(h, b) for h, b in receiver.posts)
    assert "no page finished" in receiver.messages()[0]["crawl"]["stalled"]

    engine.control(crawl, "stop")  # the run ends with the stalled monitor failed (it stalled once)
    crawl.refresh_from_db()
    crawl.mark_stopped({"items": 0})
    crawl.refresh_from_db()
    assert [(c["kind"], c["passed"], c["value"]) for c in crawl.checks] == [("stalled", False, 1)]


# -- a real crawl ---------------------------------------------------------------------------------


def shop_pages(products=8):
    """A home page linking ``products`` product pages; the even ones have no price."""
    links = "".join(f'<a href="/product/{n}">p{n}</a>' for n in range(products))
    pages = {"/": f"<html><body>{links}</body></html>"}
    for n in range(products):
        price = "" if n % 2 == 0 else f'<span class="price">{n}.99</span>'
        pages[f"/product/{n}"] = f"<html><body><h1>Product {n}</h1>{price}</body></html>"
    return {path: (200, {}, html.encode()) for path, html in pages.items()}


@pytest.mark.django_db(transaction=True)
def test_a_crawl_missing_a_field_on_half_its_products_fails_its_coverage_monitor_and_notifies_once(
        owner, client, auth, receiver, settings):
    from dashboard.models import Project, validate_definition
    from tests.dashboard.test_network_policy import CountingSite, run_to_the_end

    site = CountingSite(shop_pages())
    allow_crawling("127.0.0.1", site.port)
    try:
        project = Project(owner=owner)
        project.set_definition(validate_definition({
            "name": "Half priced", "start_urls": [site.url + "/"],
            "item": {"url_pattern": "/product/", "fields": [{"name": "title", "selector": "h1::text"},
                                                            {"name": "price", "selector": ".price::text"}]},
        }))
        project.save()
        base = f"/api/projects/{project.code}"
        assert post(client, f"{base}/monitors", {"kind": "field_coverage", "field": "price", "min_percent": 90},
                    auth).status_code == 201
        assert post(client, f"{base}/monitors", {"kind": "items_min", "min_items": 1}, auth).status_code == 201
        assert post(client, f"{base}/channels", {"kind": "webhook", "url": receiver.url, "secret": SECRET},
                    auth).status_code == 201
        crawl = run_to_the_end(engine.launch(project, workers=1))
    finally:
        disallow_crawling("127.0.0.1", site.port)
        site.stop()
    assert crawl.status == Crawl.FINISHED, crawl.reason
    assert crawl.stats["coverage"] == {"price": 50.0, "title": 100.0, "url": 100.0}
    body = client.get(f"/api/crawls/{crawl.code}", **auth).json()
    assert body["coverage"]["price"] == 50.0
    assert [(c["kind"], c["passed"]) for c in body["checks"]] == [("field_coverage", False), ("items_min", True)]

    run_tasks()
    [(headers, raw)] = receiver.posts  # exactly one message, signed
    assert verify(headers, raw)
    message = json.loads(raw)
    assert message["event"] == "run.ended" and message["crawl"]["code"] == crawl.code
    assert message["crawl"]["counters"]["items"] == 8 and message["crawl"]["status"] == "finished"
    [failed] = [m for m in message["monitors"] if not m["passed"]]
    assert failed == {"id": failed["id"], "kind": "field_coverage", "field": "price", "passed": False,
                      "value": 50.0, "threshold": 90.0}
    assert message["crawl"]["url"].endswith(f"/crawls/{crawl.code}/")
    client.force_login(owner)
    html = client.get(crawl.get_absolute_url()).content.decode()
    assert 'data-field-name="price"' in html and "50.0 %" in html and 'data-check="field_coverage:price"' in html


def test_live_coverage_reading_counts_only_items_and_caps_at_100():
    assert state.coverage({"a": "5", "b": "10", "c": "bad"}, 10) == {"a": 50.0, "b": 100.0}
    assert state.coverage({"a": "5"}, 0) == {}


def test_stall_key_is_stable_per_stall():
    now = timezone.now()
    assert monitors.stall_key("abc", now) == monitors.stall_key("abc", now)
    assert monitors.stall_key("abc", now) != monitors.stall_key("abc", now + timezone.timedelta(seconds=1))


@pytest.mark.django_db(transaction=True)
def test_slack_and_email_channels_get_a_few_lines_for_people(owner, receiver, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    from django.core import mail

    project = project_for(owner, "Lines")
    slack = Channel.objects.create(project=project, kind=Channel.SLACK, url=receiver.url)
    email = Channel.objects.create(project=project, kind=Channel.EMAIL, emails=["ops@example.com"])
    crawl = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.FINISHED,
                                 stats={"items": 2, "pages": 2, "coverage": {"title": 50.0}})
    checks = [{"kind": "field_coverage", "field": "title", "passed": False, "value": 50.0, "threshold": 90.0}]
    notify.announce(project, Alert.RUN_ENDED, "lines", crawl=crawl, checks=checks, channels=[slack, email])
    run_tasks()
    [(headers, raw)] = receiver.posts
    text = json.loads(raw)["text"]
    assert "X-Crawlsite-Signature" not in headers and set(json.loads(raw)) == {"text"}
    assert f"run {crawl.code} ended: finished" in text and "FAILED field_coverage title: value 50.0, threshold 90.0" in text
    [sent] = mail.outbox
    assert sent.to == ["ops@example.com"] and sent.body == text and crawl.code in sent.subject
    assert sorted(Delivery.objects.values_list("channel_kind", "outcome")) == [("email", "delivered"),
                                                                                ("slack", "delivered")]


@pytest.mark.django_db
def test_coverage_is_read_live_from_redis_with_the_definitions_unfilled_fields_at_zero(owner, redis_client):
    from crawler import keys
    from dashboard import live

    project = project_for(owner, "Live", item={"url_pattern": "/product/", "fields": [
        {"name": "title", "selector": "h1::text"}, {"name": "upc", "selector": ".upc::text"}]})
    crawl = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.RUNNING)
    redis_client.hset(keys.stats(crawl.code), "items", 4)
    redis_client.hset(keys.fields(crawl.code), mapping={"url": 4, "title": 3})
    reading = live.read(redis_client, [crawl])[crawl.code]
    assert live.crawl_view(crawl, reading)["coverage"] == {"title": 75.0, "upc": 0.0, "url": 100.0}


def test_email_url_sets_djangos_mail_settings(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from crawlsite.env import email_settings

    monkeypatch.setenv("EMAIL_URL", "submission://bot%40example.com:p%40ss@mail.example.com?from=alerts@example.com")
    got = email_settings("EMAIL_URL")
    assert (got["EMAIL_HOST"], got["EMAIL_PORT"], got["EMAIL_HOST_USER"], got["EMAIL_HOST_PASSWORD"]) == (
        "mail.example.com", 587, "bot@example.com", "p@ss")
    assert got["EMAIL_USE_TLS"] and not got["EMAIL_USE_SSL"] and got["DEFAULT_FROM_EMAIL"] == "alerts@example.com"
    monkeypatch.setenv("EMAIL_URL", "smtps://mail.example.com")
    assert email_settings("EMAIL_URL")["EMAIL_PORT"] == 465 and email_settings("EMAIL_URL")["EMAIL_USE_SSL"]
    monkeypatch.setenv("EMAIL_URL", "")
    assert email_settings("EMAIL_URL")["EMAIL_BACKEND"].endswith("console.EmailBackend")
    monkeypatch.setenv("EMAIL_URL", "pop3://mail.example.com")
    with pytest.raises(ImproperlyConfigured, match="EMAIL_URL"):
        email_settings("EMAIL_URL")


@pytest.mark.django_db(transaction=True)
def test_a_stall_notifies_once_it_has_lasted_the_monitors_minutes(owner):
    project = project_for(owner, "Clock")
    Monitor.objects.create(project=project, kind=Monitor.STALLED, threshold=10)
    Monitor.objects.create(project=project, kind=Monitor.STALLED, threshold=5)  # the shortest one counts
    since = timezone.now()
    crawl = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.RUNNING,
                                 stalled_since=since, stalled_reason="no page finished")
    minutes = timezone.timedelta(minutes=1)
    assert monitors.watch_stall(crawl, now=since + 4 * minutes) is None
    alert = monitors.watch_stall(crawl, now=since + 6 * minutes)
    assert alert.event == Alert.RUN_STALLED and alert.payload["monitors"][0]["threshold"] == 5
    assert monitors.watch_stall(crawl, now=since + 20 * minutes) is None  # one per stall
    assert monitors.on_recovered(crawl, since).event == Alert.RUN_RECOVERED
    assert monitors.on_recovered(crawl, since) is None
    other = since + 30 * minutes  # a second stall of the same run is a new notification
    assert monitors.on_recovered(crawl, other) is None  # never notified: nothing to recover from
    crawl.stalled_since = other
    assert monitors.watch_stall(crawl, now=other + 5 * minutes).event == Alert.RUN_STALLED


def self_signed(tmp_path):
    """A certificate for 127.0.0.1 that no CA signed, and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_an_https_webhook_checks_the_certificate(tmp_path):
    import ssl

    receiver = Receiver()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed(tmp_path))
    receiver.server.socket = context.wrap_socket(receiver.server.socket, server_side=True)
    try:
        url = receiver.url.replace("http://", "https://")
        with pytest.raises(notify.DeliveryError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            notify.post(url, b"{}", {}, timeout=5)
        assert receiver.posts == []  # nothing was sent to an endpoint that could not prove who it is
    finally:
        receiver.stop()


@pytest.mark.django_db
def test_the_admin_never_shows_a_channel_secret_and_keeps_the_delivery_log_read_only(client, owner, staff):
    staff.is_superuser = True
    staff.save()
    channel = Channel.objects.create(project=project_for(owner), kind=Channel.WEBHOOK, secret=SECRET,
                                     url="https://hooks.example.com/T000/B000/XXXX")
    client.force_login(staff)
    for url in ("/admin/dashboard/channel/", f"/admin/dashboard/channel/{channel.pk}/change/"):
        page = client.get(url)
        assert page.status_code == 200 and SECRET not in page.content.decode()
    assert "XXXX" not in client.get("/admin/dashboard/channel/").content.decode()  # the URL's token neither
    assert client.get("/admin/dashboard/delivery/add/").status_code == 403


@pytest.mark.django_db(transaction=True)
def test_a_run_end_notifies_channels_that_ask_always_and_each_end_once(owner, receiver, redis_client):
    crawl = crawl_in(owner, Crawl.STOPPING, redis_client, name="Ends")
    Monitor.objects.create(project=crawl.project, kind=Monitor.ITEMS_MIN, threshold=1)  # passes below
    Channel.objects.create(project=crawl.project, kind=Channel.WEBHOOK, url=receiver.url, secret=SECRET, always=True)
    quiet = Channel.objects.create(project=crawl.project, kind=Channel.WEBHOOK, url=receiver.url, secret=SECRET)
    assert crawl.mark_stopped({"items": 5, "pages": 5})
    crawl.refresh_from_db()
    engine.control(crawl, "cancel")  # a stopped run ended already: cancelling it sends nothing more
    run_tasks()
    assert [m["event"] for m in receiver.messages()] == ["run.ended"]
    assert receiver.messages()[0]["monitors"][0]["passed"] is True
    assert not Delivery.objects.filter(channel=quiet).exists()  # every monitor passed: "always" only
