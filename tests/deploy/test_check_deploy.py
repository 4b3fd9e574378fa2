"""The deployment files pass scripts/check-deploy, and its validators do reject broken input."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import check_jsonschema
import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def promtool() -> None:
    """promtool comes with Debian's prometheus package; installed once if missing, never skipped."""
    result = subprocess.run(["bash", str(ROOT / "scripts/services/prometheus.sh"), "install"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"cannot install promtool:\n{result.stderr}"


def test_check_deploy_passes() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check-deploy")],
        cwd=ROOT, env={**os.environ, "CONVEYOR_PYTHON": sys.executable},
        capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "check-deploy: all passed" in output
    assert "FAIL" not in output


def _load(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


def test_kubernetes_validation_rejects_an_unknown_field() -> None:
    deployment = _load("deploy/kubernetes/deployment.yaml")
    kubernetes_validate.validate(deployment, "1.37.0", strict=True)
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.37.0", strict=True)


@pytest.mark.parametrize(
    ("path", "mutate"),
    [
        ("deploy/kubernetes/keda/scaledobject-rabbitmq.yaml",
         lambda d: d["spec"]["triggers"][0]["metadata"].update(queueLength="20")),  # a typo'd key
        ("deploy/kubernetes/keda/scaledobject-rabbitmq.yaml",
         lambda d: d["spec"]["triggers"][0]["metadata"].update(value=32)),  # not a string
        ("deploy/kubernetes/keda/scaledobject-pulsar.yaml",
         lambda d: d["spec"]["triggers"][0]["metadata"].pop("subscription")),
        ("deploy/kubernetes/keda/scaledobject-pulsar.yaml",
         lambda d: d["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"].update(
             stabilizationWindowSeconds=7200)),
    ],
)
def test_keda_schema_rejects_broken_scaled_objects(path: str, mutate) -> None:
    schema = json.loads((ROOT / "deploy/kubernetes/schemas/keda-scaledobject.schema.json").read_text())
    doc = _load(path)
    assert not list(Draft202012Validator(schema).iter_errors(doc))
    mutate(doc)
    assert list(Draft202012Validator(schema).iter_errors(doc))


def test_compose_schema_rejects_a_broken_service() -> None:
    schema_path = Path(check_jsonschema.__file__).parent / "builtin_schemas/vendor/compose-spec.json"
    schema = json.loads(schema_path.read_text())
    doc = _load("docker-compose.yml")
    assert not list(Draft202012Validator(schema).iter_errors(doc))
    doc["services"]["consumer"]["deploy"]["replica"] = 3  # typo
    assert list(Draft202012Validator(schema).iter_errors(doc))


def test_promtool_rejects_a_broken_expression(tmp_path: Path) -> None:
    rules = tmp_path / "broken.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "x:y", "expr": "sum by (queue (conveyor_queue_depth)"}]}]}))
    result = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True)
    assert result.returncode != 0
