"""RQ bookkeeping of crawl workers: the queue, job ids, enqueueing, statuses and cancelling.

Jobs take a crawl's code and a worker id, never model instances. Nothing here imports the models:
callers pass what a job needs (code, definition, worker ids), so the models can use this module.
"""

import django_rq
from django.conf import settings
from rq.exceptions import NoSuchJobError
from rq.job import Job

QUEUE = "crawls"
# RQ statuses of a job that no RQ worker has taken yet.
WAITING = ("queued", "deferred", "scheduled")
RESULT_TTL = 7 * 86400


def queue():
    return django_rq.get_queue(QUEUE)


def job_id(code, worker):
    return f"crawl-{code}-{worker}"


def job_timeout(definition):
    """Explicit RQ job timeout: the crawl's duration limit plus a margin, else the setting."""
    max_duration = (definition or {}).get("limits", {}).get("max_duration") or 0
    if max_duration:
        return max_duration + settings.CRAWL_JOB_MARGIN
    return settings.CRAWL_JOB_TIMEOUT


def worker_ids(launched):
    """Ids of the ``launched`` workers handed out so far: w1..wN."""
    return [f"w{n}" for n in range(1, launched + 1)]


def enqueue(code, definition, worker_ids, label=""):
    """One job per worker id on queue ``crawls``: ``crawler.jobs.run_worker(code, worker)``."""
    q = queue()
    timeout = job_timeout(definition)
    for worker in worker_ids:
        q.enqueue(
            "crawler.jobs.run_worker",
            code,
            worker,
            job_id=job_id(code, worker),
            job_timeout=timeout,
            result_ttl=RESULT_TTL,
            failure_ttl=RESULT_TTL,
            description=f"crawl {code} ({label}) worker {worker}" if label else f"crawl {code} worker {worker}",
        )


def statuses(code, launched):
    """RQ status of each launched worker's job: queued, started, finished, failed, ... or missing.

    One pipelined read whatever the number of workers.
    """
    ids = worker_ids(launched)
    if not ids:
        return {}
    q = queue()
    jobs = Job.fetch_many([job_id(code, w) for w in ids], connection=q.connection, serializer=q.serializer)
    found = {}
    for worker, job in zip(ids, jobs):
        status = job.get_status(refresh=False) if job is not None else "missing"
        found[worker] = getattr(status, "value", status)
    return found


def cancel_waiting(code, worker_ids):
    """Cancel the jobs of ``worker_ids`` that still wait for a free RQ worker."""
    q = queue()
    for worker in worker_ids:
        try:
            job = Job.fetch(job_id(code, worker), connection=q.connection, serializer=q.serializer)
        except NoSuchJobError:
            continue
        if job.get_status() in WAITING:
            job.cancel()
