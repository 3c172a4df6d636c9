"""Schedules in a real browser (issue 14): a bad cron is shown next to its field, a schedule is
made, and its next runs show in the schedule's zone and in the browser's own zone (Intl, offline)."""

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import expect

from dashboard.models import Schedule
from tests.dashboard.factories import project_for


@pytest.mark.browser_context_args(timezone_id="Asia/Tokyo", locale="en-GB")
def test_make_a_schedule_and_read_its_next_runs_in_both_zones(logged_in_page, live_asgi, owner, artifacts):
    page = logged_in_page
    problems = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    project = project_for(owner, "Shop")
    page.goto(f"{live_asgi.url}/projects/{project.code}/")
    page.click("text=Add schedule")
    page.get_by_role("button", name="Use Asia/Tokyo").click()
    expect(page.locator("#id_timezone")).to_have_value("Asia/Tokyo")

    page.fill("#id_cron", "0 0 30 2 *")
    page.fill("#id_timezone", "Europe/Berlin")
    page.click("text=Create schedule")
    expect(page.locator("#id_cron_errors")).to_contain_text("day-of-month")
    assert not Schedule.objects.exists()

    page.fill("#id_cron", "30 2 * * *")
    page.click("text=Create schedule")
    schedule = Schedule.objects.get(project=project)
    expect(page).to_have_url(f"{live_asgi.url}/schedules/{schedule.code}/")
    expect(page.locator("[data-browser-zone]")).to_have_text("Asia/Tokyo")
    cells = page.locator("[data-next-runs] time[data-local-time]")
    expect(cells).to_have_count(5)
    first = cells.first
    iso = first.get_attribute("datetime")
    tokyo = datetime.fromisoformat(iso).astimezone(ZoneInfo("Asia/Tokyo"))
    expect(first).to_contain_text(tokyo.strftime("%H:%M"))
    assert iso not in first.inner_text()  # rendered by the browser, not the server's ISO text
    expect(page.locator("[data-next-runs] tbody tr").first).to_contain_text("02:30")
    page.screenshot(path=str(artifacts / "schedule.png"), full_page=True)

    page.get_by_role("button", name="Disable").click()
    expect(page.locator("h1")).to_contain_text("Disabled")

    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Delete").click()
    expect(page).to_have_url(f"{live_asgi.url}/schedules/{schedule.code}/")
    assert Schedule.objects.filter(pk=schedule.pk).exists()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    expect(page).to_have_url(f"{live_asgi.url}/projects/{project.code}/")
    expect(page.locator("[data-schedules]")).to_contain_text("No schedule")
    assert not Schedule.objects.exists()
    assert problems == []
