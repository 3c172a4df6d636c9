"""Schedules: cron, time zone and policies, and the step the active conductor runs each tick.

Cron expressions are parsed by ``cronsim`` (DST handled the way Debian cron does: a daily
02:30 in a zone that skips 02:30 fires at 03:00 that day; a repeated hour fires once).

The step (:func:`step`) takes ``now`` from the caller, so tests drive it with their own clock.
Each schedule row carries ``next_due``, the first fire not processed yet. A due schedule is
processed in one transaction that locks the row, checks that ``next_due`` is still what was read
(compare-and-set), inserts one ``ScheduleFire`` per due time (unique per schedule and due: the
claim) together with the crawl it launches, and moves ``next_due`` past ``now``. Two conductors
(or an active one and a standby taking over) therefore never fire the same due twice, and a due
not committed yet is still there for whoever runs next.
"""

import functools
import logging
import unicodedata
import zoneinfo
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import django_rq
from cronsim import CronSim, CronSimError
from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone
from redis.exceptions import RedisError
from rq import Worker

from crawler.definition import MAX_WORKERS
from dashboard import engine, jobs, quotas
from dashboard.models import Crawl, InvalidTransition, Schedule, ScheduleFire

log = logging.getLogger(__name__)

ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
CRON_MAX = 100
TIMEZONE_MAX = 64
MAX_RUNTIME_MAX = 30 * 86400
# A cron must fire within this horizon (Feb 29 of a leap year fires every 4 to 8 years).
NEVER_FIRES_HORIZON = timedelta(days=366 * 9)
# Missed fires recorded one by one after a long downtime; older ones are summed up in one reason.
BACKLOG_MAX = 100
MAX_PER_PROJECT = 50
FIELDS = ("cron", "timezone", "workers", "overlap", "catch_up", "max_runtime", "enabled")
DEFAULTS = {"timezone": "UTC", "workers": None, "overlap": Schedule.OVERLAP_SKIP,
            "catch_up": Schedule.CATCH_UP_ONCE, "max_runtime": None, "enabled": True}


