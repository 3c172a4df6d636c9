"""“Try it” (issue 17): a definition tried on a page this test serves, through the API and the
project pages, by the real ``python -m crawler.preview`` subprocess; compared with a real crawl."""

import json
import socket
import time

import pytest
from django.test import Client

from crawler import keys
from dashboard import engine, preview
from dashboard.models import ApiToken, Project
from launcher.redis import free_port
from tests.dashboard.factories import project_for
from tests.dashboard.test_api import post_json
from tests.dashboard.test_network_policy import CountingSite, run_to_the_end
from tests.servers import allow_crawling, disallow_crawling

PRODUCT = """<!DOCTYPE html><html><head><title>Shelf</title></head><body>
<h1>Shelf  </h1>
<div class="product"><h2>Red mug</h2><span class="price">4.50</span><i class="tag">kitchen</i><i class="tag">red</i></div>
<div class="product"><h2>Blue mug</h2><span class="price">5.00</span></div>
<div class="product"><h2>Green mug</h2><i class="tag">green</i></div>
<a href="/shelf/2">next shelf</a>
</body></html>"""


def html(body):
    return (200, {}, body.encode())


@pytest.fixture
def site():
    site = CountingSite()
    closed = free_port()  # opened to crawls but nothing listens there
    site.closed_port = closed
    site.pages.update({
        "/shelf/1": html(PRODUCT),
        "/shelf/2": html("<html><body><h1>Empty shelf</h1></body></html>"),
        "/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nDisallow: /hidden/\n"),
        "/links": html(f"""<html><body>
            <a href="/shelf/1">allowed</a>
            <a href="/shelf/denied/4">denied</a>
            <a href="/about">no allow match</a>
            <a href="http://localhost:{site.port}/shelf/5">other host</a>
            <a href="ftp://127.0.0.1:{site.port}/shelf/6">ftp</a>
            <a href="http://127.0.0.1:{closed + 1 if closed < 65535 else closed - 1}/shelf/7">unopened port</a>
            </body></html>"""),
        "/hidden/1": html("<html><body><h1>Hidden</h1></body></html>"),
    })
    allow_crawling("127.0.0.1", site.port)
    allow_crawling("127.0.0.1", closed)
    yield site
    disallow_crawling("127.0.0.1", closed)
    disallow_crawling("127.0.0.1", site.port)
    site.stop()


def shelf_definition(site, **overrides):
    return {
        "name": "Shelves",
        "start_urls": [f"{site.url}/shelf/1"],
        "allowed_domains": ["127.0.0.1"],
        "follow": {"allow": ["/shelf/"], "deny": ["/denied/"]},
        "item": {"url_pattern": "/shelf/1$", "selector": ".product", "fields": [
            {"name": "name", "selector": "h2::text"},
            {"name": "price", "selector": ".price::text"},
            {"name": "tags", "selector": ".tag::text", "many": True},
        ]},
        "settings": {"DOWNLOAD_TIMEOUT": 10, "RETRY_TIMES": 0},
        **overrides,
    }


@pytest.fixture
def api(owner):
    client = Client()
    return client, {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(owner)}"}


def ask(api, body):
    client, headers = api
    return post_json(client, "/api/preview", body, **headers)


@pytest.mark.django_db(transaction=True)
def test_preview_items_and_links_are_what_a_crawl_does(site, api, owner):
    definition = shelf_definition(site, start_urls=[f"{site.url}/links"])
    start = ask(api, {"definition": definition, "url": f"{site.url}/links"})
    assert start.status_code == 200, start.content
    assert start.json()["links"]["follow"] == [f"{site.url}/shelf/1"]
    assert len(start.json()["links"]["ignored"]) == 5

    answer = ask(api, {"definition": definition, "url": f"{site.url}/shelf/1"})
    assert answer.status_code == 200, answer.content
    shown = answer.json()
    assert shown["status"] == 200 and shown["item_page"] is True
    assert shown["robots"] == {"obeyed": True, "allowed": True, "note": "robots.txt allows this page."}
    assert shown["matches"] == {
        "item_selector": {"selector": ".product", "nodes": 3},
        "fields": {"name": {"selector": "h2::text", "nodes": 3}, "price": {"selector": ".price::text", "nodes": 2},
                   "tags": {"selector": ".tag::text", "nodes": 3}},
    }
    assert shown["items"][2] == {"url": f"{site.url}/shelf/1", "name": "Green mug", "price": None, "tags": ["green"]}
    assert shown["links"] == {"follow": [f"{site.url}/shelf/2"], "ignored": []}

    project = Project(owner=owner)
    project.set_definition(engine.validate_definition(definition))
    project.save()
    before = len(site.requests)
    crawl = run_to_the_end(engine.launch(project, workers=1))
    assert crawl.status == crawl.FINISHED, crawl.reason
    stored = [item.data for item in crawl.items.order_by("id") if item.data["url"] == f"{site.url}/shelf/1"]
    assert sorted(stored, key=json.dumps) == sorted(shown["items"], key=json.dumps)
    # the crawl fetched exactly the pages the previews said it would follow (the site records paths
    # whatever the host: localhost's link, ignored as off-domain, would show too)
    assert set(site.requests[before:]) == {"/robots.txt", "/links", "/shelf/1", "/shelf/2"}


