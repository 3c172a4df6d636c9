"""The account page in a real browser: make an API token, use it, revoke it (issue 11)."""

import json
import urllib.error
import urllib.request

from playwright.sync_api import expect


def api_status(base, token):
    request = urllib.request.Request(f"{base}/api/tokens", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_make_use_and_revoke_a_token_from_the_account_page(logged_in_page, live_asgi, artifacts):
    page = logged_in_page
    problems = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.click("header .account a")
    expect(page).to_have_url(f"{live_asgi.url}/account/")
    expect(page.get_by_text("No API token yet")).to_be_visible()

    page.fill("#id_name", "browser-made")
    page.select_option("#id_expires", "7d")
    page.click("text=Create token")
    secret = page.locator("[data-token-secret]").inner_text().strip()
    page.screenshot(path=str(artifacts / "account.png"), full_page=True)
    assert secret.startswith("cs_")
    status, listed = api_status(live_asgi.url, secret)
    assert status == 200 and [t["name"] for t in listed] == ["browser-made"]

    page.goto(f"{live_asgi.url}/account/")
    expect(page.locator("[data-token-secret]")).to_have_count(0)  # shown once
    row = page.locator("tr", has_text="browser-made")
    expect(row).to_contain_text(secret[:8])
    row.get_by_role("button", name="Revoke").click()
    expect(page.get_by_text("revoked: it no longer works")).to_be_visible()
    status, body = api_status(live_asgi.url, secret)
    assert status == 401 and body["detail"] == "Unknown or revoked API token."
    assert problems == []
