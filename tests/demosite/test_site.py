"""Tests of the demo site: ground truth, traps, request log, delay, CLI.

Run: .venv/bin/pytest tests/demosite -q -p no:django
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from demosite import PROFILES, build_catalog, start_site, start_site_process
from demosite.server import CALENDAR_START, HIDDEN_SKU, MALFORMED_TARGET_QUERY, MISSING_SKU

ROOT = Path(__file__).resolve().parents[2]


# -- helpers ---------------------------------------------------------------------------------------
class _Links(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.append(href)


def links_of(body: bytes) -> list[str]:
    p = _Links()
    p.feed(body.decode("utf-8"))
    p.close()
    return p.links


def canonical(url: str) -> str:
    """Canonical form: lower-case scheme/host, no fragment, sorted query (as Scrapy fingerprints do)."""
    from w3lib.url import canonicalize_url

    return canonicalize_url(url)


def fetch(site_or_url, path: str, host: str | None = None, timeout: float = 5.0, method: str = "GET"):
    u = urlsplit(site_or_url if isinstance(site_or_url, str) else site_or_url.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        headers = {"Host": host} if host else {}
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def crawl(site, definition: dict) -> tuple[list[dict], list[str], Counter, list[str]]:
    """A tiny breadth-first crawler obeying the definition like the configurable spider should:
    allowed_domains, follow allow/deny regexes, dedupe on the canonical URL, redirects followed,
    items extracted with the definition's CSS selectors from 2xx pages whose URL matches url_pattern.
    Returns (items, fetched canonical urls, status counter, all raw hrefs seen)."""
    from parsel import Selector

    allow = [re.compile(r) for r in definition["follow"]["allow"]]
    deny = [re.compile(r) for r in definition["follow"]["deny"]]
    pattern = re.compile(definition["item"]["url_pattern"])
    domains = definition["allowed_domains"]
    seen: set[str] = set()
    queue = deque()
    for u in definition["start_urls"]:
        seen.add(canonical(u))
        queue.append(u)
    items, fetched, statuses, hrefs = [], [], Counter(), []
    while queue:
        url = queue.popleft()
        u = urlsplit(url)
        path = u.path + (f"?{u.query}" if u.query else "")
        status, headers, body = fetch(url, path)
        fetched.append(canonical(url))
        statuses[status] += 1
        if status in (301, 302):
            target = urljoin(url, headers["Location"])
            if canonical(target) not in seen:
                seen.add(canonical(target))
                queue.appendleft(target)
            continue
        if status >= 400 or not headers["Content-Type"].startswith("text/html"):
            continue
        if pattern.search(url):
            sel = Selector(text=body.decode("utf-8"))
            item = {"url": canonical(url)}
            for f in definition["item"]["fields"]:
                item[f["name"]] = sel.css(f["selector"]).get()
            items.append(item)
        for href in links_of(body):
            hrefs.append(href)
            absolute = urljoin(url, href)
            host = urlsplit(absolute).hostname or ""
            if not any(host == d or host.endswith("." + d) for d in domains):
                continue
            if not any(r.search(absolute) for r in allow) or any(r.search(absolute) for r in deny):
                continue
            c = canonical(absolute)
            if c not in seen:
                seen.add(c)
                queue.append(absolute)
    return items, fetched, statuses, hrefs


@pytest.fixture(scope="module")
def site():
    s = start_site("test")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def crawled(site):
    site.clear_requests()
    result = crawl(site, site.recommended_definition(slow=False))
    return result, site.requests


# -- catalog -------------------------------------------------------------------------------------
def test_catalog_is_deterministic_and_sized():
    a, b = build_catalog("test"), build_catalog("test")
    assert a.products == b.products and a.categories == b.categories
    assert build_catalog("test", seed=2).products != a.products
    demo, test, bench = (build_catalog(p) for p in ("demo", "test", "bench"))
    assert len(demo.categories) == 5 and len(demo.products) == 60 and demo.profile.per_page == 8
    assert len(test.categories) == 8 and len(test.products) == 200 and test.profile.per_page == 6
    assert len(bench.products) >= 2000 and bench.profile.per_page == 20
    assert not demo.profile.traps and not bench.profile.traps and test.profile.traps
    for cat in (demo, test, bench):
        assert len({p.sku for p in cat.products}) == len(cat.products)
        titles = [p.title for p in cat.products]
        assert sum(t.startswith("=") for t in titles) == 1
        assert any('"' in t and "," in t for t in titles)
        assert any("<b>" in t for t in titles)
        assert any(any(ord(ch) > 0xFFFF for ch in t) for t in titles)
        assert any("\n" in p.description for p in cat.products)
        for p in cat.products:
            assert re.fullmatch(r"\d+\.\d\d", p.price)
            assert p.title == p.title.strip()


# -- ground truth ----------------------------------------------------------------------------------
def test_crawl_with_recommended_definition_matches_ground_truth(site, crawled):
    (items, fetched, statuses, hrefs), _ = crawled
    expected = site.expected_items()
    assert len(expected) == 200
    assert sorted(items, key=lambda i: i["sku"]) == sorted(expected, key=lambda i: i["sku"])
    # every page was fetched once (dedupe on canonical URLs works on this site)
    assert len(fetched) == len(set(fetched))
    cat = site.catalog
    listings = cat.listing_page_count
    # home + listings + sorted listings + products + traps fetched
    assert statuses[200] == 1 + listings * 2 + 200 + 3  # + pdf, malformed and the page it links to
    assert statuses[301] >= 1 and statuses[404] == 1 and statuses[500] == 1


def test_products_linked_in_several_forms(site, crawled):
    (_, _, _, hrefs), _ = crawled
    forms = Counter()
    for h in hrefs:
        if "/product/" in h:
            low = h.lower()
            if h.startswith("HTTP://"):
                forms["upper-scheme"] += 1
            elif low.startswith("http://127.0.0.1"):
                forms["absolute"] += 1
            elif h.startswith("../"):
                forms["relative"] += 1
            elif "#reviews" in h:
                forms["fragment"] += 1
            elif h.startswith("/product/"):
                forms["root-relative"] += 1
    assert all(forms[k] > 0 for k in ("upper-scheme", "absolute", "relative", "fragment", "root-relative"))
    sku = "DS-01-007"
    variants = {h for h in hrefs if sku in h}
    assert len(variants) >= 3 and len({canonical(urljoin(site.url + "/category/books/", h)) for h in variants}) == 1
    assert any("?page=2&sort=name" in h for h in hrefs) and any("?sort=name&page=2" in h for h in hrefs)


def test_crawl_never_leaves_domain_nor_enters_trap(site, crawled):
    _, requests = crawled
    hosts = {h for h, _ in requests}
    assert hosts == {f"127.0.0.1:{site.port}"}
    paths = [p for _, p in requests]
    assert not any(p.startswith("/calendar/") for p in paths)
    assert not any(p.startswith("/slow/") for p in paths)
    assert f"/product/{HIDDEN_SKU}/" not in paths
    assert any(p.endswith(MALFORMED_TARGET_QUERY) for p in paths), "links of the malformed page followed"
    assert f"/product/{MISSING_SKU}/" in paths and "/broken/" in paths and "/files/catalog.pdf" in paths


def test_demo_and_bench_profiles_have_no_traps():
    for profile in ("demo", "bench"):
        with start_site(profile) as s:
            cat = s.catalog
            if profile == "demo":
                items, fetched, statuses, hrefs = crawl(s, s.recommended_definition())
                assert sorted(items, key=lambda i: i["sku"]) == sorted(s.expected_items(), key=lambda i: i["sku"])
                assert set(statuses) == {200}
                assert len(fetched) == 1 + cat.listing_page_count + len(cat.products)
                assert not any(h.startswith("http") for h in hrefs)
            else:
                assert len(s.expected_items()) >= 2000
                status, _, body = fetch(s, "/")
                assert status == 200 and b"calendar" not in body and b"localhost" not in body
            for path in ("/broken/", "/files/catalog.pdf", f"/calendar/{CALENDAR_START}/", "/slow/",
                         f"/old/{cat.products[0].sku}/"):
                assert fetch(s, path)[0] == 404


def test_item_fields_are_exact_text(site):
    from parsel import Selector

    weird = [p for p in site.catalog.products if p.title.startswith("=") or "<b>" in p.title
             or any(ord(c) > 0xFFFF for c in p.title)]
    assert len(weird) >= 3
    for p in weird:
        status, headers, body = fetch(site, f"/product/{p.sku}/")
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        sel = Selector(text=body.decode("utf-8"))
        assert sel.css("h1::text").get() == p.title
        assert sel.css(".category::text").get() == p.category_name
        assert sel.css(".price::text").get() == p.price
    status, _, body = fetch(site, f"/product/{[p for p in site.catalog.products if '<b>' in p.title][0].sku}/")
    assert b"&lt;b&gt;" in body


# -- traps ---------------------------------------------------------------------------------------
def test_redirect(site):
    sku = site.catalog.products[5].sku
    status, headers, _ = fetch(site, f"/old/{sku}/")
    assert status == 301 and headers["Location"] == f"{site.url}/product/{sku}/"
    assert fetch(site, "/old/nope/")[0] == 404


def test_errors_and_pdf(site):
    assert fetch(site, f"/product/{MISSING_SKU}/")[0] == 404
    assert fetch(site, "/broken/")[0] == 500
    assert fetch(site, "/nowhere")[0] == 404
    assert fetch(site, "/category/books/?page=99")[0] == 404
    status, headers, body = fetch(site, "/files/catalog.pdf")
    assert status == 200 and headers["Content-Type"] == "application/pdf" and body.startswith(b"%PDF-")
    assert int(headers["Content-Length"]) == len(body)


def test_calendar_chain_is_endless(site):
    path, months = f"/calendar/{CALENDAR_START}/", []
    for _ in range(14):
        status, _, body = fetch(site, path)
        assert status == 200
        months.append(path)
        nxt = [h for h in links_of(body) if h.startswith("/calendar/")]
        assert len(nxt) == 1
        path = nxt[0]
    assert months[11] == "/calendar/2026-12/" and months[12] == "/calendar/2027-01/"
    status, _, body = fetch(site, f"/product/{HIDDEN_SKU}/")
    assert status == 200  # a real page, only reachable through the trap
    assert HIDDEN_SKU not in {i["sku"] for i in site.expected_items()}


def test_malformed_page_links_somewhere_valid(site):
    status, _, body = fetch(site, "/malformed/")
    assert status == 200 and b"</div></div></div>" in body
    for href in links_of(body):
        assert fetch(site, href)[0] == 200


def test_slow_page_is_linked_once_and_slow(site, crawled):
    (_, _, _, hrefs), _ = crawled
    assert hrefs.count("/slow/") == 1
    with pytest.raises((socket.timeout, TimeoutError)):
        fetch(site, "/slow/", timeout=0.3)


def test_out_of_domain_link(site):
    status, _, body = fetch(site, "/")
    assert f"http://localhost:{site.port}/" in body.decode()
    site.clear_requests()
    fetch(site, "/product/DS-01-001/", host=f"localhost:{site.port}")
    fetch(site, "/nope/")
    assert site.requests == [(f"localhost:{site.port}", "/product/DS-01-001/"),
                             (f"127.0.0.1:{site.port}", "/nope/")]


# -- protocol ------------------------------------------------------------------------------------
def test_keep_alive_and_content_length(site):
    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=5)
    sock = None
    for path in ("/", "/category/books/", "/product/DS-01-001/", "/nope/", "/broken/", "/files/catalog.pdf"):
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        assert int(resp.getheader("Content-Length")) == len(body)
        assert not resp.will_close
        sock = sock or conn.sock
        assert conn.sock is sock, "the connection was reused"
    conn.request("HEAD", "/")
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.getheader("Content-Length")) > 0 and resp.read() == b""
    conn.close()


def test_delay_applies_and_requests_overlap():
    with start_site("demo", delay_ms=200) as s:
        t = time.perf_counter()
        assert fetch(s, "/")[0] == 200
        assert time.perf_counter() - t >= 0.2
        t = time.perf_counter()
        threads = [threading.Thread(target=fetch, args=(s, f"/product/{p.sku}/")) for p in s.catalog.products[:5]]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert 0.2 <= time.perf_counter() - t < 0.8


def test_site_stops_and_frees_port():
    s = start_site("demo")
    port = s.port
    s.stop()
    s.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_site_in_its_own_process_serves_the_same_shop_and_stops():
    """What the benchmarks use: the same pages and ground truth, from a process of its own."""
    inproc, own = start_site("demo"), start_site_process("demo")
    try:
        assert own.process.pid != os.getpid()
        cat = own.catalog
        for path in ("/", f"/category/{cat.categories[0].slug}/", f"/product/{cat.products[0].sku}/"):
            (a, _, body_a), (b, _, body_b) = fetch(inproc, path), fetch(own, path)
            assert a == b == 200
            assert body_a.replace(inproc.url.encode(), b"") == body_b.replace(own.url.encode(), b"")
        assert [dict(i, url=i["url"][len(own.url):]) for i in own.expected_items()] == [
            dict(i, url=i["url"][len(inproc.url):]) for i in inproc.expected_items()]
        assert own.recommended_definition()["start_urls"] == [f"{own.url}/"]
    finally:
        inproc.stop()
        own.stop()
    assert own.process.returncode == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", own.port), timeout=1).close()


# -- CLI -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_starts_and_stops_cleanly(sig):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "demosite", "--profile", "demo", "--port", "0",
                             "--delay-ms", "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"serving on (http://127\.0\.0\.1:\d+)/", line)
        assert m, line
        status, _, body = fetch(m.group(1), "/")
        assert status == 200 and b"Demo shop" in body
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "Traceback" not in err and err == ""
    assert "stopped" in out


def test_profiles_table():
    assert set(PROFILES) == {"demo", "test", "bench", "lifecycle"}
