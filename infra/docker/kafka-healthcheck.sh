#!/bin/bash
# LineSight: the kafka service's healthcheck (docker-compose.yml), mounted read-only into the broker.
#
# Sends one Kafka ApiVersions request (v0) to the broker's HEALTH listener (plaintext, bound to the
# container's loopback: every other listener is SASL_SSL, which bash cannot speak) over /dev/tcp
# and passes when the answer carries our correlation id and error code 0: the broker is accepting
# and processing requests, not merely holding the port open. It needs only bash, head, od and tr
# (the apache/kafka image's Alpine base has them) and returns in milliseconds, where the former
# check, `kafka-topics.sh --list`, started a JVM every 10 s (typically a CPU second or more; not measured here).
#
# Request: size 12 | api_key 18 (ApiVersions) | api_version 0 | correlation_id 1 | client_id "hc".
# Answer:  size (4 bytes) | correlation_id 00000001 | error_code 0000 | api versions...
set -euo pipefail

# Overridable for tests/unit/test_compose_fit.py only.
HOST="${KAFKA_HEALTH_HOST:-127.0.0.1}"
PORT="${KAFKA_HEALTH_PORT:-9094}"

exec 3<>"/dev/tcp/$HOST/$PORT"
printf '\x00\x00\x00\x0c\x00\x12\x00\x00\x00\x00\x00\x01\x00\x02hc' >&3
reply="$(head -c 10 <&3 | od -An -tx1 | tr -d ' \n')"
exec 3<&-
if [[ "${reply:8}" != "000000010000" ]]; then
    echo "kafka-healthcheck: unexpected ApiVersions answer '${reply}' from $HOST:$PORT" >&2
    exit 1
fi
