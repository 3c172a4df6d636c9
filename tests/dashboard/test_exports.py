"""Streamed exports (issue 6): round trips in every format, safety, access, constant memory."""

import csv
import io
import json
import re
import tracemalloc
import warnings
import xml.etree.ElementTree as ET
import zipfile

import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse

from dashboard import exports, xlsx_builds
from dashboard.models import Crawl, Item, Project

pytestmark = pytest.mark.django_db

TRICKY = {
    "quotes": 'He said "hi", then \'bye\'',
    "newlines": "line 1\nline 2\r\nline 3\rend",
    "commas": "a,b,,c;d\t e",
    "html": '<script>alert("x")</script><b>bold</b> &amp; &lt;',
    "control": "nul\x00 bell\x07 vt\x0b ff\x0c esc\x1b unit\x1f end",
    "non_bmp": "emoji 😀 clef 𝄞 cjk 𠜎 café",
    "xlsx_escape": "_x0041_ stays literal",
    "empty": "",
    "spaces": "  padded  ",
}
FORMULAS = ["=1+1", "+41", "-2", "@SUM(A1:A2)", "\tcmd", "\rcmd", "=HYPERLINK(\"http://evil\")"]
XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")
FIELDS = ["title", "body", "tags"]


def make_project(owner, name="Books & Co", definition=None):
    definition = definition or {
        "name": name,
        "item": {"fields": [{"name": n, "selector": "p", "many": n == "tags"} for n in FIELDS]},
    }
    return Project.objects.create(owner=owner, name=name, definition=definition)


def make_crawl(project, status=Crawl.FINISHED, definition=None):
    return Crawl.objects.create(project=project, definition=definition or project.definition, status=status)


def add_items(crawl, datas):
    start = crawl.items.count()
    Item.objects.bulk_create(
        Item(crawl=crawl, key=f"k{start + i}", url=d.get("url", ""), data=d) for i, d in enumerate(datas)
    )


def tricky_items():
    """One item per tricky value (as title), with body and a list of tags carrying more of them."""
    items = []
    for i, (name, value) in enumerate([*TRICKY.items(), *((f"formula{j}", f) for j, f in enumerate(FORMULAS))]):
        items.append({
            "url": f"https://example.com/{i}?a=1&b=\"2\"",
            "title": value,
            "body": f"{name}: {value}",
            "tags": [value, "plain", "x,y"],
        })
    return items


@pytest.fixture
def crawl(owner):
    crawl = make_crawl(make_project(owner))
    add_items(crawl, tricky_items())
    return crawl


def build_xlsx_here(crawl):
    """Run the `tasks` job's body in this process (test_xlsx_builds.py runs it on a real worker)."""
    snapshot = exports.snapshot_max_id(crawl)
    xlsx_builds.build(crawl.code, snapshot)
    return reverse("dashboard:crawl-xlsx-file", args=[crawl.code, snapshot])


def download(client, crawl, fmt):
    if fmt == "xlsx":
        response = client.get(build_xlsx_here(crawl))
    else:
        response = client.get(reverse("dashboard:crawl-export", args=[crawl.code]) + f"?format={fmt}")
    assert response.status_code == 200, response
    assert response.streaming
    return response, b"".join(response.streaming_content)


# --- parsers used to re-import ----------------------------------------------------------------


def read_xml(body):
    root = ET.fromstring(body)
    assert root.tag == "items"

    def value(element):
        children = list(element)
        if children and all(c.tag == "value" for c in children):
            return [value(c) for c in children]
        if children:
            return {c.tag: value(c) for c in children}
        return element.text or ""

    return [{field.tag: value(field) for field in item} for item in root]


XLSX_NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}


def _xlsx_unescape(text):
    return re.sub(r"_x([0-9A-Fa-f]{4})_", lambda m: chr(int(m.group(1), 16)), text)


