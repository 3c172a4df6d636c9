"""Deployed Scrapy projects (issue 13), without crawling: uploads and their bad inputs, the
Scrapyd API's refusals, who may deploy and who sees what, a deleted version staying with its
crawl, and the worker's hash-checked cache. The end-to-end crawl is in test_deploy_crawl.py.

Uploads go through the real inspection subprocess (about a second each); rows that only need to
exist are made by tests.dashboard.factories.package_for.
"""

import base64
import io
import json
import os
import stat
import subprocess
import sys
import zipfile

import pytest
import redis as redis_lib
from django.conf import settings

from crawler import keys, packages
from crawler.settings import crawl_settings
from dashboard import engine
from dashboard.models import ApiToken, Crawl, Package, PackageVersion, Project
from tests.dashboard.deployed_project import write_project, zip_project
from tests.dashboard.factories import grant_deploy, package_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def project_zip(tmp_path):
    return zip_project(write_project(tmp_path / "shopbot"))


def bearer(user):
    return {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(user)}"}


def basic(user, secret=None):
    secret = ApiToken.issue(user) if secret is None else secret
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{user.username}:{secret}".encode()).decode()}


def upload(client, user, data, version="v1", name="shopbot"):
    return client.post(f"/api/packages/{name}/versions", {"version": version, "file": io.BytesIO(data)},
                       **bearer(user))


def scrapyd(client, user, endpoint, **params):
    return client.post(f"/scrapyd/{endpoint}", params, **basic(user))


def refused(response, status, field, *words):
    assert response.status_code == status, response.content[:500]
    body = response.json()
    message = " ".join(body["errors"][field]) if field else body.get("message", body.get("detail"))
    for word in words:
        assert word in message, message
    return message


def zipped(files):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buffer.getvalue()


# -- uploads ----------------------------------------------------------------------------------------


def test_a_zipped_project_upload_lists_its_spiders_and_keeps_its_bytes(client, staff, project_zip):
    response = upload(client, staff, project_zip)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["spiders"] == ["other", "shop"] and body["kind"] == "zip" and body["uploader"] == "staff"
    row = PackageVersion.objects.get(package__name="shopbot", version="v1")
    assert bytes(row.data) == project_zip and row.sha256 == packages.sha256(project_zip) == body["sha256"]
    assert row.settings_module == "shopbot.settings" and row.package.owner == staff
    listed = client.get("/api/packages", **bearer(staff)).json()
    assert [(p["name"], p["latest"], p["spiders"]) for p in listed] == [("shopbot", "v1", ["other", "shop"])]


def test_an_upload_that_is_not_a_zip_or_egg_is_refused(client, staff):
    refused(upload(client, staff, b"#!/bin/sh\necho hello\n"), 422, "file", "not a zip or egg")
    assert not Package.objects.exists()


def test_an_archive_without_a_scrapy_project_is_refused(client, staff):
    refused(upload(client, staff, zipped({"README.md": "hello", "src/app.py": "print(1)"})), 422, "file",
            "no Scrapy project", "scrapy.cfg")
    assert not Package.objects.exists()


@pytest.mark.parametrize("broken,error", [
    ("shopbot/settings.py", "RuntimeError: the settings cannot load"),
    ("shopbot/spiders/shop.py", "RuntimeError: the spider cannot load"),
])
def test_a_project_whose_settings_or_spiders_fail_to_import_shows_their_traceback(client, staff, tmp_path,
                                                                                  broken, error):
    folder = write_project(tmp_path / "shopbot")
    path = folder / broken
    path.write_text(path.read_text() + f"\nraise RuntimeError({error.split(': ')[1]!r})\n")
    message = refused(upload(client, staff, zip_project(folder)), 422, "file", "failed to import", error)
    assert "Traceback" in message and broken.split("/")[-1] in message
    assert not Package.objects.exists()


def test_an_upload_over_the_size_limit_is_refused(client, staff, project_zip):
    settings.CRAWLSITE_MAX_PACKAGE_BYTES, before = 1024, settings.CRAWLSITE_MAX_PACKAGE_BYTES
    try:
        refused(upload(client, staff, project_zip), 422, "file", "too large", "1024")
        refused(scrapyd(client, staff, "addversion.json", project="shopbot", version="v1",
                        egg=io.BytesIO(project_zip)), 400, None, "too large")
    finally:
        settings.CRAWLSITE_MAX_PACKAGE_BYTES = before
    assert not Package.objects.exists()


