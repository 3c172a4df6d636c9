"""Bounded item reads (issue 11, "no limits"): the items API's page size and an item search that
reads a bounded number of rows per request and continues with a cursor."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from dashboard.models import Crawl, Item, Project

pytestmark = pytest.mark.django_db


@pytest.fixture
def crawl(owner):
    definition = {"name": "Shop", "item": {"fields": [{"name": "title", "selector": "p", "many": False}]}}
    project = Project.objects.create(owner=owner, name="Shop", definition=definition)
    return Crawl.objects.create(project=project, definition=definition, status=Crawl.FINISHED,
                                stats={"items": 70})


def add(crawl, titles):
    Item.objects.bulk_create(
        Item(crawl=crawl, key=f"k{i}", url=f"https://shop.example/{i}", data={"url": f"https://shop.example/{i}",
                                                                              "title": t})
        for i, t in enumerate(titles)
    )
    return list(crawl.items.order_by("id").values_list("id", flat=True))


# --- the items API's page size ----------------------------------------------------------------


def api_items(client, crawl, query):
    return client.get(f"/api/crawls/{crawl.code}/items?{query}")


@pytest.mark.parametrize("query, parameter", [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=-1", "limit"), ("limit=abc", "limit"),
    ("limit=1.5", "limit"), ("limit=99999999999999999999999", "limit"),
    ("after=-1", "after"), ("after=x", "after"), (f"after={2 ** 63}", "after"),
])
def test_items_api_refuses_bad_paging_values_naming_the_parameter(owner_client, crawl, query, parameter):
    response = api_items(owner_client, crawl, query)
    assert response.status_code == 422, response.content
    assert [error["loc"][-1] for error in response.json()["detail"]] == [parameter]


def test_items_api_serves_up_to_the_maximum_page_size(owner_client, crawl):
    ids = add(crawl, [f"t{i}" for i in range(1005)])
    page = api_items(owner_client, crawl, "limit=1000").json()
    assert len(page["items"]) == 1000 and page["next"] == ids[999]
    rest = api_items(owner_client, crawl, f"after={page['next']}&limit=1000").json()
    assert [item["id"] for item in rest["items"]] == ids[1000:] and rest["next"] is None
    assert len(api_items(owner_client, crawl, "").json()["items"]) == 100  # the default


def test_items_api_access(client, outsider, crawl):
    assert api_items(client, crawl, "limit=5").status_code == 401
    client.force_login(outsider)
    assert api_items(client, crawl, "limit=5").status_code == 404


# --- bounded search ---------------------------------------------------------------------------

MATCHES = {3, 25, 26, 55, 69}


def search(client, crawl, q, **params):
    query = "&".join(f"{k}={v}" for k, v in {"q": q, **params}.items())
    return client.get(reverse("dashboard:crawl-items", args=[crawl.code]) + "?" + query)


def found_titles(response):
    return [row.cells[0].text for row in response.context["page"].rows]


def test_search_reads_a_bounded_window_per_request_and_finds_everything_by_continuing(
        owner_client, crawl, settings):
    settings.ITEM_SEARCH_ROWS = 20
    ids = add(crawl, [f"needle {i}" if i in MATCHES else f"hay {i}" for i in range(70)])
    seen, requests, params = [], [], {}
    while True:
        with CaptureQueriesContext(connection) as queries:
            response = search(owner_client, crawl, "NEEDLE", **params)
        assert response.status_code == 200
        page = response.context["page"]
        requests.append((found_titles(response), page.searched))
        seen.extend(found_titles(response))
        # The rows the search looks at are one id range of at most 20 items after the cursor.
        like = [q["sql"] for q in queries.captured_queries if "LIKE" in q["sql"].upper()]
        start = len(requests) - 1
        window = ids[start * 20:start * 20 + 20]
        assert len(like) == 1
        assert f'"dashboard_item"."id" >= {window[0]}' in like[0]
        assert f'"dashboard_item"."id" <= {window[-1]}' in like[0]
        if page.search_done:
            break
        assert "Continue searching" in response.content.decode()
        params = {"after": page.next_after, "searched": page.searched}
    assert requests == [(["needle 3"], 20), (["needle 25", "needle 26"], 40), (["needle 55"], 60), (["needle 69"], 70)]
    assert sorted(seen, key=lambda t: int(t.split()[1])) == [f"needle {i}" for i in sorted(MATCHES)]
    assert "Searched all 70 items." in response.content.decode()


def test_a_full_page_of_matches_continues_right_after_its_last_row(owner_client, crawl, settings):
    settings.ITEM_SEARCH_ROWS = 100
    add(crawl, [f"match {i}" if i % 2 else f"other {i}" for i in range(130)])
    first = search(owner_client, crawl, "match")
    page = first.context["page"]
    assert found_titles(first) == [f"match {i}" for i in range(1, 100, 2)]
    assert page.searched == 100 and not page.search_done
    second = search(owner_client, crawl, "match", after=page.next_after, searched=page.searched)
    assert found_titles(second) == [f"match {i}" for i in range(101, 130, 2)]
    assert second.context["page"].search_done and second.context["page"].searched == 130


def test_empty_window_says_nothing_found_so_far_and_offers_to_continue(owner_client, crawl, settings):
    settings.ITEM_SEARCH_ROWS = 10
    add(crawl, ["hay"] * 15 + ["needle"])
    response = search(owner_client, crawl, "needle")
    html = response.content.decode()
    assert found_titles(response) == []
    assert "in the items searched so far" in html and "Searched 10 of 70 items so far" in html
    page = response.context["page"]
    assert found_titles(search(owner_client, crawl, "needle", after=page.next_after)) == ["needle"]


def test_search_query_and_results_are_escaped(owner_client, crawl):
    add(crawl, ['<img src=x onerror="alert(1)">'])
    response = search(owner_client, crawl, "%3Cimg")
    html = response.content.decode()
    assert found_titles(response) == ['<img src=x onerror="alert(1)">']
    assert "<img src=x" not in html and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html


@pytest.mark.parametrize("bad", ["abc", "-5", "1e9", "99999999999999999999999", "%3Cb%3E"])
def test_malformed_search_cursors_are_ignored(owner_client, crawl, bad):
    add(crawl, ["needle"])
    response = search(owner_client, crawl, "needle", after=bad, searched=bad)
    assert response.status_code == 200 and found_titles(response) == ["needle"]


def test_search_needs_login_and_ownership(client, outsider, crawl):
    response = search(client, crawl, "x")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    client.force_login(outsider)
    assert search(client, crawl, "x").status_code == 404
