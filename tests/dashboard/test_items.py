"""The item browser (issue 6): columns, escaping, keyset pages, search, item JSON, access."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from dashboard import items as item_queries
from dashboard.models import Crawl, Item, Project

pytestmark = pytest.mark.django_db

FIELDS = ["title", "price"]


@pytest.fixture
def project(owner):
    definition = {"name": "Shop", "item": {"fields": [{"name": n, "selector": "p", "many": False} for n in FIELDS]}}
    return Project.objects.create(owner=owner, name="Shop", definition=definition)


@pytest.fixture
def crawl(project):
    return Crawl.objects.create(project=project, definition=project.definition, status=Crawl.RUNNING)


def add(crawl, *datas):
    start = crawl.items.count()
    created = Item.objects.bulk_create(
        Item(crawl=crawl, key=f"k{start + i}", url=d.get("url", ""), data=d) for i, d in enumerate(datas)
    )
    return created


def items_url(crawl, **params):
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return reverse("dashboard:crawl-items", args=[crawl.code]) + (f"?{query}" if query else "")


def titles(response):
    return [row.cells[0].text for row in response.context["page"].rows]


def test_items_page_shows_a_column_per_field_and_the_source(owner_client, crawl):
    add(crawl, {"url": "https://shop.example/1", "title": "Lamp", "price": "12 €"})
    response = owner_client.get(items_url(crawl))
    assert response.status_code == 200
    html = response.content.decode()
    assert re.search(r"<th scope=\"col\">title</th>\s*<th scope=\"col\">price</th>", html)
    assert "Lamp" in html and "12 €" in html
    assert 'href="https://shop.example/1"' in html
    assert reverse("dashboard:item-json", args=[crawl.code, crawl.items.get().key]) in html
    for fmt in ("jsonl", "json", "csv", "xml"):
        assert f"{reverse('dashboard:crawl-export', args=[crawl.code])}?format={fmt}" in html
    assert f'action="{reverse("dashboard:crawl-xlsx-request", args=[crawl.code])}"' in html  # built by a job


def test_scraped_html_renders_as_text(owner_client, crawl):
    add(crawl, {"url": "javascript:alert(1)", "title": "<script>alert('x')</script>", "price": "<b>5</b>"})
    html = owner_client.get(items_url(crawl)).content.decode()
    assert "<script>alert" not in html and "<b>5</b>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "&lt;b&gt;5&lt;/b&gt;" in html
    assert 'href="javascript:' not in html  # a non-web URL is shown, never linked
    assert "javascript:alert(1)" in html


def test_long_values_are_truncated_with_the_full_value_on_demand(owner_client, crawl):
    long = "word " * 100 + "<end>"
    add(crawl, {"url": "https://e/1", "title": long, "price": ["a", {"b": 1}]})
    html = owner_client.get(items_url(crawl)).content.decode()
    assert '<details class="cell-more"><summary>' in html
    assert html.count("&lt;end&gt;") == 1  # only inside the full value, not the preview
    assert '[&quot;a&quot;, {&quot;b&quot;: 1}]' in html  # nested values as JSON text


def test_custom_spider_keys_get_columns(owner_client, owner):
    project = Project.objects.create(owner=owner, name="Custom", definition={"name": "Custom", "spider": "a.b.C"})
    crawl = Crawl.objects.create(project=project, definition=project.definition)
    add(crawl, {"url": "https://e/1", "sku": "A1"}, {"url": "https://e/2", "colour": "red"})
    page = owner_client.get(items_url(crawl)).context["page"]
    assert page.columns == ["sku", "colour"]
    assert [[c.text for c in row.cells] for row in page.rows] == [["A1", ""], ["", "red"]]


def test_keyset_pages_walk_forward_and_back(owner_client, crawl):
    add(crawl, *({"url": f"https://e/{i}", "title": f"t{i}", "price": str(i)} for i in range(120)))
    first = owner_client.get(items_url(crawl))
    page = first.context["page"]
    assert titles(first) == [f"t{i}" for i in range(50)]
    assert page.prev_before is None and page.next_after is not None
    assert f"after={page.next_after}" in first.content.decode()

    second = owner_client.get(items_url(crawl, after=page.next_after))
    assert titles(second) == [f"t{i}" for i in range(50, 100)]
    third = owner_client.get(items_url(crawl, after=second.context["page"].next_after))
    assert titles(third) == [f"t{i}" for i in range(100, 120)]
    assert third.context["page"].next_after is None

    back = owner_client.get(items_url(crawl, before=third.context["page"].prev_before))
    assert titles(back) == titles(second)
    back = owner_client.get(items_url(crawl, before=back.context["page"].prev_before))
    assert titles(back) == titles(first) and back.context["page"].prev_before is None


def test_a_page_never_counts_the_table(owner_client, crawl):
    add(crawl, *({"url": f"https://e/{i}", "title": f"t{i}"} for i in range(60)))
    second_cursor = item_queries.page(crawl).next_after
    with CaptureQueriesContext(connection) as queries:
        owner_client.get(items_url(crawl, after=second_cursor, q="t5"))
    sql = " ".join(q["sql"].upper() for q in queries.captured_queries)
    assert "COUNT(" not in sql


def test_malformed_cursors_show_the_first_page(owner_client, crawl):
    add(crawl, {"url": "https://e/1", "title": "only"})
    for bad in ("abc", "-5", "1e9", "99999999999999999999999"):
        response = owner_client.get(items_url(crawl, after=bad))
        assert response.status_code == 200 and titles(response) == ["only"]


def test_search_matches_any_field_case_insensitively(owner_client, crawl):
    add(
        crawl,
        {"url": "https://e/1", "title": "Red Lamp", "price": "10"},
        {"url": "https://e/2", "title": "Blue chair", "price": "lamp-compatible"},
        {"url": "https://e/3", "title": "Table", "price": "99"},
        {"url": "https://e/4", "title": 'Say "hello"', "price": "café"},
    )
    assert titles(owner_client.get(items_url(crawl, q="LAMP"))) == ["Red Lamp", "Blue chair"]
    assert titles(owner_client.get(items_url(crawl, q="%22hello%22"))) == ['Say "hello"']
    assert titles(owner_client.get(items_url(crawl, q="caf%C3%A9"))) == ['Say "hello"']
    assert titles(owner_client.get(items_url(crawl, q="100%25"))) == []  # % is literal, not a wildcard
    response = owner_client.get(items_url(crawl, q="nothing"))
    assert titles(response) == [] and "No item matches" in response.content.decode()


def test_search_pages_keep_the_query(owner_client, crawl):
    add(crawl, *({"url": f"https://e/{i}", "title": f"{'match' if i % 2 else 'other'} {i}"} for i in range(130)))
    first = owner_client.get(items_url(crawl, q="match"))
    assert len(titles(first)) == 50 and all(t.startswith("match") for t in titles(first))
    cursor = first.context["page"].next_after
    assert f"?q=match&amp;after={cursor}" in first.content.decode()
    second = owner_client.get(items_url(crawl, q="match", after=cursor))
    assert titles(second) == [f"match {i}" for i in range(101, 130, 2)]
    assert second.context["page"].next_after is None


def test_item_count_comes_from_the_live_counter_or_final_stats(owner_client, crawl, redis_client):
    from crawler import keys

    redis_client.hset(keys.stats(crawl.code), "items", 1234)
    assert "1234 items scraped" in owner_client.get(items_url(crawl)).content.decode()
    Crawl.objects.filter(pk=crawl.pk).update(status=Crawl.FINISHED, stats={"items": 7})
    assert "7 items scraped" in owner_client.get(items_url(crawl)).content.decode()


def test_item_json_returns_the_data(owner_client, crawl):
    [item] = add(crawl, {"url": "https://e/1", "title": "<b>😀</b>", "price": None})
    response = owner_client.get(reverse("dashboard:item-json", args=[crawl.code, item.key]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"url": "https://e/1", "title": "<b>😀</b>", "price": None}


def test_item_json_of_another_crawl_is_404(owner_client, crawl, project):
    other = Crawl.objects.create(project=project, definition=project.definition)
    [item] = add(other, {"url": "https://e/1"})
    assert owner_client.get(reverse("dashboard:item-json", args=[crawl.code, item.key])).status_code == 404


def test_outsider_gets_404_for_items_and_item_json(client, outsider, crawl):
    [item] = add(crawl, {"url": "https://e/1"})
    client.force_login(outsider)
    assert client.get(items_url(crawl)).status_code == 404
    assert client.get(reverse("dashboard:item-json", args=[crawl.code, item.key])).status_code == 404


def test_items_page_needs_login(client, crawl):
    response = client.get(items_url(crawl))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
