"""Crawl-wide dedupe and enqueue in one atomic Lua step, with a worker-local cache.

Storage (memory target: <= 45 bytes per seen URL at 1,000,000 URLs):
each request fingerprint (Scrapy's SHA1, 20 bytes) becomes a *64-bit signed integer* (its first
8 bytes) stored in one of ``B`` bucket SETs ``cs:{CODE}:seen:<b>``, the bucket chosen by the next
4 bytes of the fingerprint (``b = int(fp[8:12]) % B``). Redis stores a set of integers as an
*intset* (8 bytes per 64-bit member, no per-entry pointers) while it holds at most
``set-max-intset-entries`` (512 by default) members, so ``B`` is chosen so that buckets stay
under it: with the default B = 4096, 1,000,000 URLs average 244 per bucket (the fullest about
320), and up to about 1.8 million URLs stay intset-encoded; a larger crawl sets
``CRAWLSITE_SEEN_BUCKETS`` higher. Measured: about 10 bytes per URL (see the test
``test_dedupe_memory_per_seen_url``), against about 90 for a SET of 40-char hex digests.

The bucket count is fixed per crawl: the first worker records it in ``stats['seen_buckets']``
and every worker uses the recorded value.

Collision probability accepted: a fingerprint is identified by 64 stored bits plus the
log2(B) = 12 bits that choose its bucket, i.e. 76 bits. Two distinct URLs collide (the second
would wrongly count as a duplicate) with probability about n**2 / 2**77: 6.6e-12 at one million
URLs, 6.6e-8 at 100 million. Accepted.

The enqueue script (``scripts.ENQUEUE``) takes a batch of requests: for each, SADD of its
fingerprint (skipped for ``dont_filter`` requests), and when it is new, ZADD to the queue with the
next sequence number, counting ``stats.seen``, ``stats.enqueued`` and ``stats.duplicates`` in the same step.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterable

from . import keys, scripts
from .politeness import slot_of_json

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

DEFAULT_BUCKETS = 4096
DEFAULT_CACHE_SIZE = 200_000

def fingerprint_parts(fp: bytes, buckets: int) -> tuple[int, int]:
    """``(bucket, value)`` of a 20-byte fingerprint: value is its first 8 bytes as a signed int64."""
    value = int.from_bytes(fp[:8], "big", signed=True)
    bucket = int.from_bytes(fp[8:12], "big") % buckets
    return bucket, value


class RedisDupeFilter:
    """Atomic check-and-enqueue of request batches for one crawl."""

    def __init__(self, redis: redis.Redis, code: str, buckets: int = DEFAULT_BUCKETS,
                 cache_size: int = DEFAULT_CACHE_SIZE):
        self.redis = redis
        self.code = keys.validate_code(code)
        self.queue_key = keys.queue(code)
        self.stats_key = keys.stats(code)
        # the first worker fixes the bucket count of the crawl; later ones adopt it
        redis.hsetnx(self.stats_key, "seen_buckets", int(buckets))
        self.buckets = int(redis.hget(self.stats_key, "seen_buckets"))
        self.cache_size = cache_size
        # fingerprints already seen crawl-wide, by their first 12 bytes: the bytes that make the
        # stored value (0-7) and choose the bucket (8-11), so a local hit is a Redis duplicate too
        self._known: set[bytes] = set()
        self.local_duplicates = 0
        self._unreported = 0

    def _remember(self, key: bytes) -> None:
        if len(self._known) >= self.cache_size:
            self._known.clear()  # cheap and bounded; Redis stays the source of truth
        self._known.add(key)

    def known(self, fp: bytes) -> bool:
        """True if this worker already knows the fingerprint is seen (no Redis round trip)."""
        return fp[:12] in self._known

    def count_duplicate(self) -> None:
        """A duplicate found by the caller in the local cache: reported with the next batch."""
        self.local_duplicates += 1
        self._unreported += 1

    def enqueue(self, entries: Iterable[tuple[bytes | None, int, str]]) -> list[bool]:
        """Enqueue ``(fingerprint or None for dont_filter, priority, request JSON)`` entries.

        Returns one flag per entry (True = enqueued, False = duplicate).
        """
        call, local = self.enqueue_call(entries)
        if call is None:
            return local
        flags = iter(scripts.run(self.redis, [call])[0])
        return [bool(int(next(flags))) if flag is None else flag for flag in local]

    def enqueue_call(self, entries: Iterable[tuple[bytes | None, int, str]]
                     ) -> tuple[scripts.Call | None, list[bool | None]]:
        """The script call enqueueing ``entries`` (None if the local cache answered for all of
        them), and one flag per entry: False = known duplicate, None = Redis decides (the call
        returns one flag, 1 = enqueued, per such entry, in order)."""
        args: list = [0, keys.slot_queue_prefix(self.code)]
        bucket_keys: dict[int, int] = {}
        kv: list[str] = [self.queue_key, self.stats_key, keys.slots(self.code)]
        local: list[bool | None] = []
        for fp, priority, data in entries:
            if fp is None:
                args += [0, 0, int(priority), data, slot_of_json(data)]
                local.append(None)
                continue
            ck = fp[:12]
            if ck in self._known:
                args[0] += 1
                local.append(False)
                continue
            bucket, value = fingerprint_parts(fp, self.buckets)
            if bucket not in bucket_keys:
                kv.append(keys.seen_bucket(self.code, bucket))
                bucket_keys[bucket] = len(kv)
            args += [bucket_keys[bucket], value, int(priority), data, slot_of_json(data)]
            local.append(None)
            self._remember(ck)  # whatever Redis answers, it is seen from now on
        self.local_duplicates += args[0]
        if len(args) == 2:  # nothing for Redis: report local duplicates with the next batch
            self._unreported += args[0]
            return None, local
        args[0] += self._unreported
        self._unreported = 0
        return scripts.ENQUEUE.call(kv, args), local