def test_an_existing_version_is_refused(client, staff, project_zip):
    package_for(staff, "shopbot", "v1")
    refused(upload(client, staff, project_zip, version="v1"), 422, "version", "already exists")
    refused(scrapyd(client, staff, "addversion.json", project="shopbot", version="v1", egg=io.BytesIO(project_zip)),
            400, None, "already exists")
    assert PackageVersion.objects.count() == 1


def test_unsafe_archives_are_refused_without_extracting_anything():
    with pytest.raises(packages.PackageError, match="unsafe file name"):
        packages.describe(zipped({"scrapy.cfg": "[settings]\ndefault = x.settings\n", "../evil.py": "boom"}))
    with pytest.raises(packages.PackageError, match="unpacks to"):  # a zip bomb: a megabyte of zeros
        packages.describe(zipped({"scrapy.cfg": "[settings]\ndefault = x.settings\n", "x/zeros": "0" * 2 ** 20}),
                          max_unpacked=64 * 1024)
    with pytest.raises(packages.PackageError, match="not a Python module path"):
        packages.describe(zipped({"scrapy.cfg": "[settings]\ndefault = ../../etc\n"}))


# -- scrapyd API: authentication and bad input --------------------------------------------------------


def test_the_scrapyd_api_needs_basic_auth_with_an_api_token(client, owner, outsider):
    response = client.get("/scrapyd/listprojects.json")
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Basic ")
    assert response.json()["status"] == "error"
    for headers in (basic(owner, "owner-pass-123"),  # the password is not a token
                    basic(owner, ApiToken.issue(outsider)),  # someone else's token
                    {"HTTP_AUTHORIZATION": "Basic !!!"}):
        assert client.get("/scrapyd/listprojects.json", **headers).status_code == 401
    ok = client.get("/scrapyd/daemonstatus.json", **basic(owner)).json()
    assert ok["status"] == "ok" and {"node_name", "pending", "running", "finished"} <= set(ok)
    assert client.get("/scrapyd/schedule.json", **basic(owner)).status_code == 405


def test_schedule_of_a_spider_that_does_not_exist_is_refused(client, owner):
    package_for(owner, "shopbot", "v1", spiders=["shop"])
    refused(scrapyd(client, owner, "schedule.json", project="shopbot", spider="nope"), 400, None,
            "spider 'nope' not found", "shop")
    assert not Crawl.objects.exists()


@pytest.mark.parametrize("params,words", [
    ({"bad-name": "1"}, ("spider.args.bad-name", "argument name")),
    ({"name": "x"}, ("spider.args.name", "reserved")),
    ({"setting": "DOWNLOAD_DELAY"}, ("NAME=VALUE",)),
    ({"setting": "DOWNLOAD_DELAY=soon"}, ("DOWNLOAD_DELAY", "not a number")),
    ({"setting": "SPIDER_MODULES=evil"}, ("settings.SPIDER_MODULES", "not allowed")),
    ({"_workers": "many"}, ("_workers",)),
    ({"_workers": "65"}, ("workers", "64")),
    ({"_version": "v9"}, ("no version 'v9'",)),
])
def test_malformed_schedule_arguments_are_refused(client, owner, params, words):
    package_for(owner, "shopbot", "v1", spiders=["shop"])
    refused(scrapyd(client, owner, "schedule.json", project="shopbot", spider="shop", **params), 400, None, *words)
    assert not Crawl.objects.exists()


# -- who may deploy, who sees what ---------------------------------------------------------------------


def test_users_without_the_deploy_permission_get_a_clear_403(client, owner, project_zip):
    refused(upload(client, owner, project_zip), 403, None, "'deploy' permission")
    refused(scrapyd(client, owner, "addversion.json", project="shopbot", version="v1", egg=io.BytesIO(project_zip)),
            403, None, "'deploy' permission")
    client.force_login(owner)
    page = client.post("/code/upload", {"package": "shopbot", "version": "v1", "file": io.BytesIO(project_zip)})
    assert page.status_code == 403 and "deploy" in page.content.decode()
    assert not Package.objects.exists()

    owner = grant_deploy(owner)  # as an administrator does in the admin
    client.force_login(owner)
    page = client.post("/code/upload", {"package": "shopbot", "version": "v1", "file": io.BytesIO(project_zip)})
    assert page.status_code == 302 and page["Location"] == "/code/shopbot/"
    detail = client.get("/code/shopbot/").content.decode()
    assert packages.sha256(project_zip)[:12] in detail and "shop" in detail and "owner" in detail


