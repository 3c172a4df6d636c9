"""The schedules API: create, read, change, delete, fires; bad input answers 422 naming the field;
another user's schedule does not exist for them."""

import json
from datetime import datetime

import pytest
from django.utils import timezone

from dashboard import schedules
from dashboard.models import ApiToken, Crawl, Schedule, ScheduleFire
from tests.dashboard.factories import project_for

pytestmark = pytest.mark.django_db


def send(client, method, path, data, **extra):
    return getattr(client, method)(path, json.dumps(data), content_type="application/json", **extra)


@pytest.fixture
def auth(owner):
    return {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(owner)}"}


@pytest.fixture
def project(owner):
    return project_for(owner, "Shop")


def test_create_answers_201_with_next_runs_in_the_schedule_zone(client, auth, project):
    body = {"cron": "@daily", "timezone": "America/New_York", "workers": 2, "overlap": "queue",
            "catch_up": "skip", "max_runtime": 3600, "enabled": True}
    response = send(client, "post", f"/api/projects/{project.code}/schedules", body, **auth)
    assert response.status_code == 201, response.content
    out = response.json()
    assert out["id"] == out["code"] and out["project"] == project.code
    assert {k: out[k] for k in body} == {**body, "cron": "0 0 * * *"}
    runs = [datetime.fromisoformat(r) for r in out["next_runs"]]
    assert len(runs) == 5 and all(r > timezone.now() for r in runs)
    assert all(r.hour == 0 and r.minute == 0 and r.utcoffset().total_seconds() in (-4 * 3600, -5 * 3600)
               for r in runs)
    assert Schedule.objects.get(code=out["id"]).project == project


def test_defaults_and_list(client, auth, project):
    send(client, "post", f"/api/projects/{project.code}/schedules", {"cron": "*/5 * * * *"}, **auth)
    [out] = client.get(f"/api/projects/{project.code}/schedules", **auth).json()
    assert (out["timezone"], out["workers"], out["overlap"], out["catch_up"], out["max_runtime"], out["enabled"]) == \
        ("UTC", None, "skip", "once", None, True)


@pytest.mark.parametrize("field,value,words", [
    ("cron", "0 0 30 2 *", "day-of-month"),
    ("cron", "every day", "5 fields"),
    ("cron", 5, "Give a cron"),
    ("timezone", "Europe/Atlantis", "Unknown time zone"),
    ("timezone", "x" * 5000, "Unknown time zone"),
    ("workers", 0, "from 1 to 64"),
    ("workers", 65, "from 1 to 64"),
    ("workers", "3", "from 1 to 64"),
    ("overlap", "replace", "Unknown overlap policy"),
    ("catch_up", "all", "Unknown catch_up policy"),
    ("max_runtime", -1, "max_runtime"),
    ("max_runtime", 1.5, "max_runtime"),
    ("max_runtime", 10 ** 9, "max_runtime"),
    ("enabled", "yes", "true or false"),
])
def test_bad_input_is_422_naming_the_field_and_stores_nothing(client, auth, project, field, value, words):
    body = {"cron": "@hourly", field: value}
    response = send(client, "post", f"/api/projects/{project.code}/schedules", body, **auth)
    assert response.status_code == 422, response.content
    out = response.json()
    assert list(out["errors"]) == [field] and words in out["errors"][field][0]
    assert field in out["detail"]
    assert not Schedule.objects.exists()


@pytest.mark.parametrize("body", [[], "cron", {"cron": "@daily", "owner": 1}])
def test_a_body_that_is_not_a_schedule_is_422(client, auth, project, body):
    response = send(client, "post", f"/api/projects/{project.code}/schedules", body, **auth)
    assert response.status_code == 422 and "errors" in response.json()
    assert not Schedule.objects.exists()


