"""Downloads of a crawl's items: JSON lines, JSON, CSV, XML (Scrapy's item exporters) and Excel.

The two entry points, shared by the pages and the JSON API:

    export_response(crawl, fmt)        -> a streamed HTTP response (or a 400 naming valid formats)
    items_page(crawl, after, limit)    -> {"items": [...], "next": cursor | None}

Constant memory
    Items are read with ``QuerySet.iterator(chunk_size=CHUNK_SIZE)`` and fed to the exporter,
    which writes into an in-memory buffer; the buffer is drained after every chunk, so the web
    process holds one chunk of rows and its encoded bytes at a time, whatever the crawl's size.

Consistent snapshot
    The largest item id is read when the request starts and the export stops there
    (``id <= max_id``): a running crawl exports exactly the items stored at that moment.

ASGI
    Django's StreamingHttpResponse, served by the ASGI handler, turns a *synchronous* iterator
    into a list before sending the first byte (``sync_to_async(list)``), i.e. the whole export in
    memory. :class:`ExportResponse` and :class:`ExportFileResponse` instead pull one part at a
    time from the synchronous iterator in the request's thread (``sync_to_async(next)``), so the
    database cursor lives in one thread and memory stays flat under uvicorn too.

Spreadsheet safety (CSV and Excel)
    A text value that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return would be
    run as a formula by Excel, LibreOffice or Google Sheets (CSV injection). Following OWASP's
    recommendation such a value gets a leading apostrophe: ``=1+1`` is exported as ``'=1+1``.
    Numbers are not text and are never changed. JSON, JSON lines and XML are data formats and
    keep values exactly as scraped.

XML
    XML 1.0 cannot carry the control characters U+0000-U+0008, U+000B, U+000C, U+000E-U+001F,
    nor U+FFFE, U+FFFF or lone surrogates, not even as character references. Each of them is
    replaced by U+FFFD (the Unicode replacement character) so the file always parses; everything
    else round-trips, including carriage returns (written as ``&#13;`` so parsers keep them).
    Field names that are not valid XML element names (custom spiders may use any key) have each
    offending character replaced by ``_``.

Excel
    An .xlsx file is a zip archive whose directory comes last, so it cannot be sent while it is
    being built. It is therefore built by an RQ job on the ``tasks`` queue
    (:mod:`dashboard.xlsx_builds`), never inside a request; :func:`write_xlsx` is what that job
    runs. The workbook is written by XlsxWriter in ``constant_memory`` mode (rows are flushed to a
    temporary file as they are written). Excel limits: 1,048,576 rows per sheet
    (further items continue on "items 2", "items 3"... each with its header row) and 32,767
    characters per cell (longer text is cut there, as Excel would).
"""

from __future__ import annotations

import io
import json
import math
import re
import tempfile
from collections.abc import Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connection
from django.db.models import Max
from django.http import FileResponse, JsonResponse, StreamingHttpResponse
from django.utils.http import content_disposition_header
from django.utils.text import slugify
from scrapy.exporters import CsvItemExporter, JsonItemExporter, JsonLinesItemExporter, XmlItemExporter
from xml.sax.saxutils import XMLGenerator, escape as xml_escape

from dashboard.models import Crawl, Item

__all__ = [
    "CHUNK_SIZE",
    "FORMATS",
    "ONLY",
    "ExportFileResponse",
    "ExportResponse",
    "columns",
    "download_headers",
    "export_response",
    "filename",
    "items_page",
    "neutralise_formula",
    "snapshot_max_id",
    "unknown_filter_response",
    "unknown_format_response",
]

CHUNK_SIZE = 1000  # rows per database fetch and per drained buffer
FILE_BLOCK_SIZE = 256 * 1024  # bytes per part when streaming the finished .xlsx
ITEMS_PAGE_MAX = 1000

