"""Per-user caps (issue 11, "no limits"): active crawls and workers, at launch, resume and scale,
through the API, the pages and the management commands."""

import threading
import time

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError, connections
from django.urls import reverse

from dashboard import engine, quotas
from dashboard.models import Crawl
from tests.dashboard.factories import project_for
from tests.dashboard.test_engine import conduct_until_done, make_project
from tests.dashboard.test_engine import site  # noqa: F401 - fixture
from tests.workers import start_rq_workers

pytestmark = pytest.mark.django_db(transaction=True)


def launch_url(project):
    return f"/api/projects/{project.code}/crawls"


def api_launch(client, project, **payload):
    return client.post(launch_url(project), payload or None, content_type="application/json")


def page_messages(response):
    return [str(m) for m in response.context["messages"]] if response.context else []


def test_launch_at_the_crawl_cap_is_refused_everywhere_and_allowed_again_once_a_crawl_ends(
        owner, owner_client, site, settings):
    settings.MAX_ACTIVE_CRAWLS_PER_USER = 1
    project = make_project(owner, site)
    first = api_launch(owner_client, project, workers=1)
    assert first.status_code == 201, first.content

    refused = api_launch(owner_client, project)
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert "1 active crawl" in detail and "cap is 1" in detail and "MAX_ACTIVE_CRAWLS_PER_USER" in detail

    page = owner_client.post(reverse("dashboard:project-launch", args=[project.code]), follow=True)
    assert page.redirect_chain[-1][0] == project.get_absolute_url()
    assert any("cap is 1" in m for m in page_messages(page))

    with pytest.raises(CommandError, match="cap is 1"):
        call_command("crawl", str(project.code))
    assert Crawl.objects.count() == 1  # nothing was created half-way

    # The first crawl runs to its end for real; then a launch is allowed again.
    crawl = Crawl.objects.get(code=first.json()["code"])
    procs = start_rq_workers(1)
    try:
        conduct_until_done([crawl])
    finally:
        for proc in procs:
            proc.wait(90)
    assert crawl.status == Crawl.FINISHED
    again = api_launch(owner_client, project)
    assert again.status_code == 201, again.content


def test_worker_cap_refuses_a_launch_and_a_scale_up_but_not_a_scale_down(owner, owner_client, settings):
    settings.MAX_WORKERS_PER_USER = 3
    project = project_for(owner)
    launched = api_launch(owner_client, project, workers=2)
    assert launched.status_code == 201, launched.content
    code = launched.json()["code"]

    too_many = api_launch(owner_client, project_for(owner, name="Other"), workers=2)
    assert too_many.status_code == 409
    assert "would make 4 workers in use" in too_many.json()["detail"]
    assert "already use 2" in too_many.json()["detail"] and "cap is 3" in too_many.json()["detail"]

    scale_url = f"/api/crawls/{code}/scale"
    assert owner_client.post(scale_url, {"workers": 3}, content_type="application/json").status_code == 200
    refused = owner_client.post(scale_url, {"workers": 4}, content_type="application/json")
    assert refused.status_code == 409
    assert "Scaling to 4 workers" in refused.json()["detail"] and "MAX_WORKERS_PER_USER" in refused.json()["detail"]
    assert Crawl.objects.get(code=code).workers == 3

    page = owner_client.post(reverse("dashboard:crawl-control", args=[code, "scale"]), {"workers": "5"}, follow=True)
    assert any("cap is 3" in m for m in page_messages(page))
    with pytest.raises(CommandError, match="cap is 3"):
        call_command("crawlctl", code, "scale", "6")
    assert Crawl.objects.get(code=code).workers == 3

    down = owner_client.post(scale_url, {"workers": 1}, content_type="application/json")
    assert down.status_code == 200 and down.json()["workers"] == 1


def test_resuming_a_stopped_crawl_counts_against_the_caps(owner, owner_client, settings):
    settings.MAX_ACTIVE_CRAWLS_PER_USER = 1
    stopped = engine.launch(project_for(owner))
    Crawl.objects.filter(pk=stopped.pk).update(status=Crawl.STOPPED)  # as if its workers had drained
    running = api_launch(owner_client, project_for(owner, name="Second"))
    assert running.status_code == 201

    refused = owner_client.post(f"/api/crawls/{stopped.code}/resume")
    assert refused.status_code == 409 and "cap is 1" in refused.json()["detail"]
    assert Crawl.objects.get(pk=stopped.pk).status == Crawl.STOPPED


