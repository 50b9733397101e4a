"""Shadow deployment, offline: what a shadow loads (never the live config), which frames it
scores, its verdict message and table row, and `models compare` on known rows in chDB. The
running-line guarantee is tests/e2e/test_shadow_running_line.py."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from contract_models import add_version, model_repository, repo_settings
from support import Msg

from pipeline.analytics.shadow_compare import compare
from pipeline.analytics.sink import shadow_row
from pipeline.cli.main import build_parser
from pipeline.clickhouse import ChdbClient
from pipeline.model import repository
from pipeline.model.deploy import DeployError
from pipeline.model.shadow import SUFFIX, classifier_config, classifier_files, resolve
from pipeline.settings import Settings
from pipeline.wire.messages import FrameMeta
from pipeline.wire.shadow import ShadowVerdict
from streams.shadow import _Frame, production_frames, to_verdict
from streams.triton_client import Failed, Scored

PRODUCT = "tablet-round-white-10mm"
C = "tablet_round_white_10mm_classifier"


@pytest.fixture()
def shadow_settings(tmp_path: Path, embedded_settings: Settings) -> Settings:
    repo = model_repository(tmp_path, classifier=C, inspector="tablet_round_white_10mm_inspector")
    add_version(repo, C, 1, review=0.3, reject=0.7, bias=0.2)
    add_version(repo, C, 2, review=0.4, reject=0.6, bias=0.9)
    add_version(repo, C, 3, review=0.3, reject=0.7, bias=0.5, parity_passed=False)
    s = repo_settings(embedded_settings, repo, tmp_path / "state")
    return s.model_copy(update={"stream": s.stream.model_copy(update={"product_models": {}})})


def test_resolve_and_what_is_loaded_leave_the_live_config_alone(shadow_settings: Settings) -> None:
    repo = shadow_settings.triton.model_repository
    before = repository.config_path(repo, C).read_bytes()
    m = resolve(shadow_settings, PRODUCT, 2)
    assert (m.classifier, m.version, m.live_version, m.shadow_classifier) == (C, 2, 1, C + SUFFIX)
    # The live ensemble's steps, the classifier step on the shadow classifier.
    assert [s.model for s in m.steps] == ["tablet_preprocess", C + SUFFIX]
    embedded = classifier_config(repo, C, 2, embedded=True)
    assert embedded.name == C + SUFFIX and list(embedded.version_policy.specific.versions) == [2]
    assert embedded.backend == "python" and not embedded.platform
    native = classifier_config(repo, C, 2, embedded=False)
    assert native.platform == "onnxruntime_onnx"
    assert set(classifier_files(repo, C, 2, embedded=True)) == {"file:2/model.onnx", "file:2/model.py"}
    assert set(classifier_files(repo, C, 2, embedded=False)) == {"file:2/model.onnx"}
    assert repository.config_path(repo, C).read_bytes() == before
    with pytest.raises(DeployError, match="is the live version"):
        resolve(shadow_settings, PRODUCT, 1)
    with pytest.raises(DeployError, match="parity check failed"):
        resolve(shadow_settings, PRODUCT, 3)
    with pytest.raises(DeployError, match="no version 9"):
        resolve(shadow_settings, PRODUCT, 9)


def _frame_msg(unit: str, product: str = PRODUCT, purpose: str = "", offset: int = 0) -> Msg:
    meta = FrameMeta(unit, "L1", "cam", product, 1_796_000_000_000_000_000, "image/png", "LOT", purpose=purpose)
    return Msg("frames", b"\x89PNG-bytes", offset, meta.to_headers())


def test_a_shadow_scores_only_production_frames_of_its_product() -> None:
    msgs = [
        _frame_msg("u1"),
        _frame_msg("u2", purpose="challenge"),
        _frame_msg("u3", product="tablet-oval-yellow-14mm"),
        Msg("frames", b"x", 3, [("ls-unit-id", b"u4")]),  # metadata the worker refuses
        _frame_msg("u5"),
    ]
    assert [f.meta.unit_id for f in production_frames(msgs, PRODUCT)] == ["u1", "u5"]


def test_verdict_message_and_row(shadow_settings: Settings) -> None:
    m = resolve(shadow_settings, PRODUCT, 2)
    frame = production_frames([_frame_msg("u1")], PRODUCT)[0]
    assert isinstance(frame, _Frame)
    scored = Scored(0.65, {"good": 0.35, "chip": 0.6, "crack": 0.05}, 0.4, 0.6, 2, C)
    v = to_verdict(frame, scored, m, "host-1")
    assert (v.verdict, v.defect, v.model_version, v.live_version) == ("reject", "chip", 2, 1)
    assert to_verdict(frame, Scored(0.1, {"good": 0.9, "chip": 0.1}, 0.4, 0.6, 2, C), m, "h").defect == "none"
    failed = to_verdict(frame, Failed("triton: boom"), m, "h")
    assert (failed.verdict, failed.score, failed.error) == ("failed", None, "triton: boom")
    back = ShadowVerdict.from_json(v.to_json())
    assert back == v
    row = shadow_row(Msg("shadow", v.to_json(), 7, partition=1))
    assert (row["unit_id"], row["verdict"], row["model_version"], row["kafka_offset"]) == ("u1", "reject", 2, 7)


def test_cli_parses_shadow_and_compare() -> None:
    parser = build_parser()
    a = parser.parse_args(["models", "shadow", PRODUCT, "--version", "2", "--reason", "trial"])
    assert (a.product, a.version, a.reason, a.unload, a.force, a.func.__name__) == (
        PRODUCT, 2, "trial", False, False, "cmd_shadow")
    with pytest.raises(SystemExit):
        parser.parse_args(["models", "shadow", PRODUCT, "--version", "2"])  # a reason is required
    a = parser.parse_args(["models", "compare", PRODUCT, "--since", "2026-12-05T08:00", "--json"])
    assert (a.version, a.since, a.json, a.func.__name__) == (None, "2026-12-05T08:00", True, "cmd_compare")


def _seed(client: ChdbClient, db: str, with_reviews: bool) -> None:
    t0 = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
    # unit: live verdict, candidate verdict, truth label ("" unknown), review decision
    units = {
        "a": ("pass", "pass", "good", ""),
        "b": ("pass", "reject", "good", ""),
        "c": ("reject", "pass", "defect", ""),
        "d": ("review", "review", "good", "good"),
        "e": ("review", "pass", "", "defect"),
        "f": ("reject", "reject", "defect", ""),
    }
    live, shadow, truth, reviews = [], [], [], []
    for i, (u, (lv, cv, label, decision)) in enumerate(units.items()):
        at = t0 + timedelta(seconds=i)
        common = {"unit_id": u, "line": "L1", "product": PRODUCT, "lot": "LOT", "capture_time": at}
        live.append(common | {"verdict": lv, "cause": "model", "inspected": True, "model_version": "1",
                              "received_time": at, "inferred_time": at})
        shadow.append(common | {"verdict": cv, "model_name": C, "model_version": 2, "live_version": 1,
                                "scored_time": at})
        if label:
            truth.append(common | {"label": label, "defect": "chip" if label == "defect" else "none"})
        if decision:
            reviews.append({"unit_id": u, "line": "L1", "lot": "LOT", "decision": decision, "decided_time": at})
    # Not compared: a frame the candidate could not score, a challenge unit, a fail-safe reject,
    # an older candidate version.
    shadow.append({"unit_id": "g", "line": "L1", "product": PRODUCT, "verdict": "failed", "model_name": C,
                   "model_version": 2, "capture_time": t0, "scored_time": t0, "error": "triton: x"})
    live.append({"unit_id": "h", "line": "L1", "product": PRODUCT, "verdict": "pass", "cause": "model",
                 "purpose": "challenge", "capture_time": t0, "received_time": t0, "inferred_time": t0})
    shadow.append({"unit_id": "h", "line": "L1", "product": PRODUCT, "verdict": "pass", "model_name": C,
                   "model_version": 2, "capture_time": t0, "scored_time": t0})
    shadow.append({"unit_id": "a", "line": "L1", "product": PRODUCT, "verdict": "reject", "model_name": C,
                   "model_version": 1, "capture_time": t0, "scored_time": t0})
    client.insert_json_rows(f"{db}.inspections", live)
    client.insert_json_rows(f"{db}.shadow_inspections", shadow)
    client.insert_json_rows(f"{db}.ground_truth", truth)
    if with_reviews:
        client.insert_json_rows(f"{db}.review_decisions", reviews)


@pytest.mark.parametrize("with_reviews", [False, True])
def test_compare_on_known_rows(chdb_client: ChdbClient, with_reviews: bool) -> None:
    db = f"shadow_{uuid.uuid4().hex[:8]}"
    chdb_client.apply_schema(db)
    if with_reviews:  # the review stage's table (docs/review.md); only the columns compare reads
        chdb_client.command(f"""CREATE TABLE IF NOT EXISTS {db}.review_decisions (unit_id String, line String,
            lot String, decision String, decided_time DateTime64(6, 'UTC')) ENGINE = ReplacingMergeTree
            ORDER BY (line, unit_id)""")
    else:
        chdb_client.command(f"DROP TABLE IF EXISTS {db}.review_decisions")
    _seed(chdb_client, db, with_reviews)
    r = compare(chdb_client, db, PRODUCT, C)  # the newest shadowed version: 2
    assert (r.candidate_version, r.units, r.agreed, r.candidate_failed) == (2, 6, 3, 1)
    assert r.live_versions == {"1": 6}
    assert r.table["pass"] == {"pass": 1, "review": 0, "reject": 1}
    assert r.table["review"] == {"pass": 1, "review": 1, "reject": 0}
    assert r.table["reject"] == {"pass": 1, "review": 0, "reject": 1}
    assert r.candidate_pass_live_removed == ["c", "e"] and r.candidate_removed_live_pass == ["b"]
    t = r.truth
    assert (t.defective, t.good) == (2, 3)
    assert (t.live_detected, t.candidate_detected, t.live_false_rejects, t.candidate_false_rejects) == (2, 1, 1, 2)
    text = r.to_text()
    assert "agreement                      50.00 % (3 of 6)" in text
    assert "candidate would pass, live removed (review/reject): 2: c, e" in text
    doc = json.loads(r.to_json())
    assert doc["agreement"] == 0.5 and doc["truth"]["candidate_detection"] == 0.5
    if with_reviews:
        rv = r.reviews
        assert (rv.good, rv.defect, rv.cannot_decide, rv.candidate_passed_good, rv.candidate_removed_defect) == (
            1, 1, 0, 0, 0)
        assert "review decisions by a person: 1 good, 1 defect" in text
    else:
        assert "review decisions: none recorded (no review_decisions table)" in text
    assert compare(chdb_client, db, PRODUCT, C, version=1).units == 1
    assert compare(chdb_client, db, "other-product", C).to_text().startswith("no shadow verdicts recorded")
    assert compare(chdb_client, db, PRODUCT, C, line="L2").units == 0
    since = compare(chdb_client, db, PRODUCT, C, since=datetime(2026, 12, 5, 8, 0, 3, tzinfo=UTC))
    assert since.units == 3 and since.candidate_pass_live_removed_n == 1


class _FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    def produce(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key, value))

    def flush(self, timeout: float = 0) -> int:
        return 0

    def __len__(self) -> int:
        return 0


class _FakeScorer:
    def __init__(self, outcomes: list[Scored | Failed]) -> None:
        self.outcomes = outcomes

    def score(self, images: list[bytes]) -> list[Scored | Failed]:
        return self.outcomes[: len(images)]

    def close(self) -> None: ...


def test_handle_publishes_only_on_the_shadow_topic_and_reloads_a_lost_model(
    shadow_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streams.shadow as shadow_mod

    s = shadow_settings.model_copy(update={"kafka": shadow_settings.kafka.model_copy(
        update={"bootstrap_servers": "127.0.0.1:9"})})
    service = shadow_mod.ShadowService(s, resolve(s, PRODUCT, 2), "127.0.0.1:9")
    producer = _FakeProducer()
    service.producer = producer  # type: ignore[assignment]
    service.scorer = _FakeScorer([Scored(0.9, {"good": 0.1, "chip": 0.9}, 0.4, 0.6, 2, C)])  # type: ignore[assignment]
    service.handle([_frame_msg("u1", offset=0), _frame_msg("u2", purpose="challenge", offset=1)])
    assert [(t, k) for t, k, _ in producer.sent] == [(s.kafka.topic_shadow, b"u1")]
    assert (service.counts.scored, service.counts.failed, service.counts.skipped) == (1, 0, 1)

    loads: list[str] = []
    monkeypatch.setattr(shadow_mod, "load_shadow", lambda settings, models: loads.append(models.shadow_classifier))
    lost = Failed(f"triton: Request for unknown model: '{C}__shadow' is not found")
    service.scorer = _FakeScorer([lost, lost])  # type: ignore[assignment]
    service.handle([_frame_msg("u3", offset=2), _frame_msg("u4", offset=3)])
    service.handle([_frame_msg("u5", offset=4)])  # within RELOAD_INTERVAL_S: not again
    assert loads == [C + SUFFIX] and service.reloads == 1
    assert [ShadowVerdict.from_json(v).verdict for _, _, v in producer.sent[1:]] == ["failed"] * 3
