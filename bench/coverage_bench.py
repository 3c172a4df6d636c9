"""Field coverage benchmark (issue 15): the cost of counting coverage in the item write.

Workers write items in batches with one Lua call (``scripts.ADD_ITEMS``); since issue 15 the same
call also counts each item's non-empty fields. This writes the same items, in the same batches, to
an embedded redis-server three ways per round, alternating over several rounds: with the item
script before issue 15 (the baseline, kept below as it was), with today's script and no field
(nothing to count), and with today's script counting coverage. The time includes building the
arguments (the flags of each item are computed beforehand, as the pipeline does when it buffers).

    .venv/bin/python -m bench.coverage_bench [--items 20000] [--fields 8] [--rounds 3]

Prints a Markdown section and writes it into bench/RESULTS.md under "## Field coverage (issue 15)".
"""

import argparse
import json
import os
import platform
import tempfile
import time

from bench.results import write_section

SECTION = "## Field coverage (issue 15)"
BATCH = 100
# The item script as it was before coverage (commit 1dabf93): the baseline.
BEFORE = """
local max_items = tonumber(ARGV[1])
local room = 0
if max_items > 0 then
  room = max_items - tonumber(redis.call('HGET', KEYS[1], 'items') or '0')
end
local out, added, dropped = {}, 0, 0
for i = 3, #ARGV, 3 do
  if max_items > 0 and added >= room then
    dropped = dropped + 1
    out[#out + 1] = 0
  else
    redis.call('XADD', KEYS[2], '*', 'key', ARGV[i], 'url', ARGV[i + 1], 'worker', ARGV[2], 'data', ARGV[i + 2])
    added = added + 1
    out[#out + 1] = 1
  end
end
if added > 0 then redis.call('HINCRBY', KEYS[1], 'items', added) end
if dropped > 0 then
  redis.call('HSET', KEYS[1], 'limit:max_items', '1')
  redis.call('HINCRBY', KEYS[1], 'items_dropped', dropped)
end
return out
"""


def write(redis, code, items, flags, before=None):
    """Items/s writing ``items`` with today's script (``flags`` per item), or with ``before``
    (the old script, no flags) when given."""
    from crawler import keys, scripts

    from crawler.pipelines import coverage_args

    key_names = [keys.stats(code), keys.items(code), keys.fields(code)]
    started = time.perf_counter()
    for start in range(0, len(items), BATCH):
        names, strings = coverage_args(flags[start:start + BATCH])  # as the pipeline does per batch
        args = [0, "w1"] + ([] if before else [names])
        for n, (data, flag) in enumerate(zip(items[start:start + BATCH], strings)):
            args += [f"k{start + n}", data["url"], json.dumps(data)] + ([] if before else [flag])
        script = before or scripts.ADD_ITEMS  # the same call path (one pipelined EVALSHA) for both
        scripts.run(redis, [script.call(key_names[:2] if before else key_names, args)])
    return len(items) / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--fields", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from crawler import scripts
    from crawler.pipelines import filled_fields
    from launcher.redis import EmbeddedRedis
    import redis as redis_lib

    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(os.path.join(tmp, "redis")).start()
        try:
            redis = redis_lib.Redis.from_url(server.url, decode_responses=True)
            items = [{"url": f"http://shop.example/p/{n}",
                      **{f"field{f}": (f"value {n} {f}" if (n + f) % 3 else None) for f in range(args.fields)}}
                     for n in range(args.items)]
            counted = [filled_fields(i) for i in items]
            empty = [{}] * len(items)
            before = scripts.Script(BEFORE)
            old, with_cov, without = [], [], []
            for r in range(args.rounds):
                old.append(write(redis, f"old{r}", items, empty, before=before))
                without.append(write(redis, f"base{r}", items, empty))
                with_cov.append(write(redis, f"cov{r}", items, counted))
                redis.flushdb()
        finally:
            server.stop()
    best_old, best_with, best_without = max(old), max(with_cov), max(without)
    text = (
        f"{SECTION}\n\n"
        f"{args.items} items of {args.fields + 1} fields written in batches of {BATCH} by the item script "
        f"(one EVALSHA per batch), best of {args.rounds} rounds, on {platform.machine()} "
        f"({os.cpu_count()} CPUs, Python {platform.python_version()}).\n\n"
        "| | items/s | ratio to the baseline |\n|---|---|---|\n"
        f"| item script before issue 15 (baseline) | {best_old:,.0f} | 1.00 |\n"
        f"| today's script, no field to count | {best_without:,.0f} | {best_without / best_old:.2f} |\n"
        f"| today's script, coverage counted | {best_with:,.0f} | **{best_with / best_old:.2f}** |\n\n"
        "Each item carries a string of 0/1 flags in the order of the batch's field names; the script "
        "sums them and writes one HINCRBY per distinct field per batch. A crawl "
        "writes items far slower than this (pages are fetched and parsed first), so the count is not "
        "what limits a worker.\n"
    )
    print(text)
    write_section(SECTION, text)


if __name__ == "__main__":
    main()
