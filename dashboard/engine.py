"""The dashboard's side of the crawl engine: launching crawls and their RQ jobs.

Save the row, then touch Redis and RQ after commit; jobs take codes, never model instances.
"""

import logging

import django_rq
from django.conf import settings
from django.db import transaction
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job

from crawler import keys, state
from crawler.definition import MAX_WORKERS, DefinitionError
from dashboard import quotas
from dashboard.models import Crawl, frozen_definition, validate_definition
from dashboard.redis import get_redis

log = logging.getLogger(__name__)

ITEMS_GROUP = "conductor"


class LaunchError(Exception):
    """A crawl could not be launched; the message is for the user."""


def crawls_queue():
    return django_rq.get_queue("crawls")


def job_id(code, worker):
    return f"crawl-{code}-{worker}"


def job_timeout(definition):
    """Explicit RQ job timeout: the crawl's duration limit plus a margin, else the setting."""
    max_duration = definition.get("limits", {}).get("max_duration") or 0
    if max_duration:
        return max_duration + settings.CRAWL_JOB_MARGIN
    return settings.CRAWL_JOB_TIMEOUT


def check_redis():
    try:
        get_redis().ping()
    except RedisError as exc:
        raise LaunchError(f"Redis is unreachable, so no crawl was started ({exc}).") from None


def launch(project, workers=None):
    """Create a crawl of ``project`` and start it on ``workers`` workers (default: the definition's)."""
    try:
        definition = frozen_definition(validate_definition(project.definition))
    except DefinitionError as exc:
        raise LaunchError(f"The project's definition is invalid: {exc}") from None
    count = definition["workers"] if workers is None else workers
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_WORKERS:
        raise LaunchError(f"workers must be a whole number from 1 to {MAX_WORKERS}")
    check_redis()
    with transaction.atomic():
        quotas.check_launch(project.owner, count)  # raises quotas.QuotaExceeded
        crawl = Crawl.objects.create(project=project, definition=definition, workers=count)
        transaction.on_commit(lambda: start(crawl))
    return crawl


def start(crawl):
    """Write the crawl to Redis, seed it, and enqueue its worker jobs. Never leaves it pending."""
    redis = get_redis()
    try:
        state.launch(redis, crawl.code, crawl.definition)
        ensure_items_group(redis, crawl.code)
        enqueue_workers(crawl, crawl.next_worker_ids(crawl.workers))
    except RedisError as exc:
        log.exception("could not start crawl %s", crawl.code)
        crawl.fail(f"Could not start: Redis is unreachable ({exc}).")
        return
    crawl.transition(Crawl.RUNNING)


def ensure_items_group(redis, code):
    try:
        redis.xgroup_create(keys.items(code), ITEMS_GROUP, id="0", mkstream=True)
    except RedisError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def enqueue_workers(crawl, worker_ids):
    queue = crawls_queue()
    timeout = job_timeout(crawl.definition)
    for worker in worker_ids:
        queue.enqueue(
            "crawler.jobs.run_worker",
            crawl.code,
            worker,
            job_id=job_id(crawl.code, worker),
            job_timeout=timeout,
            result_ttl=7 * 86400,
            failure_ttl=7 * 86400,
            description=f"crawl {crawl.code} ({crawl.project.name}) worker {worker}",
        )


def worker_ids(crawl):
    return [f"w{n}" for n in range(1, crawl.launched_workers + 1)]


def job_statuses(crawl):
    """RQ status of each launched worker's job: queued, started, finished, failed, ... or missing."""
    ids = worker_ids(crawl)
    if not ids:
        return {}
    connection = crawls_queue().connection
    jobs = Job.fetch_many([job_id(crawl.code, w) for w in ids], connection=connection,
                          serializer=crawls_queue().serializer)
    statuses = {}
    for worker, job in zip(ids, jobs):
        statuses[worker] = job.get_status(refresh=False) if job is not None else "missing"
    return {w: (s.value if hasattr(s, "value") else s) for w, s in statuses.items()}


def cancel_waiting_jobs(crawl, only=None):
    """Jobs still waiting for a free RQ worker are no longer needed."""
    queue = crawls_queue()
    for worker in only if only is not None else worker_ids(crawl):
        try:
            job = Job.fetch(job_id(crawl.code, worker), connection=queue.connection, serializer=queue.serializer)
        except NoSuchJobError:
            continue
        if job.get_status() in ("queued", "deferred", "scheduled"):
            job.cancel()


# -- Operating a running crawl: pause, resume, stop, cancel, scale ------------------------------

ACTIONS = ("pause", "resume", "stop", "cancel")


