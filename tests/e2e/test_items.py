"""Item browser in a real browser: items show as text, pages move, an export downloads."""

import csv
import json

from playwright.sync_api import expect

from dashboard.models import Crawl, Item, Project


def make_crawl(owner, count):
    definition = {"name": "Shop", "item": {"fields": [{"name": "title", "selector": "h1", "many": False}]}}
    project = Project.objects.create(owner=owner, name="Shop", definition=definition)
    crawl = Crawl.objects.create(project=project, definition=definition, status=Crawl.RUNNING)
    Item.objects.bulk_create(
        Item(crawl=crawl, key=f"k{i}", url=f"https://shop.example/{i}",
             data={"url": f"https://shop.example/{i}", "title": f"Item {i}" if i else "<script>window.pwned=1</script>"})
        for i in range(count)
    )
    return crawl


def test_items_page_shows_items_pages_and_downloads_an_export(logged_in_page, live_asgi, owner, artifacts):
    page = logged_in_page
    crawl = make_crawl(owner, 60)
    page.goto(f"{live_asgi.url}/crawls/{crawl.code}/items/")
    expect(page.locator("h1")).to_contain_text("Items")
    rows = page.locator(".items-table tbody tr")
    expect(rows).to_have_count(50)
    expect(rows.first).to_contain_text("<script>window.pwned=1</script>")  # shown as text
    assert page.evaluate("window.pwned") is None
    page.screenshot(path=str(artifacts / "items.png"), full_page=True)

    page.click("a[rel=next]")
    expect(rows).to_have_count(10)
    expect(rows.first).to_contain_text("Item 50")
    page.click("a[rel=prev]")
    expect(rows).to_have_count(50)

    page.fill("#item-q", "Item 42")
    page.press("#item-q", "Enter")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Item 42")

    with page.expect_download() as info:
        page.click("a[data-format=csv]")
    download = info.value
    assert download.suggested_filename == f"shop-{crawl.code}.csv"
    with open(download.path(), newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["url", "title"] and len(table) == 61
    assert table[1][1] == "<script>window.pwned=1</script>"

    with page.expect_download() as info:
        page.click("a[data-format=jsonl]")
    with open(info.value.path(), encoding="utf-8") as fh:
        assert [json.loads(line)["title"] for line in fh][59] == "Item 59"

    page.click(".items-table a:text-is('JSON')")
    assert json.loads(page.locator("body").inner_text())["title"] == "Item 42"
