"""Every Conveyor error carries a reason code: the CLI's one-line errors and the console print it."""

from __future__ import annotations

import inspect

import pytest
from click.testing import CliRunner

from conveyor.common import errors
from conveyor.consumer.cli import main

ALL = [cls for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, errors.ConveyorError)]


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.__name__)
def test_every_error_class_has_a_reason_code_of_its_own_words(cls: type[errors.ConveyorError]) -> None:
    assert cls.reason.isidentifier() and cls.reason == cls.reason.lower(), cls.reason


def test_the_families_scripts_tell_apart_have_distinct_codes() -> None:
    families = [errors.ConfigurationError, errors.TransportError, errors.QueueNotFound, errors.AccessRefused,
                errors.TlsError, errors.PublishNotConfirmed, errors.PublishOutcomeUnknown, errors.UnknownJob,
                errors.JobStateStoreUnavailable, errors.PayloadStoreUnavailable]
    codes = [cls.reason for cls in families]
    assert len(set(codes)) == len(codes), codes
    assert errors.MalformedMessage("x").reason == "malformed"
    assert errors.RejectedMessage("x", reason="custom").reason == "custom"


def test_a_broker_that_is_not_there_is_one_line_naming_its_reason() -> None:
    """…and only that line: aiormq's own log of the failed connect is not a second one."""
    result = CliRunner().invoke(main, ["dlq", "list", "--broker", "amqp://127.0.0.1:1/"])
    assert result.exit_code == 1
    [line] = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith("Error: TransportError (broker_error): "), line
