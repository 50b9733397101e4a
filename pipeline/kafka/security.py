"""One broker security configuration for every client: confluent-kafka (librdkafka) and the Faust
worker (aiokafka).

`KafkaSettings` says how to reach the broker: `security_protocol` (PLAINTEXT, SSL, SASL_PLAINTEXT,
SASL_SSL), `sasl_mechanism` (SCRAM-SHA-512, SCRAM-SHA-256, PLAIN), `sasl_username`, the password
from `sasl_password_file` (a Docker or Kubernetes secret; `sasl_password` for tests only) and
`ssl_ca_file`, the PEM bundle of the CA that signed the broker's certificate (unset: the system's
trust store). `librdkafka_config` and `faust_credentials` turn the same settings into each client's
form, and `validate` refuses a combination that would connect with less security than asked for
(a mechanism without SASL, SASL without a user or password, a missing CA file), so a typo fails at
start instead of silently falling back to an unauthenticated connection. Production
(docker-compose.yml, infra/k8s) is SASL_SSL with SCRAM-SHA-512; the embedded Tansu broker is
PLAINTEXT through the same functions (docs/deployment.md, "Broker security").
"""

from __future__ import annotations

import ssl
from typing import Any

from pipeline.settings import KafkaSettings

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


class KafkaSecurityError(ValueError):
    """The Kafka security settings are inconsistent; the message says which setting to fix."""


def _protocol(kafka: KafkaSettings) -> str:
    protocol = kafka.security_protocol.strip().upper()
    if protocol not in PROTOCOLS:
        raise KafkaSecurityError(
            f"LINESIGHT_KAFKA__SECURITY_PROTOCOL={kafka.security_protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    return protocol


def uses_sasl(kafka: KafkaSettings) -> bool:
    return _protocol(kafka).startswith("SASL_")


def uses_tls(kafka: KafkaSettings) -> bool:
    return _protocol(kafka) in ("SSL", "SASL_SSL")


def validate(kafka: KafkaSettings) -> None:
    """Raise `KafkaSecurityError` unless the settings describe one consistent way to connect."""
    protocol = _protocol(kafka)
    sasl = protocol.startswith("SASL_")
    if kafka.sasl_mechanism and not sasl:
        raise KafkaSecurityError(
            f"LINESIGHT_KAFKA__SASL_MECHANISM={kafka.sasl_mechanism} needs SASL_SSL or SASL_PLAINTEXT, "
            f"not {protocol}: the credentials would never be sent")
    if sasl:
        if (kafka.sasl_mechanism or "") not in MECHANISMS:
            raise KafkaSecurityError(
                f"{protocol} needs LINESIGHT_KAFKA__SASL_MECHANISM, one of {', '.join(MECHANISMS)} "
                f"(got {kafka.sasl_mechanism!r})")
        if not kafka.sasl_username:
            raise KafkaSecurityError(f"{protocol} needs LINESIGHT_KAFKA__SASL_USERNAME")
        if kafka.sasl_password is None and kafka.sasl_password_file is None:
            raise KafkaSecurityError(f"{protocol} needs LINESIGHT_KAFKA__SASL_PASSWORD_FILE")
    if kafka.ssl_ca_file is not None:
        if protocol not in ("SSL", "SASL_SSL"):
            raise KafkaSecurityError(f"LINESIGHT_KAFKA__SSL_CA_FILE is set but {protocol} uses no TLS")
        if not kafka.ssl_ca_file.is_file():
            raise KafkaSecurityError(f"LINESIGHT_KAFKA__SSL_CA_FILE: no file at {kafka.ssl_ca_file}")


def _password(kafka: KafkaSettings) -> str:
    password = kafka.resolved_sasl_password()
    if not password:
        raise KafkaSecurityError(f"the SASL password of {kafka.sasl_username!r} is empty")
    return password


def librdkafka_config(kafka: KafkaSettings) -> dict[str, Any]:
    """The security part of a confluent-kafka client configuration."""
    validate(kafka)
    protocol = _protocol(kafka)
    conf: dict[str, Any] = {"security.protocol": protocol}
    if protocol.startswith("SASL_"):
        conf |= {"sasl.mechanism": kafka.sasl_mechanism, "sasl.username": kafka.sasl_username,
                 "sasl.password": _password(kafka)}
    if protocol in ("SSL", "SASL_SSL"):
        # The broker's certificate is verified, its host name included (librdkafka's default
        # `ssl.endpoint.identification.algorithm=https`, stated so that no default can drop it).
        conf["ssl.endpoint.identification.algorithm"] = "https"
        if kafka.ssl_ca_file is not None:
            conf["ssl.ca.location"] = str(kafka.ssl_ca_file)
    return conf


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context the Faust worker verifies the broker with (None without TLS): the CA of
    `ssl_ca_file`, or the system's trust store, with host name checking, as librdkafka does."""
    if not uses_tls(kafka):
        return None
    cafile = str(kafka.ssl_ca_file) if kafka.ssl_ca_file is not None else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def faust_credentials(kafka: KafkaSettings) -> Any:
    """`broker_credentials` for `faust.App`: the same protocol, mechanism, user, password and CA
    as `librdkafka_config` gives the confluent-kafka clients (None for PLAINTEXT).

    faust-streaming's `SASLCredentials` means SASL_SSL when it has an `ssl_context` and
    SASL_PLAINTEXT without one; `SSLCredentials` is TLS alone (faust/auth.py). Its aiokafka driver
    hands them to every consumer and producer it creates
    (faust.transport.drivers.aiokafka.credentials_to_aiokafka_auth)."""
    from faust.auth import SASLCredentials, SSLCredentials

    validate(kafka)
    protocol = _protocol(kafka)
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(kafka)
    if protocol == "SSL":
        return SSLCredentials(context)
    return SASLCredentials(username=kafka.sasl_username, password=_password(kafka),
                           mechanism=kafka.sasl_mechanism, ssl_context=context)
