"""docker-compose.yml fit for a plant (issue 19, item 6), offline: no Docker engine, no GPU.

* Permissions: from the compose file, each service's user (``user:``, or the image's own where a
  root entrypoint reads the files) and what it mounts (Docker secrets, bind mounts, the named
  volumes' mount points). The test builds that tree in a scratch folder the way an install does
  (a checkout under umask 027, the PLC's files copied in, a model version from a training run),
  runs ``infra/install-host.sh`` on it (with a recording ``chown``), and checks from each file's
  mode, owner and group that every service can read (and where it writes, write) what it needs.
  Nothing runs as those uids: access is computed as the kernel does for an unprivileged user.
* Resources: every service has CPU and memory limits, memory reservations below them, and the
  default profile fits the reference host that docs/deployment.md sizes for.
* Timeouts: the Kafka consumer session timeout of every LineSight client is a Kafka one, not the
  embedded broker's 6 s.
* The Kafka healthcheck (one ApiVersions request from bash, no JVM) against a fake broker.
* Grafana: built with the ClickHouse plugin baked in; nothing downloaded at start.
* ``docker-compose config`` with ``.env.example`` as the env file: clean, every profile.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_file import COMPOSE_VAR, dockerfile_instructions, interpolate

from pipeline.settings import KafkaSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
INSTALL_SCRIPT = ROOT / "infra" / "install-host.sh"
KAFKA_HEALTHCHECK = ROOT / "infra" / "docker" / "kafka-healthcheck.sh"
APP_DOCKERFILE = ROOT / "infra" / "docker" / "app.Dockerfile"
GRAFANA_DOCKERFILE = ROOT / "infra" / "docker" / "grafana.Dockerfile"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"

# The reference host docs/deployment.md ("Resources") sizes the limits for.
HOST_CPUS = 16
HOST_MEMORY = 64 * 2**30
# What the default profile's limits may take of it: the rest is the host's own (page cache, dockerd).
HOST_MEMORY_SHARE = 0.75

# The services without a `user:`: their images start as root, and their own entrypoints read the
# mounted files before dropping privileges (ClickHouse's /entrypoint.sh runs the server as uid 101;
# infra/clickhouse/entrypoint.sh hashes the secrets first) or never drop them (NGC's tritonserver).
ROOT_ENTRYPOINTS = {"clickhouse", "triton"}
# Named volumes: who owns the mount point in the image, which Docker copies into a new volume.
# The app image's are checked in its Dockerfile; the others are the images' published layout.
IMAGE_VOLUME_OWNERS = {
    ("kafka", "/var/lib/kafka/data"): "apache/kafka: chown appuser (uid 1000) -R /var/lib/kafka",
    ("clickhouse", "/var/lib/clickhouse"): "root entrypoint chowns it to the clickhouse user",
    ("grafana", "/var/lib/grafana"): "grafana/grafana: owned by uid 472 (GF_PATHS_DATA)",
    ("prometheus", "/prometheus"): "prom/prometheus: chown nobody (uid 65534) /prometheus",
}
# The checkout as an administrator makes it on a hardened host: umask 027, owned by that account
# (a uid none of the containers runs as).
ADMIN = (1500, 1500)
CHECKOUT_DIR_MODE, CHECKOUT_FILE_MODE = 0o750, 0o640
# `linesight models deploy|rollback` run as the worker with the repository mounted writable
# (docs/deployment.md, "Upgrades"): the one write into the checkout.
DEPLOY_MOUNT = "./triton_models:/var/lib/linesight/triton_models"


# --------------------------------------------------------------------------- the compose file


def env_example() -> dict[str, str]:
    """The assignments of .env.example (commented lines are documentation, not values)."""
    return dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), flags=re.M))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml as compose sees it with .env.example as the .env."""
    return interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), env_example())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def secret_vars() -> dict[str, str]:
    """Docker secret -> the .env variable naming its host file (``file: ${VAR:?...}``)."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["secrets"]
    found = {name: re.fullmatch(r"\$\{([A-Z0-9_]+):\?[^}]*\}", spec["file"]) for name, spec in raw.items()}
    assert all(found.values()), found
    return {name: m.group(1) for name, m in found.items() if m}


def byte_size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)i?b?", str(text).strip().lower())
    assert m, f"not a byte size: {text!r}"
    return int(float(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m.group(2)])


def default_profile(services: Mapping[str, Any]) -> dict[str, Any]:
    return {n: s for n, s in services.items() if not s.get("profiles")}


# --------------------------------------------------------------------------- docker-compose itself

DOCKER_COMPOSE = shutil.which("docker-compose")


@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose is not on PATH (Debian: apt-get install docker-compose)")
@pytest.mark.parametrize("profile", [None, "simulator", "cameras"])
def test_docker_compose_config_is_clean_with_the_example_env(profile: str | None) -> None:
    """`docker compose --env-file .env.example config`: valid, and no warning (an unset variable,
    an unknown key) for any profile."""
    text = COMPOSE_FILE.read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    for m in COMPOSE_VAR.finditer(text):
        if m.group("name") or m.group("plain"):
            env.pop(m.group("name") or m.group("plain"), None)
    args = [DOCKER_COMPOSE, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE_FILE)]
    if profile:
        args += ["--profile", profile]
    result = subprocess.run([*args, "config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert not result.stderr.strip(), f"docker-compose config warns:\n{result.stderr}"
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) >= {"kafka", "worker", "grafana"}


# --------------------------------------------------------------------------- resources


def test_every_service_has_cpu_and_memory_limits_and_a_reservation_below_them(services: dict[str, Any]) -> None:
    for name, service in services.items():
        resources = (service.get("deploy") or {}).get("resources") or {}
        limits, reservations = resources.get("limits") or {}, resources.get("reservations") or {}
        assert "cpus" in limits and "memory" in limits, f"{name}: no CPU/memory limit"
        assert 0 < float(limits["cpus"]) <= HOST_CPUS, f"{name}: cpus {limits['cpus']}"
        assert "memory" in reservations, f"{name}: no memory reservation"
        assert byte_size(reservations["memory"]) <= byte_size(limits["memory"]), name
        for key in ("mem_limit", "cpus", "mem_reservation", "memswap_limit"):
            assert key not in service, f"{name}: {key} beside deploy.resources (compose refuses conflicting ones)"


def test_the_default_profile_fits_the_reference_host(services: dict[str, Any]) -> None:
    running = default_profile(services)
    total_limit = total_reserved = 0
    for service in running.values():
        deploy = service["deploy"]
        copies = int(deploy.get("replicas", 1))
        total_limit += copies * byte_size(deploy["resources"]["limits"]["memory"])
        total_reserved += copies * byte_size(deploy["resources"]["reservations"]["memory"])
    assert total_limit <= HOST_MEMORY_SHARE * HOST_MEMORY, f"{total_limit / 2**30:.1f} GiB of limits"
    assert total_reserved <= total_limit
    doc = DEPLOYMENT_DOC.read_text()
    assert f"{HOST_CPUS} cores" in doc and f"{HOST_MEMORY // 2**30} GiB" in doc, "the docs name the reference host"
    one_worker = total_limit - (int(running["worker"]["deploy"].get("replicas", 1)) - 1) * byte_size(
        running["worker"]["deploy"]["resources"]["limits"]["memory"])
    assert f"add up to {one_worker / 2**30:g} GiB" in doc, "docs/deployment.md, Resources: the sum changed"


def test_limits_hold_what_each_service_is_configured_to_use(services: dict[str, Any]) -> None:
    import xml.etree.ElementTree as ET

    def limit(name: str) -> int:
        return byte_size(services[name]["deploy"]["resources"]["limits"]["memory"])

    # Triton: /dev/shm is charged to the container; the python backend and ORT need more beside it.
    assert limit("triton") >= byte_size(services["triton"]["shm_size"]) + 4 * 2**30
    assert services["triton"]["deploy"]["resources"]["reservations"]["devices"], "the GPU reservation stays"
    # Kafka: the heap is fixed; the rest of the limit is JVM overhead and page cache.
    heap = re.search(r"-Xmx(\d+[kmg])", services["kafka"]["environment"]["KAFKA_HEAP_OPTS"], flags=re.I)
    assert heap, services["kafka"]["environment"]["KAFKA_HEAP_OPTS"]
    assert limit("kafka") >= byte_size(heap.group(1)) + 2**30
    # ClickHouse caps itself at 90 % of its cgroup limit: the reader's largest query must fit in it.
    users = ET.parse(ROOT / "infra" / "clickhouse" / "users.d" / "linesight.xml").getroot()
    per_query = max(int((e.text or "0").strip() or 0) for e in users.iter("max_memory_usage") if (e.text or "").strip())
    assert 0.9 * limit("clickhouse") >= per_query + 2**30
    # The worker scales by replicas: the limits are per replica, and replicas stay configurable.
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["worker"]["deploy"]
    assert raw["replicas"] == "${WORKER_REPLICAS:-1}"


# --------------------------------------------------------------------------- timeouts


def test_kafka_clients_use_a_kafka_session_timeout_not_the_embedded_brokers(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    embedded = KafkaSettings().session_timeout_ms
    for name, service in services.items():
        env = service.get("environment") or {}
        if "LINESIGHT_KAFKA__BOOTSTRAP_SERVERS" not in env:
            continue
        for key in [k for k in os.environ if k.startswith("LINESIGHT_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            if key.startswith("LINESIGHT_"):
                monkeypatch.setenv(key, str(value))
        session = Settings().kafka.session_timeout_ms
        # Kafka's group.min/max.session.timeout.ms defaults bound what a group member may ask for.
        assert 6000 <= session <= 1_800_000, f"{name}: {session} ms"
        assert session > embedded, f"{name}: the embedded broker's {embedded} ms evicts stalled workers on Kafka"
        # Heartbeats (a sixth of it, pipeline/kafka/clients.py and streams/app.py) at Kafka's usual 3 s or more.
        assert session / 6 >= 3000, f"{name}: heartbeat every {session / 6:.0f} ms"
    text = DEPLOYMENT_DOC.read_text()
    assert "KAFKA_SESSION_TIMEOUT_MS" in text and "## Timeouts" in text


# --------------------------------------------------------------------------- the Kafka healthcheck


@dataclass
class FakeBroker:
    """Answers one ApiVersions request per connection with the given correlation id and error code."""

    correlation: int = 1
    error: int = 0
    close_at_once: bool = False

    def __post_init__(self) -> None:
        self.requests: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if self.close_at_once:
                    continue
                size = struct.unpack(">i", conn.recv(4, socket.MSG_WAITALL))[0]
                self.requests.append(conn.recv(size, socket.MSG_WAITALL))
                body = struct.pack(">ih", self.correlation, self.error) + struct.pack(">i", 0)
                conn.sendall(struct.pack(">i", len(body)) + body)

    def close(self) -> None:
        self.sock.close()


def run_kafka_healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "KAFKA_HEALTH_PORT": str(port)}
    return subprocess.run(["bash", str(KAFKA_HEALTHCHECK)], env=env, capture_output=True, text=True, timeout=20)


def test_kafka_healthcheck_sends_an_api_versions_request_and_needs_a_good_answer() -> None:
    good = FakeBroker()
    try:
        assert run_kafka_healthcheck(good.port).returncode == 0
        # ApiVersions (18) v0, correlation id 1, client id "hc": a request any Kafka answers.
        api_key, version, correlation, client_len = struct.unpack(">hhih", good.requests[0][:10])
        assert (api_key, version, correlation, good.requests[0][10:10 + client_len]) == (18, 0, 1, b"hc")
    finally:
        good.close()
    for broker in (FakeBroker(error=35), FakeBroker(correlation=7), FakeBroker(close_at_once=True)):
        try:
            assert run_kafka_healthcheck(broker.port).returncode != 0, broker
        finally:
            broker.close()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    assert run_kafka_healthcheck(port).returncode != 0, "nothing listening"


def test_no_healthcheck_starts_a_jvm(services: dict[str, Any]) -> None:
    for name, service in services.items():
        test = " ".join(map(str, (service.get("healthcheck") or {}).get("test") or []))
        assert not re.search(r"/opt/kafka/bin|\bjava\b", test), f"{name}: {test}"
    kafka = services["kafka"]["healthcheck"]
    assert kafka["test"] == ["CMD", "bash", "/linesight/kafka-healthcheck.sh"]
    assert kafka["timeout"] == "5s" and kafka["interval"] == "10s"


# --------------------------------------------------------------------------- Grafana


def test_grafana_has_its_plugin_baked_in_and_downloads_nothing_at_start(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    env = {k: str(v) for k, v in grafana["environment"].items()}
    assert "GF_INSTALL_PLUGINS" not in env and "GF_PLUGINS_PREINSTALL" not in env
    for key in ("GF_PLUGINS_PREINSTALL_DISABLED", "GF_PLUGINS_PUBLIC_KEY_RETRIEVAL_DISABLED"):
        assert env[key] == "true", key
    for key in ("GF_PLUGINS_PLUGIN_ADMIN_ENABLED", "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES",
                "GF_ANALYTICS_CHECK_FOR_UPDATES", "GF_ANALYTICS_REPORTING_ENABLED"):
        assert env[key] == "false", key
    steps = dockerfile_instructions(GRAFANA_DOCKERFILE)
    args = dict(a.split("=", 1) for i, a in steps if i == "ARG" and "=" in a)
    build_args = grafana["build"]["args"]
    assert args["GRAFANA_IMAGE"] == build_args["GRAFANA_IMAGE"], "compose and the Dockerfile pin different Grafanas"
    assert args["CLICKHOUSE_PLUGIN_VERSION"] == build_args["CLICKHOUSE_PLUGIN_VERSION"]
    assert [a for i, a in steps if i == "FROM"] == ["${GRAFANA_IMAGE}"]
    runs = " ".join(a for i, a in steps if i == "RUN")
    assert "plugins install grafana-clickhouse-datasource" in runs and "$CLICKHOUSE_PLUGIN_VERSION" in runs
    plugins_dir = dict(a.split("=", 1) for i, a in steps if i == "ENV")["GF_PATHS_PLUGINS"]
    mounts = [str(v).split(":")[1] for v in grafana["volumes"]]
    assert not any(plugins_dir == m or plugins_dir.startswith(m.rstrip("/") + "/") for m in mounts), (
        "a volume over the plugin folder would hide the baked plugin"
    )
    # The image's user is the one compose states (and the one the secrets are owned by).
    assert [a for i, a in steps if i == "USER"][-1] == grafana["user"].split(":")[0] == "472"


# --------------------------------------------------------------------------- permissions


@dataclass(frozen=True)
class Need:
    service: str
    host: Path  # in the scratch tree
    what: str  # "r" or "rw"
    why: str


@dataclass
class Tree:
    root: Path
    owners: dict[Path, tuple[int, int]]

    def owner(self, path: Path) -> tuple[int, int]:
        return self.owners[path]


def identity(name: str, service: Mapping[str, Any]) -> tuple[int, set[int]]:
    """The uid and groups the service's processes open mounted files with."""
    if name in ROOT_ENTRYPOINTS:
        assert "user" not in service, f"{name}: its entrypoint needs root, see ROOT_ENTRYPOINTS"
        assert not service.get("cap_drop"), f"{name}: root reads 0400 files of other uids only with CAP_DAC_OVERRIDE"
        return 0, {0}
    assert "user" in service, f"{name}: state its user (uid:gid) so the host side can be prepared for it"
    uid, _, gid = str(service["user"]).partition(":")
    assert gid, f"{name}: user {service['user']!r} needs uid:gid"
    return int(uid), {int(gid), *map(int, service.get("group_add") or [])}


