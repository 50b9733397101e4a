"""Triton's model control (load, unload, repository index) answers only callers with the key:
an unauthenticated unload, over HTTP or gRPC, is refused and the model stays ready, while
inference-side calls (health, readiness) need no key."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from pipeline.embedded.triton import TritonServer, model_control_key
from pipeline.model.deploy import TritonTarget
from pipeline.settings import Settings

MODEL = "tablet_classifier"


def _post(url: str, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, data=b"{}", method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_unload_without_the_key_is_refused(triton_server: TritonServer, embedded_settings: Settings) -> None:
    if MODEL not in triton_server.models:
        pytest.skip(f"{MODEL} not in the repository")
    header = embedded_settings.triton.model_control_header
    unload = f"{triton_server.http_url}/v2/repository/models/{MODEL}/unload"
    assert _post(unload) not in (200, 201)
    assert _post(unload, {header: "not-the-key"}) not in (200, 201)
    grpc = grpcclient.InferenceServerClient(triton_server.grpc_url)
    with pytest.raises(InferenceServerException):
        grpc.unload_model(MODEL)
    with pytest.raises(InferenceServerException):
        grpc.get_model_repository_index()
    assert grpc.is_model_ready(MODEL) and grpc.is_server_ready()  # the model was not touched
    # The key of this run (file 0600 in the state directory) opens model control, read-only here.
    key = model_control_key(embedded_settings)
    assert len(key) == 64
    assert (embedded_settings.state_dir / "triton_model_control.key").stat().st_mode & 0o077 == 0
    assert TritonTarget.from_settings(embedded_settings).ready_versions(MODEL)
