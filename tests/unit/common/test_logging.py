from __future__ import annotations

import io
import logging
import random
from datetime import UTC, datetime

import orjson
import pytest

from conveyor.common.logging import JobLogContext, JsonFormatter, configure_logging
from conveyor.common.secrets import mask_secrets


def test_urls_with_passwords_are_masked() -> None:
    assert mask_secrets("amqp://user:s3cr3t@host:5672/") == "amqp://user:***@host:5672/"
    assert mask_secrets("no secret here") == "no secret here"


def test_log_lines_are_json_with_context_fields_and_masked() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    logging.getLogger("t").warning(
        "connect to amqp://u:CANARY@h/ failed", extra={"job_id": "j1", "attempt": 2, "url": "pulsar://a:CANARY@b"}
    )
    line = orjson.loads(stream.getvalue().strip())
    assert line["job_id"] == "j1" and line["attempt"] == 2 and line["level"] == "warning"
    assert "CANARY" not in stream.getvalue()
    logging.getLogger().handlers.clear()


@pytest.mark.parametrize(
    "created",
    [
        0.0, 0.0004999, 0.0005, 0.9994999, 0.9995, 0.9999994, 0.9999995, 0.9999999,  # rounding edges
        1_733_377_599.9999996, 1_733_377_600.0, 1_733_377_600.0005, 1_733_377_600.999,  # a new second
        1_709_164_800.123456,  # 2024-02-29
        -1.5,  # before the epoch: the slow path
        4_102_444_799.9995,  # 2099-12-31T23:59:59.9995 rounds into the next year
    ],
)
def test_a_log_timestamp_is_the_one_datetime_writes_at_every_rounding_edge(created: float) -> None:
    """The per-second prefix is remembered: an edge must never print the wrong second or millisecond."""
    formatter = JsonFormatter()
    for at in (created, created + 1.0, created):  # a remembered second, then another, then back
        assert formatter._timestamp(at) == datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def test_a_log_timestamp_matches_datetime_for_many_random_instants() -> None:
    formatter, rng = JsonFormatter(), random.Random(18)
    base = 1_733_377_600.0
    for _ in range(20_000):
        at = base + rng.uniform(0, 5) if rng.random() < 0.8 else rng.uniform(0, 4e9)
        assert formatter._timestamp(at) == datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def test_extra_fields_keep_their_order_and_private_or_standard_names_stay_out() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    try:
        with JobLogContext({"job_id": "j1", "attempt": 3}):
            logging.getLogger("t").warning(
                "m", extra={"zeta": 1, "alpha": ["a", 2, None], "_hidden": "x", "mid": "url amqp://u:CANARY@h/"}
            )
            logging.getLogger("t").warning("one", extra={"error_type": "KeyError"})
        logging.getLogger("t").warning("bare")
    finally:
        logging.getLogger().handlers.clear()
    first, second, third = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert list(first) == ["ts", "level", "logger", "msg", "job_id", "attempt", "zeta", "alpha", "mid"]
    assert first["alpha"] == ["a", 2, None] and "CANARY" not in first["mid"]
    assert second == {**second, "msg": "one", "job_id": "j1", "attempt": 3, "error_type": "KeyError"}
    assert list(third) == ["ts", "level", "logger", "msg"]


@pytest.mark.parametrize("length", [0, 1, 1990, 1999, 2000, 2001, 7999, 8000, 8001, 20_000])
@pytest.mark.parametrize("shape", ["plain", "url_at_the_end", "url_at_the_start", "secret_known"])
def test_a_cleaned_log_value_is_the_masked_value_cut_to_the_limit(length: int, shape: str) -> None:
    """The short-string fast path of ``_clean`` (issue 18) gives what masking the first 4×limit
    characters and cutting to the limit gives, also where masking makes a value longer ("p"
    becomes "***") right at the limit, and with a Redactor of known secrets."""
    from conveyor.common.secrets import Redactor

    redact = Redactor(["CANARY-SECRET"]) if shape == "secret_known" else mask_secrets
    url = "amqp://u:p@host/"
    # Words, not one long run of letters: mask_secrets' URL regex takes time quadratic in such a run
    # (8,000 letters after an '@': 0.35 s), a defect of its own, not this test's subject.
    filler = ("word " * (length // 5 + 1))[: max(0, length - len(url))]
    value = {
        "plain": "y" * length,
        "url_at_the_end": filler + url,
        "url_at_the_start": (url + filler)[: max(length, len(url))],
        "secret_known": ("CANARY-SECRET " * (length // 14 + 1))[:length],
    }[shape]
    limit = 2000
    assert JsonFormatter(redact)._clean(value) == redact(value[: limit * 4])[:limit]
    assert "CANARY-SECRET" not in str(JsonFormatter(redact)._clean(value)) or shape != "secret_known"
    for other in (None, 7, 2.5, True, ["list"], b"bytes"):
        assert JsonFormatter(redact)._clean(other) == (
            other if other is None or isinstance(other, (int, float)) else redact(str(other)[: limit * 4])[:limit]
        )
