"""Benchmark: does every verdict reach the reject gate before its unit does?

    .venv/bin/python benchmarks/bench_actuation.py [--rate 20] [--seconds 10] [--search]
        [--speed-mm-s 250] [--distance-mm 500] [--max-rate 320] [--steps 3] [--real-model]

Runs the whole embedded stack (Tansu, tritonserver, Faust worker, actuator with the simulated
PLC over OPC UA, chDB sink) and a line publishing pre-rendered frames at --rate units/s with
fresh capture times. Per run it prints, from ClickHouse:

* the verdict-to-fire-time margin as the actuator measured it (``gate_events.margin_ms``:
  fire time minus the moment the verdict reached the actuator; the fire time is the unit's gate
  deadline minus the gate's lead), p50/p99/max/min over units whose verdict came in time;
* the worker-side margin (deadline minus the worker's verdict time) over all units, so late
  units show how late they were;
* units late (fail-safe rejected because no verdict came before the cutoff) and missed.

``--search`` doubles the rate from --rate until a run has a late unit (or the gateway cannot
hold the rate, or --max-rate), then bisects --steps times: the highest line speed (units/s)
with no late unit on this machine. The model is a tiny contract model (tests/contract_models.py)
unless --real-model (the trained artifact in triton_models/) is asked for. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pipeline.clickhouse import ClickHouseClient  # noqa: E402
from pipeline.core.times import now_ns
from pipeline.demo.run import pipeline_stack, wait_drained  # noqa: E402
from pipeline.demo.services import Services  # noqa: E402
from pipeline.embedded.process import free_port  # noqa: E402
from pipeline.gateway.publisher import FramePublisher  # noqa: E402
from pipeline.imaging.tablets import sample_unit  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.settings.actuation import LineTimingSettings  # noqa: E402
from pipeline.wire.codec import encode_png  # noqa: E402
from pipeline.wire.messages import FrameMeta, GroundTruth  # noqa: E402


@dataclass
class Run:
    rate: float
    achieved: float
    units: int
    late: int
    missed: int
    failsafe: int
    gate_p50: float
    gate_p99: float
    gate_max: float
    gate_min: float
    worker_p50: float
    worker_p99: float
    worker_min: float

    def line(self) -> str:
        return (
            f"rate {self.rate:6.1f}/s (held {self.achieved:6.1f}/s) units {self.units:5d} | late {self.late:4d} "
            f"missed {self.missed} failsafe {self.failsafe} | actuator margin ms p50 {self.gate_p50:7.1f} "
            f"p99 {self.gate_p99:7.1f} max {self.gate_max:7.1f} min {self.gate_min:7.1f} | worker margin ms "
            f"p50 {self.worker_p50:7.1f} p99-worst {self.worker_p99:7.1f} min {self.worker_min:7.1f}"
        )


def bench_settings(args: argparse.Namespace, state: Path) -> Settings:
    base = Settings()
    triton = base.triton.model_copy(update={
        "url": None, "embedded_http_port": free_port(), "embedded_grpc_port": free_port(),
        "embedded_metrics_port": free_port(),
    })
    if not args.real_model:
        from contract_models import add_version, model_repository

        repo = model_repository(state / "repo")
        add_version(repo, "tablet_classifier", 1, review=0.3, reject=0.7, bias=0.2)
        triton = triton.model_copy(update={"model_repository": repo})
    line = LineTimingSettings(conveyor_speed_mm_s=args.speed_mm_s, camera_to_gate_mm=args.distance_mm)
    return base.model_copy(update={
        "state_dir": state / "state",
        "kafka": base.kafka.model_copy(update={"bootstrap_servers": None, "embedded_port": free_port()}),
        "triton": triton,
        "clickhouse": base.clickhouse.model_copy(update={"url": None}),
        "stream": base.stream.model_copy(update={"web_port": free_port()}),
        "services": base.services.model_copy(update={"sink_health_port": free_port(), "actuator_health_port": free_port()}),
        "plc": base.plc.model_copy(update={"enabled": True, "endpoint": None, "embedded_port": free_port()}),
        "lines": {base.simulator.line: line},
    })


def publish_lot(settings: Settings, frames: list[bytes], rate: float, seconds: float, lot: str) -> tuple[int, float]:
    """Publish at `rate` for `seconds` (cycling the pre-rendered frames); return (units, held rate)."""
    sim = settings.simulator
    publisher = FramePublisher(settings)
    n = max(1, round(rate * seconds))
    interval = 1.0 / rate
    start = next_at = time.monotonic()
    stop = threading.Event()
    for seq in range(n):
        delay = next_at - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        next_at += interval
        capture = now_ns()
        unit = f"{lot}-{seq:07d}"
        meta = FrameMeta(unit, sim.line, sim.camera, sim.product, capture, "image/png", lot)
        publisher.publish(meta, frames[seq % len(frames)], GroundTruth(unit, sim.line, lot, sim.product, "good", "none", capture))
    elapsed = time.monotonic() - start
    publisher.close()
    return n, n / max(elapsed, 1e-9) if n > 1 else rate


def measure(client: ClickHouseClient, db: str, lot: str, rate: float, units: int, held: float) -> Run:
    q = {"lot": lot}
    g = client.query(
        f"""SELECT countIf(outcome = 'fired' AND cause = 'late'), countIf(outcome = 'missed'),
                   countIf(cause = 'failsafe'),
                   quantileExactIf(0.5)(margin_ms, margin_ms IS NOT NULL), quantileExactIf(0.01)(margin_ms, margin_ms IS NOT NULL),
                   maxIf(margin_ms, margin_ms IS NOT NULL), minIf(margin_ms, margin_ms IS NOT NULL)
            FROM {db}.gate_events FINAL WHERE lot = {{lot:String}}""", q).rows[0]
    w = client.query(
        f"""SELECT quantileExact(0.5)(m), quantileExact(0.01)(m), min(m) FROM (
                SELECT dateDiff('microsecond', i.inferred_time, g.fire_at_time) / 1000.0 AS m
                FROM {db}.inspections AS i FINAL INNER JOIN {db}.gate_events AS g FINAL USING unit_id
                WHERE i.lot = {{lot:String}} AND g.lot = {{lot:String}})""", q).rows[0]

    def f(x: object) -> float:
        try:
            v = float(x)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return float("nan")
        return v

    # p99 of a margin is its worst 1 %: the 0.01 quantile.
    return Run(rate, held, units, int(g[0]), int(g[1]), int(g[2]), f(g[3]), f(g[4]), f(g[5]), f(g[6]),
               f(w[0]), f(w[1]), f(w[2]))


def run_rate(settings: Settings, client: ClickHouseClient, services: Services, frames: list[bytes], rate: float,
             seconds: float) -> Run:
    lot = f"BENCH-{rate:g}-{uuid.uuid4().hex[:6]}"
    units, held = publish_lot(settings, frames, rate, seconds, lot)
    db = settings.clickhouse.database
    wait_drained(client, db, lot, units, services.stop_event, timeout_s=600)
    run = measure(client, db, lot, rate, units, held)
    print(run.line(), flush=True)
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=20.0, help="line speed, units/s (start of the search)")
    p.add_argument("--seconds", type=float, default=10.0, help="line time per run")
    p.add_argument("--speed-mm-s", type=float, default=250.0)
    p.add_argument("--distance-mm", type=float, default=500.0, help="camera to gate")
    p.add_argument("--search", action="store_true", help="find the highest rate without a late unit")
    p.add_argument("--max-rate", type=float, default=320.0)
    p.add_argument("--steps", type=int, default=3, help="bisection steps after the first failing rate")
    p.add_argument("--real-model", action="store_true", help="the trained model in triton_models/")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-actuation-") as tmp:
        settings = bench_settings(args, Path(tmp))
        rng = np.random.default_rng(3)
        sim = settings.simulator
        frames = [encode_png(sample_unit(rng, sim.product, sim.defect_rate)[0]) for _ in range(100)]
        travel_ms = args.distance_mm / args.speed_mm_s * 1000
        print(f"line: {args.distance_mm:g} mm camera-to-gate at {args.speed_mm_s:g} mm/s = {travel_ms:.0f} ms to the "
              f"gate; verdict cutoff {settings.lines[sim.line].verdict_margin_ms:g} ms before it; model: "
              f"{'trained' if args.real_model else 'contract (tiny ONNX)'}", flush=True)
        with pipeline_stack(settings, workers=1) as (resolved, client, services):
            run_rate(resolved, client, services, frames, 5.0, 3.0)  # warm-up (first requests, joins)
            first = run_rate(resolved, client, services, frames, args.rate, args.seconds)
            if not args.search:
                return
            good: float | None = args.rate if first.late == 0 and first.missed == 0 else None
            bad: float | None = None if good else args.rate
            rate = args.rate
            while bad is None:
                rate *= 2
                if rate > args.max_rate:
                    break
                r = run_rate(resolved, client, services, frames, rate, args.seconds)
                if r.late or r.missed or r.achieved < 0.9 * rate:
                    bad = rate
                else:
                    good = rate
            low = good or 0.0
            if bad is not None:
                for _ in range(args.steps):
                    mid = (low + bad) / 2
                    if mid < 1:
                        break
                    r = run_rate(resolved, client, services, frames, mid, args.seconds)
                    if r.late or r.missed or r.achieved < 0.9 * mid:
                        bad = mid
                    else:
                        low = mid
            limit = f"(first failing rate {bad:g}/s)" if bad is not None else f"(not reached: --max-rate {args.max_rate:g})"
            print(f"highest line speed without a late unit: {low:g} units/s {limit}", flush=True)


if __name__ == "__main__":
    main()
