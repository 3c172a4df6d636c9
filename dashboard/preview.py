"""Try a crawl definition on one page before launching it (issue 17).

The page is fetched and read by ``python -m crawler.preview`` in a subprocess: Scrapy's reactor
never runs in the web process (an in-process crawl would hang under Channels/daphne), the fetch
goes through the worker's network guard and settings, and the subprocess has a hard time limit
and a bounded output. :func:`run` is a coroutine, awaited by async views: waiting up to
``PREVIEW_TIMEOUT`` for the subprocess holds no thread of the web process. Each user may ask for ``PREVIEWS_PER_MINUTE`` previews a minute
(:mod:`dashboard.ratelimit`).
"""

import asyncio
import json
import sys

from asgiref.sync import sync_to_async
from django.conf import settings

from crawler.definition import DefinitionError, validate_url
from dashboard import ratelimit

MAX_OUTPUT = 4 * 1024 * 1024  # bytes of JSON from the subprocess
MAX_DEPTH = 1000
MAX_URL = 4000  # characters of the URL to try


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
    if isinstance(url, str) and len(url) > MAX_URL:
        errors["url"] = [f"At most {MAX_URL} characters."]
    else:
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
    try:
        ratelimit.take_turn("preview", user, settings.PREVIEWS_PER_MINUTE, "previews", now)
    except ratelimit.Limited as exc:
        raise PreviewError(exc.detail, status=exc.status, retry_after=exc.retry_after) from None


async def run(user, definition, url, depth=0):
    """Fetch ``url`` as a worker would with the validated ``definition``; the preview's dict, or
    PreviewError (422: refused, unreachable, too large, or a bad URL; 429: rate limit; 500: the
    preview itself failed)."""
    url, depth = check_target(definition, url, depth)
    await sync_to_async(take_turn, thread_sensitive=False)(user)
    return await fetch(definition, url, depth)


async def fetch(definition, url, depth=0):
    """Run ``python -m crawler.preview`` on one page, within ``PREVIEW_TIMEOUT`` seconds."""
    request = json.dumps({"definition": definition, "url": url, "depth": depth}).encode()
    timeout = settings.PREVIEW_TIMEOUT
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crawler.preview", cwd=settings.BASE_DIR,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(request), timeout)
    except TimeoutError:
        raise PreviewError(f"The preview took longer than {timeout:g} s and was stopped.") from None
    finally:  # timed out, or the client went away (cancelled): the subprocess goes too
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if len(out) > MAX_OUTPUT:
        raise PreviewError("The preview's answer is too large to show.", status=500)
    try:
        result = json.loads(out)
    except ValueError:
        last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise PreviewError(f"The preview failed: {last[0][:300]}", status=500) from None
    if result.get("error"):
        raise PreviewError(result["detail"], errors={"url": [result["detail"]]})
    return result
