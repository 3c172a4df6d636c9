"""RQ workers started by tests, and the guarantee that none outlives its test."""

import os
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
_started = []


def start_rq_workers(count, burst=True, **env_overrides):
    """``count`` RQ workers on queue ``crawls`` of the test Redis: burst workers (they exit once the
    queue is empty), or with ``burst=False`` workers that listen until the test kills them."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **env_overrides)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "rq.cli", "worker", "crawls", *(["--burst"] if burst else []),
             "--serializer", "rq.serializers.JSONSerializer", "--url", os.environ["REDIS_URL"]],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    _started.extend(procs)
    return procs


def _database_url():
    """A DATABASE_URL for a worker process that must read the test database.

    PostgreSQL: the test database itself. SQLite: the test database lives in this process's
    memory, so the worker gets a copy written now with SQLite's backup API. The ``tasks`` jobs
    only read the database, so start the worker once the data its jobs need is committed.
    """
    from django.db import connection

    db = connection.settings_dict
    if not db["ENGINE"].endswith("sqlite3"):
        return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"
    import sqlite3

    connection.ensure_connection()
    folder = Path(os.environ["CRAWLSITE_VAR_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / f"worker-db-{len(_started)}.sqlite3"
    copy.unlink(missing_ok=True)
    target = sqlite3.connect(copy)
    try:
        connection.connection.backup(target)
    finally:
        target.close()
    return f"sqlite:///{copy}"


def start_task_workers(count=1, **env_overrides):
    """``count`` burst workers on queue ``tasks`` (django-rq's ``rqworker``, as in the Procfile:
    these jobs use the database), on the test Redis and the test database (see _database_url).
    Their output goes to ``task-worker-N-M.log`` in the test run's var folder."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), DATABASE_URL=_database_url(), **env_overrides)
    logs = Path(os.environ["CRAWLSITE_VAR_DIR"])
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for _ in range(count):
        with open(logs / f"task-worker-{len(_started)}-{len(procs)}.log", "ab") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "manage.py", "rqworker", "tasks", "--burst",
                 "--serializer", "rq.serializers.JSONSerializer"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            ))
    _started.extend(procs)
    return procs


def kill_tree(proc):
    """SIGKILL an RQ worker with everything below it. RQ puts each work horse in a process group
    of its own, so only walking the process tree reaches the horse and its crawler."""
    try:
        parent = psutil.Process(proc.pid)
        family = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)
    proc.wait()


def kill_leftover_workers():
    """Kill every worker a test started and did not see exit, with its horse and crawler."""
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            kill_tree(proc)
