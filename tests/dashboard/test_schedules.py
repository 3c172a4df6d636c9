"""Schedules driven by a clock the tests control: due times, DST, catch-up, overlap policies,
skips with their reasons and max_runtime. Launches are real (Redis and RQ queue); no crawl
worker runs them, so runs stay active until a test ends them."""

import threading
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from zoneinfo import ZoneInfo

import django_rq
import pytest
from django.db import close_old_connections
from rq import Worker

from crawler import keys
from dashboard import jobs, schedules
from dashboard.models import Crawl, Project, ScheduleFire
from dashboard.redis import get_redis
from tests.dashboard.factories import project_for

pytestmark = pytest.mark.django_db(transaction=True)

UTC = dt_timezone.utc


def at(*args, tz="UTC"):
    return datetime(*args, tzinfo=ZoneInfo(tz)).astimezone(UTC)


@pytest.fixture
def listening():
    """A real RQ worker registration on queue ``crawls`` (its process is not needed: no test here
    runs a crawl), so launches are not skipped for want of a worker."""
    worker = Worker([django_rq.get_queue(jobs.QUEUE)], connection=get_redis(), name="schedules-test-listener")
    worker.register_birth()
    yield worker
    worker.register_death()


@pytest.fixture
def project(owner):
    return project_for(owner, "Shop", workers=1)


def make(project, cron, now, **fields):
    cleaned = schedules.validate({"cron": cron, **fields})
    return schedules.create(project, cleaned, now=now)


def fires(schedule):
    return list(schedule.fires.order_by("due").values_list("due", "outcome", "reason"))


def end_runs(schedule):
    Crawl.objects.filter(schedule=schedule).update(status=Crawl.FINISHED)


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alias,expr", [("@hourly", "0 * * * *"), ("@daily", "0 0 * * *"),
                                        ("@weekly", "0 0 * * 0"), ("@monthly", "0 0 1 * *"),
                                        (" 5  4 * * 1-5 ", "5 4 * * 1-5")])
def test_cron_aliases_and_spacing_are_normalized(alias, expr):
    assert schedules.clean_cron(alias) == expr


@pytest.mark.parametrize("cron,words", [
    ("0 0 30 2 *", "day-of-month"),  # Feb 30 never fires
    ("0 0 31 4,6,9,11 *", "day-of-month"),
    ("61 * * * *", "minute"),
    ("* * * *", "5 fields"),
    ("0 * * * * *", "5 fields"),  # no seconds field
    ("@sometimes", "Unknown shortcut"),
    ("", "Give a cron"),
    ("x" * 101, "at most 100"),
    ("0 0 * * *\x00", "control"),
])
def test_bad_cron_names_the_problem(cron, words):
    with pytest.raises(ValueError, match=words):
        schedules.clean_cron(cron)


def test_validate_names_every_bad_field():
    with pytest.raises(schedules.ScheduleError) as caught:
        schedules.validate({"cron": "0 0 30 2 *", "timezone": "Mars/Olympus", "workers": 0, "overlap": "maybe",
                            "catch_up": "all", "max_runtime": -5, "enabled": "yes", "colour": 1})
    assert set(caught.value.errors) == {"cron", "timezone", "workers", "overlap", "catch_up", "max_runtime",
                                        "enabled", "__all__"}


@pytest.mark.parametrize("workers", [65, 1.0, True, "2"])
def test_workers_must_be_a_whole_number_in_range(workers):
    with pytest.raises(schedules.ScheduleError) as caught:
        schedules.validate({"cron": "@daily", "workers": workers})
    assert list(caught.value.errors) == ["workers"]


def test_next_runs_are_in_the_schedule_zone(project):
    now = at(2026, 6, 1, 12, 0)
    schedule = make(project, "30 9 * * *", now, timezone="Asia/Tokyo")
    runs = schedules.next_runs(schedule, now=now)
    assert [r.isoformat() for r in runs[:2]] == ["2026-06-02T09:30:00+09:00", "2026-06-03T09:30:00+09:00"]
    assert len(runs) == 5


# -- due times and the claim ---------------------------------------------------------------------


def test_fires_once_at_its_due_time_and_not_before(project, listening):
    now = at(2026, 6, 1, 11, 59, 30)
    schedule = make(project, "0 12 * * *", now, overlap="parallel")
    assert schedules.step(at(2026, 6, 1, 11, 59, 59)) == 0
    assert schedules.step(at(2026, 6, 1, 12, 0, 0)) == 1
    assert schedules.step(at(2026, 6, 1, 12, 0, 1)) == 0  # processed already
    [(due, outcome, _reason)] = fires(schedule)
    assert due == at(2026, 6, 1, 12, 0) and outcome == ScheduleFire.LAUNCHED
    crawl = Crawl.objects.get(schedule=schedule)
    assert crawl.trigger == Crawl.TRIGGER_SCHEDULE and crawl.workers == 1
    schedule.refresh_from_db()
    assert schedule.next_due == at(2026, 6, 2, 12, 0)