def read_xlsx(body):
    """Rows of every sheet as lists of Python values, read with zipfile and ElementTree."""
    archive = zipfile.ZipFile(io.BytesIO(body))
    shared = []
    if "xl/sharedStrings.xml" in archive.namelist():
        for si in ET.fromstring(archive.read("xl/sharedStrings.xml")).findall("m:si", XLSX_NS):
            shared.append(_xlsx_unescape("".join(t.text or "" for t in si.iter(f"{{{XLSX_NS['m']}}}t"))))
    sheets = sorted(n for n in archive.namelist() if n.startswith("xl/worksheets/sheet"))
    result = []
    for name in sheets:
        rows = []
        for row in ET.fromstring(archive.read(name)).iter(f"{{{XLSX_NS['m']}}}row"):
            cells = {}
            for c in row.findall("m:c", XLSX_NS):
                col = re.match(r"[A-Z]+", c.get("r")).group(0)
                index = 0
                for ch in col:
                    index = index * 26 + ord(ch) - 64
                kind = c.get("t")
                if kind == "inlineStr":
                    value = _xlsx_unescape("".join(t.text or "" for t in c.iter(f"{{{XLSX_NS['m']}}}t")))
                elif kind == "s":
                    value = shared[int(c.find("m:v", XLSX_NS).text)]
                elif kind == "b":
                    value = c.find("m:v", XLSX_NS).text == "1"
                else:
                    value = float(c.find("m:v", XLSX_NS).text)
                cells[index - 1] = value
            rows.append([cells.get(i) for i in range(max(cells) + 1)] if cells else [])
        result.append(rows)
    return result


def neutralised(value):
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


# --- round trips ------------------------------------------------------------------------------


def test_jsonl_round_trip_is_exact(owner_client, crawl):
    response, body = download(owner_client, crawl, "jsonl")
    assert response["Content-Type"].startswith("application/x-ndjson")
    lines = body.decode("utf-8").split("\n")
    assert lines[-1] == ""
    assert [json.loads(line) for line in lines[:-1]] == tricky_items()
    assert "😀".encode() in body  # UTF-8, not \ud83d escapes


def test_json_round_trip_is_exact(owner_client, crawl):
    _, body = download(owner_client, crawl, "json")
    assert json.loads(body) == tricky_items()


def test_csv_round_trip_has_a_column_per_field_and_neutralises_formulas(owner_client, crawl):
    response, body = download(owner_client, crawl, "csv")
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
    assert rows[0] == ["url", *FIELDS]
    expected = [
        [item["url"], neutralised(item["title"]), neutralised(item["body"]),
         json.dumps(item["tags"], ensure_ascii=False)]
        for item in tricky_items()
    ]
    assert rows[1:] == expected
    # Values that are not formulas come back byte for byte; nested values are JSON text.
    titles = [r[1] for r in rows[1:]]
    for value in TRICKY.values():
        assert value in titles
    assert json.loads(rows[1][3]) == [TRICKY["quotes"], "plain", "x,y"]
    for formula in FORMULAS:
        assert "'" + formula in titles and formula not in titles


def test_xml_round_trip_replaces_only_characters_xml_cannot_carry(owner_client, crawl):
    response, body = download(owner_client, crawl, "xml")
    assert response["Content-Type"].startswith("application/xml")
    parsed = read_xml(body)  # would raise if any control character leaked through

    def clean(value):
        if isinstance(value, list):
            return [clean(v) for v in value]
        return XML_ILLEGAL.sub("\ufffd", value)

    assert parsed == [{k: clean(v) for k, v in item.items()} for item in tricky_items()]
    by_title = {item["title"] for item in parsed}
    assert TRICKY["newlines"] in by_title  # carriage returns survive (&#13;)
    assert TRICKY["non_bmp"] in by_title and TRICKY["html"] in by_title
    assert "nul\ufffd bell\ufffd vt\ufffd ff\ufffd esc\ufffd unit\ufffd end" in by_title


