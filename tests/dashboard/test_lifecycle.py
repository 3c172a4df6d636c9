"""The crawl lifecycle (issue 12): one table, compare-and-set transitions, bounded transient
states, force stop and the stalled flag.

Workers are simulated in the test's Redis with the crawler's own code, exactly as a real worker
writes them: ``WorkerStats.tick`` (worker state, heartbeat, counters) and ``RequestQueue.pop_many``
(leases). The conductor is the real one, driven step by step: observe, then apply.
"""

import json
import re
import time

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from crawler import keys, state
from crawler.extensions import WorkerStats
from crawler.queue import RequestQueue
from dashboard import engine, jobs
from dashboard.conductor import Conductor
from dashboard.models import ApiToken, Crawl, InvalidTransition
from tests.dashboard.factories import project_for

pytestmark = pytest.mark.django_db(transaction=True)

SITE = "http://127.0.0.1:9"
STATUSES = [s for s, _label in Crawl.STATUS_CHOICES]
USER_ACTIONS = ["pause", "resume", "stop", "force_stop", "cancel", "scale"]

# The lifecycle as docs/operations.md states it, written out independently of Crawl.LIFECYCLE:
# (action, from-status) -> to-status. Every pair not listed must be refused with a 409.
EXPECTED = {
    ("pause", "running"): "pausing",
    ("resume", "pausing"): "running",
    ("resume", "paused"): "running",
    ("resume", "stopped"): "running",
    ("stop", "running"): "stopping",
    ("stop", "pausing"): "stopping",
    ("stop", "paused"): "stopping",
    ("force_stop", "pausing"): "stopped",
    ("force_stop", "stopping"): "stopped",
    ("force_stop", "finishing"): "stopped",
    ("cancel", "paused"): "cancelled",
    ("cancel", "stopped"): "cancelled",
    ("scale", "running"): "running",
    ("scale", "pausing"): "pausing",
    ("scale", "paused"): "paused",
}
# Refusals that say more than "Cannot ACTION crawl CODE: it is STATUS."
SPECIAL_REFUSALS = {
    ("pause", "pausing"): "is already pausing",
    ("pause", "paused"): "is already paused",
    ("resume", "running"): "is already running",
    ("stop", "stopping"): "is already stopping",
    ("stop", "stopped"): "is already stopped",
    ("force_stop", "stopped"): "is already stopped",
    ("cancel", "running"): "pause or stop it before cancelling",
    ("cancel", "pausing"): "pause or stop it before cancelling",
    ("cancel", "stopping"): "or force stop it",
}


@pytest.fixture
def auth(owner):
    return {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(owner)}"}


def crawl_in(owner, status, redis, name="Shop", urls=3):
    """A crawl row in ``status`` whose Redis state was written by a real launch (``urls`` seeds)."""
    project = project_for(owner, name, start_urls=[f"{SITE}/p/{n}" for n in range(urls)])
    crawl = Crawl.objects.create(project=project, definition=project.definition, status=status, workers=1,
                                 launched_workers=1, started_at=timezone.now())
    state.launch(redis, crawl.code, crawl.definition)
    return crawl


def worker(redis, crawl, worker_id="w1", worker_state="running", pages=0):
    """Write one worker's state, heartbeat and counters the way a real worker does."""
    stats = WorkerStats(redis, crawl.code, worker_id, ttl=30)
    stats.state = worker_state
    if pages:
        stats.counts["pages"] = pages
    stats.tick()
    return stats


def api_post(client, crawl, action, auth, body=None):
    slug = action.replace("_", "-")
    return client.post(f"/api/crawls/{crawl.code}/{slug}", json.dumps(body or {}), content_type="application/json",
                       **auth)


def apply_action(crawl, action):
    if action == "scale":
        return engine.scale(crawl, 2)
    return engine.control(crawl, action)


