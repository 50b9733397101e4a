"""`linesight models deploy|rollback` into a real running line (Tansu broker, embedded
tritonserver, Faust worker, actuator, chDB sink) that loses no unit and switches the judging
version in place. The offline refusals and history are tests/unit/test_deploy.py.

Every model here is a tiny contract-conforming classifier built by `contract_models`, in a
temporary repository: nothing depends on the trained artifacts under ``triton_models/``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from contract_models import add_version, classifier_onnx, model_repository, own_triton
from support import approve_validation_report, eventually

from pipeline.analytics.run_report import build_report
from pipeline.clickhouse import ClickHouseClient
from pipeline.demo.run import pipeline_stack, wait_drained
from pipeline.demo.services import Services
from pipeline.embedded.process import free_port
from pipeline.gateway.publisher import FramePublisher, run_simulated_line
from pipeline.model import repository
from pipeline.model.deploy import DeployError, TritonTarget, deploy, list_models, rollback
from pipeline.settings import Settings

PRODUCT = "tablet-round-white-10mm"


@pytest.fixture(scope="module")
def live_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models named by convention for the product (not in settings.stream.product_models)."""
    root = tmp_path_factory.mktemp("deploy-repo")
    c = "tablet_round_white_10mm_classifier"
    repo = model_repository(root, classifier=c, inspector="tablet_round_white_10mm_inspector")
    add_version(repo, c, 1, review=0.3, reject=0.7, bias=0.2)  # passes everything
    add_version(repo, c, 2, review=0.5, reject=0.5, bias=0.9)  # rejects everything
    add_version(repo, c, 3, review=0.3, reject=0.7, bias=0.5)  # sends everything to review
    add_version(repo, c, 4, review=0.3, reject=0.7, bias=0.5, parity_passed=False)
    # Triton cannot load it: its input is 128 x 128, the config's 160 x 160 (onnxruntime runs it,
    # so its validation report can be made and approved like any other's).
    five = add_version(repo, c, 5, review=0.3, reject=0.7, bias=0.5)
    data = classifier_onnx(5, 0.3, 0.7, 0.5, size=128)
    (five / repository.ONNX_FILE).write_bytes(data)
    card = json.loads((five / repository.CARD_JSON).read_text())
    card["onnx"]["sha256"] = hashlib.sha256(data).hexdigest()
    (five / repository.CARD_JSON).write_text(json.dumps(card))
    return repo


