from __future__ import annotations

import pytest
from pydantic import BaseModel

from conveyor.common.errors import ConfigurationError, InvalidPayload, UnknownJobType, UnknownSchemaVersion
from conveyor.schemas.registry import SchemaRegistry, SchemaTooNew


class V1(BaseModel):
    name: str


class V2(BaseModel):
    first: str
    last: str


def registry() -> SchemaRegistry:
    r = SchemaRegistry()
    r.register("user.create", 1, V1)
    r.register("user.create", 2, V2)

    @r.upcaster("user.create", 1)
    def split(data: dict) -> dict:
        first, _, last = data.pop("name").partition(" ")
        return {"first": first, "last": last}

    return r


def test_old_version_is_upcast_to_the_handlers_version() -> None:
    assert registry().resolve("user.create", 1, {"name": "Ada Lovelace"}) == V2(first="Ada", last="Lovelace")


def test_newer_version_than_known_is_reported_as_too_new() -> None:
    with pytest.raises(SchemaTooNew):
        registry().resolve("user.create", 2, {"first": "a", "last": "b"}, target=1)


def test_missing_upcaster_is_found_at_start_up() -> None:
    r = SchemaRegistry()
    r.register("a.b", 1, V1)
    r.register("a.b", 2, V2)
    with pytest.raises(ConfigurationError, match="upcaster"):
        r.check()
    with pytest.raises(UnknownSchemaVersion):
        r.resolve("a.b", 1, {"name": "x"})


def test_unknown_job_type_and_invalid_payload_are_typed() -> None:
    with pytest.raises(UnknownJobType):
        registry().resolve("nope", 1, {})
    with pytest.raises(InvalidPayload) as err:
        registry().resolve("user.create", 2, {"first": "secret-value"})
    assert "secret-value" not in str(err.value)
    assert "last" in str(err.value)