# -- the table ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("action", USER_ACTIONS)
def test_every_action_from_every_status_gives_the_tables_outcome(owner, redis_client, client, auth, action, status):
    crawl = crawl_in(owner, status, redis_client)
    expected = EXPECTED.get((action, status))
    assert crawl.can(action) == (expected is not None)
    if expected is not None:
        response = (api_post(client, crawl, action, auth, {"workers": 2}) if action == "scale"
                    else api_post(client, crawl, action, auth))
        assert response.status_code == 200, response.content
        assert response.json()["status"] == expected
        crawl.refresh_from_db()
        assert crawl.status == expected
        if action == "scale":
            assert crawl.workers == 2
        return

    reason = SPECIAL_REFUSALS.get((action, status), f"Cannot {Crawl.LIFECYCLE[action].label.lower()} crawl "
                                                    f"{crawl.code}: it is {status}.")
    before = (status, redis_client.get(keys.control(crawl.code)), crawl.workers)
    # The model, the engine, the API and crawlctl refuse with the same reason and change nothing.
    assert reason in crawl.refusal(action)
    with pytest.raises(InvalidTransition, match=re.escape(reason)):
        apply_action(crawl, action)
    response = api_post(client, crawl, action, auth, {"workers": 2})
    assert response.status_code == 409, response.content
    assert reason in response.json()["detail"]
    with pytest.raises(CommandError, match=re.escape(reason)):
        call_command("crawlctl", crawl.code, action, *(["2"] if action == "scale" else []))
    crawl.refresh_from_db()
    assert (crawl.status, redis_client.get(keys.control(crawl.code)), crawl.workers) == before


@pytest.mark.parametrize("status", STATUSES)
def test_buttons_enabled_on_the_page_match_the_table(owner, client, redis_client, status):
    crawl = crawl_in(owner, status, redis_client)
    client.force_login(owner)
    html = client.get(crawl.get_absolute_url()).content.decode()
    found = re.findall(r'<button type="submit" class="btn[^"]*" data-action="(\w+)"\s+data-allowed="([^"]*)"', html)
    buttons = dict(found)
    # Every user action has a button, each knows the statuses the table allows it in ...
    assert sorted(buttons) == sorted(USER_ACTIONS)
    for action in USER_ACTIONS:
        assert set(buttons[action].split()) == {s for (a, s) in EXPECTED if a == action}
    # ... and the enabled ones are exactly the ones the table allows now.
    enabled = {a for a in USER_ACTIONS if re.search(rf'data-action="{a}"\s+data-allowed="[^"]*"\s*>', html)}
    assert enabled == {a for (a, s) in EXPECTED if s == status}


def test_crawlctl_applies_the_table_too(owner, redis_client, capsys):
    crawl = crawl_in(owner, Crawl.RUNNING, redis_client)
    call_command("crawlctl", crawl.code, "pause")
    assert "pausing" in capsys.readouterr().out
    call_command("crawlctl", crawl.code, "force_stop")
    crawl.refresh_from_db()
    assert crawl.status == Crawl.STOPPED
    with pytest.raises(CommandError, match="is already stopped"):
        call_command("crawlctl", crawl.code, "force_stop")
    with pytest.raises(CommandError):
        call_command("crawlctl", crawl.code, "explode")


def test_the_page_refuses_an_unknown_action_and_other_peoples_crawls(owner, outsider, client, redis_client):
    crawl = crawl_in(owner, Crawl.STOPPING, redis_client)
    client.force_login(outsider)
    assert client.post(f"/crawls/{crawl.code}/force-stop").status_code == 404
    client.force_login(owner)
    assert client.post(f"/crawls/{crawl.code}/force_stop").status_code == 404  # not a URL
    assert client.get(f"/crawls/{crawl.code}/force-stop").status_code == 405  # POST only
    crawl.refresh_from_db()
    assert crawl.status == Crawl.STOPPING


def test_force_stop_form_needs_a_csrf_token(owner, redis_client):
    from django.test import Client

    crawl = crawl_in(owner, Crawl.STOPPING, redis_client)
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.post(f"/crawls/{crawl.code}/force-stop").status_code == 403
    crawl.refresh_from_db()
    assert crawl.status == Crawl.STOPPING


# -- lost updates: a user's action between the conductor's observation and its write ------------


