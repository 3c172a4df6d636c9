"""Numbers typed by users are read strictly (issue 11): a clear error, never a 500, never a guess."""

import pytest
from django.test import Client
from django.urls import reverse

from dashboard.forms import ProjectForm
from dashboard.models import ApiToken, Crawl
from tests.dashboard.factories import project_for
from tests.dashboard.test_projects import form_data

pytestmark = pytest.mark.django_db

# Superscript two (isdigit() says yes, int() raises), Arabic-Indic three (int() says 3), an
# exponent, padding, a decimal, a sign, a number far past any limit, and a very long one.
HOSTILE_NUMBERS = ["²", "٣", "1e3", " 3", "3 ", "3.0", "+3", "-1", "0x3", "1_0", "99999999999999999999999",
                   "9" * 5000, "", "３"]


@pytest.fixture
def strict_client(owner):
    """Server errors come back as 500 answers instead of exceptions, as a browser would see them."""
    client = Client(raise_request_exception=False)
    client.force_login(owner)
    return client


@pytest.mark.parametrize("value", [v for v in HOSTILE_NUMBERS if v])
def test_launch_form_refuses_anything_but_plain_digits(strict_client, owner, value):
    project = project_for(owner)
    response = strict_client.post(reverse("dashboard:project-launch", args=[project.code]), {"workers": value})
    assert response.status_code == 302 and response["Location"] == project.get_absolute_url()
    page = strict_client.get(response["Location"]).content.decode()
    assert "Workers must be a whole number from 1 to 64" in page
    assert not Crawl.objects.exists()


@pytest.mark.parametrize("value", HOSTILE_NUMBERS + ["0", "65"])
def test_scale_form_refuses_anything_but_plain_digits(strict_client, owner, value):
    project = project_for(owner)
    crawl = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.RUNNING, workers=1)
    url = reverse("dashboard:crawl-control", args=[crawl.code, "scale"])
    response = strict_client.post(url, {"workers": value})
    assert response.status_code == 302 and response["Location"] == crawl.get_absolute_url()
    assert "Workers must be a whole number from 1 to 64" in strict_client.get(crawl.get_absolute_url()).content.decode()
    crawl.refresh_from_db()
    assert crawl.workers == 1 and crawl.status == Crawl.RUNNING


@pytest.mark.parametrize("field", ["workers", "max_depth", "max_pages", "max_items", "max_duration"])
@pytest.mark.parametrize("value", ["²", "٣", "1e3", " 3", "3.0", "9" * 5000, "３"])
def test_project_form_numbers_are_strict(field, value):
    form = ProjectForm(form_data(**{field: value}))
    assert not form.is_valid()
    assert form.errors[field]


def test_project_form_still_takes_plain_digits():
    form = ProjectForm(form_data(workers="3", max_pages="250"))
    assert form.is_valid(), form.errors
    assert form.cleaned_data["definition"]["workers"] == 3
    assert form.cleaned_data["definition"]["limits"]["max_pages"] == 250


def test_project_form_post_with_hostile_numbers_is_a_form_error_not_a_500(strict_client):
    for value in HOSTILE_NUMBERS:
        response = strict_client.post(reverse("dashboard:project-create"), form_data(workers=value, max_pages=value))
        assert response.status_code == 200, value
        assert "errorlist" in response.content.decode() or "error" in response.content.decode()


@pytest.mark.parametrize("value", ["²", "٣", "１", "9" * 30])
def test_item_page_cursors_ignore_non_ascii_digits(strict_client, owner, value):
    project = project_for(owner)
    crawl = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.FINISHED)
    url = reverse("dashboard:crawl-items", args=[crawl.code])
    assert strict_client.get(url, {"after": value}).status_code == 200
    assert strict_client.get(url, {"before": value}).status_code == 200


API_BAD_WORKERS = ["²", "٣", "1e3", "3", "3.5", 3.5, 3.0, 10**30, -1, 0, 65, True, [], {}]


@pytest.mark.parametrize("value", API_BAD_WORKERS)
def test_api_launch_workers_answer_422_never_500(owner, value):
    project = project_for(owner)
    token = ApiToken.issue(owner)
    client = Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Bearer {token}")
    response = client.post(f"/api/projects/{project.code}/crawls", {"workers": value}, content_type="application/json")
    assert response.status_code == 422, (value, response.content)
    assert not Crawl.objects.exists()


@pytest.mark.parametrize("value", API_BAD_WORKERS)
def test_api_scale_workers_answer_422_never_500(owner, value):
    project = project_for(owner)
    crawl = Crawl.objects.create(project=project, definition=project.definition, status=Crawl.RUNNING, workers=1)
    token = ApiToken.issue(owner)
    client = Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Bearer {token}")
    response = client.post(f"/api/crawls/{crawl.code}/scale", {"workers": value}, content_type="application/json")
    assert response.status_code == 422, (value, response.content)
    crawl.refresh_from_db()
    assert crawl.workers == 1
