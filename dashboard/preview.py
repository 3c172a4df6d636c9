"""Try a crawl definition on one page before launching it (issue 17).

The page is fetched and read by ``python -m crawler.preview`` in a subprocess: Scrapy's reactor
never runs in the web process (an in-process crawl would hang under Channels/daphne), the fetch
goes through the worker's network guard and settings, and the subprocess has a hard time limit
and a bounded output. Each user may ask for ``PREVIEWS_PER_MINUTE`` previews a minute (a counter
in Redis, so every web process shares it).
"""

import json
import subprocess
import sys
import time

from django.conf import settings
from redis.exceptions import RedisError

from crawler import keys
from crawler.definition import DefinitionError, validate_url
from dashboard.redis import get_redis

MAX_OUTPUT = 4 * 1024 * 1024  # bytes of JSON from the subprocess
MAX_DEPTH = 1000


class PreviewError(Exception):
    """A preview that cannot be shown; ``status`` is the HTTP answer, ``detail`` says why."""

    def __init__(self, detail, status=422, errors=None, retry_after=None):
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.errors = errors or {}
        self.retry_after = retry_after


def check_target(definition, url, depth=0):
    """The preview's URL and depth, checked; PreviewError (422, ``errors`` keyed by field) if bad."""
    errors = {}
    try:
        url = validate_url(url, "url")
    except DefinitionError as exc:
        errors.update(exc.errors)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= MAX_DEPTH:
        errors["depth"] = [f"Must be a whole number from 0 to {MAX_DEPTH} (0: the page is a start URL)."]
    if definition.get("spider"):
        errors["spider"] = ["A preview runs the built-in spider (fields and link rules); a custom "
                                       "spider's code runs on workers only. Launch a small crawl instead."]
    if errors:
        raise PreviewError("The preview cannot run: see errors.", errors=errors)
    return url, depth


def take_turn(user, now=None):
    """Count one preview for ``user``; PreviewError 429 (with ``retry_after``) past the limit."""
    now = time.time() if now is None else now
    minute = int(now // 60)
    key = keys.preview_rate(user.pk, minute)
    try:
        pipe = get_redis().pipeline()
        pipe.incr(key)
        pipe.expire(key, 120)
        count, _ = pipe.execute()
    except RedisError as exc:
        raise PreviewError(f"Redis is unreachable; previews are off for now ({exc}).", status=503) from None
    limit = settings.PREVIEWS_PER_MINUTE
    if count > limit:
        wait = max(1, int((minute + 1) * 60 - now + 0.999))
        raise PreviewError(f"At most {limit} previews a minute: try again in {wait} s.", status=429, retry_after=wait)


def run(user, definition, url, depth=0):
    """Fetch ``url`` as a worker would with the validated ``definition``; the preview's dict, or
    PreviewError (422: refused, unreachable, or a bad URL; 429: rate limit; 500: the preview
    itself failed)."""
    url, depth = check_target(definition, url, depth)
    take_turn(user)
    request = json.dumps({"definition": definition, "url": url, "depth": depth})
    timeout = settings.PREVIEW_TIMEOUT
    try:
        done = subprocess.run([sys.executable, "-m", "crawler.preview"], input=request.encode(), capture_output=True,
                              timeout=timeout, cwd=settings.BASE_DIR)
    except subprocess.TimeoutExpired:
        raise PreviewError(f"The preview took longer than {timeout:g} s and was stopped.") from None
    if len(done.stdout) > MAX_OUTPUT:
        raise PreviewError("The preview's answer is too large to show.", status=500)
    try:
        result = json.loads(done.stdout)
    except ValueError:
        last = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise PreviewError(f"The preview failed: {last[0][:300]}", status=500) from None
    if result.get("error"):
        raise PreviewError(result["detail"], errors={"url": [result["detail"]]})
    return result
