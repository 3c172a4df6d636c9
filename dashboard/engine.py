"""Launching and operating crawls: what the pages, the API and ``crawlctl`` call.

The lifecycle itself (which action applies in which status, and what it changes) is
``Crawl.LIFECYCLE`` in dashboard/models.py; this module adds what needs more than one crawl row:
validating a launch, counting live workers for a scale, draining a cancelled crawl's items.
"""

import logging

from django.db import transaction
from redis.exceptions import RedisError

from crawler import state
from crawler.counters import COUNTERS, DONE_STATES
from crawler.definition import MAX_WORKERS, DefinitionError
from dashboard import history, ingest, jobs, quotas
from dashboard.models import (
    Crawl,
    InvalidTransition,
    Project,
    frozen_definition,
    validate_definition,
)
from dashboard.redis import get_redis

log = logging.getLogger(__name__)


class LaunchError(Exception):
    """A crawl could not be launched; the message is for the user."""


def check_redis():
    try:
        get_redis().ping()
    except RedisError as exc:
        raise LaunchError(f"Redis is unreachable, so no crawl was started ({exc}).") from None


def check_workers(count):
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_WORKERS:
        raise LaunchError(f"workers must be a whole number from 1 to {MAX_WORKERS}")


def launch(project, workers=None, trigger=Crawl.TRIGGER_USER, schedule=None, definition=None):
    """Create a crawl of ``project`` and start it on ``workers`` workers (default: the definition's).
    ``trigger`` records what started it (``Crawl.TRIGGER_CHOICES``), ``schedule`` the schedule that
    fired it (dashboard/schedules.py). ``definition`` replaces the project's for this crawl only (a
    deployed spider run with its own arguments and settings)."""
    try:
        definition = project.definition if definition is None else definition
        definition = frozen_definition(validate_definition(definition, owner=project.owner), owner=project.owner)
    except DefinitionError as exc:
        raise LaunchError(f"The project's definition is invalid: {exc}") from None
    count = definition["workers"] if workers is None else workers
    check_workers(count)
    check_redis()
    with transaction.atomic():
        quotas.check_launch(project.owner, count)  # raises quotas.QuotaExceeded
        crawl = Crawl.objects.create(project=project, definition=definition, workers=count, trigger=trigger,
                                     schedule=schedule)
        transaction.on_commit(lambda: start(crawl))
    return crawl


def start(crawl):
    """Write the crawl to Redis, seed it, and enqueue its worker jobs. Never leaves it pending."""
    try:
        if not put_package(crawl):
            return
        state.launch(get_redis(), crawl.code, crawl.definition)
        jobs.enqueue(crawl.code, crawl.definition, crawl.next_worker_ids(crawl.workers), crawl.project.name)
    except RedisError as exc:
        log.exception("could not start crawl %s", crawl.code)
        crawl.fail(f"Could not start: Redis is unreachable ({exc}).")
        return
    crawl.mark_started()


def launch_deployed(owner, package, spider, version="", args=None, settings=None, workers=1,
                    trigger=Crawl.TRIGGER_USER):
    """Run spider ``spider`` of ``owner``'s deployed ``package`` (``version`` or the latest) with
    spider arguments ``args``, Scrapy ``settings`` (the definition's whitelist) and ``workers``.
    The crawl belongs to the owner's project for that (package, spider), created on first use.
    Raises DefinitionError (bad input, by field), LaunchError or quotas.QuotaExceeded."""
    definition = validate_definition({
        "name": f"{package} {spider}"[:200], "start_urls": [], "workers": workers, "settings": settings or {},
        "spider": {"package": package, "spider": spider, "version": version, "args": args or {}},
    }, owner=owner)
    check_workers(workers)
    project = Project.for_deployed_spider(owner, package, spider)
    return launch(project, workers=workers, trigger=trigger, definition=definition)