def test_concurrent_steps_fire_each_due_once(project, listening):
    """Many threads stepping at the same instant (two conductors during a failover window):
    one claim wins, nothing is doubled."""
    now = at(2026, 6, 1, 11, 0)
    schedule = make(project, "0 * * * *", now, overlap="parallel")
    due = at(2026, 6, 1, 12, 0)
    errors = []

    def run():
        try:
            for _ in range(20):
                try:
                    schedules.step(due)
                    break
                except Exception as exc:  # a locked SQLite: retry like the conductor's next tick
                    errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [f[:2] for f in fires(schedule)] == [(due, ScheduleFire.LAUNCHED)]
    assert Crawl.objects.filter(schedule=schedule).count() == 1


def test_daily_0230_fires_once_on_the_day_dst_skips_it(project, listening):
    tz = "Europe/Berlin"  # 2026-03-29 02:00 -> 03:00
    schedule = make(project, "30 2 * * *", at(2026, 3, 28, 12, tz=tz), timezone=tz, overlap="parallel")
    clock = at(2026, 3, 28, 12, tz=tz)
    while clock <= at(2026, 3, 30, 12, tz=tz):
        schedules.step(clock)
        clock += timedelta(minutes=15)
    local = [d.astimezone(ZoneInfo(tz)).strftime("%m-%d %H:%M") for d, outcome, _ in fires(schedule)]
    assert local == ["03-29 03:00", "03-30 02:30"]
    assert Crawl.objects.filter(schedule=schedule).count() == 2


def test_daily_0230_fires_once_on_the_day_its_hour_repeats(project, listening):
    tz = "Europe/Berlin"  # 2026-10-25 03:00 -> 02:00: 02:30 happens twice
    schedule = make(project, "30 2 * * *", at(2026, 10, 24, 12, tz=tz), timezone=tz, overlap="parallel")
    clock = at(2026, 10, 24, 12, tz=tz)
    while clock <= at(2026, 10, 26, 12, tz=tz):
        schedules.step(clock)
        clock += timedelta(minutes=15)
    dues = [d for d, _o, _r in fires(schedule)]
    assert len(dues) == 2
    assert dues[0].astimezone(ZoneInfo(tz)).strftime("%m-%d %H:%M") == "10-25 02:30"


# -- catch-up --------------------------------------------------------------------------------------


def test_catch_up_once_runs_once_for_every_missed_fire(project, listening):
    schedule = make(project, "0 * * * *", at(2026, 6, 1, 8, 30), overlap="parallel", catch_up="once")
    assert schedules.step(at(2026, 6, 1, 12, 10)) == 1  # down from 08:30 to 12:10
    got = fires(schedule)
    assert [d.hour for d, _o, _r in got] == [9, 10, 11, 12]
    assert [o for _d, o, _r in got] == ["skipped", "skipped", "skipped", "launched"]
    assert all(r.startswith("caught up") for _d, _o, r in got[:3])
    assert "covers 4 missed fires" in got[3][2]
    assert Crawl.objects.filter(schedule=schedule).count() == 1


def test_catch_up_skip_records_missed_fires_and_runs_none(project, listening):
    schedule = make(project, "0 * * * *", at(2026, 6, 1, 8, 30), overlap="parallel", catch_up="skip")
    assert schedules.step(at(2026, 6, 1, 11, 10)) == 0
    got = fires(schedule)
    assert [o for _d, o, _r in got] == ["skipped"] * 3 and all(r.startswith("missed") for *_x, r in got)
    assert not Crawl.objects.filter(schedule=schedule).exists()
    schedule.refresh_from_db()
    assert schedule.next_due == at(2026, 6, 1, 12, 0)


def test_a_long_downtime_records_a_bounded_backlog(project, listening):
    schedule = make(project, "* * * * *", at(2026, 6, 1, 0, 0), catch_up="skip")
    schedules.step(at(2026, 6, 30, 0, 0))  # 29 days of minutes missed
    assert schedule.fires.count() == schedules.BACKLOG_MAX
    oldest = schedule.fires.order_by("due").first()
    assert "earlier missed fire(s) are not listed" in oldest.reason
    assert schedule.fires.order_by("-due").first().due == at(2026, 6, 30, 0, 0)


# -- overlap -------------------------------------------------------------------------------------


def test_overlap_skip_records_the_active_run(project, listening):
    schedule = make(project, "0 * * * *", at(2026, 6, 1, 8, 30))
    schedules.step(at(2026, 6, 1, 9, 0))
    first = Crawl.objects.get(schedule=schedule)
    schedules.step(at(2026, 6, 1, 10, 0))
    (_d, outcome, reason) = fires(schedule)[1]
    assert outcome == "skipped" and reason.startswith(f"overlap: run {first.code} is still active")
    end_runs(schedule)
    assert schedules.step(at(2026, 6, 1, 11, 0)) == 1


