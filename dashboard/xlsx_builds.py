"""Excel exports, built by an RQ job on ``tasks`` instead of inside a web request.

An .xlsx file cannot be streamed (its zip directory comes last), so building one for a big crawl
used to hold a web worker for the whole build. Now:

1. Asking for one (page: POST, API: GET ``export?format=xlsx``) fixes the crawl's *snapshot*, the
   largest item id stored right now, and starts a build of exactly those items, unless one is
   ready (a file for that snapshot) or one of this crawl is already being built (that one is
   offered instead: at most one build per crawl at a time).
2. The job (:func:`build`, run by the ``tasks`` worker) writes ``EXPORTS_DIR/<code>-<snapshot>.xlsx`` (folder 0700,
   file 0600, written under a temporary name and renamed when complete).
3. The page polls a status URL and offers the file when it is ready; the API answers 202 with the
   status URL, then serves the file. Only the crawl's owner reaches any of these (404 otherwise).
4. Files older than ``XLSX_EXPORT_TTL`` are no longer offered and are deleted by the next build.

A build may be filtered like every export (``only=invalid`` or ``only=new``,
:data:`dashboard.exports.ONLY`). The filter is part of a build's identity: of its file name
(``<code>-<only>-<snapshot>.xlsx``), its job id, its status and its URLs (``?only=``), so a
filtered file is never served for an unfiltered request, nor the other way round. The "one build
at a time" rule holds per crawl and filter.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.urls import reverse
from redis.exceptions import RedisError

from dashboard import tasks
from dashboard.exports import FORMATS, ONLY, ONLY_LABELS, ExportFileResponse, download_headers, snapshot_max_id, write_xlsx
from dashboard.models import Crawl

log = logging.getLogger(__name__)

READY, PREPARING, FAILED, MISSING = "ready", "preparing", "failed", "missing"
ELSEWHERE = ("The build finished, but its file is not where the web server looks: the tasks worker and the "
             "web server must share CRAWLSITE_EXPORTS_DIR.")
UNREACHABLE = "Redis is unreachable, so no Excel file can be built or checked now. Try again in a moment."


@dataclass
class Build:
    code: str
    snapshot: int
    status: str  # ready, preparing, failed or missing (never asked for, or expired)
    detail: str = ""
    only: str = ""  # the export filter ("" = every item)

    @property
    def is_ready(self):
        return self.status == READY

    def page_url(self):
        return page_url(self.code, self.snapshot, self.only)

    def urls(self, api=False):
        query = _query(self.only)
        if api:
            base = f"/api/crawls/{self.code}/xlsx/{self.snapshot}"
            return {"status_url": base + query, "file_url": f"{base}/file" + query}
        args = [self.code, self.snapshot]
        return {"status_url": reverse("dashboard:crawl-xlsx-status", args=args) + query,
                "file_url": reverse("dashboard:crawl-xlsx-file", args=args) + query}

    def as_json(self, api=False):
        return {"status": self.status, "snapshot": self.snapshot, "only": self.only or None, "detail": self.detail,
                **self.urls(api)}


def _query(only: str) -> str:
    return f"?only={only}" if only else ""


def page_url(code: str, snapshot: int, only: str = "") -> str:
    """The page of the Excel build of crawl ``code``'s items up to ``snapshot`` (with a filter)."""
    return reverse("dashboard:crawl-xlsx", args=[code, snapshot]) + _query(only)


def folder() -> Path:
    return Path(settings.EXPORTS_DIR)


def _name(code: str, snapshot: int, only: str = "") -> str:
    """``<code>-<snapshot>``, or ``<code>-<only>-<snapshot>`` for a filtered build."""
    # ``code`` comes from the database ([a-z0-9]), ``snapshot`` is an int and ``only`` one of a
    # fixed few words: no path tricks.
    if only and only not in ONLY:
        raise ValueError(f"unknown export filter {only!r}")
    return f"{code}-{only}-{int(snapshot)}" if only else f"{code}-{int(snapshot)}"


def path_for(code: str, snapshot: int, only: str = "") -> Path:
    return folder() / f"{_name(code, snapshot, only)}.xlsx"


def job_id(code: str, snapshot: int, only: str = "") -> str:
    return f"xlsx-{_name(code, snapshot, only)}"