@pytest.mark.django_db
def test_links_are_followed_or_ignored_with_the_reason(site, owner, owner_client):
    project = project_for(owner, "Links", url=f"{site.url}/links",
                          allowed_domains=["127.0.0.1"], follow={"allow": ["/shelf/"], "deny": ["/denied/"]},
                          limits={"max_depth": 2})
    answer = owner_client.post(f"/projects/{project.code}/preview", {"preview_url": f"{site.url}/links"})
    assert answer.status_code == 200, answer.content
    links = answer.json()["links"]
    assert links["follow"] == [f"{site.url}/shelf/1"]
    reasons = {link["url"].split("/", 3)[-1]: link["reason"] for link in links["ignored"]}
    assert reasons["shelf/denied/4"] == "deny pattern"
    assert reasons["about"] == "no allow match"
    assert reasons["shelf/5"] == "off-domain"
    assert reasons["shelf/6"].startswith("scheme:")
    assert reasons["shelf/7"].startswith("network guard: 127.0.0.1 is a loopback address")
    assert len(links["ignored"]) == 5

    deep = owner_client.post(f"/projects/{project.code}/preview",
                             {"preview_url": f"{site.url}/links", "preview_depth": "2"}).json()["links"]
    assert [link["reason"] for link in deep["ignored"] if link["url"].endswith("/shelf/1")] == [
        "depth: links here are at depth 3, past max_depth 2"]


@pytest.mark.django_db
def test_robots_txt_and_what_a_crawl_would_skip_are_noted(site, api):
    answer = ask(api, {"definition": shelf_definition(site), "url": f"{site.url}/hidden/1"})
    assert answer.status_code == 200, answer.content
    assert answer.json()["robots"] == {"obeyed": True, "allowed": False, "note": "robots.txt disallows this page."}
    assert answer.json()["notes"] == ["The URL does not match the item pattern: a crawl stores no items from it."]
    elsewhere = ask(api, {"definition": shelf_definition(site, allowed_domains=["example.com"],
                                                         start_urls=["http://example.com/"]),
                          "url": f"{site.url}/shelf/1"}).json()
    assert "This URL is outside allowed_domains: a crawl would not fetch it." in elsewhere["notes"]
    assert elsewhere["links"]["ignored"] == [{"url": f"{site.url}/shelf/2", "reason": "off-domain"}]


@pytest.mark.django_db
def test_robots_txt_that_cannot_be_had_is_noted_as_a_crawl_reads_it(site, api):
    """Like a crawl (crawler.robots): a 5xx robots.txt disallows the site, a 404 allows it."""
    for status, allowed, note in (
            (503, False, "robots.txt answered HTTP 503: a crawl fetches no page of this site."),
            (404, True, "No robots.txt (HTTP 404): every page is allowed.")):
        site.pages["/robots.txt"] = (status, {}, b"User-agent: *\nDisallow: /shelf/\n")
        answer = ask(api, {"definition": shelf_definition(site), "url": f"{site.url}/shelf/1"})
        assert answer.status_code == 200, answer.content
        assert answer.json()["robots"] == {"obeyed": True, "allowed": allowed, "note": note}


@pytest.mark.django_db
def test_a_refused_address_is_refused_with_the_reason(site, api):
    answer = ask(api, {"definition": shelf_definition(site), "url": "http://169.254.169.254/latest/meta-data/"})
    assert answer.status_code == 422
    body = answer.json()
    assert "link-local (cloud metadata) address" in body["detail"]
    assert body["errors"]["url"] == [body["detail"]]


@pytest.mark.django_db
def test_an_unreachable_page_is_a_422_with_the_reason(site, api):
    answer = ask(api, {"definition": shelf_definition(site), "url": f"http://127.0.0.1:{site.closed_port}/"})
    assert answer.status_code == 422
    assert "connection was refused" in answer.json()["detail"]


@pytest.mark.django_db
def test_a_page_over_the_size_limit_is_refused_as_a_crawl_would(site, api):
    site.pages["/big"] = html("<html><body>" + "x" * 4096 + "</body></html>")
    definition = shelf_definition(site, settings={"DOWNLOAD_MAXSIZE": 1024})
    answer = ask(api, {"definition": definition, "url": f"{site.url}/big"})
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith("The page is larger than DOWNLOAD_MAXSIZE (1,024 bytes)")