def may(ident: tuple[int, set[int]], owner: tuple[int, int], mode: int, bits: int) -> bool:
    """Access as the kernel checks it for this uid (root: CAP_DAC_OVERRIDE for read and write)."""
    uid, groups = ident
    if uid == 0:
        return True
    if uid == owner[0]:
        granted = (mode >> 6) & 7
    elif owner[1] in groups:
        granted = (mode >> 3) & 7
    else:
        granted = mode & 7
    return granted & bits == bits


def needs_of(compose: dict[str, Any], env: Mapping[str, str], root: Path) -> list[Need]:
    """What each service (and the deploy command) reads and writes in the host tree."""
    secrets = secret_vars()
    needs = []

    def host(path: str) -> Path:
        return root / path.removeprefix("./") if not path.startswith("/") else Path(path)

    for name, service in compose["services"].items():
        for secret in service.get("secrets") or []:
            var = secrets[secret]
            needs.append(Need(name, host(env[var]), "r", f"secret {secret}"))
        for volume in service.get("volumes") or []:
            source, target, *opts = str(volume).split(":")
            if source.startswith("./"):
                needs.append(Need(name, host(source), "r" if opts == ["ro"] else "rw", f"mount {target}"))
    return needs


def check(compose: dict[str, Any], tree: Tree, needs: list[Need]) -> list[str]:
    """Every need that the tree's modes and owners refuse, as 'service: why: path (mode owner)'."""
    problems = []
    for need in needs:
        ident = identity(need.service, compose["services"][need.service])
        paths = [need.host]
        if need.host.is_dir():
            paths += sorted(p for p in need.host.rglob("*"))
        for path in paths:
            st = path.lstat()
            bits = 4 | (2 if need.what == "rw" else 0) | (1 if stat.S_ISDIR(st.st_mode) else 0)
            # A file is reachable only through folders (from the mount point down) it may search.
            inside = path.relative_to(need.host).parents if path != need.host else []
            folders = [need.host / f for f in inside]  # the mount point itself is Path(".")
            searchable = all(may(ident, tree.owner(f), f.lstat().st_mode, 1) for f in folders)
            if not (searchable and may(ident, tree.owner(path), st.st_mode, bits)):
                problems.append(
                    f"{need.service} (uid {ident[0]}): {need.why}: {path.relative_to(tree.root)} "
                    f"({stat.filemode(st.st_mode)} {tree.owner(path)[0]}:{tree.owner(path)[1]})"
                )
    return problems