def _fresh(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime < settings.XLSX_EXPORT_TTL
    except OSError:  # missing, or a name too long for the file system (an absurd snapshot number)
        return False


def status(code: str, snapshot: int, only: str = "") -> Build:
    if _fresh(path_for(code, snapshot, only)):
        return Build(code, snapshot, READY, "The Excel file is ready.", only)
    try:
        job = tasks.fetch(job_id(code, snapshot, only))
    except RedisError:
        return Build(code, snapshot, FAILED, UNREACHABLE, only)
    if job is not None:
        state = tasks.status(job)
        if state in tasks.WAITING:
            waiting = "Building the Excel file…" if state == "started" else "Waiting for a free task worker…"
            return Build(code, snapshot, PREPARING, waiting, only)
        if state in ("failed", "stopped", "canceled"):
            return Build(code, snapshot, FAILED, tasks.error_of(job), only)
        if state == "finished" and not path_for(code, snapshot, only).exists():
            # The job's record lives shorter than a file, so the file was not pruned: it was
            # written where this process does not look.
            return Build(code, snapshot, FAILED, ELSEWHERE, only)
    return Build(code, snapshot, MISSING, "No Excel file of these items is ready or being built.", only)


def _building(code: str, only: str) -> Build | None:
    """The build of ``code`` with this filter on its way, if any (the first found)."""
    prefix = job_id(code, 0, only)[:-1]  # "xlsx-<code>-" or "xlsx-<code>-<only>-"
    for other in tasks.waiting_ids(prefix):
        rest = other[len(prefix):]
        if rest.isascii() and rest.isdigit():  # not a build with another filter
            building = status(code, int(rest), only)
            if building.status == PREPARING:
                return building
    return None


def request(crawl: Crawl, only: str = "") -> Build:
    """The Excel export of ``crawl``'s items as stored now (limited by the filter ``only``):
    ready, or being prepared."""
    snapshot = snapshot_max_id(crawl)
    current = status(crawl.code, snapshot, only)
    if current.status in (READY, PREPARING):
        return current
    if current.detail in (UNREACHABLE, ELSEWHERE):  # building again would not help
        return current
    try:
        building = _building(crawl.code, only)  # one build per crawl and filter at a time
        if building is not None:
            return building
        what = f" ({ONLY_LABELS[only]})" if only else ""
        tasks.enqueue(
            "dashboard.xlsx_builds.build", crawl.code, snapshot, only,
            job_id=job_id(crawl.code, snapshot, only), timeout=settings.XLSX_JOB_TIMEOUT,
            result_ttl=min(3600, settings.XLSX_EXPORT_TTL),
            description=f"Excel export of crawl {crawl.code} up to item {snapshot}{what}",
        )
    except RedisError:
        return Build(crawl.code, snapshot, FAILED, UNREACHABLE, only)
    return Build(crawl.code, snapshot, PREPARING, "Waiting for a free task worker…", only)


def build(code: str, snapshot: int, only: str = "") -> str:
    """The RQ job: write the .xlsx of crawl ``code``'s items up to id ``snapshot``, limited by
    the export filter ``only`` ("" for every item)."""
    with tasks.reported_failure("Building the Excel file", timeout=settings.XLSX_JOB_TIMEOUT):
        crawl = Crawl.objects.select_related("project").filter(code=code).first()
        if crawl is None:
            raise LookupError(f"crawl {code} no longer exists")
        target = path_for(code, snapshot, only)
        if _fresh(target):
            return str(target)
        os.makedirs(folder(), mode=0o700, exist_ok=True)
        os.chmod(folder(), 0o700)
        fd, part = tempfile.mkstemp(dir=folder(), prefix=f".{code}-", suffix=".part")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                write_xlsx(crawl, snapshot, fh, only)
            os.replace(part, target)
        except BaseException:
            Path(part).unlink(missing_ok=True)
            raise
        prune()
        return str(target)


def file_response(crawl: Crawl, snapshot: int, only: str = ""):
    """The finished file as a download, or None when it is not ready (or has expired)."""
    path = path_for(crawl.code, snapshot, only)
    if not _fresh(path):
        return None
    try:
        fh = open(path, "rb")  # an open file survives a prune that deletes its name meanwhile
    except OSError:
        return None
    response = ExportFileResponse(fh, content_type=FORMATS["xlsx"][1])
    return download_headers(response, crawl, "xlsx", snapshot, only)


def prune(now: float | None = None) -> int:
    """Delete expired files (and parts left by a killed build); returns how many went."""
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(os.scandir(folder()))
    except FileNotFoundError:
        return 0
    for entry in entries:
        age = now - entry.stat(follow_symlinks=False).st_mtime
        stale = (entry.name.endswith(".xlsx") and age >= settings.XLSX_EXPORT_TTL) or (
            entry.name.endswith(".part") and age >= 2 * settings.XLSX_JOB_TIMEOUT)
        if stale and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            removed += 1
    return removed
