"""Schedules on the pages: the project's section, the form with field errors, the history, the
enable/disable/delete buttons (CSRF-checked), and the crawl page's trigger."""

import re

import pytest
from django.test import Client
from django.utils import timezone

from dashboard import schedules
from dashboard.models import Crawl, Schedule, ScheduleFire
from tests.dashboard.factories import project_for

pytestmark = pytest.mark.django_db

FORM = {"cron": "30 2 * * *", "timezone": "Europe/Berlin", "workers": "2", "overlap": "queue",
        "catch_up": "skip", "max_runtime": "", "enabled": "on"}


@pytest.fixture
def project(owner):
    return project_for(owner, "Shop")


def test_create_from_the_form_and_see_it_on_the_project_page(owner_client, project):
    response = owner_client.post(f"/projects/{project.code}/schedules/new/", FORM)
    schedule = Schedule.objects.get(project=project)
    assert response.status_code == 302 and response["Location"] == f"/schedules/{schedule.code}/"
    assert (schedule.cron, schedule.timezone, schedule.workers, schedule.overlap, schedule.catch_up,
            schedule.max_runtime, schedule.enabled) == ("30 2 * * *", "Europe/Berlin", 2, "queue", "skip", None, True)
    page = owner_client.get(f"/projects/{project.code}/").content.decode()
    assert f'href="/schedules/{schedule.code}/"' in page
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT02:30:00\+0[12]:00" data-local-time>', page)
    assert "js/local_times.js" in page
    assert re.search(r"\d{4}-\d\d-\d\d 02:30 CES?T", page)  # in the schedule's zone, not the server's
    detail = owner_client.get(f"/schedules/{schedule.code}/").content.decode()
    assert len(re.findall(r"\d{4}-\d\d-\d\d 02:30 CES?T", detail)) == 5


@pytest.mark.parametrize("field,value,words", [
    ("cron", "0 0 30 2 *", "day-of-month"),
    ("cron", "@often", "Unknown shortcut"),
    ("timezone", "Moon/Base", "Unknown time zone"),
    ("workers", "65", "from 1 to 64"),
    ("workers", "2.5", "whole number"),
    ("overlap", "replace", "valid choice"),
    ("max_runtime", "99999999", "max_runtime"),
])
def test_bad_fields_are_shown_next_to_the_field_and_nothing_is_saved(owner_client, project, field, value, words):
    response = owner_client.post(f"/projects/{project.code}/schedules/new/", {**FORM, field: value})
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert list(errors) == [field] and words in errors[field][0]
    assert f'id="id_{field}_errors"' in response.content.decode()
    assert not Schedule.objects.exists()


def test_one_submit_names_every_bad_field(owner_client, project):
    bad = {**FORM, "cron": "0 0 30 2 *", "timezone": "Moon/Base", "workers": "2.5", "overlap": "replace"}
    errors = owner_client.post(f"/projects/{project.code}/schedules/new/", bad).context["form"].errors
    assert set(errors) == {"cron", "timezone", "workers", "overlap"}
    assert not Schedule.objects.exists()


def test_detail_shows_five_next_runs_and_every_fire_with_its_crawl(owner_client, project):
    schedule = schedules.create(project, schedules.validate({"cron": "@hourly", "timezone": "Asia/Kolkata"}))
    crawl = Crawl.objects.create(project=project, definition=project.definition, schedule=schedule,
                                 trigger=Crawl.TRIGGER_SCHEDULE)
    now = timezone.now()
    ScheduleFire.objects.create(schedule=schedule, due=now, fired_at=now, outcome="launched", crawl=crawl)
    ScheduleFire.objects.create(schedule=schedule, due=now - timezone.timedelta(hours=1), fired_at=now,
                                outcome="skipped", reason="overlap: run abc is still active (overlap policy: skip)")
    page = owner_client.get(f"/schedules/{schedule.code}/").content.decode()
    assert len(re.findall(r'<time datetime="[^"]+\+05:30" data-local-time>', page)) == 5
    assert f'href="/crawls/{crawl.code}/"' in page
    assert "overlap: run abc is still active" in page and "Skipped" in page and "Launched" in page


def test_edit_disable_enable_delete(owner_client, project):
    schedule = schedules.create(project, schedules.validate({"cron": "@hourly"}))
    response = owner_client.post(f"/schedules/{schedule.code}/edit/", {**FORM, "cron": "@weekly"})
    assert response.status_code == 302
    schedule.refresh_from_db()
    assert schedule.cron == "0 0 * * 0"
    owner_client.post(f"/schedules/{schedule.code}/disable")
    schedule.refresh_from_db()
    assert schedule.enabled is False
    owner_client.post(f"/schedules/{schedule.code}/enable")
    schedule.refresh_from_db()
    assert schedule.enabled is True
    assert owner_client.get(f"/schedules/{schedule.code}/disable").status_code == 405
    response = owner_client.post(f"/schedules/{schedule.code}/delete")
    assert response["Location"] == f"/projects/{project.code}/"
    assert not Schedule.objects.exists()


def test_schedule_forms_need_a_csrf_token(owner, project):
    schedule = schedules.create(project, schedules.validate({"cron": "@hourly"}))
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    for path in (f"/projects/{project.code}/schedules/new/", f"/schedules/{schedule.code}/edit/",
                 f"/schedules/{schedule.code}/disable", f"/schedules/{schedule.code}/enable",
                 f"/schedules/{schedule.code}/delete"):
        assert client.post(path, FORM).status_code == 403, path
    schedule.refresh_from_db()
    assert schedule.enabled and Schedule.objects.count() == 1


def test_crawl_page_shows_its_trigger_and_schedule(owner_client, project):
    schedule = schedules.create(project, schedules.validate({"cron": "@hourly"}))
    scheduled = Crawl.objects.create(project=project, definition=project.definition, schedule=schedule,
                                     trigger=Crawl.TRIGGER_SCHEDULE, status=Crawl.FINISHED)
    by_api = Crawl.objects.create(project=project, definition=project.definition, trigger=Crawl.TRIGGER_API,
                                  status=Crawl.FINISHED)
    page = owner_client.get(f"/crawls/{scheduled.code}/").content.decode()
    assert re.search(rf'trigger: <span data-trigger>schedule <a href="/schedules/{schedule.code}/">', page)
    assert "trigger: <span data-trigger>API</span>" in owner_client.get(f"/crawls/{by_api.code}/").content.decode()
    schedule.delete()
    assert "a schedule since deleted" in owner_client.get(f"/crawls/{scheduled.code}/").content.decode()


def test_admin_shows_schedules_and_fires_but_never_edits_them(client, staff, project):
    staff.is_superuser = True
    staff.save()
    client.force_login(staff)
    schedule = schedules.create(project, schedules.validate({"cron": "@hourly"}))
    fire = ScheduleFire.objects.create(schedule=schedule, due=timezone.now(), fired_at=timezone.now(),
                                       outcome="skipped", reason="schedule disabled")
    assert schedule.code in client.get("/admin/dashboard/schedule/").content.decode()
    assert "schedule disabled" in client.get("/admin/dashboard/schedulefire/").content.decode()
    assert client.get("/admin/dashboard/schedule/add/").status_code == 403
    response = client.post(f"/admin/dashboard/schedule/{schedule.pk}/change/", {"cron": "not a cron"})
    assert response.status_code == 403
    assert client.post(f"/admin/dashboard/schedulefire/{fire.pk}/change/", {"outcome": "launched"}).status_code == 403
    schedule.refresh_from_db()
    assert schedule.cron == "0 * * * *"