def control(crawl, action):
    """Apply ``action`` to ``crawl``; raises InvalidTransition (the API's 409) when it cannot apply."""
    from dashboard.models import InvalidTransition

    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    redis = get_redis()
    with transaction.atomic():
        crawl = Crawl.objects.select_for_update().select_related("project").get(pk=crawl.pk)
        refusal = refusal_reason(crawl, action)
        if refusal:
            raise InvalidTransition(refusal)
        if action == "resume" and crawl.status == Crawl.STOPPED:
            quotas.check_launch(crawl.project.owner, crawl.workers)  # relaunches its workers
        if action == "pause":
            crawl.transition(Crawl.PAUSING)
            state.set_control(redis, crawl.code, "pause")
        elif action == "resume":
            relaunch = crawl.status == Crawl.STOPPED
            if relaunch and not redis.exists(keys.definition(crawl.code)):
                # Redis lost the crawl (no append-only file?): start again from the seeds.
                state.launch(redis, crawl.code, crawl.definition)
                ensure_items_group(redis, crawl.code)
            state.set_control(redis, crawl.code, "run")
            crawl.transition(Crawl.RUNNING, reason="")
            if relaunch:
                ids = crawl.next_worker_ids(crawl.workers)
                transaction.on_commit(lambda: enqueue_workers(crawl, ids))
        elif action == "stop":
            state.set_control(redis, crawl.code, "stop")
            crawl.transition(Crawl.STOPPING)
        elif action == "cancel":
            state.set_control(redis, crawl.code, "stop")
            cancel_waiting_jobs(crawl)
            crawl.transition(Crawl.CANCELLED, reason="Cancelled by its owner.")
    if action == "cancel":
        purge(crawl)
    return crawl


def refusal_reason(crawl, action):
    """Why ``action`` cannot apply to ``crawl`` now, or "" when it can."""
    status = crawl.status
    if action == "pause":
        if status in (Crawl.PAUSING, Crawl.PAUSED):
            return f"Crawl {crawl.code} is already {status}."
        ok = status == Crawl.RUNNING
    elif action == "resume":
        if status == Crawl.RUNNING:
            return f"Crawl {crawl.code} is already running."
        ok = status in (Crawl.PAUSING, Crawl.PAUSED, Crawl.STOPPED)
    elif action == "stop":
        if status in (Crawl.STOPPING, Crawl.STOPPED):
            return f"Crawl {crawl.code} is already {status}."
        ok = status in (Crawl.RUNNING, Crawl.PAUSING, Crawl.PAUSED)
    else:  # cancel
        ok = status in (Crawl.PAUSED, Crawl.STOPPED)
        if not ok and status in (Crawl.RUNNING, Crawl.PAUSING):
            return f"Crawl {crawl.code} is {status}: pause or stop it before cancelling."
    if ok:
        return ""
    return f"Cannot {action} crawl {crawl.code}: it is {status}."


def purge(crawl):
    """Delete a cancelled crawl's Redis state, after moving any item left in its stream to the DB."""
    from dashboard.conductor import Conductor

    redis = get_redis()
    Conductor(redis=redis).drain_all(crawl)
    state.delete_crawl(redis, crawl.code)


def live_workers(crawl, counters):
    """Workers that are (or will be, once an RQ worker is free) working on the crawl."""
    done = ("finished", "failed", "dead")
    states = counters["workers"]
    alive = {w for w, s in states.items() if s.get("state") not in done}
    waiting = {w for w, s in job_statuses(crawl).items() if s in ("queued", "started") and w not in states}
    return sorted(alive | waiting, key=lambda w: int(w[1:]) if w[1:].isdigit() else 0)


SCALABLE = (Crawl.RUNNING, Crawl.PAUSING, Crawl.PAUSED)


def allowed_statuses(action):
    """Every status in which ``action`` applies, from the same rules that refuse it (for the
    crawl page, which keeps its buttons in step with the live status)."""
    if action == "scale":
        return list(SCALABLE)
    return [status for status, _label in Crawl.STATUS_CHOICES
            if not refusal_reason(Crawl(code="x", status=status), action)]


def scale(crawl, workers):
    """Run ``workers`` workers on a running or paused crawl: launch more, or retire the newest."""
    from dashboard.models import InvalidTransition

    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= MAX_WORKERS:
        raise LaunchError(f"workers must be a whole number from 1 to {MAX_WORKERS}")
    if crawl.status not in SCALABLE:
        raise InvalidTransition(f"Cannot scale crawl {crawl.code}: it is {crawl.status}.")
    quotas.check_scale(crawl, workers)
    redis = get_redis()
    current = live_workers(crawl, state.read_counters(redis, crawl.code))
    if workers > len(current):
        enqueue_workers(crawl, crawl.next_worker_ids(workers - len(current)))
    elif workers < len(current):
        retiring = current[workers:]
        state.retire_workers(redis, crawl.code, retiring)
        cancel_waiting_jobs(crawl, only=retiring)
    crawl.workers = workers
    crawl.save(update_fields=["workers"])
    return crawl


def with_waiting_workers(crawl, states):
    """Worker states plus a ``waiting`` row for each launched job no RQ worker has taken yet.

    Costs one pipelined RQ read, and only while some launched worker has not reported.
    """
    if not crawl.is_active or crawl.launched_workers <= len(states):
        return states
    rows = dict(states)
    for worker, status in job_statuses(crawl).items():
        if worker not in rows and status in ("queued", "deferred", "scheduled"):
            rows[worker] = {"worker": worker, "state": "waiting", "message": "waiting for a free RQ worker"}
    return rows
