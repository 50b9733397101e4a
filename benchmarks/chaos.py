"""Chaos suite: kill each service of the embedded stack mid-lot and account for every unit.

    .venv/bin/python benchmarks/chaos.py [--line-s 40] [--kill-at-s 10] [--rate 20] [--faults broker,triton,...]
    make chaos

Starts the embedded stack (Tansu, tritonserver with the tiny contract model, 2 workers, the
actuator, the PLC simulator over OPC UA, the chDB sink in this process) on loopback ports, then
per fault runs one lot of a simulated line for --line-s seconds, kills the service (SIGKILL on its
process; the sink thread is stopped) --kill-at-s seconds in, waits for the supervisor to bring it
back (deadline), lets the lot settle, and prints one row from ClickHouse (the per-lot
reconciliation): units captured, verdicts stored, fail-safe rejected, passed without a pass
verdict (must be 0; from the stored records, and from the PLC simulator's own log of what it
released), lost from storage, duplicate rows (must be 0), time to recover. Tansu keeps
its log in memory: after a broker kill, everything not yet consumed is gone (lost > 0 there; the
PLC's reject-all covers those units at the gate). The suite stops itself (--deadline-s). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_actuation import bench_settings, publish_lot  # noqa: E402
from tables import md_header, md_row  # noqa: E402

from pipeline.actuation.plc.embedded import SERVICE as PLC  # noqa: E402
from pipeline.actuation.plc.embedded import gate_log_path  # noqa: E402
from pipeline.analytics.reconciliation import build_reconciliation  # noqa: E402
from pipeline.clickhouse import ClickHouseClient  # noqa: E402
from pipeline.demo.run import pipeline_stack  # noqa: E402
from pipeline.demo.services import Services  # noqa: E402
from pipeline.embedded.broker import SERVICE as BROKER  # noqa: E402
from pipeline.embedded.process import live_processes  # noqa: E402
from pipeline.embedded.triton import SERVICE as TRITON  # noqa: E402
from pipeline.imaging.tablets import sample_unit  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.wire.codec import encode_png  # noqa: E402

FAULTS = {"broker": BROKER, "triton": TRITON, "worker": "worker-0", "sink": "sink", "actuator": "actuator", "plc": PLC}


@dataclass
class Row:
    fault: str
    published: int
    captured: int
    verdicts: int
    failsafe: int
    passed_no_verdict: int
    released_no_verdict: int
    unaccounted: int
    lost: int
    duplicates: int
    restart_s: float | None
    clear_s: float | None

    COLUMNS = ("fault", "published", "captured (stored)", "verdicts", "fail-safe rejected", "passed without pass verdict",
               "released by the PLC without pass verdict", "unaccounted", "lost from storage", "duplicate rows",
               "restarted after s", "fail-safe cleared after s")

    @staticmethod
    def header() -> str:
        return md_header(Row.COLUMNS)

    def line(self) -> str:
        def s(x: float | None) -> str:
            return "–" if x is None else f"{x:.1f}"

        return md_row((self.fault, self.published, self.captured, self.verdicts, self.failsafe, self.passed_no_verdict,
                       self.released_no_verdict, self.unaccounted, self.lost, self.duplicates, s(self.restart_s),
                       s(self.clear_s)))


def inject(fault: str, services: Services) -> str:
    """Kill the fault's target; return what was done."""
    if fault == "sink":
        services.sink_stop.set()
        return "sink thread stopped"
    name = FAULTS[fault]
    proc = next((p for p in live_processes() if p.name == name and p.alive), None)
    if proc is None or proc.pid is None:
        raise RuntimeError(f"no live process {name!r} to kill")
    os.kill(proc.pid, signal.SIGKILL)
    return f"SIGKILL {name} pid {proc.pid}"


