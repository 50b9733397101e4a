"""Per-lot reconciliation of the reject gate, computed in ClickHouse (chDB): every unit is
inspected-passed, inspected-rejected or fail-safe rejected; anything else is unaccounted and
fails the report. `linesight report batch LOT` prints it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest
from support import Msg

from pipeline.analytics.reconciliation import build_reconciliation
from pipeline.analytics.sink import ClickHouseSink
from pipeline.cli.main import main
from pipeline.clickhouse import ChdbClient
from pipeline.settings import Settings
from pipeline.wire.messages import AlarmRecord, GateEventRecord, GroundTruth, InspectionResult, UnitVerdict

S = 1_000_000_000




def _gate(unit: str, lot: str, outcome: str, cause: str, t0: int, verdict: str = "", admitted: bool = True,
          line: str = "line-1") -> GateEventRecord:
    deadline = t0 + 2 * S
    return GateEventRecord(
        unit_id=unit, line=line, lot=lot, outcome=outcome, cause=cause, admitted=admitted, deadline_ns=deadline,
        fire_at_ns=deadline, cutoff_ns=deadline - 20_000_000, window_start_ns=deadline - 20_000_000,
        window_end_ns=deadline + 20_000_000, acted_ns=deadline, actuator="a",
        verdict_ns=t0 + S // 2 if verdict else None, fired_ns=deadline if outcome == "fired" else None,
        verdict=verdict, capture_ns=t0,
    )


def _result(unit: str, lot: str, verdict: str, t0: int, cause: str = "model", line: str = "line-1") -> InspectionResult:
    return InspectionResult(
        unit_id=unit, line=line, camera="c", product="p", lot=lot, verdict=verdict, cause=cause,  # type: ignore[arg-type]
        inspected=cause == "model", defect="none", score=0.1, threshold=0.5, model_name="m", model_version="1",
        capture_ns=t0, received_ns=t0, inferred_ns=t0 + S // 2, worker="w",
    )


@pytest.fixture
def stored(chdb_client: ChdbClient, embedded_settings: Settings) -> str:
    lot = f"REC-{uuid.uuid4().hex[:6]}"
    k = embedded_settings.kafka
    t0 = 1_700_000_000 * S
    msgs: list[Msg] = []
    base = uuid.uuid4().int % 10**9  # offsets make the sink's dedup token: new ones per fixture

    def add(topic: str, value: bytes) -> None:
        msgs.append(Msg(topic, value, base + len(msgs)))

    plan = [  # unit, gate outcome, gate cause, verdict action at the gate, stored verdict
        ("p1", "passed", "model", "pass", "pass"),
        ("p2", "passed", "model", "pass", "pass"),
        ("r1", "fired", "model", "reject", "reject"),
        ("v1", "fired", "model", "reject", "review"),
        ("l1", "fired", "late", "", "pass"),  # verdict came after the cutoff
        ("l2", "fired", "late", "", None),  # no verdict at all (worker dead)
        ("f1", "fired", "failsafe", "pass", "pass"),  # pipeline unhealthy: rejected anyway
        ("f2", "fired", "failsafe", "reject", "reject"),  # worker could not inspect it
    ]
    for i, (unit, outcome, cause, action, verdict) in enumerate(plan):
        t = t0 + i * S // 10
        add(k.topic_gate_events, _gate(unit, lot, outcome, cause, t, action).to_json())
        if verdict:
            add(k.topic_results, _result(unit, lot, verdict, t, "failsafe" if unit == "f2" else "model").to_json())
        add(k.topic_truth, GroundTruth(unit, "line-1", lot, "p", "good", "none", t).to_json())
    # Line 2: a unit whose fire was not confirmed, and one the gate never saw.
    add(k.topic_gate_events, _gate("x1", lot, "fire_failed", "model", t0, "reject", line="line-2").to_json())
    add(k.topic_results, _result("x1", lot, "reject", t0, line="line-2").to_json())
    add(k.topic_results, _result("x2", lot, "pass", t0, line="line-2").to_json())
    add(k.topic_alarms, AlarmRecord("a:pipeline_unhealthy:1", "pipeline_unhealthy", True, t0 + S, "no heartbeat from worker", "a").to_json())
    add(k.topic_alarms, AlarmRecord("a:pipeline_unhealthy:1", "pipeline_unhealthy", False, t0 + S, "no heartbeat from worker", "a",
                                    cleared_ns=t0 + 2 * S, clear_reason="all components healthy").to_json())
    add(k.topic_alarms, AlarmRecord("a:plc_unreachable:0", "plc_unreachable", True, t0 - 3600 * S, "old", "a",
                                    cleared_ns=None).to_json())  # long before, never cleared: still overlaps
    add(k.topic_alarms, AlarmRecord("a:bad_command:0", "bad_command", False, t0 - 7200 * S, "older", "a",
                                    cleared_ns=t0 - 7000 * S).to_json())  # over before the lot: not listed
    ClickHouseSink(embedded_settings, chdb_client).write(msgs)  # type: ignore[arg-type]
    return lot


def test_reconciliation_counts_every_unit_once(chdb_client: ChdbClient, embedded_settings: Settings, stored: str) -> None:
    rec = build_reconciliation(chdb_client, embedded_settings.clickhouse.database, stored)
    one, two = rec.lines
    assert one.line == "line-1" and two.line == "line-2"
    assert (one.captured, one.inspected_passed, one.inspected_rejected, one.review) == (8, 2, 2, 1)
    assert (one.failsafe_late, one.late_verdicts, one.failsafe_other, one.unaccounted) == (2, 1, 2, 0)
    assert one.passed_without_pass_verdict == 0 and one.margin_min_ms == pytest.approx(1500.0)
    assert (two.captured, two.fire_failed, two.no_gate_event, two.unaccounted) == (2, 1, 1, 2)
    assert not rec.every_unit_accounted and rec.total("unaccounted") == 2
    assert [(a.code, a.cleared is not None) for a in rec.alarms] == [("plc_unreachable", False), ("pipeline_unhealthy", True)]
    text = rec.to_text()
    assert "every unit accounted for: FAILED" in text and "fire not confirmed 1" in text and "STILL ACTIVE" in text
    # On a positive-release gate the unit the gate never saw was never released: rejected.
    released = build_reconciliation(chdb_client, embedded_settings.clickhouse.database, stored, positive_release=True)
    two = released.lines[1]
    assert (two.no_gate_event, two.not_released, two.failsafe_rejected, two.unaccounted) == (0, 1, 1, 1)
    assert "never released 1" in released.to_text()


def test_report_batch_command(chdb_client: ChdbClient, embedded_settings: Settings, stored: str,
                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LINESIGHT_STATE_DIR", str(embedded_settings.state_dir))
    monkeypatch.delenv("LINESIGHT_CLICKHOUSE__URL", raising=False)
    # line-2's unconfirmed fire is unaccounted; its unit with no gate record was never released
    # (the default gate does positive release), so it is a fail-safe reject.
    assert main(["report", "batch", stored, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"]["captured"] == 10 and doc["totals"]["unaccounted"] == 1
    assert doc["totals"]["not_released"] == 1 and doc["totals"]["no_gate_event"] == 0
    assert doc["totals"]["failsafe_rejected"] == 5 and doc["every_unit_accounted"] is False
    monkeypatch.setenv("LINESIGHT_PLC__GATE_MODE", "reject")  # a gate that passes by default
    assert main(["report", "batch", stored, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"]["unaccounted"] == 2 and doc["totals"]["failsafe_rejected"] == 4
    assert main(["report", "batch", "NO-SUCH-LOT"]) == 1
    assert "no units recorded for this lot" in capsys.readouterr().out


def test_a_multi_station_line_counts_each_unit_once_and_each_station_on_its_own(
    chdb_client: ChdbClient, embedded_settings: Settings, capsys: pytest.CaptureFixture[str],
) -> None:
    lot = f"ST-{uuid.uuid4().hex[:6]}"
    k = embedded_settings.kafka
    t0 = 1_700_000_100 * S
    base = uuid.uuid4().int % 10**9
    msgs: list[Msg] = []

    def add(topic: str, value: bytes) -> None:
        msgs.append(Msg(topic, value, base + len(msgs)))

    plan = [  # unit, gate outcome, cause, action, side verdict, top verdict (None: no top result)
        ("ok", "passed", "model", "pass", "pass", "pass"),
        ("bad", "fired", "model", "reject", "pass", "reject"),
        ("odd", "fired", "model", "reject", "review", "pass"),
        ("miss", "fired", "late", "", "pass", None),
    ]
    for i, (unit, outcome, cause, action, side, top) in enumerate(plan):
        t = t0 + i * S // 10
        add(k.topic_gate_events, _gate(unit, lot, outcome, cause, t, action, line="line-s").to_json())
        for station, verdict in (("side", side), ("top", top)):
            if verdict:
                add(k.topic_results, replace(_result(unit, lot, verdict, t, line="line-s"), station=station).to_json())
        missing = [] if top else ["top"]
        add(k.topic_unit_verdicts, UnitVerdict(unit, "line-s", lot, "p", "reject" if outcome == "fired" else "pass",
                                               cause, t + S, missing=missing).to_json())
    add(k.topic_results, _result("one", lot, "pass", t0).to_json())  # a one-camera line in the same lot
    add(k.topic_gate_events, _gate("one", lot, "passed", "model", t0, "pass").to_json())
    ClickHouseSink(embedded_settings, chdb_client).write(msgs)  # type: ignore[arg-type]

    rec = build_reconciliation(chdb_client, embedded_settings.clickhouse.database, lot)
    one, st = rec.lines
    assert (st.line, st.captured, st.inspected_passed, st.inspected_rejected, st.review) == ("line-s", 4, 1, 2, 1)
    assert (st.failsafe_late, st.late_verdicts, st.unaccounted, st.passed_without_pass_verdict) == (1, 1, 0, 0)
    assert [(c.station, c.judged, c.passed, c.rejected, c.review, c.missing) for c in st.stations] == [
        ("side", 4, 3, 0, 1, 0), ("top", 3, 2, 1, 0, 1)]
    assert one.stations == [] and "stations" not in rec.as_dict()["lines"][0]
    assert rec.as_dict()["lines"][1]["stations"][1] == {
        "station": "top", "judged": 3, "passed": 2, "rejected": 1, "review": 0, "missing": 1}
    text = rec.to_text()
    assert "    station                judged   passed rejected   review  missing" in text
    assert "    top                         3        2        1        0        1" in text


def test_the_sink_stamps_its_site_on_every_row_that_has_a_line(
    chdb_client: ChdbClient, embedded_settings: Settings
) -> None:
    """The `site` setting (docs/scale.md) reaches each table with a line; alarms, which have none, still store."""
    settings = embedded_settings.model_copy(update={"site": "plant-07"})
    db, k, t0 = settings.clickhouse.database, settings.kafka, 1_700_000_000 * S
    lot = f"SITE-{uuid.uuid4().hex[:6]}"
    base = uuid.uuid4().int % 10**9
    msgs = [
        Msg(k.topic_results, _result("s1", lot, "pass", t0).to_json(), base),
        Msg(k.topic_gate_events, _gate("s1", lot, "passed", "model", t0, "pass").to_json(), base + 1),
        Msg(k.topic_truth, GroundTruth("s1", "line-1", lot, "p", "good", "none", t0).to_json(), base + 2),
        Msg(k.topic_alarms, AlarmRecord(f"a:{lot}:0", "plc_unreachable", True, t0, "r", "a").to_json(), base + 3),
        Msg(k.topic_results, b"not json", base + 4),  # a dead letter: stamped too
    ]
    ClickHouseSink(settings, chdb_client).write(msgs)  # type: ignore[arg-type]
    for table, where in [("inspections", f"lot = '{lot}'"), ("gate_events", f"lot = '{lot}'"),
                         ("ground_truth", f"lot = '{lot}'"), ("dead_letters", f"source LIKE '%:{base + 4}'")]:
        assert chdb_client.query(f"SELECT DISTINCT site FROM {db}.{table} WHERE {where}").rows == [("plant-07",)], table
    assert chdb_client.query(f"SELECT count() FROM {db}.alarms WHERE alarm_id = 'a:{lot}:0'").scalar() == 1