def test_other_users_see_nothing_of_a_package(client, owner, outsider):
    package_for(owner, "shopbot", "v1")
    assert client.get("/api/packages", **bearer(outsider)).json() == []
    assert client.get("/api/packages/shopbot", **bearer(outsider)).status_code == 404
    assert client.get("/scrapyd/listprojects.json", **basic(outsider)).json()["projects"] == []
    for endpoint in ("listversions.json", "listspiders.json", "listjobs.json"):
        response = client.get(f"/scrapyd/{endpoint}?project=shopbot", **basic(outsider))
        assert response.status_code == 404 and "not found" in response.json()["message"]
    client.force_login(outsider)
    assert "shopbot" not in client.get("/code/").content.decode()
    assert client.get("/code/shopbot/").status_code == 404
    assert PackageVersion.objects.count() == 1


def test_the_project_form_names_a_deployed_spider(client, owner):
    package_for(owner, "shopbot", "v1", spiders=["shop"])
    client.force_login(owner)
    form = {"name": "Books", "spider": "deployed:shopbot/shop", "spider_args": "category=books",
            "workers": "2", "max_depth": "0", "max_pages": "0", "max_items": "0", "max_duration": "0"}
    bad = client.post("/projects/new/", {**form, "spider_version": "v9"})
    assert bad.status_code == 200 and "has no version" in bad.content.decode()
    assert client.post("/projects/new/", form).status_code == 302
    project = Project.objects.get(owner=owner, name="Books")
    assert project.definition["spider"] == {"package": "shopbot", "spider": "shop", "version": "",
                                            "args": {"category": "books"}}
    assert project.definition["start_urls"] == []


# -- a deleted version, and the worker's cache ------------------------------------------------------------


def test_a_version_deleted_while_a_crawl_uses_it_stays_with_that_crawl(client, owner, redis_client, tmp_path,
                                                                       django_capture_on_commit_callbacks):
    data = b"the bytes of version v1"
    package_for(owner, "shopbot", "v1", spiders=["shop"], data=data)
    with django_capture_on_commit_callbacks(execute=True):  # the launch's start runs after commit
        crawl = engine.launch_deployed(owner, "shopbot", "shop", args={"label": "x"}, workers=1,
                                       trigger=Crawl.TRIGGER_SCRAPYD)
    crawl.refresh_from_db()
    assert crawl.status == Crawl.RUNNING, crawl.reason
    frozen = crawl.definition["operator"]["package"]
    assert frozen == {"name": "shopbot", "version": "v1", "sha256": packages.sha256(data)}

    assert scrapyd(client, owner, "delversion.json", project="shopbot", version="v1").json()["status"] == "ok"
    assert not PackageVersion.objects.exists() and not Package.objects.exists()
    binary = redis_lib.Redis.from_url(settings.REDIS_URL)
    file = packages.fetch(binary, crawl.code, frozen["sha256"], folder=tmp_path / "cache")
    assert file.read_bytes() == data  # what a worker of that crawl still gets
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o600
    refused(scrapyd(client, owner, "schedule.json", project="shopbot", spider="shop"), 404, None, "not found")
    client.force_login(owner)
    page = client.get(f"/crawls/{crawl.code}/").content.decode()  # the usual crawl page says what runs
    assert "shopbot" in page and "v1" in page and frozen["sha256"][:12] in page and "label=x" in page
    with django_capture_on_commit_callbacks(execute=True):
        assert crawl.fail("ended for good")  # a terminal crawl no longer needs its copy
    assert not redis_client.exists(keys.package(crawl.code, frozen["sha256"]))