def checkout(root: Path) -> None:
    """The parts of the repository compose mounts, as `git clone` leaves them under umask 027."""
    for part in ("recipes", "triton_models", "infra/grafana", "infra/prometheus", "infra/clickhouse", "infra/docker"):
        shutil.copytree(ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for path in [root, *root.rglob("*")]:
        # git keeps only the executable bit: 0750 for folders and scripts, 0640 for the rest
        executable = path.is_dir() or path.stat().st_mode & 0o100
        path.chmod(CHECKOUT_DIR_MODE if executable else CHECKOUT_FILE_MODE)


def trained_version(repo: Path) -> Path:
    """A model version as `linesight train` leaves it: its staging folder renamed into place."""
    from pipeline.model import triton_repo

    final = repo / "tablet_classifier" / "7"
    with triton_repo.staging(repo) as stage:
        (stage / "model_card.json").write_text('{"score_reference": {}}\n')
        (stage / "model.onnx").write_bytes(b"onnx")
        os.rename(stage, final)
    return final


def run_install(root: Path, env_file: Path) -> list[str]:
    """infra/install-host.sh on the scratch tree with a `chown` that records instead of changing."""
    shim = root.parent / "shim"
    shim.mkdir(exist_ok=True)
    log = root.parent / "chown.log"
    (shim / "chown").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\n')
    (shim / "chown").chmod(0o755)
    env = {"PATH": f"{shim}:{os.environ.get('PATH', '/usr/bin:/bin')}", "INSTALL_ROOT": str(root),
           "INSTALL_ENV_FILE": str(env_file), "INSTALL_HOST_TEST": "1", "HOME": str(root.parent)}
    result = subprocess.run(["bash", str(INSTALL_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return log.read_text().splitlines() if log.exists() else []


def owners_after(root: Path, before: set[Path], chowns: list[str]) -> dict[Path, tuple[int, int]]:
    """Checkout files belong to the administrator, files the (root) script created to root; then its chowns."""
    owners = {p: (ADMIN if p in before else (0, 0)) for p in [root, *root.rglob("*")]}
    for line in chowns:
        parts = line.split()
        recursive = parts[0] == "-R"
        spec, *targets = parts[1:] if recursive else parts
        uid, _, gid = spec.partition(":")
        for target in map(Path, targets):
            for path in [target, *(target.rglob("*") if recursive and target.is_dir() else [])]:
                owners[path] = (int(uid), int(gid))
    return owners


@pytest.fixture
def installed(tmp_path: Path, compose: dict[str, Any]) -> Iterator[tuple[Tree, list[Need], Tree]]:
    """(the tree after infra/install-host.sh, every service's needs, the same tree before it)."""
    root = tmp_path / "linesight"
    root.mkdir()
    checkout(root)
    trained_version(root / "triton_models")
    env_file = root / ".env"
    shutil.copy(ENV_EXAMPLE, env_file)
    env = env_example()
    # The PLC's certificate, key and password come from the plant's OT team, copied in privately.
    for var in ("PLC_PASSWORD_FILE", "PLC_CLIENT_CERTIFICATE_FILE", "PLC_CLIENT_PRIVATE_KEY_FILE"):
        path = root / env[var].removeprefix("./")
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.write_text("from the PLC team\n")
        path.chmod(0o600)
    before_paths = {p for p in [root, *root.rglob("*")]}
    snapshot = tmp_path / "before"
    shutil.copytree(root, snapshot, symlinks=True)
    before = Tree(snapshot, {snapshot / p.relative_to(root): ADMIN for p in before_paths})
    chowns = run_install(root, env_file)
    tree = Tree(root, owners_after(root, before_paths, chowns))
    needs = needs_of(compose, env, root)
    yield tree, needs, before


def test_every_service_can_read_what_it_mounts_after_the_documented_install(
    installed: tuple[Tree, list[Need], Tree], compose: dict[str, Any]
) -> None:
    tree, needs, _ = installed
    # Every service of every profile is covered, each with its own user.
    assert {n.service for n in needs} >= {"kafka", "clickhouse", "triton", "worker", "sink", "actuator", "alerts",
                                          "dashboard", "auditsealer", "gateway", "grafana", "db-init"}
    deploy = Need("worker", tree.root / "triton_models", "rw", "`models deploy` mount")
    assert DEPLOY_MOUNT in DEPLOYMENT_DOC.read_text(), "the deploy command's mount as the docs give it"
    problems = check(compose, tree, [*needs, deploy])
    assert not problems, "\n".join(problems)
    # Secrets: 0400, owned by exactly the one non-root uid that reads them in a container.
    for secret, var in secret_vars().items():
        readers = {identity(n, s)[0] for n, s in compose["services"].items() if secret in (s.get("secrets") or [])}
        path = tree.root / env_example()[var].removeprefix("./")
        assert stat.S_IMODE(path.stat().st_mode) == 0o400, f"{secret}: {oct(path.stat().st_mode)}"
        assert readers - {0} == {tree.owner(path)[0]}, f"{secret}: read by {readers}, owned by {tree.owner(path)}"


def test_the_old_grafana_secret_owner_is_caught(installed: tuple[Tree, list[Need], Tree], compose: dict[str, Any]
                                               ) -> None:
    """Secrets owned by uid 10001 mode 0400 for every service, as the docs once said: Grafana (uid 472)
    cannot read its admin password or the reader's ClickHouse password."""
    tree, needs, _ = installed
    for need in needs:
        if need.why.startswith("secret "):
            tree.owners[need.host] = (10001, 10001)
    problems = check(compose, tree, needs)
    # Kafka's own secrets (uid 1000) are refused the same way; they are not what this test is about.
    problems = [p for p in problems if not p.startswith("kafka (uid 1000): secret ")]
    assert problems and all(p.startswith("grafana (uid 472): secret ") for p in problems), problems
    assert {p.split("secret ")[1].split(":")[0] for p in problems} == {"grafana_admin_password",
                                                                        "clickhouse_reader_password"}


def test_without_the_install_step_a_restrictive_checkout_locks_services_out(
    installed: tuple[Tree, list[Need], Tree], compose: dict[str, Any]
) -> None:
    """What infra/install-host.sh fixes: before it, uid 1000 (Kafka) cannot read its healthcheck, 472
    (Grafana) its provisioning, 10001 the recipes and model repository, and the alert service not the
    model card of a version a training run left private."""
    tree, needs, before = installed
    rebased = [Need(n.service, before.root / n.host.relative_to(tree.root), n.what, n.why) for n in needs
               if not n.why.startswith("secret ")]
    problems = check(compose, before, rebased)
    for who, where in (("kafka", "kafka-healthcheck.sh"), ("grafana", "infra/grafana/provisioning"),
                       ("worker", "recipes"), ("alerts", "triton_models/tablet_classifier/7/model_card.json")):
        assert any(p.startswith(f"{who} (") and where in p for p in problems), (who, where, problems)


def test_the_install_creates_usable_secrets_pins_the_audit_key_and_is_idempotent(
    installed: tuple[Tree, list[Need], Tree],
) -> None:
    from cryptography.hazmat.primitives import serialization

    tree, _, _ = installed
    env = env_example()
    for var in env:
        if var.endswith("_FILE") and not var.startswith("PLC_"):
            text = (tree.root / env[var].removeprefix("./")).read_text().strip()
            if var == "AUDIT_TRAIL_KEY_FILE":
                key = serialization.load_pem_private_key(text.encode(), password=None)
                raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            elif var in ("KAFKA_CA_CERTIFICATE_FILE", "KAFKA_BROKER_CERTIFICATE_FILE", "KAFKA_BROKER_PRIVATE_KEY_FILE"):
                # Kafka's TLS files: PEM (tests/unit/test_kafka_compose_security.py checks the chain).
                assert text.startswith("-----BEGIN "), var
            else:
                # The ClickHouse entrypoint wants >= 12 characters, Triton's >= 32 of [A-Za-z0-9._~-].
                assert re.fullmatch(r"[0-9a-f]{48,64}", text), var
    pinned = re.findall(r"^AUDIT_SEAL_PUBLIC_KEY=([0-9a-f]+)$", (tree.root / ".env").read_text(), flags=re.M)
    assert pinned == [raw.hex()]
    contents = {p: p.read_bytes() for p in (tree.root / "secrets").iterdir()}
    run_install(tree.root, tree.root / ".env")
    assert {p: p.read_bytes() for p in (tree.root / "secrets").iterdir()} == contents, "a rerun never replaces a secret"
    assert len(re.findall(r"^AUDIT_SEAL_PUBLIC_KEY=", (tree.root / ".env").read_text(), flags=re.M)) == 1


def test_the_install_refuses_without_the_plc_files(tmp_path: Path) -> None:
    root = tmp_path / "linesight"
    root.mkdir()
    shutil.copy(ENV_EXAMPLE, root / ".env")
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "chown").write_text("#!/bin/sh\nexit 0\n")
    (shim / "chown").chmod(0o755)
    env = {"PATH": f"{shim}:{os.environ.get('PATH', '/usr/bin:/bin')}", "INSTALL_ROOT": str(root),
           "INSTALL_ENV_FILE": str(root / ".env"), "INSTALL_HOST_TEST": "1", "HOME": str(tmp_path)}
    result = subprocess.run(["bash", str(INSTALL_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "PLC_CLIENT_CERTIFICATE_FILE" in result.stderr
    assert (root / "secrets" / "clickhouse_admin_password").exists(), "the rest is done all the same"


def test_named_volumes_start_owned_by_their_service(compose: dict[str, Any]) -> None:
    """Docker fills a new named volume from the image's mount point, owner included."""
    app_dirs = set(re.findall(r"install -d -o linesight -g linesight -m 07[05]0 (\S+)", APP_DOCKERFILE.read_text()))
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source, target, *_ = str(volume).split(":")
            if source.startswith(("./", "/")):
                continue
            assert source in compose["volumes"], f"{name}: {source}"
            if service.get("build", {}).get("dockerfile") == "infra/docker/app.Dockerfile":
                assert target in app_dirs, f"{name}: {target} is not created for uid 10001 in the app image"
            else:
                assert (name, target) in IMAGE_VOLUME_OWNERS, f"{name}: who owns {target} in its image?"


def test_a_trained_version_folder_is_readable_by_the_services(tmp_path: Path) -> None:
    """Training stages a version in a private temporary folder and renames it into place: it
    must come out readable by every service's uid (the alert service reads its model card)."""
    repo = tmp_path / "triton_models"
    (repo / "tablet_classifier").mkdir(parents=True)
    final = trained_version(repo)
    assert stat.S_IMODE(final.stat().st_mode) & 0o005 == 0o005, oct(final.stat().st_mode)
