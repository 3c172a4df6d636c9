"""Every Redis key and channel name used by Crawlsite's crawler side.

All keys of one crawl share the hash tag ``{CODE}`` so a Redis Cluster keeps them in one slot
(Lua scripts touch several of them at once). A key spelled anywhere else is a bug.
"""

from __future__ import annotations

import re

PREFIX = "cs"
CODE_RE = re.compile(r"^[a-z0-9]{1,32}$")
WORKER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def validate_code(code: str) -> str:
    """Return ``code`` if it is a valid crawl code (1..32 chars of ``[a-z0-9]``), else raise ValueError."""
    if not isinstance(code, str) or not CODE_RE.match(code):
        raise ValueError(f"invalid crawl code {code!r}: expected 1-32 characters of [a-z0-9]")
    return code


def validate_worker(worker: str) -> str:
    if not isinstance(worker, str) or not WORKER_RE.match(worker):
        raise ValueError(f"invalid worker id {worker!r}: expected 1-64 characters of [A-Za-z0-9_.-]")
    return worker


def _key(code: str, *parts: str) -> str:
    return ":".join((PREFIX, "{" + validate_code(code) + "}") + parts)


def crawl_pattern(code: str) -> str:
    """A SCAN/KEYS pattern matching every key of one crawl (used to delete a cancelled crawl)."""
    return _key(code) + ":*"


def definition(code: str) -> str:
    return _key(code, "definition")


def package(code: str, digest: str) -> str:
    """STRING: the bytes of the deployed version (egg or zip) crawl ``code`` runs, by its sha256.
    Kept with the crawl's other keys, so deleting the version never takes it from the crawl."""
    if not isinstance(digest, str) or not re.match(r"^[0-9a-f]{64}$", digest):
        raise ValueError(f"invalid sha256 digest {digest!r}")
    return _key(code, "package", digest)


def control(code: str) -> str:
    """STRING: run|pause|stop|finish."""
    return _key(code, "control")


def control_channel(code: str) -> str:
    """Pub/sub channel on which every change of ``control`` is published."""
    return _key(code, "control")


def queue(code: str) -> str:
    return _key(code, "queue")


def seen(code: str) -> str:
    """Prefix of the dedupe bucket keys; see :func:`seen_bucket`."""
    return _key(code, "seen")


def seen_bucket(code: str, bucket: int) -> str:
    return _key(code, "seen", str(bucket))


def leases(code: str, worker: str) -> str:
    return _key(code, "leases", validate_worker(worker))


def leases_pattern(code: str) -> str:
    return _key(code, "leases") + ":*"


# Politeness (crawler.politeness): per-domain ("slot") limits shared by the crawl's workers.


def slots(code: str) -> str:
    """ZSET: slot (a host name) with queued requests -> the time (ms, Redis clock) it may be popped
    from next; a slot at its concurrency limit is parked far in the future until a lease is released."""
    return _key(code, "slots")


def slot_queue_prefix(code: str) -> str:
    """Prefix of the per-slot ZSETs (``slotq:HOST``): sequence number -> the request's queue score."""
    return _key(code, "slotq") + ":"


def politeness(code: str) -> str:
    """HASH: the crawl's politeness settings (limit, delay, jitter, AutoThrottle), written by its workers."""
    return _key(code, "polite")


def in_flight(code: str) -> str:
    """HASH: slot -> requests leased (popped and not finished) crawl-wide."""
    return _key(code, "inflight")


def slot_next_prefix(code: str) -> str:
    """Prefix of ``next:HOST`` STRINGs whose PX expiry is the delay left before that slot's next request."""
    return _key(code, "next") + ":"


def throttle(code: str) -> str:
    """HASH: slot -> AutoThrottle delay (ms) computed from the latencies every worker reports."""
    return _key(code, "throttle")


def slot_pops(code: str) -> str:
    """ZSET: slot -> requests popped so far (top domains, rates on the live page)."""
    return _key(code, "slotpops")


# Site-wide budget (CRAWLSITE_SITE_LIMITS): the same in-flight counts, delays and AutoThrottle
# delays shared by every crawl. These keys carry no crawl hash tag: site-wide limits need one Redis
# (not a Cluster), see docs/crawler.md.


def site_in_flight() -> str:
    return f"{PREFIX}:site:inflight"


def site_next_prefix() -> str:
    return f"{PREFIX}:site:next:"


def site_throttle() -> str:
    return f"{PREFIX}:site:throttle"


def retired(code: str) -> str:
    """SET of worker ids asked to leave (scale down): they drain, hand back leases and exit."""
    return _key(code, "retired")


def heartbeat(code: str, worker: str) -> str:
    return _key(code, "hb", validate_worker(worker))


def workers(code: str) -> str:
    return _key(code, "workers")


def stats(code: str) -> str:
    return _key(code, "stats")


def fields(code: str) -> str:
    """HASH ``field -> items with a non-empty value`` (field coverage), kept by the item script."""
    return _key(code, "fields")


def items(code: str) -> str:
    return _key(code, "items")


# Consumer group of the items stream read by the dashboard's conductor (dashboard/ingest.py).
ITEMS_GROUP = "conductor"


def log(code: str) -> str:
    return _key(code, "log")


def group(code: str) -> str:
    """Channel-layer group name of one crawl (letters, digits, ``-``, ``_``, ``.`` only)."""
    return "crawl." + validate_code(code)


OVERVIEW_GROUP = "crawls"


# Process-wide keys (not tied to one crawl).


def conductor_lock() -> str:
    """STRING with a TTL held by the active conductor; its presence means a conductor is alive."""
    return f"{PREFIX}:conductor:lock"


# Live dashboard (dashboard/live.py): written by the conductor, read by the web process.


def series(code: str) -> str:
    """LIST of JSON points ``[t, pages, items, queued, seen, errors, in_flight, pages/s, items/s]``, capped."""
    return _key(code, "series")


def live(code: str) -> str:
    """HASH: ``seq`` (last update number sent to the crawl's group), ``rates`` (JSON), ``interval``
    (seconds between two series points) and ``last_point`` (time of the newest point)."""
    return _key(code, "live")


def owner_group(owner_id: int) -> str:
    """Channel-layer group of one user's overview page: only their own crawls are sent to it."""
    return f"{OVERVIEW_GROUP}.owner.{int(owner_id)}"


RATED_ACTIONS = ("preview", "channel-test")


def rate(action: str, user_id: int, minute: int) -> str:
    """Counter of the ``action`` one user asked for in one minute (dashboard/ratelimit.py)."""
    if action not in RATED_ACTIONS:
        raise ValueError(f"unknown rated action {action!r}")
    return f"{PREFIX}:{action}:{int(user_id)}:{int(minute)}"


def preview_rate(user_id: int, minute: int) -> str:
    """Counter of the previews one user asked for in one minute (expires with the minute)."""
    return rate("preview", user_id, minute)
