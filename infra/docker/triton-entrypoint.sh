#!/bin/bash
# LineSight: Triton container entrypoint (docker-compose.yml, service `triton`).
#
# Restricts Triton's model control (load, unload, the repository index) over HTTP and gRPC to
# requests carrying the key of the Docker secret `triton_model_control_key` in the
# `linesight-model-control` header (TritonSettings.model_control_header), as the embedded server
# does (pipeline/embedded/triton.py), then hands over to the image's entrypoint with the command
# and these flags. tritonserver takes the key only on its command line: keep shell access to the
# host to operators. A missing, short or malformed key stops the container instead of starting
# it with open model control.
set -euo pipefail

# The paths are overridable for tests/unit/test_compose.py only.
KEY_FILE="${TRITON_INIT_KEY_FILE:-/run/secrets/triton_model_control_key}"
NEXT_ENTRYPOINT="${TRITON_INIT_NEXT:-/opt/nvidia/nvidia_entrypoint.sh}"
HEADER="linesight-model-control"
MIN_LENGTH=32

fail() {
    echo "linesight-triton: $*" >&2
    exit 1
}

[[ -r "$KEY_FILE" ]] || fail "secret $KEY_FILE is missing or unreadable (see docs/deployment.md)"
key="$(<"$KEY_FILE")"
key="${key#"${key%%[![:space:]]*}"}"
key="${key%"${key##*[![:space:]]}"}"
(( ${#key} >= MIN_LENGTH )) || fail "secret $KEY_FILE is shorter than $MIN_LENGTH characters"
# Triton parses "model-repository:<header>=<key>": the key may not hold separators.
[[ "$key" =~ ^[A-Za-z0-9._~-]+$ ]] || fail "secret $KEY_FILE holds characters other than letters, digits and ._~-"

restricted="model-repository:${HEADER}=${key}"
echo "linesight-triton: model control restricted to the ${HEADER} key"
exec "$NEXT_ENTRYPOINT" "$@" --http-restricted-api="$restricted" --grpc-restricted-protocol="$restricted"
