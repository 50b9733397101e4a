"""Broker security for every client (issue 19, item 2): one set of `KafkaSettings` gives the
confluent-kafka clients and the Faust worker the same protocol, SASL mechanism, user, password and
CA, and a wrong combination fails at start instead of connecting with less security."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from pipeline.kafka.clients import client_config
from pipeline.kafka.security import (
    KafkaSecurityError,
    faust_credentials,
    librdkafka_config,
    ssl_context,
    validate,
)
from pipeline.settings import KafkaSettings, Settings
from streams.app import create_app


def make_ca(path: Path) -> Path:
    """A self-signed CA certificate in PEM, as the plant's (or install-host.sh's) CA would be."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "LineSight test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture
def secured(tmp_path: Path) -> KafkaSettings:
    """The production worker's settings (docker-compose.yml): SCRAM-SHA-512 over TLS, password and CA from files."""
    password = tmp_path / "kafka_worker_password"
    password.write_text("s3cret-from-a-docker-secret\n")
    return KafkaSettings(bootstrap_servers="kafka:9092", security_protocol="SASL_SSL",
                         sasl_mechanism="SCRAM-SHA-512", sasl_username="linesight-worker",
                         sasl_password_file=password, ssl_ca_file=make_ca(tmp_path / "ca.crt"))


def test_the_worker_app_carries_the_sasl_credentials(secured: KafkaSettings, tmp_path: Path) -> None:
    app = create_app(Settings(kafka=secured, state_dir=tmp_path / "state"))
    creds = app.conf.broker_credentials
    assert isinstance(creds, SASLCredentials)
    assert (creds.username, creds.password) == ("linesight-worker", "s3cret-from-a-docker-secret")
    assert creds.mechanism.value == "SCRAM-SHA-512"
    assert creds.protocol.value == "SASL_SSL"
    assert isinstance(creds.ssl_context, ssl.SSLContext)
    assert creds.ssl_context.verify_mode == ssl.CERT_REQUIRED and creds.ssl_context.check_hostname
    # The CA of the setting is the one trusted (not only the system's store).
    subjects = [dict(x[0] for x in c["subject"]) for c in creds.ssl_context.get_ca_certs()]
    assert {"commonName": "LineSight test CA"} in subjects
    # What Faust's aiokafka driver hands every consumer and producer it makes.
    auth = app.producer._settings_auth()
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert auth["sasl_plain_username"] == "linesight-worker"
    assert auth["ssl_context"] is creds.ssl_context


def test_confluent_and_faust_configurations_agree(secured: KafkaSettings) -> None:
    rd = client_config(secured)
    aio = credentials_to_aiokafka_auth(faust_credentials(secured))
    assert rd["security.protocol"] == aio["security_protocol"] == "SASL_SSL"
    assert rd["sasl.mechanism"] == aio["sasl_mechanism"] == "SCRAM-SHA-512"
    assert rd["sasl.username"] == aio["sasl_plain_username"] == "linesight-worker"
    assert rd["sasl.password"] == aio["sasl_plain_password"] == "s3cret-from-a-docker-secret"
    assert rd["ssl.ca.location"] == str(secured.ssl_ca_file)
    assert rd["ssl.endpoint.identification.algorithm"] == "https"
    assert aio["ssl_context"].check_hostname


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
def test_every_sasl_mechanism_and_protocol_maps_the_same_way(secured: KafkaSettings, protocol: str,
                                                              mechanism: str) -> None:
    kafka = secured.model_copy(update={"security_protocol": protocol, "sasl_mechanism": mechanism,
                                       "ssl_ca_file": secured.ssl_ca_file if protocol == "SASL_SSL" else None})
    rd, aio = librdkafka_config(kafka), credentials_to_aiokafka_auth(faust_credentials(kafka))
    assert rd["security.protocol"] == aio["security_protocol"] == protocol
    assert rd["sasl.mechanism"] == aio["sasl_mechanism"] == mechanism
    assert (aio["ssl_context"] is not None) == (protocol == "SASL_SSL") == ("ssl.endpoint.identification.algorithm" in rd)


def test_tls_without_sasl_and_plaintext(secured: KafkaSettings) -> None:
    tls = secured.model_copy(update={"security_protocol": "SSL", "sasl_mechanism": None, "sasl_username": None,
                                     "sasl_password_file": None})
    creds = faust_credentials(tls)
    assert isinstance(creds, SSLCredentials) and creds.context.check_hostname
    assert credentials_to_aiokafka_auth(creds)["security_protocol"] == librdkafka_config(tls)["security.protocol"]
    # The embedded broker's: PLAINTEXT, no credentials, the same functions.
    plain = KafkaSettings(bootstrap_servers="127.0.0.1:19092")
    assert faust_credentials(plain) is None and ssl_context(plain) is None
    assert credentials_to_aiokafka_auth(faust_credentials(plain)) == {"security_protocol": "PLAINTEXT"}
    assert client_config(plain) == {"bootstrap.servers": "127.0.0.1:19092", "security.protocol": "PLAINTEXT"}


def test_the_embedded_worker_app_has_no_credentials(tmp_path: Path) -> None:
    app = create_app(Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:19092"), state_dir=tmp_path))
    assert app.conf.broker_credentials is None
    assert app.producer._settings_auth() == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize(("update", "error"), [
    ({"security_protocol": "SASL_SSLL"}, "SECURITY_PROTOCOL"),
    ({"security_protocol": "PLAINTEXT"}, "never be sent"),  # a mechanism that would be ignored
    ({"sasl_mechanism": None}, "SASL_MECHANISM"),
    ({"sasl_mechanism": "GSSAPI"}, "SASL_MECHANISM"),
    ({"sasl_username": None}, "SASL_USERNAME"),
    ({"sasl_password_file": None}, "SASL_PASSWORD_FILE"),
    ({"ssl_ca_file": Path("/nonexistent/ca.crt")}, "SSL_CA_FILE"),
])
def test_inconsistent_settings_fail_at_start(secured: KafkaSettings, update: dict[str, object], error: str,
                                             tmp_path: Path) -> None:
    kafka = secured.model_copy(update=update)
    with pytest.raises(KafkaSecurityError, match=error):
        validate(kafka)
    with pytest.raises(KafkaSecurityError):
        client_config(kafka)
    with pytest.raises(KafkaSecurityError):
        create_app(Settings(kafka=kafka, state_dir=tmp_path))


def test_an_empty_password_file_is_refused(secured: KafkaSettings) -> None:
    assert secured.sasl_password_file is not None
    secured.sasl_password_file.write_text("\n")
    with pytest.raises((KafkaSecurityError, ValueError)):
        client_config(secured)