# format -> (file extension, content type)
FORMATS: dict[str, tuple[str, str]] = {
    "jsonl": ("jsonl", "application/x-ndjson; charset=utf-8"),
    "json": ("json", "application/json; charset=utf-8"),
    "csv": ("csv", "text/csv; charset=utf-8"),
    "xml": ("xml", "application/xml; charset=utf-8"),
    "xlsx": ("xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
}


# --- the snapshot and its columns -------------------------------------------------------------


def snapshot_max_id(crawl: Crawl) -> int:
    """The largest item id of ``crawl`` right now (0 if none): the export's upper bound."""
    return crawl.items.aggregate(m=Max("id"))["m"] or 0


# Export filters (``?only=``): the items that failed validation, or those whose item key was not
# in the project's previous finished run (dashboard/history.py). Every format takes them.
ONLY = ("invalid", "new")
ONLY_LABELS = {"invalid": "only the items that failed validation",
               "new": "only the items new since the previous finished run"}


def only_items(crawl: Crawl, rows, only: str | None):
    """``rows`` (items of ``crawl``) limited by an export filter of ``ONLY`` (None: all)."""
    from dashboard import history  # history imports the ingest, which needs the models only

    if only == "invalid":
        return rows.filter(invalid=True)
    if only == "new":
        previous = history.previous_finished(crawl)
        return history.not_in(rows, previous) if previous is not None else rows
    return rows


def _snapshot(crawl: Crawl, max_id: int, only: str | None = None):
    return only_items(crawl, Item.objects.filter(crawl=crawl, id__lte=max_id), only).order_by("id")


def _iter_data(crawl: Crawl, max_id: int, only: str | None = None) -> Iterator[list[dict]]:
    """The snapshot's item dicts, one list of up to CHUNK_SIZE per database fetch."""
    chunk: list[dict] = []
    for data in _snapshot(crawl, max_id, only).values_list("data", flat=True).iterator(chunk_size=CHUNK_SIZE):
        chunk.append(data if isinstance(data, dict) else {"value": data})
        if len(chunk) >= CHUNK_SIZE:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def definition_columns(definition: dict) -> list[str]:
    """``url`` then the definition's fields, in order."""
    names = ["url"]
    for field in (definition.get("item") or {}).get("fields") or []:
        name = field.get("name") if isinstance(field, dict) else None
        if name and name not in names:
            names.append(name)
    return names


def _distinct_keys(crawl: Crawl, max_id: int) -> list[str]:
    """Every top-level key used by the snapshot's items (one pass, done by the database)."""
    table = Item._meta.db_table
    if connection.vendor == "sqlite":
        sql = (f"SELECT DISTINCT j.key FROM {table}, json_each({table}.data) AS j "
               f"WHERE {table}.crawl_id = %s AND {table}.id <= %s AND json_type({table}.data) = 'object'")
    elif connection.vendor == "postgresql":
        sql = (f"SELECT DISTINCT jsonb_object_keys(data) FROM {table} "
               f"WHERE crawl_id = %s AND id <= %s AND jsonb_typeof(data) = 'object'")
    else:  # any other database: a pass in Python, still one chunk at a time
        seen: dict[str, None] = {}
        for chunk in _iter_data(crawl, max_id):
            for data in chunk:
                seen.update(dict.fromkeys(data))
        return list(seen)
    with connection.cursor() as cursor:
        cursor.execute(sql, [crawl.pk, max_id])
        return [row[0] for row in cursor.fetchall()]


def columns(crawl: Crawl, max_id: int | None = None) -> list[str]:
    """Column names for the tabular formats: ``url``, the definition's fields, then other keys.

    Items of a configured crawl carry exactly ``url`` and the definition's fields. A custom
    spider may yield any keys, so for those the snapshot's keys are collected first (sorted).
    """
    names = definition_columns(crawl.definition or {})
    if (crawl.definition or {}).get("spider"):
        if max_id is None:
            max_id = snapshot_max_id(crawl)
        extra = sorted(set(_distinct_keys(crawl, max_id)) - set(names))
        names.extend(extra)
    return names


def filename(crawl: Crawl, fmt: str, only: str | None = None) -> str:
    """``<project-slug>-<code>.<ext>``, e.g. ``books-k3j9x0a1b2.csv``; a filtered export adds the
    filter: ``books-k3j9x0a1b2-invalid.csv``."""
    slug = slugify(crawl.project.name)[:60].strip("-") or "crawl"
    suffix = f"-{only}" if only in ONLY else ""
    return f"{slug}-{crawl.code}{suffix}.{FORMATS[fmt][0]}"


# --- value conversions ------------------------------------------------------------------------

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formula(text: str) -> str:
    """Prefix ``'`` to text a spreadsheet would run as a formula (OWASP CSV injection advice)."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _cell_text(value: Any) -> str:
    """One CSV cell: text neutralised, nested values as JSON text, None empty, booleans as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return neutralise_formula(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    return json.dumps(value, ensure_ascii=False)


# Not allowed anywhere in an XML 1.0 document (W3C XML 1.0, section 2.2 "Char").
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_XML_NAME_START = re.compile(r"^[A-Za-z_]")
_XML_NAME_BAD = re.compile(r"[^A-Za-z0-9_.\-]")


def _xml_text(value: str) -> str:
    return _XML_ILLEGAL.sub("\ufffd", value)


def _xml_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str):
        return _xml_text(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return {k: _xml_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_xml_value(v) for v in value]
    return value


_xml_names: dict[str, str] = {}


def _xml_name(name: str) -> str:
    """A valid XML element name for a field name (cached: there are few distinct names)."""
    found = _xml_names.get(name)
    if found is None:
        found = _XML_NAME_BAD.sub("_", str(name)) or "_"
        if not _XML_NAME_START.match(found) or found.lower().startswith("xml"):
            found = "_" + found
        if len(_xml_names) < 10_000:
            _xml_names[name] = found
    return found


# --- Scrapy exporters, adapted ----------------------------------------------------------------


class _CrPreservingXMLGenerator(XMLGenerator):
    """Writes carriage returns as ``&#13;``: XML parsers turn a literal CR into LF."""

    def characters(self, content):
        if content:
            self._finish_pending_start_element()
            self._write(xml_escape(content, {"\r": "&#13;"}))


class XmlExporter(XmlItemExporter):
    """Scrapy's XML exporter, made safe for any scraped text (see the module docstring)."""

    def __init__(self, file, **kwargs):
        super().__init__(file, **kwargs)
        self.xg = _CrPreservingXMLGenerator(self.stream, encoding=self.encoding)

    def serialize_field(self, field, name, value):
        return _xml_value(value)

    def _export_xml_field(self, name, serialized_value, depth):
        super()._export_xml_field(_xml_name(name), serialized_value, depth)


class CsvExporter(CsvItemExporter):
    """Scrapy's CSV exporter with one column per field and cells made by :func:`_cell_text`."""

    def serialize_field(self, field, name, value):
        return _cell_text(value)

    def start_exporting(self):
        # The header row comes first even when there is no item at all (Scrapy waits for one).
        if self._headers_not_written and self.fields_to_export:
            self._headers_not_written = False
            self._write_headers_and_set_fields_to_export({})


def _make_exporter(fmt: str, buffer: io.BytesIO, crawl: Crawl, max_id: int):
    if fmt == "jsonl":
        return JsonLinesItemExporter(buffer, encoding="utf-8")
    if fmt == "json":
        return JsonItemExporter(buffer, encoding="utf-8")
    if fmt == "xml":
        return XmlExporter(buffer, encoding="utf-8")
    if fmt == "csv":
        # export_empty_fields: an item missing a field still gets its (empty) cell. Field names
        # come from scraped data too (a custom spider's keys): the header row, Scrapy's mapping of
        # field -> column title, is neutralised like the cells.
        headers = {name: neutralise_formula(name) for name in columns(crawl, max_id)}
        return CsvExporter(buffer, encoding="utf-8", fields_to_export=headers, export_empty_fields=True)
    raise ValueError(fmt)


def _drain(buffer: io.BytesIO) -> bytes:
    data = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return data


def iter_export(crawl: Crawl, fmt: str, max_id: int, only: str | None = None) -> Iterator[bytes]:
    """The export of a text format as byte parts, one per chunk of items."""
    buffer = io.BytesIO()
    exporter = _make_exporter(fmt, buffer, crawl, max_id)
    exporter.start_exporting()
    for chunk in _iter_data(crawl, max_id, only):
        for data in chunk:
            exporter.export_item(data)
        yield _drain(buffer)
    exporter.finish_exporting()
    tail = _drain(buffer)
    if tail:
        yield tail


# --- Excel ------------------------------------------------------------------------------------

XLSX_MAX_ROWS = 1_048_576
XLSX_MAX_CHARS = 32_767
_EXACT_FLOAT_INT = 2 ** 53


def write_xlsx(crawl: Crawl, max_id: int, file, only: str | None = None) -> None:
    """Write the snapshot (limited by the filter ``only``, see :data:`ONLY`) as an .xlsx workbook
    into ``file`` (XlsxWriter, constant_memory mode)."""
    import xlsxwriter

    names = columns(crawl, max_id)
    workbook = xlsxwriter.Workbook(file, {
        "constant_memory": True,  # rows go to a temp file as written; they must come in order
        "tmpdir": tempfile.gettempdir(),
        # Scraped text is text: never a formula, a number or a hyperlink by guesswork.
        "strings_to_formulas": False,
        "strings_to_numbers": False,
        "strings_to_urls": False,
    })
    bold = workbook.add_format({"bold": True})
    sheet, row, sheets = None, XLSX_MAX_ROWS, 0

    for chunk in _iter_data(crawl, max_id, only or None):
        for data in chunk:
            if row >= XLSX_MAX_ROWS:
                sheets += 1
                sheet = workbook.add_worksheet("items" if sheets == 1 else f"items {sheets}")
                sheet.freeze_panes(1, 0)
                _write_xlsx_header(sheet, names, bold)
                row = 1
            for col, name in enumerate(names):
                _write_xlsx_cell(sheet, row, col, data.get(name))
            row += 1
    if sheet is None:  # no items: still a valid workbook with its header
        sheet = workbook.add_worksheet("items")
        _write_xlsx_header(sheet, names, bold)
    workbook.close()


def _write_xlsx_header(sheet, names: list[str], bold) -> None:
    """Column titles are field names, which scraped data chooses: neutralised like the cells."""
    for col, name in enumerate(names):
        sheet.write_string(0, col, neutralise_formula(name)[:XLSX_MAX_CHARS], bold)


def _write_xlsx_cell(sheet, row: int, col: int, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool):
        sheet.write_boolean(row, col, value)
    elif isinstance(value, int) and abs(value) < _EXACT_FLOAT_INT:
        sheet.write_number(row, col, value)
    elif isinstance(value, float) and math.isfinite(value):
        sheet.write_number(row, col, value)
    else:
        text = value if isinstance(value, str) else (
            str(value) if isinstance(value, (int, float)) else json.dumps(value, ensure_ascii=False))
        sheet.write_string(row, col, neutralise_formula(text)[:XLSX_MAX_CHARS])


# --- HTTP -------------------------------------------------------------------------------------


class _PartByPartUnderASGI:
    """Serve a synchronous iterator under ASGI one part at a time, in the request's thread.

    Django's default (``sync_to_async(list)``) would hold the whole download in memory.
    """

    async def __aiter__(self):
        if self.is_async:
            async for part in super().__aiter__():
                yield part
            return
        parts = self.streaming_content
        step = sync_to_async(next, thread_sensitive=True)
        done = object()
        while (part := await step(parts, done)) is not done:
            yield part


class ExportResponse(_PartByPartUnderASGI, StreamingHttpResponse):
    pass


class ExportFileResponse(_PartByPartUnderASGI, FileResponse):
    block_size = FILE_BLOCK_SIZE


def download_headers(response, crawl: Crawl, fmt: str, max_id: int, only: str | None = None):
    response["Content-Disposition"] = content_disposition_header(True, filename(crawl, fmt, only))
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"  # nginx: pass parts on as they come
    response["X-Crawlsite-Snapshot"] = str(max_id)  # the last item id included
    return response


def unknown_format_response(fmt: Any) -> JsonResponse:
    valid = ", ".join(FORMATS)
    return JsonResponse(
        {"detail": f"Unknown export format {fmt!r}. Valid formats: {valid}.", "formats": list(FORMATS)},
        status=400,
    )


def unknown_filter_response(only: Any) -> JsonResponse | None:
    """A 400 naming the valid values of ``only`` (None when ``only`` is one of them, or empty)."""
    if only in (None, "") or only in ONLY:
        return None
    detail = f"Unknown export filter only={str(only)[:40]!r}. Valid filters: {', '.join(ONLY)}."
    return JsonResponse({"detail": detail, "errors": {"only": [detail]}, "filters": list(ONLY)}, status=400)


def export_response(crawl: Crawl, fmt: str, only: str | None = None):
    """The streamed download of ``crawl``'s items in ``fmt`` (a consistent snapshot), or a 400.
    ``only`` limits it to invalid items or to items new since the previous finished run.

    The caller has already checked that the user may see ``crawl``, and handles ``xlsx`` itself
    (built by a job: :mod:`dashboard.xlsx_builds`).
    """
    if fmt not in FORMATS:
        return unknown_format_response(fmt)
    refused = unknown_filter_response(only)
    if refused is not None:
        return refused
    if fmt == "xlsx":
        raise ValueError("xlsx exports are built by a job on the tasks queue (dashboard.xlsx_builds)")
    max_id = snapshot_max_id(crawl)
    response = ExportResponse(iter_export(crawl, fmt, max_id, only or None), content_type=FORMATS[fmt][1])
    return download_headers(response, crawl, fmt, max_id, only)


# --- cursor pages for the API -----------------------------------------------------------------


def items_page(crawl: Crawl, after: int | None = None, limit: int = 100, invalid: bool = False) -> dict[str, Any]:
    """Up to ``limit`` items with an id above ``after``, oldest first; ``next`` is the cursor.

    ``next`` is None on the last page. ``limit`` is clamped to 1..1000. ``invalid``: only the
    items that failed validation.
    """
    limit = max(1, min(int(limit or 100), ITEMS_PAGE_MAX))
    rows = Item.objects.filter(crawl=crawl)
    if invalid:
        rows = rows.filter(invalid=True)
    if after:
        rows = rows.filter(id__gt=int(after))
    rows = list(rows.order_by("id").values("id", "key", "url", "data", "worker", "created_at", "invalid",
                                           "errors")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": rows, "next": rows[-1]["id"] if more else None}
