"""Per-user limits on actions that cost more than a page view (previews, test notifications).

One counter per user, action and minute in Redis (``crawler.keys.rate``), so every web process
shares it; it expires with the minute after. Past the limit the action is refused until the next
minute starts (:class:`Limited`, 429 with the seconds to wait); with Redis unreachable it is
refused too (503): an unlimited fallback would defeat the limit.
"""

import time

from redis.exceptions import RedisError

from crawler import keys
from dashboard.redis import get_redis


class Limited(Exception):
    """The action is refused now: ``status`` 429 (``retry_after`` seconds) or 503, ``detail`` says why."""

    def __init__(self, detail, status=429, retry_after=None):
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.retry_after = retry_after


def take_turn(action, user, limit, what, now=None):
    """Count one ``action`` of ``user`` (``what``: its plural, for the message); Limited past
    ``limit`` a minute."""
    now = time.time() if now is None else now
    minute = int(now // 60)
    key = keys.rate(action, user.pk, minute)
    try:
        pipe = get_redis().pipeline()
        pipe.incr(key)
        pipe.expire(key, 120)
        count, _ = pipe.execute()
    except RedisError as exc:
        raise Limited(f"Redis is unreachable; {what} are off for now ({exc}).", status=503) from None
    if count > limit:
        wait = max(1, int((minute + 1) * 60 - now + 0.999))
        raise Limited(f"At most {limit} {what} a minute: try again in {wait} s.", retry_after=wait)
