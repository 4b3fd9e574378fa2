"""Secrets from variables or files, and masked wherever text leaves the process."""

from __future__ import annotations

import io
import logging
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from conveyor.common.errors import ConfigurationError
from conveyor.common.logging import JsonFormatter, TextFormatter, configure_logging
from conveyor.common.secrets import Redactor, mask_secrets, mask_url, scrub_error, secret_fields, url_credentials
from conveyor.common.settings import Settings
from conveyor.consumer.cli import main

CANARY = "cnry-7f3a9c"


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """The CLI and configure_logging replace the root handler: put the test runner's back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_every_secret_setting_is_typed_as_a_secret() -> None:
    assert set(secret_fields(Settings)) == {"broker_url", "idempotency_url", "job_state_url", "s3_secret_key"}


@pytest.mark.parametrize("name", ["broker_url", "idempotency_url", "s3_secret_key"])
def test_each_secret_setting_reads_its_file_variable(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret"
    secret.write_text(f"amqp://u:{CANARY}@h/\n")  # as `echo … > file` writes it
    monkeypatch.setenv(f"CONVEYOR_{name.upper()}_FILE", str(secret))
    value = getattr(Settings(), name)
    assert isinstance(value, SecretStr)
    assert value.get_secret_value() == f"amqp://u:{CANARY}@h/"
    assert CANARY not in repr(Settings())


def test_a_variable_and_its_file_together_are_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "key"
    secret.write_text(CANARY)
    monkeypatch.setenv("CONVEYOR_S3_SECRET_KEY", "other")
    monkeypatch.setenv("CONVEYOR_S3_SECRET_KEY_FILE", str(secret))
    with pytest.raises(ConfigurationError, match="not both"):
        Settings()


def test_an_unreadable_secret_file_names_the_path_never_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_BROKER_URL_FILE", "/nonexistent/broker-url")
    with pytest.raises(ConfigurationError, match="CONVEYOR_BROKER_URL_FILE: cannot read '/nonexistent/broker-url'"):
        Settings()


def test_flags_win_over_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "url"
    secret.write_text("sqlite:///from-file.db")
    monkeypatch.setenv("CONVEYOR_IDEMPOTENCY_URL_FILE", str(secret))
    assert Settings(idempotency_url="sqlite:///flag.db").idempotency_url.get_secret_value() == "sqlite:///flag.db"


def test_redactor_masks_known_values_and_the_parts_of_urls() -> None:
    redact = Redactor([
        f"amqp://user:{CANARY}%21@host/vhost",
        SecretStr("s3-" + CANARY),
        "pulsar://h:6650/?token=tok-" + CANARY + "&tenant=public",
        "abc",  # too short to mask: it would hide half of every line
        None,
    ])
    text = (f"url amqp://user:{CANARY}%21@host/vhost pw {CANARY}! key s3-{CANARY} "
            f"token tok-{CANARY} other amqp://x:unknown@h/ abc")
    masked = redact(text)
    assert CANARY not in masked and "unknown" not in masked
    assert masked.endswith(" abc") and "tenant" not in masked
    assert CANARY not in repr(redact)


def test_a_transport_error_is_not_garbled_by_a_password_too_short_to_mask() -> None:
    url = "amqp://u:p@127.0.0.1:1/"
    error = RuntimeError(f"Server connection unexpectedly closed; cannot reach {url}")
    assert scrub_error(error, url) == "Server connection unexpectedly closed; cannot reach amqp://u:***@127.0.0.1:1/"
    assert scrub_error(RuntimeError("rejected tok-secret"), "pulsar://h:6650", "tok-secret", "pw") == "rejected ***"


def test_redactor_from_settings_knows_every_secret_setting_and_flag_values() -> None:
    settings = Settings(broker_url=SecretStr(f"amqp://u:b-{CANARY}@h/"), s3_secret_key=SecretStr(f"k-{CANARY}"),
                        idempotency_url=SecretStr(f"postgresql://u:i-{CANARY}@db/x"))
    redact = Redactor.from_settings(settings, f"amqp://u:flag-{CANARY}@h/")
    for value in (f"b-{CANARY}", f"k-{CANARY}", f"i-{CANARY}", f"flag-{CANARY}"):
        assert redact(f"..{value}..") == "..***.."


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "t", "levelno": logging.ERROR, "levelname": "ERROR", "msg": msg})
    record.__dict__.update(extra)
    return record


def test_a_huge_hostile_log_record_is_one_bounded_valid_json_line() -> None:
    hostile = ('"quoted"\n{"level":"info","msg":"forged"}\r\n' + "\\" + "x" * 100) * 10_000  # ~1.4 MB
    try:
        raise RuntimeError(hostile + CANARY)
    except RuntimeError:
        import sys

        exc_info = sys.exc_info()
    record = _record(hostile, job_type=hostile, error_message=hostile + CANARY, tags=[hostile] * 1000)
    record.exc_info = exc_info
    line = JsonFormatter(Redactor([CANARY])).format(record)
    assert "\n" not in line and "\r" not in line
    assert len(line) <= 16 * 1024
    parsed = orjson.loads(line)
    assert parsed["level"] == "error" and parsed["msg"].startswith('"quoted"\n')
    assert CANARY not in line


def test_a_big_but_legal_line_keeps_its_fields_truncated() -> None:
    line = JsonFormatter().format(_record("m" * 10_000, job_type="j" * 5000, job_id="abc"))
    parsed = orjson.loads(line)
    assert parsed["job_id"] == "abc" and len(parsed["msg"]) == 2000 and len(parsed["job_type"]) == 2000


def test_text_logs_are_one_line_per_record_and_masked() -> None:
    line = TextFormatter(Redactor([CANARY])).format(_record(f"a\nforged line\r\n{CANARY} amqp://u:pw12@h/"))
    assert "\n" not in line and "\r" not in line
    assert "a\\nforged line\\r\\n*** amqp://u:***@h/" in line


def test_configure_logging_applies_the_redactor() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream, redact=Redactor([CANARY]))
    logging.getLogger("t").warning("raw %s", CANARY, extra={"dsn": CANARY, "job_type": f"x{CANARY}"})
    assert CANARY not in stream.getvalue() and stream.getvalue().count("***") == 3


def test_a_password_on_the_command_line_is_warned_about_and_never_echoed() -> None:
    result = CliRunner().invoke(main, ["dlq", "list", "--broker", f"amqp://u:{CANARY}@127.0.0.1:1/"])
    assert result.exit_code != 0
    assert "carries a credential" in result.output and "CONVEYOR_BROKER_URL_FILE" in result.output
    assert CANARY not in result.output


def test_the_broker_url_can_come_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "broker"
    secret.write_text(f"amqp://u:{CANARY}@127.0.0.1:1/\n")
    monkeypatch.setenv("CONVEYOR_BROKER_URL_FILE", str(secret))
    monkeypatch.delenv("CONVEYOR_BROKER_URL", raising=False)
    result = CliRunner().invoke(main, ["dlq", "list"])
    assert result.exit_code != 0
    assert "cannot connect to amqp://u:***@127.0.0.1:1/" in result.output  # it used the file's URL
    assert "carries a credential" not in result.output and CANARY not in result.output


@pytest.mark.parametrize("command", [["dlq", "list"], ["dlq", "show", "x"], ["dlq", "replay", "--dry-run"], ["status"]])
def test_a_bad_setting_is_a_usage_error_naming_it_never_a_traceback_or_its_value(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_CONCURRENCY", CANARY)
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 2, result.output
    assert "ConfigurationError (invalid_configuration): CONVEYOR_CONCURRENCY" in result.output
    assert CANARY not in result.output
    assert isinstance(result.exception, SystemExit)  # click's usage exit, not an error escaping


def test_url_credentials_are_a_urls_secrets_without_the_url_itself() -> None:
    url = "amqp://ops:p%40ss-CNRY1@broker:5672/prod?token=CNRYtok123"
    assert url_credentials(url) == {"p%40ss-CNRY1", "p@ss-CNRY1", "CNRYtok123"}
    assert url_credentials("pulsar://127.0.0.1:6650") == set()
    assert url_credentials("plain-secret-value") == {"plain-secret-value"}
    masked = Redactor(url_credentials(url))(f"broker {url}")
    assert "CNRY" not in masked and "broker:5672/prod" in masked


@pytest.mark.parametrize("url", [
    "amqp://app:s3cr/et-canary@h1:5672,h2:5673/",
    "postgresql://app:s3cr?et-canary@db/app",
    "amqps://app:s3cr#et-canary@h1/vhost",
])
def test_mask_url_masks_a_password_holding_an_unencoded_slash_question_mark_or_hash(url: str) -> None:
    masked = mask_url(url)
    assert "s3cr" not in masked and "canary" not in masked, masked
    assert masked.startswith(url.partition("://")[0] + "://app:***@"), masked


def test_a_supervised_worker_process_does_not_repeat_the_supervisors_password_warning(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor warned once; its N worker processes run the same command line."""
    monkeypatch.setenv("E2E_QUEUE", "unit.secrets.child")
    args = ["worker", "tests.e2e.processes_app:jobs", "--http-port", "0", "--broker", f"amqp://u:{CANARY}@127.0.0.1:1/"]
    monkeypatch.setenv("CONVEYOR_WORKER_CHILD", "1")
    child = CliRunner().invoke(main, args)
    assert child.exit_code != 0 and "cannot connect" in child.output, child.output
    assert "carries a credential" not in child.output and CANARY not in child.output


