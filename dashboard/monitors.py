"""Monitors: checks on a project's runs, and when they notify (docs/alerts.md).

Final monitors are checked when a run ends (:func:`on_run_end`, called once per end through the
``run_ended`` signal that ``Crawl._apply`` sends after commit); each run stores every result (``Crawl.checks``). The ``stalled``
monitor is live: the conductor calls :func:`watch_stall` for each crawl it has flagged as stalled
and :func:`on_recovered` when the flag clears. Each notification is claimed once by a unique key
(``Alert.key``): one per run end, one per stall, one per recovery.
"""

import logging

from django.core.exceptions import ValidationError
from django.db.models import Min
from django.dispatch import receiver
from django.utils import timezone

from dashboard import history, live, notify
from dashboard.models import Alert, Crawl, Monitor, run_ended

log = logging.getLogger(__name__)

# The threshold each kind takes: (name in the API, lowest, highest, what it means).
THRESHOLDS = {
    Monitor.ITEMS_MIN: ("min_items", 0, 10**12, "fewest items a run may end with"),
    Monitor.ITEMS_DROP: ("min_percent", 0, 100, "least % of the previous finished run's items"),
    Monitor.ERROR_RATE: ("max_percent", 0, 100, "most errors per 100 pages"),
    Monitor.FIELD_COVERAGE: ("min_percent", 0, 100, "least % of items with the field filled"),
    Monitor.INVALID_MAX: ("max_invalid", 0, 10**12, "most invalid items"),
    Monitor.STALLED: ("minutes", 0, 7 * 24 * 60, "minutes without progress while work is queued"),
}
WHOLE = (Monitor.ITEMS_MIN, Monitor.INVALID_MAX)


# -- validation --------------------------------------------------------------------------------


def clean_monitor(project, data):
    """``data`` as the fields of a new Monitor, or ValidationError ``{field: [messages]}``. The
    threshold is given under its kind's name (``min_items``, ``min_percent``...) or ``threshold``."""
    if not isinstance(data, dict):
        raise ValidationError({"__all__": ["The monitor must be a JSON object."]})
    kind = data.get("kind")
    if kind not in Monitor.KINDS:
        raise ValidationError({"kind": [f"Unknown kind {str(kind)[:40]!r}: use one of {', '.join(Monitor.KINDS)}."]})
    errors = {}
    clean = {"kind": kind, "field": "", "threshold": None}
    if kind in THRESHOLDS:
        name, low, high, meaning = THRESHOLDS[kind]
        value = data.get(name, data.get("threshold"))
        if value is None or value == "":
            errors[name] = [f"Missing: {kind} needs {name} ({meaning})."]
        else:
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    value = None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                errors[name] = ["Must be a number."]
            elif not low <= value <= high:
                errors[name] = [f"Must be between {low} and {high}."]
            elif kind in WHOLE and value != int(value):
                errors[name] = ["Must be a whole number."]
            else:
                clean["threshold"] = float(value)
    if kind == Monitor.FIELD_COVERAGE:
        field = data.get("field")
        known = live.crawl_fields(project.definition)
        if not isinstance(field, str) or not field.strip():
            errors["field"] = ["Name the field whose coverage is checked."]
        elif len(field) > 100:
            errors["field"] = ["At most 100 characters."]
        elif known and field not in known:
            errors["field"] = [f"The definition does not extract {field[:100]!r}; its fields are {', '.join(known)}."]
        else:
            clean["field"] = field.strip()
    if project.monitors.count() >= Monitor.MAX_PER_PROJECT:
        errors["__all__"] = [f"A project has at most {Monitor.MAX_PER_PROJECT} monitors."]
    if errors:
        raise ValidationError(errors)
    return clean


# -- checking a run that ended ------------------------------------------------------------------


def result(monitor, passed, value):
    out = {"id": monitor.public_id, "kind": monitor.kind, "passed": bool(passed), "value": value,
           "threshold": monitor.threshold if monitor.kind != Monitor.STATUS else "finished"}
    if monitor.field:
        out["field"] = monitor.field
    return out


def previous_finished(crawl):
    return (Crawl.objects.filter(project_id=crawl.project_id, status=Crawl.FINISHED, created_at__lt=crawl.created_at)
            .exclude(pk=crawl.pk).order_by("-created_at", "-id").first())


