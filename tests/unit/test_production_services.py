"""`linesight alerts` and `linesight dashboard` as their own services (docker-compose): the
refusals, the alert service's API, and the dashboard's live versions from Triton. The commands
on the embedded broker are tests/e2e/test_production_services_on_broker.py."""

from __future__ import annotations

import os

import pytest
from alerts_api import TOKEN, NullPublisher, get, result

from pipeline.alerts.engine import AlertConfig, AlertEngine
from pipeline.alerts.service import AlertService, serve_alerts_api
from pipeline.cli import main as cli
from pipeline.core.health import HealthState
from pipeline.core.times import now_ns
from pipeline.dashboard.remote import RemoteAlerts, TritonVersions
from pipeline.embedded.process import free_port
from pipeline.settings import Settings

# --------------------------------------------------------------------------- refusals


def test_dashboard_refuses_embedded_chdb_and_points_to_up(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    for name in [n for n in os.environ if n.startswith("LINESIGHT_")]:
        monkeypatch.delenv(name)
    assert cli.main(["dashboard"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("linesight dashboard: error:") and "`linesight up`" in err and "chDB" in err
    assert "Traceback" not in err

    monkeypatch.setenv("LINESIGHT_CLICKHOUSE__URL", "http://clickhouse:8123")
    assert cli.main(["dashboard"]) == 1
    assert "LINESIGHT_KAFKA__BOOTSTRAP_SERVERS" in capsys.readouterr().err

    monkeypatch.setenv("LINESIGHT_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    assert cli.main(["dashboard"]) == 1
    assert "LINESIGHT_SERVICES__ALERTS_URL" in capsys.readouterr().err

    monkeypatch.setenv("LINESIGHT_SERVICES__ALERTS_URL", "http://alerts:16072")
    assert cli.main(["dashboard"]) == 1
    assert "LINESIGHT_SERVICES__ALERTS_API_TOKEN_FILE" in capsys.readouterr().err


def test_both_commands_are_in_the_cli() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["alerts"]).func is cli.cmd_alerts
    assert parser.parse_args(["dashboard"]).func is cli.cmd_dashboard


# --------------------------------------------------------------------------- the alert service's API


def test_alerts_api_needs_the_token_and_serves_state_frames_and_acks() -> None:
    engine = AlertEngine(AlertConfig(run_length=3))
    publisher = NullPublisher()
    service = AlertService(Settings(), engine, publisher)  # type: ignore[arg-type]
    health = HealthState("alerts")
    health.set_ready(True)
    port = free_port()
    server = serve_alerts_api(service, health, port, TOKEN, host="127.0.0.1")
    base = f"http://127.0.0.1:{port}"
    try:
        for i in range(3):
            engine.on_result(result(f"u{i}", "line-9"), now_ns())
        assert get(base + "/readyz")[0] == 200                       # health stays open
        assert get(base + "/state")[0] == 401                        # the rest needs the token
        assert get(base + "/state", "wrong-token")[0] == 401
        remote = RemoteAlerts(base, TOKEN, engine.config)
        remote.refresh()
        assert remote.error == ""
        alert = next(a for a in remote.snapshot(0)["alerts"] if a["kind"] == "reject_run")
        assert remote.reject_image("u0") is None                     # no frame kept: 404, not an error
        rec = remote.acknowledge(alert["alert_id"], "olga")
        assert rec.acknowledged_by == "olga" and publisher.published[-1].acknowledged_by == "olga"
        with pytest.raises(ValueError):
            remote.acknowledge(alert["alert_id"], "olga")
        with pytest.raises(KeyError):
            remote.acknowledge("line-9:nope:1", "olga")
        forged = RemoteAlerts(base, "forged", engine.config)
        with pytest.raises(RuntimeError, match="401"):
            forged.acknowledge(alert["alert_id"], "mallory")
    finally:
        server.shutdown()
        server.server_close()
    unconfigured = serve_alerts_api(service, health, port := free_port(), "", host="127.0.0.1")
    try:
        assert get(f"http://127.0.0.1:{port}/state", "")[0] == 403  # no token configured: closed
    finally:
        unconfigured.shutdown()
        unconfigured.server_close()


def test_model_live_comes_from_triton_and_falls_back_to_the_results() -> None:
    answers: dict[str, list[int]] = {"tablet_classifier": [2, 4]}

    def ready_versions(model: str) -> list[int]:
        if model not in answers:
            raise ConnectionError("Triton unreachable")
        return answers[model]

    versions = TritonVersions(ready_versions)
    models = {"tablet-a": "tablet_classifier:3", "capsule-b": "capsule_classifier:7"}
    assert versions.overlay(models) == models            # nothing asked yet: the results' versions
    versions.refresh()
    assert versions.overlay(models) == {"tablet-a": "tablet_classifier:4", "capsule-b": "capsule_classifier:7"}
    answers.clear()                                        # Triton gone: back to the last results
    versions.refresh()
    assert versions.overlay(models) == models
