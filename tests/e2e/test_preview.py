"""“Try it” in Chromium (issue 17): a page full of script payloads is previewed from the project
page and from the project form; nothing from it runs in the dashboard, and it shows as text."""

import threading
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import expect

from dashboard import engine
from dashboard.models import Project
from tests.servers import allow_crawling, disallow_crawling

PAYLOADS = [
    "<script>window.__pwned = 'script'</script>",
    "<img src=x onerror=\"window.__pwned = 'onerror'\">",
    "\"><svg onload=\"alert('svg')\"></svg>",
]


class ScriptPage(BaseHTTPRequestHandler):
    """One page whose markup runs script in a browser (real <script>, onerror=), and whose text
    holds the payloads entity-encoded, so that the preview extracts them as strings."""

    def do_GET(self):
        text = "".join(f"<li class='note'>{escape(p)}</li>" for p in PAYLOADS)
        body = (
            "<html><head><title>t</title><script>window.__pwned = 'page-script'</script></head><body>"
            f"<h1>{escape(PAYLOADS[0])}</h1><ul>{text}</ul>"
            "<img src=x onerror=\"window.__pwned = 'page-onerror'\">"
            f"<a href=\"/next?q={escape(PAYLOADS[1], quote=True)}\">{escape(PAYLOADS[2])}</a>"
            "</body></html>"
        ).encode()
        self.send_response(200 if self.path != "/robots.txt" else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def script_site():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    allow_crawling("127.0.0.1", server.server_port)  # the preview subprocess inherits it
    yield f"http://127.0.0.1:{server.server_port}"
    disallow_crawling("127.0.0.1", server.server_port)
    server.shutdown()


def try_it(page):
    page.click("[data-preview-run]")
    panel = page.locator("[data-preview]")
    expect(panel).to_have_attribute("data-preview-state", "done", timeout=60_000)
    return panel


def check_nothing_ran(page, dialogs):
    assert page.evaluate("window.__pwned === undefined"), page.evaluate("window.__pwned")
    assert dialogs == []
    assert page.locator("[data-preview-out] script, [data-preview-out] img, [data-preview-out] svg").count() == 0


def test_a_previewed_page_runs_no_script_and_shows_as_text(logged_in_page, live_asgi, owner, script_site, artifacts):
    page = logged_in_page
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    project = Project(owner=owner)
    project.set_definition(engine.validate_definition({
        "name": "Scripts", "start_urls": [script_site + "/"],
        "item": {"fields": [{"name": "title", "selector": "h1::text"},
                            {"name": "notes", "selector": ".note::text", "many": True},
                            {"name": "missing", "selector": ".nothing::text"}]},
    }))
    project.save()

    page.goto(f"{live_asgi.url}/projects/{project.code}/")
    panel = try_it(page)
    items = panel.locator("[data-preview-item]")
    expect(items).to_have_count(1)
    expect(items.first).to_contain_text(PAYLOADS[0])  # the payload, as text, intact
    expect(items.first).to_contain_text(PAYLOADS[1])
    expect(items.first).to_contain_text("no match")  # the field that matched nothing
    expect(panel).to_contain_text("Links followed (1)")
    check_nothing_ran(page, dialogs)
    page.screenshot(path=str(artifacts / "preview-project.png"), full_page=True)

    # The edit form tries the definition as typed (here: another field, not saved).
    page.goto(f"{live_asgi.url}/projects/{project.code}/edit/")
    page.fill("#id_fields", "link_text: a::text\nhref: a::attr(href)")
    panel = try_it(page)
    expect(panel.locator("[data-preview-item]").first).to_contain_text(PAYLOADS[2])
    check_nothing_ran(page, dialogs)
    project.refresh_from_db()
    assert [f["name"] for f in project.definition["item"]["fields"]] == ["title", "notes", "missing"]

    # A form error comes back as text too, field by field.
    page.fill("#id_fields", "<img src=x onerror=alert(1)>")
    page.click("[data-preview-run]")
    expect(panel).to_have_attribute("data-preview-state", "error", timeout=30_000)
    expect(panel.locator(".errorlist")).to_contain_text("fields: Line 1:")
    check_nothing_ran(page, dialogs)


def test_the_new_project_form_tries_what_is_typed(logged_in_page, live_asgi, script_site, artifacts):
    page = logged_in_page
    page.goto(f"{live_asgi.url}/projects/new/")
    page.fill("#id_name", "Typed")
    page.fill("#id_start_urls", "\n" + script_site + "/\n")
    page.fill("#id_fields", "title: h1::text")
    panel = try_it(page)  # the URL box was empty: the first start URL is tried
    assert page.input_value("#id_preview_url") == script_site + "/"
    expect(panel.locator("[data-preview-item]").first).to_contain_text(PAYLOADS[0])
    assert page.evaluate("window.__pwned === undefined")
    page.screenshot(path=str(artifacts / "preview-new-project.png"), full_page=True)
    assert page.url == f"{live_asgi.url}/projects/new/"  # nothing was submitted or saved
