"""The Scrapy side of Crawlsite: Redis-backed scheduling, dedupe, items and control.

This package never imports Django; it talks to the dashboard only through the Redis keys
documented in ``docs/crawler.md`` and built in :mod:`crawler.keys`.
"""
