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


def test_latest_follows_every_registration_whatever_the_order() -> None:
    r = SchemaRegistry()
    assert r.latest("user.create") is None
    r.upcaster("user.create", 1)(lambda data: data)  # known, but without a model yet
    assert r.latest("user.create") is None
    r.register("user.create", 2, V2)
    r.register("user.create", 1, V1)  # an older version registered later leaves v2 the latest
    assert r.latest("user.create") == (2, V2) == (r.latest_version("user.create"), r.model("user.create", 2))
    r.register("user.create", 3, V1)
    assert r.latest("user.create") == (3, V1)


def test_validate_as_refuses_as_validate_does() -> None:
    r = registry()
    with pytest.raises(InvalidPayload) as direct:
        r.validate("user.create", 2, {"first": "a"})
    with pytest.raises(InvalidPayload) as looked_up:
        SchemaRegistry.validate_as(V2, "user.create", 2, {"first": "a"})
    assert str(direct.value) == str(looked_up.value) == "user.create v2 payload invalid: last: missing"
