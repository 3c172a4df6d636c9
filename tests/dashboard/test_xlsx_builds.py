"""Excel exports built by an RQ job on the ``tasks`` queue (issue 11, "no limits"): a real
``rqworker tasks`` process builds the file, the page and the API offer it when it is ready."""

import json
import os
import stat
import time
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.db import transaction
from django.test import Client
from django.urls import reverse

from dashboard import exports, tasks, xlsx_builds
from dashboard.models import ApiToken, Crawl, Item
from tests.dashboard.test_exports import FIELDS, add_items, make_crawl, make_project, neutralised, read_xlsx, tricky_items
from tests.workers import start_task_workers

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def crawl(owner):
    crawl = make_crawl(make_project(owner))
    add_items(crawl, tricky_items())
    return crawl


@pytest.fixture
def api(client, owner):
    token = ApiToken.issue(owner)

    def get(path):
        return client.get(path, HTTP_AUTHORIZATION=f"Bearer {token}")

    return get


def run_task_workers(**env):
    """One burst `rqworker tasks` that works off the queue and exits."""
    [proc] = start_task_workers(1, **env)
    assert proc.wait(180) == 0


def body_of(response):
    return b"".join(response.streaming_content)


def expected_rows():
    return [
        [item["url"], neutralised(item["title"]), neutralised(item["body"]), json.dumps(item["tags"], ensure_ascii=False)]
        for item in tricky_items()
    ]


def check_workbook(body):
    [rows] = read_xlsx(body)
    assert rows[0] == ["url", *FIELDS]
    assert [[c if c is not None else "" for c in row] for row in rows[1:]] == expected_rows()


def test_api_answers_202_then_a_tasks_worker_builds_the_file_that_the_api_serves(api, crawl, settings):
    export_url = f"/api/crawls/{crawl.code}/export?format=xlsx"
    first = api(export_url)
    assert first.status_code == 202, first.content
    build = first.json()
    snapshot = exports.snapshot_max_id(crawl)
    status_url = f"/api/crawls/{crawl.code}/xlsx/{snapshot}"
    assert build == {"status": "preparing", "snapshot": snapshot, "only": None,
                     "detail": "Waiting for a free task worker…", "status_url": status_url, "file_url": f"{status_url}/file"}
    assert first["Location"] == status_url

    # Asking again reuses the build on its way; the job takes the code, the snapshot and the
    # filter (none) only.
    assert api(export_url).status_code == 202
    [job_id] = tasks.tasks_queue().get_job_ids()
    job = tasks.fetch(job_id)
    assert job.args == [crawl.code, snapshot, ""] and job.timeout == settings.XLSX_JOB_TIMEOUT
    assert api(status_url).json()["status"] == "preparing"
    not_yet = api(f"{status_url}/file")
    assert not_yet.status_code == 409 and "not ready" in not_yet.json()["detail"]

    run_task_workers()

    ready = api(status_url)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    download = api(f"{status_url}/file")
    assert download.status_code == 200
    assert download["Content-Disposition"] == f'attachment; filename="books-co-{crawl.code}.xlsx"'
    check_workbook(body_of(download))
    # Once ready, the export URL itself serves the file for the same items.
    again = api(export_url)
    assert again.status_code == 200 and again["Content-Type"].startswith("application/vnd.openxmlformats")

    path = xlsx_builds.path_for(crawl.code, snapshot)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_the_page_shows_preparing_then_offers_the_file(owner_client, crawl):
    items_page = owner_client.get(reverse("dashboard:crawl-items", args=[crawl.code])).content.decode()
    assert reverse("dashboard:crawl-xlsx-request", args=[crawl.code]) in items_page

    response = owner_client.post(reverse("dashboard:crawl-xlsx-request", args=[crawl.code]), follow=True)
    snapshot = exports.snapshot_max_id(crawl)
    page_url = reverse("dashboard:crawl-xlsx", args=[crawl.code, snapshot])
    assert response.redirect_chain[-1][0] == page_url
    html = response.content.decode()
    assert 'data-status="preparing"' in html and "js/xlsx_build.js" in html
    assert "<script>" not in html  # the poller is a static file: CSP allows no inline script
    status_url = reverse("dashboard:crawl-xlsx-status", args=[crawl.code, snapshot])
    assert f'data-status-url="{status_url}"' in html
    assert owner_client.get(status_url).json()["status"] == "preparing"

    # The old GET link leads to the same page, and starts nothing by itself.
    via_link = owner_client.get(reverse("dashboard:crawl-export", args=[crawl.code]) + "?format=xlsx")
    assert via_link.status_code == 302 and via_link["Location"] == page_url
    assert len(tasks.tasks_queue().get_job_ids()) == 1

    run_task_workers()

    state = owner_client.get(status_url).json()
    file_url = reverse("dashboard:crawl-xlsx-file", args=[crawl.code, snapshot])
    assert state["status"] == "ready" and state["file_url"] == file_url
    html = owner_client.get(page_url).content.decode()
    assert 'data-status="ready"' in html and f'href="{file_url}"' in html
    check_workbook(body_of(owner_client.get(file_url)))


