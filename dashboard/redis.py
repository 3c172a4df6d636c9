"""The dashboard's Redis client: one pool per process, from settings.REDIS_URL."""

from functools import lru_cache

import redis
from django.conf import settings


@lru_cache(maxsize=None)
def _client(url):
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)


def get_redis():
    return _client(settings.REDIS_URL)