def test_stall_limits_out_of_order_are_a_usage_error_naming_both_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_STALL_WARN_AFTER", "100")
    monkeypatch.setenv("CONVEYOR_STALL_EXIT_AFTER", "10")
    result = CliRunner().invoke(main, ["worker", "tests.integration.accounting_app", "--broker", "memory://"])
    assert result.exit_code == 2, result.output
    assert "CONVEYOR_STALL_EXIT_AFTER (10.0) must be ≥ CONVEYOR_STALL_WARN_AFTER (100.0)" in result.output
    assert "Traceback" not in result.output and "CONVEYOR_:" not in result.output
    monkeypatch.setenv("CONVEYOR_STALL_EXIT_AFTER", "0")  # never exit: any warning limit goes with it
    assert Settings().stall_exit_after == 0


def test_a_url_without_credentials_is_not_masked_where_it_names_a_scheme() -> None:
    # With CONVEYOR_BROKER_URL=memory:// the redactor blanked the word in unrelated errors:
    # "unknown payload store scheme 'x': use file://, s3:// or ***".
    redactor = Redactor(["memory://", "amqp://broker.internal:5672/"])
    assert redactor("use file://, s3:// or memory://") == "use file://, s3:// or memory://"
    assert Redactor(["amqp://u:l0ngpassw0rd@h/"])("x l0ngpassw0rd amqp://u:l0ngpassw0rd@h/") == "x *** ***"


