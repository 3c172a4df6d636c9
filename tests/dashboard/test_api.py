import json

import pytest
from django.core.management import call_command

from dashboard.models import ApiToken, Crawl, Project
from tests.dashboard.factories import definition, project_for

pytestmark = pytest.mark.django_db


def post_json(client, path, data, **extra):
    return client.post(path, json.dumps(data), content_type="application/json", **extra)


@pytest.fixture
def token(owner):
    return ApiToken.issue(owner)


@pytest.fixture
def auth(token):
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def test_api_needs_authentication(client):
    for path in ("/api/projects", "/api/crawls/abc"):
        response = client.get(path)
        assert response.status_code == 401
    assert client.get("/api/projects", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401


def test_api_docs_require_login(client, owner):
    assert client.get("/api/docs").status_code == 302
    client.force_login(owner)
    assert client.get("/api/docs").status_code == 200
    assert client.get("/api/openapi.json").json()["info"]["title"] == "Crawlsite API"


def test_create_project_with_a_token(client, auth, owner):
    response = post_json(client, "/api/projects", definition("Books"), **auth)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "Books"
    assert body["definition"]["allowed_domains"] == ["127.0.0.1"]
    assert Project.objects.get(code=body["id"]).owner == owner


def test_create_project_rejects_bad_fields_with_422_naming_them(client, auth):
    bad = definition(start_urls=["ftp://x", "not a url"], follow={"allow": ["(unclosed"]},
                     settings={"NO_SUCH_SETTING": 1}, workers=100)
    response = post_json(client, "/api/projects", bad, **auth)
    assert response.status_code == 422
    errors = response.json()["errors"]
    for path in ("start_urls.0", "start_urls.1", "follow.allow.0", "settings.NO_SUCH_SETTING", "workers"):
        assert path in errors, errors
    assert not Project.objects.exists()


def test_create_project_rejects_non_object_body(client, auth):
    response = client.post("/api/projects", "[1, 2]", content_type="application/json", **auth)
    assert response.status_code == 422
    response = client.post("/api/projects", "{not json", content_type="application/json", **auth)
    assert response.status_code in (400, 422)


def test_duplicate_project_name_is_409(client, auth, owner):
    project_for(owner, "Books")
    response = post_json(client, "/api/projects", definition("Books"), **auth)
    assert response.status_code == 409
    assert "already have a project" in response.json()["detail"]


def test_session_api_calls_need_csrf(owner):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert post_json(client, "/api/projects", definition()).status_code in (401, 403)
    assert client.get("/api/projects").status_code == 200


def test_owners_see_only_their_projects(client, auth, owner, outsider):
    mine = project_for(owner, "mine")
    theirs = project_for(outsider, "theirs")
    listed = client.get("/api/projects", **auth).json()
    assert [p["id"] for p in listed] == [mine.code]
    assert client.get(f"/api/projects/{theirs.code}", **auth).status_code == 404
    assert client.put(f"/api/projects/{theirs.code}", json.dumps(definition("x")), content_type="application/json", **auth).status_code == 404
    assert client.delete(f"/api/projects/{theirs.code}", **auth).status_code == 404
    assert post_json(client, f"/api/projects/{theirs.code}/crawls", {}, **auth).status_code == 404
    assert Project.objects.filter(pk=theirs.pk).exists()


def test_update_and_delete_project(client, auth, owner):
    project = project_for(owner, "old")
    response = client.put(f"/api/projects/{project.code}", json.dumps(definition("new")), content_type="application/json", **auth)
    assert response.status_code == 200 and response.json()["name"] == "new"
    response = client.put(f"/api/projects/{project.code}", json.dumps(definition("new", start_urls=[])), content_type="application/json", **auth)
    assert response.status_code == 422 and "start_urls" in response.json()["errors"]
    project.refresh_from_db()
    assert project.name == "new" and project.definition["start_urls"]
    assert client.delete(f"/api/projects/{project.code}", **auth).status_code == 204
    assert not Project.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_launch_crawl_and_read_it(client, auth, owner):
    project = project_for(owner)
    response = post_json(client, f"/api/projects/{project.code}/crawls", {"workers": 2}, **auth)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "running" and body["workers"] == 2
    assert body["counters"]["queued"] == 1
    crawl = client.get(f"/api/crawls/{body['code']}", **auth).json()
    assert set(crawl["counters"]) == {"queued", "seen", "pages", "items", "errors", "items_too_large", "in_flight"}
    assert set(crawl["rates"]) == {"pages_per_s", "items_per_s"}
    assert crawl["project"] == project.code and crawl["trigger"] == "api"
    assert Crawl.objects.get(code=body["code"]).trigger == Crawl.TRIGGER_API
    # a project with a running crawl cannot be deleted
    assert client.delete(f"/api/projects/{project.code}", **auth).status_code == 409


@pytest.mark.django_db
def test_projects_are_addressed_by_public_code_not_integer_id(client, auth, owner):
    project = project_for(owner)
    body = client.get(f"/api/projects/{project.code}", **auth).json()
    assert body["id"] == body["code"] == project.code and not project.code.isdigit()
    assert client.get(f"/api/projects/{project.pk}", **auth).status_code == 404
    assert client.get(project.get_absolute_url()).status_code in (200, 302)
    assert str(project.pk) not in project.get_absolute_url().split("/")


@pytest.mark.django_db(transaction=True)
def test_launch_rejects_bad_worker_counts(client, auth, owner):
    project = project_for(owner)
    for workers in (0, 65):
        response = post_json(client, f"/api/projects/{project.code}/crawls", {"workers": workers}, **auth)
        assert response.status_code == 422
        assert "workers must be a whole number" in response.json()["detail"]
    response = post_json(client, f"/api/projects/{project.code}/crawls", {"workers": "many"}, **auth)
    assert response.status_code == 422
    assert not Crawl.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_launch_with_redis_down_is_503_and_leaves_no_crawl(client, auth, owner, settings):
    project = project_for(owner)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = post_json(client, f"/api/projects/{project.code}/crawls", {}, **auth)
    assert response.status_code == 503
    assert "Redis is unreachable" in response.json()["detail"]
    assert not Crawl.objects.exists()


def test_another_users_crawl_is_404(client, auth, outsider):
    crawl = Crawl.objects.create(project=project_for(outsider), definition={}, status=Crawl.FINISHED)
    assert client.get(f"/api/crawls/{crawl.code}", **auth).status_code == 404


def test_apitoken_command_prints_a_working_token(client, owner, capsys):
    call_command("apitoken", "owner")
    token = capsys.readouterr().out.strip()
    assert token.startswith("cs_")
    assert not ApiToken.objects.filter(digest=token).exists()  # only the hash is stored
    assert client.get("/api/projects", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200
