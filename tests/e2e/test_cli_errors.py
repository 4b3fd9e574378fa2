"""What the ``conveyor`` CLI says when it is used wrongly: one line on stderr, never a traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.e2e.test_cli import ROOT

BROKER_COMMANDS = {
    "worker": ["worker", "tests.e2e.app:jobs", "--http-port", "0"],
    "publish": ["publish", "e2e.nap", "--payload", '{"seconds": 0}'],
    "dlq list": ["dlq", "list"],
    "dlq show": ["dlq", "show", "some-id"],
    "dlq replay": ["dlq", "replay"],
    "dlq purge": ["dlq", "purge", "--yes"],
    "status": ["status", "--interval", "0"],
}


def conveyor_without_broker(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """The CLI with no broker configured anywhere (no flag, no CONVEYOR_BROKER_URL or its _FILE)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_BROKER_URL")}
    return subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=ROOT, env={**env, **extra_env},
                          capture_output=True, text=True, timeout=60)


def error_lines(stderr: str) -> list[str]:
    """stderr without click's usage header ("Usage: …", "Try '… --help' for help.", blank lines)."""
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith("Usage: ") and not line.startswith("Try '")]


def assert_one_line_error(result: subprocess.CompletedProcess[str], exit_code: int, *needles: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == exit_code, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("command", list(BROKER_COMMANDS))
def test_a_broker_command_without_a_broker_is_a_one_line_usage_error(command: str) -> None:
    result = conveyor_without_broker(*BROKER_COMMANDS[command])
    assert_one_line_error(result, 2, "--broker", "CONVEYOR_BROKER_URL")
    assert "confirmed" not in result.stdout


def test_an_empty_broker_variable_is_no_broker() -> None:
    result = conveyor_without_broker(*BROKER_COMMANDS["publish"], CONVEYOR_BROKER_URL="")
    assert_one_line_error(result, 2, "--broker", "CONVEYOR_BROKER_URL")


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_the_in_memory_broker_is_used_only_when_asked_for(how: str) -> None:
    if how == "flag":
        result = conveyor_without_broker(*BROKER_COMMANDS["publish"], "--broker", "memory://")
    else:
        result = conveyor_without_broker(*BROKER_COMMANDS["publish"], CONVEYOR_BROKER_URL="memory://")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["confirmed"] is True


def test_the_demo_needs_no_broker() -> None:
    result = conveyor_without_broker("demo", "--jobs", "20")
    assert result.returncode == 0, result.stderr
    assert "20/20 ✓" in result.stdout


MISUSES = {
    "worker: no such module": (["worker", "tests.e2e.no_such_app"], "tests.e2e.no_such_app"),
    "worker: no such attribute": (["worker", "tests.e2e.app:no_such_registry"], "no_such_registry"),
    "publish --app: no such module": (["publish", "e2e.nap", "--payload", "{}", "--app", "tests.e2e.no_such_app"],
                                      "tests.e2e.no_such_app"),
    "publish --app: no such attribute": (["publish", "e2e.nap", "--payload", "{}", "--app",
                                          "tests.e2e.app:no_such_registry"], "no_such_registry"),
    "worker: a class (it was called: a ValidationError traceback)": (["worker", "tests.e2e.app:Nap"], "is a class"),
    "worker: a module, not a registry": (["worker", "tests.e2e.app:os"], "is a module, not a JobRegistry"),
    "worker: no jobs registered (it consumed nothing and was ready for good)": (
        ["worker", "tests.e2e.sync_app:no_jobs", "--http-port", "0"], "no jobs registered"),
    "publish --app: a class": (["publish", "e2e.nap", "--payload", "{}", "--app", "tests.e2e.app:Nap"], "--app"),
    "--payload: not JSON": (["publish", "e2e.nap", "--payload", "{not json"], "--payload"),
    "--payload: no such @file": (["publish", "e2e.nap", "--payload", "@/no/such/payload.json"],
                                 "/no/such/payload.json"),
    "--payload: not an object": (["publish", "e2e.nap", "--payload", "[1, 2]"], "JSON object"),
    "--header without =": (["publish", "e2e.nap", "--payload", "{}", "--header", "foo"], "--header"),
    "--log-level bogus": (["--log-level", "bogus", "publish", "e2e.nap", "--payload", "{}"], "--log-level"),
    "dlq list --limit -1": (["dlq", "list", "--limit", "-1"], "--limit"),
    "dlq replay --limit -5": (["dlq", "replay", "--limit", "-5"], "--limit"),
    "dlq replay --rate nan (slept forever)": (["dlq", "replay", "--rate", "nan"], "--rate"),
    "dlq replay --rate 0": (["dlq", "replay", "--rate", "0"], "--rate"),
    "status --interval nan": (["status", "--interval", "nan"], "--interval"),
    "status --interval -5": (["status", "--interval", "-5"], "--interval"),
    "status --dlq-scan-limit -1": (["status", "--dlq-scan-limit", "-1"], "--dlq-scan-limit"),
    "console --refresh nan (sampled in a busy loop, memory growing)": (["console", "--refresh", "nan"], "--refresh"),
    "console --refresh inf (never sampled)": (["console", "--refresh", "inf"], "--refresh"),
    "status --queue '' (a row with an error)": (["status", "--queue", "q", "--queue", ""], "--queue"),
    "console --queue ''": (["console", "--queue", " "], "--queue"),
    "dlq list --queue '' (looked for the DLQ '.dlq')": (["dlq", "list", "--queue", ""], "--queue"),
}


@pytest.mark.parametrize("misuse", list(MISUSES))
def test_a_misused_command_is_a_one_line_usage_error_without_a_traceback(misuse: str) -> None:
    args, needle = MISUSES[misuse]
    result = conveyor_without_broker(*args, "--broker", "memory://", PYTHONPATH=str(ROOT))
    assert_one_line_error(result, 2, needle)
    assert result.stdout == ""


def test_a_bogus_log_level_in_the_environment_is_a_one_line_usage_error() -> None:
    result = conveyor_without_broker(*BROKER_COMMANDS["publish"], "--broker", "memory://", CONVEYOR_LOG_LEVEL="bogus")
    assert_one_line_error(result, 2, "CONVEYOR_LOG_LEVEL")


# '\udcff': the byte 0xff on the command line (not UTF-8), which printed a UnicodeEncodeError traceback.
@pytest.mark.parametrize("payload", ['{"ratio": NaN}', '{"n": 1, "n": 2}', '{"n": Infinity}', '{"s": "\udcff"}'])
def test_publish_refuses_json_the_wire_would_reject_in_one_line_with_the_reason_code(payload: str) -> None:
    result = conveyor_without_broker("publish", "e2e.nap", "--payload", payload, "--broker", "memory://")
    assert_one_line_error(result, 2, "--payload", "malformed")
    assert "MalformedMessage" not in result.stderr and result.stdout == ""


def test_a_payload_the_app_rejects_is_one_line_with_the_reason_code() -> None:
    result = conveyor_without_broker("publish", "e2e.nap", "--payload", '{"seconds": "soon"}', "--app",
                                     "tests.e2e.app:jobs", "--broker", "memory://", PYTHONPATH=str(ROOT))
    assert_one_line_error(result, 1, "InvalidPayload (invalid_payload)", "seconds")


@pytest.mark.parametrize("job_type", ["", "Send Email"])
def test_a_job_type_no_worker_accepts_is_one_line_with_the_reason_code(job_type: str) -> None:
    result = conveyor_without_broker("publish", job_type, "--payload", "{}", "--broker", "memory://")
    assert_one_line_error(result, 1, "MalformedMessage (malformed)", "job_type")
    assert result.stdout == ""


def test_an_empty_queue_is_a_usage_error_not_the_default_queue() -> None:
    # It published to conveyor.default and said so on stdout, exit 0.
    result = conveyor_without_broker("publish", "e2e.nap", "--payload", "{}", "--queue", "", "--broker", "memory://")
    assert_one_line_error(result, 2, "--queue")
    assert result.stdout == ""


def _at_most_2_gib() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # the old code read /dev/zero until the OOM killer


def test_a_payload_file_is_read_no_further_than_the_largest_payload_and_dev_zero_is_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    result = subprocess.run(
        [sys.executable, "-m", "conveyor", "publish", "e2e.nap", "--payload", "@/dev/zero", "--broker", "memory://"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, preexec_fn=_at_most_2_gib,
    )
    assert_one_line_error(result, 2, "--payload", "oversize", "/dev/zero", "CONVEYOR_MAX_MESSAGE_BYTES")
    assert result.stdout == ""


def test_a_payload_file_over_the_limit_names_the_setting_and_one_at_the_limit_is_published(tmp_path) -> None:  # type: ignore[no-untyped-def]
    big, fits = tmp_path / "big.json", tmp_path / "fits.json"
    big.write_text('{"pad": "' + "x" * 2000 + '"}')
    fits.write_text('{"pad": "' + "x" * 500 + '"}')
    limit = {"CONVEYOR_MAX_MESSAGE_BYTES": "1024"}
    refused = conveyor_without_broker("publish", "e2e.nap", "--payload", f"@{big}", "--broker", "memory://", **limit)
    assert_one_line_error(refused, 2, "oversize", "1,024 bytes", "CONVEYOR_MAX_MESSAGE_BYTES")
    published = conveyor_without_broker("publish", "e2e.nap", "--payload", f"@{fits}", "--broker", "memory://", **limit)
    assert published.returncode == 0, published.stderr
    assert json.loads(published.stdout)["confirmed"] is True


ONE_SHOT = [name for name in BROKER_COMMANDS if name != "worker"]


@pytest.mark.parametrize(("scheme", "command"), [
    *(("amqp", name) for name in ONE_SHOT),
    ("pulsar", "status"), ("pulsar", "publish"),  # ten seconds each: the client's connect timeout
])
def test_an_unreachable_broker_is_one_line_for_one_shot_commands(scheme: str, command: str) -> None:
    # The clients log the failed connect themselves: aiormq a line, the Pulsar client's native
    # logger a line per retry (nine in ten seconds), all before the command's own one line.
    with socket.socket() as held:  # bound, never listening: refused, and no other test takes it
        held.bind(("127.0.0.1", 0))
        url = f"{scheme}://127.0.0.1:{held.getsockname()[1]}"
        result = conveyor_without_broker(*BROKER_COMMANDS[command], CONVEYOR_BROKER_URL=url)
    line = assert_one_line_error(result, 1, "TransportError (broker_error): cannot connect to ")
    assert result.stdout == "", result.stdout
    assert url.split("://")[1] in line


def test_a_bad_flag_is_named_as_the_flag_and_wins_over_a_good_variable() -> None:
    result = conveyor_without_broker("worker", "tests.e2e.app:jobs", "--broker", "memory://", "--concurrency", "0",
                                     CONVEYOR_CONCURRENCY="8")
    line = assert_one_line_error(result, 2, "(invalid_configuration): --concurrency:")
    assert "CONVEYOR_CONCURRENCY" not in line, "the variable is fine; the flag is what the user got wrong"


@pytest.mark.parametrize(("variable", "value"), [("CONVEYOR_CRASH_LIMIT", "99999999999999999999999"),
                                                 ("CONVEYOR_MAX_MESSAGE_BYTES", "99999999999999999999999"),
                                                 ("CONVEYOR_HTTP_HOST", "")])
def test_a_setting_no_worker_can_honour_is_a_one_line_usage_error_with_its_reason_code(variable: str,
                                                                                      value: str) -> None:
    # A count past 64 bits was orjson's TypeError traceback at the worker's start; an empty
    # CONVEYOR_HTTP_HOST served /metrics on every interface.
    result = conveyor_without_broker("worker", "tests.e2e.app:jobs", "--broker", "memory://", **{variable: value})
    assert_one_line_error(result, 2, variable, "(invalid_configuration)")
    assert result.stdout == ""


def test_an_idempotency_url_that_does_not_parse_is_a_usage_error_naming_the_setting() -> None:
    result = conveyor_without_broker("worker", "tests.e2e.app:jobs", "--http-port", "0", "--broker", "memory://",
                                     CONVEYOR_IDEMPOTENCY_URL="garbage")
    assert_one_line_error(result, 2, "(invalid_configuration)", "CONVEYOR_IDEMPOTENCY_URL", "--idempotency-url")


@pytest.mark.parametrize(("command", "store"), [
    (["worker", "tests.e2e.app:jobs", "--http-port", "0"], "garbage"),
    (["publish", "e2e.nap", "--payload", "{}"], "s3://"),
    (["payloads", "sweep", "--older-than", "7d"], "file://relative/path"),
])
def test_a_payload_store_that_does_not_parse_is_a_usage_error_naming_the_setting(command: list[str],
                                                                                  store: str) -> None:
    # It was exit 1 with the store's own words, naming neither the variable nor the flag.
    broker = [] if command[0] == "payloads" else ["--broker", "memory://"]
    result = conveyor_without_broker(*command, *broker, CONVEYOR_PAYLOAD_STORE=store)
    assert_one_line_error(result, 2, "(invalid_configuration)", "CONVEYOR_PAYLOAD_STORE", "--payload-store")
    assert result.stdout == ""
