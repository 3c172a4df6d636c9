"""The custom spiders "installed" for the test suite, as an operator would (CRAWLSITE_SPIDERS).

Loaded with ``-p`` (pytest.ini) so the variable is set before Django reads its settings; RQ
workers and ``python -m crawler`` processes started by tests inherit it, so they too import only
these classes.
"""

import os

import pytest

TEST_SPIDERS = {
    "shop": "tests.crawler.custom_spiders.ShopSpider",
    "not-a-spider": "tests.crawler.custom_spiders.NotASpider",
    "stuck": "tests.crawler.custom_spiders.StuckSpider",
    "errback-shop": "tests.crawler.custom_spiders.ErrbackShopSpider",
}


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    os.environ["CRAWLSITE_SPIDERS"] = ",".join(f"{name}={path}" for name, path in TEST_SPIDERS.items())
