#!/bin/bash
# LineSight: prepare a GPU host's files for docker-compose.yml (docs/deployment.md, "First installation").
#
#   cp .env.example .env && $EDITOR .env       # first: the secret paths and the plant's settings
#   sudo infra/install-host.sh                 # from the repository root; safe to rerun
#
# Compose bind-mounts the Docker secret files and parts of this checkout into containers that run
# as fixed users, with the owners and modes they have on the host. This script gives every file the
# owner and mode its readers need, no more:
#
#   uid 10001 (app image: worker, sink, actuator, alerts, dashboard, auditsealer, gateway, *-init)
#   uid 472   (Grafana image, group 0)
#   uid 65534 (Prometheus image's nobody: its configuration, infra/prometheus)
#   uid 1000  (apache/kafka image's appuser: its healthcheck and entrypoint scripts, its TLS key
#             and certificate, its own user's password)
#   root      (ClickHouse's and Triton's entrypoints read their secrets before anything else)
#
# * Secrets (the *_FILE paths in .env): created when missing (random passwords and keys; never
#   overwritten), then owned by the one uid that reads them in a container, mode 0400. A secret
#   that root-started services also read (ClickHouse hashes every account's password; Triton reads
#   the model control key) needs nothing more: root reads it anyway. The PLC's client certificate,
#   key and password come from the plant's OT team: put them at their paths first.
# * ./triton_models: owned by 10001 (`linesight models deploy` writes it as the worker's user),
#   directories 0755 and files 0644, so Triton, the alert service (model cards) and the gateway
#   read every version, including one copied in from a training machine with private modes.
# * The other bind-mounted sources (./recipes, infra/grafana, infra/prometheus, infra/clickhouse, infra/docker):
#   readable by everyone (a checkout under a restrictive umask such as 027 is not).
# * Kafka TLS (docs/deployment.md, "Broker security"): when the CA certificate, the broker's
#   certificate and its key are all missing, a private CA (its key kept beside them, root only,
#   never mounted) and a broker certificate for `kafka`, localhost, 127.0.0.1 and KAFKA_EXTERNAL_HOST
#   signed by it. A plant CA's files put at those paths first are used as they are.
# * The broker's super user's password is one secret read by two uids (the broker, topics-init):
#   two files with the same content, KAFKA_BROKER_ADMIN_PASSWORD_FILE copied from KAFKA_ADMIN_PASSWORD_FILE.
# * AUDIT_SEAL_PUBLIC_KEY: appended to .env from the audit trail key when .env has none.
#
# Rerun it after copying in a new model version or replacing a secret file.
# tests/unit/test_compose_fit.py runs it in a scratch tree and checks every service's access.
set -euo pipefail

ROOT="${INSTALL_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
ENV_FILE="${INSTALL_ENV_FILE:-$ROOT/.env}"
APP_UID=10001
GRAFANA_UID=472
KAFKA_UID=1000

fail() {
    echo "install-host: $*" >&2
    exit 1
}

# Tests run it unprivileged with a recording `chown` on PATH (INSTALL_HOST_TEST=1).
if [[ "$(id -u)" != 0 && "${INSTALL_HOST_TEST:-}" != 1 ]]; then
    fail "run as root (sudo): it sets owners for the containers' users"
fi
[[ -f "$ENV_FILE" ]] || fail "$ENV_FILE is missing: cp .env.example .env, review it, then rerun"
command -v openssl >/dev/null || fail "openssl is needed to create the secrets"

# The value of NAME in the env file (the last assignment; no quotes, no expansion, like compose for these).
env_value() {
    local line value=""
    while IFS= read -r line || [[ -n "$line" ]]; do
        [[ "$line" == "$1="* ]] && value="${line#*=}"
    done <"$ENV_FILE"
    printf '%s' "$value"
}