def test_overlap_queue_starts_when_the_previous_run_ends(project, listening):
    schedule = make(project, "0 * * * *", at(2026, 6, 1, 8, 30), overlap="queue")
    schedules.step(at(2026, 6, 1, 9, 0))
    schedules.step(at(2026, 6, 1, 10, 0))
    schedules.step(at(2026, 6, 1, 10, 30))
    assert [o for _d, o, _r in fires(schedule)] == ["launched", "queued"]
    schedules.step(at(2026, 6, 1, 11, 0))  # one waits already: this one is skipped
    assert fires(schedule)[2][1] == "skipped" and "already waits" in fires(schedule)[2][2]
    end_runs(schedule)
    schedules.step(at(2026, 6, 1, 11, 5))
    queued = schedule.fires.get(due=at(2026, 6, 1, 10, 0))
    assert queued.outcome == "launched" and queued.crawl.status in Crawl.ACTIVE
    assert queued.crawl.trigger == Crawl.TRIGGER_SCHEDULE


def test_overlap_parallel_launches_alongside(project, listening):
    schedule = make(project, "0 * * * *", at(2026, 6, 1, 8, 30), overlap="parallel")
    schedules.step(at(2026, 6, 1, 9, 0))
    schedules.step(at(2026, 6, 1, 10, 0))
    assert Crawl.objects.filter(schedule=schedule, status__in=Crawl.ACTIVE).count() == 2


# -- skips with reasons --------------------------------------------------------------------------


def test_disabled_schedule_records_its_fires_as_skipped(project, listening):
    schedule = make(project, "0 * * * *", at(2026, 6, 1, 8, 30), enabled=False)
    schedules.step(at(2026, 6, 1, 9, 0))
    assert fires(schedule) == [(at(2026, 6, 1, 9, 0), "skipped", "schedule disabled")]
    schedules.set_enabled(schedule, True)
    assert schedules.step(at(2026, 6, 1, 10, 0)) == 1


def test_no_rq_worker_listening_is_a_skip_with_its_reason(project):
    schedule = make(project, "0 * * * *", at(2026, 6, 1, 8, 30))
    schedules.step(at(2026, 6, 1, 9, 0))
    [(_d, outcome, reason)] = fires(schedule)
    assert outcome == "skipped" and reason.startswith("no RQ worker listening on queue 'crawls'")


def test_a_users_cap_is_a_skip_with_its_reason(project, listening, settings):
    settings.MAX_ACTIVE_CRAWLS_PER_USER = 1
    Crawl.objects.create(project=project, definition=project.definition, status=Crawl.RUNNING)
    schedule = make(project, "0 * * * *", at(2026, 6, 1, 8, 30))
    schedules.step(at(2026, 6, 1, 9, 0))
    [(_d, outcome, reason)] = fires(schedule)
    assert outcome == "skipped" and reason.startswith("cap reached") and "MAX_ACTIVE_CRAWLS_PER_USER" in reason
    assert not Crawl.objects.filter(schedule=schedule).exists()


# -- max_runtime ---------------------------------------------------------------------------------


def test_max_runtime_stops_the_run_the_normal_way(project, listening, redis_client):
    schedule = make(project, "0 * * * *", at(2026, 6, 1, 8, 30), max_runtime=600)
    schedules.step(at(2026, 6, 1, 9, 0))
    crawl = Crawl.objects.get(schedule=schedule)
    assert crawl.status == Crawl.RUNNING
    Crawl.objects.filter(pk=crawl.pk).update(started_at=at(2026, 6, 1, 9, 0))
    schedules.step(at(2026, 6, 1, 9, 9, 59))
    crawl.refresh_from_db()
    assert crawl.status == Crawl.RUNNING
    schedules.step(at(2026, 6, 1, 9, 10, 0))
    crawl.refresh_from_db()
    assert crawl.status == Crawl.STOPPING and "maximum run time of 600 s" in crawl.reason
    assert redis_client.get(keys.control(crawl.code)) == "stop"


def test_a_project_that_cannot_launch_is_a_skip_and_other_schedules_still_fire(project, owner, listening):
    broken = project_for(owner, "Broken")
    Project.objects.filter(pk=broken.pk).update(definition={"name": "Broken"})  # no start URLs any more
    bad = make(broken, "0 * * * *", at(2026, 6, 1, 8, 30))
    good = make(project, "0 * * * *", at(2026, 6, 1, 8, 30))
    assert schedules.step(at(2026, 6, 1, 9, 0)) == 1
    [(_d, outcome, reason)] = fires(bad)
    assert outcome == "skipped" and reason.startswith("not launched: The project's definition is invalid")
    assert fires(good)[0][1] == "launched"
