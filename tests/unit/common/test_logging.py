from __future__ import annotations

import io
import logging

import orjson

from conveyor.common.logging import configure_logging
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