def test_a_failed_build_says_why_without_internals_and_can_be_tried_again(owner_client, crawl, tmp_path):
    owner_client.post(reverse("dashboard:crawl-xlsx-request", args=[crawl.code]))
    snapshot = exports.snapshot_max_id(crawl)
    status_url = reverse("dashboard:crawl-xlsx-status", args=[crawl.code, snapshot])
    not_a_folder = tmp_path / "exports"
    not_a_folder.write_text("a file where the exports folder should be")

    run_task_workers(CRAWLSITE_EXPORTS_DIR=str(not_a_folder))

    state = owner_client.get(status_url).json()
    assert state["status"] == "failed"
    assert state["detail"].startswith("Building the Excel file failed (") and "operator's log" in state["detail"]
    assert str(tmp_path) not in state["detail"]
    page = owner_client.get(reverse("dashboard:crawl-xlsx", args=[crawl.code, snapshot])).content.decode()
    assert "Try again" in page

    owner_client.post(reverse("dashboard:crawl-xlsx-request", args=[crawl.code]))
    assert owner_client.get(status_url).json()["status"] == "preparing"
    run_task_workers()
    assert owner_client.get(status_url).json()["status"] == "ready"


def test_a_worker_writing_elsewhere_is_reported_as_a_misconfiguration(api, crawl, tmp_path):
    build = api(f"/api/crawls/{crawl.code}/export?format=xlsx").json()
    run_task_workers(CRAWLSITE_EXPORTS_DIR=str(tmp_path / "elsewhere"))
    state = api(build["status_url"]).json()
    assert state["status"] == "failed" and "CRAWLSITE_EXPORTS_DIR" in state["detail"]
    assert api(f"/api/crawls/{crawl.code}/export?format=xlsx").json()["status"] == "failed"  # no rebuild loop
    assert tasks.tasks_queue().get_job_ids() == []


def test_one_build_per_crawl_at_a_time(api, crawl):
    first = api(f"/api/crawls/{crawl.code}/export?format=xlsx").json()
    add_items(crawl, [{"url": "https://example.com/new", "title": "new"}])  # the crawl moved on
    second = api(f"/api/crawls/{crawl.code}/export?format=xlsx").json()
    assert second["snapshot"] == first["snapshot"] and second["status"] == "preparing"
    assert len(tasks.tasks_queue().get_job_ids()) == 1


def test_the_job_is_enqueued_only_once_the_transaction_commits(crawl):
    with transaction.atomic():
        xlsx_builds.request(crawl)
        assert tasks.tasks_queue().get_job_ids() == []
    assert len(tasks.tasks_queue().get_job_ids()) == 1


def test_expired_files_are_no_longer_offered_and_are_deleted(api, crawl, settings):
    snapshot = exports.snapshot_max_id(crawl)
    xlsx_builds.build(crawl.code, snapshot)  # the job's body, here: expiry is what is tested
    path = xlsx_builds.path_for(crawl.code, snapshot)
    part = path.parent / f".{crawl.code}-left.part"
    part.write_bytes(b"half a file")
    status_url = f"/api/crawls/{crawl.code}/xlsx/{snapshot}"
    assert api(status_url).json()["status"] == "ready"

    old = time.time() - settings.XLSX_EXPORT_TTL - 1
    os.utime(path, (old, old))
    assert api(status_url).status_code == 404
    assert api(f"{status_url}/file").status_code == 404
    assert xlsx_builds.prune() == 1 and not path.exists() and part.exists()  # a recent part may be in use
    ancient = time.time() - 2 * settings.XLSX_JOB_TIMEOUT - 1
    os.utime(part, (ancient, ancient))
    assert xlsx_builds.prune() == 1 and not part.exists()


