"""A small, deterministic shop served locally with the standard library only.

    site = start_site("test")          # background thread, free port
    site.url                           # "http://127.0.0.1:PORT"
    site.expected_items()              # ground truth of a crawl with site.recommended_definition()
    site.requests                      # [(host_header, path_with_query), ...] served so far
    site.stop()

The ``test`` profile adds traps (see ``README.md`` in this package); ``demo`` and ``bench`` have none.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from .catalog import Catalog, Product, build_catalog

__all__ = ["Site", "SiteProcess", "start_site", "start_site_process", "MISSING_SKU", "HIDDEN_SKU", "SLOW_SECONDS", "CALENDAR_START"]

MISSING_SKU = "missing-sku"  # linked, answers 404
HIDDEN_SKU = "DS-HIDDEN-001"  # a real product page linked only from the (denied) calendar trap
SLOW_SECONDS = 30.0
CALENDAR_START = "2026-01"
MALFORMED_TARGET_QUERY = "page=2&from=malformed"  # only linked from /malformed/

PDF_BYTES = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)
ROBOTS = b"User-agent: *\nAllow: /\n"
ROBOTS_ADVERSARIAL = b"User-agent: *\nDisallow: /private/\n"
PRIVATE_PREFIX = "/private/"  # adversarial profile: linked from every product page, disallowed by robots.txt


def is_flaky(sku: str) -> bool:
    """Adversarial profile: the product pages that answer 500 on their first fetch."""
    try:
        return int(sku.rsplit("-", 1)[1]) % 4 == 2
    except (IndexError, ValueError):
        return False

_e = html.escape
_CAL_RE = re.compile(r"^(\d{4})-(\d{2})$")


class _Response(Exception):
    def __init__(self, status: int, body: bytes = b"", ctype: str = "text/html; charset=utf-8",
                 headers: tuple = (), html_page: bool = True):
        self.status, self.body, self.ctype = status, body, ctype
        self.headers, self.html_page = headers, html_page


def _page(title: str, body: str) -> bytes:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(title)} | Demo shop</title></head>\n<body>\n"
        "<header><a href=\"/\">Demo shop</a></header>\n"
        f"<main>\n{body}\n</main>\n<footer>Demo shop, a local test site.</footer>\n"
        "</body></html>\n"
    ).encode("utf-8")


class _Renderer:
    """Builds pages; pure functions of (base URL, path, query), cached."""

    def __init__(self, catalog: Catalog, port: int):
        self.c = catalog
        self.traps = catalog.profile.traps
        self.adversarial = catalog.profile.adversarial
        self.port = port
        self.render = lru_cache(maxsize=16384)(self._render)
        self.hidden = Product(HIDDEN_SKU, "Hidden Calendar Gadget", "1.00", catalog.categories[0].slug,
                              catalog.categories[0].name, "Only linked from the calendar trap.", True)

    # -- helpers -------------------------------------------------------------------------------
    def _product_links(self, base: str, p: Product, i: int) -> str:
        """Link to a product; the test profile varies the form so that links must be canonicalized."""
        title = _e(p.title)
        if not self.traps:
            return f'<a class="product-link" href="/product/{p.sku}/">{title}</a>'
        forms = [
            f"/product/{p.sku}/",
            f"../../product/{p.sku}/",
            f"{base}/product/{p.sku}/",
            f"HTTP://{base.split('://', 1)[1].upper()}/product/{p.sku}/",
        ]
        main = forms[i % len(forms)]
        return (f'<a class="product-link" href="{main}">{title}</a> '
                f'<a class="reviews-link" href="/product/{p.sku}/#reviews">reviews</a>')

    def _cat_url(self, slug: str, page: int, sort: str = "") -> str:
        if sort:
            return f"/category/{slug}/?sort={sort}" + (f"&page={page}" if page > 1 else "")
        return f"/category/{slug}/" + (f"?page={page}" if page > 1 else "")

    # -- pages ---------------------------------------------------------------------------------
    def _render(self, base: str, path: str, query: str) -> tuple[int, bytes, str, tuple, bool]:
        try:
            return self._dispatch(base, path, query)
        except _Response as r:
            return r.status, r.body, r.ctype, r.headers, r.html_page

    def _dispatch(self, base: str, path: str, query: str):
        params = dict(parse_qsl(query, keep_blank_values=True))
        if path == "/":
            return 200, self.home(base), "text/html; charset=utf-8", (), True
        if path == "/robots.txt":
            return 200, ROBOTS_ADVERSARIAL if self.adversarial else ROBOTS, "text/plain; charset=utf-8", (), False
        parts = path.strip("/").split("/")
        if path.endswith("/") and len(parts) == 2:
            kind, arg = parts
            if kind == "category" and arg in self.c.category_by_slug:
                return 200, self.category(base, arg, params), "text/html; charset=utf-8", (), True
            if kind == "product":
                p = self.c.by_sku.get(arg) or (self.hidden if self.traps and arg == HIDDEN_SKU else None)
                if p is not None:
                    return 200, self.product(base, p), "text/html; charset=utf-8", (), True
            if self.traps and kind == "old" and arg in self.c.by_sku:
                # adversarial: a chain of two redirects, /old/ -> /moved/ -> /product/
                target = f"/moved/{arg}/" if self.adversarial else f"/product/{arg}/"
                raise _Response(301, _page("Moved", f'<p>Moved to <a href="{target}">here</a>.</p>'),
                                headers=(("Location", f"{base}{target}"),))
            if self.adversarial and kind == "moved" and arg in self.c.by_sku:
                raise _Response(302, _page("Moved", f'<p>Moved to <a href="/product/{arg}/">here</a>.</p>'),
                                headers=(("Location", f"/product/{arg}/"),))
            if self.adversarial and kind == "private" and arg in self.c.by_sku:
                return 200, _page("Private", "<p>Robots may not read this.</p>"), "text/html; charset=utf-8", (), True
            if self.traps and kind == "calendar":
                return 200, self.calendar(arg), "text/html; charset=utf-8", (), True
        if self.traps:
            if path == "/broken/":
                raise _Response(500, _page("Server error", "<h1>Internal Server Error</h1>"))
            if path == "/files/catalog.pdf":
                return 200, PDF_BYTES, "application/pdf", (), False
            if path == "/malformed/":
                return 200, self.malformed(), "text/html; charset=utf-8", (), True
        raise _Response(404, _page("Not found", "<h1>Not Found</h1><p>No such page.</p>"))

    def home(self, base: str) -> bytes:
        cats = "\n".join(
            f'<li><a class="category-link" href="/category/{c.slug}/">{_e(c.name)}</a> '
            f"({len(self.c.by_category[c.slug])} products)</li>"
            for c in self.c.categories)
        body = f"<h1>Demo shop</h1>\n<nav><ul class=\"categories\">\n{cats}\n</ul></nav>"
        if self.traps:
            first = self.c.categories[0].slug
            p0 = self.c.products[0].sku
            body += (
                "\n<aside class=\"misc\"><ul>"
                f'<li><a href="/files/catalog.pdf">Catalog (PDF)</a></li>'
                f'<li><a href="/calendar/{CALENDAR_START}/">Events calendar</a></li>'
                f'<li><a href="/broken/">Clearance (broken)</a></li>'
                f'<li><a href="/product/{MISSING_SKU}/">Discontinued product</a></li>'
                f'<li><a href="/malformed/">Old sitemap</a></li>'
                f'<li><a href="/slow/">Slow page</a></li>'
                f'<li><a href="http://localhost:{self.port}/category/{first}/">Mirror (other host)</a></li>'
                f'<li><a href="http://localhost:{self.port}/product/{p0}/">Mirror product</a></li>'
                "</ul></aside>")
        return _page("Home", body)

    def category(self, base: str, slug: str, params: dict) -> bytes:
        cat = self.c.category_by_slug[slug]
        sort = params.get("sort", "")
        if sort not in ("", "name") or set(params) - {"page", "sort", "from"}:
            raise _Response(404, _page("Not found", "<h1>Not Found</h1>"))
        try:
            page = int(params.get("page", "1"))
        except ValueError:
            raise _Response(404, _page("Not found", "<h1>Not Found</h1>")) from None
        pages = self.c.pages(slug)
        if not 1 <= page <= pages:
            raise _Response(404, _page("Not found", "<h1>Not Found</h1>"))
        items = self.c.listing(slug, page, sort)
        rows = "\n".join(
            f'<li class="listing-item">{self._product_links(base, p, i + page)} '
            f'<span class="listing-price">{p.price}</span></li>'
            for i, p in enumerate(items))
        nav = []
        if page > 1:
            nav.append(f'<a rel="prev" href="{_e(self._cat_url(slug, page - 1, sort))}">Previous</a>')
        if page < pages:
            nav.append(f'<a rel="next" href="{_e(self._cat_url(slug, page + 1, sort))}">Next</a>')
        extra = ""
        if self.traps and page == 1 and not sort and pages > 1:
            # the same sorted page 2 written with its query parameters in the other order
            extra = ('\n<p class="sort">Sort: <a href="?sort=name">by name</a> '
                     f'<a href="/category/{slug}/?page=2&amp;sort=name">by name, page 2</a></p>')
        title = f"{cat.name}, page {page}" + (" (by name)" if sort else "")
        body = (f"<h2 class=\"listing-title\">{_e(title)}</h2>{extra}\n<ul class=\"listing\">\n{rows}\n</ul>\n"
                f"<nav class=\"pagination\">{' '.join(nav)}</nav>")
        return _page(title, body)

    def product(self, base: str, p: Product) -> bytes:
        stock = "In stock" if p.in_stock else "Out of stock"
        desc = "<br>".join(_e(line) for line in p.description.split("\n"))
        siblings = self.c.by_category.get(p.category, [])
        related = ""
        if p in siblings:
            k = siblings.index(p)
            rel = [siblings[(k + d) % len(siblings)] for d in (1, 2) if len(siblings) > d]
            related = "".join(f"<li>{self._product_links(base, r, k + d)}</li>" for d, r in enumerate(rel))
        extra = ""
        if self.traps and p.sku in self.c.by_sku:
            n = int(p.sku.rsplit("-", 1)[1])
            if n % 5 == 0:  # an old permalink of the next product, which redirects (301)
                nxt = siblings[siblings.index(p) + 1] if siblings.index(p) + 1 < len(siblings) else p
                extra = f'\n<p class="permalink"><a href="/old/{nxt.sku}/">Old link to {nxt.sku}</a></p>'
            if self.adversarial:
                extra += f'\n<p class="private"><a href="{PRIVATE_PREFIX}{p.sku}/">Staff notes</a></p>'
        body = (
            f"<article class=\"product\">\n<h1>{_e(p.title)}</h1>\n"
            f"<p>SKU: <span class=\"sku\">{p.sku}</span></p>\n"
            f"<p>Price: <span class=\"price\">{p.price}</span> <span class=\"currency\">EUR</span></p>\n"
            f"<p>Category: <a class=\"category\" href=\"/category/{p.category}/\">{_e(p.category_name)}</a></p>\n"
            f"<p class=\"stock\">{stock}</p>\n"
            f"<div class=\"description\">{desc}</div>\n"
            f"<section id=\"reviews\"><h2>Reviews</h2><p>No reviews yet.</p></section>\n"
            f"</article>{extra}\n<aside><h2>Related</h2><ul class=\"related\">{related}</ul></aside>"
        )
        return _page(p.title, body)

    def calendar(self, arg: str) -> bytes:
        m = _CAL_RE.match(arg)
        if not m or not 1 <= int(m.group(2)) <= 12:
            raise _Response(404, _page("Not found", "<h1>Not Found</h1>"))
        y, mo = int(m.group(1)), int(m.group(2))
        ny, nm = (y + 1, 1) if mo == 12 else (y, mo + 1)
        body = (f"<h2>Events, {y:04d}-{mo:02d}</h2><p>No events.</p>\n"
                f'<a rel="next" href="/calendar/{ny:04d}-{nm:02d}/">Next month</a>\n'
                f'<a href="/product/{HIDDEN_SKU}/">Featured gadget</a>')
        return _page(f"Calendar {y:04d}-{mo:02d}", body)

    def malformed(self) -> bytes:
        slug = self.c.categories[1 % len(self.c.categories)].slug
        p = self.c.products[1].sku
        return (
            "<html><head><title>Old sitemap<body><div><div class=x>\n"
            "<p>Unclosed <b>bold <i>italic\n</div></div></div></span>\n"
            f"<table><tr><td><a href=\"/category/{slug}/?{MALFORMED_TARGET_QUERY.replace('&', '&amp;')}\">"
            "Second page<td><a href='/product/" + p + "/'>A product\n"
            "</table></div><p>trailing <a href=\"/\">home</a"
        ).encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demosite/1.0"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections are closed after this

    def log_message(self, format, *args):  # quiet
        pass

    def _serve(self, head: bool) -> None:
        site: Site = self.server.site  # type: ignore[attr-defined]
        host = self.headers.get("Host", "")
        site._record(host, self.path)
        split = urlsplit(self.path)
        path, query = split.path or "/", split.query
        if site._fails_first_time(path):
            status, body, ctype, headers, is_html = 500, _page("Server error", "<h1>Try again</h1>"), \
                "text/html; charset=utf-8", (), True
        elif site.catalog.profile.traps and path == "/slow/":
            site._stopping.wait(SLOW_SECONDS)
            status, body, ctype, headers, is_html = 200, _page("Slow", "<p>Finally.</p>"), \
                "text/html; charset=utf-8", (), True
        else:
            base = "http://" + (host or f"{site.host}:{site.port}")
            status, body, ctype, headers, is_html = site._renderer.render(base, path, query)
        if is_html and site.delay_ms:
            time.sleep(site.delay_ms / 1000.0)
        out = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}",
               f"Content-Type: {ctype}", f"Content-Length: {len(body)}", "Server: demosite/1.0"]
        out += [f"{k}: {v}" for k, v in headers]
        if self.close_connection:
            out.append("Connection: close")
        data = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(data if head else data + body)  # one write: no Nagle/delayed-ACK stalls

    def do_GET(self):
        self._serve(head=False)

    def do_HEAD(self):
        self._serve(head=True)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):  # quiet: clients drop connections
        pass


class _Served:
    """What a crawl of a served demo site should give: needs ``profile``, ``catalog``, ``host``, ``port``."""

    profile: str
    catalog: Catalog
    host: str
    port: int

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    def expected_items(self) -> list[dict]:
        """The exact items a crawl with :meth:`recommended_definition` produces, in catalog order."""
        return [{"url": f"{self.url}/product/{p.sku}/", "sku": p.sku, "title": p.title,
                 "price": p.price, "category": p.category_name} for p in self.catalog.products]

    def recommended_definition(self, slow: bool = True) -> dict:
        """A crawl definition (docs/crawler.md) whose items are exactly :meth:`expected_items`.

        ``slow=False`` adds ``/slow/`` to the deny rules (the test profile's 30 s page).
        """
        return recommended_definition(self.url, traps=self.catalog.profile.traps, slow=slow,
                                      name=f"Demo shop ({self.profile})",
                                      adversarial=self.catalog.profile.adversarial)


class Site(_Served):
    """A running demo site. Use :func:`start_site` to create one."""

    def __init__(self, profile: str = "test", host: str = "127.0.0.1", port: int = 0,
                 delay_ms: int = 0, seed: int | None = None):
        self.profile = profile
        self.catalog = build_catalog(profile, seed)
        self.delay_ms = delay_ms
        self._lock = threading.Lock()
        self._requests: list[tuple[str, str]] = []
        self._failed_once: set[str] = set()  # adversarial profile: flaky pages that failed already
        self._stopping = threading.Event()
        self._server = _Server((host, port), _Handler)
        self._server.site = self  # type: ignore[attr-defined]
        self.host = host
        self.port = self._server.server_address[1]
        self._renderer = _Renderer(self.catalog, self.port)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"demosite-{self.port}", daemon=True)

    # -- public API ----------------------------------------------------------------------------
    @property
    def requests(self) -> list[tuple[str, str]]:
        """A snapshot of every request served, in order: ``(Host header, path with query)``."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def start(self) -> "Site":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake any /slow/ handler, close the listening socket. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    def __enter__(self) -> "Site":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Site {self.profile} {self.url}>"

    # -- internals -----------------------------------------------------------------------------
    def _record(self, host: str, path: str) -> None:
        with self._lock:
            self._requests.append((host, path))

    def _fails_first_time(self, path: str) -> bool:
        """Adversarial profile: a flaky product page answers 500 once, then 200 (a retry gets it)."""
        if not self.catalog.profile.adversarial or not path.startswith("/product/"):
            return False
        sku = path[len("/product/"):].strip("/")
        if sku not in self.catalog.by_sku or not is_flaky(sku):
            return False
        with self._lock:
            if path in self._failed_once:
                return False
            self._failed_once.add(path)
            return True


def start_site(profile: str = "test", host: str = "127.0.0.1", port: int = 0, delay_ms: int = 0,
               seed: int | None = None) -> Site:
    """Start the demo site in a background thread and return it (already accepting connections)."""
    return Site(profile, host, port, delay_ms, seed).start()


class SiteProcess(_Served):
    """The demo site served by a process of its own (``python -m demosite``), so that the caller
    (a benchmark's harness) does not share the server's interpreter. Use :func:`start_site_process`."""

    def __init__(self, profile: str = "bench", host: str = "127.0.0.1", seed: int | None = None,
                 timeout: float = 30.0):
        self.profile = profile
        self.catalog = build_catalog(profile, seed)
        self.host = host
        command = [sys.executable, "-m", "demosite", "--profile", profile, "--host", host, "--port", "0"]
        if seed is not None:
            command += ["--seed", str(seed)]
        root = Path(__file__).resolve().parents[1]
        self.process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True,
                                        env=dict(os.environ, PYTHONPATH=str(root)))
        ready = [None]
        reader = threading.Thread(target=lambda: ready.__setitem__(0, self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        match = re.search(r"serving on http://[^:/]+:(\d+)/", ready[0] or "")
        if match is None:
            self.stop()
            raise RuntimeError(f"python -m demosite did not start: {ready[0]!r}")
        self.port = int(match.group(1))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __repr__(self) -> str:
        return f"<SiteProcess {self.profile} {self.url}>"


def start_site_process(profile: str = "bench", host: str = "127.0.0.1", seed: int | None = None) -> SiteProcess:
    """Start the demo site in a process of its own on a free port; return it once it serves."""
    return SiteProcess(profile, host, seed)


def recommended_definition(url: str, traps: bool = False, slow: bool = True, name: str = "Demo shop",
                           adversarial: bool = False) -> dict:
    """The crawl definition of a demo site served at ``url`` (also the `make run` demo project)."""
    url = url.rstrip("/")
    if traps:
        allow = ["/category/", "/product/", "/old/", "/files/", "/broken/", "/malformed/", "/slow/"]
        if adversarial:  # followed by the rules: only robots.txt keeps the crawl out of /private/
            allow += ["/moved/", PRIVATE_PREFIX]
    else:
        allow = ["/category/", "/product/"]
    deny = ["/calendar/"] + ([] if slow else ["/slow/"])
    return {
        "name": name,
        "start_urls": [f"{url}/"],
        "allowed_domains": [urlsplit(url).hostname],
        "follow": {"allow": allow, "deny": deny},
        "limits": {"max_depth": 0, "max_pages": 0, "max_items": 0, "max_duration": 0},
        "item": {
            "url_pattern": "/product/",
            "selector": "",
            "fields": [
                {"name": "title", "selector": "h1::text", "many": False},
                {"name": "sku", "selector": ".sku::text", "many": False},
                {"name": "price", "selector": ".price::text", "many": False},
                {"name": "category", "selector": ".category::text", "many": False},
            ],
        },
        "spider": "",
        "settings": {"CONCURRENT_REQUESTS": 16},
        "workers": 1,
    }
