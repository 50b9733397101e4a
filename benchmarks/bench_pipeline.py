"""Benchmark: the whole pipeline against its bare inference stage, in one run.

    .venv/bin/python benchmarks/bench_pipeline.py [--units 1000] [--workers 1] [--batch 16]
    .venv/bin/python benchmarks/bench_pipeline.py --rate 25 --units 1500 --skip-bare   # latency at line speed
    [--queue-delay-us 0]   # Triton's dynamic-batching delay for the tablet models (a repository copy)

The worker's own settings come from the environment as always (LINESIGHT_STREAM__MAX_IN_FLIGHT,
LINESIGHT_STREAM__FETCH_MAX_WAIT_MS, LINESIGHT_STREAM__PRODUCER_LINGER_MS).

1. Bare stage: the same encoded frames sent straight to Triton with the worker's client
   (batches of --batch, --concurrency requests in flight): frames/s and per-batch latency.
2. Pipeline: the frames published to Kafka as fast as the gateway can (or at --rate units/s),
   inspected by the worker(s), stored by the sink and fired by the actuator: units/s from first
   capture to last verdict, and capture-to-verdict latency percentiles, read back from ClickHouse.
   A backlog run's gate figures describe an impossible line (units ~1 ms apart, nearly all at the
   gate before their verdict); --rate runs are the gate check (docs/benchmarks.md).
Prints both and the ratio pipeline/bare. Nothing here is a test; figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Literal

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cpu import cpu_between, process_cpu  # noqa: E402
from pipeline.analytics.run_report import build_report  # noqa: E402
from pipeline.core.times import now_ns  # noqa: E402
from pipeline.demo.run import pipeline_stack, wait_drained  # noqa: E402
from pipeline.gateway.publisher import FramePublisher  # noqa: E402
from pipeline.imaging.tablets import sample_unit  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.wire.codec import encode_png  # noqa: E402
from pipeline.wire.messages import FrameMeta, GroundTruth  # noqa: E402
from streams.triton_client import TritonInspector  # noqa: E402


def worker_timing(urls: list[str]) -> dict[str, float]:
    """The first worker's stage times (streams.stage_times) from its /healthz."""
    try:
        with urllib.request.urlopen(f"{urls[0]}/healthz", timeout=5) as response:
            return dict(json.loads(response.read()).get("timing", {}))
    except (OSError, ValueError, IndexError):
        return {}


def queue_delay_us(settings: Settings) -> str:
    config = settings.triton.model_repository / "tablet_classifier" / "config.pbtxt"
    found = re.search(r"max_queue_delay_microseconds:\s*(\d+)", config.read_text()) if config.exists() else None
    return found.group(1) if found else "?"


def with_queue_delay(settings: Settings, delay_us: int) -> Settings:
    """Settings serving a copy of the model repository whose tablet models' dynamic batchers wait
    `delay_us` for more requests (the committed configs stay as they are)."""
    copy = Path(tempfile.mkdtemp(prefix="bench-repo-")) / "triton_models"
    shutil.copytree(settings.triton.model_repository, copy)
    for config in copy.glob("tablet_*/config.pbtxt"):
        text = re.sub(r"max_queue_delay_microseconds:\s*\d+", f"max_queue_delay_microseconds: {delay_us}",
                      config.read_text())
        config.write_text(text)
    return settings.model_copy(update={"triton": settings.triton.model_copy(update={"model_repository": copy})})


def render_frames(settings: Settings, n: int) -> list[tuple[bytes, str | None]]:
    rng = np.random.default_rng(1)
    sim = settings.simulator
    return [
        (encode_png(img), defect)
        for img, defect in (sample_unit(rng, sim.product, sim.defect_rate) for _ in range(n))
    ]