def test_caps_are_per_user(owner, outsider, client, settings):
    settings.MAX_ACTIVE_CRAWLS_PER_USER = 1
    settings.MAX_WORKERS_PER_USER = 2
    engine.launch(project_for(owner), workers=2)
    with pytest.raises(quotas.QuotaExceeded):
        engine.launch(project_for(owner, name="Again"))
    client.force_login(outsider)
    response = api_launch(client, project_for(outsider), workers=2)
    assert response.status_code == 201, response.content


def test_zero_means_no_cap(owner, settings):
    settings.MAX_ACTIVE_CRAWLS_PER_USER = 0
    settings.MAX_WORKERS_PER_USER = 0
    for n in range(3):
        engine.launch(project_for(owner, name=f"p{n}"), workers=30)
    assert Crawl.objects.active().count() == 3


def test_two_launches_at_once_cannot_both_pass_the_cap(owner, settings):
    settings.MAX_ACTIVE_CRAWLS_PER_USER = 1
    projects = [project_for(owner, name=f"race{n}") for n in range(2)]
    barrier = threading.Barrier(2)
    outcomes = []

    def created(project):
        for _attempt in range(200):
            time.sleep(0.05)
            try:
                return Crawl.objects.filter(project=project).exists()
            except OperationalError:
                continue  # a writer holds the table: look again
        raise AssertionError("the test database stayed locked")

    def launch(project):
        barrier.wait(30)
        try:
            for _attempt in range(200):
                try:
                    engine.launch(project)
                    outcomes.append("launched")
                    return
                except quotas.QuotaExceeded:
                    outcomes.append("refused")
                    return
                except OperationalError as exc:
                    # SQLite's in-memory test database refuses a second writer at once where a
                    # file database would wait: try again, as a client would, unless the crawl
                    # was created and only its start-up met the lock.
                    assert "locked" in str(exc)
                    if created(project):
                        outcomes.append("launched")
                        return
            outcomes.append("gave up")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=launch, args=(p,)) for p in projects]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["launched", "refused"]
    assert Crawl.objects.active().count() == 1


def test_two_scale_ups_at_once_cannot_both_pass_the_worker_cap(owner, settings, monkeypatch):
    settings.MAX_WORKERS_PER_USER = 4
    crawls = [engine.launch(project_for(owner, name=f"grow{n}"), workers=1) for n in range(2)]
    barrier = threading.Barrier(2)
    outcomes = []
    passed, second_passed = [], threading.Event()
    check_scale = quotas.check_scale

    def check_then_linger(crawl, workers):
        # Widen the race: the first scale-up to pass the check lingers before storing its new
        # count, until the other one has passed too (which the owner's lock must prevent).
        check_scale(crawl, workers)
        passed.append(crawl.code)
        if len(passed) == 1:
            second_passed.wait(3)
        else:
            second_passed.set()

    monkeypatch.setattr(quotas, "check_scale", check_then_linger)

    def scale(crawl):
        barrier.wait(30)
        try:
            for _attempt in range(200):
                try:
                    engine.scale(crawl, 3)
                    outcomes.append("scaled")
                    return
                except quotas.QuotaExceeded:
                    outcomes.append("refused")
                    return
                except OperationalError as exc:
                    assert "locked" in str(exc)  # SQLite's test database refuses a second writer: retry
                    time.sleep(0.05)
                    if Crawl.objects.get(pk=crawl.pk).workers == 3:
                        outcomes.append("scaled")
                        return
            outcomes.append("gave up")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=scale, args=(c,)) for c in crawls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["refused", "scaled"]
    assert sum(Crawl.objects.active().values_list("workers", flat=True)) == 4


def test_the_project_page_shows_the_use_next_to_each_cap(owner, owner_client, settings):
    settings.MAX_ACTIVE_CRAWLS_PER_USER = 4
    settings.MAX_WORKERS_PER_USER = 0
    project = project_for(owner)
    engine.launch(project, workers=3)
    html = owner_client.get(project.get_absolute_url()).content.decode()
    assert "Your active crawls: 1 of 4 · workers in use: 3</p>" in html