def test_resume_between_the_conductors_read_and_write_survives(owner, redis_client, client, auth):
    crawl = crawl_in(owner, Crawl.RUNNING, redis_client)
    engine.control(crawl, "pause")
    worker(redis_client, crawl, worker_state="paused")
    conductor = Conductor(redis=redis_client)
    seen = Crawl.objects.select_related("project").get(pk=crawl.pk)  # the conductor's read

    observation = conductor.observe(seen)
    assert observation.decision == "paused"  # every worker paused, nothing in flight
    response = api_post(client, crawl, "resume", auth)  # the user resumes meanwhile
    assert response.status_code == 200 and response.json()["status"] == "running"
    assert conductor.apply(observation) is False  # pausing -> paused no longer applies

    crawl.refresh_from_db()
    assert crawl.status == Crawl.RUNNING
    assert redis_client.get(keys.control(crawl.code)) == "run"
    conductor.tick()  # and the next tick watches it as running
    crawl.refresh_from_db()
    assert crawl.status == Crawl.RUNNING


def test_stop_between_the_conductors_read_and_begin_finishing_survives(owner, redis_client, client, auth, settings):
    settings.CRAWL_IDLE_GRACE = 0  # out of work counts at once
    crawl = crawl_in(owner, Crawl.RUNNING, redis_client)
    redis_client.delete(keys.queue(crawl.code))  # the work has run out
    worker(redis_client, crawl, worker_state="idle")
    conductor = Conductor(redis=redis_client)
    seen = Crawl.objects.select_related("project").get(pk=crawl.pk)

    observation = conductor.observe(seen)
    assert observation.decision == "finish"
    response = api_post(client, crawl, "stop", auth)
    assert response.status_code == 200 and response.json()["status"] == "stopping"
    assert conductor.apply(observation) is False

    crawl.refresh_from_db()
    assert crawl.status == Crawl.STOPPING
    assert redis_client.get(keys.control(crawl.code)) == "stop"  # never "finish"


def test_without_a_user_action_the_observation_applies(owner, redis_client):
    crawl = crawl_in(owner, Crawl.RUNNING, redis_client)
    engine.control(crawl, "pause")
    worker(redis_client, crawl, worker_state="paused")
    conductor = Conductor(redis=redis_client)
    observation = conductor.observe(Crawl.objects.select_related("project").get(pk=crawl.pk))
    assert conductor.apply(observation) is True
    crawl.refresh_from_db()
    assert crawl.status == Crawl.PAUSED


def test_an_action_decided_on_one_status_never_applies_to_another(owner, redis_client):
    """Resume of a stopped crawl relaunches workers; if the crawl became paused meanwhile (another
    user's tab, crawlctl), that decision must not apply: no second set of workers."""
    crawl = crawl_in(owner, Crawl.STOPPED, redis_client)
    Crawl.objects.filter(pk=crawl.pk).update(status=Crawl.PAUSED)  # behind this object's back
    with pytest.raises(InvalidTransition, match="changed meanwhile"):
        crawl.resume()
    crawl.refresh_from_db()
    assert crawl.status == Crawl.PAUSED and crawl.launched_workers == 1
    assert jobs.statuses(crawl.code, 2)["w2"] == "missing"


def test_the_admin_shows_a_crawl_but_cannot_save_it_back(staff, client, owner, redis_client):
    crawl = crawl_in(owner, Crawl.RUNNING, redis_client)
    staff.is_superuser = True
    staff.save()
    client.force_login(staff)
    url = f"/admin/dashboard/crawl/{crawl.pk}/change/"
    assert client.get(url).status_code == 200
    assert client.post(url, {"status": Crawl.FINISHED}).status_code == 403
    crawl.refresh_from_db()
    assert crawl.status == Crawl.RUNNING


# -- bounded transient states and force stop ------------------------------------------------------


def past_the_bound(crawl):
    """The crawl entered its status long ago (as if the bound had passed while we waited)."""
    Crawl.objects.filter(pk=crawl.pk).update(status_changed_at=timezone.now() - timezone.timedelta(hours=1))
    crawl.refresh_from_db()


