"""The JSON Schemas an edited payload is checked against: the exported files, or a registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.common.errors import ConfigurationError
from conveyor.consumer.ops.console import SchemaCatalog
from conveyor.consumer.ops.demo import DemoState, build_jobs

EXPORTED = Path(__file__).resolve().parents[5] / "schemas" / "json"


@pytest.mark.parametrize("catalog", [SchemaCatalog.from_directory(EXPORTED),
                                     SchemaCatalog.from_registry(build_jobs(DemoState()).schemas)],
                         ids=["exported-files", "registry"])
def test_the_exported_files_and_the_registry_judge_alike(catalog: SchemaCatalog) -> None:
    assert catalog.knows("images.resize", 1) and not catalog.knows("images.resize", 2)
    assert catalog.errors("images.resize", 1, {"image_id": 7, "width": 640}) == []
    assert catalog.errors("images.resize", 1, {"image_id": "seven"}) == [
        "(payload): 'width' is a required property", "image_id: 'seven' is not of type 'integer'"]
    with pytest.raises(ConfigurationError, match="no JSON Schema for images.resize v2"):
        catalog.errors("images.resize", 2, {})


def test_a_directory_without_an_index_is_a_one_line_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read the exported schemas") as refused:
        SchemaCatalog.from_directory(tmp_path)
    assert "\n" not in str(refused.value)
