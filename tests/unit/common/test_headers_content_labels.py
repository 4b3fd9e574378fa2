"""The worker's content-label check: JSON without a content encoding, nothing else."""

from __future__ import annotations

import pytest

from conveyor.common.errors import UnsupportedContent
from conveyor.common.headers import check_content_labels

ACCEPTED = [
    "application/json",  # what every Conveyor publisher writes (the check's shortcut)
    "Application/JSON",
    " application/json ",
    "application/json; charset=utf-8",
    "application/json;charset=UTF8",
    'application/json; charset="utf-8"',
    "application/json;",
]
REFUSED = [
    "application/json; charset=latin-1",
    "application/json; profile=x",
    "application/jsonx",
    "application/json-patch+json",
    "application/x-python-serialize",
    "application/jso",
    "text/plain",
    "application/json\x00",
]


@pytest.mark.parametrize("label", ACCEPTED)
@pytest.mark.parametrize("name", ["content-type", "Content-Type"])
def test_json_content_types_are_accepted(name: str, label: str) -> None:
    check_content_labels({name: label, "x-conveyor-due-at": "1.000"})


@pytest.mark.parametrize("label", REFUSED)
def test_other_content_types_are_refused_with_a_reason(label: str) -> None:
    with pytest.raises(UnsupportedContent) as raised:
        check_content_labels({"content-type": label})
    assert raised.value.reason == "unsupported_content_type"


def test_an_exact_json_type_still_has_its_content_encoding_checked() -> None:
    """The shortcut for the exact label must not skip the other label."""
    check_content_labels({"content-type": "application/json", "content-encoding": "utf-8"})
    with pytest.raises(UnsupportedContent) as raised:
        check_content_labels({"content-type": "application/json", "content-encoding": "gzip"})
    assert raised.value.reason == "unsupported_content_encoding"
