"""Moving items from a crawl's Redis stream to the database: insert idempotently, then ack.

Items carry a stable key (request fingerprint + index), so an entry read twice (a conductor died
between the insert and the ack) is stored once. The conductor calls :func:`drain` every tick; a
crawl that ends or is cancelled is drained to the last item with :func:`drain_all`.
"""

import json

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from redis.exceptions import ResponseError

from crawler import keys
from crawler import state as crawl_state
from dashboard.models import Item

CONSUMER = "conductor"


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
    Item.objects.bulk_create(rows, ignore_conflicts=True, batch_size=500)
    ids = [message_id for message_id, _fields in messages]
    pipe = redis.pipeline(transaction=False)
    pipe.xack(stream, keys.ITEMS_GROUP, *ids)
    pipe.xdel(stream, *ids)
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
    rows, acks = [], {}
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
            rows.append(item)
            found[crawl.code].append(stored)
    if rows:
        with transaction.atomic():
            Item.objects.bulk_create(rows, ignore_conflicts=True, batch_size=500)
    if acks:
        pipe = redis.pipeline(transaction=False)
        for code, ids in acks.items():
            pipe.xack(keys.items(code), keys.ITEMS_GROUP, *ids)
            pipe.xdel(keys.items(code), *ids)
        pipe.execute()
    return found


def _rows(crawl, messages, now):
    for message_id, fields in messages:
        if not fields:
            continue  # deleted entry
        try:
            data = without_lone_surrogates(json.loads(fields.get("data", "{}")))
        except ValueError:
            data = {"_raw": fields.get("data", "")}
        item = Item(crawl=crawl, key=fields.get("key", message_id)[:100], url=fields.get("url", ""),
                    data=data, worker=fields.get("worker", "")[:64], created_at=now)
        yield item, {"id": message_id, "key": item.key, "url": item.url, "worker": item.worker, "data": data}


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
