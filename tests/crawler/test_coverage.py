"""Field coverage: counted by the item script in the write of each batch (docs/alerts.md)."""

import json

from crawler import keys, scripts, state
from crawler.pipelines import filled_fields, is_filled
from test_batching import _pipeline, _process, run


def test_what_counts_as_a_filled_value():
    assert [is_filled(v) for v in ("x", 0, False, ["", "a"], {"k": 1})] == [True] * 5
    assert [is_filled(v) for v in (None, "", "  \n", [], ["", None], {})] == [False] * 6
    assert json.loads(filled_fields({"url": "u", "price": None, "tags": []})) == {"url": 1, "price": 0, "tags": 0}


def test_items_written_count_their_filled_fields_and_dropped_ones_do_not(r, code):
    pipeline = _pipeline(r, code, "w1", max_items=3)
    items = [{"url": f"http://x/{n}", "price": str(n) if n % 2 else None} for n in range(5)]
    results = run(_process(pipeline, items))
    assert sum(1 for x in results if isinstance(x, dict)) == 3  # two over max_items
    counters = state.read_counters(r, code)
    assert counters["items"] == 3
    assert counters["coverage"] == {"price": 33.3, "url": 100.0}


def test_a_crawl_counts_at_most_fields_max_distinct_fields(r, code):
    flags = json.dumps({f"f{n}": 1 for n in range(scripts.FIELDS_MAX + 50)})
    scripts.run(r, [scripts.ADD_ITEMS.call([keys.stats(code), keys.items(code), keys.fields(code)],
                                           [0, "w1", "k1", "http://x/", "{}", flags])])
    assert r.hlen(keys.fields(code)) == scripts.FIELDS_MAX
    assert r.xlen(keys.items(code)) == 1
