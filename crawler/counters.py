"""The names of a crawl's counters, defined once for the crawler and the dashboard alike.

``COUNTERS`` are the numbers every view of a crawl shows (live update, snapshot, overview row, the
API, final stats); ``RATES`` are measured by the conductor; ``SERIES`` is the column order of one
point of the time series (``t`` first). The crawler writes the raw counters in ``cs:{CODE}:stats``
(``in_flight`` is its ``leased`` field); :func:`crawler.state.read_counters` maps them to these.
"""

COUNTERS = ("queued", "seen", "pages", "items", "errors", "items_too_large", "in_flight")
RATES = ("pages_per_s", "items_per_s")
SERIES = ("t", "pages", "items", "queued", "seen", "errors", "in_flight") + RATES

# The raw field of the stats hash behind each counter kept there (``queued`` is the queue's size).
STATS_FIELD = {"seen": "seen", "pages": "pages", "items": "items", "errors": "errors",
               "items_too_large": "items_too_large", "in_flight": "leased"}
# Items a worker dropped for being over CRAWLSITE_MAX_ITEM_BYTES (counted, logged, never stored).
ITEMS_TOO_LARGE = "items_too_large"

# Worker states after which a worker does no more work (``gone``: written by a force stop).
DONE_STATES = ("finished", "failed", "dead", "gone")


def zeros() -> dict[str, int]:
    return {name: 0 for name in COUNTERS}


def no_rates() -> dict[str, float]:
    return {name: 0.0 for name in RATES}
