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


@pytest.fixture(scope="module")
def compose() -> str:
    """The pinned Docker Compose v2, built from source once (~2 min cold) and cached; never skipped."""
    result = subprocess.run(["bash", str(ROOT / "scripts/services/compose.sh"), "install"],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"cannot build Docker Compose:\n{result.stderr[-6000:]}"
    return result.stdout.splitlines()[-1]


def test_check_deploy_passes(compose: str) -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check-deploy")],
        cwd=ROOT, env={**os.environ, "CONVEYOR_PYTHON": sys.executable},
        capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "check-deploy: all passed" in output
    assert "FAIL" not in output
    # The real `docker compose config` ran (it is never skipped), once per profile too.
    assert "docker compose config (no profile): ok" in output
    profiles = {p for svc in _load("docker-compose.yml")["services"].values() for p in svc.get("profiles", [])}
    assert profiles, "docker-compose.yml defines profiles; this test expects at least one"
    for profile in profiles:
        assert f"docker compose config ({profile}): ok" in output
    assert "docker compose config: ok (Docker Compose 2." in output


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


def _compose_config(compose: str, directory: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COMPOSE_PROFILES", "COMPOSE_FILE")}
    return subprocess.run([compose, "-f", "docker-compose.yml", *args, "config", "--quiet"],
                          cwd=directory, env=env, capture_output=True, text=True, timeout=60)


def test_compose_config_rejects_an_undefined_dependency(compose: str, tmp_path: Path) -> None:
    """What the schema cannot see: depends_on naming no service, also in a profile-only service."""
    text = (ROOT / "docker-compose.yml").read_text()
    # The shared worker anchor (consumer, producer) and consumer-pulsar's own depends_on.
    assert text.count("\n    minio-setup:\n") == 1 and text.count("\n      minio-setup:\n") == 1
    (tmp_path / "docker-compose.yml").write_text(text)
    assert _compose_config(compose, tmp_path).returncode == 0

    (tmp_path / "docker-compose.yml").write_text(text.replace("\n    minio-setup:\n", "\n    minio-setupp:\n"))
    result = _compose_config(compose, tmp_path)
    assert result.returncode != 0
    assert 'undefined service "minio-setupp"' in result.stderr

    # Only consumer-pulsar (profile "pulsar") is broken: the default project resolves, so
    # check-deploy runs config once per profile as well.
    (tmp_path / "docker-compose.yml").write_text(text.replace("\n      minio-setup:\n", "\n      minio-setupp:\n"))
    assert _compose_config(compose, tmp_path).returncode == 0
    result = _compose_config(compose, tmp_path, "--profile", "pulsar")
    assert result.returncode != 0
    assert 'undefined service "minio-setupp"' in result.stderr


def test_promtool_rejects_a_broken_expression(tmp_path: Path) -> None:
    rules = tmp_path / "broken.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "x:y", "expr": "sum by (queue (conveyor_queue_depth)"}]}]}))
    result = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True)
    assert result.returncode != 0


@pytest.mark.parametrize("mutation", ["secret_as_env", "file_outside_the_secret_volume", "unknown_secret_key"])
def test_secret_rules_reject_secrets_that_are_not_mounted_files(mutation: str) -> None:
    """Secrets reach every workload as files on a read-only Secret volume, never via envFrom."""
    sys.path.insert(0, str(ROOT / "scripts/lib"))
    import deploy_checks

    by_kind, scaled = deploy_checks.index_manifests(deploy_checks.load_manifests())
    deploy_checks.failures.clear()
    deploy_checks.check_kubernetes_semantics(by_kind, scaled)
    assert deploy_checks.failures == []  # the shipped manifests pass

    broken = copy.deepcopy(by_kind)
    job = next(iter(broken["Job"].values()))
    [container] = job["spec"]["template"]["spec"]["containers"]
    if mutation == "secret_as_env":
        container["envFrom"].append({"secretRef": {"name": "conveyor-secrets"}})
    elif mutation == "file_outside_the_secret_volume":
        container["env"][0]["value"] = "/tmp/CONVEYOR_BROKER_URL"
    else:
        container["env"][0]["value"] = "/var/run/secrets/conveyor/NOT_A_KEY"
    deploy_checks.failures.clear()
    deploy_checks.check_kubernetes_semantics(broken, scaled)
    assert deploy_checks.failures, f"{mutation} was not rejected"
    assert all("Job conveyor-dlq-replay-" in failure for failure in deploy_checks.failures)
    deploy_checks.failures.clear()


@pytest.mark.parametrize("mutation", ["no_store", "not_postgres"])
def test_workers_without_a_shared_idempotency_store_are_rejected(mutation: str) -> None:
    """cronjob-publish.yaml relies on the workers recognising a second publish of one slot."""
    sys.path.insert(0, str(ROOT / "scripts/lib"))
    import deploy_checks

    by_kind, scaled = deploy_checks.index_manifests(deploy_checks.load_manifests())
    services = _load("docker-compose.yml")["services"]
    deploy_checks.failures.clear()
    deploy_checks.check_kubernetes_semantics(by_kind, scaled)
    deploy_checks.check_compose_idempotency(services)
    assert deploy_checks.failures == []  # the shipped files pass

    broken, broken_services = copy.deepcopy(by_kind), copy.deepcopy(services)
    [worker] = broken["Deployment"]["conveyor-worker"]["spec"]["template"]["spec"]["containers"]
    pulsar_env = broken_services["consumer-pulsar"]["environment"]
    if mutation == "no_store":
        worker["env"] = [e for e in worker["env"] if e["name"] != "CONVEYOR_IDEMPOTENCY_URL_FILE"]
        del pulsar_env["CONVEYOR_IDEMPOTENCY_URL"]
    else:
        broken["Secret"]["conveyor-secrets"]["stringData"]["CONVEYOR_IDEMPOTENCY_URL"] = "sqlite:///tmp/keys.db"
        pulsar_env["CONVEYOR_IDEMPOTENCY_URL"] = "sqlite:///tmp/keys.db"
    deploy_checks.check_kubernetes_semantics(broken, scaled)
    deploy_checks.check_compose_idempotency(broken_services)
    assert any("deployment: workers read a PostgreSQL idempotency store" in f for f in deploy_checks.failures)
    assert any("consumer-pulsar has a PostgreSQL idempotency store" in f for f in deploy_checks.failures)
    assert not any("docker-compose.yml: consumer has" in f for f in deploy_checks.failures)
    deploy_checks.failures.clear()


def test_workers_without_a_postgresql_job_state_store_are_rejected() -> None:
    """The shipped deployments record job states in PostgreSQL (issue 14): `conveyor jobs` reads them."""
    sys.path.insert(0, str(ROOT / "scripts/lib"))
    import deploy_checks

    by_kind, scaled = deploy_checks.index_manifests(deploy_checks.load_manifests())
    services = copy.deepcopy(_load("docker-compose.yml")["services"])
    [worker] = by_kind["Deployment"]["conveyor-worker"]["spec"]["template"]["spec"]["containers"]
    worker["env"] = [e for e in worker["env"] if e["name"] != "CONVEYOR_JOB_STATE_URL_FILE"]
    services["consumer-pulsar"]["environment"]["CONVEYOR_JOB_STATE_URL"] = "sqlite:///tmp/state.db"
    deploy_checks.failures.clear()
    deploy_checks.check_kubernetes_semantics(by_kind, scaled)
    deploy_checks.check_compose_idempotency(services)
    assert any("deployment: workers record job states in PostgreSQL" in f for f in deploy_checks.failures)
    assert any("consumer-pulsar records job states in PostgreSQL" in f for f in deploy_checks.failures)
    assert not any("consumer records job states" in f for f in deploy_checks.failures)
    deploy_checks.failures.clear()
