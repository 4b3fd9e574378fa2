"""``conveyor console`` and ``conveyor demo --console`` as an operator starts them (subprocesses)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tests.e2e.console.conftest import ROOT, Process, free_port


def conveyor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_a_non_loopback_bind_without_credentials_refuses_to_start(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "::"):
        refused = conveyor("console", "--broker", "memory://", "--host", host, "--port", "0")
        assert refused.returncode == 1
        [line] = refused.stderr.strip().splitlines()
        assert "(reason: unauthenticated_bind)" in line and "Traceback" not in refused.stderr
    weak = tmp_path / "token"
    weak.write_text("short\n")
    refused = conveyor("console", "--broker", "memory://", "--host", "0.0.0.0", "--token-file", str(weak))
    assert refused.returncode == 1 and "(reason: weak_token)" in refused.stderr


def test_with_a_token_file_it_listens_beyond_loopback_and_asks_for_the_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("a-long-enough-console-token\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    console = Process(["console", "--broker", "memory://", "--host", "0.0.0.0", "--port", str(port),
                       "--token-file", str(token)], {**env, "PYTHONPATH": str(ROOT)}, tmp_path, "console")
    try:
        console.wait_for("listening on http://0.0.0.0:")
        stranger = urllib.request.Request(f"http://127.0.0.1:{port}/api/overview")
        with urllib.request.urlopen(stranger, timeout=10) as followed:  # to the sign-in form, no data
            assert followed.url.endswith("/login?next=/api/overview") and "Access token" in followed.read().decode()
        opener = urllib.request.build_opener(NoRedirect())
        response = opener.open(stranger, timeout=10)
        assert response.status == 303 and response.headers["Location"].startswith("/login")
        allowed = urllib.request.Request(f"http://127.0.0.1:{port}/api/overview",
                                         headers={"Authorization": "Bearer a-long-enough-console-token"})
        with urllib.request.urlopen(allowed, timeout=10) as answer:
            assert json.loads(answer.read())["queues"][0]["queue"] == "conveyor.default"
    finally:
        console.stop()
    assert "a-long-enough-console-token" not in console.out.read_text() + console.err.read_text()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None

    def http_error_303(self, req, fp, code, msg, headers):  # type: ignore[no-untyped-def]
        return fp


def test_demo_console_keeps_the_demos_broker_and_console_up(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    demo = Process(["demo", "--jobs", "60", "--console", "--console-port", str(port)], {**env, "PYTHONPATH": str(ROOT)},
                   tmp_path, "demo")
    try:
        demo.wait_for("listening on")
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/overview", timeout=10) as answer:
                data = json.loads(answer.read())
            rates = data["rates_per_second"]
            if rates["completed"]:
                break
            assert time.monotonic() < deadline, f"no jobs completed on the demo's console: {data}"
            time.sleep(0.5)
        [queue] = data["queues"]
        assert queue["dead_letters"] >= 3  # the demo's poison messages at least
        [worker] = data["workers"]
        assert worker["up"] and set(worker["breakers"]) == {"images.resize", "payments-api"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dead-letters", timeout=10) as answer:
            assert "malformed" in answer.read().decode()
    finally:
        demo.stop()
    assert "accounted for" in demo.out.read_text() or "Final accounting" in demo.out.read_text()


def test_a_ten_kilobyte_id_gets_its_reason_and_an_oversized_request_line_logs_no_traceback(tmp_path: Path) -> None:
    # A 10 KB id was refused by aiohttp's parser (its 8 KiB line limit) with a 400 that named no
    # reason, and every such request wrote a traceback to the console's stderr.
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    console = Process(["console", "--broker", "memory://", "--port", str(port)], {**env, "PYTHONPATH": str(ROOT)},
                      tmp_path, "console")
    try:
        console.wait_for("listening on http://127.0.0.1:")
        for path in (f"/jobs/{'a' * 10240}", f"/dead-letters/conveyor.default/{'é' * 3000}"):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{urllib.parse.quote(path)}", timeout=10)
            except urllib.error.HTTPError as refused:
                assert refused.code == 404 and refused.headers["X-Conveyor-Reason"], path[:30]
                assert "(reason: " in refused.read().decode()
            else:
                raise AssertionError(f"{path[:30]}… was answered")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:  # past any limit
            raw.sendall(b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert raw.recv(12)[-3:] == b"400"
    finally:
        console.stop()
    err = console.err.read_text()
    assert "Traceback" not in err and "refused (400, LineTooLong" in err, err[-2000:]
