"""The production deployment (docker-compose.yml, infra/) checked offline: no Docker engine, no GPU.

* `docker-compose config -q` (Debian's docker-compose 1.29) validates the file against the
  compose schema when the binary is on PATH; skipped, with the reason, otherwise.
* The structural tests parse the YAML themselves and check what a schema cannot: service names
  the settings point at, health conditions, the GPU reservation, that every ``LINESIGHT_*``
  variable is a real `Settings` field, that commands parse with the real CLI, that healthchecks
  work against the real health endpoint, ClickHouse accounts and that no password is committed.
* The camera's healthcheck against a real broker is tests/e2e/test_compose_healthcheck_broker.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import BaseModel

try:
    import yaml
except ImportError as exc:  # pragma: no cover - a dev dependency
    raise ImportError("tests/unit/test_compose.py needs PyYAML: pip install -e '.[dev]' (pyyaml>=6)") from exc

from compose_file import COMPOSE_VAR, dockerfile_instructions, interpolate, published_ports

from pipeline.cli.main import build_parser
from pipeline.core.health import HealthState, serve_health
from pipeline.embedded.process import free_port
from pipeline.kafka.topics import FRAME_OVERHEAD_BYTES
from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
APP_DOCKERFILE = ROOT / "infra" / "docker" / "app.Dockerfile"
TRITON_DOCKERFILE = ROOT / "infra" / "docker" / "triton.Dockerfile"
TRITON_ENTRYPOINT = ROOT / "infra" / "docker" / "triton-entrypoint.sh"
CH_DIR = ROOT / "infra" / "clickhouse"
CH_USERS_XML = CH_DIR / "users.d" / "linesight.xml"
CH_ENTRYPOINT = CH_DIR / "entrypoint.sh"

ONE_SHOT = {"topics-init", "db-init"}
APP_SERVICES = {
    "topics-init", "db-init", "worker", "sink", "actuator", "alerts", "dashboard", "camera", "auditsealer", "gateway",
}
REQUIRED_SERVICES = APP_SERVICES | {"kafka", "triton", "clickhouse", "grafana"}
LONG_RUNNING = REQUIRED_SERVICES - ONE_SHOT
# service -> (health-port environment variable, the Settings section and field it sets)
HEALTH_PORTS = {
    "worker": ("LINESIGHT_STREAM__WEB_PORT", ("stream", "web_port")),
    "sink": ("LINESIGHT_SERVICES__SINK_HEALTH_PORT", ("services", "sink_health_port")),
    "actuator": ("LINESIGHT_SERVICES__ACTUATOR_HEALTH_PORT", ("services", "actuator_health_port")),
    "alerts": ("LINESIGHT_SERVICES__ALERTS_HEALTH_PORT", ("services", "alerts_health_port")),
    "gateway": ("LINESIGHT_SERVICES__GATEWAY_HEALTH_PORT", ("services", "gateway_health_port")),
}
CLI_HANDLERS = {
    "topics-init": "cmd_topics",
    "db-init": "cmd_db_init",
    "worker": "cmd_worker",
    "sink": "cmd_sink",
    "actuator": "cmd_actuator",
    "alerts": "cmd_alerts",
    "dashboard": "cmd_dashboard",
    "camera": "cmd_camera",
    "auditsealer": "cmd_audit_serve",
    "gateway": "cmd_gateway",
}
# The variables compose refuses to run without (${VAR:?...}): dummy secret paths in the tests.
SECRET_PATH_VARS = (
    "CLICKHOUSE_ADMIN_PASSWORD_FILE",
    "CLICKHOUSE_WRITER_PASSWORD_FILE",
    "CLICKHOUSE_READER_PASSWORD_FILE",
    "CLICKHOUSE_DASHBOARD_PASSWORD_FILE",
    "ALERTS_API_TOKEN_FILE",
    "GRAFANA_ADMIN_PASSWORD_FILE",
    "PLC_PASSWORD_FILE",
    "PLC_CLIENT_CERTIFICATE_FILE",
    "PLC_CLIENT_PRIVATE_KEY_FILE",
    "TRITON_MODEL_CONTROL_KEY_FILE",
    "AUDIT_TRAIL_KEY_FILE",
    "CLICKHOUSE_AUDITSEALER_PASSWORD_FILE",
    # Kafka's TLS files and SCRAM passwords (docs/deployment.md, "Broker security").
    "KAFKA_CA_CERTIFICATE_FILE",
    "KAFKA_BROKER_CERTIFICATE_FILE",
    "KAFKA_BROKER_PRIVATE_KEY_FILE",
    "KAFKA_ADMIN_PASSWORD_FILE",
    "KAFKA_BROKER_ADMIN_PASSWORD_FILE",
    *(f"KAFKA_{p}_PASSWORD_FILE" for p in ("GATEWAY", "CAMERA", "WORKER", "SINK", "ACTUATOR", "ALERTS", "DASHBOARD",
                                           "AUDITSEALER", "OPERATOR", "SUBSCRIBER")),
)
# Plant facts compose also refuses to guess: the gate's PLC and each line's geometry.
REQUIRED_VARS = {"PLC_ENDPOINT": "opc.tcp://plc.test:4840", "LINESIGHT_LINES": '{"line-1": {"camera_to_gate_mm": 400}}'}
DUMMY_ENV = {name: f"/tmp/linesight-test-secrets/{name.lower()}" for name in SECRET_PATH_VARS} | REQUIRED_VARS


# --------------------------------------------------------------------------- helpers

def variables_in(text: str) -> dict[str, str | None]:
    """Variables referenced by compose interpolation -> their operator (None for plain)."""
    found: dict[str, str | None] = {}
    for m in COMPOSE_VAR.finditer(text):
        name = m.group("name") or m.group("plain")
        if name:
            found[name] = m.group("op")
    return found


def env_of(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def settings_env_names() -> set[str]:
    """Every environment variable `Settings` reads: LINESIGHT_<FIELD> / LINESIGHT_<SECTION>__<FIELD>."""
    names = set()
    for section, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.update(f"LINESIGHT_{section}__{name}".upper() for name in annotation.model_fields)
        else:
            names.add(f"LINESIGHT_{section}".upper())
    return names


def settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The `Settings` a container with exactly this LINESIGHT_* environment builds."""
    for key in list(os.environ):
        if key.upper().startswith("LINESIGHT_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("LINESIGHT_"):
            monkeypatch.setenv(key, value)
    return Settings()


def healthcheck_command(service: Mapping[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    return [test] if isinstance(test, str) else list(test)


def python_healthcheck(service: Mapping[str, Any]) -> str:
    cmd = healthcheck_command(service)
    assert cmd[0] == "CMD" and cmd[1] in ("python", "python3") and cmd[2] == "-c", cmd
    return cmd[3]


def walk(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any, Any]]:
    """(path, key, value) of every mapping entry and "KEY=VALUE" list item in a YAML tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            if isinstance(item, str) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", item):
                key, _, value = item.partition("=")
                yield path, key, value
            yield from walk(item, (*path, i))


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """The compose file as `docker compose` sees it with only the required variables set."""
    return interpolate(raw, DUMMY_ENV)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def users_xml() -> ET.Element:
    return ET.parse(CH_USERS_XML).getroot()


def grants_of(user: ET.Element) -> list[str]:
    return [" ".join((q.text or "").split()) for q in user.findall("grants/query")]


# --------------------------------------------------------------------------- docker-compose itself

DOCKER_COMPOSE = shutil.which("docker-compose")
needs_docker_compose = pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="docker-compose is not on PATH (Debian: apt-get install -y docker-compose); "
    "the compose schema check needs it, the structural tests below run without it",
)


def run_docker_compose(args: list[str], env_extra: Mapping[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    empty_env_file = tmp_path / "empty.env"  # hermetic: ignore a developer's own .env
    empty_env_file.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    for name in variables_in(COMPOSE_FILE.read_text()):
        env.pop(name, None)
    env.update(env_extra)
    assert DOCKER_COMPOSE is not None
    return subprocess.run(
        [DOCKER_COMPOSE, "--env-file", str(empty_env_file), "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


@needs_docker_compose
@pytest.mark.parametrize(
    "profile_args", [[], ["--profile", "simulator"], ["--profile", "cameras"]], ids=["default", "simulator", "cameras"]
)
def test_docker_compose_validates_the_file(profile_args: list[str], tmp_path: Path) -> None:
    secrets = {}
    for name in SECRET_PATH_VARS:
        path = tmp_path / name.lower()
        path.write_text("dummy-password-for-validation\n")
        secrets[name] = str(path)
    result = run_docker_compose([*profile_args, "config", "-q"], secrets | REQUIRED_VARS, tmp_path)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"


@needs_docker_compose
def test_docker_compose_refuses_to_run_without_the_secret_paths(tmp_path: Path) -> None:
    result = run_docker_compose(["config", "-q"], {}, tmp_path)
    assert result.returncode != 0
    assert any(name in result.stderr for name in (*SECRET_PATH_VARS, *REQUIRED_VARS)), result.stderr


# --------------------------------------------------------------------------- services and order


def test_every_service_of_the_deployment_is_defined(services: dict[str, Any]) -> None:
    missing = REQUIRED_SERVICES - set(services)
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


def test_long_running_services_have_healthchecks(services: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        cmd = healthcheck_command(services[name])
        assert cmd[0] in ("CMD", "CMD-SHELL") and len(cmd) > 1, f"{name}: healthcheck test {cmd}"
        for key in ("interval", "timeout", "retries"):
            assert key in check, f"{name}: healthcheck without {key}"


def test_python_healthchecks_compile(services: dict[str, Any]) -> None:
    for name, service in services.items():
        cmd = healthcheck_command(service) if "healthcheck" in service else []
        if len(cmd) >= 4 and cmd[1] in ("python", "python3") and cmd[2] == "-c":
            compile(cmd[3], f"{name} healthcheck", "exec")


def test_depends_on_waits_for_health_or_completion(services: dict[str, Any]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on")
        if depends is None:
            continue
        assert isinstance(depends, dict), f"{name}: depends_on must name a condition per service"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = (spec or {}).get("condition")
            if target in ONE_SHOT:
                assert condition == "service_completed_successfully", f"{name} -> {target}: {condition}"
            else:
                assert condition == "service_healthy", f"{name} -> {target}: {condition}"
                assert "healthcheck" in services[target], f"{name} waits for {target}, which has no healthcheck"
    # The order the pipeline needs.
    assert set(services["topics-init"]["depends_on"]) == {"kafka"}
    assert set(services["db-init"]["depends_on"]) == {"clickhouse"}
    assert {"topics-init", "triton"} <= set(services["worker"]["depends_on"])
    assert {"topics-init", "db-init", "clickhouse"} <= set(services["sink"]["depends_on"])
    assert "topics-init" in services["actuator"]["depends_on"]


def test_restart_policies(services: dict[str, Any]) -> None:
    for name in ONE_SHOT:
        assert services[name].get("restart") == "no", f"one-shot {name} must not restart"
        assert "healthcheck" not in services[name]
    for name in LONG_RUNNING:
        assert services[name].get("restart") in ("unless-stopped", "always", "on-failure"), name


def test_only_the_camera_is_behind_the_simulator_profile(services: dict[str, Any]) -> None:
    assert services["camera"].get("profiles") == ["simulator"]
    # The camera gateway is a production service, but only a host wired to the line's cameras can
    # run it (it acquires from them): it starts with `--profile cameras` there and nowhere else.
    assert services["gateway"].get("profiles") == ["cameras"]
    others = [n for n, s in services.items() if n not in ("camera", "gateway") and s.get("profiles")]
    assert not others, f"production services must start by default: {others}"


# --------------------------------------------------------------------------- the application services


def test_app_services_run_the_app_image_as_linesight_commands(services: dict[str, Any]) -> None:
    parser = build_parser()
    images = set()
    for name in APP_SERVICES:
        service = services[name]
        assert service["build"]["dockerfile"] == "infra/docker/app.Dockerfile", name
        assert service.get("init") is True, f"{name}: needs an init process to forward SIGTERM"
        images.add(service["image"])
        args = parser.parse_args([str(a) for a in service["command"]])
        # Some subcommands bind their handler in a lambda (settings, stop signals): it names the handler.
        called = {args.func.__name__, *args.func.__code__.co_names}
        assert CLI_HANDLERS[name] in called, f"{name}: {service['command']}"
    assert len(images) == 1, f"one app image for every service, got {images}"
    camera = parser.parse_args([str(a) for a in services["camera"]["command"]])
    assert camera.duration == 0 and camera.rate > 0


def test_every_linesight_variable_is_a_settings_field(raw: dict[str, Any]) -> None:
    known = settings_env_names()
    used: dict[str, str] = {}
    for path, key, _ in walk(raw):
        if isinstance(key, str) and key.upper().startswith("LINESIGHT_"):
            used[key] = "/".join(map(str, path))
    for instruction, args in dockerfile_instructions(APP_DOCKERFILE):
        if instruction == "ENV":
            for key in re.findall(r"(?:^|\s)(LINESIGHT_[A-Za-z0-9_]+)=", args):
                used[key] = "app.Dockerfile ENV"
    assert used, "no LINESIGHT_ settings configured at all"
    unknown = {k: where for k, where in used.items() if k.upper() not in known}
    assert not unknown, f"not fields of pipeline.settings.Settings (silently ignored): {unknown}"


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_service_environment_builds_valid_settings(
    name: str, services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from(env_of(services[name]), monkeypatch)
    # Every external address is set: no container ever starts an embedded service.
    assert settings.kafka.bootstrap_servers and settings.triton.url and settings.clickhouse.url


def test_services_reach_kafka_triton_and_clickhouse_by_service_name(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka_env = env_of(services["kafka"])
    advertised = dict(
        entry.split("://", 1) for entry in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    internal = advertised[kafka_env["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    assert internal.split(":")[0] == "kafka"
    triton_flags = " ".join(services["triton"]["command"])
    grpc_port = re.search(r"--grpc-port[= ](\d+)", triton_flags)
    grpc_port = grpc_port.group(1) if grpc_port else "8001"

    for name in ("worker", "sink", "actuator", "topics-init", "camera"):
        settings = settings_from(env_of(services[name]), monkeypatch)
        assert settings.kafka.bootstrap_servers == internal, f"{name}: {settings.kafka.bootstrap_servers}"
    # The gateway runs on the host's network (GigE Vision discovery is a broadcast on the camera
    # network, which a bridged container never sees), where the name `kafka` does not resolve: it
    # takes the EXTERNAL listener, at the address the broker advertises there.
    gateway = settings_from(env_of(services["gateway"]), monkeypatch)
    assert gateway.kafka.bootstrap_servers == advertised["EXTERNAL"]

    worker = settings_from(env_of(services["worker"]), monkeypatch)
    assert worker.triton.url == f"triton:{grpc_port}"

    for name in ("sink", "db-init"):
        ch = settings_from(env_of(services[name]), monkeypatch).clickhouse
        url = urlsplit(ch.url or "")
        assert (url.scheme, url.hostname, url.port) == ("http", "clickhouse", 8123), f"{name}: {ch.url}"
        assert ch.password_file is not None and str(ch.password_file).startswith("/run/secrets/")
        assert ch.password is None


def test_healthchecks_use_the_ports_the_services_listen_on(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, (variable, (section, field)) in HEALTH_PORTS.items():
        env = env_of(services[name])
        assert variable in env, f"{name}: sets no {variable}"
        assert variable in python_healthcheck(services[name]), f"{name}: healthcheck ignores {variable}"
        settings = settings_from(env, monkeypatch)
        assert getattr(getattr(settings, section), field) == int(env[variable])
        assert "ports" not in services[name], f"{name}: health ports stay on the compose network"


@pytest.mark.parametrize("name", sorted(HEALTH_PORTS))
def test_healthcheck_passes_and_fails_against_the_real_health_endpoint(name: str, services: dict[str, Any]) -> None:
    variable, _ = HEALTH_PORTS[name]
    code = python_healthcheck(services[name])

    def probe(port: int) -> int:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LINESIGHT_")} | {variable: str(port)}
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30).returncode

    alive = HealthState(name)
    port = free_port()
    server = serve_health(alive, port, host="127.0.0.1")
    try:
        assert probe(port) == 0, "healthy service reported unhealthy"
    finally:
        server.shutdown()
        server.server_close()

    stale = HealthState(name, stale_after_s=0.0)  # its loop stopped ticking: /healthz answers 503
    port = free_port()
    server = serve_health(stale, port, host="127.0.0.1")
    try:
        assert probe(port) != 0, "a stalled service must fail its healthcheck"
    finally:
        server.shutdown()
        server.server_close()

    assert probe(free_port()) != 0, "nothing listening must fail the healthcheck"


def test_open_endpoints_listen_beyond_loopback_only_where_another_container_probes_them(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """/healthz, /readyz and /metrics carry no auth: a healthcheck runs inside its own container, so
    only a service another container reads (the dashboard's health panel, Prometheus) listens on
    0.0.0.0; the worker's Faust web pages stay on loopback (Prometheus reads its metrics-only port)."""
    dash = settings_from(env_of(services["dashboard"]), monkeypatch).services
    probed = {urlsplit(url or "").hostname for url in (dash.sink_url, dash.actuator_url)}
    assert probed == {"sink", "actuator"}
    for name in ("sink", "actuator", "worker", "auditsealer", "dashboard"):
        svc = settings_from(env_of(services[name]), monkeypatch).services
        assert svc.health_host == "0.0.0.0", f"{name}: the dashboard or Prometheus reads it from its own container"
        # Only the dashboard publishes a port: its operators' page, never its metrics listener.
        assert published_ports(services[name]) == ({dash.dashboard_port} if name == "dashboard" else set()), name
    worker = settings_from(env_of(services["worker"]), monkeypatch).stream
    assert worker.web_host == "127.0.0.1" and worker.metrics_port, "worker: only /metrics beyond loopback"
    for name in APP_SERVICES - {"sink", "actuator", "worker", "auditsealer", "dashboard"}:
        settings = settings_from(env_of(services[name]), monkeypatch)
        assert settings.services.health_host == "127.0.0.1", name
        assert settings.stream.web_host == "127.0.0.1", f"{name}: Faust's web pages stay on loopback"


def test_health_endpoint_binds_the_configured_host_loopback_by_default() -> None:
    assert Settings().services.health_host == "127.0.0.1"
    server = serve_health(HealthState("sink"), free_port(), Settings().services.health_host)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()


def test_workers_scale_as_one_consumer_group(services: dict[str, Any], raw: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker, "fixed names/ports prevent --scale"
    replicas = worker.get("deploy", {}).get("replicas", 1)
    assert int(replicas) >= 1
    for name in APP_SERVICES:
        assert "container_name" not in services[name], name
    # All workers share one group id: nothing may set it per replica.
    assert "LINESIGHT_STREAM__APP_ID" not in env_of(worker)


# --------------------------------------------------------------------------- kafka


def test_kafka_is_a_pinned_single_kraft_node_with_a_volume(services: dict[str, Any], compose: dict[str, Any]) -> None:
    kafka = services["kafka"]
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", kafka["image"]), kafka["image"]
    env = env_of(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env.get("CLUSTER_ID"), "the apache/kafka image needs CLUSTER_ID in KRaft mode"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
        assert env[key] == "1", f"{key}: a single node cannot hold more replicas"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in kafka["volumes"]}
    assert env["KAFKA_LOG_DIRS"] in mounts, "the Kafka log must be on the volume"
    assert mounts[env["KAFKA_LOG_DIRS"]] in compose["volumes"], "named volume"
    # The broker's own ApiVersions answer, without starting a JVM (tests/unit/test_compose_fit.py runs it).
    assert healthcheck_command(kafka) == ["CMD", "bash", "/linesight/kafka-healthcheck.sh"]
    assert "./infra/docker/kafka-healthcheck.sh:/linesight/kafka-healthcheck.sh:ro" in kafka["volumes"]


def test_kafka_accepts_the_largest_frame_the_producers_send(services: dict[str, Any]) -> None:
    env = env_of(services["kafka"])
    largest = Settings().kafka.max_message_bytes + FRAME_OVERHEAD_BYTES
    broker_cap = int(env["KAFKA_MESSAGE_MAX_BYTES"])
    assert broker_cap > 1_048_576, "message.max.bytes must be above Kafka's 1 MB default"
    assert broker_cap >= largest, f"broker cap {broker_cap} < producer cap {largest}"
    assert int(env["KAFKA_REPLICA_FETCH_MAX_BYTES"]) >= broker_cap


# --------------------------------------------------------------------------- triton


def test_triton_reserves_a_gpu_and_loads_the_mounted_models(services: dict[str, Any]) -> None:
    triton = services["triton"]
    assert triton["build"]["dockerfile"] == "infra/docker/triton.Dockerfile"
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    gpu = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert gpu, f"no nvidia GPU reservation: {devices}"
    assert gpu[0].get("count") in (1, "all") or gpu[0].get("device_ids")
    command = [str(c) for c in triton["command"]]
    assert command[0] == "tritonserver"
    assert "--model-control-mode=explicit" in command and "--load-model=*" in command
    repo = next(c.split("=", 1)[1] for c in command if c.startswith("--model-repository="))
    mounts = [v.split(":") for v in triton["volumes"]]
    assert [m for m in mounts if m[1] == repo and m[0] in ("./triton_models", "triton_models") and m[2:] == ["ro"]], (
        f"./triton_models must be mounted read-only at {repo}: {triton['volumes']}"
    )
    assert triton.get("shm_size"), "the python backend needs a larger /dev/shm"
    assert "/v2/health/ready" in " ".join(healthcheck_command(triton))


# Services that ask Triton for model control: `models deploy|rollback|list` run as the worker, and
# the dashboard reads the served versions from the repository index.
MODEL_CONTROL = {"worker", "dashboard"}
TRITON_KEY = "/run/secrets/triton_model_control_key"


def networks_of(service: Mapping[str, Any]) -> set[str]:
    nets = service.get("networks") or ["default"]
    return set(nets) if isinstance(nets, list) else set(nets)


def test_triton_model_control_needs_the_key_from_its_secret(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    triton = services["triton"]
    assert triton["entrypoint"] == ["/bin/bash", "/linesight/triton-entrypoint.sh"]
    assert "./infra/docker/triton-entrypoint.sh:/linesight/triton-entrypoint.sh:ro" in triton["volumes"]
    assert triton["secrets"] == ["triton_model_control_key"]
    command = " ".join(str(c) for c in triton["command"])
    assert "restricted" not in command and "--model-control-mode=explicit" in command
    for name in MODEL_CONTROL:
        env = env_of(services[name])
        assert env["LINESIGHT_TRITON__MODEL_CONTROL_KEY_FILE"] == TRITON_KEY, name
        assert "triton_model_control_key" in services[name]["secrets"], f"{name} does not mount the key"
        assert settings_from(env, monkeypatch).triton.model_control_key_file == Path(TRITON_KEY)
    holders = {n for n, s in services.items() if "triton_model_control_key" in (s.get("secrets") or [])}
    assert holders == MODEL_CONTROL | {"triton"}, "only Triton and the services that deploy hold the key"


def test_triton_entrypoint_adds_the_restricted_flags_with_the_key_or_refuses_to_start(
    services: dict[str, Any], tmp_path: Path
) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not available")
    key_file, marker, nxt = tmp_path / "key", tmp_path / "args", tmp_path / "next.sh"
    nxt.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {marker}\n')
    nxt.chmod(0o755)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TRITON_INIT_KEY_FILE": str(key_file),
           "TRITON_INIT_NEXT": str(nxt)}
    command = [str(c) for c in services["triton"]["command"]]

    def start() -> subprocess.CompletedProcess[str]:
        marker.unlink(missing_ok=True)
        return subprocess.run([bash, str(TRITON_ENTRYPOINT), *command], env=env, capture_output=True, text=True,
                              timeout=30)

    key = "0123456789abcdef" * 4
    key_file.write_text(f"  {key}\n")
    result = start()
    assert result.returncode == 0, result.stderr
    args = marker.read_text().splitlines()
    header = Settings().triton.model_control_header  # what deploy sends (pipeline/model/deploy.py)
    restricted = f"model-repository:{header}={key}"
    assert args == [*command, f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}"]
    assert key not in result.stdout + result.stderr, "the key is never logged"
    for bad in ("short-key", "x" * 40 + ",metadata:other=1", ""):
        key_file.write_text(bad)
        result = start()
        assert result.returncode != 0 and not marker.exists(), bad
    key_file.unlink()
    result = start()
    assert result.returncode != 0 and not marker.exists() and "missing" in result.stderr


def test_triton_is_reachable_only_by_the_services_that_use_it(
    services: dict[str, Any], compose: dict[str, Any], raw: dict[str, Any]
) -> None:
    networks = compose["networks"]
    assert networks["inference"]["internal"] is True, "no route out of the inference network"
    assert networks_of(services["triton"]) == {"inference", "triton-metrics"}
    on = {net: {n for n, s in services.items() if net in networks_of(s)} for net in ("inference", "triton-metrics")}
    assert on["inference"] == {"triton"} | MODEL_CONTROL
    assert on["triton-metrics"] == {"triton", "prometheus"}, "the metrics bridge carries Triton and its scraper alone"
    for name in MODEL_CONTROL:
        assert "default" in networks_of(services[name]), f"{name} still needs Kafka and ClickHouse"
    # Published: the metrics port only, on loopback unless TRITON_METRICS_BIND says otherwise.
    assert raw["services"]["triton"]["ports"] == ["${TRITON_METRICS_BIND:-127.0.0.1}:${TRITON_METRICS_PORT:-8002}:8002"]
    flags = " ".join(str(c) for c in services["triton"]["command"])
    assert not re.search(r"--(http|grpc|metrics)-port", flags), "Triton's default ports are the documented ones"


def test_triton_image_adds_the_preprocessing_dependencies(services: dict[str, Any]) -> None:
    instructions = dockerfile_instructions(TRITON_DOCKERFILE)
    args = dict(a.split("=", 1) for i, a in instructions if i == "ARG" and "=" in a)
    froms = [a for i, a in instructions if i == "FROM"]
    assert froms == ["nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3"], froms
    assert re.fullmatch(r"\d\d\.\d\d", args["TRITON_VERSION"]), "pin the NGC release"
    compose_default = services["triton"]["build"]["args"]["TRITON_VERSION"]
    assert compose_default == args["TRITON_VERSION"], "compose and Dockerfile pin different Triton releases"
    runs = " ".join(a for i, a in instructions if i == "RUN")
    assert re.search(r"numpy[^\"']*<2", runs) and "pillow" in runs
    assert "from pipeline.model import preprocess" in runs, "the build must prove the stub can import it"
    assert any(i == "COPY" and a.startswith("pipeline") for i, a in instructions)


def test_preprocessing_imports_only_what_the_triton_image_has() -> None:
    """The stub runs the image's Python 3.10 with numpy and pillow only (installed --no-deps)."""
    import ast

    allowed_third_party = {"numpy", "PIL"}
    # Importing a module runs its packages' __init__ too.
    pending, seen = ["pipeline", "pipeline.model", "pipeline.model.preprocess"], set()
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = ROOT / Path(*module.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if not path.exists() and path.name == "__init__.py":
            continue  # namespace package: no code runs
        tree = ast.parse(path.read_text(), filename=str(path), feature_version=(3, 10))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top == "pipeline":
                    parts = name.split(".")
                    pending.extend(".".join(parts[:i]) for i in range(1, len(parts) + 1))
                else:
                    assert top in sys.stdlib_module_names or top in allowed_third_party or top == "__future__", (
                        f"{module} imports {name}, which the Triton image does not install"
                    )


# --------------------------------------------------------------------------- app image


def test_app_image_is_python_311_slim_non_root_with_the_cli_entrypoint() -> None:
    instructions = dockerfile_instructions(APP_DOCKERFILE)
    args = dict(a.split("=", 1) for i, a in instructions if i == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim"), args["PYTHON_IMAGE"]
    users = [a for i, a in instructions if i == "USER"]
    assert users and users[-1] not in ("root", "0"), "the services must not run as root"
    assert [a for i, a in instructions if i == "ENTRYPOINT"][-1] == '["linesight"]'
    runs = " ".join(a for i, a in instructions if i == "RUN")
    assert "pip install" in runs
    copied = " ".join(a for i, a in instructions if i == "COPY")
    # `linesight db init` reads the schema relative to the package (pipeline.clickhouse.SCHEMA_PATH).
    assert "infra/clickhouse/schema.sql" in copied


# --------------------------------------------------------------------------- clickhouse


def test_clickhouse_is_pinned_with_a_data_volume_and_the_linesight_config(
    services: dict[str, Any], compose: dict[str, Any]
) -> None:
    ch = services["clickhouse"]
    assert re.fullmatch(r"clickhouse/clickhouse-server:\d+\.\d+(\.\d+\.\d+)?", ch["image"]), ch["image"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in ch["volumes"]}
    assert mounts["/var/lib/clickhouse"] in compose["volumes"]
    for target in (
        "/linesight/entrypoint.sh",
        "/etc/clickhouse-server/users.d/50-linesight.xml",
        "/etc/clickhouse-server/config.d/50-linesight.xml",
    ):
        assert (ROOT / mounts[target]).is_file(), f"{mounts[target]} mounted at {target} does not exist"
        assert f"{mounts[target]}:{target}:ro" in ch["volumes"], f"{target} must be mounted read-only"
    for source in mounts.values():
        if source.startswith("./"):
            assert (ROOT / source).exists(), source
    assert ch["entrypoint"][-1] == "/linesight/entrypoint.sh"
    assert env_of(ch).get("CLICKHOUSE_SKIP_USER_SETUP") == "1", "users come from users.d only"
    assert "/ping" in " ".join(healthcheck_command(ch))


def test_clickhouse_users_have_least_privilege(services: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    root = users_xml()
    users = root.find("users")
    assert users is not None
    removed = users.find("default")
    assert removed is not None and removed.get("remove") == "remove", "the password-less default user must go"
    database = settings_from(env_of(services["sink"]), monkeypatch).clickhouse.database

    admin, writer, reader = (users.find(u) for u in ("linesight_admin", "linesight_writer", "linesight_reader"))
    assert admin is not None and writer is not None and reader is not None
    assert admin.findtext("access_management") == "1"
    # The sink writes the analytics tables; the audit trail has one writer, the audit service.
    assert grants_of(writer) == [f"GRANT SELECT, INSERT ON {database}.*", f"REVOKE INSERT ON {database}.audit_records"]
    assert grants_of(reader) == [f"GRANT SELECT ON {database}.*"]
    assert writer.find("access_management") is None and reader.find("access_management") is None
    profile = root.find(f"profiles/{reader.findtext('profile')}")
    assert profile is not None and int(profile.findtext("readonly") or 0) >= 1, "reader needs a read-only profile"

    for user in (admin, writer, reader):
        assert user.find("password") is None, f"{user.tag}: plaintext password in the repository"
        assert user.findtext("password_sha256_hex") == "0" * 64, f"{user.tag}: only the locked placeholder belongs here"

    # Who gets which account.
    assert env_of(services["sink"])["LINESIGHT_CLICKHOUSE__USERNAME"] == "linesight_writer"
    assert env_of(services["db-init"])["LINESIGHT_CLICKHOUSE__USERNAME"] == "linesight_admin"
    for name in APP_SERVICES - {"db-init"}:
        assert "clickhouse_admin_password" not in services[name].get("secrets", []), name
    for name in ("worker", "actuator", "alerts", "camera", "topics-init", "gateway"):
        assert not [s for s in services[name].get("secrets", []) if s.startswith("clickhouse_")], (
            f"{name} uses no ClickHouse account"
        )
    # Only the actuator (the gate) and the camera gateway (the line's encoder and trigger latches)
    # talk to the PLC, so only they hold the PLC credentials.
    for name in APP_SERVICES:
        plc = {s for s in services[name].get("secrets", []) if s.startswith("plc_")}
        expected = {"plc_password", "plc_client_certificate", "plc_client_private_key"}
        assert plc == (expected if name in ("actuator", "gateway") else set()), name


def test_clickhouse_entrypoint_turns_the_secrets_into_password_hashes(
    services: dict[str, Any], tmp_path: Path
) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not available")
    secrets_dir, users_d = tmp_path / "secrets", tmp_path / "users.d"
    secrets_dir.mkdir()
    users_d.mkdir()
    secret_names = services["clickhouse"]["secrets"]
    passwords = {}
    for name in secret_names:
        passwords[name] = f"{name}-Pw-0123456789"
        (secrets_dir / name).write_text(f"  {passwords[name]}\n")  # whitespace is not part of it
    marker = tmp_path / "next"
    next_entrypoint = tmp_path / "next.sh"
    next_entrypoint.write_text(f'#!/bin/sh\necho "$@" > {marker}\n')
    next_entrypoint.chmod(0o755)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CH_INIT_SECRETS_DIR": str(secrets_dir),
           "CH_INIT_USERS_D": str(users_d), "CH_INIT_NEXT": str(next_entrypoint)}

    result = subprocess.run([bash, str(CH_ENTRYPOINT), "--arg"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert marker.read_text().strip() == "--arg", "must hand over to the image's entrypoint with its arguments"
    overlay = ET.parse(users_d / "zz-linesight-passwords.xml").getroot().find("users")
    assert overlay is not None
    hashes = {u.tag: u.findtext("password_sha256_hex") for u in overlay}
    xml_users = {u.tag for u in users_xml().find("users") if u.get("remove") is None}
    assert set(hashes) == xml_users, "every account of users.d/linesight.xml gets a password"
    expected = {hashlib.sha256(p.encode()).hexdigest() for p in passwords.values()}
    assert set(hashes.values()) == expected
    assert not any(p in (users_d / "zz-linesight-passwords.xml").read_text() for p in passwords.values())

    # Fails closed: a short or missing secret stops the container before the server starts.
    marker.unlink()
    (secrets_dir / secret_names[0]).write_text("short\n")
    result = subprocess.run([bash, str(CH_ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and not marker.exists()
    (secrets_dir / secret_names[0]).unlink()
    result = subprocess.run([bash, str(CH_ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and not marker.exists() and "missing" in result.stderr


# --------------------------------------------------------------------------- secrets


def test_no_password_is_written_in_the_compose_file(raw: dict[str, Any]) -> None:
    services = raw["services"]
    top_secrets = raw.get("secrets", {})
    for path, key, value in walk(raw):
        if not (isinstance(key, str) and "PASSWORD" in key.upper()) or isinstance(value, (dict, list)):
            continue  # containers (e.g. a secret's definition) are walked into
        where = "/".join(map(str, (*path, key)))
        text = "" if value is None else str(value)
        if re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}", text):
            operators = set(variables_in(text).values())
            assert not operators & {"-", ":-"}, f"{where}: a default value would be a committed password"
            continue
        assert key.upper().endswith("_FILE"), f"{where}: literal password {text!r}"
        secret = text.removeprefix("/run/secrets/")
        assert text.startswith("/run/secrets/") and secret in top_secrets, f"{where}: {text} is no Docker secret"
        service = path[1] if len(path) > 1 and path[0] == "services" else None
        if service is not None:
            assert secret in services[service].get("secrets", []), f"{where}: {service} does not mount {secret}"
    for name, spec in top_secrets.items():
        assert set(spec) == {"file"}, f"secret {name}: only file-based secrets"
        assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", spec["file"]), (
            f"secret {name}: the file path comes from the environment (${{VAR:?...}}), not the repository"
        )


def test_env_example_documents_every_variable_and_holds_no_secret() -> None:
    text = ENV_EXAMPLE.read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.M))
    assigned = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", text, flags=re.M))
    referenced = variables_in(COMPOSE_FILE.read_text())
    undocumented = set(referenced) - documented
    assert not undocumented, f".env.example does not mention {sorted(undocumented)}"
    for name, op in referenced.items():
        if op in ("?", ":?"):
            assert name in assigned, f"required variable {name} needs a placeholder in .env.example"
    for name, value in assigned.items():
        if "PASSWORD" in name:
            assert name.endswith("_FILE") and value.startswith(("./", "/")), f"{name} must be a secret file path"


def test_required_variables_are_enforced_by_interpolation(raw: dict[str, Any]) -> None:
    with pytest.raises(KeyError, match="CLICKHOUSE_|PLC_|LINESIGHT_LINES"):
        interpolate(raw, {})


# --------------------------------------------------------------------------- Grafana (analysts)

GRAFANA_DIR = ROOT / "infra" / "grafana"


def _grafana_sql(sql: str) -> str:
    """A panel's SQL with Grafana's macros replaced, runnable on plain ClickHouse."""
    sql = re.sub(r"\$__timeFilter\(([a-z_]+)\)", r"\1 > now() - INTERVAL 1 DAY", sql)
    return sql.replace("${line:singlequote}", "'line-1'")


def test_grafana_is_pinned_and_reads_clickhouse_as_the_reader(services: dict[str, Any]) -> None:
    g = services["grafana"]
    # Built from a pinned Grafana with a pinned plugin baked in; nothing installed at start.
    assert g["build"]["dockerfile"] == "infra/docker/grafana.Dockerfile"
    args = g["build"]["args"]
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", args["GRAFANA_IMAGE"]), args
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["CLICKHOUSE_PLUGIN_VERSION"]), args
    assert not g["image"].startswith("grafana/grafana"), "the built image must not take the upstream tag"
    assert "GF_INSTALL_PLUGINS" not in g["environment"], "GF_INSTALL_PLUGINS downloads at every start"
    assert g["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert set(g["secrets"]) == {"grafana_admin_password", "clickhouse_reader_password"}, "reader only"
    assert g["depends_on"] == {"clickhouse": {"condition": "service_healthy"}}
    mounts = {v.split(":")[1]: v.split(":")[0] for v in g["volumes"] if v.startswith("./")}
    assert mounts["/etc/grafana/provisioning"] == "./infra/grafana/provisioning"
    assert all(v.endswith(":ro") for v in g["volumes"] if v.startswith("./"))
    ds = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "clickhouse.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "grafana-clickhouse-datasource" and source["jsonData"]["host"] == "clickhouse"
    assert source["jsonData"]["username"] == "linesight_reader"
    assert source["secureJsonData"]["password"] == "$__file{/run/secrets/clickhouse_reader_password}"
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "linesight.yaml").read_text())
    target = provider["providers"][0]["options"]["path"]
    assert any(v.startswith("./infra/grafana/dashboards:" + target) for v in g["volumes"])


def test_grafana_dashboard_panels_run_on_the_schema(chdb_client: Any) -> None:
    dash = json.loads((GRAFANA_DIR / "dashboards" / "linesight.json").read_text())
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for needed in ("yield", "defect class", "latency"):
        assert needed in titles
    uid = "linesight-clickhouse"
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == uid
        for target in panel["targets"]:
            chdb_client.query(_grafana_sql(target["rawSql"]))  # raises on a bad query
    chdb_client.query(dash["templating"]["list"][0]["query"])


def test_readme_example_sql_runs_on_the_schema(chdb_client: Any) -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Example SQL", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 3
    for sql in blocks:
        chdb_client.query(sql)


# --------------------------------------------------------------------------- alerts and dashboard


def test_alerts_and_dashboard_run_as_their_own_services(services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    from pipeline.dashboard.stack import production_refusal

    alerts, dash = services["alerts"], services["dashboard"]
    assert "topics-init" in alerts["depends_on"]
    assert {"alerts", "clickhouse", "db-init"} <= set(dash["depends_on"])
    # The alert service needs no ClickHouse account; both share the API token secret.
    assert set(alerts["secrets"]) == {"alerts_api_token", "kafka_ca_certificate", "kafka_alerts_password"}
    assert set(dash["secrets"]) == {"clickhouse_dashboard_password", "alerts_api_token", "triton_model_control_key",
                                    "kafka_ca_certificate", "kafka_dashboard_password"}
    assert "ports" not in alerts, "the alert API stays on the compose network"

    a_env, d_env = env_of(alerts), env_of(dash)
    a_settings, d_settings = settings_from(a_env, monkeypatch), settings_from(d_env, monkeypatch)
    assert a_settings.services.alerts_api_token_file == d_settings.services.alerts_api_token_file \
        == Path("/run/secrets/alerts_api_token")
    # The dashboard reaches the alert service (and the sink and actuator health) by compose name and port.
    target = urlsplit(d_settings.services.alerts_url or "")
    assert (target.hostname, target.port) == ("alerts", a_settings.services.alerts_health_port)
    for name, url, port in (("sink", d_settings.services.sink_url, "LINESIGHT_SERVICES__SINK_HEALTH_PORT"),
                            ("actuator", d_settings.services.actuator_url, "LINESIGHT_SERVICES__ACTUATOR_HEALTH_PORT")):
        parts = urlsplit(url or "")
        assert (parts.hostname, parts.port) == (name, int(env_of(services[name])[port])), name
    # Production settings pass the dashboard's own refusal checks (ClickHouse server, Kafka, alert API).
    inline = {k: v for k, v in d_env.items() if k != "LINESIGHT_SERVICES__ALERTS_API_TOKEN_FILE"}
    inline["LINESIGHT_SERVICES__ALERTS_API_TOKEN"] = "x" * 24  # the secret file is not here
    assert production_refusal(settings_from(inline, monkeypatch)) is None
    assert d_settings.clickhouse.username == "linesight_dashboard"
    assert d_settings.clickhouse.password_file == Path("/run/secrets/clickhouse_dashboard_password")


def test_dashboard_port_is_published_on_a_configurable_address_and_checked(
    services: dict[str, Any], raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    dash = services["dashboard"]
    settings = settings_from(env_of(dash), monkeypatch)
    assert settings.services.dashboard_host == "0.0.0.0", "listens on the container's interface"
    published = raw["services"]["dashboard"]["ports"]
    assert published == ["${DASHBOARD_BIND:-127.0.0.1}:${DASHBOARD_PORT:-16080}:16080"]
    assert published[0].endswith(f":{settings.services.dashboard_port}")
    assert dash["ports"][0].startswith("127.0.0.1:"), "loopback unless DASHBOARD_BIND is set"
    check = python_healthcheck(dash)
    assert "LINESIGHT_SERVICES__DASHBOARD_PORT" in check and "/login" in check
    # The Secure cookie flag is the operator's switch (TLS at a reverse proxy).
    assert raw["services"]["dashboard"]["environment"]["LINESIGHT_SERVICES__DASHBOARD_SECURE_COOKIE"] \
        == "${DASHBOARD_SECURE_COOKIE:-false}"
    on = interpolate(raw, DUMMY_ENV | {"DASHBOARD_SECURE_COOKIE": "true"})["services"]["dashboard"]
    assert settings_from(env_of(on), monkeypatch).services.dashboard_secure_cookie is True
    assert settings.services.dashboard_secure_cookie is False


def test_dashboard_healthcheck_passes_against_a_listening_dashboard_only(services: dict[str, Any]) -> None:
    import http.server
    import threading

    code = python_healthcheck(services["dashboard"])

    def probe(port: int) -> int:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LINESIGHT_")} | {
            "LINESIGHT_SERVICES__DASHBOARD_PORT": str(port)}
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30).returncode

    class Login(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200 if self.path == "/login" else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Login)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert probe(server.server_address[1]) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert probe(free_port()) != 0


def test_dashboard_clickhouse_account_reads_and_writes_only_sessions(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    users = users_xml().find("users")
    assert users is not None
    dash = users.find("linesight_dashboard")
    assert dash is not None and dash.find("access_management") is None
    database = settings_from(env_of(services["dashboard"]), monkeypatch).clickhouse.database
    assert sorted(grants_of(dash)) == sorted([
        f"GRANT SELECT ON {database}.*",
        f"GRANT INSERT ON {database}.sessions",
    ])
    assert dash.findtext("password_sha256_hex") == "0" * 64
    assert "clickhouse_dashboard_password" in services["clickhouse"]["secrets"]
    # What the dashboard's code writes is exactly what the grant allows.
    import inspect

    from pipeline.audit.store import TABLE, AuditStore
    from pipeline.auth.sessions import SessionStore

    assert TABLE == "audit_records" and "insert_json_rows" in inspect.getsource(AuditStore.insert)
    assert ".sessions" in inspect.getsource(SessionStore.__init__)


# --------------------------------------------------------------------------- camera gateway


def test_gateway_runs_on_the_host_network_with_the_line_plc_and_published_kafka(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway, actuator, kafka = services["gateway"], services["actuator"], services["kafka"]
    assert gateway.get("network_mode") == "host", "GigE Vision discovery is a broadcast: no bridged network"
    assert "networks" not in gateway and "ports" not in gateway  # neither applies on the host's network
    # Kafka's EXTERNAL listener is published on the host at the port the gateway dials.
    bootstrap = settings_from(env_of(gateway), monkeypatch).kafka.bootstrap_servers or ""
    host_port = bootstrap.rsplit(":", 1)[1]
    published = [p.rsplit(":", 2) for p in kafka["ports"]]
    assert any(container == "29092" and port == host_port for _bind, port, container in published), published
    # The same PLC, account and line geometry as the gate; the stations come from LINESIGHT_LINES.
    env, gate_env = env_of(gateway), env_of(actuator)
    for key in ("LINESIGHT_PLC__ENDPOINT", "LINESIGHT_PLC__GATE_MODE", "LINESIGHT_PLC__SECURITY_POLICY",
                "LINESIGHT_PLC__SECURITY_MODE",
                "LINESIGHT_PLC__CERTIFICATE", "LINESIGHT_PLC__PRIVATE_KEY", "LINESIGHT_PLC__USERNAME",
                "LINESIGHT_PLC__PASSWORD_FILE", "LINESIGHT_LINES"):
        assert env[key] == gate_env[key], key
    assert set(gateway["secrets"]) == {"plc_client_certificate", "plc_client_private_key", "plc_password",
                                       "kafka_ca_certificate", "kafka_gateway_password"}
    # Health on the host's loopback only: on the host network 0.0.0.0 would be the plant network.
    assert settings_from(env, monkeypatch).services.health_host == "127.0.0.1"
    command = [str(a) for a in gateway["command"]]
    assert command[:2] == ["gateway", "--line"] and command[2]
    assert "./recipes:/app/recipes:ro" in gateway["volumes"]


def test_gateway_image_has_the_gige_extra_and_the_libraries_pygobject_needs() -> None:
    instructions = dockerfile_instructions(APP_DOCKERFILE)
    runs = [a for i, a in instructions if i == "RUN"]
    stages = " ".join(a for i, a in instructions if i == "FROM").split()
    assert "AS" in stages or "as" in stages, "a build stage and a runtime stage"
    text = " ".join(runs)
    assert "optional-dependencies" in text and "gige" in text, "the gige extra (Aravis, PyGObject) is installed"
    for package in ("libgirepository1.0-dev", "libcairo2-dev", "pkg-config"):  # PyGObject builds from source
        assert package in text, package
    for package in ("libgirepository-1.0-1", "libglib2.0-0", "gir1.2-glib-2.0"):  # at run time
        assert package in text, package
    assert "load_aravis" in text, "the image checks that Aravis loads"
