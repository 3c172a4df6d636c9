import threading

import django_rq
import pytest
from rq import Worker
from django.core.management import call_command

from crawler import keys
from dashboard.conductor import Conductor

pytestmark = pytest.mark.django_db


def test_healthz_is_public_json_and_reports_each_component(client, redis_client):
    redis_client.delete(keys.conductor_lock())
    response = client.get("/healthz")
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["database"]["ok"] is True
    assert body["redis"] == {"ok": True}
    assert body["workers"] == {"ok": False, "count": 0}
    assert body["task_workers"] == {"ok": False, "count": 0}
    assert body["conductor"]["ok"] is False
    assert body["ok"] is False and response.status_code == 503


def test_healthz_shows_booleans_and_counts_only(client, redis_client):
    """No software version, database vendor or error text reaches an anonymous caller."""
    body = client.get("/healthz").json()
    assert set(body) == {"ok", "database", "redis", "workers", "task_workers", "conductor"}
    for name in ("database", "redis", "workers", "task_workers", "conductor"):
        assert set(body[name]) <= {"ok", "count"}, body[name]
        assert all(isinstance(v, (bool, int)) for v in body[name].values())
    assert redis_client.info("server")["redis_version"] not in client.get("/healthz").content.decode()


def test_healthz_reports_a_live_conductor(client, redis_client):
    conductor = Conductor(tick=0.05, lock_ttl=2)
    assert conductor.hold_lock()
    try:
        assert client.get("/healthz").json()["conductor"]["ok"] is True
    finally:
        conductor.release()
    assert client.get("/healthz").json()["conductor"]["ok"] is False


def test_healthz_reports_redis_down_without_details(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    body = client.get("/healthz").json()
    assert body["redis"] == {"ok": False}
    assert body["workers"]["ok"] is False and body["conductor"]["ok"] is False
    assert body["task_workers"] == {"ok": False, "count": 0}


def test_healthz_counts_the_task_workers_separately(client):
    # An RQ worker registered on queue "tasks" (as `manage.py rqworker tasks` does at start).
    worker = Worker([django_rq.get_queue("tasks")], connection=django_rq.get_connection("tasks"))
    worker.register_birth()
    try:
        body = client.get("/healthz").json()
        assert body["task_workers"] == {"ok": True, "count": 1}
        assert body["workers"]["count"] == 0
    finally:
        worker.register_death()
    assert client.get("/healthz").json()["task_workers"] == {"ok": False, "count": 0}


def test_only_one_conductor_is_active_and_a_standby_takes_over(redis_client):
    redis_client.delete(keys.conductor_lock())
    first = Conductor(tick=0.05, lock_ttl=1)
    second = Conductor(tick=0.05, lock_ttl=1)
    assert first.hold_lock() is True
    assert second.hold_lock() is False
    assert first.hold_lock() is True  # renewal keeps it
    first.release()
    assert second.hold_lock() is True
    second.release()


def test_standby_takes_over_when_the_active_conductor_dies(redis_client):
    redis_client.delete(keys.conductor_lock())
    dead = Conductor(tick=0.05, lock_ttl=1)
    assert dead.hold_lock()
    standby = Conductor(tick=0.05, lock_ttl=1)
    assert standby.hold_lock() is False
    redis_client.pexpire(keys.conductor_lock(), 50)  # the dead one never renews
    stop = threading.Event()
    thread = threading.Thread(target=standby.run, args=(stop.is_set,))
    thread.start()
    try:
        for _ in range(100):
            if standby.active:
                break
            stop.wait(0.02)
        assert standby.active
    finally:
        stop.set()
        thread.join(5)
    assert not redis_client.exists(keys.conductor_lock())  # released on the way out


def test_conductor_command_runs_its_loop_and_releases_the_lock(redis_client):
    redis_client.delete(keys.conductor_lock())
    call_command("conductor", max_ticks=3)
    assert not redis_client.exists(keys.conductor_lock())


def test_ensureadmin_creates_once_and_prints_the_password(capsys, django_user_model):
    call_command("ensureadmin")
    out = capsys.readouterr().out
    assert "username: admin  password: " in out
    password = out.split("password: ")[1].split()[0]
    user = django_user_model.objects.get(username="admin")
    assert user.is_superuser and user.check_password(password)
    call_command("ensureadmin")
    assert "Admin account exists" in capsys.readouterr().out
    assert django_user_model.objects.filter(is_superuser=True).count() == 1


def test_ensureadmin_uses_admin_password_from_environment(monkeypatch, capsys, django_user_model):
    monkeypatch.setenv("ADMIN_PASSWORD", "from-the-env-42")
    call_command("ensureadmin")
    assert "from-the-env-42" not in capsys.readouterr().out
    assert django_user_model.objects.get(username="admin").check_password("from-the-env-42")


@pytest.mark.parametrize("existing", [{}, {"is_staff": True}, {"is_superuser": True, "is_active": False}])
def test_ensureadmin_never_promotes_an_existing_account(monkeypatch, django_user_model, existing):
    """An ordinary account that happens to be named ADMIN_USERNAME keeps its rights and password."""
    from django.core.management import CommandError

    monkeypatch.setenv("ADMIN_PASSWORD", "from-the-env-42")
    user = django_user_model.objects.create_user("admin", password="users-own-pass-1", **existing)
    before = django_user_model.objects.values().get(pk=user.pk)
    with pytest.raises(CommandError, match="'admin' already exists and is not an active superuser"):
        call_command("ensureadmin")
    assert django_user_model.objects.values().get(pk=user.pk) == before
    assert django_user_model.objects.count() == 1


def test_ensureadmin_refusal_exits_non_zero_from_the_shell(tmp_path):
    """As `make run` calls it: a clear line on stderr and exit code 1, nothing changed."""
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "CRAWLSITE_VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "crawlsite.settings",
           "REDIS_URL": "redis://127.0.0.1:1/0"}
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    manage = [sys.executable, str(root / "manage.py")]
    subprocess.run(manage + ["migrate", "-v", "0"], env=env, check=True, capture_output=True)
    subprocess.run(manage + ["shell", "-c", "from django.contrib.auth.models import User; "
                             "User.objects.create_user('admin', password='x-pass-123')"], env=env, check=True)
    result = subprocess.run(manage + ["ensureadmin"], env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert "already exists and is not an active superuser" in result.stderr
    check = subprocess.run(manage + ["shell", "-c", "from django.contrib.auth.models import User; "
                                     "print(User.objects.filter(is_superuser=True).count())"],
                           env=env, capture_output=True, text=True, check=True)
    assert check.stdout.strip().splitlines()[-1] == "0"


def test_conductor_survives_a_database_error(redis_client, monkeypatch):
    """A locked SQLite database fails one tick, not the conductor."""
    from django.db import OperationalError

    calls = []

    def flaky_tick(self):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("database table is locked")

    monkeypatch.setattr(Conductor, "tick", flaky_tick)
    redis_client.delete(keys.conductor_lock())
    Conductor(tick=0.01, lock_ttl=2).run(lambda: False, max_ticks=3)
    assert len(calls) == 3