def test_a_pause_stuck_on_held_leases_shows_the_holder_and_force_stop_works(owner, redis_client, client, auth):
    """The issue's hang: every worker paused with nothing in flight, yet one still holds 2 leases."""
    crawl = crawl_in(owner, Crawl.RUNNING, redis_client, urls=5)
    status, held = RequestQueue(redis_client, crawl.code, "w1").pop_many(count=2)
    assert status == "ok" and len(held) == 2
    engine.control(crawl, "pause")
    worker(redis_client, crawl, "w1", worker_state="paused")
    worker(redis_client, crawl, "w2", worker_state="paused")
    conductor = Conductor(redis=redis_client)
    conductor.tick()
    crawl.refresh_from_db()
    assert crawl.status == Crawl.PAUSING  # the held leases count as in flight

    # Within the bound nothing is shown; past it the API and the page say who holds what.
    assert client.get(f"/api/crawls/{crawl.code}", **auth).json()["overdue"] is None
    past_the_bound(crawl)
    conductor.tick()
    body = client.get(f"/api/crawls/{crawl.code}", **auth).json()
    assert body["status"] == "pausing"
    overdue = body["overdue"]
    assert overdue["status"] == "pausing" and overdue["bound"] == 60
    [holder] = [h for h in overdue["holders"] if h["leases"]]
    assert holder["worker"] == "w1" and holder["state"] == "paused" and holder["leases"] == 2
    assert "holds 2 leased request(s)" in holder["why"]
    assert holder["last_heartbeat"] is not None
    client.force_login(owner)
    html = client.get(crawl.get_absolute_url()).content.decode()
    assert "holds 2 leased request(s)" in html
    assert re.search(r'data-action="force_stop"\s+data-allowed="[^"]*"\s*>', html), "force stop is enabled"

    response = api_post(client, crawl, "force_stop", auth)
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "stopped" and response.json()["overdue"] is None
    counters = state.read_counters(redis_client, crawl.code)
    assert redis_client.hlen(keys.leases(crawl.code, "w1")) == 0
    assert counters["in_flight"] == 0 and counters["queued"] == 5  # the 2 leased requests are back
    assert counters["seen"] == 5  # dedupe kept
    assert redis_client.get(keys.control(crawl.code)) == "stop"
    assert {w["state"] for w in counters["workers"].values()} == {"gone"}
    crawl.refresh_from_db()
    assert crawl.stats["queued"] == 5 and "Force-stopped" in crawl.reason

    # Resume works: control back to run, fresh workers enqueued, nothing lost.
    response = api_post(client, crawl, "resume", auth)
    assert response.status_code == 200 and response.json()["status"] == "running"
    crawl.refresh_from_db()
    assert redis_client.get(keys.control(crawl.code)) == "run"
    assert jobs.statuses(crawl.code, crawl.launched_workers)["w2"] == "queued"
    assert redis_client.zcard(keys.queue(crawl.code)) == 5


@pytest.mark.parametrize("status,worker_state,why", [
    (Crawl.STOPPING, "running", "it is still running"),
    (Crawl.FINISHING, "idle", "it is still idle"),
])
def test_stopping_and_finishing_past_their_bound_show_holders_and_force_stop(owner, redis_client, client, auth,
                                                                             status, worker_state, why):
    crawl = crawl_in(owner, Crawl.RUNNING, redis_client)
    RequestQueue(redis_client, crawl.code, "w1").pop_many(count=1)
    worker(redis_client, crawl, "w1", worker_state=worker_state)
    Crawl.objects.filter(pk=crawl.pk).update(status=status)
    past_the_bound(crawl)
    Conductor(redis=redis_client).tick()
    crawl.refresh_from_db()
    assert crawl.status == status  # the worker is alive and working: no end by itself

    overdue = client.get(f"/api/crawls/{crawl.code}", **auth).json()["overdue"]
    assert overdue["status"] == status
    [holder] = overdue["holders"]
    assert holder["worker"] == "w1" and holder["leases"] == 1 and why in holder["why"]

    assert api_post(client, crawl, "force_stop", auth).json()["status"] == "stopped"
    assert redis_client.zcard(keys.queue(crawl.code)) == 3
    assert state.read_counters(redis_client, crawl.code)["in_flight"] == 0


def test_a_real_crawl_conductor_tick_publishes_the_overdue_holders(owner, redis_client):
    """The conductor's live update carries the same ``overdue`` as the API (one builder)."""
    from tests.dashboard.test_live import Recorder

    crawl = crawl_in(owner, Crawl.RUNNING, redis_client)
    RequestQueue(redis_client, crawl.code, "w1").pop_many(count=1)
    engine.control(crawl, "pause")
    worker(redis_client, crawl, "w1", worker_state="paused")
    past_the_bound(crawl)
    conductor = Conductor(redis=redis_client)
    conductor.live.broadcaster = recorder = Recorder()
    conductor.tick()
    update = json.loads(recorder.sent[0][1]["text"])
    assert update["type"] == "crawl.update" and update["status"] == "pausing"
    assert update["overdue"]["holders"][0]["leases"] == 1
    overview = json.loads(recorder.sent[1][1]["text"])
    assert overview["crawls"][0]["overdue"]["status"] == "pausing"