def settle(client: ClickHouseClient, db: str, lot: str, quiet_s: float, deadline: float) -> None:
    """Wait until the lot's stored rows stop changing for ``quiet_s`` (or the deadline)."""
    last: tuple[int, ...] = ()
    since = time.monotonic()
    while time.monotonic() < deadline:
        row = client.query(
            f"""SELECT (SELECT count() FROM {db}.ground_truth FINAL WHERE lot = {{lot:String}}),
                       (SELECT count() FROM {db}.inspections FINAL WHERE lot = {{lot:String}}),
                       (SELECT count() FROM {db}.gate_events FINAL WHERE lot = {{lot:String}})""", {"lot": lot}).rows[0]
        now = tuple(int(x) for x in row)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.5)


def released_by_plc(gate_log: Path, lot: str) -> set[str]:
    """Units of ``lot`` the PLC simulator let through (its own record: what physically passed)."""
    if not gate_log.exists():
        return set()
    records = (json.loads(line) for line in gate_log.read_text(encoding="utf-8").splitlines() if line.strip())
    return {r["unit_id"] for r in records if r.get("action") == "release" and str(r["unit_id"]).startswith(lot)}


def measure(client: ClickHouseClient, resolved: Settings, lot: str, fault: str, published: int, kill_ns: int,
            restart_s: float | None) -> Row:
    db = resolved.clickhouse.database
    batch = build_reconciliation(client, db, lot, positive_release=resolved.plc.positive_release)
    lines = batch.lines
    captured = sum(ln.captured for ln in lines)
    q = {"lot": lot}
    verdicts, dup_i = client.query(
        f"SELECT count(), count() - uniqExact(unit_id) FROM {db}.inspections FINAL WHERE lot = {{lot:String}}", q).rows[0]
    dup_g = client.query(
        f"SELECT count() - uniqExact(unit_id) FROM {db}.gate_events FINAL WHERE lot = {{lot:String}}", q).rows[0][0]
    truth = client.query(f"SELECT count() FROM {db}.ground_truth FINAL WHERE lot = {{lot:String}}", q).rows[0][0]
    cleared = client.query(
        f"""SELECT max(cleared_time) FROM {db}.alarms FINAL
            WHERE code = 'pipeline_unhealthy' AND raised_time >= fromUnixTimestamp64Nano({{k:Int64}}, 'UTC')
              AND cleared_time IS NOT NULL""", {"k": kill_ns}).rows[0][0]
    clear_s = (cleared.timestamp() - kill_ns / 1e9) if cleared is not None else None
    passes = {u for (u,) in client.query(
        f"SELECT unit_id FROM {db}.inspections FINAL WHERE lot = {{lot:String}} AND verdict = 'pass'", q).rows}
    released = released_by_plc(gate_log_path(resolved), lot)
    return Row(
        fault, published, captured, int(verdicts), sum(ln.failsafe_rejected for ln in lines),
        sum(ln.passed_without_pass_verdict for ln in lines), len(released - passes),
        sum(ln.fire_failed + ln.missed + ln.no_gate_event for ln in lines),
        published - int(truth), int(dup_i) + int(dup_g), restart_s, clear_s,
    )