async def bare_stage(settings: Settings, images: list[bytes], batch: int, concurrency: int) -> dict[str, float]:
    inspector = TritonInspector(settings.triton)
    model = settings.stream.product_models[settings.simulator.product]
    await inspector.score(model, images[:batch])  # warm-up
    batches = [images[i : i + batch] for i in range(0, len(images), batch)]
    latencies: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(b: list[bytes]) -> None:
        async with sem:
            t0 = time.perf_counter()
            await inspector.score(model, b)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(b) for b in batches))
    elapsed = time.perf_counter() - t0
    await inspector.close()
    q = np.quantile(latencies, [0.5, 0.99])
    return {"frames_per_s": len(images) / elapsed, "batch_p50_ms": q[0] * 1e3, "batch_p99_ms": q[1] * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="units/s at line speed (0: publish the whole backlog at once, for throughput)")
    parser.add_argument("--queue-delay-us", type=int, default=None,
                        help="Triton's dynamic-batching queue delay for the tablet models (a copy of the repository)")
    parser.add_argument("--skip-bare", action="store_true", help="no bare stage (line-speed runs)")
    args = parser.parse_args()

    settings = Settings()
    settings = settings.model_copy(
        update={"stream": settings.stream.model_copy(update={"batch_size": args.batch})}
    )
    if args.queue_delay_us is not None:
        settings = with_queue_delay(settings, args.queue_delay_us)
    print(f"worker: batch {settings.stream.batch_size}, in flight {settings.stream.max_in_flight}, "
          f"fetch wait {settings.stream.fetch_max_wait_ms} ms, producer linger {settings.stream.producer_linger_ms} ms, "
          f"Triton queue delay {queue_delay_us(settings)} us", flush=True)
    print(f"rendering {min(args.units, 300)} distinct frames ...", flush=True)
    frames = render_frames(settings, min(args.units, 300))
    images = [frames[i % len(frames)][0] for i in range(args.units)]
    print(f"frame size: mean {statistics.mean(len(f) for f, _ in frames) / 1024:.1f} KiB", flush=True)

    with pipeline_stack(settings, args.workers) as (resolved, client, services):
        bare = (asyncio.run(bare_stage(resolved, images, args.batch, args.concurrency)) if not args.skip_bare
                else {"frames_per_s": float("nan"), "batch_p50_ms": float("nan"), "batch_p99_ms": float("nan")})

        sim = resolved.simulator
        lot = f"BENCH-{uuid.uuid4().hex[:8]}"
        publisher = FramePublisher(resolved)
        cpu0 = process_cpu()
        t0 = time.perf_counter()
        for seq in range(args.units):
            if args.rate > 0:  # line speed: one unit every 1/rate s, on a fixed schedule
                time.sleep(max(0.0, t0 + seq / args.rate - time.perf_counter()))
            image, defect = frames[seq % len(frames)]
            capture = now_ns()
            unit = f"{lot}-{seq:07d}"
            meta = FrameMeta(unit, sim.line, sim.camera, sim.product, capture, "image/png", lot)
            label: Literal["good", "defect"] = "defect" if defect else "good"
            publisher.publish(meta, image, GroundTruth(unit, sim.line, lot, sim.product, label, defect or "none", capture))
        publisher.close()
        publish_s = time.perf_counter() - t0
        wait_drained(client, resolved.clickhouse.database, lot, args.units, services.stop_event, timeout_s=900)
        cpu = cpu_between(cpu0, process_cpu())
        timing = worker_timing(services.worker_urls())
        report = build_report(client, resolved.clickhouse.database, lot, positive_release=resolved.plc.positive_release)

    ratio = report.throughput_units_per_s / bare["frames_per_s"]
    print()
    print(f"units {args.units}, workers {args.workers}, batch {args.batch}"
          + (f", line speed {args.rate:g} units/s" if args.rate > 0 else ", backlog published at once"))
    print(f"gateway publish           {args.units / publish_s:8.1f} frames/s")
    print(f"bare Triton stage         {bare['frames_per_s']:8.1f} frames/s   batch latency p50 {bare['batch_p50_ms']:.1f} ms, p99 {bare['batch_p99_ms']:.1f} ms")
    print(f"whole pipeline            {report.throughput_units_per_s:8.1f} units/s    capture->verdict p50 {report.latency_p50_ms:.0f} ms, p99 {report.latency_p99_ms:.0f} ms (backlog included)")
    print(f"ratio pipeline / bare     {ratio:8.2f}")
    print(f"every unit one verdict    {report.every_unit_has_one_verdict}; every reject fired {report.every_reject_fired}"
          f" (gate mode {resolved.plc.gate_mode})")
    if args.rate <= 0:
        # The backlog is captured as a line at the gateway's publish rate (units ~1 ms apart, 2 s
        # before the gate): nearly every unit reaches the gate before its verdict. With the
        # release gate each is rejected by default (no command), with the reject gate each needs
        # a fire ~1 ms after the last, which no gate serves: windows missed, "every reject fired
        # False". Gate behaviour is measured with --rate, at a speed a line can run.
        print(f"(backlog run: the line is {args.units / publish_s:.0f} units/s at the gate; its gate figures say "
              "nothing about a real line; use --rate for them)")
    print(f"rejects {report.rejected}, review {report.review}, not fired {report.rejected_not_fired}, "
          f"fired on a pass {report.fired_not_rejected}")
    print("worker stages: " + "; ".join(f"{k} {v}" for k, v in timing.items()))
    print("CPU s during the pipeline run: " + ", ".join(f"{k[:60]} {v:.1f}" for k, v in cpu.items()))
    if report.gate is not None:
        totals = report.gate.as_dict()["totals"]
        print("gate " + ", ".join(f"{k} {v}" for k, v in totals.items() if v))
        print(f"dead-lettered {report.dead_lettered}; alarms: "
              + ("; ".join(f"{a.code} ({a.reason[:80]})" for a in report.gate.alarms) or "none"))


if __name__ == "__main__":
    main()
