"""`make demo CAMERAS=gige` end to end on the real embedded stack (`pipeline.demo.gige.run_gige_demo`):
the simulated PLC runs the two-station tablet line (encoder, infeed trigger latches), one fake GigE
Vision camera per station, the camera gateway, the session's Tansu broker and tritonserver with
the trained tablet classifier, a Faust worker, the actuator and chDB; the returned run report is
checked against the lot's ground truth and per-station frames in ClickHouse.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from pipeline.analytics.run_report import RunReport
from pipeline.clickhouse import ClickHouseClient
from pipeline.demo import gige
from pipeline.embedded.process import free_port
from pipeline.settings import Settings


@dataclass
class Truth:
    """What ClickHouse holds for the lot, read while the demo's stack is still up."""

    defects: set[str] = field(default_factory=set)
    verdicts: dict[str, str] = field(default_factory=dict)  # unit -> unit verdict
    flagged: set[str] = field(default_factory=set)  # units some station's model judged not pass


def isolated(settings: Settings) -> Settings:
    """Topics, consumer groups, ports and the PLC of this test only (the session's broker, Triton
    and chDB are shared with the other e2e modules)."""
    k, suffix = settings.kafka, uuid.uuid4().hex[:6]
    topics = {name: f"{getattr(k, name)}-gd-{suffix}" for name in type(k).model_fields if name.startswith("topic_")}
    return settings.model_copy(update={
        "kafka": k.model_copy(update=topics),
        "stream": settings.stream.model_copy(update={"web_port": free_port(), "app_id": f"gd-worker-{suffix}"}),
        "services": settings.services.model_copy(update={
            "sink_health_port": free_port(), "actuator_health_port": free_port(), "dashboard_port": free_port(),
            "sink_group": f"gd-sink-{suffix}", "actuator_group": f"gd-actuator-{suffix}",
        }),
        "plc": settings.plc.model_copy(update={"embedded_port": free_port()}),
        # 2.5 units/s: the belt at 62.5 mm/s (one unit every 25 mm), so the demo's 10 mm match
        # tolerance is 160 ms of software-trigger lag: a CI machine busy with the whole stack still
        # places every frame (at 5 units/s, 80 ms, a loaded run dead-lettered two late frames and
        # fail-safe rejected their units, which is right for a line but not this test's point).
        # A third of the units defective.
        "simulator": settings.simulator.model_copy(update={"rate_per_s": 2.5, "defect_rate": 0.3, "seed": 7}),
    })


@pytest.mark.timeout(300)
def test_the_gige_demo_judges_every_unit_at_both_stations_and_accounts_for_it(
    e2e_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Serials of this process only: a demo running elsewhere on the machine has fake cameras too.
    pid = os.getpid()
    stations = tuple((name, f"D{pid}{name[0].upper()}", mm) for name, _serial, mm in gige.STATIONS)
    monkeypatch.setattr(gige, "STATIONS", stations)
    truth = Truth()
    report_of: Callable[..., RunReport] = gige.build_report

    def report_and_truth(client: ClickHouseClient, db: str, lot: str, **kw: Any) -> RunReport:
        p = {"lot": lot}
        truth.defects = {str(r[0]) for r in client.query(
            f"SELECT unit_id FROM {db}.ground_truth FINAL WHERE lot = {{lot:String}} AND label = 'defect'", p).rows}
        truth.verdicts = {str(r[0]): str(r[1]) for r in client.query(
            f"SELECT unit_id, verdict FROM {db}.unit_verdicts FINAL WHERE lot = {{lot:String}}", p).rows}
        truth.flagged = {str(r[0]) for r in client.query(
            f"""SELECT DISTINCT unit_id FROM {db}.inspections FINAL
                WHERE lot = {{lot:String}} AND inspected AND verdict != 'pass'""", p).rows}
        return report_of(client, db, lot, **kw)

    monkeypatch.setattr(gige, "build_report", report_and_truth)
    report = gige.run_gige_demo(isolated(e2e_settings), duration_s=8.0)

    units = report.published
    assert units > 8, report.to_text()  # 2.5 units/s for 8 s, less the cameras' opening
    assert report.every_unit_has_one_verdict, report.to_text()
    assert len(truth.verdicts) == units and report.dead_lettered == 0
    # Both stations judged every unit: no fail-safe for a missing frame.
    gate = report.gate
    assert gate is not None and gate.every_unit_accounted, report.to_text()
    (line,) = gate.lines
    assert line.captured == units and line.unaccounted == 0 and line.passed_without_pass_verdict == 0
    assert [(s.station, s.judged, s.missing) for s in line.stations] == [
        (name, units, 0) for name in sorted(name for name, _serial, _mm in stations)
    ], line.stations
    assert report.inspected == units and report.failsafe_rejected == 0, report.to_text()
    # Scored against the ground truth: a defect passes only where no station's model flagged it.
    assert truth.defects and len(truth.defects) == report.defects_published
    missed_by_model = truth.defects - truth.flagged
    assert {u for u in truth.defects if truth.verdicts[u] == "pass"} == missed_by_model
    assert report.escaped_defects == len(missed_by_model), report.to_text()
    assert all(truth.verdicts[u] != "pass" for u in truth.flagged)
    assert report.every_reject_fired, report.to_text()
