"""Health of every component, as the /healthz endpoint and the overview report it."""

import logging

from django.db import connection
import django_rq
from rq import Worker

from crawler import keys
from dashboard.redis import get_redis

log = logging.getLogger(__name__)


def check_database():
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any driver error means "down"; the reason is reported
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "vendor": connection.vendor}


def check_redis_and_processes():
    """Redis itself, the live RQ workers on queues ``crawls`` (crawl workers) and ``tasks``
    (exports and other background jobs), and the conductor's lock."""
    try:
        redis = get_redis()
        info = redis.info("server")
        workers = Worker.count(queue=django_rq.get_queue("crawls"))
        task_workers = Worker.count(queue=django_rq.get_queue("tasks"))
        conductor = bool(redis.exists(keys.conductor_lock()))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        down = {"ok": False, "error": "Redis is unreachable"}
        return {"ok": False, "error": error}, {"ok": False, "count": 0, **down}, {"ok": False, "count": 0, **down}, down
    return (
        {"ok": True, "version": info.get("redis_version")},
        {"ok": workers > 0, "count": workers},
        {"ok": task_workers > 0, "count": task_workers},
        {"ok": conductor},
    )


def health():
    redis, workers, task_workers, conductor = check_redis_and_processes()
    report = {
        "database": check_database(),
        "redis": redis,
        "workers": workers,
        "task_workers": task_workers,
        "conductor": conductor,
    }
    report["ok"] = all(part["ok"] for part in report.values())
    return report