_SCHEME_AT_EVERY_LETTER = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@", re.I)


def test_url_passwords_are_masked_as_a_scheme_tried_at_every_letter_would() -> None:
    rng = random.Random(18)
    for _ in range(20_000):
        text = "".join(rng.choice("a1.+-:/@ xZ") for _ in range(rng.randint(0, 30)))
        expected = _SCHEME_AT_EVERY_LETTER.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text) if "@" in text else text
        assert mask_secrets(text) == expected, text
    assert mask_secrets("x 1amqp://u:pw@h host.amqp://u:pw@h") == "x 1amqp://u:***@h host.amqp://u:***@h"


@pytest.mark.parametrize("text", ['"://@" + "a" * 400_000', '"://@" + "1a" * 200_000', '"x://" + "u:" * 200_000'])
def test_masking_a_hostile_text_takes_one_pass(text: str) -> None:
    # A run of letters in a text with an "@" was tried from each of its characters: 16,000 of
    # them took 1.4 s on the event loop, 400,000 would take minutes. A hang guard, not a timing;
    # in a child process, because the regex engine never lets go of the GIL.
    code = f"from conveyor.common.secrets import mask_secrets; mask_secrets({text}); print('done')"
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                                cwd=Path(__file__).resolve().parents[3])
    except subprocess.TimeoutExpired:
        raise AssertionError("masking did not end: the pattern backtracks") from None
    assert result.stdout.strip() == "done", result.stderr