def test_put_changes_only_given_fields_and_a_new_cron_moves_the_cursor(client, auth, project):
    schedule = schedules.create(project, schedules.validate({"cron": "0 3 * * *", "workers": 2}))
    response = send(client, "put", f"/api/schedules/{schedule.code}", {"enabled": False}, **auth)
    assert response.status_code == 200 and response.json()["enabled"] is False and response.json()["workers"] == 2
    response = send(client, "put", f"/api/schedules/{schedule.code}", {"cron": "15 * * * *"}, **auth)
    schedule.refresh_from_db()
    assert schedule.cron == "15 * * * *" and schedule.next_due.minute == 15 and schedule.next_due > timezone.now()
    bad = send(client, "put", f"/api/schedules/{schedule.code}", {"overlap": "??"}, **auth)
    assert bad.status_code == 422 and list(bad.json()["errors"]) == ["overlap"]
    schedule.refresh_from_db()
    assert schedule.overlap == "skip"


def test_fires_list_newest_first_with_crawl_codes(client, auth, project):
    schedule = schedules.create(project, schedules.validate({"cron": "@hourly"}))
    crawl = Crawl.objects.create(project=project, definition=project.definition, schedule=schedule,
                                 trigger=Crawl.TRIGGER_SCHEDULE)
    now = timezone.now()
    ScheduleFire.objects.create(schedule=schedule, due=now - timezone.timedelta(hours=2), fired_at=now,
                                outcome="skipped", reason="schedule disabled")
    ScheduleFire.objects.create(schedule=schedule, due=now - timezone.timedelta(hours=1), fired_at=now,
                                outcome="launched", crawl=crawl)
    fires = client.get(f"/api/schedules/{schedule.code}/fires", **auth).json()
    assert [(f["outcome"], f["reason"], f["crawl"]) for f in fires] == [
        ("launched", "", crawl.code), ("skipped", "schedule disabled", None)]
    assert client.get(f"/api/schedules/{schedule.code}/fires?limit=0", **auth).status_code == 422


def test_project_crawls_list_newest_first_with_trigger(client, auth, project):
    schedule = schedules.create(project, schedules.validate({"cron": "@hourly"}))
    old = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.FINISHED)
    new = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.FINISHED,
                               trigger=Crawl.TRIGGER_SCHEDULE, schedule=schedule)
    out = client.get(f"/api/projects/{project.code}/crawls", **auth).json()
    assert [(c["code"], c["status"], c["trigger"], c["schedule"]) for c in out] == [
        (new.code, "finished", "schedule", schedule.code), (old.code, "finished", "user", None)]
    assert all("created_at" in c for c in out)


def test_delete_keeps_the_crawls_it_started(client, auth, project):
    schedule = schedules.create(project, schedules.validate({"cron": "@hourly"}))
    crawl = Crawl.objects.create(project=project, definition=project.definition, schedule=schedule,
                                 trigger=Crawl.TRIGGER_SCHEDULE)
    assert client.delete(f"/api/schedules/{schedule.code}", **auth).status_code == 204
    crawl.refresh_from_db()
    assert crawl.schedule is None and crawl.trigger == Crawl.TRIGGER_SCHEDULE


def test_schedules_per_project_are_capped(client, auth, project, monkeypatch):
    monkeypatch.setattr(schedules, "MAX_PER_PROJECT", 2)
    for _ in range(2):
        created = send(client, "post", f"/api/projects/{project.code}/schedules", {"cron": "@daily"}, **auth)
        assert created.status_code == 201
    response = send(client, "post", f"/api/projects/{project.code}/schedules", {"cron": "@daily"}, **auth)
    assert response.status_code == 422 and "2 schedules already" in response.json()["detail"]


def test_another_users_schedules_answer_404(client, project, outsider):
    schedule = schedules.create(project, schedules.validate({"cron": "@hourly"}))
    theirs = {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(outsider)}"}
    assert client.get(f"/api/projects/{project.code}/schedules", **theirs).status_code == 404
    created = send(client, "post", f"/api/projects/{project.code}/schedules", {"cron": "@daily"}, **theirs)
    assert created.status_code == 404
    assert client.get(f"/api/schedules/{schedule.code}", **theirs).status_code == 404
    assert send(client, "put", f"/api/schedules/{schedule.code}", {"enabled": False}, **theirs).status_code == 404
    assert client.delete(f"/api/schedules/{schedule.code}", **theirs).status_code == 404
    assert client.get(f"/api/schedules/{schedule.code}/fires", **theirs).status_code == 404
    schedule.refresh_from_db()
    assert schedule.enabled is True
