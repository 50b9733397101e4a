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
#   uid 1000  (apache/kafka image's appuser: reads its healthcheck script)
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
# * The other bind-mounted sources (./recipes, infra/grafana, infra/clickhouse, infra/docker):
#   readable by everyone (a checkout under a restrictive umask such as 027 is not).
# * AUDIT_SEAL_PUBLIC_KEY: appended to .env from the audit trail key when .env has none.
#
# Rerun it after copying in a new model version or replacing a secret file.
# tests/unit/test_compose_fit.py runs it in a scratch tree and checks every service's access.
set -euo pipefail

ROOT="${INSTALL_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
ENV_FILE="${INSTALL_ENV_FILE:-$ROOT/.env}"
APP_UID=10001
GRAFANA_UID=472

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
)

umask 077
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
for dir in recipes infra/grafana infra/clickhouse infra/docker; do
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
