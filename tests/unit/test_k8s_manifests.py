"""The Kubernetes manifests (infra/k8s), validated offline.

Every object of the kustomization (and the site ConfigMap example) is validated: core kinds against
the Kubernetes 1.31 JSON schemas (kubernetes-validate, strict: unknown fields fail), custom resources
(Strimzi, Altinity, KEDA) against the structural schemas in tests/data/k8s/crd-schemas.yaml (which
fields those check is said there), and the Kubernetes structures embedded in custom resources (pod,
volume claim and service templates, HPA behaviour) against the Kubernetes schemas again. Then the
manifests are held to the code and to docker-compose.yml: the topics are topic_specs(), the
services run compose's commands with its settings and secrets, every LINESIGHT_ variable is a real
setting, the ACLs follow the per-service rules, the cluster DDL is the generated one."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline.clickhouse.cluster import CLUSTER, LOCAL_SUFFIX
from pipeline.kafka.topics import topic_specs
from pipeline.settings import PROJECT_ROOT, Settings

K8S = PROJECT_ROOT / "infra" / "k8s"
K8S_VERSION = "1.31"
CORE_GROUPS = {"v1", "apps/v1", "batch/v1", "policy/v1", "networking.k8s.io/v1", "autoscaling/v2"}
# compose service -> its Deployment here (db-init is a Job; topics-init is the topic operator's job;
# the gateway stays on the line hosts, docs/scale.md).
SERVICES = ["worker", "sink", "actuator", "alerts", "dashboard", "auditsealer"]
# ... named after it, except the actuator: one Deployment per line (the example site's one line).
DEPLOYMENT_NAMES = {"actuator": "actuator-line-1"}
# compose secret -> the Kubernetes Secret holding it (created by the site, docs/scale.md "Secrets").
SECRET_NAMES = {
    "clickhouse_admin_password": "clickhouse-admin",
    "clickhouse_writer_password": "clickhouse-writer",
    "clickhouse_reader_password": "clickhouse-reader",
    "clickhouse_dashboard_password": "clickhouse-dashboard",
    "clickhouse_auditsealer_password": "clickhouse-auditsealer",
    "alerts_api_token": "alerts-api-token",
    "plc_password": "plc-client",
    "plc_client_certificate": "plc-client",
    "plc_client_private_key": "plc-client",
    "triton_model_control_key": "triton-model-control-key",
    "audit_trail_key": "audit-trail-key",
}
SITE_SECRETS = sorted(set(SECRET_NAMES.values()) | {"keda-kafka"})
# Secrets the operators write: Strimzi's cluster CA and one per KafkaUser.
OPERATOR_SECRETS = {"linesight-cluster-ca-cert"}
# The KEDA Kafka scaler's metadata keys (KEDA 2.16 docs).
KEDA_KAFKA_KEYS = {
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold", "offsetResetPolicy",
    "allowIdleConsumers", "excludePersistentLag", "scaleToZeroOnInvalidOffset", "limitToPartitionsWithLag",
    "partitionLimitation", "version", "sasl", "tls", "unsafeSsl",
}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@cache
def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@cache
def _objects() -> tuple[dict[str, Any], ...]:
    out: list[dict[str, Any]] = []
    for resource in _kustomization()["resources"]:
        out += _docs(K8S / resource)
    return tuple(out)


def _all(kind: str) -> list[dict[str, Any]]:
    return [o for o in _objects() if o["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    [obj] = [o for o in _all(kind) if o["metadata"]["name"] == name]
    return obj


@cache
def _crd_schemas() -> dict[str, Any]:
    return yaml.safe_load((PROJECT_ROOT / "tests" / "data" / "k8s" / "crd-schemas.yaml").read_text())


def _validate_core(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _wrapped(kind: str, api: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": "embedded"}, "spec": spec}


def _validate_custom(obj: dict[str, Any]) -> None:
    schemas = _crd_schemas()
    key = f"{obj['apiVersion']}/{obj['kind']}"
    assert key in schemas["kinds"], f"no schema for custom resource {key}"
    schema = dict(schemas["kinds"][key], definitions=schemas["definitions"])
    jsonschema.Draft7Validator(schema).validate(obj)
    # The Kubernetes structures inside custom resources, against Kubernetes' own schemas.
    templates = obj["spec"].get("templates", {})
    for t in templates.get("podTemplates", []):
        _validate_core(_wrapped("Pod", "v1", t["spec"]))
    for t in templates.get("volumeClaimTemplates", []):
        _validate_core(_wrapped("PersistentVolumeClaim", "v1", t["spec"]))
    for t in templates.get("serviceTemplates", []):
        _validate_core(_wrapped("Service", "v1", t["spec"]))
    behavior = obj["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior:
        _validate_core(_wrapped("HorizontalPodAutoscaler", "autoscaling/v2", {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
            "maxReplicas": 2, "behavior": behavior}))


def _ids() -> list[str]:
    return [f"{o['kind']}/{o['metadata']['name']}" for o in _objects()]


@pytest.mark.parametrize("index", range(len(_objects())), ids=_ids())
def test_every_object_validates_against_its_schema(index: int) -> None:
    obj = _objects()[index]
    if obj["apiVersion"] in CORE_GROUPS:
        _validate_core(obj)
    else:
        _validate_custom(obj)


def test_the_site_config_example_validates_and_its_values_load_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    [site] = _docs(K8S / "site-config.example.yaml")
    _validate_core(site)
    monkeypatch.setenv("LINESIGHT_LINES", site["data"]["LINESIGHT_LINES"])
    monkeypatch.setenv("LINESIGHT_STREAM__LINE_RECIPES", site["data"]["LINESIGHT_LINE_RECIPES"])
    settings = Settings()
    assert set(settings.lines) == {"line-1"}
    recipes = {p.stem for p in (PROJECT_ROOT / "recipes").glob("*.toml")}
    assert set(settings.stream.line_recipes.values()) <= recipes
    # Every key a Deployment takes from linesight-site is in the example.
    used = {e["valueFrom"]["configMapKeyRef"]["key"] for d in _all("Deployment") for e in _env(d)
            if "configMapKeyRef" in e.get("valueFrom", {})}
    assert used == set(site["data"])


def test_the_validators_catch_a_misspelt_field() -> None:
    deployment = json.loads(json.dumps(_one("Deployment", "worker")))
    deployment["spec"]["template"]["spec"]["containers"][0]["envFrm"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_core(deployment)
    topic = json.loads(json.dumps(_one("KafkaTopic", "linesight.frames")))
    topic["spec"]["partition"] = 3
    with pytest.raises(jsonschema.ValidationError):
        _validate_custom(topic)
    chi = json.loads(json.dumps(_one("ClickHouseInstallation", "linesight")))
    chi["spec"]["templates"]["podTemplates"][0]["spec"]["containers"][0]["imagee"] = "clickhouse"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_custom(chi)


def test_no_secret_is_embedded() -> None:
    assert _all("Secret") == []
    for path in K8S.rglob("*.yaml"):
        text = path.read_text()
        assert "stringData" not in text and "password_sha256_hex" not in text, path


# ---------------------------------------------------------------- Kafka


def _config_map_env() -> dict[str, str]:
    return _one("ConfigMap", "linesight-env")["data"]


def test_topics_are_the_codes_topics_with_its_configs() -> None:
    env = _config_map_env()
    kafka = Settings().kafka.model_copy(update={
        "partitions": int(env["LINESIGHT_KAFKA__PARTITIONS"]),
        "replication_factor": int(env["LINESIGHT_KAFKA__REPLICATION_FACTOR"]),
    })
    expected = {s.name: (s.partitions, s.replication_factor, s.config) for s in topic_specs(kafka)}
    actual = {t["spec"]["topicName"]: (t["spec"]["partitions"], t["spec"]["replicas"], t["spec"].get("config", {}))
              for t in _all("KafkaTopic")}
    assert actual == expected
    assert all(t["metadata"]["labels"]["strimzi.io/cluster"] == "linesight" for t in _all("KafkaTopic"))


def test_broker_settings_match_compose_and_tolerate_one_broker_down() -> None:
    compose = _compose()["services"]["kafka"]["environment"]
    kafka = _one("Kafka", "linesight")["spec"]["kafka"]
    config = kafka["config"]
    assert config["message.max.bytes"] == int(compose["KAFKA_MESSAGE_MAX_BYTES"])
    assert config["replica.fetch.max.bytes"] == int(compose["KAFKA_REPLICA_FETCH_MAX_BYTES"])
    assert str(config["log.retention.hours"]) in compose["KAFKA_LOG_RETENTION_HOURS"]
    pool = _one("KafkaNodePool", "brokers")["spec"]
    assert config["default.replication.factor"] == 3 <= pool["replicas"]
    assert config["min.insync.replicas"] == 2
    # Every listener authenticates (SCRAM-SHA-512) over TLS, and ACLs are on.
    assert all(lst["tls"] and lst["authentication"]["type"] == "scram-sha-512" for lst in kafka["listeners"])
    assert kafka["authorization"]["type"] == "simple"
    app_env = _compose()["x-linesight-env"]
    timeout = _config_map_env()["LINESIGHT_KAFKA__SESSION_TIMEOUT_MS"]
    assert app_env["LINESIGHT_KAFKA__SESSION_TIMEOUT_MS"].endswith(f":-{timeout}}}")
    bootstrap = _config_map_env()["LINESIGHT_KAFKA__BOOTSTRAP_SERVERS"]
    [tls] = [lst for lst in kafka["listeners"] if lst["type"] == "internal"]
    assert bootstrap == f"linesight-kafka-bootstrap:{tls['port']}"


def _acls(user: str) -> dict[str, set[str]]:
    """topic name (or 'prefix:' + prefix) -> operations."""
    out: dict[str, set[str]] = {}
    for rule in _one("KafkaUser", user)["spec"]["authorization"]["acls"]:
        res = rule["resource"]
        if res["type"] != "topic":
            continue
        name = res["name"] if res.get("patternType", "literal") == "literal" else "prefix:" + res["name"]
        out.setdefault(name, set()).update(rule["operations"])
    return out


def _writers(topic: str) -> set[str]:
    return {u["metadata"]["name"] for u in _all("KafkaUser")
            if {"Write", "All"} & _acls(u["metadata"]["name"]).get(topic, set())}


def test_acls_per_service() -> None:
    k = Settings().kafka
    topics = {t["spec"]["topicName"] for t in _all("KafkaTopic")}
    for user in _all("KafkaUser"):
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        for topic in _acls(user["metadata"]["name"]):
            assert topic in topics or topic == f"prefix:{Settings().stream.app_id}", (user["metadata"]["name"], topic)
    # Only workers write results; the gateway writes frames and never results or verdict-bearing topics.
    assert _writers(k.topic_results) == {"linesight-worker"}
    assert _writers(k.topic_frames) == {"linesight-gateway"}
    gateway = _acls("linesight-gateway")
    assert k.topic_results not in gateway and all(ops == {"Write", "Describe"} for ops in gateway.values())
    # A subscriber reads results only.
    assert _acls("linesight-subscriber") == {k.topic_results: {"Read", "Describe"}}
    # KEDA only describes.
    assert set().union(*_acls("linesight-keda").values()) == {"Describe"}
    # The worker group may be joined by the worker only (and described by KEDA).
    group_readers = {u["metadata"]["name"] for u in _all("KafkaUser") for r in u["spec"]["authorization"]["acls"]
                     if r["resource"] == {"type": "group", "name": "linesight-inspector", "patternType": "literal"}
                     and "Read" in r["operations"]}
    assert group_readers == {"linesight-worker"}


# ---------------------------------------------------------------- services against compose


@cache
def _compose() -> dict[str, Any]:
    return yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    [c] = deployment["spec"]["template"]["spec"]["containers"]
    return c


def _env(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return _container(deployment).get("env", [])


def _env_names(deployment: dict[str, Any]) -> set[str]:
    names = {e["name"] for e in _env(deployment)}
    for source in _container(deployment).get("envFrom", []):
        names |= set(_one("ConfigMap", source["configMapRef"]["name"])["data"])
    return names


def _secret_refs(pod: dict[str, Any]) -> set[str]:
    refs = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    for c in pod["containers"]:
        refs |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    return refs


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_runs_composes_command_settings_and_secrets(service: str) -> None:
    compose = _compose()["services"][service]
    deployment = _one("Deployment", DEPLOYMENT_NAMES.get(service, service))
    container = _container(deployment)
    assert container["args"] == compose["command"]
    assert container["image"].split(":")[0] == compose["image"].split("${APP_IMAGE:-")[1].split(":")[0]
    # Every LINESIGHT_ setting compose gives the service is set here too.
    compose_env = {k for k in compose["environment"] if k.startswith("LINESIGHT_")}
    assert compose_env <= _env_names(deployment), compose_env - _env_names(deployment)
    # Each compose secret is mounted from its Kubernetes Secret, and nothing else is.
    pod = deployment["spec"]["template"]["spec"]
    refs = _secret_refs(pod)
    # Compose's Kafka secrets (kafka_ca_certificate, kafka_<service>_password) are here Strimzi's
    # cluster CA and the KafkaUser's own Secret, both checked just below.
    expected = {SECRET_NAMES[s] for s in compose.get("secrets", []) if not s.startswith("kafka_")}
    user = next(e["value"] for e in container["env"] if e["name"] == "LINESIGHT_KAFKA__SASL_USERNAME")
    assert refs == expected | {user, "linesight-cluster-ca-cert"}
    assert user in {u["metadata"]["name"] for u in _all("KafkaUser")}
    # The health check is compose's, command for command.
    assert container["livenessProbe"]["exec"]["command"] == compose["healthcheck"]["test"][1:]
    # Non-root as in the image (uid 10001), secrets readable by its group.
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["fsGroup"] == 10001


def _setting_exists(name: str) -> bool:
    parts = name.removeprefix("LINESIGHT_").lower().split("__")
    model: Any = Settings
    for part in parts:
        fields = model.model_fields
        if part not in fields:
            return False
        model = fields[part].annotation
    return True


def test_every_linesight_variable_is_a_setting() -> None:
    names = set(_config_map_env())
    for obj in _all("Deployment") + _all("Job"):
        names |= _env_names(obj)
    linesight = {n for n in names if n.startswith("LINESIGHT_")}
    assert linesight and all(_setting_exists(n) for n in linesight), [n for n in linesight if not _setting_exists(n)]


def test_every_secret_is_either_written_by_an_operator_or_documented_for_the_site() -> None:
    refs: set[str] = set()
    for obj in _all("Deployment") + _all("Job"):
        refs |= _secret_refs(obj["spec"]["template"]["spec"])
    for t in _all("TriggerAuthentication"):
        refs |= {r["name"] for r in t["spec"]["secretTargetRef"]}
    chi = json.dumps(_one("ClickHouseInstallation", "linesight"))
    refs |= set(re.findall(r'"secretKeyRef": \{"name": "([^"]+)"', chi))
    kafka_users = {u["metadata"]["name"] for u in _all("KafkaUser")}
    assert refs - OPERATOR_SECRETS - kafka_users == set(SITE_SECRETS)
    scale = (PROJECT_ROOT / "docs" / "scale.md").read_text()
    for name in SITE_SECRETS:
        assert f"`{name}`" in scale, f"docs/scale.md does not list the Secret {name}"


# ---------------------------------------------------------------- Triton and the workers


def test_triton_runs_composes_command_behind_a_service_with_gpu_readiness() -> None:
    compose = _compose()["services"]["triton"]
    triton = _one("Deployment", "triton")
    container = _container(triton)
    assert container["args"] == compose["command"]
    assert container["command"] == compose["entrypoint"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert triton["spec"]["replicas"] >= 2
    service = _one("Service", "triton")
    assert service["spec"]["selector"] == triton["spec"]["selector"]["matchLabels"]
    assert _config_map_env()["LINESIGHT_TRITON__URL"] == "triton:8001"
    script = _one("ConfigMap", "triton-entrypoint")["data"]["triton-entrypoint.sh"]
    assert script == (PROJECT_ROOT / "infra" / "docker" / "triton-entrypoint.sh").read_text()
    # Only the pods compose puts on the `inference` network may reach HTTP/gRPC.
    inference = {d["metadata"]["name"] for d in _all("Deployment")
                 if d["spec"]["template"]["metadata"]["labels"].get("linesight.io/inference") == "true"}
    on_network = {name for name, s in _compose()["services"].items() if "inference" in (s.get("networks") or [])}
    assert inference == on_network - {"triton"}


def test_workers_scale_on_their_groups_lag_up_to_the_partition_count() -> None:
    [scaled] = _all("ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "worker"
    [trigger] = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka" and set(meta) <= KEDA_KAFKA_KEYS
    assert meta["consumerGroup"] == Settings().stream.app_id
    assert meta["topic"] == Settings().kafka.topic_frames
    assert meta["bootstrapServers"] == _config_map_env()["LINESIGHT_KAFKA__BOOTSTRAP_SERVERS"]
    frames = _one("KafkaTopic", Settings().kafka.topic_frames)["spec"]["partitions"]
    assert 2 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= frames
    assert trigger["authenticationRef"]["name"] in {t["metadata"]["name"] for t in _all("TriggerAuthentication")}
    # Singletons stay single: a second actuator would drive the same gates, a second alert service
    # would raise every alert twice.
    for name in ("actuator-line-1", "alerts", "sink", "dashboard", "auditsealer"):
        d = _one("Deployment", name)
        assert d["spec"]["replicas"] == 1 and d["spec"]["strategy"]["type"] == "Recreate", name


# ---------------------------------------------------------------- ClickHouse


def test_clickhouse_cluster_users_and_schema_job() -> None:
    chi = _one("ClickHouseInstallation", "linesight")["spec"]
    [cluster] = chi["configuration"]["clusters"]
    assert cluster["name"] == CLUSTER
    assert cluster["layout"]["shardsCount"] >= 2 and cluster["layout"]["replicasCount"] >= 2
    assert chi["configuration"]["profiles"]["default/distributed_product_mode"] == "global"
    users = {k.split("/")[0] for k in chi["configuration"]["users"]}
    xml = ET.parse(PROJECT_ROOT / "infra" / "clickhouse" / "users.d" / "linesight.xml").getroot().find("users")
    assert xml is not None
    assert users - {"default"} == {u.tag for u in xml if u.get("remove") is None}
    assert chi["configuration"]["users"]["default/networks/ip"] == ["::1", "127.0.0.1"]
    # Each grant on a table also covers its local table (distributed queries run as the initial user).
    for key, grants in chi["configuration"]["users"].items():
        if key.endswith("/grants/query"):
            tables = {g.split(" ON ")[1] for g in grants}
            for t in tables:
                if not t.endswith(".*") and not t.endswith(LOCAL_SUFFIX):
                    assert t + LOCAL_SUFFIX in tables, (key, t)
    [job] = _all("Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["python", "-m", "pipeline.clickhouse.cluster"]
    assert "--apply" in container["command"] and container["command"][-1] == CLUSTER
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LINESIGHT_CLICKHOUSE__USERNAME"] == "linesight_admin"
    assert _config_map_env()["LINESIGHT_CLICKHOUSE__URL"].startswith("http://clickhouse-linesight:")
    keeper = _one("ClickHouseKeeperInstallation", "linesight")["spec"]
    assert keeper["configuration"]["clusters"][0]["layout"]["replicasCount"] == 3


def test_one_actuator_per_line_reading_its_pinned_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each line of the site's LINESIGHT_LINES has exactly one actuator Deployment, for that line, with
    the site's line -> partition map (the worker has the same one), and its own Service; every pinned
    partition exists on the line-keyed topics."""
    [site] = _docs(K8S / "site-config.example.yaml")
    lines = set(json.loads(site["data"]["LINESIGHT_LINES"]))
    actuators = [d for d in _all("Deployment") if d["metadata"]["labels"].get("app.kubernetes.io/name") == "actuator"]
    by_line = {next(e["value"] for e in _env(d) if e["name"] == "LINESIGHT_SERVICES__ACTUATOR_LINE"): d
               for d in actuators}
    assert len(by_line) == len(actuators) and set(by_line) == lines
    for line, d in by_line.items():
        assert d["metadata"]["name"] == f"actuator-{line}"
        assert d["spec"]["template"]["metadata"]["labels"]["linesight.io/line"] == line
        assert {s["metadata"]["name"] for s in _all("Service")} >= {f"actuator-{line}"}
    for d in [*actuators, _one("Deployment", "worker")]:
        [ref] = [e["valueFrom"]["configMapKeyRef"] for e in _env(d) if e["name"] == "LINESIGHT_KAFKA__LINE_PARTITIONS"]
        assert (ref["name"], ref["key"]) == ("linesight-site", "LINESIGHT_LINE_PARTITIONS")
    monkeypatch.setenv("LINESIGHT_KAFKA__PARTITIONS", _config_map_env()["LINESIGHT_KAFKA__PARTITIONS"])
    monkeypatch.setenv("LINESIGHT_KAFKA__LINE_PARTITIONS", site["data"]["LINESIGHT_LINE_PARTITIONS"])
    kafka = Settings().kafka  # refuses a pinned partition the topics do not have
    assert set(kafka.line_partitions) == lines
    for topic in (kafka.topic_captures, kafka.topic_results, kafka.topic_rejects, kafka.topic_heartbeats):
        assert _one("KafkaTopic", topic)["spec"]["partitions"] == kafka.partitions