def put_package(crawl):
    """The deployed version a crawl runs, into the crawl's Redis state: workers fetch it from
    there, so deleting the version later never takes it from the crawl. False (and the crawl
    failed) if the version went away before the crawl could start."""
    if crawl.put_code(get_redis()):
        return True
    frozen = crawl.deployed_version()
    crawl.fail(f"Could not start: version {frozen['version']} of package {frozen['name']} was deleted.")
    return False


ACTIONS = ("pause", "resume", "stop", "force_stop", "cancel")


def control(crawl, action):
    """Apply a user's ``action`` to ``crawl``; InvalidTransition (the API's 409) when it cannot."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    get_redis().ping()  # Redis away: refuse before changing anything (the API's 503)
    crawl = Crawl.objects.select_related("project").get(pk=crawl.pk)
    if action == "resume" and crawl.status == Crawl.STOPPED:
        # A resume relaunches its workers: checked against the caps in the transaction that resumes.
        with transaction.atomic():
            quotas.check_launch(crawl.project.owner, crawl.workers)
            crawl.resume()
    elif action == "force_stop":
        crawl.force_stop(announce=False)
        finalize(crawl)
        crawl.run_ended(action)  # history and monitors, once the final counters are stored
    elif action == "cancel":
        ends_run = crawl.ends_run(action)  # a paused run ends here; a stopped one ended already
        crawl.cancel(announce=False)
        ingest.drain_all(get_redis(), crawl)
        if ends_run:
            crawl.run_ended(action)  # history and monitors, before the Redis state goes
        else:
            history.record_run(crawl)  # the last of its history, before the Redis state goes
        purge(crawl)
    else:
        getattr(crawl, action)()
    return crawl


def finalize(crawl):
    """Store what is left of a stopped crawl's items and record its final counters."""
    redis = get_redis()
    ingest.drain_all(redis, crawl)
    counters = state.read_counters(redis, crawl.code)
    Crawl.objects.filter(pk=crawl.pk).update(stats=final_stats(crawl, counters))
    crawl.refresh_from_db(fields=["stats"])


def final_stats(crawl, counters):
    stats = {name: counters[name] for name in COUNTERS}
    stats["status"] = counters["status"]
    stats["items_stored"] = crawl.items.count()
    stats["workers"] = len(counters["workers"])
    stats["coverage"] = counters.get("coverage") or {}  # field -> percent of items (dashboard/live.py)
    # refused by the network policy (crawler.netguard) or by robots.txt (crawler.robots)
    for name in ("blocked_address", "blocked_scheme", "robots_forbidden"):
        stats[name] = int(counters["stats"].get(name, 0))
    return stats


def purge(crawl):
    """Delete a cancelled crawl's Redis state, after moving any item left in its stream to the DB."""
    redis = get_redis()
    ingest.drain_all(redis, crawl)
    state.delete_crawl(redis, crawl.code)


def live_workers(crawl, counters, statuses=None):
    """Workers that are (or will be, once an RQ worker is free) working on the crawl, oldest first."""
    states = counters["workers"]
    statuses = jobs.statuses(crawl.code, crawl.launched_workers) if statuses is None else statuses
    alive = {w for w, s in states.items() if s.get("state") not in DONE_STATES}
    waiting = {w for w, s in statuses.items() if s in ("queued", "started") and w not in states}
    return sorted(alive | waiting, key=lambda w: int(w[1:]) if w[1:].isdigit() else 0)


def scale(crawl, workers):
    """Run ``workers`` workers: enqueue more, or retire the newest (they hand back their requests)."""
    check_workers(workers)
    crawl = Crawl.objects.select_related("project").get(pk=crawl.pk)
    if crawl.refusal("scale"):
        raise InvalidTransition(crawl.refusal("scale"))
    alive = live_workers(crawl, state.read_counters(get_redis(), crawl.code))
    # The cap check and the new worker count commit together, so two scale-ups at once cannot
    # both pass the cap (the check locks the owner's row until this transaction ends).
    with transaction.atomic():
        quotas.check_scale(crawl, workers)
        return crawl.scale(workers, alive)
