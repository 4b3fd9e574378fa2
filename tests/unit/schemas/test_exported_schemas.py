"""The committed JSON Schema files are the wire contract: they match the models, they only
change compatibly, and real messages validate against them (as a non-Python publisher would)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson
import pytest
from pydantic import BaseModel, ConfigDict

from conveyor.common.codec import encode_model
from conveyor.common.transport.memory import MemoryTransport
from conveyor.consumer.ops.demo import demo_jobs
from conveyor.producer.producer import Producer
from conveyor.schemas.compat import breaking_changes
from conveyor.schemas.envelope import PayloadReference
from conveyor.schemas.export import check, main, render, write
from conveyor.schemas.registry import SchemaRegistry

COMMITTED = Path(__file__).resolve().parents[3] / "schemas" / "json"
REGENERATE = "python -m conveyor.schemas.export --app conveyor.consumer.ops.demo:demo_jobs --out schemas/json/"


def test_committed_schema_files_match_the_models() -> None:
    report = check(demo_jobs().schemas, COMMITTED)
    assert not report.breaking, f"published schemas changed incompatibly:\n{report.describe()}"
    assert report.ok, f"JSON Schema files are out of date; run `{REGENERATE}`\n{report.describe()}"


def test_every_registered_version_and_the_envelope_are_published() -> None:
    files = render(demo_jobs().schemas)
    assert {"envelope.v1.json", "dead_letter.v1.json", "index.json",
            "jobs/images.resize/v1.json", "jobs/payments.charge/v1.json"} <= set(files)
    for text in files.values():
        jsonschema.Draft202012Validator.check_schema(json.loads(text))


def test_real_envelopes_validate_against_the_committed_files() -> None:
    envelope_schema = json.loads((COMMITTED / "envelope.v1.json").read_text())
    job_schema = json.loads((COMMITTED / "jobs/images.resize/v1.json").read_text())
    producer = Producer.for_registry(MemoryTransport(), demo_jobs())  # builds only, never sends
    envelope = producer.build_envelope("images.resize", {"image_id": 1, "width": 640})
    message = orjson.loads(encode_model(envelope))
    jsonschema.validate(message, envelope_schema, format_checker=jsonschema.FormatChecker())
    jsonschema.validate(message["payload"]["data"], job_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"image_id": "one", "width": 640}, job_schema)
    reference = PayloadReference(store="s3", bucket="b-1", key="payloads/x.json", sha256="0" * 64, size=3)
    by_reference = orjson.loads(encode_model(envelope.model_copy(update={"payload": reference})))
    jsonschema.validate(by_reference, envelope_schema)
    by_reference["payload"]["url"] = "http://evil/"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(by_reference, envelope_schema)


# -- compatibility rules --------------------------------------------------------------


class V1(BaseModel):
    to: str
    count: int = 1


class Nested(BaseModel):
    city: str


class WithNested(BaseModel):
    address: Nested
    title: str  # a field named like a JSON Schema annotation


def schema(model: type[BaseModel]) -> dict:
    return model.model_json_schema()


def changes(new: type[BaseModel], old: type[BaseModel] = V1) -> list[str]:
    return breaking_changes(schema(old), schema(new))


def test_an_identical_or_annotated_schema_is_compatible() -> None:
    class Described(BaseModel):
        to: str
        count: int = 5  # another default is not a wire change

    assert changes(V1) == []
    assert changes(Described) == []


def test_adding_an_optional_field_is_compatible() -> None:
    class Added(BaseModel):
        to: str
        count: int = 1
        cc: str | None = None

    assert changes(Added) == []


def test_removing_or_renaming_a_field_is_breaking() -> None:
    class Removed(BaseModel):
        to: str

    class Renamed(BaseModel):
        recipient: str
        count: int = 1

    assert any("'count' was removed" in c for c in changes(Removed))
    assert any("'to' was removed" in c for c in changes(Renamed))


def test_changing_a_type_is_breaking() -> None:
    class Retyped(BaseModel):
        to: str
        count: str = "1"

    assert any("'count'" in c and "changed" in c for c in changes(Retyped))


def test_a_new_required_field_or_a_flip_of_required_is_breaking() -> None:
    class NewRequired(BaseModel):
        to: str
        count: int = 1
        subject: str

    class NowRequired(BaseModel):
        to: str
        count: int

    class NowOptional(BaseModel):
        to: str | None = None
        count: int = 1

    assert any("new required field 'subject'" in c for c in changes(NewRequired))
    assert any("'count' became required" in c for c in changes(NowRequired))
    assert any("'to' is no longer required" in c for c in changes(NowOptional))


def test_nested_models_are_compared_field_by_field() -> None:
    class Nested2(BaseModel):
        zip: str

    class WithNested2(BaseModel):
        address: Nested2
        title: str

    class Titled(BaseModel):
        address: Nested
        title: int

    assert changes(WithNested, WithNested) == []
    assert any("'address.city' was removed" in c for c in changes(WithNested2, WithNested))
    assert any("'title'" in c for c in changes(Titled, WithNested))


def test_a_closed_schema_cannot_grow_even_optionally() -> None:
    class Closed(BaseModel):
        model_config = ConfigDict(extra="forbid")
        to: str

    class ClosedGrown(BaseModel):
        model_config = ConfigDict(extra="forbid")
        to: str
        cc: str | None = None

    assert any("forbids unknown fields" in c for c in changes(ClosedGrown, Closed))


def test_the_exporter_refuses_to_overwrite_a_published_version_incompatibly(tmp_path: Path) -> None:
    class V1Changed(BaseModel):
        to: int

    registry = SchemaRegistry()
    registry.register("mail.send", 1, V1)
    assert write(registry, tmp_path).written
    changed = SchemaRegistry()
    changed.register("mail.send", 1, V1Changed)
    report = write(changed, tmp_path)
    assert report.breaking and not report.written
    assert json.loads((tmp_path / "jobs/mail.send/v1.json").read_text())["properties"]["to"]["type"] == "string"
    # The right way: a new version beside the old one.
    evolved = SchemaRegistry()
    evolved.register("mail.send", 1, V1)
    evolved.register("mail.send", 2, V1Changed)
    assert sorted(write(evolved, tmp_path).written) == ["index.json", "jobs/mail.send/v2.json"]
    assert check(evolved, tmp_path).ok


def test_the_command_line_checks_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--app", "conveyor.consumer.ops.demo:demo_jobs", "--out", str(tmp_path), "--check"]) == 1
    assert main(["--app", "conveyor.consumer.ops.demo:demo_jobs", "--out", str(tmp_path)]) == 0
    assert main(["--app", "conveyor.consumer.ops.demo:demo_jobs", "--out", str(tmp_path), "--check"]) == 0
    assert (tmp_path / "jobs" / "images.resize" / "v1.json").exists()


def test_the_regenerate_command_names_an_app_that_loads_and_a_missing_one_is_one_line(tmp_path: Path) -> None:
    # The documented command named `consumer.demo:demo_jobs`, which is no module: a traceback.
    app = REGENERATE.split("--app ")[1].split()[0]
    assert main(["--app", app, "--out", str(tmp_path)]) == 0
    for target, says in (("no_such_app.jobs", "no module named 'no_such_app'"),
                         ("conveyor.consumer.ops.demo:nope", "has no attribute 'nope'")):
        with pytest.raises(SystemExit) as stopped:
            main(["--app", target, "--out", str(tmp_path)])
        assert says in str(stopped.value.code) and "\n" not in str(stopped.value.code)
