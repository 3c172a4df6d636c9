"""The Redis connection used by the crawler side."""

from __future__ import annotations

import os

import redis


class RedisNotConfigured(RuntimeError):
    pass


def get_redis(url: str | None = None, **kwargs) -> redis.Redis:
    """A client for ``url`` or the ``REDIS_URL`` environment variable (strings decoded as UTF-8)."""
    url = url or os.environ.get("REDIS_URL")
    if not url:
        raise RedisNotConfigured(
            "No Redis URL: set the REDIS_URL environment variable (e.g. redis://127.0.0.1:6379/0) "
            "or pass --redis-url / CRAWLSITE_REDIS_URL."
        )
    kwargs.setdefault("decode_responses", True)
    kwargs.setdefault("health_check_interval", 30)
    return redis.Redis.from_url(url, **kwargs)
