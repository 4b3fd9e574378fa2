"""Offline checks of the deployment files, run by scripts/check-deploy (no cluster, no engine).

    python scripts/lib/deploy_checks.py DASHBOARD_RULES_OUT

* Grafana dashboards: valid JSON, unique uids and panel ids, every panel queries Prometheus;
  every PromQL expression is written into DASHBOARD_RULES_OUT as a recording rule (Grafana
  variables replaced) so that ``promtool check rules`` parses each one.
* Metric names used by dashboards and rules exist in ``common.metrics.WorkerMetrics``.
* docker-compose.yml: the compose-spec JSON schema (vendored in check-jsonschema), plus images
  pinned, host ports on 127.0.0.1 only, a stop grace period above the drain, mounted files exist,
  every worker service on a PostgreSQL idempotency store.
* Kubernetes manifests: the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown
  fields fail) for the oldest and newest supported versions; KEDA objects against
  deploy/kubernetes/schemas; plus cross-references (Secret/ConfigMap names, probes, the grace
  period, the security context, the ServiceAccount token, the workers' idempotency store).
* Dockerfile: multi-stage, pinned base, non-root USER, no build tools installed.

Prints one line per check; exits 1 listing every failure.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")  # oldest we support (CronJob timeZone, PDB policy) .. newest known
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1d",
    "${datasource}": "prometheus",
    "$queue": ".*",
    "$job_type": ".*",
}

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)


# -- metric names -----------------------------------------------------------------------------

def exported_metric_names() -> set[str]:
    from conveyor.common.metrics import WorkerMetrics
    from conveyor.producer.outbox.metrics import OutboxMetrics  # the outbox relay's series

    names: set[str] = set()
    for family in [*WorkerMetrics().registry.collect(), *OutboxMetrics().registry.collect()]:
        names.add(family.name)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def referenced_metrics(expr: str) -> set[str]:
    without_regexes = re.sub(r'__name__=~"[^"]*"', "", expr)
    return set(re.findall(r"\bconveyor_[a-z0-9_]+\b", without_regexes))


def check_metric_names(where: str, expressions: list[str], exported: set[str]) -> None:
    for expr in expressions:
        for name in referenced_metrics(expr):
            check(name in exported, f"{where}: metric {name} is exported by WorkerMetrics or OutboxMetrics")
        for regex in re.findall(r'__name__=~"([^"]+)"', expr):
            matched = [n for n in exported if re.fullmatch(regex, n)]
            check(bool(matched), f"{where}: name regex {regex!r} matches exported metrics")


# -- grafana ----------------------------------------------------------------------------------

def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def check_dashboards(rules_out: Path, exported: set[str]) -> None:
    rules = []
    uids = set()
    files = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
    check(len(files) >= 3, "grafana: overview, on-call and debug dashboards exist")
    for path in files:
        board = json.loads(path.read_text())
        check(board.get("uid") not in uids and bool(board.get("uid")), f"{path.name}: unique uid")
        uids.add(board.get("uid"))
        ids = [p["id"] for p in panels(board)]
        check(len(ids) == len(set(ids)), f"{path.name}: unique panel ids")
        exprs = []
        for panel in panels(board):
            if panel["type"] == "row":
                continue
            targets = panel.get("targets", [])
            check(bool(targets) and panel.get("datasource", {}).get("type") == "prometheus",
                  f"{path.name}: panel {panel['title']!r} queries Prometheus")
            for target in targets:
                expr = target["expr"]
                exprs.append(expr)
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                check("$" not in expr.replace("$labels", ""), f"{path.name}: {panel['title']!r}: no unknown variable")
                rules.append({"record": f"dashboard:{board['uid'].replace('-', '_')}:{len(rules)}", "expr": expr})
        check_metric_names(path.name, exprs, exported)
    rules_out.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, sort_keys=False))
    print(f"      {len(rules)} dashboard queries written to {rules_out} for promtool")


def check_rule_metrics(exported: set[str]) -> None:
    for path in sorted((ROOT / "deploy/prometheus/rules").glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        exprs = [rule["expr"] for group in doc["groups"] for rule in group["rules"]]
        check_metric_names(path.name, exprs, exported)
        alerts = [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]
        runbook = (ROOT / "docs/runbook.md").read_text().lower()
        for rule in alerts:
            anchor = rule["annotations"]["runbook"].split("#", 1)[1]
            check(f"## {anchor}" in runbook,
                  f"{path.name}: {rule['alert']} has a runbook section #{anchor}")
        tests = (ROOT / "deploy/prometheus/tests").glob("*.yml")
        tested = {t["alertname"] for f in tests for g in yaml.safe_load(f.read_text())["tests"]
                  for t in g.get("alert_rule_test", [])}
        for rule in alerts:
            check(rule["alert"] in tested, f"{path.name}: {rule['alert']} has a promtool unit test")


# -- docker compose ---------------------------------------------------------------------------

def check_compose() -> None:
    import check_jsonschema
    from jsonschema import Draft202012Validator

    schema_path = Path(check_jsonschema.__file__).parent / "builtin_schemas/vendor/compose-spec.json"
    schema = json.loads(schema_path.read_text())
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    errors = sorted(Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    for error in errors:
        print(f"      {'/'.join(map(str, error.path))}: {error.message}")
    check(not errors, f"docker-compose.yml: valid against the compose-spec schema (check-jsonschema {check_jsonschema.__version__ if hasattr(check_jsonschema, '__version__') else ''})".rstrip())
    services = doc["services"]
    for required in ("rabbitmq", "pulsar", "minio", "postgres", "prometheus", "grafana", "producer", "consumer"):
        check(required in services, f"docker-compose.yml: service {required}")
    for name, service in services.items():
        image = service.get("image", "")
        pinned = ":" in image and not image.endswith((":latest", ":dev")) or "build" in service
        check(pinned, f"docker-compose.yml: {name} image {image!r} is pinned (or built here)")
        for port in service.get("ports", []):
            check(str(port).startswith("127.0.0.1:"), f"docker-compose.yml: {name} publishes {port} on 127.0.0.1 only")
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("./"):
                check((ROOT / source).exists(), f"docker-compose.yml: {name} mounts existing {source}")
    consumer = services["consumer"]
    grace = float(consumer["environment"]["CONVEYOR_GRACE_PERIOD"])
    stop = float(consumer["stop_grace_period"].rstrip("s"))
    check(stop >= grace + 10, f"docker-compose.yml: consumer stop_grace_period {stop:g}s > drain {grace:g}s + 10s")
    check(consumer.get("deploy", {}).get("replicas", 1) > 1, "docker-compose.yml: consumer is scaled (replicas > 1)")
    check_compose_idempotency(services)


def check_compose_idempotency(services: dict[str, Any]) -> None:
    """Every worker service has a PostgreSQL processed-key store and waits for it."""
    workers = {name: s for name, s in services.items() if list(s.get("command", []))[:1] == ["worker"]}
    check(bool(workers), "docker-compose.yml: worker services found")
    for name, service in workers.items():
        url = str(service.get("environment", {}).get("CONVEYOR_IDEMPOTENCY_URL", ""))
        check(url.startswith("postgresql://") and "postgres" in service.get("depends_on", {}),
              f"docker-compose.yml: {name} has a PostgreSQL idempotency store (CONVEYOR_IDEMPOTENCY_URL) and waits for it")


# -- kubernetes -------------------------------------------------------------------------------

def load_manifests() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted((ROOT / "deploy/kubernetes").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.relative_to(ROOT), doc))
    return out


def index_manifests(
    manifests: list[tuple[Path, dict[str, Any]]],
) -> tuple[dict[str, dict[str, dict[str, Any]]], list[dict[str, Any]]]:
    """Documents by kind and name (``generateName`` for Jobs made with kubectl create), and every
    ScaledObject in a list of its own: the alternatives share one name (applying one replaces the other)."""
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for _path, doc in manifests:
        name = doc["metadata"].get("name") or doc["metadata"].get("generateName", "")
        by_kind.setdefault(doc["kind"], {})[name] = doc
    return by_kind, [doc for _path, doc in manifests if doc["kind"] == "ScaledObject"]


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    kind = doc["kind"]
    if kind == "Deployment" or kind == "Job":
        return [doc["spec"]["template"]["spec"]]
    if kind == "CronJob":
        return [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    return []


def check_kubernetes() -> None:
    import kubernetes_validate
    from jsonschema import Draft202012Validator

    keda = {
        "ScaledObject": json.loads((ROOT / "deploy/kubernetes/schemas/keda-scaledobject.schema.json").read_text()),
        "TriggerAuthentication": json.loads(
            (ROOT / "deploy/kubernetes/schemas/keda-triggerauthentication.schema.json").read_text()
        ),
    }
    manifests = load_manifests()
    for path, doc in manifests:
        if doc["kind"] in keda:
            errors = list(Draft202012Validator(keda[doc["kind"]]).iter_errors(doc))
            for error in errors:
                print(f"      {'/'.join(map(str, error.path))}: {error.message}")
            check(not errors, f"{path}: {doc['kind']} valid against deploy/kubernetes/schemas")
            continue
        subject = doc
        if "name" not in doc["metadata"]:  # generateName: kubectl create names it
            subject = {**doc, "metadata": {**doc["metadata"], "name": doc["metadata"]["generateName"] + "x"}}
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(subject, version, strict=True)
                check(True, f"{path}: {doc['kind']} valid for Kubernetes {version} (strict)")
            except kubernetes_validate.ValidationError as exc:
                check(False, f"{path}: {doc['kind']} for Kubernetes {version}: {exc.message} at {list(exc.path)}")
    check_kubernetes_semantics(*index_manifests(manifests))


def check_kubernetes_semantics(by_kind: dict[str, dict[str, dict[str, Any]]], scaled: list[dict[str, Any]]) -> None:
    config = by_kind["ConfigMap"]["conveyor-config"]["data"]
    secrets = by_kind["Secret"]
    deployment = by_kind["Deployment"]["conveyor-worker"]
    pod = deployment["spec"]["template"]["spec"]
    [worker] = pod["containers"]
    grace = float(config["CONVEYOR_GRACE_PERIOD"])
    check(pod["terminationGracePeriodSeconds"] >= grace + 10,
          f"deployment: terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} ≥ drain {grace:g}s + 10s")
    check(config.get("CONVEYOR_HTTP_HOST") == "0.0.0.0", "configmap: CONVEYOR_HTTP_HOST=0.0.0.0 (probes reach the pod)")
    check(worker["livenessProbe"]["httpGet"]["path"] == "/healthz", "deployment: liveness probe on /healthz")
    check(worker["readinessProbe"]["httpGet"]["path"] == "/readyz", "deployment: readiness probe on /readyz")
    port = {p["name"]: p["containerPort"] for p in worker["ports"]}["metrics"]
    check(str(port) == config["CONVEYOR_HTTP_PORT"], "deployment: metrics port = CONVEYOR_HTTP_PORT")
    check(bool(worker["resources"].get("requests")) and bool(worker["resources"].get("limits")),
          "deployment: resource requests and limits")
    # Duplicates (a redelivery, the CronJob's second run for one slot) are recognised only with
    # a processed-key store shared by every replica.
    env = {e["name"]: e.get("value", "") for e in worker.get("env", [])}
    store = secrets.get("conveyor-secrets", {}).get("stringData", {}).get("CONVEYOR_IDEMPOTENCY_URL", "")
    check(env.get("CONVEYOR_IDEMPOTENCY_URL_FILE", "").endswith("/CONVEYOR_IDEMPOTENCY_URL")
          and store.startswith("postgresql://"),
          "deployment: workers read a PostgreSQL idempotency store (CONVEYOR_IDEMPOTENCY_URL_FILE, key of the Secret)")
    sa = by_kind["ServiceAccount"][pod["serviceAccountName"]]
    check(sa.get("automountServiceAccountToken") is False, "serviceaccount: automountServiceAccountToken false")
    pdb = by_kind["PodDisruptionBudget"]["conveyor-worker"]
    check(pdb["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items(),
          "pdb: selects the worker pods")
    for kind in ("Deployment", "CronJob", "Job"):
        for name, doc in by_kind.get(kind, {}).items():
            for spec in pod_specs(doc):
                check(spec.get("automountServiceAccountToken") is False, f"{kind} {name}: no service account token")
                check(spec["securityContext"].get("runAsNonRoot") is True, f"{kind} {name}: runs as non-root")
                for container in spec["containers"]:
                    check_secret_files(f"{kind} {name}", spec, container, secrets)
                    ctx = container["securityContext"]
                    check(ctx.get("readOnlyRootFilesystem") is True and ctx.get("allowPrivilegeEscalation") is False
                          and ctx.get("capabilities", {}).get("drop") == ["ALL"],
                          f"{kind} {name}/{container['name']}: read-only root fs, no privilege escalation, drops ALL")
                    for source in container.get("envFrom", []):
                        # Secrets go in as files (CONVEYOR_*_FILE), never as a whole environment.
                        check("secretRef" not in source, f"{kind} {name}: no Secret as environment (envFrom)")
                        if "configMapRef" in source:
                            check(source["configMapRef"]["name"] in by_kind["ConfigMap"],
                                  f"{kind} {name}: ConfigMap {source['configMapRef']['name']} exists")
    cron = next(iter(by_kind["CronJob"].values()))
    cron_text = json.dumps(cron)
    check("conveyor publish" in cron_text and "--idempotency-key" in cron_text, "cronjob: publishes with conveyor publish + key")
    job = next(iter(by_kind["Job"].values()))
    check(job["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["dlq", "replay"], "job: runs conveyor dlq replay")
    triggers = {t["type"] for d in scaled for t in d["spec"]["triggers"]}
    check(triggers == {"rabbitmq", "pulsar"}, "keda: a ScaledObject for RabbitMQ and one for Pulsar")
    for doc in scaled:
        check(doc["spec"]["scaleTargetRef"]["name"] in by_kind["Deployment"], "keda: scaleTargetRef names the Deployment")
        down = doc["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        check(down["stabilizationWindowSeconds"] >= 60, "keda: scale-down stabilisation window ≥ 60 s")
        for trigger in doc["spec"]["triggers"]:
            ref = trigger.get("authenticationRef")
            if ref:
                auth = by_kind["TriggerAuthentication"][ref["name"]]
                for target in auth["spec"]["secretTargetRef"]:
                    secret = secrets[target["name"]]
                    check(target["key"] in secret.get("stringData", secret.get("data", {})),
                          f"keda: TriggerAuthentication key {target['key']} is in Secret {target['name']}")


# -- Dockerfile ---------------------------------------------------------------------------------

def check_secret_files(where: str, spec: dict[str, Any], container: dict[str, Any], secrets: dict[str, Any]) -> None:
    """Every ``*_FILE`` variable points into a read-only Secret volume, at a key of an existing Secret."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for env in container.get("env", []):
        if not env["name"].endswith("_FILE"):
            continue
        mount = next((m for m in container.get("volumeMounts", []) if env["value"].startswith(m["mountPath"] + "/")), None)
        secret = volumes.get(mount["name"], {}).get("secret") if mount is not None else None
        check(secret is not None and mount is not None and mount.get("readOnly") is True,
              f"{where}: {env['name']} is a file on a read-only Secret volume")
        if secret is not None:
            key = env["value"].rsplit("/", 1)[1]
            check(secret["secretName"] in secrets and any(i["path"] == key for i in secret.get("items", [])),
                  f"{where}: {env['name']} names a key of Secret {secret['secretName']}")


def check_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    froms = [line for line in lines if line.upper().startswith("FROM ")]
    check(len(froms) >= 2, "Dockerfile: multi-stage build")
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", text)
    check(bool(base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1))),
          f"Dockerfile: base pinned to an exact release ({base.group(1) if base else 'none'})")
    users = [line for line in lines if line.upper().startswith("USER ")]
    check(bool(users) and users[-1].split()[1].split(":")[0] not in ("root", "0"), "Dockerfile: runs as a non-root USER")
    final = text[text.rfind("\nFROM "):]
    check(not re.search(r"apt-get install|gcc|build-essential|pip install", final),
          "Dockerfile: the final stage installs no build tools")
    check("COPY --from=build" in final, "Dockerfile: the final stage copies the built virtualenv")
    ignore = (ROOT / ".dockerignore").read_text()
    check("*" in ignore.splitlines(), ".dockerignore: excludes everything by default")


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    exported = exported_metric_names()
    check_dashboards(Path(sys.argv[1]), exported)
    check_rule_metrics(exported)
    check_compose()
    check_kubernetes()
    check_dockerfile()
    if failures:
        print(f"\n{len(failures)} check(s) failed:")
        for failure in failures:
            print(f"  - {failure}")
        return 1
    print("\nall deployment checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
