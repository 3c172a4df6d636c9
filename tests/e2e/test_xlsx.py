"""The Excel export in a real browser: the page says "preparing", its static script polls, and the
download appears once a real `rqworker tasks` has built the file."""

from playwright.sync_api import expect

from tests.dashboard.test_exports import read_xlsx
from tests.e2e.test_items import make_crawl
from tests.workers import start_task_workers


def test_excel_export_is_prepared_in_the_background_then_offered(logged_in_page, live_asgi, owner, artifacts):
    page = logged_in_page
    crawl = make_crawl(owner, 30)
    page.goto(f"{live_asgi.url}/crawls/{crawl.code}/items/")
    page.click("button[data-format=xlsx]")
    expect(page.locator("h1")).to_contain_text("Excel export")
    expect(page.locator("[data-xlsx=badge]")).to_have_text("Preparing")
    expect(page.locator("[data-xlsx=download]")).to_be_hidden()

    [worker] = start_task_workers(1)
    assert worker.wait(180) == 0
    download_link = page.locator("[data-xlsx=download]")
    expect(download_link).to_be_visible(timeout=60_000)  # the page's poller noticed by itself
    expect(page.locator("[data-xlsx=badge]")).to_have_text("Ready")
    page.screenshot(path=str(artifacts / "xlsx-ready.png"), full_page=True)

    with page.expect_download() as info:
        download_link.click()
    download = info.value
    assert download.suggested_filename == f"shop-{crawl.code}.xlsx"
    with open(download.path(), "rb") as fh:
        [rows] = read_xlsx(fh.read())
    assert rows[0] == ["url", "title"] and len(rows) == 31
    assert rows[1][1] == "<script>window.pwned=1</script>"
    assert page.evaluate("window.pwned") is None
