import threading

from scrapy import Request
from scrapy.utils.request import RequestFingerprinter

from crawler import keys
from crawler.dupefilter import RedisDupeFilter, fingerprint_parts
from crawler.queue import request_to_json
from helpers import fill_seen, seen_bytes

FP = RequestFingerprinter()


def _entries(urls):
    return [(FP.fingerprint(Request(u)), 0, request_to_json(Request(u))) for u in urls]


def test_dedupe_enqueues_each_url_once_in_a_batch_and_across_batches(r, code):
    df = RedisDupeFilter(r, code)
    assert df.enqueue(_entries(["http://e.com/a", "http://e.com/b", "http://e.com/a"])) == [True, True, False]
    other = RedisDupeFilter(r, code)  # another worker: no local cache
    assert other.enqueue(_entries(["http://e.com/b", "http://e.com/c"])) == [False, True]
    assert r.zcard(keys.queue(code)) == 3
    stats = r.hgetall(keys.stats(code))
    assert (stats["seen"], stats["enqueued"], stats["duplicates"]) == ("3", "3", "2")


def test_dedupe_is_atomic_under_concurrent_workers(r, code):
    urls = [f"http://e.com/{i}" for i in range(300)]
    results = []

    def work():
        df = RedisDupeFilter(r, code)
        for i in range(0, 300, 25):
            results.extend(df.enqueue(_entries(urls[i:i + 25])))

    threads = [threading.Thread(target=work) for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sum(results) == 300 and r.zcard(keys.queue(code)) == 300
    assert r.hget(keys.stats(code), "seen") == "300"


def test_local_cache_answers_known_fingerprints_without_redis(r, code):
    df = RedisDupeFilter(r, code)
    fp = FP.fingerprint(Request("http://e.com/a"))
    df.enqueue(_entries(["http://e.com/a"]))
    assert df.known(fp)
    df.count_duplicate()
    df.enqueue(_entries(["http://e.com/b"]))  # the local duplicate is reported with this batch
    assert r.hget(keys.stats(code), "duplicates") == "1"


def test_bucket_count_is_fixed_by_the_first_worker(r, code):
    assert RedisDupeFilter(r, code, buckets=64).buckets == 64
    assert RedisDupeFilter(r, code, buckets=4096).buckets == 64


def test_fingerprints_are_signed_64_bit_ints():
    bucket, value = fingerprint_parts(b"\xff" * 20, 4096)
    assert value == -1 and 0 <= bucket < 4096


def test_dedupe_memory_per_seen_url(r, code):
    # 200,000 URLs over 820 buckets: the same bucket fill (~244) as 1,000,000 URLs over the
    # default 4096 buckets, so bytes per URL are the same; the full 1M run is in bench/.
    n, buckets = 200_000, 820
    fill_seen(r, code, n, buckets)
    total, encodings = seen_bytes(r, code, buckets)
    per_url = total / n
    print(f"\ndedupe memory: {per_url:.1f} bytes per seen URL ({encodings})")
    assert encodings == {"intset": buckets}
    assert per_url <= 45