# A path from the env file, relative paths against the repository root (where compose resolves them).
host_path() {
    local value
    value="$(env_value "$1")"
    [[ -n "$value" ]] || fail "$1 is not set in $ENV_FILE"
    case "$value" in
        /*) printf '%s' "$value" ;;
        *) printf '%s/%s' "$ROOT" "${value#./}" ;;
    esac
}

# secret variable | owner uid:gid | how to create it when missing
SECRETS=(
    "CLICKHOUSE_ADMIN_PASSWORD_FILE|$APP_UID:$APP_UID|password"        # db-init (and ClickHouse, root)
    "CLICKHOUSE_WRITER_PASSWORD_FILE|$APP_UID:$APP_UID|password"       # sink
    "CLICKHOUSE_READER_PASSWORD_FILE|$GRAFANA_UID:0|password"          # grafana's datasource
    "CLICKHOUSE_DASHBOARD_PASSWORD_FILE|$APP_UID:$APP_UID|password"    # dashboard
    "CLICKHOUSE_AUDITSEALER_PASSWORD_FILE|$APP_UID:$APP_UID|password"  # auditsealer
    "ALERTS_API_TOKEN_FILE|$APP_UID:$APP_UID|token"                    # alerts, dashboard
    "GRAFANA_ADMIN_PASSWORD_FILE|$GRAFANA_UID:0|password"              # grafana
    "TRITON_MODEL_CONTROL_KEY_FILE|$APP_UID:$APP_UID|token"            # worker, dashboard (and Triton, root)
    "AUDIT_TRAIL_KEY_FILE|$APP_UID:$APP_UID|ed25519"                   # sink, dashboard, auditsealer, db-init
    "PLC_PASSWORD_FILE|$APP_UID:$APP_UID|plant"                        # actuator, gateway
    "PLC_CLIENT_CERTIFICATE_FILE|$APP_UID:$APP_UID|plant"
    "PLC_CLIENT_PRIVATE_KEY_FILE|$APP_UID:$APP_UID|plant"
    # Kafka: the CA (every client) and the broker's TLS files (made just below when missing), the
    # super user's password (topics-init; the broker's copy after it), one password per principal.
    "KAFKA_CA_CERTIFICATE_FILE|$APP_UID:$APP_UID|made"
    "KAFKA_BROKER_CERTIFICATE_FILE|$KAFKA_UID:$KAFKA_UID|made"
    "KAFKA_BROKER_PRIVATE_KEY_FILE|$KAFKA_UID:$KAFKA_UID|made"
    "KAFKA_ADMIN_PASSWORD_FILE|$APP_UID:$APP_UID|password"
    "KAFKA_BROKER_ADMIN_PASSWORD_FILE|$KAFKA_UID:$KAFKA_UID|copy:KAFKA_ADMIN_PASSWORD_FILE"
    "KAFKA_GATEWAY_PASSWORD_FILE|$APP_UID:$APP_UID|password"     # gateway (and topics-init)
    "KAFKA_CAMERA_PASSWORD_FILE|$APP_UID:$APP_UID|password"      # camera
    "KAFKA_WORKER_PASSWORD_FILE|$APP_UID:$APP_UID|password"      # worker
    "KAFKA_SINK_PASSWORD_FILE|$APP_UID:$APP_UID|password"        # sink
    "KAFKA_ACTUATOR_PASSWORD_FILE|$APP_UID:$APP_UID|password"    # actuator
    "KAFKA_ALERTS_PASSWORD_FILE|$APP_UID:$APP_UID|password"      # alerts
    "KAFKA_DASHBOARD_PASSWORD_FILE|$APP_UID:$APP_UID|password"   # dashboard
    "KAFKA_AUDITSEALER_PASSWORD_FILE|$APP_UID:$APP_UID|password" # auditsealer
    "KAFKA_OPERATOR_PASSWORD_FILE|$APP_UID:$APP_UID|password"    # db-init (the CLI's GMP actions)
    "KAFKA_SUBSCRIBER_PASSWORD_FILE|$APP_UID:$APP_UID|password"  # for a plant system reading results
)

# Kafka's TLS files: a private CA and a broker certificate when none of the three exists yet.
kafka_tls() {
    local ca cert key dir ca_key host san work
    ca="$(host_path KAFKA_CA_CERTIFICATE_FILE)"
    cert="$(host_path KAFKA_BROKER_CERTIFICATE_FILE)"
    key="$(host_path KAFKA_BROKER_PRIVATE_KEY_FILE)"
    if [[ -e "$ca" && -e "$cert" && -e "$key" ]]; then
        return 0
    fi
    if [[ -e "$ca" || -e "$cert" || -e "$key" ]]; then
        fail "Kafka TLS: put all three of KAFKA_CA_CERTIFICATE_FILE, KAFKA_BROKER_CERTIFICATE_FILE and KAFKA_BROKER_PRIVATE_KEY_FILE in place, or none (then they are made)"
    fi
    dir="$(dirname "$ca")"
    install -d -m 0700 "$dir" "$(dirname "$cert")" "$(dirname "$key")"
    ca_key="$dir/kafka_ca_private_key.pem"
    host="$(env_value KAFKA_EXTERNAL_HOST)"
    san="DNS:kafka,DNS:localhost,IP:127.0.0.1"
    if [[ -n "$host" && "$host" != localhost && "$host" != 127.0.0.1 ]]; then
        if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then san="$san,IP:$host"; else san="$san,DNS:$host"; fi
    fi
    work="$(mktemp -d)"
    [[ -e "$ca_key" ]] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$ca_key" 2>/dev/null
    openssl req -x509 -new -key "$ca_key" -out "$ca" -days 3650 -subj "/CN=LineSight Kafka CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$key" 2>/dev/null
    openssl req -new -key "$key" -out "$work/broker.csr" -subj "/CN=kafka"
    printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\nextendedKeyUsage=serverAuth,clientAuth\n' \
        "$san" >"$work/ext"
    openssl x509 -req -in "$work/broker.csr" -CA "$ca" -CAkey "$ca_key" -set_serial "0x$(openssl rand -hex 16)" \
        -days 825 -extfile "$work/ext" -out "$work/broker.crt" 2>/dev/null
    # The broker's chain (its certificate, then the CA): its keystore and its truststore.
    cat "$work/broker.crt" "$ca" >"$cert"
    rm -rf "$work"
    chmod 0400 "$ca_key"
    echo "install-host: created a private Kafka CA ($ca, key $ca_key) and the broker certificate $cert ($san)"
}

umask 077
kafka_tls
missing=()
for entry in "${SECRETS[@]}"; do
    IFS='|' read -r var owner kind <<<"$entry"
    path="$(host_path "$var")"
    if [[ ! -e "$path" ]]; then
        install -d -m 0700 "$(dirname "$path")"
        case "$kind" in
            password) openssl rand -hex 24 >"$path" ;;
            token) openssl rand -hex 32 >"$path" ;;
            ed25519) openssl genpkey -algorithm ed25519 -out "$path" ;;
            copy:*) cp "$(host_path "${kind#copy:}")" "$path" ;;
            made) fail "$var: $path is missing" ;;
            plant) missing+=("$var=$path"); continue ;;
        esac
        echo "install-host: created $path"
    fi
    [[ -f "$path" ]] || fail "$var: $path is not a regular file"
    chown "$owner" "$path"
    chmod 0400 "$path"
done

# The model repository: written by `linesight models deploy` (uid 10001), read by all the others.
if [[ -d "$ROOT/triton_models" ]]; then
    chown -R "$APP_UID:$APP_UID" "$ROOT/triton_models"
    chmod -R u=rwX,go=rX "$ROOT/triton_models"
fi
# Read-only bind-mount sources from this checkout.
for dir in recipes infra/grafana infra/prometheus infra/clickhouse infra/docker; do
    if [[ -e "$ROOT/$dir" ]]; then
        chmod -R u+rwX,go+rX,go-w "$ROOT/$dir"
    fi
done

# Pin the audit trail key's public half (the raw 32 bytes in hex, as `linesight audit key` prints it).
if [[ -z "$(env_value AUDIT_SEAL_PUBLIC_KEY)" ]]; then
    key="$(host_path AUDIT_TRAIL_KEY_FILE)"
    public="$(openssl pkey -in "$key" -pubout -outform DER | tail -c 32 | od -An -tx1 | tr -d ' \n')"
    [[ ${#public} == 64 ]] || fail "could not derive the public key from $key"
    printf '\n# Pinned by infra/install-host.sh: the audit trail key'"'"'s public half.\nAUDIT_SEAL_PUBLIC_KEY=%s\n' \
        "$public" >>"$ENV_FILE"
    echo "install-host: AUDIT_SEAL_PUBLIC_KEY=$public appended to $ENV_FILE"
fi

if (( ${#missing[@]} )); then
    printf 'install-host: missing, from the plant (docs/actuation.md): %s\n' "${missing[@]}" >&2
    fail "put the PLC files in place, then rerun"
fi
echo "install-host: secrets, model repository and mounted files are ready for the containers' users"