def run_fault(fault: str, resolved: Settings, client: ClickHouseClient, services: Services, frames: list[bytes],
              args: argparse.Namespace) -> Row:
    sup = services.supervisor
    assert sup is not None
    name = FAULTS[fault]
    lot = f"CHAOS-{fault}-{uuid.uuid4().hex[:6]}"
    result: dict[str, int] = {}

    def line() -> None:
        result["published"], _ = publish_lot(resolved, frames, args.rate, args.line_s, lot)

    publisher = threading.Thread(target=line, name=f"line-{fault}")
    publisher.start()
    time.sleep(args.kill_at_s)  # line time before the fault, not a readiness wait
    restarts_before = sup.restarts.get(name, 0)
    kill_ns = time.time_ns()
    print(f"[{fault}] {inject(fault, services)} at {args.kill_at_s:.0f} s into lot {lot}", flush=True)
    deadline = time.monotonic() + args.recover_s
    while sup.restarts.get(name, 0) == restarts_before and time.monotonic() < deadline:
        time.sleep(0.2)
    back = [c for c in sup.history if c.service == name and c.up and c.at_ns > kill_ns]
    restart_s = (back[0].at_ns - kill_ns) / 1e9 if back else None
    print(f"[{fault}] " + (f"back after {restart_s:.1f} s" if restart_s is not None else "NOT back before the deadline"),
          flush=True)
    publisher.join()
    travel_s = max(t.camera_to_gate_mm / t.conveyor_speed_mm_s for t in resolved.lines.values())
    time.sleep(travel_s)  # the last unit reaches the gate
    settle(client, resolved.clickhouse.database, lot, quiet_s=6.0, deadline=time.monotonic() + 90)
    return measure(client, resolved, lot, fault, result.get("published", 0), kill_ns, restart_s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--line-s", type=float, default=40.0)
    ap.add_argument("--kill-at-s", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--recover-s", type=float, default=90.0)
    ap.add_argument("--deadline-s", type=float, default=1500.0, help="the whole suite stops by itself after this")
    ap.add_argument("--faults", default=",".join(FAULTS))
    # bench_settings' arguments: the default line (500 mm at 250 mm/s), the tiny contract model
    ap.add_argument("--speed-mm-s", type=float, default=250.0)
    ap.add_argument("--distance-mm", type=float, default=500.0)
    ap.add_argument("--real-model", action="store_true")
    args = ap.parse_args()
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        ap.error(f"unknown faults {sorted(unknown)}; choose from {', '.join(FAULTS)}")
    timer = threading.Timer(args.deadline_s, lambda: (print("chaos: suite deadline passed", flush=True),
                                                       os.kill(os.getpid(), signal.SIGINT)))
    timer.daemon = True
    timer.start()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="linesight-chaos-") as tmp:
        settings = stack_settings(args, Path(tmp), workers=2)
        frames = line_frames(settings)
        started = time.monotonic()
        try:
            with pipeline_stack(settings, workers=2) as (resolved, client, services):
                print(f"chaos: stack up in {time.monotonic() - started:.0f} s; watchdog timeouts "
                      f"{resolved.watchdog.resolved_timeouts_s(resolved.lines)}", flush=True)
                for fault in faults:
                    row = run_fault(fault, resolved, client, services, frames, args)
                    rows.append(row)
                    print(Row.header() + "\n" + row.line(), flush=True)
        except KeyboardInterrupt:
            print("chaos: interrupted; figures so far below", flush=True)
    print("\n" + Row.header())
    for row in rows:
        print(row.line())
    bad = [r.fault for r in rows if r.passed_no_verdict or r.released_no_verdict or r.duplicates or r.restart_s is None]
    if bad:
        print(f"chaos: FAILED for {', '.join(bad)}", flush=True)
    return 1 if bad or len(rows) < len(faults) else 0


def stack_settings(args: argparse.Namespace, tmp: Path, workers: int) -> Settings:
    """`bench_settings` with every port free, also the dashboard's and each worker's web port
    (another stack on this host may hold the defaults)."""
    from pipeline.embedded.process import free_port

    settings = bench_settings(args, tmp)
    update: dict[str, object] = {
        "services": settings.services.model_copy(update={"dashboard_port": free_port()})}
    if workers > 1:
        update["stream"] = settings.stream.model_copy(update={"web_port": _two_free_ports()})
    return settings.model_copy(update=update)


def line_frames(settings: Settings, n: int = 50) -> list[bytes]:
    """Encoded frames of the simulated line's product, published in turn."""
    rng = np.random.default_rng(3)
    sim = settings.simulator
    return [encode_png(sample_unit(rng, sim.product, sim.defect_rate)[0]) for _ in range(n)]


def _two_free_ports() -> int:
    """A port whose successor is free too (the second worker's web port)."""
    from pipeline.embedded.process import free_port, port_is_free

    for _ in range(50):
        port = free_port()
        if port_is_free(port + 1):
            return port
    raise RuntimeError("no two consecutive free ports")


if __name__ == "__main__":
    sys.exit(main())
