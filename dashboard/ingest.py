"""Moving items from a crawl's Redis stream to the database: insert idempotently, then ack.

Items carry a stable key (request fingerprint + index), so an entry read twice (a conductor died
between the insert and the ack) is stored once. The conductor calls :func:`drain` every tick; a
crawl that ends or is cancelled is drained to the last item with :func:`drain_all`.

On the way in, each item is checked against the crawl's ``validation`` (invalid items are stored
with their errors) and, when the definition has a ``unique_key``, a later item with the same key
replaces the earlier one (a unique constraint holds it across batches). The live counters
``invalid`` and ``replaced`` are kept in the crawl's stats hash.
"""

import hashlib
import json

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from redis.exceptions import ResponseError

from crawler import keys
from crawler import state as crawl_state
from crawler import validation
from dashboard.models import Item

CONSUMER = "conductor"
# Fields of the crawl's stats hash kept by the ingest (the crawler writes the others).
INVALID = "invalid"
REPLACED = "replaced"
_checks = {}  # crawl code -> (ItemValidator, unique key fields): definitions are frozen at launch


def drain(redis, crawl, batch=None):
    """Store up to ``batch`` items of ``crawl``'s stream; return them as dicts
    ``{id, key, url, worker, data}`` (oldest first) for the live update."""
    return _drain(redis, crawl, batch)[1]


def _drain(redis, crawl, batch):
    stream = keys.items(crawl.code)
    batch = batch or settings.CONDUCTOR_ITEM_BATCH
    try:
        # Entries read before but never acked (a conductor died mid-way) come first.
        entries = redis.xreadgroup(keys.ITEMS_GROUP, CONSUMER, {stream: "0"}, count=batch)
        if not entries or not entries[0][1]:
            entries = redis.xreadgroup(keys.ITEMS_GROUP, CONSUMER, {stream: ">"}, count=batch)
    except ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        crawl_state.ensure_items_group(redis, crawl.code)
        return 0, []
    if not entries or not entries[0][1]:
        return 0, []
    messages = entries[0][1]
    rows, stored = [], []
    for item, message in _rows(crawl, messages, timezone.now()):
        rows.append(item)
        stored.append(message)
    with transaction.atomic():
        inserts, counts = upsert(crawl, rows)
        Item.objects.bulk_create(inserts, ignore_conflicts=True, batch_size=500)
    ids = [message_id for message_id, _fields in messages]
    pipe = redis.pipeline(transaction=False)
    pipe.xack(stream, keys.ITEMS_GROUP, *ids)
    pipe.xdel(stream, *ids)
    _count(pipe, crawl.code, counts)
    pipe.execute()
    return len(messages), stored


def drain_many(redis, crawls, batch=None, recover=None):
    """:func:`drain` for many crawls at once: one round trip to read every stream, one database
    transaction for every crawl's items, one round trip to ack them. Returns ``{code: items}``.

    Entries read before but never acked (a conductor died mid-way) are read again only for the
    codes in ``recover`` (default: every crawl): a conductor checks each crawl once, on first sight;
    after that, everything it reads it acks in the same tick.
    """
    batch = batch or settings.CONDUCTOR_ITEM_BATCH
    found = {crawl.code: [] for crawl in crawls}
    if not crawls:
        return found
    pipe = redis.pipeline(transaction=False)
    reads = []
    for crawl in crawls:
        stream = keys.items(crawl.code)
        count = 1
        if recover is None or crawl.code in recover:
            pipe.xreadgroup(keys.ITEMS_GROUP, CONSUMER, {stream: "0"}, count=batch)
            count = 2
        pipe.xreadgroup(keys.ITEMS_GROUP, CONSUMER, {stream: ">"}, count=batch)
        reads.append(count)
    replies = pipe.execute(raise_on_error=False)
    now = timezone.now()
    rows, acks = {}, {}
    start = 0
    for crawl, count in zip(crawls, reads):
        messages = []
        part, start = replies[start:start + count], start + count
        for reply in part:
            if isinstance(reply, ResponseError):
                if "NOGROUP" not in str(reply):
                    raise reply
                crawl_state.ensure_items_group(redis, crawl.code)
            elif isinstance(reply, Exception):
                raise reply
            elif reply and reply[0][1]:
                messages.extend(reply[0][1])
        if not messages:
            continue
        acks[crawl.code] = [message_id for message_id, _fields in messages]
        for item, stored in _rows(crawl, messages, now):
            rows.setdefault(crawl.code, (crawl, []))[1].append(item)
            found[crawl.code].append(stored)
    counts, inserts = {}, []
    if rows:
        with transaction.atomic():
            for code, (crawl, items) in rows.items():
                new, counts[code] = upsert(crawl, items)
                inserts.extend(new)
            Item.objects.bulk_create(inserts, ignore_conflicts=True, batch_size=500)
    if acks:
        pipe = redis.pipeline(transaction=False)
        for code, ids in acks.items():
            pipe.xack(keys.items(code), keys.ITEMS_GROUP, *ids)
            pipe.xdel(keys.items(code), *ids)
            _count(pipe, code, counts.get(code))
        pipe.execute()
    return found


