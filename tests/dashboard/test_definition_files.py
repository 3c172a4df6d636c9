"""Every error of a definition at once (form and API), and definitions moved as JSON files:
“Export definition” on the project page, “Import” on the new-project page (issue 17)."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from dashboard.models import ApiToken, Project
from tests.dashboard.factories import project_for
from tests.dashboard.test_api import post_json
from tests.dashboard.test_projects import form_data

pytestmark = pytest.mark.django_db

BAD_EVERYWHERE = {
    "start_urls": "ftp://nope\n\nnot a url",
    "allowed_domains": "exa mple.com",
    "follow_allow": "(?!private)",
    "follow_deny": "[broken",
    "item_url_pattern": "(",
    "item_selector": "div::text",
    "fields": "title h1\nprice: .price::nope",
    "settings": "FOO = 1\nDOWNLOAD_DELAY = -1",
    "max_pages": "lots",
    "workers": "0",
}


def test_the_form_reports_every_bad_field_in_one_submit(owner_client):
    response = owner_client.post("/projects/new/", form_data(**BAD_EVERYWHERE))
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert set(BAD_EVERYWHERE) <= set(errors), errors
    start = " ".join(errors["start_urls"])
    assert "Line 1:" in start and "Line 3:" in start  # real line numbers: the blank line counts
    fields = " ".join(errors["fields"])
    assert "Line 1: write it as “name: selector”" in fields and "Line 2: Invalid CSS selector" in fields
    settings = " ".join(errors["settings"])
    assert "FOO:" in settings and "DOWNLOAD_DELAY:" in settings
    assert not Project.objects.exists()
    page = response.content.decode()
    assert page.count('class="field has-error"') >= len(BAD_EVERYWHERE)


def test_a_required_field_is_not_reported_twice(owner_client):
    errors = owner_client.post("/projects/new/", form_data(name="", fields="")).context["form"].errors
    assert errors["name"] == ["This field is required."]
    assert len(errors["fields"]) == 1


def test_the_api_reports_every_bad_field_in_one_call(owner):
    from django.test import Client

    body = {"name": "x", "start_urls": ["ftp://nope", "not a url"], "allowed_domains": ["a b"],
            "follow": {"allow": ["(?=x)"], "deny": ["["]}, "limits": {"max_pages": -1},
            "item": {"url_pattern": "(", "fields": [{"name": "1x", "selector": "h1::nope"}]},
            "settings": {"FOO": 1}, "workers": 0}
    answer = post_json(Client(), "/api/projects", body, HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(owner)}")
    assert answer.status_code == 422
    assert {"start_urls.0", "start_urls.1", "allowed_domains.0", "follow.allow.0", "follow.deny.0",
            "limits.max_pages", "item.url_pattern", "item.fields.0.name", "item.fields.0.selector", "settings.FOO",
            "workers"} <= set(answer.json()["errors"])


# -- export and import ------------------------------------------------------------------------------


def upload(content, name="definition.json"):
    return SimpleUploadedFile(name, content if isinstance(content, bytes) else content.encode(),
                              content_type="application/json")


def test_export_then_import_gives_the_same_definition(owner, owner_client):
    project = project_for(owner, "Round trip", allowed_domains=["127.0.0.1"],
                          follow={"allow": ["/c/"], "deny": ["/x/"]}, limits={"max_pages": 5},
                          settings={"USER_AGENT": "true", "DOWNLOAD_DELAY": 0.5, "ROBOTSTXT_OBEY": False}, workers=3)
    exported = owner_client.get(f"/projects/{project.code}/definition.json")
    assert exported.status_code == 200
    assert exported["Content-Disposition"] == f'attachment; filename="crawlsite-{project.code}.json"'
    assert json.loads(exported.content) == project.definition
    api = owner_client.get(f"/api/projects/{project.code}/definition")
    assert api.status_code == 200 and api.json() == project.definition

    renamed = json.loads(exported.content)
    renamed["name"] = "Round trip (copy)"
    response = owner_client.post("/projects/import", {"file": upload(json.dumps(renamed))})
    copy = Project.objects.get(owner=owner, name="Round trip (copy)")
    assert response.status_code == 302 and response["Location"] == copy.get_absolute_url()
    assert {**copy.definition, "name": project.name} == project.definition
    again = owner_client.get(f"/projects/{copy.code}/definition.json")
    assert json.loads(again.content) == renamed


def test_importing_under_a_name_in_use_says_so(owner, owner_client):
    project = project_for(owner, "Taken")
    response = owner_client.post("/projects/import", {"file": upload(json.dumps(project.definition))})
    assert response.status_code == 422
    assert "already have a project named “Taken”" in " ".join(response.context["import_form"].errors["file"])
    assert Project.objects.count() == 1


@pytest.mark.parametrize("content,message", [
    (b"{not json", "The file is not JSON"),
    (b"\xff\xfe\x00", "The file is not JSON"),
    (b"[1, 2]", "one JSON object"),
    (b"[" * 5000 + b"]" * 5000, "The file is not"),
])
def test_a_file_that_is_no_definition_is_refused(owner_client, content, message):
    response = owner_client.post("/projects/import", {"file": upload(content)})
    assert response.status_code == 422
    assert message in " ".join(response.context["import_form"].errors["file"])
    assert not Project.objects.exists()


def test_an_invalid_definition_file_lists_every_error(owner_client):
    bad = {"name": "", "start_urls": ["ftp://nope", "not a url"], "settings": {"FOO": 1},
           "item": {"fields": [{"name": "1x", "selector": "h1::text"}]}}
    response = owner_client.post("/projects/import", {"file": upload(json.dumps(bad))})
    assert response.status_code == 422
    errors = response.context["import_form"].errors["file"]
    for path in ("name:", "start_urls.0:", "start_urls.1:", "settings.FOO:", "item.fields.0.name:"):
        assert any(e.startswith(path) for e in errors), (path, errors)
    assert "nothing was saved" in response.content.decode()
    assert not Project.objects.exists()


def test_a_file_too_large_is_refused_before_it_is_read(owner_client, settings):
    settings.DEFINITION_IMPORT_MAX_BYTES = 2048
    response = owner_client.post("/projects/import", {"file": upload(b" " * 4096 + b"{}")})
    assert response.status_code == 422
    assert "at most 2,048 bytes" in " ".join(response.context["import_form"].errors["file"])


def test_import_without_a_file_says_so(owner_client):
    response = owner_client.post("/projects/import", {})
    assert response.status_code == 422
    assert response.context["import_form"].errors["file"] == ["This field is required."]


def test_another_users_definition_is_not_exported(owner, outsider, client):
    project = project_for(owner, "Mine")
    client.force_login(outsider)
    assert client.get(f"/projects/{project.code}/definition.json").status_code == 404
    assert client.get(f"/api/projects/{project.code}/definition").status_code == 404
