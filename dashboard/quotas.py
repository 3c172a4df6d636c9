"""Per-user caps on active crawls and on workers (operator settings, 0 = no cap).

    MAX_ACTIVE_CRAWLS_PER_USER   crawls in an active status (pending ... finishing, paused included)
    MAX_WORKERS_PER_USER         the sum of ``workers`` over those crawls

Every path that starts workers calls in here: a launch (form, API, ``manage.py crawl``), the
resume that relaunches a stopped crawl, and a scale-up. A refusal names the cap and the current
use; the API answers it with 409, the pages show it as a message.

Race safety: the check locks the owner's user row (``SELECT ... FOR UPDATE`` on PostgreSQL;
SQLite's IMMEDIATE transactions already serialize writers) and must run inside the transaction
that then creates or resumes the crawl, so two launches at once cannot both pass.
"""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Sum

from dashboard.models import Crawl


class QuotaExceeded(Exception):
    """A launch or scale-up would pass a per-user cap; the message is for the user."""


def usage(user, exclude=None):
    """``(active crawls, workers of those crawls)`` of ``user``, optionally without one crawl."""
    crawls = Crawl.objects.filter(project__owner=user, status__in=Crawl.ACTIVE)
    if exclude is not None:
        crawls = crawls.exclude(pk=exclude.pk)
    found = crawls.aggregate(crawls=Count("id"), workers=Sum("workers"))
    return found["crawls"], found["workers"] or 0


def summary(user):
    """What the launch form shows: the user's use next to each cap (a cap of 0 means none)."""
    crawls, workers = usage(user)
    return {"crawls": crawls, "crawl_cap": settings.MAX_ACTIVE_CRAWLS_PER_USER,
            "workers": workers, "worker_cap": settings.MAX_WORKERS_PER_USER}


def _lock(user):
    if transaction.get_autocommit():
        raise RuntimeError("quotas must be checked inside the transaction that launches")
    get_user_model().objects.select_for_update().filter(pk=user.pk).exists()


def check_launch(user, workers):
    """Refuse a new active crawl of ``workers`` workers for ``user`` past either cap."""
    _lock(user)
    crawls, in_use = usage(user)
    cap = settings.MAX_ACTIVE_CRAWLS_PER_USER
    if cap and crawls + 1 > cap:
        raise QuotaExceeded(
            f"You already have {crawls} active crawl{'s' if crawls != 1 else ''} and the cap is {cap} per user "
            f"(MAX_ACTIVE_CRAWLS_PER_USER): stop or cancel one first."
        )
    _check_workers(in_use, workers, f"A crawl on {_workers(workers)}", "your active crawls")


def check_scale(crawl, workers):
    """Refuse scaling ``crawl`` to ``workers`` workers when its owner would pass the worker cap.

    Scaling down is always allowed.
    """
    if workers <= crawl.workers:
        return
    with transaction.atomic():
        _lock(crawl.project.owner)
        _crawls, in_use = usage(crawl.project.owner, exclude=crawl)
        _check_workers(in_use, workers, f"Scaling to {_workers(workers)}", "your other active crawls")


def _workers(count):
    return f"{count} worker{'s' if count != 1 else ''}"


def _check_workers(in_use, workers, asked, others):
    cap = settings.MAX_WORKERS_PER_USER
    if cap and in_use + workers > cap:
        raise QuotaExceeded(
            f"{asked} would make {in_use + workers} workers in use: {others} already use {in_use} "
            f"and the cap is {cap} per user (MAX_WORKERS_PER_USER)."
        )
