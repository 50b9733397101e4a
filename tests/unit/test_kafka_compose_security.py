"""The production broker of docker-compose.yml is secured (issue 19, item 2).

Static (always): no PLAINTEXT listener outside the broker container's own loopback; every other
listener is SASL_SSL; the published port is a SASL_SSL one; KRaft's ACL authorizer denies what no
ACL allows; the one super user is the broker's own; the entrypoint renders those settings and the
TLS/SASL parts from the secrets (run here in render-only mode).

With Docker (skipped otherwise, saying so): the kafka service is started with made-up secrets and a
client without credentials, one with a wrong password and one principal writing a topic it may
not are refused, while the super user and a principal within its ACLs are served."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.settings import PROJECT_ROOT

ENTRYPOINT = PROJECT_ROOT / "infra" / "docker" / "kafka-entrypoint.sh"
INSTALL = PROJECT_ROOT / "infra" / "install-host.sh"


@cache
def _kafka_env() -> dict[str, str]:
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    return {k: str(v) for k, v in compose["services"]["kafka"]["environment"].items()}


def _listeners(key: str) -> dict[str, str]:
    return dict(item.split("://", 1) for item in _kafka_env()[key].split(","))


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0]


def test_no_plaintext_listener_outside_the_broker_container() -> None:
    env = _kafka_env()
    protocols = dict(item.split(":", 1) for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = _listeners("KAFKA_LISTENERS")
    assert set(protocols) == set(listeners)
    for name, address in listeners.items():
        if protocols[name] in ("PLAINTEXT", "SASL_PLAINTEXT"):
            # Bound to the container's loopback: nothing outside the container reaches it.
            assert _host(address) in ("127.0.0.1", "localhost"), f"{name} ({protocols[name]}) listens on {address}"
        else:
            assert protocols[name] == "SASL_SSL", name
    # The one plaintext listener exists for the healthcheck only.
    assert [n for n, p in protocols.items() if p == "PLAINTEXT"] == ["HEALTH"]
    for name, address in _listeners("KAFKA_ADVERTISED_LISTENERS").items():
        assert protocols[name] == "SASL_SSL" or _host(address) in ("127.0.0.1", "localhost"), name
    # The broker's own connections are authenticated and encrypted too.
    assert protocols[env["KAFKA_INTER_BROKER_LISTENER_NAME"]] == "SASL_SSL"
    assert all(protocols[n] == "SASL_SSL" for n in env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(","))


def test_the_published_port_is_sasl_ssl() -> None:
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    kafka = compose["services"]["kafka"]
    protocols = dict(item.split(":", 1) for item in _kafka_env()["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    ports = {name: address.rsplit(":", 1)[1] for name, address in _listeners("KAFKA_LISTENERS").items()}
    published = [str(p).rsplit(":", 1)[1] for p in kafka.get("ports") or []]
    assert published, "the EXTERNAL listener is published for the camera gateways"
    for container_port in published:
        [name] = [n for n, p in ports.items() if p == container_port]
        assert protocols[name] == "SASL_SSL", f"port {container_port} ({name}) is published"
    assert kafka.get("network_mode") is None, "host networking would expose the loopback listener"


def test_acls_are_enforced_with_one_super_user() -> None:
    env = _kafka_env()
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert env["KAFKA_SUPER_USERS"] == "User:admin"
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert env["KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM"] == "https"


def _secrets(tmp_path: Path) -> Path:
    """The kafka service's secrets as infra/install-host.sh makes them (its openssl commands)."""
    root = tmp_path / "linesight"
    (root / "secrets").mkdir(parents=True)
    env_file = root / ".env"
    shutil.copy(PROJECT_ROOT / ".env.example", env_file)
    for var in ("PLC_PASSWORD_FILE", "PLC_CLIENT_CERTIFICATE_FILE", "PLC_CLIENT_PRIVATE_KEY_FILE"):
        path = root / "secrets" / {"PLC_PASSWORD_FILE": "plc_password",
                                   "PLC_CLIENT_CERTIFICATE_FILE": "plc_client_certificate.der",
                                   "PLC_CLIENT_PRIVATE_KEY_FILE": "plc_client_private_key.pem"}[var]
        path.write_text("from the PLC team\n")
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "chown").write_text("#!/bin/sh\nexit 0\n")
    (shim / "chown").chmod(0o755)
    env = {"PATH": f"{shim}:{os.environ.get('PATH', '/usr/bin:/bin')}", "INSTALL_ROOT": str(root),
           "INSTALL_ENV_FILE": str(env_file), "INSTALL_HOST_TEST": "1", "HOME": str(tmp_path)}
    result = subprocess.run(["bash", str(INSTALL)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for path in (root / "secrets").iterdir():
        path.chmod(0o644)  # a container user other than the test's reads them below
    return root


def test_install_makes_a_ca_and_a_broker_certificate_clients_verify(tmp_path: Path) -> None:
    secrets = _secrets(tmp_path) / "secrets"
    ca, chain = secrets / "kafka_ca_certificate.pem", secrets / "kafka_broker_certificate.pem"
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(chain.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    check = subprocess.run(["openssl", "verify", "-CAfile", str(ca), "-verify_hostname", "kafka", str(leaf)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    text = subprocess.run(["openssl", "x509", "-in", str(leaf), "-noout", "-ext", "subjectAltName"],
                          capture_output=True, text=True).stdout
    assert "DNS:kafka" in text and "DNS:localhost" in text and "127.0.0.1" in text
    assert "BEGIN PRIVATE KEY" in (secrets / "kafka_broker_private_key.pem").read_text()
    assert (secrets / "kafka_admin_password").read_text() == (secrets / "kafka_broker_admin_password").read_text()


def test_the_entrypoint_renders_the_secured_configuration(tmp_path: Path) -> None:
    secrets = _secrets(tmp_path) / "secrets"
    mounted = tmp_path / "run-secrets"
    mounted.mkdir()
    for name, file in (("kafka_broker_certificate", "kafka_broker_certificate.pem"),
                       ("kafka_broker_private_key", "kafka_broker_private_key.pem"),
                       ("kafka_broker_admin_password", "kafka_broker_admin_password")):
        shutil.copy(secrets / file, mounted / name)
    config = tmp_path / "config"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **_kafka_env(), "KAFKA_SECRETS_DIR": str(mounted),
           "KAFKA_CONFIG_DIR": str(config), "KAFKA_ENTRYPOINT_RENDER_ONLY": "1", "KAFKA_HEAP_OPTS": "-Xmx1g"}
    result = subprocess.run(["bash", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    props = dict(line.split("=", 1) for line in (config / "server.properties").read_text().splitlines()
                 if line and not line.startswith("#"))
    assert props["listener.security.protocol.map"] == _kafka_env()["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["super.users"] == "User:admin"
    assert props["sasl.mechanism.controller.protocol"] == "PLAIN"
    assert props["listener.name.controller.sasl.enabled.mechanisms"] == "PLAIN"
    assert props["ssl.keystore.type"] == props["ssl.truststore.type"] == "PEM"
    assert "heap.opts" not in " ".join(props), "JVM variables are not broker properties"
    password = (mounted / "kafka_broker_admin_password").read_text().strip()
    assert f'password="{password}"' in props["listener.name.internal.scram-sha-512.sasl.jaas.config"]
    assert props["listener.name.external.scram-sha-512.sasl.jaas.config"].endswith("ScramLoginModule required;")
    keystore = Path(props["ssl.keystore.location"]).read_text()
    assert keystore.startswith("-----BEGIN PRIVATE KEY") and "BEGIN CERTIFICATE" in keystore
    assert (config / "server.properties").stat().st_mode & 0o077 == 0, "it holds the password"
    # A password that would break the JAAS string is refused.
    (mounted / "kafka_broker_admin_password").write_text('short"pw\n')
    result = subprocess.run(["bash", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "kafka_broker_admin_password" in result.stderr


# ----------------------------------------------------------------- with Docker: a live refusal


def _docker_reason() -> str | None:
    if shutil.which("docker") is None:
        return "no docker command on this machine: the live refusal test needs a Docker engine and compose v2"
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        return "docker compose v2 is not available"
    if subprocess.run(["docker", "info"], capture_output=True, text=True).returncode != 0:
        return "no Docker engine reachable (docker info failed)"
    return None


@pytest.mark.skipif(_docker_reason() is not None, reason=str(_docker_reason()))
def test_compose_kafka_refuses_an_unauthenticated_client(tmp_path: Path) -> None:
    from confluent_kafka import KafkaException, Producer
    from confluent_kafka.admin import AdminClient

    from pipeline.kafka import acl
    from pipeline.kafka.clients import client_config
    from pipeline.settings import KafkaSettings, Settings

    root = _secrets(tmp_path)
    port = "39092"
    env = {**os.environ, "KAFKA_EXTERNAL_PORT": port, "KAFKA_EXTERNAL_BIND": "127.0.0.1"}
    project = f"linesight-sectest-{uuid.uuid4().hex[:8]}"
    compose = ["docker", "compose", "-p", project, "--project-directory", str(PROJECT_ROOT), "-f",
               str(PROJECT_ROOT / "docker-compose.yml"), "--env-file", str(root / ".env")]
    # Relative secret paths of .env resolve against the project directory: point them at the scratch tree.
    lines = [f"{k}={root}/{v.removeprefix('./')}" if k.endswith("_FILE") and v.startswith("./") else f"{k}={v}"
             for k, v in (line.split("=", 1) for line in (root / ".env").read_text().splitlines()
                          if "=" in line and not line.startswith("#"))]
    (root / ".env").write_text("\n".join(lines) + "\n")
    up = subprocess.run([*compose, "up", "-d", "--wait", "kafka"], env=env, capture_output=True, text=True,
                        timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        secrets = root / "secrets"
        base = {"bootstrap.servers": f"127.0.0.1:{port}", "socket.timeout.ms": 5000}

        def refused(conf: dict[str, Any]) -> bool:
            try:
                AdminClient(base | conf).list_topics(timeout=8)
            except KafkaException:
                return True
            return False

        # No credentials, plaintext: the listener speaks TLS, the client never gets an answer.
        assert refused({})
        # TLS but no SASL, and SASL with a wrong password: refused.
        assert refused({"security.protocol": "SSL", "ssl.ca.location": str(secrets / "kafka_ca_certificate.pem")})
        assert refused({"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "admin",
                        "sasl.password": "wrong-password-0000", "ssl.ca.location":
                            str(secrets / "kafka_ca_certificate.pem")})

        def settings(user: str, password_file: str) -> Settings:
            return Settings(kafka=KafkaSettings(
                bootstrap_servers=f"localhost:{port}", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                sasl_username=user, sasl_password_file=secrets / password_file,
                ssl_ca_file=secrets / "kafka_ca_certificate.pem"))

        admin = settings("admin", "kafka_admin_password")
        assert not refused(client_config(admin.kafka)), "the super user is served: the refusals above are real"
        acl.apply(admin, _as_mounted(secrets, tmp_path / "mounted"))
        from pipeline.kafka.topics import ensure_topics
        ensure_topics(admin)
        # The subscriber reads results but may not write them.
        subscriber = settings("linesight-subscriber", "kafka_subscriber_password")
        errors: list[Any] = []
        producer = Producer(client_config(subscriber.kafka) | {"message.timeout.ms": 10000})
        producer.produce(subscriber.kafka.topic_results, b"forged", on_delivery=lambda err, msg: errors.append(err))
        producer.flush(15)
        assert errors and errors[0] is not None and "AUTHORIZATION" in errors[0].name(), errors
    finally:
        subprocess.run([*compose, "down", "-v", "--timeout", "10"], env=env, capture_output=True, text=True,
                       timeout=120)
        time.sleep(0)


def _as_mounted(secrets: Path, target: Path) -> Path:
    """The host files under the Docker secret names topics-init sees in /run/secrets."""
    target.mkdir()
    for path in secrets.iterdir():
        name = path.name.removesuffix(".pem")
        shutil.copy(path, target / name)
    return target
