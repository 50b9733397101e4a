"""`linesight models list|deploy|rollback`: refusals and the append-only history, on a repository
alone (no Triton). The deploy into a real running line is tests/e2e/test_deploy_running_line.py.

Every model here is a tiny contract-conforming classifier built by `contract_models`, in a
temporary repository: nothing depends on the trained artifacts under ``triton_models/``.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from contract_models import add_version, model_repository, repo_settings
from support import approve_validation_report

from pipeline.auth.users import UserStore
from pipeline.cli.main import main
from pipeline.clickhouse import ChdbClient
from pipeline.embedded.process import free_port
from pipeline.model import repository
from pipeline.model.deploy import DeployError, deploy, list_models, live_history, rollback
from pipeline.settings import Settings

PRODUCT = "tablet-round-white-10mm"


@pytest.fixture
def offline_repo(tmp_path: Path) -> Path:
    """v1 live (passes), v2 releasable (rejects), and versions that must never go live."""
    repo = model_repository(tmp_path)
    add_version(repo, "tablet_classifier", 1, review=0.3, reject=0.7, bias=0.2)
    add_version(repo, "tablet_classifier", 2, review=0.5, reject=0.5, bias=0.9)
    add_version(repo, "tablet_classifier", 3, review=0.5, reject=0.5, bias=0.9, parity_passed=False)
    tampered = add_version(repo, "tablet_classifier", 4, review=0.5, reject=0.5, bias=0.9)
    data = (tampered / "model.onnx").read_bytes()
    (tampered / "model.onnx").write_bytes(data.replace(b"contract_classifier_v4", b"contract_classifier_vX"))
    add_version(repo, "tablet_classifier", 5, review=0.5, reject=0.5, bias=0.9, record_classes=False)
    six = add_version(repo, "tablet_classifier", 6, review=0.5, reject=0.5, bias=0.9)
    card = json.loads((six / "model_card.json").read_text())
    card["thresholds"]["reject"] = 0.6  # the card no longer describes the artifact
    (six / "model_card.json").write_text(json.dumps(card))
    return repo


@pytest.mark.parametrize(
    "version, why",
    [
        (9, r"has no version 9 \(released: 1, 2, 3, 4, 5, 6"),
        (3, r"parity check failed"),
        (4, r"model.onnx sha256 [0-9a-f]{64} is not the card's [0-9a-f]{64}: the file changed after release"),
        (5, r"'classes' parameter has no entry for version 5"),
        (6, r"reject threshold 0.5 differs from its card's 0.6"),
    ],
)
def test_deploy_refuses_unreleasable_versions(
    offline_repo: Path, tmp_path: Path, version: int, why: str
) -> None:
    settings = repo_settings(Settings(), offline_repo, tmp_path / "state")
    config_before = repository.config_path(offline_repo, "tablet_classifier").read_bytes()
    with pytest.raises(DeployError, match=why):
        deploy(settings, PRODUCT, version, reason="test")
    assert repository.config_path(offline_repo, "tablet_classifier").read_bytes() == config_before
    assert repository.deployments(offline_repo, "tablet_classifier") == []


def test_deploy_and_rollback_without_triton_change_the_repository_only(
    offline_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], embedded_settings: Settings,
    chdb_client: ChdbClient,
) -> None:
    settings = repo_settings(Settings(), offline_repo, tmp_path / "state")
    with pytest.raises(DeployError, match="nothing to roll back to"):
        rollback(settings, PRODUCT)
    with pytest.raises(DeployError, match="version 2: no validation report"):
        deploy(settings, PRODUCT, 2, reason="better detection")
    # Version 2's approved validation report (docs/validation.md), recorded where the CLI below looks.
    approve_validation_report(embedded_settings.model_copy(update={
        "triton": embedded_settings.triton.model_copy(update={"model_repository": offline_repo}),
        "audit": embedded_settings.audit.model_copy(update={"publish_timeout_s": 0.0}),
    }), chdb_client, "tablet_classifier", 2)

    result = deploy(settings, PRODUCT, 2, reason="better detection")
    assert "takes effect at the next start" in result.triton
    config = repository.read_config(offline_repo, "tablet_classifier")
    assert repository.live_version(config) == 2
    assert config.name == "tablet_classifier" and repository.parameter(config, "product") == PRODUCT
    # The committed comment block survives the rewrite.
    assert repository.config_path(offline_repo, "tablet_classifier").read_text().startswith("# Tablet classifier")

    assert deploy(settings, "tablet_classifier", 2).triton.endswith("already live; nothing changed")
    back = rollback(settings, PRODUCT, reason="line trial ended")
    assert (back.from_version, back.to_version) == (2, 1)
    assert repository.live_version(repository.read_config(offline_repo, "tablet_classifier")) == 1

    history = repository.deployments(offline_repo, "tablet_classifier")
    assert [(e["action"], e["from"], e["to"], e["reason"]) for e in history] == [
        ("deploy", 1, 2, "better detection"),
        ("rollback", 2, 1, "line trial ended"),
    ]
    assert all(e["user"] and e["time_utc"].endswith("+00:00") and e["triton"] == "not running" for e in history)
    with pytest.raises(DeployError, match="nothing to roll back to"):
        rollback(settings, PRODUCT)

    rows = list_models(settings)
    assert [r.classifier for r in rows] == ["tablet_classifier"]
    row = rows[0]
    assert row.live_version == 1 and row.served_versions is None and "not reachable" in row.triton
    by_version = {v.version: v for v in row.versions}
    assert [v for v, r in by_version.items() if r.deployable] == [2]  # version 1 has no validation report
    assert by_version[1].validation[0].startswith("no validation report") and by_version[2].validation == []
    assert by_version[2].reject_threshold == 0.5 and by_version[1].review_threshold == 0.3
    assert by_version[1].mode == "supervised" and by_version[1].auroc == 0.99 and by_version[1].live

    # The same through the CLI (settings from the environment), as an authenticated QA user
    # (docs/audit.md); chDB: the session's one data directory.
    qa = f"qa-{uuid.uuid4().hex[:6]}"
    UserStore(chdb_client, embedded_settings.clickhouse.database).add(qa, "qa", "deploy-pass-1", "test")
    (tmp_path / "pw").write_text("deploy-pass-1\n")
    auth = ["--user", qa, "--password-file", str(tmp_path / "pw")]
    env = {
        "LINESIGHT_STATE_DIR": str(embedded_settings.state_dir),
        "LINESIGHT_AUDIT__PUBLISH_TIMEOUT_S": "0",
        "LINESIGHT_TRITON__MODEL_REPOSITORY": str(offline_repo),
        "LINESIGHT_TRITON__EMBEDDED_GRPC_PORT": str(free_port()),
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("LINESIGHT_TRITON__URL", raising=False)
        assert main(["models", "list", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert listed[0]["live_version"] == 1 and len(listed[0]["versions"]) == 6
        assert main(["models", "deploy", PRODUCT, "--version", "3", "--reason", "cli", *auth]) == 1
        assert "parity check failed" in capsys.readouterr().err
        assert main(["models", "deploy", PRODUCT, "--version", "2", "--reason", "cli", *auth]) == 0
        out = capsys.readouterr().out
        assert "version 1 -> 2" in out and f"signed approved by {qa} (qa)" in out
        assert main(["models", "list"]) == 0
        text = capsys.readouterr().out
        assert "live in repository: 2" in text and "no: the model card" not in text


def test_rollback_walks_back_through_the_history() -> None:
    def e(action: str, frm: int, to: int) -> dict[str, object]:
        return {"action": action, "from": frm, "to": to}

    entries = [e("deploy", 1, 2), e("deploy-failed", 2, 5), e("deploy", 2, 3), e("rollback", 3, 2)]
    assert live_history(entries) == [1, 2]
    assert live_history(entries + [e("rollback", 2, 1)]) == [1]
    assert live_history([e("deploy", 1, 2), e("deploy", 2, 1)]) == [1, 2, 1]


def test_a_deploy_switches_every_replica_or_none(
    offline_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With several Triton replicas (`triton.url` + `triton.urls`) a deploy switches each one that
    answers (a silent one loads the new config at its start); a replica refusing the switch puts
    the previous version back on every replica already switched, and the config back."""
    from pipeline.model import deploy as deploy_mod

    base = repo_settings(Settings(), offline_repo, tmp_path / "state")
    settings = base.model_copy(update={"triton": base.triton.model_copy(update={
        "url": "t1:8001", "urls": ["t2:8001", "t3:8001", "t1:8001"]})})
    monkeypatch.setattr(deploy_mod, "report_problems", lambda *a: [])  # the report's checks: tests above
    assert [t.url for t in deploy_mod.TritonTarget.every_replica(settings)] == ["t1:8001", "t2:8001", "t3:8001"]
    down: set[str] = {"t3:8001"}
    refuse: set[str] = set()
    serving: dict[str, int] = {}

    def switch(target, source, model, version):  # noqa: ANN001, ANN202
        if target.url in refuse and version == 2:
            raise RuntimeError("load failed")
        serving[target.url] = version

    monkeypatch.setattr(deploy_mod.TritonTarget, "reachable", lambda self: self.url not in down)
    monkeypatch.setattr(deploy_mod, "_switch", switch)
    config_file = repository.config_path(offline_repo, "tablet_classifier")

    refuse.add("t2:8001")
    before = config_file.read_bytes()
    with pytest.raises(DeployError, match="t2:8001: load failed"):
        deploy(settings, PRODUCT, 2, reason="r")
    assert serving == {"t1:8001": 1, "t2:8001": 1} and config_file.read_bytes() == before

    refuse.clear()
    result = deploy(settings, PRODUCT, 2, reason="r")
    assert serving == {"t1:8001": 2, "t2:8001": 2}
    assert "t3:8001 did not answer and loads it at its next start" in result.triton
    assert repository.live_version(repository.read_config(offline_repo, "tablet_classifier")) == 2
    history = repository.deployments(offline_repo, "tablet_classifier")
    assert [e["action"] for e in history] == ["deploy-failed", "deploy"]
