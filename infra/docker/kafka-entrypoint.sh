#!/bin/bash
# LineSight: the kafka service's entrypoint (docker-compose.yml), mounted read-only into apache/kafka.
#
# The image's own entrypoint renders KAFKA_* variables into server.properties but has no place for
# what must come from secrets (the TLS key, SASL passwords) and cannot create a SCRAM user when it
# formats the log. This script:
#   1. renders server.properties from the KAFKA_* variables (the image's rule: KAFKA_ dropped, `_`
#      -> `.`, `__` -> `_`, `___` -> `-`, lower case; JVM/tooling variables excluded), then appends
#      the TLS keystore and truststore (PEM, straight from the secrets) and the JAAS settings of
#      each SASL listener with the broker's own user, `admin`, from kafka_broker_admin_password;
#   2. formats the log directory on first start only, with `admin`'s SCRAM-SHA-512 credential
#      (`kafka-storage.sh format --add-scram`): the broker authenticates to itself with it, and
#      topics-init creates every service's user and ACLs with it (pipeline/kafka/acl.py);
#   3. runs the broker (exec: it gets the container's signals).
# The rendered file holds the password: it is written 0600 in the container's own layer, never
# on a volume. Secrets: /run/secrets/kafka_broker_certificate (PEM: the broker's certificate,
# then its CA), kafka_broker_private_key (PEM, PKCS#8, unencrypted), kafka_broker_admin_password.
set -euo pipefail

SECRETS="${KAFKA_SECRETS_DIR:-/run/secrets}"
CONFIG_DIR="${KAFKA_CONFIG_DIR:-/opt/kafka/config/linesight}"
KAFKA_BIN="${KAFKA_BIN:-/opt/kafka/bin}"
PROPS="$CONFIG_DIR/server.properties"

fail() {
    echo "kafka-entrypoint: $*" >&2
    exit 1
}

for name in kafka_broker_certificate kafka_broker_private_key kafka_broker_admin_password; do
    [[ -r "$SECRETS/$name" ]] || fail "secret $name is missing or unreadable in $SECRETS (infra/install-host.sh)"
done
grep -q "BEGIN CERTIFICATE" "$SECRETS/kafka_broker_certificate" || fail "kafka_broker_certificate is not PEM"
grep -q "BEGIN PRIVATE KEY" "$SECRETS/kafka_broker_private_key" ||
    fail "kafka_broker_private_key must be an unencrypted PKCS#8 PEM key (BEGIN PRIVATE KEY)"
ADMIN_PASSWORD="$(tr -d '\r\n' <"$SECRETS/kafka_broker_admin_password")"
# It goes into JAAS strings and the --add-scram argument unquoted: no quotes, commas or spaces.
[[ "$ADMIN_PASSWORD" =~ ^[A-Za-z0-9._~-]{16,}$ ]] ||
    fail "kafka_broker_admin_password: 16 or more of [A-Za-z0-9._~-] (infra/install-host.sh makes 48 hex digits)"
[[ -n "${CLUSTER_ID:-}" && -n "${KAFKA_LOG_DIRS:-}" ]] || fail "CLUSTER_ID and KAFKA_LOG_DIRS must be set"

umask 077
mkdir -p "$CONFIG_DIR"
# Key first, then the certificate chain: Kafka's PEM keystore format.
cat "$SECRETS/kafka_broker_private_key" "$SECRETS/kafka_broker_certificate" >"$CONFIG_DIR/keystore.pem"

property_name() {
    local key="${1#KAFKA_}"
    key="${key//___/-}"
    key="${key//__/%}"
    key="${key//_/.}"
    key="${key//%/_}"
    printf '%s' "${key,,}"
}

scram="org.apache.kafka.common.security.scram.ScramLoginModule"
plain="org.apache.kafka.common.security.plain.PlainLoginModule"
{
    echo "# Rendered by /linesight/kafka-entrypoint.sh at $(date -u +%Y-%m-%dT%H:%M:%SZ); do not edit."
    while IFS='=' read -r name value; do
        case "$name" in
            KAFKA_HEAP_OPTS | KAFKA_OPTS | KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_GC_LOG_OPTS | KAFKA_LOG4J_OPTS | \
                KAFKA_JMX_OPTS | KAFKA_JMX_PORT | KAFKA_JMX_HOSTNAME | KAFKA_DEBUG | KAFKA_VERSION | KAFKA_HOME | \
                KAFKA_SECRETS_DIR | KAFKA_CONFIG_DIR | KAFKA_BIN | KAFKA_HEALTH_HOST | KAFKA_HEALTH_PORT) continue ;;
            KAFKA_*) echo "$(property_name "$name")=$value" ;;
        esac
    done < <(env)
    echo "ssl.keystore.type=PEM"
    echo "ssl.keystore.location=$CONFIG_DIR/keystore.pem"
    echo "ssl.truststore.type=PEM"
    echo "ssl.truststore.location=$SECRETS/kafka_broker_certificate"
    # INTERNAL: clients and the broker's own inter-broker connection (as admin).
    echo "listener.name.internal.scram-sha-512.sasl.jaas.config=$scram required username=\"admin\" password=\"$ADMIN_PASSWORD\";"
    # EXTERNAL: clients only (the server side of SCRAM needs no credentials of its own).
    echo "listener.name.external.scram-sha-512.sasl.jaas.config=$scram required;"
    # CONTROLLER: the broker to its controller, PLAIN over TLS, the one user admin.
    echo "listener.name.controller.plain.sasl.jaas.config=$plain required username=\"admin\" password=\"$ADMIN_PASSWORD\" user_admin=\"$ADMIN_PASSWORD\";"
} >"$PROPS"

# Tests stop here (KAFKA_ENTRYPOINT_RENDER_ONLY=1): the rendered file is what they check.
[[ "${KAFKA_ENTRYPOINT_RENDER_ONLY:-}" == 1 ]] && exit 0

if [[ ! -f "$KAFKA_LOG_DIRS/meta.properties" ]]; then
    echo "kafka-entrypoint: formatting $KAFKA_LOG_DIRS (cluster $CLUSTER_ID) with the SCRAM user admin"
    "$KAFKA_BIN/kafka-storage.sh" format --cluster-id "$CLUSTER_ID" --config "$PROPS" \
        --add-scram "SCRAM-SHA-512=[name=admin,password=$ADMIN_PASSWORD]"
fi
# The image's console-only logging configuration, as its own entrypoint uses.
if [[ -z "${KAFKA_LOG4J_OPTS:-}" && -f /etc/kafka/docker/log4j.properties ]]; then
    export KAFKA_LOG4J_OPTS="-Dlog4j.configuration=file:/etc/kafka/docker/log4j.properties"
fi
exec "$KAFKA_BIN/kafka-server-start.sh" "$PROPS"
