import re

import pytest
from django.urls import reverse

from dashboard.forms import ProjectForm
from dashboard.models import Crawl, Project
from tests.dashboard.factories import project_for

pytestmark = pytest.mark.django_db


def form_data(**overrides):
    data = {
        "name": "Books",
        "start_urls": "http://127.0.0.1:9/\nhttp://127.0.0.1:9/page/2",
        "allowed_domains": "",
        "follow_allow": "/catalogue/",
        "follow_deny": "/login",
        "max_depth": "0", "max_pages": "100", "max_items": "0", "max_duration": "0",
        "item_url_pattern": "/book/",
        "item_selector": "",
        "fields": "title: h1::text\nauthors[]: .author::text\nlink: //a/@href",
        "spider": "",
        "settings": "CONCURRENT_REQUESTS = 4\nROBOTSTXT_OBEY = true\nUSER_AGENT = Crawlsite test bot",
        "workers": "2",
    }
    data.update(overrides)
    return data


def test_form_builds_the_definition():
    form = ProjectForm(form_data())
    assert form.is_valid(), form.errors
    d = form.cleaned_data["definition"]
    assert d["start_urls"] == ["http://127.0.0.1:9/", "http://127.0.0.1:9/page/2"]
    assert d["allowed_domains"] == ["127.0.0.1"]
    assert d["item"]["fields"][1] == {"name": "authors", "selector": ".author::text", "many": True}
    assert d["settings"] == {"CONCURRENT_REQUESTS": 4, "ROBOTSTXT_OBEY": True, "USER_AGENT": "Crawlsite test bot"}
    assert d["limits"]["max_pages"] == 100 and d["workers"] == 2


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("start_urls", "http://ok.test/\njavascript:alert(1)", "Line 2:"),
        ("follow_allow", "/ok/\n[broken", "Line 2:"),
        ("fields", "title h1::text", "Line 1: write it as “name: selector”"),
        ("fields", "title: h1::nope", "Line 1:"),
        ("fields", "url: h1::text", "Line 1:"),
        ("settings", "NO_SUCH_SETTING = 1", "NO_SUCH_SETTING:"),
        ("settings", "CONCURRENT_REQUESTS = -3", "CONCURRENT_REQUESTS:"),
        ("item_url_pattern", "(", ""),
        ("spider", "no.such.module.Spider", ""),
        ("workers", "0", ""),
        ("max_pages", "-1", ""),
    ],
)
def test_form_errors_name_the_field(field, value, message):
    form = ProjectForm(form_data(**{field: value}))
    assert not form.is_valid()
    assert field in form.errors, form.errors
    assert any(message in e for e in form.errors[field]), form.errors[field]


def test_form_round_trips_a_definition():
    form = ProjectForm(form_data())
    assert form.is_valid()
    again = ProjectForm(ProjectForm.initial_from(form.cleaned_data["definition"]))
    assert again.is_valid(), again.errors
    assert again.cleaned_data["definition"] == form.cleaned_data["definition"]


def test_create_project_in_the_ui(owner_client, owner):
    response = owner_client.post(reverse("dashboard:project-create"), form_data())
    project = Project.objects.get()
    assert response.status_code == 302 and response["Location"] == project.get_absolute_url()
    assert project.owner == owner and project.name == "Books"
    page = owner_client.get(project.get_absolute_url()).content.decode()
    assert "Start crawl" in page and "/catalogue/" in page


def test_invalid_form_saves_nothing_and_says_so(owner_client):
    response = owner_client.post(reverse("dashboard:project-create"), form_data(start_urls="nope"))
    assert response.status_code == 200
    assert "nothing was saved" in response.content.decode()
    assert not Project.objects.exists()


def test_duplicate_name_is_a_field_error(owner_client, owner):
    project_for(owner, "Books")
    response = owner_client.post(reverse("dashboard:project-create"), form_data())
    assert "already have a project with this name" in response.content.decode()
    assert Project.objects.count() == 1