@pytest.fixture(scope="module")
def live_triton(
    live_repo: Path, embedded_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """A real tritonserver on `live_repo`; yields the settings `linesight models` would use."""
    with own_triton(embedded_settings, live_repo, tmp_path_factory.mktemp("deploy-triton")) as (settings, _):
        yield settings

@pytest.fixture(scope="module")
def line(
    embedded_settings: Settings, broker: str, live_triton: Settings
) -> Iterator[tuple[Settings, ClickHouseClient, Services]]:
    """Worker, actuator and sink on their own topics, calling the deploy test's Triton."""
    base, k = embedded_settings, embedded_settings.kafka
    suffix = uuid.uuid4().hex[:6]
    topics = {
        name: f"{getattr(k, name)}-deploy-{suffix}"
        for name in ("topic_frames", "topic_captures", "topic_results", "topic_rejects", "topic_deadletter", "topic_truth", "topic_actuations")
    }
    settings = base.model_copy(
        update={
            "kafka": k.model_copy(update={"bootstrap_servers": broker} | topics),
            "triton": base.triton.model_copy(update={"url": TritonTarget.from_settings(live_triton).url}),
            "stream": base.stream.model_copy(
                update={"web_port": free_port(), "product_models": {}, "app_id": f"deploy-worker-{suffix}"}
            ),
            "services": base.services.model_copy(
                update={
                    "sink_health_port": free_port(),
                    "actuator_health_port": free_port(),
                    "sink_group": f"deploy-sink-{suffix}",
                    "actuator_group": f"deploy-actuator-{suffix}",
                }
            ),
            "simulator": base.simulator.model_copy(update={"product": PRODUCT, "rate_per_s": 25.0, "seed": 3}),
        }
    )
    with pipeline_stack(settings, workers=1) as stack:
        yield stack


def _versions(client: ClickHouseClient, db: str, lot: str) -> dict[str, int]:
    rows = client.query(
        f"SELECT model_version, count() FROM {db}.inspections FINAL WHERE lot = {{lot:String}} GROUP BY model_version",
        {"lot": lot},
    ).rows
    return {str(v): int(n) for v, n in rows}


def _run_lot(settings: Settings, services: Services, lot: str, count: int) -> int:
    publisher = FramePublisher(settings)
    run_simulated_line(settings, publisher, services.stop_event, count=count, lot=lot)
    publisher.close()
    return publisher.stats.published


@pytest.mark.timeout(300)
def test_deploy_and_rollback_while_the_line_runs(
    line: tuple[Settings, ClickHouseClient, Services], live_triton: Settings
) -> None:
    resolved, client, services = line
    db = resolved.clickhouse.database
    classifier = "tablet_round_white_10mm_classifier"
    repo = live_triton.triton.model_repository
    # What a deploy requires: each version's approved validation report (docs/validation.md).
    gmp = live_triton.model_copy(update={
        "clickhouse": live_triton.clickhouse.model_copy(update={"database": f"deploy_gmp_{uuid.uuid4().hex[:6]}"}),
        "audit": live_triton.audit.model_copy(update={"publish_timeout_s": 0.0}),
    })
    for version in (2, 3, 5):
        approve_validation_report(gmp, client, classifier, version)
    target = TritonTarget.from_settings(live_triton)
    assert target.ready_versions(classifier) == [1]
    # The python-backend twin serves every contract tensor with the contract's types.
    import numpy as np
    import tritonclient.grpc as grpcclient
    from PIL import Image

    from pipeline.wire.codec import encode_png
    from streams.triton_client import OUTPUTS

    image = np.array([[encode_png(Image.new("RGB", (160, 160), (90, 90, 90)))]] * 2, dtype=np.object_)
    tensor = grpcclient.InferInput("IMAGE", [2, 1], "BYTES")
    tensor.set_data_from_numpy(image)
    answer = target.client().infer(
        "tablet_round_white_10mm_inspector", [tensor], outputs=[grpcclient.InferRequestedOutput(o) for o in OUTPUTS]
    )
    got = {o: answer.as_numpy(o) for o in OUTPUTS}
    assert {o: (a.dtype.name, a.shape) for o, a in got.items()} == {
        "SCORE": ("float32", (2, 1)),
        "CLASS_PROBS": ("float32", (2, 5)),
        "THRESHOLDS": ("float32", (2, 2)),
        "MODEL_VERSION": ("int64", (2, 1)),
    }
    np.testing.assert_allclose(got["THRESHOLDS"], [[0.3, 0.7]] * 2, rtol=1e-6)
    assert got["MODEL_VERSION"].tolist() == [[1], [1]] and np.allclose(got["SCORE"], 0.2)

    # Frames flow continuously while version 2 is deployed.
    lot = f"DEPLOY-{uuid.uuid4().hex[:6]}"
    line_stop = threading.Event()
    publisher = FramePublisher(resolved)
    feeder = threading.Thread(
        target=run_simulated_line, args=(resolved, publisher, line_stop), kwargs={"lot": lot}, daemon=True
    )
    feeder.start()
    try:
        eventually(lambda: _versions(client, db, lot).get("1", 0) >= 10, what="results from version 1")
        started_ns = time.time_ns()
        result = deploy(live_triton, PRODUCT, 2, reason="test: deploy under load")
        deployed_ns = time.time_ns()
        assert (result.from_version, result.to_version) == (1, 2) and "serves version 2" in result.triton
        assert target.ready_versions(classifier) == [2]
        captured_after = lambda: client.query(  # noqa: E731
            f"""SELECT count() FROM {db}.inspections FINAL
                WHERE lot = {{lot:String}} AND toUnixTimestamp64Micro(capture_time) > {deployed_ns // 1000}""",
            {"lot": lot},
        ).scalar()
        eventually(lambda: captured_after() >= 10, what="results for units captured after the deploy")
    finally:
        line_stop.set()
        feeder.join(30)
        publisher.close()
    published = publisher.stats.published
    wait_drained(client, db, lot, published, services.stop_event, timeout_s=120)

    report = build_report(client, db, lot)
    assert report.published == published and report.every_unit_has_one_verdict, report.to_text()
    assert report.every_reject_fired, report.to_text()
    assert report.failsafe_rejected == 0 and report.dead_lettered == 0, report.to_text()
    assert report.model_versions == [f"{classifier}:1", f"{classifier}:2"]
    rows = client.query(
        f"""SELECT model_version, verdict, threshold, review_threshold, defect, toUnixTimestamp64Micro(capture_time)
            FROM {db}.inspections FINAL WHERE lot = {{lot:String}}""",
        {"lot": lot},
    ).rows
    assert len(rows) == published
    for version, verdict, reject, review, defect, _ in rows:  # judged with its version's own numbers
        expected = {"1": ("pass", 0.7, 0.3, "none"), "2": ("reject", 0.5, 0.5, "chip")}[version]
        # "chip": version 2's class names, read from the config when version 2 first answered
        assert (verdict, round(reject, 4), round(review, 4), defect) == expected
    # Captured after the deploy returned: judged by version 2; before it began: mostly version 1.
    after = [v for v, *_, t in rows if t * 1000 > deployed_ns]
    before = [v for v, *_, t in rows if t * 1000 < started_ns]
    assert after and set(after) == {"2"}
    assert before.count("1") >= 10
    assert report.passed + report.rejected + report.review == published

    # Rollback: back to version 1, in place.
    back = rollback(live_triton, PRODUCT, reason="test: rollback")
    assert (back.from_version, back.to_version) == (2, 1)
    assert target.ready_versions(classifier) == [1]
    lot1 = f"ROLLBACK-{uuid.uuid4().hex[:6]}"
    n = _run_lot(resolved, services, lot1, 12)
    wait_drained(client, db, lot1, n, services.stop_event, timeout_s=60)
    assert _versions(client, db, lot1) == {"1": n}

    # A grey-zone version: every unit is a review, removed by the gate, counted apart.
    deploy(live_triton, "tablet_round_white_10mm_classifier", 3, reason="test: review")
    lot3 = f"REVIEW-{uuid.uuid4().hex[:6]}"
    n = _run_lot(resolved, services, lot3, 12)
    wait_drained(client, db, lot3, n, services.stop_event, timeout_s=60)
    report = build_report(client, db, lot3)
    assert (report.review, report.passed, report.rejected) == (n, 0, 0), report.to_text()
    assert report.every_reject_fired and report.every_unit_has_one_verdict, report.to_text()
    assert report.escaped_defects == 0 and report.good_in_review == report.published - report.defects_published
    assert f"review                   {n:>8}" in report.to_text()
    assert json.loads(report.to_json())["review"] == n

    # Refused (parity failed) and failed (Triton cannot load it): version 3 keeps serving.
    with pytest.raises(DeployError, match="parity check failed"):
        deploy(live_triton, PRODUCT, 4)
    with pytest.raises(DeployError, match=r"deploy of .* version 5 failed: .*previous config restored"):
        deploy(live_triton, PRODUCT, 5, reason="test: unloadable")
    assert repository.live_version(repository.read_config(repo, classifier)) == 3
    assert target.ready_versions(classifier) == [3]

    history = repository.deployments(repo, classifier)
    assert [(e["action"], e["from"], e["to"]) for e in history] == [
        ("deploy", 1, 2), ("rollback", 2, 1), ("deploy", 1, 3), ("deploy-failed", 3, 5)
    ]
    listed = list_models(live_triton)[0]
    assert listed.live_version == 3 and listed.served_versions == [3]
    assert [v.version for v in listed.versions if v.served] == [3]