def test_xlsx_round_trip_neutralises_formulas_and_keeps_text_intact(owner_client, crawl):
    response, body = download(owner_client, crawl, "xlsx")
    assert response["Content-Type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert int(response["Content-Length"]) == len(body)
    [rows] = read_xlsx(body)
    assert rows[0] == ["url", *FIELDS]
    expected = [
        [item["url"], neutralised(item["title"]), neutralised(item["body"]),
         json.dumps(item["tags"], ensure_ascii=False)]
        for item in tricky_items()
    ]
    # An empty string is an empty (absent) cell in a spreadsheet.
    assert [[c if c is not None else "" for c in row] for row in rows[1:]] == expected
    assert b"<f>" not in zipfile.ZipFile(io.BytesIO(body)).read("xl/worksheets/sheet1.xml")  # no formulas


def test_custom_spider_export_has_a_column_for_every_key_seen(owner_client, owner):
    project = make_project(owner, "Custom", {"name": "Custom", "spider": "shop.spiders.Shop", "item": {"fields": []}})
    crawl = make_crawl(project)
    datas = [
        {"url": "https://s/1", "price": 12, "meta": {"a": [1, 2], "b": "x"}, "ok": True},
        {"url": "https://s/2", "name": "=cmd", "none": None, "ratio": 0.5, "big": 2 ** 60},
    ]
    add_items(crawl, datas)

    _, body = download(owner_client, crawl, "csv")
    rows = list(csv.reader(io.StringIO(body.decode(), newline="")))
    assert rows[0] == ["url", "big", "meta", "name", "none", "ok", "price", "ratio"]
    assert rows[1] == ["https://s/1", "", '{"a": [1, 2], "b": "x"}', "", "", "true", "12", ""]
    assert rows[2] == ["https://s/2", str(2 ** 60), "", "'=cmd", "", "", "", "0.5"]

    _, body = download(owner_client, crawl, "jsonl")
    assert [json.loads(x) for x in body.splitlines()] == datas

    _, body = download(owner_client, crawl, "xml")
    parsed = read_xml(body)
    assert parsed[0] == {"url": "https://s/1", "price": "12", "meta": {"a": ["1", "2"], "b": "x"}, "ok": "true"}
    assert parsed[1]["none"] == "" and parsed[1]["name"] == "=cmd"  # XML is data: not neutralised

    _, body = download(owner_client, crawl, "xlsx")
    [rows] = read_xlsx(body)
    assert rows[0] == ["url", "big", "meta", "name", "none", "ok", "price", "ratio"]
    assert rows[1][:3] == ["https://s/1", None, '{"a": [1, 2], "b": "x"}'] and rows[1][5:7] == [True, 12.0]
    assert rows[2][1] == str(2 ** 60)  # beyond 2**53: text, so no digit is lost
    assert rows[2][3] == "'=cmd" and rows[2][7] == 0.5


def test_header_row_is_neutralised_like_the_cells(owner_client, owner):
    """A custom spider's key names become column titles: a key that a spreadsheet would run as a
    formula gets the same leading ' in the CSV and Excel header as a value would."""
    project = make_project(owner, "Keys", {"name": "Keys", "spider": "shop.spiders.Shop", "item": {"fields": []}})
    crawl = make_crawl(project)
    keys = ["=HYPERLINK(\"http://evil\")", "+1", "-2", "@SUM(A1)", "\tx", "plain"]
    add_items(crawl, [{"url": "https://s/1", **{key: "v" for key in keys}}])

    _, body = download(owner_client, crawl, "csv")
    header, row = list(csv.reader(io.StringIO(body.decode(), newline="")))
    assert sorted(header) == sorted(["url", *(neutralised(k) for k in keys)])
    assert not [title for title in header if title[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert row == ["https://s/1"] + ["v"] * len(keys)

    _, body = download(owner_client, crawl, "xlsx")
    [rows] = read_xlsx(body)
    assert rows[0] == header


def test_xml_element_names_are_made_valid(owner_client, owner):
    project = make_project(owner, "Odd keys", {"name": "Odd keys", "spider": "a.b.C"})
    crawl = make_crawl(project)
    add_items(crawl, [{"url": "u", "my key": "v", "1st": "w", "xmlish": "z", "a<b": "q"}])
    _, body = download(owner_client, crawl, "xml")
    assert read_xml(body) == [{"url": "u", "my_key": "v", "_1st": "w", "_xmlish": "z", "a_b": "q"}]


@pytest.mark.parametrize("fmt", list(exports.FORMATS))
def test_empty_crawl_exports_a_valid_empty_file(owner_client, owner, fmt):
    crawl = make_crawl(make_project(owner))
    _, body = download(owner_client, crawl, fmt)
    if fmt == "jsonl":
        assert body == b""
    elif fmt == "json":
        assert json.loads(body) == []
    elif fmt == "csv":
        assert body.decode().splitlines() == ["url,title,body,tags"]
    elif fmt == "xml":
        assert read_xml(body) == []
    else:
        assert read_xlsx(body) == [[["url", *FIELDS]]]


# --- headers, formats, access -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(exports.FORMATS))
def test_download_is_named_after_project_and_code(owner_client, crawl, fmt):
    response, _ = download(owner_client, crawl, fmt)
    assert response["Content-Disposition"] == f'attachment; filename="books-co-{crawl.code}.{fmt}"'
    assert response["Cache-Control"] == "no-store"


def test_unknown_format_is_400_listing_the_valid_ones(owner_client, crawl):
    response = owner_client.get(reverse("dashboard:crawl-export", args=[crawl.code]) + "?format=pdf")
    assert response.status_code == 400
    assert response.json()["formats"] == ["jsonl", "json", "csv", "xml", "xlsx"]
    assert "jsonl, json, csv, xml, xlsx" in response.json()["detail"]


def test_missing_format_defaults_to_json_lines(owner_client, crawl):
    response = owner_client.get(reverse("dashboard:crawl-export", args=[crawl.code]))
    assert response["Content-Disposition"].endswith('.jsonl"')


@pytest.mark.parametrize("fmt", ["jsonl", "xlsx", "pdf"])
def test_export_of_another_users_crawl_is_404(client, outsider, crawl, fmt):
    client.force_login(outsider)
    response = client.get(reverse("dashboard:crawl-export", args=[crawl.code]) + f"?format={fmt}")
    assert response.status_code == 404


def test_export_needs_login(client, crawl):
    response = client.get(reverse("dashboard:crawl-export", args=[crawl.code]))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_export_is_get_only(owner_client, crawl):
    assert owner_client.post(reverse("dashboard:crawl-export", args=[crawl.code])).status_code == 405


# --- filters (only=invalid, only=new) -----------------------------------------------------------


@pytest.fixture
def marked(owner):
    """A run with items a (invalid), b, c (invalid) after a finished run that had a and b."""
    project = make_project(owner)
    before = make_crawl(project)
    crawl = make_crawl(project)
    Crawl.objects.filter(pk=before.pk).update(created_at=crawl.created_at.replace(year=2000))
    for run, rows in ((before, [("a", False), ("b", False)]), (crawl, [("a", True), ("b", False), ("c", True)])):
        Item.objects.bulk_create(Item(crawl=run, key=sku, url=f"https://example.com/{sku}", ident=sku, invalid=bad,
                                      data={"url": f"https://example.com/{sku}", "title": sku}) for sku, bad in rows)
    return crawl


@pytest.mark.parametrize("only, expected", [("invalid", ["a", "c"]), ("new", ["c"]), (None, ["a", "b", "c"])])
def test_the_excel_workbook_holds_exactly_the_filtered_items(marked, only, expected):
    out = io.BytesIO()
    exports.write_xlsx(marked, exports.snapshot_max_id(marked), out, only)
    [rows] = read_xlsx(out.getvalue())
    assert rows[0] == ["url", *FIELDS] and [row[1] for row in rows[1:]] == expected


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_filtered_download_is_named_after_its_filter(owner_client, marked, fmt):
    response = owner_client.get(reverse("dashboard:crawl-export", args=[marked.code]), {"format": fmt, "only": "invalid"})
    assert response["Content-Disposition"] == f'attachment; filename="books-co-{marked.code}-invalid.{fmt}"'
    assert b"https://example.com/b" not in b"".join(response.streaming_content)


def test_the_item_browser_offers_each_filter_in_every_format(owner_client, marked):
    page = owner_client.get(reverse("dashboard:crawl-items", args=[marked.code])).content.decode()
    export = reverse("dashboard:crawl-export", args=[marked.code])
    for only in exports.ONLY:
        for fmt in exports.FORMATS:
            if fmt == "xlsx":
                assert f'<input type="hidden" name="only" value="{only}"><button class="btn btn-sm" type="submit" ' \
                       f'data-format="xlsx" data-only="{only}"' in page
            else:
                assert f'href="{export}?format={fmt}&amp;only={only}"' in page


def test_an_unknown_filter_is_400_naming_the_valid_ones(owner_client, marked):
    for fmt in exports.FORMATS:
        response = owner_client.get(reverse("dashboard:crawl-export", args=[marked.code]), {"format": fmt, "only": "all"})
        assert response.status_code == 400, fmt
        assert response.json()["filters"] == ["invalid", "new"] and "Valid filters: invalid, new." in response.json()["detail"]


# --- snapshot ---------------------------------------------------------------------------------


def test_running_crawl_exports_the_items_stored_when_the_request_started(owner_client, owner):
    crawl = make_crawl(make_project(owner), status=Crawl.RUNNING)
    add_items(crawl, [{"url": f"https://e/{i}", "title": str(i)} for i in range(3)])
    response = exports.export_response(crawl, "jsonl")  # snapshot taken here
    add_items(crawl, [{"url": "https://e/late", "title": "late"}])
    lines = b"".join(response).splitlines()
    assert [json.loads(x)["title"] for x in lines] == ["0", "1", "2"]
    assert response["X-Crawlsite-Snapshot"] == str(crawl.items.order_by("id")[2].id)


# --- project export ---------------------------------------------------------------------------


def test_project_export_serves_the_latest_finished_crawl(owner_client, owner):
    project = make_project(owner)
    old = make_crawl(project)
    add_items(old, [{"url": "https://e/old", "title": "old"}])
    new = make_crawl(project)
    add_items(new, [{"url": "https://e/new", "title": "new"}])
    running = make_crawl(project, status=Crawl.RUNNING)
    add_items(running, [{"url": "https://e/running", "title": "running"}])
    Crawl.objects.filter(pk=old.pk).update(finished_at="2030-01-01T00:00:00Z")
    Crawl.objects.filter(pk=new.pk).update(finished_at="2030-01-02T00:00:00Z")

    response = owner_client.get(reverse("dashboard:project-export", args=[project.code]) + "?format=json")
    assert response.status_code == 200
    assert json.loads(b"".join(response.streaming_content)) == [{"url": "https://e/new", "title": "new"}]
    assert new.code in response["Content-Disposition"]


def test_project_export_without_a_finished_crawl_is_404_with_a_reason(owner_client, owner):
    project = make_project(owner)
    make_crawl(project, status=Crawl.RUNNING)
    response = owner_client.get(reverse("dashboard:project-export", args=[project.code]) + "?format=csv")
    assert response.status_code == 404
    assert "no finished crawl" in response.json()["detail"]


def test_project_export_of_another_users_project_is_404(client, outsider, crawl):
    client.force_login(outsider)
    response = client.get(reverse("dashboard:project-export", args=[crawl.project.code]))
    assert response.status_code == 404


def test_project_export_unknown_format_is_400(owner_client, crawl):
    response = owner_client.get(reverse("dashboard:project-export", args=[crawl.project.code]) + "?format=doc")
    assert response.status_code == 400


# --- API helper -------------------------------------------------------------------------------


def test_items_page_walks_every_item_with_a_cursor(owner):
    crawl = make_crawl(make_project(owner))
    add_items(crawl, [{"url": f"https://e/{i}", "title": str(i)} for i in range(25)])
    seen, after = [], None
    while True:
        page = exports.items_page(crawl, after=after, limit=10)
        seen += [row["data"]["title"] for row in page["items"]]
        assert len(page["items"]) <= 10
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == [str(i) for i in range(25)]
    assert len(exports.items_page(crawl, limit=5000)["items"]) == 25  # clamped to 1000, not refused


# --- constant memory --------------------------------------------------------------------------

LARGE = 100_000


@pytest.fixture
def large_crawl(owner):
    crawl = make_crawl(make_project(owner, "Large"))
    filler = "x" * 150
    batch = []
    for i in range(LARGE):
        batch.append(Item(crawl=crawl, key=f"k{i}", url=f"https://example.com/p/{i}",
                          data={"url": f"https://example.com/p/{i}", "title": f"Title {i} {filler}",
                                "body": f"Body, \"quoted\" {i}", "tags": ["a", "b", str(i)]}))
        if len(batch) == 10_000:
            Item.objects.bulk_create(batch)
            batch = []
    return crawl


def test_large_export_streams_in_constant_memory(owner_client, large_crawl):
    # One crawl of LARGE items (its setup is the slow part) serves every format.
    for fmt in ("jsonl", "csv", "xlsx"):
        streams_in_constant_memory(owner_client, large_crawl, fmt)


def streams_in_constant_memory(owner_client, large_crawl, fmt):
    if fmt != "xlsx":
        # Warm up: the first export of a process imports and caches what it needs once (codecs,
        # the exporter, query compilation); that is not what this test measures.
        warm = owner_client.get(reverse("dashboard:crawl-export", args=[large_crawl.code]) + f"?format={fmt}")
        next(iter(warm.streaming_content))
        warm.close()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        if fmt == "xlsx":  # the job's build, then the download of its file
            response = owner_client.get(build_xlsx_here(large_crawl))
        else:
            response = owner_client.get(reverse("dashboard:crawl-export", args=[large_crawl.code]) + f"?format={fmt}")
        total = parts = 0
        tail = b""
        for part in response.streaming_content:
            total += len(part)
            parts += 1
            tail = part[-200:] if part else tail
        peak = tracemalloc.get_traced_memory()[1] - baseline
        response.close()
    finally:
        tracemalloc.stop()
    message = f"peak {peak / 1e6:.1f} MB for a {total / 1e6:.1f} MB {fmt} export"
    if fmt == "xlsx":
        # Compressed, so the file is small; the sheet it holds is ~30 MB of XML, built on disk.
        assert parts > 1 and total > 2_000_000
    else:
        assert tail.endswith(b'"99999"]}\n' if fmt == "jsonl" else b'""99999""]"\r\n')
        assert parts > 50  # really streamed in parts, one per chunk of rows
        # The whole payload is tens of MB; the process never holds more than a chunk of it.
        assert total > 20_000_000
        assert peak < total / 4, message
    assert peak < 12_000_000, message


def test_asgi_serving_pulls_one_part_at_a_time(owner):
    """Under ASGI Django would list() a sync iterator; ExportResponse must not."""
    crawl = make_crawl(make_project(owner))
    add_items(crawl, [{"url": f"https://e/{i}", "title": str(i)} for i in range(exports.CHUNK_SIZE * 2 + 5)])
    response = exports.export_response(crawl, "jsonl")
    produced = []
    original = response._iterator

    def counting():
        for part in original:
            produced.append(len(part))
            yield part

    response._iterator = counting()

    async def consume():
        sizes = []
        async for part in response:
            sizes.append((len(part), len(produced)))
        return sizes

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Django's "must consume synchronous iterators" warning
        sizes = async_to_sync(consume)()
    # Each part reached the consumer before the next one was produced.
    assert [n for _, n in sizes] == list(range(1, len(sizes) + 1))
    assert len(sizes) == 3