class ScheduleError(ValueError):
    """Invalid schedule fields; ``errors`` maps each field to its messages."""

    def __init__(self, errors):
        self.errors = errors
        super().__init__("; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in errors.items()))


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def clean_cron(value):
    """The five-field expression for ``value`` (aliases expanded); ValueError names the problem."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("Give a cron expression: five fields (minute hour day month weekday) or @hourly, "
                         "@daily, @weekly, @monthly.")
    if len(value) > CRON_MAX:
        raise ValueError(f"The cron expression is {len(value)} characters long; at most {CRON_MAX} are allowed.")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in value.strip()):
        raise ValueError("The cron expression may not contain control characters.")
    expr = " ".join(value.split())
    if expr.startswith("@"):
        if expr.lower() not in ALIASES:
            raise ValueError(f"Unknown shortcut {expr[:20]!r}: use one of {', '.join(ALIASES)}.")
        return ALIASES[expr.lower()]
    if len(expr.split()) != 5:
        raise ValueError(f"A cron expression has 5 fields (minute hour day month weekday); this one has "
                         f"{len(expr.split())}.")
    start = datetime(2026, 1, 1, tzinfo=dt_timezone.utc)
    try:
        first = next(CronSim(expr, start))
    except (CronSimError, StopIteration) as exc:
        raise ValueError(f"Invalid cron expression {expr!r}: {exc or 'it never fires'}.") from None
    except Exception:  # cronsim raises plain errors on some malformed fields
        raise ValueError(f"Invalid cron expression {expr!r}.") from None
    if first - start > NEVER_FIRES_HORIZON:
        raise ValueError(f"The cron expression {expr!r} never fires (no fire time in the next 9 years).")
    return expr


@functools.cache
def _zones():
    # Read once per process (scanning tzdata takes tens of ms); "localtime" is the machine's own.
    return frozenset(zoneinfo.available_timezones()) - {"localtime"}


def timezone_names():
    """Every IANA zone name, sorted (the form's suggestions)."""
    return sorted(_zones())


def clean_timezone(value):
    if not isinstance(value, str) or not value:
        raise ValueError("Give a time zone such as \"UTC\" or \"Europe/Berlin\".")
    if len(value) > TIMEZONE_MAX or value not in _zones():
        raise ValueError(f"Unknown time zone {value[:TIMEZONE_MAX]!r}: use an IANA name such as "
                         "\"UTC\" or \"Europe/Berlin\".")
    return value


def validate(data, current=None):
    """The one validator of a schedule (API and form): returns the cleaned fields, or raises
    ScheduleError naming each bad field. With ``current`` (a Schedule), absent fields keep their
    value; else they take their defaults (``cron`` is required)."""
    if not isinstance(data, dict):
        raise ScheduleError({"__all__": ["A schedule must be a JSON object."]})
    errors = {}
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        errors["__all__"] = [f"Unknown field(s): {', '.join(str(u)[:40] for u in unknown[:10])}."]
    base = {f: getattr(current, f) for f in FIELDS} if current is not None else dict(DEFAULTS)
    merged = {**base, **{k: v for k, v in data.items() if k in FIELDS}}
    cleaned = {}

    def check(field, clean):
        try:
            cleaned[field] = clean(merged.get(field))
        except ValueError as exc:
            errors[field] = [str(exc)]

    check("cron", clean_cron)
    check("timezone", clean_timezone)
    check("workers", _clean_workers)
    check("overlap", _choice(Schedule.OVERLAP_CHOICES, "overlap"))
    check("catch_up", _choice(Schedule.CATCH_UP_CHOICES, "catch_up"))
    check("max_runtime", _clean_max_runtime)
    check("enabled", _clean_bool)
    if errors:
        raise ScheduleError(errors)
    return cleaned


def _clean_workers(value):
    if value is None:
        return None
    if not _is_int(value) or not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"workers must be a whole number from 1 to {MAX_WORKERS} (or null for the definition's).")
    return value


def _clean_max_runtime(value):
    if value is None or value == 0:
        return None
    if not _is_int(value) or not 1 <= value <= MAX_RUNTIME_MAX:
        raise ValueError(f"max_runtime must be a whole number of seconds from 1 to {MAX_RUNTIME_MAX} "
                         "(or null for no limit).")
    return value


def _clean_bool(value):
    if not isinstance(value, bool):
        raise ValueError("enabled must be true or false.")
    return value


def _choice(choices, field):
    names = [name for name, _label in choices]

    def clean(value):
        if value not in names:
            raise ValueError(f"Unknown {field} policy {str(value)[:40]!r}: use one of {', '.join(names)}.")
        return value

    return clean


# -- fire times ------------------------------------------------------------------------------------


def fire_times(cron, tz, after, count=None, until=None):
    """Fire times of ``cron`` in zone ``tz`` strictly after ``after`` (aware), as aware datetimes in
    that zone: the next ``count`` of them, or all up to ``until`` inclusive."""
    zone = zoneinfo.ZoneInfo(tz)
    found = []
    last_utc = after.astimezone(dt_timezone.utc)
    for moment in CronSim(cron, after.astimezone(zone)):
        moment_utc = moment.astimezone(dt_timezone.utc)
        if moment_utc <= last_utc:
            continue  # never go back (a repeated hour seen from its second pass)
        if until is not None and moment_utc > until:
            break
        found.append(moment)
        last_utc = moment_utc
        if count is not None and len(found) >= count:
            break
        if len(found) > BACKLOG_MAX * 100:
            break
    return found


def next_runs(schedule, now=None, count=5):
    return fire_times(schedule.cron, schedule.timezone, now or timezone.now(), count=count)


def first_due(cron, tz, now):
    """The first fire after ``now`` (UTC): the cursor of a new or edited schedule."""
    return fire_times(cron, tz, now, count=1)[0].astimezone(dt_timezone.utc)


def create(project, cleaned, now=None):
    """A new schedule of ``project``; ScheduleError past MAX_PER_PROJECT schedules."""
    now = now or timezone.now()
    if project.schedules.count() >= MAX_PER_PROJECT:
        raise ScheduleError({"__all__": [f"This project has {MAX_PER_PROJECT} schedules already, the most "
                                         "allowed: delete one first."]})
    return Schedule.objects.create(project=project, next_due=first_due(cleaned["cron"], cleaned["timezone"], now),
                                   **cleaned)


def update(schedule, cleaned, now=None):
    """Save new fields. A changed cron or zone starts from the next fire after now: past fires of
    the old expression are not caught up."""
    now = now or timezone.now()
    timing_changed = (cleaned["cron"], cleaned["timezone"]) != (schedule.cron, schedule.timezone)
    for field, value in cleaned.items():
        setattr(schedule, field, value)
    fields = list(cleaned) + ["updated_at"]
    if timing_changed:
        schedule.next_due = first_due(schedule.cron, schedule.timezone, now)
        fields.append("next_due")
    schedule.save(update_fields=fields)
    return schedule


def set_enabled(schedule, enabled):
    Schedule.objects.filter(pk=schedule.pk).update(enabled=enabled, updated_at=timezone.now())
    schedule.enabled = enabled


# -- the step ------------------------------------------------------------------------------------


def step(now):
    """Everything schedules need at ``now``: fire the due ones, start queued runs whose previous
    run ended, stop runs past their maximum run time. When nothing is due this is three indexed
    queries (schedules due, queued fires, scheduled runs with a maximum run time)."""
    fired = 0
    for schedule_id in Schedule.objects.filter(next_due__lte=now).order_by().values_list("pk", flat=True):
        try:
            fired += fire(schedule_id, now)
        except IntegrityError:
            log.info("schedule %s: fire claimed by another conductor", schedule_id)
        except (DatabaseError, RedisError):
            raise  # the conductor's loop retries the whole step next tick
        except Exception:
            # One broken schedule must not hold the others back; it stays due and is retried.
            log.exception("schedule %s could not be processed", schedule_id)
    start_queued(now)
    enforce_max_runtime(now)
    return fired


def _dues(schedule, now):
    """Due times from ``next_due`` to ``now`` (UTC), oldest first, at most BACKLOG_MAX, plus how many
    older ones were left out."""
    dues = [schedule.next_due] + [
        m.astimezone(dt_timezone.utc)
        for m in fire_times(schedule.cron, schedule.timezone, schedule.next_due, until=now, count=BACKLOG_MAX * 10)
    ]
    if dues[-1] < now and len(dues) >= BACKLOG_MAX * 10:
        # Down for very long: keep the most recent BACKLOG_MAX, found backwards from now.
        zone = zoneinfo.ZoneInfo(schedule.timezone)
        recent = []
        for moment in CronSim(schedule.cron, now.astimezone(zone) + timedelta(seconds=1), reverse=True):
            moment_utc = moment.astimezone(dt_timezone.utc)
            if moment_utc < schedule.next_due or len(recent) >= BACKLOG_MAX:
                break
            if not recent or moment_utc < recent[-1]:
                recent.append(moment_utc)
        return sorted(recent), len(dues)
    return dues[-BACKLOG_MAX:], max(0, len(dues) - BACKLOG_MAX)


def fire(schedule_id, now):
    """Process every due time of one schedule up to ``now``; returns the number of runs launched."""
    with transaction.atomic():
        schedule = (Schedule.objects.select_for_update(of=("self",)).select_related("project", "project__owner")
                    .filter(pk=schedule_id, next_due__lte=now).first())
        if schedule is None:
            return 0  # another conductor processed it since it was listed
        dues, left_out = _dues(schedule, now)
        launched = 0
        if not schedule.enabled:
            for due in dues:
                _record(schedule, due, now, ScheduleFire.SKIPPED, "schedule disabled")
        else:
            launched = _process(schedule, dues, left_out, now)
        following = fire_times(schedule.cron, schedule.timezone, max(now, dues[-1]), count=1)
        moved = Schedule.objects.filter(pk=schedule.pk, next_due=schedule.next_due).update(
            next_due=following[0].astimezone(dt_timezone.utc))
        if not moved:
            raise IntegrityError(f"schedule {schedule.code} moved on meanwhile")  # roll the claim back
    return launched


def _process(schedule, dues, left_out, now):
    """Launch, queue or skip each due time by the catch-up and overlap policies."""
    late = [d for d in dues if now - d > timedelta(seconds=settings.SCHEDULE_MISSED_AFTER)]
    on_time = [d for d in dues if d not in late]
    launched = 0
    for due in late:
        if schedule.catch_up == Schedule.CATCH_UP_SKIP:
            reason = "missed: the conductor was not running at the due time (catch-up policy: skip)"
        elif on_time or due != late[-1]:
            reason = "caught up: one run covers the fires missed while the conductor was not running"
        else:
            launched += _fire_one(schedule, due, now, caught_up=len(late) - 1 + left_out)
            continue
        if due == dues[0] and left_out:
            reason += f"; at least {left_out} earlier missed fire(s) are not listed"
        _record(schedule, due, now, ScheduleFire.SKIPPED, reason)
    for due in on_time:
        launched += _fire_one(schedule, due, now)
    return launched


def _record(schedule, due, now, outcome, reason="", crawl=None):
    ScheduleFire.objects.create(schedule=schedule, due=due, fired_at=now, outcome=outcome, reason=reason, crawl=crawl)


def _active_run(schedule):
    return schedule.crawls.filter(status__in=Crawl.ACTIVE).order_by("created_at").first()


def crawl_workers_listening():
    return Worker.count(queue=django_rq.get_queue(jobs.QUEUE))


def _fire_one(schedule, due, now, caught_up=0):
    """Launch, queue or skip one due time; the fire row is inserted in the caller's transaction."""
    previous = _active_run(schedule)
    if previous is not None and schedule.overlap != Schedule.OVERLAP_PARALLEL:
        if schedule.overlap == Schedule.OVERLAP_QUEUE:
            if not schedule.fires.filter(outcome=ScheduleFire.QUEUED).exists():
                _record(schedule, due, now, ScheduleFire.QUEUED,
                        f"queued: waits for run {previous.code} to end (overlap policy: queue)")
                return 0
            reason = f"overlap: run {previous.code} is still active and another fire already waits for it"
        else:
            reason = f"overlap: run {previous.code} is still active (overlap policy: skip)"
        _record(schedule, due, now, ScheduleFire.SKIPPED, reason)
        return 0
    crawl, reason = _launch(schedule)
    if crawl is None:
        _record(schedule, due, now, ScheduleFire.SKIPPED, reason)
        return 0
    if caught_up:
        reason = f"catch-up: this run covers {caught_up + 1} missed fires"
    _record(schedule, due, now, ScheduleFire.LAUNCHED, reason, crawl)
    log.info("schedule %s fired crawl %s (due %s)", schedule.code, crawl.code, due.isoformat())
    return 1


def _launch(schedule):
    """(crawl, "") or (None, why it was not launched). Runs inside the claiming transaction: the
    crawl starts after commit, so a claim that rolls back starts nothing."""
    try:
        if not crawl_workers_listening():
            return None, f"no RQ worker listening on queue '{jobs.QUEUE}': start `rq worker {jobs.QUEUE}`"
        with transaction.atomic():  # a savepoint: a refused launch leaves the claim intact
            crawl = engine.launch(schedule.project, workers=schedule.workers, trigger=Crawl.TRIGGER_SCHEDULE,
                                  schedule=schedule)
    except quotas.QuotaExceeded as exc:
        return None, f"cap reached: {exc}"
    except engine.LaunchError as exc:
        return None, f"not launched: {exc}"
    return crawl, ""


def start_queued(now):
    """Start each queued fire whose schedule has no active run any more."""
    for fire_id in ScheduleFire.objects.filter(outcome=ScheduleFire.QUEUED).order_by().values_list("pk", flat=True):
        with transaction.atomic():
            queued = (ScheduleFire.objects.select_for_update(of=("self",)).select_related("schedule__project__owner")
                      .filter(pk=fire_id, outcome=ScheduleFire.QUEUED).first())
            if queued is None:
                continue
            schedule = queued.schedule
            if not schedule.enabled:
                reason, crawl = "schedule disabled while the fire was queued", None
            elif _active_run(schedule) is not None:
                continue
            else:
                crawl, reason = _launch(schedule)
            outcome = ScheduleFire.LAUNCHED if crawl else ScheduleFire.SKIPPED
            if crawl:
                reason = f"started at {now:%Y-%m-%d %H:%M:%S} UTC, when the previous run ended (overlap policy: queue)"
            ScheduleFire.objects.filter(pk=queued.pk, outcome=ScheduleFire.QUEUED).update(
                outcome=outcome, reason=reason, crawl=crawl, fired_at=now)


def enforce_max_runtime(now):
    """Stop, the normal way (queue kept), every scheduled run past its schedule's max_runtime."""
    runs = (Crawl.objects.filter(schedule__max_runtime__isnull=False, started_at__isnull=False,
                                 status__in=Crawl.LIFECYCLE["stop"].sources)
            .order_by().values_list("pk", "started_at", "schedule__max_runtime"))
    for pk, started_at, limit in runs:
        if now - started_at < timedelta(seconds=limit):
            continue
        crawl = Crawl.objects.select_related("schedule", "project").get(pk=pk)
        try:
            engine.control(crawl, "stop")
        except InvalidTransition:
            continue  # its status changed meanwhile
        Crawl.objects.filter(pk=crawl.pk, status=Crawl.STOPPING).update(
            reason=f"Stopped by its schedule: maximum run time of {limit} s reached.")
        log.info("crawl %s stopped: max run time %s s of schedule %s", crawl.code, limit, crawl.schedule.code)