# --- access and bad input ---------------------------------------------------------------------


def xlsx_urls(crawl, snapshot=1):
    args = [crawl.code, snapshot]
    return {
        "page": reverse("dashboard:crawl-xlsx", args=args),
        "status": reverse("dashboard:crawl-xlsx-status", args=args),
        "file": reverse("dashboard:crawl-xlsx-file", args=args),
        "api_export": f"/api/crawls/{crawl.code}/export?format=xlsx",
        "api_status": f"/api/crawls/{crawl.code}/xlsx/{snapshot}",
        "api_file": f"/api/crawls/{crawl.code}/xlsx/{snapshot}/file",
    }


def test_anonymous_users_get_nothing(client, crawl):
    urls = xlsx_urls(crawl)
    for name in ("page", "status", "file"):
        response = client.get(urls[name])
        assert response.status_code == 302 and "/accounts/login/" in response["Location"], name
    response = client.post(reverse("dashboard:crawl-xlsx-request", args=[crawl.code]))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    for name in ("api_export", "api_status", "api_file"):
        assert client.get(urls[name]).status_code == 401, name
    assert tasks.tasks_queue().get_job_ids() == []


def test_outsiders_get_404_even_for_a_ready_file(client, outsider, crawl):
    snapshot = exports.snapshot_max_id(crawl)
    xlsx_builds.build(crawl.code, snapshot)
    client.force_login(outsider)
    for name, url in xlsx_urls(crawl, snapshot).items():
        assert client.get(url).status_code == 404, name
    assert client.post(reverse("dashboard:crawl-xlsx-request", args=[crawl.code])).status_code == 404
    assert tasks.tasks_queue().get_job_ids() == []


def test_requesting_a_build_needs_post_and_a_csrf_token(owner, crawl):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(owner)
    url = reverse("dashboard:crawl-xlsx-request", args=[crawl.code])
    assert strict.post(url).status_code == 403
    assert strict.get(url).status_code == 405
    assert tasks.tasks_queue().get_job_ids() == []


@pytest.mark.parametrize("snapshot", ["abc", "-1", "1.5", "%2e%2e", "1%2F..%2F.."])
def test_bad_snapshots_are_refused(owner_client, api, crawl, snapshot):
    for path in (f"/crawls/{crawl.code}/xlsx/{snapshot}/status", f"/crawls/{crawl.code}/xlsx/{snapshot}/file"):
        assert owner_client.get(path).status_code == 404, path
    for path in (f"/api/crawls/{crawl.code}/xlsx/{snapshot}", f"/api/crawls/{crawl.code}/xlsx/{snapshot}/file"):
        response = api(path)
        assert response.status_code in (404, 422), (path, response.status_code)


def test_an_absurd_snapshot_number_is_just_not_there(owner_client, api, crawl):
    absurd = int("9" * 400)  # a file name longer than any file system allows
    url = reverse("dashboard:crawl-xlsx-status", args=[crawl.code, absurd])
    assert owner_client.get(url).json()["status"] == "missing"
    assert owner_client.get(reverse("dashboard:crawl-xlsx-file", args=[crawl.code, absurd])).status_code == 404
    response = api(f"/api/crawls/{crawl.code}/xlsx/{absurd}")
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "snapshot"


def test_the_projects_export_link_leads_to_the_excel_page_of_its_latest_finished_crawl(owner_client, crawl):
    response = owner_client.get(reverse("dashboard:project-export", args=[crawl.project.code]) + "?format=xlsx")
    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard:crawl-xlsx", args=[crawl.code, exports.snapshot_max_id(crawl)])
    assert tasks.tasks_queue().get_job_ids() == []  # a GET starts nothing


# --- filtered builds (only=invalid, only=new) ---------------------------------------------------