@pytest.mark.django_db
def test_a_preview_that_hangs_is_stopped_at_its_time_limit(api, settings):
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    allow_crawling("127.0.0.1", port)
    settings.PREVIEW_TIMEOUT = 3
    try:
        answer = ask(api, {"definition": shelf_definition_at(f"http://127.0.0.1:{port}/"),
                           "url": f"http://127.0.0.1:{port}/"})
        assert answer.status_code == 422
        assert answer.json()["detail"] == "The preview took longer than 3 s and was stopped."
    finally:
        disallow_crawling("127.0.0.1", port)
        silent.close()


@pytest.mark.django_db(transaction=True)
def test_the_web_process_keeps_answering_while_a_preview_waits(owner):
    """A preview that hangs on a page that never answers (its fetch is seen arriving) does not hold
    up the web process: another request is answered meanwhile."""
    import threading
    import urllib.request

    from tests.servers import ThreadedServer

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    allow_crawling("127.0.0.1", port)
    server = ThreadedServer().start()
    token = ApiToken.issue(owner)
    answers = {}

    def call(name, path, body=None):
        request = urllib.request.Request(server.url + path, data=body and json.dumps(body).encode(),
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                answers[name] = response.status
        except urllib.error.HTTPError as exc:
            answers[name] = exc.code

    target = f"http://127.0.0.1:{port}/"
    waiting = threading.Thread(target=call, args=("preview", "/api/preview",
                                                  {"definition": shelf_definition_at(target), "url": target}))
    try:
        waiting.start()
        silent.settimeout(60)
        connection, _ = silent.accept()  # the preview's fetch is under way (robots.txt or the page)
        call("projects", "/api/projects")
        assert answers == {"projects": 200}  # answered while the preview still waits
        assert waiting.is_alive()
        connection.close()  # the page's server hangs up (and refuses the rest): the preview ends
        silent.close()
        waiting.join(120)
        assert answers["preview"] == 422
    finally:
        disallow_crawling("127.0.0.1", port)
        silent.close()
        server.stop()


@pytest.mark.django_db
def test_previews_are_rate_limited_per_user(api, owner, outsider, settings, redis_client):
    settings.PREVIEWS_PER_MINUTE = 3
    minute = int(time.time() // 60)
    for m in (minute, minute + 1):  # this minute and the next: the test may straddle them
        redis_client.set(keys.preview_rate(owner.pk, m), 3)
    body = {"definition": shelf_definition_at("http://127.0.0.1:9/"), "url": "http://127.0.0.1:9/"}
    answer = ask(api, body)
    assert answer.status_code == 429
    assert 1 <= int(answer["Retry-After"]) <= 61
    assert "At most 3 previews a minute" in answer.json()["detail"]
    preview.take_turn(outsider)  # another user's count is their own: no error


def shelf_definition_at(url):
    return {"name": "x", "start_urls": [url], "item": {"fields": [{"name": "t", "selector": "h1::text"}]}}


@pytest.mark.django_db
def test_every_bad_part_of_a_preview_request_is_reported_at_once(api):
    body = {"definition": {"name": "x", "start_urls": ["ftp://nope", "not a url"],
                           "item": {"fields": [{"name": "1bad", "selector": "h1::text"}]}, "settings": {"FOO": 1}},
            "url": "file:///etc/passwd", "depth": -1, "extra": True}
    answer = ask(api, body)
    assert answer.status_code == 422
    errors = answer.json()["errors"]
    assert {"start_urls.0", "start_urls.1", "item.fields.0.name", "settings.FOO", "url", "depth", "extra"} <= set(errors)
    custom = ask(api, {"definition": {**shelf_definition_at("http://127.0.0.1:9/"), "spider": "nope"},
                       "url": "http://127.0.0.1:9/"})
    assert custom.status_code == 422 and "spider" in custom.json()["errors"]
    assert ask(api, {"definition": "no", "url": "http://127.0.0.1:9/"}).json()["errors"] == {
        "definition": ["The crawl definition must be a JSON object."]}


@pytest.mark.django_db
def test_preview_needs_a_login(client):
    assert post_json(client, "/api/preview", {"definition": {}, "url": "http://example.com/"}).status_code == 401
    answer = client.post("/projects/preview", {"preview_url": "http://example.com/"})
    assert answer.status_code == 302 and answer["Location"].startswith("/accounts/login/")


@pytest.mark.django_db
def test_the_form_preview_reports_every_form_error_by_field(owner_client):
    answer = owner_client.post("/projects/preview", {
        "name": "", "start_urls": "ftp://nope\nnot a url", "fields": "title h1", "settings": "FOO = 1",
        "max_depth": "x", "max_pages": "0", "max_items": "0", "max_duration": "0", "workers": "1",
        "preview_url": "http://127.0.0.1:9/",
    })
    assert answer.status_code == 422
    assert {"name", "start_urls", "fields", "settings", "max_depth"} <= set(answer.json()["errors"])