def checks(crawl):
    """The crawl's item validator and unique key fields, built once per crawl."""
    found = _checks.get(crawl.code)
    if found is None:
        if len(_checks) > 1000:
            _checks.clear()
        definition = crawl.definition or {}
        found = _checks[crawl.code] = (validation.ItemValidator(definition.get("validation")),
                                       list(definition.get("unique_key") or []))
    return found


def upsert(crawl, rows):
    """With a unique key, a later item replaces the stored one with the same key (updated here).
    Returns the rows left to insert (idempotently, by the caller: one insert for every crawl of
    a tick) and ``(invalid, replaced)`` for the live counters."""
    keyed = [row for row in rows if row.unique_key]
    plain = [row for row in rows if not row.unique_key]
    replaced = 0
    if keyed:
        latest = {}
        for row in keyed:  # within the batch, the later item wins
            earlier = latest.get(row.unique_key)
            if earlier is not None and earlier.key != row.key:
                replaced += 1
            latest[row.unique_key] = row
        stored = {u: (pk, key) for u, pk, key in Item.objects.filter(crawl=crawl, unique_key__in=list(latest))
                  .values_list("unique_key", "pk", "key")}
        updates = []
        for unique, row in latest.items():
            if unique not in stored:
                plain.append(row)
            elif stored[unique][1] != row.key:  # not the same entry read twice
                row.pk = stored[unique][0]
                updates.append(row)
        if updates:
            Item.objects.bulk_update(updates, ["key", "url", "data", "worker", "created_at", "invalid", "errors"],
                                     batch_size=500)
            replaced += len(updates)
    return plain, (sum(1 for row in rows if row.invalid), replaced)


def _count(pipe, code, counts):
    invalid, replaced = counts or (0, 0)
    if invalid:
        pipe.hincrby(keys.stats(code), INVALID, invalid)
    if replaced:
        pipe.hincrby(keys.stats(code), REPLACED, replaced)


def _rows(crawl, messages, now):
    validator, key_fields = checks(crawl)
    for message_id, fields in messages:
        if not fields:
            continue  # deleted entry
        try:
            data = without_lone_surrogates(json.loads(fields.get("data", "{}")))
        except ValueError:
            data = {"_raw": fields.get("data", "")}
        url = fields.get("url", "")
        errors = validator.errors(data) if validator.active else []
        unique = validation.unique_key(data, key_fields)
        item = Item(crawl=crawl, key=fields.get("key", message_id)[:100], url=url, data=data,
                    worker=fields.get("worker", "")[:64], created_at=now, invalid=bool(errors), errors=errors,
                    unique_key=unique, ident=unique or url_ident(url))
        yield item, {"id": message_id, "key": item.key, "url": item.url, "worker": item.worker, "data": data,
                     "errors": errors}


def url_ident(url):
    """An item's identity across runs when its project has no unique key: its URL."""
    return hashlib.sha256(url.encode("utf-8", "replace")).hexdigest()


def drain_all(redis, crawl):
    """Store every item left in the stream; return how many entries were stored."""
    total = 0
    while True:
        read, stored = _drain(redis, crawl, None)
        if not read:
            return total
        total += len(stored)


def without_lone_surrogates(data):
    """A custom spider may scrape a lone UTF-16 surrogate (JSON can carry it as an escape); no
    UTF-8 export could then write the item. Such characters become U+FFFD before storage."""
    if isinstance(data, str):
        try:
            data.encode("utf-8")
            return data
        except UnicodeEncodeError:
            return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in data)
    if isinstance(data, dict):
        return {without_lone_surrogates(k): without_lone_surrogates(v) for k, v in data.items()}
    if isinstance(data, list):
        return [without_lone_surrogates(v) for v in data]
    return data