def keyed_items(crawl, rows):
    """Items with an item key (``ident``) and a validation mark: ``rows`` of (sku, invalid)."""
    start = crawl.items.count()
    Item.objects.bulk_create(
        Item(crawl=crawl, key=f"k{start + n}", url=f"https://example.com/{sku}", ident=sku, invalid=invalid,
             errors=["title: required"] if invalid else [],
             data={"url": f"https://example.com/{sku}", "title": f"={sku}" if invalid else sku})
        for n, (sku, invalid) in enumerate(rows))


@pytest.fixture
def two_runs(owner):
    """A finished run (a, b), then the run exported: a and c invalid, b, d and e valid; new: c, d, e."""
    project = make_project(owner)
    before = make_crawl(project)
    keyed_items(before, [("a", False), ("b", False)])
    crawl = make_crawl(project)
    Crawl.objects.filter(pk=before.pk).update(created_at=crawl.created_at - timedelta(hours=1))
    keyed_items(crawl, [("a", True), ("b", False), ("c", True), ("d", False), ("e", False)])
    return crawl


def titles(body):
    [rows] = read_xlsx(body)
    assert rows[0] == ["url", *FIELDS]
    return [row[1] for row in rows[1:]]


def test_filtered_builds_hold_exactly_their_items_and_never_stand_in_for_each_other(api, owner_client, two_runs):
    crawl = two_runs
    snapshot = exports.snapshot_max_id(crawl)
    xlsx_builds.build(crawl.code, snapshot)  # the file of every item is ready: no filtered request gets it
    # API: only=invalid; the filter is in the status, its URLs and the job id.
    first = api(f"/api/crawls/{crawl.code}/export?format=xlsx&only=invalid")
    assert first.status_code == 202, first.content
    invalid = first.json()
    assert invalid["only"] == "invalid" and invalid["snapshot"] == snapshot and invalid["status"] == "preparing"
    assert invalid["status_url"] == f"/api/crawls/{crawl.code}/xlsx/{snapshot}?only=invalid"
    assert invalid["file_url"] == f"/api/crawls/{crawl.code}/xlsx/{snapshot}/file?only=invalid"
    assert api(invalid["file_url"]).status_code == 409
    # The page: only=new, from the item browser's form.
    response = owner_client.post(reverse("dashboard:crawl-xlsx-request", args=[crawl.code]), {"only": "new"})
    page_url = reverse("dashboard:crawl-xlsx", args=[crawl.code, snapshot]) + "?only=new"
    assert response.status_code == 302 and response["Location"] == page_url
    page = owner_client.get(page_url).content.decode()
    assert "only the items new since the previous finished run" in page and 'name="only" value="new"' in page
    new_status = reverse("dashboard:crawl-xlsx-status", args=[crawl.code, snapshot]) + "?only=new"
    new_file = reverse("dashboard:crawl-xlsx-file", args=[crawl.code, snapshot]) + "?only=new"
    assert f'data-status-url="{new_status}"' in page and 'data-status="preparing"' in page
    assert owner_client.get(new_file).status_code == 404
    assert sorted(tasks.tasks_queue().get_job_ids()) == sorted(
        xlsx_builds.job_id(crawl.code, snapshot, only) for only in ("invalid", "new"))
    assert tasks.fetch(xlsx_builds.job_id(crawl.code, snapshot, "new")).args == [crawl.code, snapshot, "new"]

    run_task_workers()

    download = api(invalid["file_url"])
    assert download.status_code == 200
    assert download["Content-Disposition"] == f'attachment; filename="books-co-{crawl.code}-invalid.xlsx"'
    assert titles(body_of(download)) == ["'=a", "'=c"]  # exactly the invalid items, still neutralised
    assert owner_client.get(new_status).json() | {"detail": ""} == {
        "status": "ready", "snapshot": snapshot, "only": "new", "detail": "", "status_url": new_status,
        "file_url": new_file}
    assert titles(body_of(owner_client.get(new_file))) == ["'=c", "d", "e"]  # keys not in the previous run
    everything = api(f"/api/crawls/{crawl.code}/export?format=xlsx")
    assert everything.status_code == 200 and titles(body_of(everything)) == ["'=a", "b", "'=c", "d", "e"]
    again = api(f"/api/crawls/{crawl.code}/export?format=xlsx&only=new")
    assert again.status_code == 200 and titles(body_of(again)) == ["'=c", "d", "e"]
    assert again["Content-Disposition"].endswith(f'-{crawl.code}-new.xlsx"')


