from playwright.sync_api import expect


def test_login_page_then_overview_then_logout(page, live_asgi, owner, artifacts):
    page.goto(f"{live_asgi.url}/")
    expect(page).to_have_url(f"{live_asgi.url}/accounts/login/?next=/")
    page.fill("#id_username", "owner")
    page.fill("#id_password", "wrong")
    page.click("button[type=submit]")
    expect(page.locator(".message-error")).to_contain_text("correct username and password")
    page.fill("#id_password", "owner-pass-123")
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{live_asgi.url}/")
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.locator(".status-grid")).to_contain_text("Redis")
    page.screenshot(path=str(artifacts / "overview.png"), full_page=True)
    page.click("text=Log out")
    expect(page).to_have_url(f"{live_asgi.url}/accounts/login/")


def test_layout_works_on_a_narrow_screen(logged_in_page, artifacts):
    logged_in_page.set_viewport_size({"width": 375, "height": 740})
    logged_in_page.reload()
    width = logged_in_page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375
    logged_in_page.screenshot(path=str(artifacts / "overview-narrow.png"), full_page=True)