def check(crawl, action=None, monitors=None):
    """Every final monitor of the crawl's project against the crawl's recorded stats."""
    monitors = list(crawl.project.monitors.all() if monitors is None else monitors)
    stats = crawl.stats or {}
    items, pages, errors = (int(stats.get(n, 0) or 0) for n in ("items", "pages", "errors"))
    view = live.crawl_view(crawl, {})
    results = []
    for m in monitors:
        if m.kind == Monitor.STATUS:
            bad = crawl.status == Crawl.FAILED or action == "workers_lost"
            results.append(result(m, not bad, crawl.status if not bad or crawl.status == Crawl.FAILED
                                  else "stopped: workers lost"))
        elif m.kind == Monitor.ITEMS_MIN:
            results.append(result(m, items >= m.threshold, items))
        elif m.kind == Monitor.ITEMS_DROP:
            before = previous_finished(crawl)
            base = int((before.stats or {}).get("items", 0) or 0) if before else 0
            if not base:
                results.append(result(m, True, None))  # nothing to compare with
            else:
                percent = round(100.0 * items / base, 1)
                results.append(result(m, percent >= m.threshold, percent))
        elif m.kind == Monitor.ERROR_RATE:
            rate = round(100.0 * errors / pages, 1) if pages else (100.0 if errors else 0.0)
            results.append(result(m, rate <= m.threshold, rate))
        elif m.kind == Monitor.FIELD_COVERAGE:
            value = float(view["coverage"].get(m.field, 0.0))
            results.append(result(m, value >= m.threshold, value))
        elif m.kind == Monitor.INVALID_MAX:
            invalid = int(view.get("invalid", stats.get("invalid", 0)) or 0)
            results.append(result(m, invalid <= m.threshold, invalid))
        elif m.kind == Monitor.STALLED:
            stalls = Alert.objects.filter(crawl=crawl, event=Alert.RUN_STALLED).count()
            results.append(result(m, stalls == 0, stalls))
    return results


@receiver(run_ended, dispatch_uid="crawlsite-run-end")
def run_end_receiver(sender, crawl, action, **kwargs):
    """A run ended: first its history and final quality counts (``invalid``, ``replaced``), which
    the monitors read, then the monitors and their notifications."""
    try:
        history.record_run(crawl)
    except Exception:
        log.exception("crawl %s: its history could not be recorded; checking its monitors anyway", crawl.code)
    on_run_end(crawl, action)


def on_run_end(crawl, action=None):
    """A run ended (finished, failed, stopped, cancelled while paused): check its monitors, store
    the results on the run, and notify each channel that asks for it (every end, or only when a
    monitor failed). Runs once per end: the notification is claimed by the end's time."""
    crawl = Crawl.objects.select_related("project").get(pk=crawl.pk)
    results = check(crawl, action)
    Crawl.objects.filter(pk=crawl.pk).update(checks=results)
    crawl.checks = results
    failed = any(not r["passed"] for r in results)
    channels = [c for c in crawl.project.channels.all() if failed or c.always]
    if not channels:
        return results
    notify.announce(crawl.project, Alert.RUN_ENDED, f"ended:{crawl.code}:{crawl.status_changed_at.timestamp()}",
                    crawl=crawl, checks=results, channels=channels)
    return results


# -- live: stalls --------------------------------------------------------------------------------


def watch_stall(crawl, reading=None, now=None):
    """The conductor saw ``crawl`` stalled: notify once when it has been stalled for the shortest
    ``stalled`` monitor's minutes. Returns the alert when this call sent it."""
    if crawl.stalled_since is None:
        return None
    minutes = crawl.project.monitors.filter(kind=Monitor.STALLED).aggregate(m=Min("threshold"))["m"]
    if minutes is None:
        return None
    now = now or timezone.now()
    if (now - crawl.stalled_since).total_seconds() < minutes * 60:
        return None
    checks = [{"kind": Monitor.STALLED, "passed": False,
               "value": round((now - crawl.stalled_since).total_seconds() / 60, 2), "threshold": minutes}]
    return notify.announce(crawl.project, Alert.RUN_STALLED, stall_key(crawl.code, crawl.stalled_since), crawl=crawl,
                           checks=checks, reading=reading)


def on_recovered(crawl, stalled_since, reading=None):
    """The stalled flag cleared while the crawl runs: one ``run.recovered`` if the stall was
    notified."""
    if not Alert.objects.filter(key=stall_key(crawl.code, stalled_since)).exists():
        return None
    return notify.announce(crawl.project, Alert.RUN_RECOVERED, "recovered:" + stall_key(crawl.code, stalled_since),
                           crawl=crawl, reading=reading)


def stall_key(code, since):
    return f"stall:{code}:{since.timestamp()}"