def test_a_ready_filtered_file_is_never_served_for_all_items(api, owner_client, two_runs):
    crawl = two_runs
    snapshot = exports.snapshot_max_id(crawl)
    for only in exports.ONLY:
        xlsx_builds.build(crawl.code, snapshot, only)
    assert api(f"/api/crawls/{crawl.code}/export?format=xlsx&only=invalid").status_code == 200
    plain = api(f"/api/crawls/{crawl.code}/export?format=xlsx")
    assert plain.status_code == 202 and plain.json()["only"] is None
    assert owner_client.get(reverse("dashboard:crawl-xlsx-file", args=[crawl.code, snapshot])).status_code == 404
    assert api(f"/api/crawls/{crawl.code}/xlsx/{snapshot}/file").status_code == 409  # its own build is on its way
    [job_id] = tasks.tasks_queue().get_job_ids()
    assert job_id == xlsx_builds.job_id(crawl.code, snapshot)


@pytest.mark.parametrize("only", ["everything", "INVALID", "../../etc", "new ", "x" * 500])
def test_bad_filters_are_a_400_naming_the_valid_ones_and_start_nothing(api, owner_client, crawl, only):
    snapshot = exports.snapshot_max_id(crawl)
    xlsx_builds.build(crawl.code, snapshot)
    query = {"only": only}
    quoted = quote(only)
    responses = [
        api(f"/api/crawls/{crawl.code}/export?format=xlsx&only={quoted}"),
        api(f"/api/crawls/{crawl.code}/xlsx/{snapshot}?only={quoted}"),
        api(f"/api/crawls/{crawl.code}/xlsx/{snapshot}/file?only={quoted}"),
        owner_client.get(reverse("dashboard:crawl-export", args=[crawl.code]), {"format": "xlsx", **query}),
        owner_client.post(reverse("dashboard:crawl-xlsx-request", args=[crawl.code]), query),
        owner_client.get(reverse("dashboard:crawl-xlsx", args=[crawl.code, snapshot]), query),
        owner_client.get(reverse("dashboard:crawl-xlsx-status", args=[crawl.code, snapshot]), query),
        owner_client.get(reverse("dashboard:crawl-xlsx-file", args=[crawl.code, snapshot]), query),
    ]
    for response in responses:
        assert response.status_code == 400, (response.request["PATH_INFO"], response.status_code)
        body = response.json()
        assert "Valid filters: invalid, new." in body["detail"] and body["errors"]["only"] == [body["detail"]]
    assert tasks.tasks_queue().get_job_ids() == []
    files = [p.name for p in xlsx_builds.folder().iterdir() if p.name.startswith(crawl.code)]
    assert files == [f"{crawl.code}-{snapshot}.xlsx"]


def test_a_filter_outside_the_known_ones_never_reaches_a_file_name(crawl):
    with pytest.raises(ValueError):
        xlsx_builds.path_for(crawl.code, 1, "../x")
    with pytest.raises(ValueError):
        xlsx_builds.build(crawl.code, 1, "../x")


def test_filtered_builds_are_for_the_owner_only(client, outsider, owner, crawl):
    snapshot = exports.snapshot_max_id(crawl)
    for only in exports.ONLY:
        xlsx_builds.build(crawl.code, snapshot, only)
    urls = [url + "?only=invalid" for url in xlsx_urls(crawl, snapshot).values() if "?" not in url]
    urls += [f"/api/crawls/{crawl.code}/export?format=xlsx&only=new",
             reverse("dashboard:crawl-export", args=[crawl.code]) + "?format=xlsx&only=invalid"]
    for name, status in (("anonymous", (302, 401)), ("outsider", (404,))):
        if name == "outsider":
            client.force_login(outsider)
        for url in urls:
            response = client.get(url, HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(outsider)}") if (
                name == "outsider" and url.startswith("/api/")) else client.get(url)
            assert response.status_code in status, (name, url, response.status_code)
        posted = client.post(reverse("dashboard:crawl-xlsx-request", args=[crawl.code]), {"only": "invalid"})
        assert posted.status_code in status
    assert tasks.tasks_queue().get_job_ids() == []