# -- stalled ----------------------------------------------------------------------------------------


def tick_until(conductor, predicate, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conductor.tick()
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_crawl_with_live_workers_and_no_pages_is_flagged_stalled_then_cleared(owner, redis_client, client, auth,
                                                                                settings):
    settings.CRAWL_STALL_AFTER = 0.3
    crawl = crawl_in(owner, Crawl.RUNNING, redis_client)
    stats = worker(redis_client, crawl, "w1", worker_state="running")
    conductor = Conductor(redis=redis_client)

    def stalled():
        crawl.refresh_from_db()
        return crawl.stalled_since is not None

    tick_until(conductor, stalled, "the stalled flag")
    assert "1 worker(s) alive but no page finished" in crawl.stalled_reason
    assert "3 request(s) queued" in crawl.stalled_reason
    body = client.get(f"/api/crawls/{crawl.code}", **auth).json()
    assert body["status"] == "running" and body["stalled"]["reason"] == crawl.stalled_reason
    client.force_login(owner)
    html = client.get(crawl.get_absolute_url()).content.decode()
    assert re.search(r'data-live="stalled"\s*>', html) and "no page finished" in html
    overview = client.get("/").content.decode()
    assert re.search(r'data-field="alert" title="[^"]*no page finished[^"]*"\s*>stalled<', overview)

    stats.counts["pages"] = 1  # a page finishes: progress resumes
    stats.tick()
    tick_until(conductor, lambda: not stalled(), "the flag to clear")
    assert crawl.stalled_reason == ""
    assert client.get(f"/api/crawls/{crawl.code}", **auth).json()["stalled"] is None


def test_a_crawl_whose_jobs_wait_for_a_free_rq_worker_is_stalled_with_that_reason(owner, redis_client, settings):
    settings.CRAWL_STALL_AFTER = 0.3
    crawl = engine.launch(project_for(owner, "Waiting"), workers=2)  # no RQ worker runs in this test
    conductor = Conductor(redis=redis_client)

    def stalled():
        crawl.refresh_from_db()
        return crawl.stalled_since is not None

    tick_until(conductor, stalled, "the stalled flag")
    assert "No RQ worker is free: 2 worker job(s) wait" in crawl.stalled_reason
    # A user's action clears the flag with the status change.
    engine.control(crawl, "stop")
    crawl.refresh_from_db()
    assert crawl.stalled_since is None and crawl.stalled_reason == ""


def test_a_stalled_flag_is_never_set_on_a_crawl_that_left_running(owner, redis_client):
    crawl = crawl_in(owner, Crawl.PAUSED, redis_client)
    assert crawl.flag_stalled("whatever") is False
    crawl.refresh_from_db()
    assert crawl.stalled_since is None


# -- structure: one overview query whatever the number of projects; no import cycle ---------------


def test_the_overview_costs_the_same_queries_for_2_or_8_projects(owner, client, redis_client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def overview_queries(projects):
        for n in range(projects - Crawl.objects.values("project").distinct().count()):
            crawl_in(owner, Crawl.RUNNING, redis_client, name=f"P{projects}-{n}")
        client.force_login(owner)
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/").status_code == 200
        return len(queries)

    assert overview_queries(2) == overview_queries(8)


def test_dashboard_modules_import_each_other_without_a_cycle():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "dashboard"
    graph = {}
    for path in root.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dashboard"):
                names = [f"dashboard.{a.name}" for a in node.names] if node.module == "dashboard" else [node.module]
                deps.update(n for n in names if (root / (n.split(".")[1] + ".py")).exists())
        graph[f"dashboard.{path.stem}"] = deps

    def walk(module, seen):
        for dep in graph.get(module, ()):
            assert dep not in seen, f"import cycle: {' -> '.join(seen + [dep])}"
            walk(dep, seen + [dep])

    for module in graph:
        walk(module, [module])
