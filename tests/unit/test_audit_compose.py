"""The compose `auditsealer` service (docs/deployment.md, docs/audit.md "One writer"): runs the audit
service (`linesight audit serve`), the only appender of the trail and the only holder of the trail key
(a Docker secret no other service mounts); every other service submits its audit events to the
audit-events topic and can no longer insert into audit_records. It owns the anchor volume (no other
service mounts it), reads and appends only audit_records through its own ClickHouse account, and is
healthy only while its rounds succeed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import yaml

from pipeline.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
KEY_SECRET = "audit_trail_key"
# Everything in the app image but the audit service submits its audit events to it.
APP_SERVICES = {"db-init", "worker", "sink", "actuator", "alerts", "dashboard", "camera", "gateway", "topics-init"}


def services() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def test_the_sealer_runs_the_sealing_service_with_the_key_and_its_own_account() -> None:
    svc = services()["auditsealer"]
    args = build_parser().parse_args(svc["command"])
    assert args.func.__name__ == "cmd_audit_serve" and args.status_file is not None
    env = svc["environment"]
    assert env["LINESIGHT_AUDIT__SEAL_KEY_FILE"] == f"/run/secrets/{KEY_SECRET}"
    assert env["LINESIGHT_AUDIT__APPEND_VIA"] == "direct"
    assert env["LINESIGHT_CLICKHOUSE__USERNAME"] == "linesight_auditsealer"
    assert env["LINESIGHT_CLICKHOUSE__PASSWORD_FILE"] == "/run/secrets/clickhouse_auditsealer_password"
    # The key, its database account, and its own broker principal (docs/deployment.md, "Broker security").
    assert set(svc["secrets"]) == {KEY_SECRET, "clickhouse_auditsealer_password", "kafka_ca_certificate",
                                   "kafka_auditsealer_password"}
    assert svc["restart"] == "unless-stopped" and svc["logging"]["options"]["max-file"]
    assert svc["stop_grace_period"], "time for the final seal"


def test_only_the_audit_service_appends_and_holds_the_trail_key() -> None:
    holders = {n for n, s in services().items() if KEY_SECRET in (s.get("secrets") or [])}
    assert holders == {"auditsealer"}
    assert KEY_SECRET not in (services()["clickhouse"].get("secrets") or []), "the database never holds the key"
    for name in APP_SERVICES & set(services()):
        env = services()[name]["environment"]
        assert env["LINESIGHT_AUDIT__APPEND_VIA"] == "topic", name
        assert "LINESIGHT_AUDIT__SEAL_KEY_FILE" not in env and "LINESIGHT_AUDIT__ANCHOR_DIR" not in env, name
        # `linesight audit verify` works in every one of them: it needs only the pinned public key.
        assert env["LINESIGHT_AUDIT__SEAL_PUBLIC_KEY"] == "${AUDIT_SEAL_PUBLIC_KEY:-}", name


def test_no_service_account_but_the_audit_service_may_insert_audit_records() -> None:
    users = ET.parse(ROOT / "infra/clickhouse/users.d/linesight.xml").getroot().find("users")
    assert users is not None
    for user in users:
        grants = [q.text or "" for q in user.findall("grants/query")]
        if user.tag in ("linesight_admin", "linesight_auditsealer") or user.find("access_management") is not None:
            continue
        inserts = [g for g in grants if g.startswith("GRANT") and "INSERT" in g]
        broad = [g for g in inserts if g.endswith("linesight.*")]
        assert not any("audit_records" in g for g in inserts), user.tag
        if broad:  # a database-wide INSERT carries its revoke
            assert "REVOKE INSERT ON linesight.audit_records" in grants, user.tag


def test_only_the_sealer_mounts_the_anchor_volume() -> None:
    mounts = {n: [v for v in s.get("volumes") or [] if str(v).startswith("audit-anchors:")]
              for n, s in services().items()}
    assert {n for n, m in mounts.items() if m} == {"auditsealer"}
    (mount,) = mounts["auditsealer"]
    target = mount.split(":")[1]
    assert services()["auditsealer"]["environment"]["LINESIGHT_AUDIT__ANCHOR_DIR"] == target
    assert "audit-anchors" in yaml.safe_load((ROOT / "docker-compose.yml").read_text())["volumes"]
    assert f"install -d -o linesight -g linesight -m 0700 {target}" in (ROOT / "infra/docker/app.Dockerfile").read_text()


def test_the_sealer_account_reads_and_appends_audit_records_only() -> None:
    users = ET.parse(ROOT / "infra/clickhouse/users.d/linesight.xml").getroot().find("users")
    assert users is not None
    user = users.find("linesight_auditsealer")
    assert user is not None and user.find("access_management") is None
    assert [q.text for q in user.findall("grants/query")] == ["GRANT SELECT, INSERT ON linesight.audit_records"]
    assert user.findtext("password_sha256_hex") == "0" * 64
    entrypoint = (ROOT / "infra/clickhouse/entrypoint.sh").read_text()
    assert "linesight_auditsealer" in entrypoint and "clickhouse_auditsealer_password" in entrypoint
    assert "clickhouse_auditsealer_password" in services()["clickhouse"]["secrets"]


def test_the_sealer_healthcheck_follows_its_status_file(tmp_path: Path) -> None:
    test = services()["auditsealer"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    status = tmp_path / "sealer.json"
    code = test[3].replace("/tmp/linesight-sealer.json", str(status))
    assert code != test[3]

    def probe(doc: dict[str, Any] | None) -> int:
        if doc is None:
            status.unlink(missing_ok=True)
        else:
            status.write_text(json.dumps(doc))
        return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode

    now = time.time()
    assert probe({"time": now, "ok": True, "anchored": 3, "interval_s": 300}) == 0
    assert probe({"time": now, "ok": False, "anchored": None, "interval_s": 300}) != 0
    assert probe({"time": now - 700, "ok": True, "anchored": 3, "interval_s": 300}) != 0
    assert probe(None) != 0