def test_a_worker_refuses_code_that_does_not_match_its_hash(redis_client, tmp_path):
    digest = packages.sha256(b"the real code")
    redis_client.set(keys.package("abc123", digest), "tampered code")
    binary = redis_lib.Redis.from_url(settings.REDIS_URL)
    with pytest.raises(packages.PackageError, match="does not match its sha256"):
        packages.fetch(binary, "abc123", digest, folder=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_crawlsite_components_are_layered_on_the_project_settings(tmp_path):
    from scrapy.settings import Settings

    project = Settings()
    project.setdict({"BOT_NAME": "shopbot", "ITEM_PIPELINES": {"shopbot.pipelines.StampPipeline": 950},
                     "DOWNLOAD_HANDLERS": {"file": "scrapy.core.downloader.handlers.file.FileDownloadHandler"},
                     "SCHEDULER": "scrapy.core.scheduler.Scheduler"}, priority="project")
    definition = {"settings": {"DOWNLOAD_DELAY": 0.5}, "limits": {}}
    built = crawl_settings(definition, "abc123", "w1", "redis://127.0.0.1:1/0", project=project)
    pipelines = built.getdict("ITEM_PIPELINES")
    assert pipelines["shopbot.pipelines.StampPipeline"] == 950
    assert pipelines["crawler.pipelines.RedisItemPipeline"] > 950  # after the project's own
    assert built.get("BOT_NAME") == "shopbot" and built.getfloat("DOWNLOAD_DELAY") == 0.5
    assert built.get("SCHEDULER") == "crawler.scheduler.RedisScheduler"
    assert built.getdict("DOWNLOAD_HANDLERS")["file"] is None  # the network policy wins


def test_the_api_runs_a_deployed_spider_and_names_bad_fields(client, owner, django_capture_on_commit_callbacks):
    package_for(owner, "shopbot", "v1", spiders=["shop"])
    run = {"spider": "shop", "workers": 2, "args": {"category": "books"}, "settings": {"DOWNLOAD_DELAY": 0.5}}
    bad = client.post("/api/packages/shopbot/crawls", {**run, "args": {"bad-name": "1"}, "workers": 99},
                      content_type="application/json", **bearer(owner))
    assert bad.status_code == 422 and {"spider.args.bad-name", "workers"} <= set(bad.json()["errors"])
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/api/packages/shopbot/crawls", run, content_type="application/json", **bearer(owner))
    assert response.status_code == 201, response.content
    crawl = Crawl.objects.get(code=response.json()["code"])
    assert crawl.trigger == Crawl.TRIGGER_API and crawl.workers == 2
    assert crawl.definition["spider"]["args"] == {"category": "books"}
    assert crawl.definition["settings"] == {"DOWNLOAD_DELAY": 0.5}
    assert crawl.project.deployed_spider["package"] == "shopbot"


def test_a_worker_that_runs_no_deployed_code_refuses_it_and_says_why(redis_client):
    code = "nodeploy1"
    redis_client.set(keys.definition(code), json.dumps({
        "name": "x", "start_urls": [], "settings": {}, "limits": {},
        "spider": {"package": "shopbot", "spider": "shop", "version": "", "args": {}},
        "operator": {"package": {"name": "shopbot", "version": "v1", "sha256": "0" * 64}}}))
    done = subprocess.run([sys.executable, "-m", "crawler", "run", code, "--worker", "w1"], capture_output=True,
                          timeout=120, env=dict(os.environ, CRAWLSITE_DEPLOYED_CODE="0"))
    assert done.returncode == 1
    state = json.loads(redis_client.hget(keys.workers(code), "w1"))
    assert state["state"] == "failed" and "does not run deployed code" in state["message"]


def test_run_on_the_code_page_opens_the_usual_crawl_page(client, owner, django_capture_on_commit_callbacks):
    package_for(owner, "shopbot", "v1", spiders=["shop"])
    client.force_login(owner)
    bad = client.post("/code/shopbot/run", {"spider": "shop", "workers": "1", "args": "no equals sign"}, follow=True)
    assert "write it as “name=value”" in bad.content.decode() and not Crawl.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/code/shopbot/run", {"spider": "shop", "version": "v1", "workers": "2",
                                                      "args": "label=x"})
    crawl = Crawl.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/crawls/{crawl.code}/"
    assert crawl.trigger == Crawl.TRIGGER_USER and crawl.workers == 2
    assert crawl.definition["operator"]["package"]["version"] == "v1"
    assert crawl.definition["spider"]["args"] == {"label": "x"}


def test_listing_spiders_is_bounded_in_time(tmp_path):
    folder = write_project(tmp_path / "shopbot")
    settings_file = folder / "shopbot" / "settings.py"
    settings_file.write_text("import time\ntime.sleep(600)\n" + settings_file.read_text())
    with pytest.raises(packages.PackageError, match="longer than 3 s"):
        packages.inspect(zip_project(folder), timeout=3)
