"""Queries behind the item browser: keyset pages, search, columns and display cells.

Pages are keyset pages on the item id (``?after=ID`` / ``?before=ID``): each page is one indexed
range scan of ``per_page + 1`` rows plus at most one EXISTS probe, whatever the crawl's size.
Nothing counts the table; the item count shown comes from :func:`item_count` (cheap sources).

Search is bounded the same way: one request reads at most ``ITEM_SEARCH_ROWS`` items (the next
ids after the cursor, one index range), keeps the first ``per_page`` matches and hands back a
cursor to continue from. A rare word in a big crawl costs a few requests of bounded size, never a
scan of the whole crawl in one request.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection
from django.db.models import TextField
from django.db.models.functions import Cast

from dashboard.exports import definition_columns
from dashboard.models import Crawl, Item

PER_PAGE = 50
PREVIEW_CHARS = 120  # longer values are cut, with the full value in a <details>
MAX_QUERY = 200


@dataclass
class Cell:
    text: str
    preview: str = ""  # set when ``text`` is too long to show whole

    @property
    def truncated(self):
        return bool(self.preview)


@dataclass
class Row:
    id: int
    key: str
    url: str
    url_is_link: bool
    cells: list[Cell]
    errors: list[str] = field(default_factory=list)  # why the item failed validation


@dataclass
class Page:
    columns: list[str]
    rows: list[Row] = field(default_factory=list)
    next_after: int | None = None  # cursor of the next page (older -> newer), if any
    prev_before: int | None = None  # cursor of the previous page, if any
    # Searches only: items examined so far (this request and the ones before it), and whether
    # items after ``next_after`` are still to be searched.
    searched: int | None = None
    search_done: bool = True


def search_needle(q: str) -> str:
    """``q`` as it appears inside the stored JSON text of a value.

    SQLite stores Django's ``json.dumps`` (ASCII, with ``\\uXXXX`` escapes); PostgreSQL's
    ``jsonb::text`` keeps non-ASCII characters. Quotes, backslashes and control characters are
    escaped in both, so the needle is escaped the same way.
    """
    return json.dumps(q, ensure_ascii=connection.vendor != "postgresql")[1:-1]


def _filtered(crawl: Crawl, q: str, invalid: bool = False):
    rows = Item.objects.filter(crawl=crawl)
    if invalid:
        rows = rows.filter(invalid=True)
    if q:
        rows = rows.annotate(data_text=Cast("data", TextField())).filter(data_text__icontains=search_needle(q))
    return rows


def page(crawl: Crawl, *, after: int | None = None, before: int | None = None, q: str = "",
         per_page: int = PER_PAGE, searched: int = 0, invalid: bool = False) -> Page:
    """One page of items: first page, the page after id ``after`` or the page before ``before``.

    With a query ``q`` the page is a bounded search forward from ``after`` (see the module's
    docstring); ``searched`` is the number of items earlier requests of this search examined.
    ``invalid`` shows only the items that failed validation.
    """
    q = q[:MAX_QUERY]
    if q:
        return search(crawl, q, after=after, per_page=per_page, searched=searched, invalid=invalid)
    rows = _filtered(crawl, q, invalid).only("id", "url", "data", "errors")
    if before is not None:
        found = list(rows.filter(id__lt=before).order_by("-id")[: per_page + 1])
        items = list(reversed(found[:per_page]))
        has_prev = len(found) > per_page
        has_next = rows.filter(id__gte=before).exists()
        edge_prev, edge_next = before, before - 1
    else:
        found = list((rows.filter(id__gt=after) if after is not None else rows).order_by("id")[: per_page + 1])
        items = found[:per_page]
        has_next = len(found) > per_page
        has_prev = after is not None and rows.filter(id__lte=after).exists()
        edge_prev, edge_next = (after + 1 if after is not None else None), after

    cols = display_columns(crawl, items)
    result = Page(columns=cols, rows=[_row(item, cols) for item in items])
    # Cursors: around the page's first and last ids, or around the asked cursor on an empty page.
    if has_next:
        result.next_after = items[-1].id if items else edge_next
    if has_prev:
        result.prev_before = items[0].id if items else edge_prev
    return result


def search(crawl: Crawl, q: str, *, after: int | None = None, per_page: int = PER_PAGE, searched: int = 0,
           window: int | None = None, invalid: bool = False) -> Page:
    """Matches of ``q`` among at most ``window`` items after ``after`` (ITEM_SEARCH_ROWS)."""
    window = window or settings.ITEM_SEARCH_ROWS
    ids = Item.objects.filter(crawl=crawl)
    if after is not None:
        ids = ids.filter(id__gt=after)
    # The window: the next ``window`` ids (an index-only range read); one more tells if it ends.
    window_ids = list(ids.order_by("id").values_list("id", flat=True)[: window + 1])
    beyond = len(window_ids) > window
    window_ids = window_ids[:window]
    found: list[Item] = []
    if window_ids:
        matches = _filtered(crawl, q, invalid).filter(id__gte=window_ids[0], id__lte=window_ids[-1])
        found = list(matches.only("id", "url", "data", "errors").order_by("id")[: per_page + 1])
    items = found[:per_page]
    if len(found) > per_page:  # the page is full before the window's end: go on after its last row
        cursor, examined, done = items[-1].id, bisect_right(window_ids, items[-1].id), False
    else:
        cursor, examined, done = (window_ids[-1] if window_ids else after), len(window_ids), not beyond
    cols = display_columns(crawl, items)
    return Page(columns=cols, rows=[_row(item, cols) for item in items], next_after=None if done else cursor,
                searched=max(0, searched) + examined, search_done=done)


def display_columns(crawl: Crawl, items: list[Item]) -> list[str]:
    """The definition's fields, then keys seen in these items (custom spiders), without ``url``."""
    names = definition_columns(crawl.definition or {})
    known = set(names)
    for item in items:
        if isinstance(item.data, dict):
            for key in item.data:
                if key not in known:
                    known.add(key)
                    names.append(key)
    return [n for n in names if n != "url"]


def display_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _cell(value: Any) -> Cell:
    text = display_text(value)
    if len(text) > PREVIEW_CHARS:
        return Cell(text=text, preview=text[:PREVIEW_CHARS].rstrip() + "…")
    return Cell(text=text)


def is_web_url(url: str) -> bool:
    """Only http(s) URLs become links: a scraped ``javascript:`` URL stays text."""
    try:
        return urlsplit(url).scheme.lower() in ("http", "https")
    except ValueError:
        return False


def _row(item: Item, cols: list[str]) -> Row:
    data = item.data if isinstance(item.data, dict) else {"value": item.data}
    url = item.url or display_text(data.get("url"))
    return Row(id=item.id, key=item.key, url=url, url_is_link=is_web_url(url), cells=[_cell(data.get(c)) for c in cols],
               errors=[str(e) for e in (item.errors or [])][:20])


def item_count(crawl: Crawl) -> int | None:
    """Items scraped, from a cheap source: final stats of an ended crawl, else Redis's counter.

    Never COUNT(*) on the items table. None when unknown (Redis unreachable, no stats).
    """
    stats = crawl.stats or {}
    for source in (stats, stats.get("counters") or {}):
        value = source.get("items") if isinstance(source, dict) else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    if not crawl.is_active:
        return None
    try:
        from crawler import keys
        from dashboard.redis import get_redis

        value = get_redis().hget(keys.stats(crawl.code), "items")
    except Exception:  # Redis down or unreachable: the page still works without the count
        return None
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
