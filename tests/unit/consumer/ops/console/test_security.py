"""The console's guards: CSRF (origin and token), read-only, authentication, host names, headers,
masking, and the refusal to listen beyond loopback without credentials."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from conveyor.consumer.ops.console import (
    ConsoleAuth,
    ConsoleConfig,
    ConsoleRefused,
    ConsoleState,
    OverviewHistory,
    check_bind,
    load_auth,
)
from conveyor.consumer.ops.console.security import SESSION_COOKIE
from conveyor.consumer.ops.console.state import MAX_SESSIONS
from tests.unit.consumer.ops.console.conftest import SECRET, World, csrf_of, origin


async def test_every_page_sends_a_csp_without_inline_script_and_forbids_framing(make_client) -> None:
    client = await make_client()
    for path in ("/", "/dead-letters", "/overview/live", "/api/overview", "/no-such-page"):
        response = await client.get(path)
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_the_session_cookie_is_httponly_and_samesite_strict(make_client) -> None:
    client = await make_client()
    response = await client.get("/")
    cookie = response.cookies[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"


async def test_a_forged_cross_site_purge_is_refused_and_removes_nothing(make_client, world: World) -> None:
    client = await make_client()
    token = csrf_of(await (await client.get("/dead-letters")).text())
    forged = await client.post("/dead-letters/conveyor.default/purge", data={"csrf_token": token, "confirm": "purge"},
                               headers={"Origin": "http://evil.example"})
    assert forged.status == 403 and forged.headers["X-Conveyor-Reason"] == "csrf_origin"
    by_referer = await client.post("/dead-letters/conveyor.default/purge", data={"csrf_token": token, "confirm": "purge"},
                                   headers={"Referer": "http://evil.example/page"})
    assert by_referer.status == 403
    assert await (await world.dead_letters()).depth() == 4


async def test_a_state_change_without_the_sessions_token_is_refused(make_client, world: World) -> None:
    client = await make_client()
    await client.get("/dead-letters")  # a session
    for data in ({"confirm": "purge"}, {"confirm": "purge", "csrf_token": "0" * 64}):
        refused = await client.post("/dead-letters/conveyor.default/purge", data=data, headers={"Origin": origin(client)})
        assert refused.status == 403 and refused.headers["X-Conveyor-Reason"] == "csrf_token"
    other = await make_client()  # another browser's valid token is no good here
    stolen = csrf_of(await (await other.get("/dead-letters")).text())
    refused = await client.post("/dead-letters/conveyor.default/purge", data={"confirm": "purge", "csrf_token": stolen})
    assert refused.status == 403
    assert await (await world.dead_letters()).depth() == 4


async def test_the_same_origin_with_the_token_may_purge(make_client, world: World) -> None:
    client = await make_client()
    token = csrf_of(await (await client.get("/dead-letters")).text())
    done = await client.post("/dead-letters/conveyor.default/purge", data={"csrf_token": token, "confirm": "purge"},
                             headers={"Origin": origin(client)}, allow_redirects=False)
    assert done.status == 303 and "purged+4+entries" in done.headers["Location"]
    assert await (await world.dead_letters()).depth() == 0


async def test_read_only_hides_every_write_control_and_refuses_writes(make_client, world: World) -> None:
    client = await make_client(read_only=True)
    listing = await (await client.get("/dead-letters")).text()
    [entry] = [r for r in await (await world.dead_letters()).list() if r.job_id][:1]
    shown = await (await client.get(f"/dead-letters/conveyor.default/{entry.dead_letter_id}")).text()
    for html in (listing, shown):
        assert "read-only" in html
        for control in ('id="purge-', 'id="replay-', "<textarea", "/purge", "/replay"):
            assert control not in html
    assert 'name="csrf_token"' not in listing  # no form at all
    for path, data in (("/dead-letters/conveyor.default/purge", {"confirm": "purge"}),
                       ("/dead-letters/conveyor.default/replay", {"confirm": "replay"}),
                       (f"/dead-letters/conveyor.default/{entry.dead_letter_id}/replay-edited", {"payload": "{}"})):
        refused = await client.post(path, data=data, headers={"Origin": origin(client)})
        assert refused.status == 403 and refused.headers["X-Conveyor-Reason"] == "read_only"
    assert await (await world.dead_letters()).depth() == 4


async def test_a_non_loopback_host_name_is_refused_without_credentials(make_client) -> None:
    client = await make_client()
    rebound = await client.get("/", headers={"Host": "attacker.example:8765"})
    assert rebound.status == 421 and rebound.headers["X-Conveyor-Reason"] == "bad_host"
    assert (await client.get("/", headers={"Host": "localhost:8765"})).status == 200


async def test_token_auth_sends_strangers_to_sign_in_and_rotates_the_session(make_client) -> None:
    token = "t" * 24
    client = await make_client(auth=ConsoleAuth(token=token))
    away = await client.get("/dead-letters", allow_redirects=False)
    assert away.status == 303 and away.headers["Location"].startswith("/login")
    assert (await client.get("/api/overview", allow_redirects=False)).status == 303
    form = await (await client.get("/login")).text()
    before = client.session.cookie_jar.filter_cookies(client.make_url("/"))[SESSION_COOKIE].value
    wrong = await client.post("/login", data={"csrf_token": csrf_of(form), "token": "x" * 24},
                              headers={"Origin": origin(client)})
    assert wrong.status == 401 and "not right" in await wrong.text()
    right = await client.post("/login", data={"csrf_token": csrf_of(form), "token": token, "next": "//evil.example"},
                              headers={"Origin": origin(client)}, allow_redirects=False)
    assert right.status == 303 and right.headers["Location"] == "/"
    after = client.session.cookie_jar.filter_cookies(client.make_url("/"))[SESSION_COOKIE].value
    assert after != before
    assert (await client.get("/dead-letters")).status == 200
    stranger = await make_client(auth=ConsoleAuth(token=token))
    assert (await stranger.get("/api/overview", headers={"Authorization": f"Bearer {token}"})).status == 200
    assert (await stranger.get("/api/overview", headers={"Authorization": "Bearer nope"},
                               allow_redirects=False)).status == 303


async def test_basic_auth_is_asked_for_on_every_request(make_client) -> None:
    client = await make_client(auth=ConsoleAuth(user="ops", password="correct horse"))
    asked = await client.get("/")
    assert asked.status == 401 and asked.headers["WWW-Authenticate"].startswith("Basic")
    good = base64.b64encode(b"ops:correct horse").decode()
    bad = base64.b64encode(b"ops:wrong horse").decode()
    assert (await client.get("/", headers={"Authorization": f"Basic {good}"})).status == 200
    assert (await client.get("/", headers={"Authorization": f"Basic {bad}"})).status == 401
    assert (await client.get("/", headers={"Authorization": "Basic !!notbase64"})).status == 401


async def test_a_secret_in_a_dead_letter_is_masked_on_every_page(make_client, world: World) -> None:
    client = await make_client()
    entries = [r for r in await (await world.dead_letters()).list() if r.job_id]
    pages = [await (await client.get(path)).text() for path in (
        "/", "/dead-letters", "/api/dead-letters", *(f"/dead-letters/conveyor.default/{r.dead_letter_id}" for r in entries))]
    shown = pages[3]
    assert "width must be positive (token ***)" in shown
    assert not [page for page in pages if SECRET in page or SECRET[-12:] in page]


def test_listening_beyond_loopback_needs_credentials() -> None:
    for host in ("0.0.0.0", "192.0.2.7", "::", "console.example"):
        with pytest.raises(ConsoleRefused) as refused:
            check_bind(host, None)
        assert refused.value.reason == "unauthenticated_bind" and "\n" not in str(refused.value)
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        check_bind(host, None)
    check_bind("0.0.0.0", ConsoleAuth(token="t" * 20))


def test_credentials_come_from_secret_files_and_weak_ones_are_refused(tmp_path: Path) -> None:
    token, basic, weak = tmp_path / "token", tmp_path / "basic", tmp_path / "weak"
    token.write_text("s3cr3t-token-of-24-chars\n")
    basic.write_text("ops:correct horse")
    weak.write_text("short")
    assert load_auth(token, None) == ConsoleAuth(token="s3cr3t-token-of-24-chars")
    assert load_auth(None, basic) == ConsoleAuth(user="ops", password="correct horse")
    assert load_auth(None, None) is None
    for args, reason in (((weak, None), "weak_token"), ((None, weak), "bad_basic_auth"),
                         ((token, basic), "conflicting_auth")):
        with pytest.raises(ConsoleRefused) as refused:
            load_auth(*args)
        assert refused.value.reason == reason


def test_signed_in_sessions_are_bounded_oldest_forgotten_first(world: World) -> None:
    state = ConsoleState(config=ConsoleConfig(), transport=world.transport, history=OverviewHistory(60))
    for n in range(MAX_SESSIONS + 5):
        state.sign_in(f"s{n}")
    assert len(state.signed_in) == MAX_SESSIONS and "s0" not in state.signed_in and f"s{MAX_SESSIONS + 4}" in state.signed_in
