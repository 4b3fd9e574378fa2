"""The console in a real Chromium against real RabbitMQ and Pulsar, as an operator uses it.

A worker dead-letters three invalid jobs; in the browser: the overview shows the real depths
(updated live, no reload); the dead letters list groups them; one is shown in full, edited
(a payload the schema refuses is refused, changing nothing), replayed, and the worker runs it;
purge asks for confirmation before deleting; a forged cross-site form is refused; read-only
mode shows no write control and refuses a write. Screenshots of each main page are artifacts.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time
from collections.abc import Callable

from playwright.sync_api import Browser, Page, expect

from tests.e2e.console.conftest import Stack, shoot


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_list_group_show_edit_replay_then_purge_with_confirmation(stack: Stack, page: Page) -> None:
    stack.start_worker()
    bad = stack.publish(-1, -2, -3)
    stack.wait_dead_letters(3)
    console = stack.start_console()

    # Overview: the real depths, refreshed in place (the page never reloads).
    page.goto(console + "/")
    row = page.locator(f'tr[data-queue="{stack.queue}"]')
    expect(row.locator('[data-col="dead"]')).to_have_text("3")
    expect(row.locator('[data-col="ready"]')).to_have_text("0")
    page.evaluate("window.__same_page = true")
    expect(page.locator("#live")).to_have_attribute("data-updated", re.compile(r"\d+"))
    assert page.evaluate("window.__same_page") is True
    expect(page.locator("#workers")).to_contain_text("up")
    shoot(page, f"overview-{stack.broker}")

    # Dead letters, grouped by reason and by exception.
    page.get_by_role("link", name="Dead letters", exact=True).click()
    page.get_by_label("Queue").select_option(stack.queue)
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#dlq-depth")).to_have_text("3")
    expect(page.locator("#by-reason")).to_contain_text("permanent")
    expect(page.locator("#by-reason tbody tr")).to_have_count(1)
    expect(page.locator("#by-reason tbody td.num")).to_have_text("3")
    expect(page.locator("#by-error")).to_contain_text("PermanentError")
    shoot(page, f"dead-letters-{stack.broker}")

    # One entry in full, then edited: first a payload the schema refuses, then a good one.
    target = bad[0]
    page.get_by_role("link", name=target).click()
    expect(page.locator("#entry-reason")).to_have_text("permanent")
    expect(page.locator("#payload")).to_contain_text('"width": -1')
    expect(page.locator("#traceback")).to_contain_text("PermanentError")
    expect(page.locator("#history tbody tr")).to_have_count(1)
    shoot(page, f"dead-letter-{stack.broker}")
    editor = page.get_by_label("Payload (JSON)")
    editor.fill(json.dumps({"image_id": 0, "width": "wide"}))
    page.get_by_role("button", name="Validate and replay").click()
    expect(page.locator("#edit-errors")).to_contain_text("'wide' is not of type 'integer'")
    stack.wait_dead_letters(3, timeout=5)  # all still there (a browse gives entries back)
    assert stack.succeeded() == []
    page.get_by_label("Payload (JSON)").fill(json.dumps({"image_id": 0, "width": 640}))
    page.get_by_role("button", name="Validate and replay").click()
    expect(page.locator("#notice")).to_contain_text(f"replayed {target}")
    stack.wait_dead_letters(2)
    assert eventually(lambda: stack.succeeded() == [target, "640"]), f"the edited job did not run: {stack.succeeded()}"

    # Purge asks first; nothing is deleted until the word is typed.
    page.locator("#entries tbody input[type=checkbox]").first.check()
    page.get_by_role("button", name="Purge selected…").click()
    expect(page.locator("#purge-count")).to_have_text("1")
    shoot(page, f"purge-confirm-{stack.broker}")
    stack.wait_dead_letters(2, timeout=5)
    page.get_by_label("Type purge to confirm").fill("yes")
    page.get_by_role("button", name="Delete 1 entries").click()
    expect(page.locator("#purge-wrong")).to_be_visible()
    stack.wait_dead_letters(2, timeout=5)
    page.get_by_label("Type purge to confirm").fill("purge")
    page.get_by_role("button", name="Delete 1 entries").click()
    expect(page.locator("#notice")).to_have_text("purged 1 entries")
    stack.wait_dead_letters(1, timeout=5)

    # Replay the whole filter: previewed (a dry run), then run in the background, followed live.
    page.get_by_role("button", name="Preview replay of all 1 matching…").click()
    expect(page.locator("#would-replay")).to_have_text("1")
    stack.wait_dead_letters(1, timeout=5)
    page.get_by_role("button", name="Replay 1 entries now").click()
    expect(page.locator("#replay-status")).to_have_text("Replayed 1 of 1 matching entries.")
    shoot(page, f"replay-{stack.broker}")
    stack.wait_dead_letters(1)  # its bug is still live (width -3): the worker dead-letters it again


def test_a_forged_cross_site_form_is_refused_and_read_only_refuses_writes(stack: Stack, browser: Browser) -> None:
    stack.publish(-5)
    stack.start_worker()
    stack.wait_dead_letters(1)
    console = stack.start_console()
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        page.goto(console + "/dead-letters?queue=" + stack.queue)  # the operator's session cookie
        expect(page.locator("#dlq-depth")).to_have_text("1")
        token = page.locator('input[name="csrf_token"]').first.get_attribute("value")
        # Another site (served by the browser's router) posts a purge at the console, even with a
        # leaked token: the browser sends its own Origin, and the console refuses.
        evil = (f'<form id="f" method="post" action="{console}/dead-letters/{stack.queue}/purge">'
                f'<input name="csrf_token" value="{token}"><input name="confirm" value="purge"></form>'
                '<script>document.getElementById("f").submit()</script>')
        page.route("http://evil.example/**", lambda route: route.fulfill(status=200, content_type="text/html", body=evil))
        with page.expect_navigation(url=re.compile(r".*/purge$")):
            page.goto("http://evil.example/")
        assert "cross-site request refused" in page.content()
        stack.wait_dead_letters(1, timeout=5)
    finally:
        context.close()

    read_only = stack.start_console("--read-only", name="console-read-only")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        page.goto(read_only + "/dead-letters?queue=" + stack.queue)
        expect(page.locator("#read-only-badge")).to_be_visible()
        expect(page.locator("#entries tbody tr")).to_have_count(1)
        for control in ("Purge selected…", "Preview replay of selected…", "Purge all matching…"):
            expect(page.get_by_role("button", name=control)).to_have_count(0)
        page.locator("a.row-link").first.click()
        expect(page.locator("#payload")).to_be_visible()
        expect(page.locator("textarea")).to_have_count(0)
        shoot(page, f"read-only-{stack.broker}")
        status = page.evaluate(
            """async (queue) => {
                const r = await fetch(`/dead-letters/${queue}/purge`, {method: "POST",
                    headers: {"Content-Type": "application/x-www-form-urlencoded"}, body: "confirm=purge"});
                return [r.status, r.headers.get("X-Conveyor-Reason")];
            }""", stack.queue)
        assert status == [403, "read_only"]
        stack.wait_dead_letters(1, timeout=5)
    finally:
        context.close()


def test_jobs_page_finds_a_job_and_follows_a_dead_one_to_its_dead_letter(stack: Stack, page: Page) -> None:
    stack.env["CONVEYOR_JOB_STATE_URL"] = f"sqlite:///{stack.tmp}/jobs.db"  # the worker's and the console's
    stack.start_worker()
    good, bad = stack.publish(320, -7)
    stack.wait_dead_letters(1)
    assert eventually(lambda: stack.succeeded() == [good, "320"])

    def stored() -> dict[str, str]:  # the worker batches its writes (every second): wait for them
        with contextlib.closing(sqlite3.connect(stack.tmp / "jobs.db")) as db:
            return dict(db.execute("SELECT job_id, state FROM conveyor_jobs").fetchall())

    assert eventually(lambda: stored() == {good: "succeeded", bad: "dead_lettered"})
    console = stack.start_console()
    page.goto(console + "/jobs")
    expect(page.locator(f'tr[data-job="{good}"]')).to_contain_text("succeeded")
    expect(page.locator(f'tr[data-job="{bad}"]')).to_contain_text("dead_lettered")
    shoot(page, f"jobs-{stack.broker}")
    page.get_by_label("Job id").fill(good)
    page.get_by_role("button", name="Find").click()
    expect(page.locator("#job-state-now")).to_contain_text("succeeded")
    expect(page.locator("#timeline")).to_contain_text("attempt 1 started")
    page.goto(console + f"/jobs/{bad}")
    expect(page.locator("#job-state-now")).to_contain_text("dead_lettered")
    shoot(page, f"job-{stack.broker}")
    page.locator("#job-dead-letter").click()
    expect(page.locator("#entry-job")).to_have_text(bad)
    expect(page.locator("#payload")).to_contain_text('"width": -7')
