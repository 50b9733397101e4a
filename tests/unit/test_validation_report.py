"""The validation report of a model version (docs/validation.md, "Validation report"): a locked
test set training refuses and whose every read is audited, criteria recorded before the test,
the report's figures on a small set counted by hand, the QA approval's e-signature, and deploy
refused with each named reason until an unchanged approved report exists.

The model is a contract classifier (tests/contract_models.py) whose score is a known function of
a frame's brightness, so every figure of the report is known in advance."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from contract_models import add_version, model_repository
from report_pages import assert_readable, pdf_pages
from support import write_test_images

from pipeline.audit.trail import AuditTrail
from pipeline.auth.guard import AccessDenied, Guard, Principal
from pipeline.auth.sessions import SessionStore
from pipeline.auth.users import UserStore
from pipeline.cli.main import main
from pipeline.clickhouse import ChdbClient
from pipeline.model import repository
from pipeline.model.approval import APPROVAL_JSON, REPORT_JSON, REPORT_PDF
from pipeline.model.deploy import DeployError, deploy
from pipeline.model.release import release_model
from pipeline.settings import Settings
from pipeline.validation.criteria import CriteriaError, ValidationCriteria, record_criteria
from pipeline.validation.report import ReportError, approve_report, make_report
from pipeline.validation.testsets import READ_ACTION, TestSetError, register_testset, training_refusal

PRODUCT = "tablet-round-white-10mm"
# score = clip(0.25 * mean(normalised input) + 0.5); normalised grey level L is (L / 255 - 0.5) / 0.25.
# Thresholds review 0.3, reject 0.8: grey 40 -> 0.157 pass, 60 -> 0.235 pass, 140 -> 0.549 review,
# 200 -> 0.784 review, 220 -> 0.863 reject, 100 -> 0.392 review, 50 -> 0.196 pass.
UNITS = [("none", 40), ("none", 60), ("none", 140), ("chip", 200), ("crack", 220), ("discoloration", 100),
         ("contamination", 50)]


@pytest.fixture()
def qa(embedded_settings: Settings, chdb_client: ChdbClient, tmp_path: Path) -> dict[str, Any]:
    """A fresh database and state folder, a repository with versions 1 and 2 of the contract
    classifier, a QA and an operator user, the trail and guard, and a registered test set."""
    db = f"valrep_{uuid.uuid4().hex[:8]}"
    chdb_client.apply_schema(db)
    repo = model_repository(tmp_path)
    for v in (1, 2):
        add_version(repo, "tablet_classifier", v, review=0.3, reject=0.8, bias=0.5, weight=0.25)
    settings = embedded_settings.model_copy(update={
        "state_dir": tmp_path / "state", "clickhouse": embedded_settings.clickhouse.model_copy(update={"database": db}),
        "audit": embedded_settings.audit.model_copy(update={"publish_timeout_s": 0.0}),
        "triton": embedded_settings.triton.model_copy(update={"model_repository": repo, "url": None}),
    })
    users = UserStore(chdb_client, db)
    users.add("quinn", "qa", "quinn-pass-123", "test")
    users.add("olga", "operator", "olga-pass-123", "test")
    trail = AuditTrail.from_settings(settings, chdb_client)
    guard = Guard(users, SessionStore(chdb_client, db), trail, 60)
    data = write_test_images(tmp_path / "testset", PRODUCT, UNITS)
    return {"settings": settings, "repo": repo, "trail": trail, "guard": guard, "data": data, "db": db,
            "quinn": Principal("quinn", "qa"), "olga": Principal("olga", "operator")}


def _register(c: dict[str, Any], name: str = "TS-1") -> None:
    register_testset(c["settings"], c["trail"], c["guard"], c["quinn"], c["data"], name, PRODUCT, "independent set")


def _criteria(c: dict[str, Any], version: int, **limits: Any) -> None:
    record_criteria(c["repo"], c["trail"], c["guard"], c["quinn"], "tablet_classifier", version,
                    ValidationCriteria(**limits), "set before the test")


def _report(c: dict[str, Any], version: int) -> dict[str, Any]:
    report, _ = make_report(c["settings"], c["trail"], c["guard"], c["quinn"], PRODUCT, "tablet_classifier",
                            version, "TS-1")
    return report


def test_a_locked_test_set_is_never_trained_on(qa: dict[str, Any], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    settings, data = qa["settings"], qa["data"]
    assert training_refusal(settings, data) is None  # nothing locked yet
    with pytest.raises(AccessDenied):
        register_testset(settings, qa["trail"], qa["guard"], qa["olga"], data, "TS-1", PRODUCT, "x")
    _register(qa)
    with pytest.raises(TestSetError, match="already registered"):
        _register(qa)
    (record,) = qa["trail"].store.by_action("validation.testset.register")
    assert (record.user, record.subject, record.new_value) == ("quinn", "TS-1", json.loads(
        (settings.state_dir / "test_sets.json").read_text())["TS-1"]["sha256"])
    (signature,) = [s for s in qa["trail"].store.by_action("audit.signature") if s.subject == record.record_id]
    assert signature.new_value == "approved"

    assert "is (or lies in) the locked test set 'TS-1'" in (training_refusal(settings, data) or "")
    copy = shutil.copytree(data, tmp_path / "copy")
    assert "same dataset hash" in (training_refusal(settings, copy) or "")
    mixed = write_test_images(tmp_path / "mixed", PRODUCT, [("none", 10), ("chip", 250)])
    shutil.copy(data / "good" / "000.png", mixed / "good" / "stolen.png")
    with open(mixed / "labels.csv", "a") as f:
        f.write(f"good/stolen.png,{PRODUCT},good,none\n")
    assert "holds 1 image(s) of the locked test set 'TS-1'" in (training_refusal(settings, mixed) or "")
    other = write_test_images(tmp_path / "other", PRODUCT, [("none", 10), ("chip", 250)])
    assert training_refusal(settings, other) is None

    # `linesight train` refuses before anything is trained; `linesight evaluate` (no user to
    # audit) before anything is read.
    monkeypatch.setenv("LINESIGHT_STATE_DIR", str(settings.state_dir))
    assert main(["train", "--product", PRODUCT, "--data", str(copy), "--quiet"]) == 1
    assert "refusing to train" in capsys.readouterr().err
    assert main(["evaluate", "--product", PRODUCT, "--data", str(mixed), "--predictions",
                 str(tmp_path / "p.csv")]) == 1
    assert "refusing to evaluate" in capsys.readouterr().err and not (tmp_path / "p.csv").exists()


def test_criteria_must_be_recorded_before_the_test(qa: dict[str, Any]) -> None:
    _register(qa)
    with pytest.raises(ReportError, match="no acceptance criteria recorded for tablet_classifier version 1"):
        _report(qa, 1)
    assert qa["trail"].store.by_action(READ_ACTION) == []  # refused before the set was read
    with pytest.raises(AccessDenied):
        record_criteria(qa["repo"], qa["trail"], qa["guard"], qa["olga"], "tablet_classifier", 1,
                        ValidationCriteria(max_review=0.5), "x")
    with pytest.raises(CriteriaError, match="name no rate"):
        ValidationCriteria()
    _criteria(qa, 1, max_review=1.0)
    _report(qa, 1)
    with pytest.raises(CriteriaError, match="criteria must be set before the test"):
        _criteria(qa, 1, max_review=0.1)
    # Every read of the locked set is in the trail: who, which set, why, for which version.
    (read,) = qa["trail"].store.by_action(READ_ACTION)
    assert (read.user, read.subject, read.reason) == ("quinn", "TS-1", "validation report of tablet_classifier@v1")
    assert read.detail_dict()["version"] == 1 and read.detail_dict()["model"] == "tablet_classifier"


def test_the_reports_figures_and_judgement(qa: dict[str, Any], tmp_path: Path) -> None:
    _register(qa)
    _criteria(qa, 1, min_detection=0.7, max_false_reject=0.5, max_review=0.5, min_class_detection=0.5)
    report = _report(qa, 1)
    m = report["evaluation"]["metrics"]
    assert (m["n_good"], m["n_defect"]) == (3, 4)
    assert m["detection_rate"] == pytest.approx(3 / 4) and m["false_reject_rate"] == pytest.approx(1 / 3)
    assert m["review_rate"] == pytest.approx(3 / 7) and m["good_in_review"] == 1 and m["defects_passed"] == 1
    assert m["per_class_recall"] == {"chip": 1.0, "contamination": 0.0, "crack": 1.0, "discoloration": 1.0}
    assert report["evaluation"]["thresholds"] == pytest.approx({"review": 0.3, "reject": 0.8})
    assert "onnxruntime" in report["evaluation"]["method"]
    by = {c["metric"]: c["passed"] for c in report["judgement"]["checks"]}
    assert by == {"detection_rate": True, "false_reject_rate": True, "review_rate": True,
                  "detection_rate[chip]": True, "detection_rate[contamination]": False,
                  "detection_rate[crack]": True, "detection_rate[discoloration]": True, "parity.passed": True}
    assert report["passed"] is False
    assert report["judgement"]["failed"] == ["detection of contamination 0.00 % (limit >= 50.00 %): FAIL"]
    use = report["intended_use"]
    assert use["defect_classes"] == ["chip", "contamination", "crack", "discoloration"]
    assert (use["input_space"]["height"], use["input_space"]["width"]) == (160, 160)
    assert report["test_set"]["sha256"] and report["knapp"] == "none recorded" and report["challenges"] == "none recorded"
    vdir = repository.version_dir(qa["repo"], "tablet_classifier", 1)
    assert json.loads((vdir / REPORT_JSON).read_text())["passed"] is False
    (made,) = qa["trail"].store.by_action("validation.report")
    assert made.detail_dict()["passed"] is False and len(made.new_value) == 64

    # A failed report is never approved.
    with pytest.raises(ReportError, match="acceptance criteria failed: detection of contamination"):
        approve_report(qa["repo"], qa["trail"], qa["guard"], qa["quinn"], "tablet_classifier", 1, "ok")

    # The PDF a person reads: the figures and the verdict are on the page, nothing runs off it.
    pages = pdf_pages(vdir / REPORT_PDF, tmp_path / "pages")
    assert_readable(pages, ["Validation report tablet_classifier version 1", "ACCEPTANCE CRITERIA FAILED",
                            "75.00 %", "33.33 %", "42.86 %", "TS-1", report["test_set"]["sha256"],
                            "detection of contamination 0.00 %", "review 0.3000, reject 0.8000",
                            "none recorded", "chip, contamination, crack, discoloration",
                            "no input-space reference in this version"])


def test_deploy_needs_an_approved_unchanged_report(qa: dict[str, Any]) -> None:
    settings, repo = qa["settings"], qa["repo"]
    vdir = repository.version_dir(repo, "tablet_classifier", 2)
    with pytest.raises(DeployError, match=r"version 2: no validation report"):
        deploy(settings, PRODUCT, 2, reason="x")
    three = add_version(repo, "tablet_classifier", 3, review=0.3, reject=0.8, bias=0.5, weight=0.25)
    card = json.loads((three / "model_card.json").read_text())
    card["release_gate"] = {"deployable": False, "failed": ["detection 90.00 % (limit >= 99.00 %)"]}
    (three / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(DeployError, match=r"version 3: no validation report"):  # a gate override does not waive it
        deploy(settings, PRODUCT, 3, reason="x", override_gate=True)
    _register(qa)
    _criteria(qa, 1, min_class_detection=0.5)
    _report(qa, 1)
    with pytest.raises(DeployError, match=r"acceptance criteria failed: detection of contamination .*; "
                                          r"report not approved"):
        deploy(settings, PRODUCT, 1, reason="x")
    _criteria(qa, 2, max_review=0.5)
    _report(qa, 2)
    with pytest.raises(DeployError, match=r"version 2: report not approved"):
        deploy(settings, PRODUCT, 2, reason="x")
    with pytest.raises(AccessDenied):
        approve_report(repo, qa["trail"], qa["guard"], qa["olga"], "tablet_classifier", 2, "ok")
    approval, record, signature = approve_report(repo, qa["trail"], qa["guard"], qa["quinn"], "tablet_classifier",
                                                 2, "reviewed the report")
    assert (record.action, record.user, record.new_value) == ("validation.approve", "quinn", approval["report_sha256"])
    assert (signature.subject, signature.new_value, signature.detail_dict()["signed_hash"]) == (
        record.record_id, "approved", record.record_hash)

    # Tampering with the report after its approval: deploy and a new approval refuse.
    good_json = (vdir / REPORT_JSON).read_bytes()
    (vdir / REPORT_JSON).write_bytes(good_json.replace(b'"passed": true', b'"passed": true '))
    with pytest.raises(DeployError, match="report changed after approval"):
        deploy(settings, PRODUCT, 2, reason="x")
    with pytest.raises(ReportError, match="changed after it was generated"):
        approve_report(repo, qa["trail"], qa["guard"], qa["quinn"], "tablet_classifier", 2, "again")
    (vdir / REPORT_JSON).write_bytes(good_json)

    # An approval file the trail does not back is refused on the audited path.
    forged = json.loads((vdir / APPROVAL_JSON).read_text())
    (vdir / APPROVAL_JSON).write_text(json.dumps({**forged, "approval_record": "system#0"}))
    with pytest.raises(DeployError, match="not in the audit trail"):
        release_model(settings, qa["trail"], qa["guard"], qa["quinn"], "deploy", PRODUCT, 2, "trial")
    (vdir / APPROVAL_JSON).write_text(json.dumps(forged))

    result, deployed, _ = release_model(settings, qa["trail"], qa["guard"], qa["quinn"], "deploy", PRODUCT, 2,
                                        "approved report")
    assert (result.from_version, result.to_version) == (1, 2)  # type: ignore[attr-defined]
    assert result.entry["validation_report"] == "approved"  # type: ignore[attr-defined]
    assert repository.live_version(repository.read_config(repo, "tablet_classifier")) == 2
    # A rollback returns to the version live before (v1, whose report failed): not refused, recorded.
    back = release_model(settings, qa["trail"], qa["guard"], qa["quinn"], "rollback", PRODUCT, None, "undo")[0]
    assert back.entry["validation_report"][0].startswith("acceptance criteria failed")  # type: ignore[attr-defined]


def test_the_cli_from_registration_to_deploy(qa: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str], embedded_settings: Settings) -> None:
    # chDB: the session's one data directory, so the session's state folder (a set name of its own).
    ts = f"TS-{uuid.uuid4().hex[:6]}"
    for k, v in {"LINESIGHT_STATE_DIR": str(embedded_settings.state_dir), "LINESIGHT_CLICKHOUSE__DATABASE": qa["db"],
                 "LINESIGHT_AUDIT__PUBLISH_TIMEOUT_S": "0",
                 "LINESIGHT_TRITON__MODEL_REPOSITORY": str(qa["repo"]),
                 # No Triton runs here: a free port, never whatever serves on the default one.
                 "LINESIGHT_TRITON__EMBEDDED_GRPC_PORT": str(embedded_settings.triton.embedded_grpc_port)}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("LINESIGHT_CLICKHOUSE__URL", raising=False)
    monkeypatch.delenv("LINESIGHT_TRITON__URL", raising=False)
    (tmp_path / "pw").write_text("quinn-pass-123\n")
    auth = ["--user", "quinn", "--password-file", str(tmp_path / "pw")]
    assert main(["validation", "testset", "register", str(qa["data"]), "--name", ts, "--product", PRODUCT,
                 "--reason", "set", *auth]) == 0
    assert main(["validation", "report", PRODUCT, "--version", "2", "--testset", ts, *auth]) == 1
    assert "no acceptance criteria recorded" in capsys.readouterr().err
    (tmp_path / "c.toml").write_text("[criteria]\nmin_detection = 0.7\nmax_review = 0.5\n")
    assert main(["validation", "criteria", PRODUCT, "--version", "2", "--file", str(tmp_path / "c.toml"),
                 "--reason", "QA plan VP-7", *auth]) == 0
    assert main(["validation", "status", PRODUCT, "--version", "2"]) == 1
    assert "no validation report" in capsys.readouterr().out
    assert main(["validation", "report", PRODUCT, "--version", "2", "--testset", ts, *auth]) == 0
    assert "criteria met" in capsys.readouterr().out
    assert main(["models", "deploy", PRODUCT, "--version", "2", "--reason", "r", *auth]) == 1
    assert "report not approved" in capsys.readouterr().err
    assert main(["validation", "approve", PRODUCT, "--version", "2", "--reason", "reviewed", *auth]) == 0
    assert main(["validation", "status", PRODUCT, "--version", "2"]) == 0
    assert main(["models", "deploy", PRODUCT, "--version", "2", "--reason", "validated", *auth]) == 0
    assert "version 1 -> 2" in capsys.readouterr().out


def test_knapp_and_challenge_results_go_into_the_report(qa: dict[str, Any], chdb_client: ChdbClient,
                                                        tmp_path: Path) -> None:
    from pipeline.recipes.schema import parse_recipe
    from pipeline.validation.challenge import ChallengeResult
    from pipeline.validation.report import challenge_rows

    recipe = parse_recipe({"id": "tablets", "version": 3, "product": PRODUCT,
                           "inspection": [{"name": "appearance", "kind": "classifier", "model": "tablet_inspector"}]})
    run = ChallengeResult(run_id="r1", line="line-1", lot="L-77", phase="start", recipe="tablets@v3", set_id="CS-1",
                          set_sha256="ab" * 32, units=6, defects=4, defects_rejected=4, good=2, good_removed=0,
                          good_review=0, good_removed_limit=0, review_limit=0, passed=True, user="quinn",
                          started_ns=1_700_000_000_000_000_000, finished_ns=1_700_000_060_000_000_000,
                          audit_record="system#99", signature="system#100")
    chdb_client.insert_json_rows(f"{qa['db']}.challenge_runs", [run.row()])
    study = {"classifier": "tablet_classifier", "model_version": 2, "verdict": "equivalent or better",
             "generated": "2026-12-01T10:00:00+00:00", "false_reject": {"presentations": 5000, "rate": 0.0058},
             "figures": {"rze": 1.276, "fq_manual": 10.73, "fq_machine": 13.7, "reject_zone_units": 14}}
    (tmp_path / "knapp.json").write_text(json.dumps(study))
    (tmp_path / "other.json").write_text(json.dumps({**study, "model_version": 1}))
    _register(qa)
    _criteria(qa, 2, max_review=1.0)
    rows = challenge_rows(chdb_client, qa["db"], [recipe])
    assert [(r["lot"], r["phase"], r["passed"]) for r in rows] == [("L-77", "start", True)]
    args = (qa["settings"], qa["trail"], qa["guard"], qa["quinn"], PRODUCT, "tablet_classifier", 2, "TS-1", [recipe])
    with pytest.raises(ReportError, match="judged tablet_classifier version 1, not tablet_classifier version 2"):
        make_report(*args, tmp_path / "other.json", rows)
    assert qa["trail"].store.by_action(READ_ACTION) == []  # refused before the locked set was read
    report, _ = make_report(*args, tmp_path / "knapp.json", rows)
    assert report["knapp"]["verdict"] == "equivalent or better" and report["knapp"]["figures"]["rze"] == 1.276
    assert report["challenges"][0]["audit_record"] == "system#99"
    assert report["intended_use"]["recipes"] == ["tablets@v3"]
    assert report["intended_use"]["stations"] == {"tablets@v3": ["one camera"]}
    pages = pdf_pages(repository.version_dir(qa["repo"], "tablet_classifier", 2) / REPORT_PDF, tmp_path / "p")
    assert_readable(pages, ["equivalent or better: RZE 1.276", "L-77", "system#99", "tablets@v3: one camera",
                            "ACCEPTANCE CRITERIA MET"])