def test_edit_project(owner_client, owner):
    project = project_for(owner, "Old")
    url = reverse("dashboard:project-edit", args=[project.code])
    assert "Old" in owner_client.get(url).content.decode()
    owner_client.post(url, form_data(name="New"))
    project.refresh_from_db()
    assert project.name == "New"


def test_outsider_gets_404_everywhere(client, owner, outsider):
    project = project_for(owner)
    crawl = Crawl.objects.create(project=project, definition=project.definition)
    client.force_login(outsider)
    for name in ("project-detail", "project-edit", "project-delete"):
        assert client.get(reverse(f"dashboard:{name}", args=[project.code])).status_code == 404
    assert client.post(reverse("dashboard:project-launch", args=[project.code])).status_code == 404
    assert client.post(reverse("dashboard:project-delete", args=[project.code])).status_code == 404
    assert client.get(crawl.get_absolute_url()).status_code == 404
    assert client.get(reverse("dashboard:project-list")).content.decode().count(project.name) == 0
    assert Project.objects.filter(pk=project.pk).exists()


def test_launch_is_post_only(owner_client, owner):
    project = project_for(owner)
    assert owner_client.get(reverse("dashboard:project-launch", args=[project.code])).status_code == 405


def test_launch_with_bad_workers_says_so(owner_client, owner):
    project = project_for(owner)
    response = owner_client.post(reverse("dashboard:project-launch", args=[project.code]), {"workers": "lots"}, follow=True)
    assert "Workers must be a whole number" in response.content.decode()
    assert not Crawl.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_launch_from_the_ui_redirects_to_the_crawl(owner_client, owner):
    project = project_for(owner)
    response = owner_client.post(reverse("dashboard:project-launch", args=[project.code]), {"workers": "2"})
    assert Crawl.objects.get(project=project).trigger == Crawl.TRIGGER_USER
    crawl = Crawl.objects.get()
    assert response["Location"] == crawl.get_absolute_url()
    assert crawl.status == Crawl.RUNNING and crawl.workers == 2


def test_delete_project(owner_client, owner):
    project = project_for(owner)
    owner_client.post(reverse("dashboard:project-delete", args=[project.code]))
    assert not Project.objects.exists()


def test_cannot_delete_a_project_with_an_active_crawl(owner_client, owner):
    project = project_for(owner)
    Crawl.objects.create(project=project, definition=project.definition, status=Crawl.RUNNING)
    owner_client.post(reverse("dashboard:project-delete", args=[project.code]))
    assert Project.objects.exists()


def test_forms_carry_csrf_tokens(owner_client, owner):
    project = project_for(owner)
    for url in (reverse("dashboard:project-create"), project.get_absolute_url(), reverse("dashboard:project-list")):
        assert "csrfmiddlewaretoken" in owner_client.get(url).content.decode()


def test_scraped_like_names_are_escaped(owner_client, owner):
    project_for(owner, '<script>alert("x")</script>')
    page = owner_client.get(reverse("dashboard:project-list")).content.decode()
    assert "<script>alert" not in page and "&lt;script&gt;" in page


def test_admin_uses_the_same_validator(client, staff, owner):
    staff.is_superuser = True
    staff.save()
    client.force_login(staff)
    response = client.post("/admin/dashboard/project/add/", {"owner": owner.pk, "definition": '{"name": "x", "start_urls": ["nope"]}'})
    assert response.status_code == 200
    assert "start_urls.0" in response.content.decode()
    assert not Project.objects.exists()


def test_crawl_page_buttons_know_where_each_action_applies(owner_client, owner):
    """The data-allowed lists the page's script uses come from the rules the server enforces."""
    project = project_for(owner)
    crawl = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.RUNNING)
    html = owner_client.get(crawl.get_absolute_url()).content.decode()
    for action, allowed in [("pause", "running"), ("resume", "pausing paused stopped"),
                            ("stop", "running pausing paused"), ("cancel", "paused stopped"),
                            ("scale", "running pausing paused")]:
        assert re.search(rf'data-action="{action}"\s+data-allowed="{allowed}"', html), action
