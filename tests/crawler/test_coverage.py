"""Field coverage: counted by the item script in the write of each batch (docs/alerts.md)."""

import json

from crawler import keys, scripts, state
from crawler.pipelines import coverage_args, filled_fields, is_filled
from test_batching import _pipeline, _process, run


def test_what_counts_as_a_filled_value():
    assert [is_filled(v) for v in ("x", 0, False, ["", "a"], {"k": 1})] == [True] * 5
    assert [is_filled(v) for v in (None, "", "  \n", [], ["", None], {})] == [False] * 6
    assert filled_fields({"url": "u", "price": None, "tags": []}) == {"url": True, "price": False, "tags": False}
    names, flags = coverage_args([{"url": True, "price": False}, {"url": True, "price": True, "upc": True}])
    assert (json.loads(names), flags) == (["url", "price", "upc"], ["1", "111"])


def test_items_written_count_their_filled_fields_and_dropped_ones_do_not(r, code):
    pipeline = _pipeline(r, code, "w1", max_items=3)
    items = [{"url": f"http://x/{n}", "price": str(n) if n % 2 else None} for n in range(5)]
    results = run(_process(pipeline, items))
    assert sum(1 for x in results if isinstance(x, dict)) == 3  # two over max_items
    counters = state.read_counters(r, code)
    assert counters["items"] == 3
    assert counters["coverage"] == {"price": 33.3, "url": 100.0}


def test_a_crawl_counts_at_most_fields_max_distinct_fields(r, code):
    key_names = [keys.stats(code), keys.items(code), keys.fields(code)]
    names = json.dumps([f"f{n}" for n in range(150)])
    scripts.run(r, [scripts.ADD_ITEMS.call(key_names, [0, "w1", names, "k1", "http://x/", "{}", "1" * 150])])
    names = json.dumps([f"g{n}" for n in range(150)])  # a second batch with other fields
    scripts.run(r, [scripts.ADD_ITEMS.call(key_names, [0, "w1", names, "k2", "http://x/", "{}", "1" * 150])])
    assert r.hlen(keys.fields(code)) == scripts.FIELDS_MAX
    assert r.xlen(keys.items(code)) == 2
    assert len(json.loads(coverage_args([{f"h{n}": True for n in range(300)}])[0])) == scripts.FIELDS_MAX
