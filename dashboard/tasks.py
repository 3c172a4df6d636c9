"""The ``tasks`` RQ queue: short jobs that must not wait behind crawls (DESIGN.md, processes).

Served by one ``python manage.py rqworker tasks`` process (django-rq's ``rq worker`` with Django
set up, since these jobs read the database). Jobs take codes and numbers, never model instances,
are enqueued after the surrounding transaction commits, and always carry an explicit timeout.
A job that fails stores a sentence for people in its ``meta["error"]``.
"""

import logging

import django_rq
from django.db import transaction
from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.timeouts import JobTimeoutException

log = logging.getLogger(__name__)

QUEUE = "tasks"
WAITING = ("queued", "deferred", "scheduled", "started")


def tasks_queue():
    return django_rq.get_queue(QUEUE)


def fetch(job_id):
    """The job with this id, or None."""
    queue = tasks_queue()
    try:
        return Job.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
    except NoSuchJobError:
        return None


def status(job):
    value = job.get_status(refresh=False)
    return value.value if hasattr(value, "value") else value


def waiting_ids(prefix):
    """Ids starting with ``prefix`` of jobs queued or running on ``tasks`` (a short list)."""
    queue = tasks_queue()
    ids = list(queue.get_job_ids()) + list(queue.started_job_registry.get_job_ids())
    return [job_id for job_id in ids if job_id.startswith(prefix)]


def error_of(job):
    """Why a failed job failed, for people."""
    error = (job.meta or {}).get("error")
    if error:
        return error
    return "The job stopped before it finished (its worker died or ran out of time)."


def enqueue(func, *args, job_id, timeout, description, result_ttl=3600, retry=None):
    """Enqueue ``func(*args)`` on ``tasks`` once the current transaction commits.

    A finished or failed job of the same id is replaced. ``retry``: an ``rq.Retry`` (attempts
    after a failure, with their delays).
    """

    def send():
        old = fetch(job_id)
        if old is not None:
            if status(old) in WAITING:
                return
            old.delete()
        tasks_queue().enqueue(
            func, *args, job_id=job_id, job_timeout=timeout, result_ttl=result_ttl, failure_ttl=86400,
            description=description, retry=retry,
        )

    transaction.on_commit(send)


class reported_failure:
    """``with reported_failure("Building the Excel file"):`` turns any exception raised inside
    into a readable ``meta["error"]`` on the current job (and the log), then lets it fail."""

    def __init__(self, what, timeout=None):
        self.what = what
        self.timeout = timeout

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None:
            return False
        if isinstance(exc, JobTimeoutException):
            message = f"{self.what} took longer than its time limit ({self.timeout} s) and was stopped."
        else:
            message = f"{self.what} failed ({kind.__name__}). The operator's log has the details."
        log.error("%s failed", self.what, exc_info=(kind, exc, tb))
        job = get_current_job()
        if job is not None:
            job.meta["error"] = message
            job.save_meta()
        return False
