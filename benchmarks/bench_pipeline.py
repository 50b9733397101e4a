"""Benchmark: the whole pipeline against its bare inference stage, in one run.

    .venv/bin/python benchmarks/bench_pipeline.py [--units 1000] [--workers 1] [--batch 16]

1. Bare stage: the same encoded frames sent straight to Triton with the worker's client
   (batches of --batch, --concurrency requests in flight): frames/s and per-batch latency.
2. Pipeline: the frames published to Kafka as fast as the gateway can, inspected by the worker(s),
   stored by the sink and fired by the actuator: units/s from first capture to last verdict, and
   capture-to-verdict latency percentiles, read back from ClickHouse.
Prints both and the ratio pipeline/bare. Nothing here is a test; figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import numpy as np

from pipeline.analytics.run_report import build_report
from pipeline.core.times import now_ns
from pipeline.demo.run import pipeline_stack, wait_drained
from pipeline.gateway.publisher import FramePublisher
from pipeline.imaging.tablets import sample_unit
from pipeline.settings import Settings
from pipeline.wire.codec import encode_png
from pipeline.wire.messages import FrameMeta, GroundTruth
from streams.triton_client import TritonInspector


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
    args = parser.parse_args()

    settings = Settings()
    settings = settings.model_copy(
        update={"stream": settings.stream.model_copy(update={"batch_size": args.batch})}
    )
    print(f"rendering {min(args.units, 300)} distinct frames ...", flush=True)
    frames = render_frames(settings, min(args.units, 300))
    images = [frames[i % len(frames)][0] for i in range(args.units)]
    print(f"frame size: mean {statistics.mean(len(f) for f, _ in frames) / 1024:.1f} KiB", flush=True)

    with pipeline_stack(settings, args.workers) as (resolved, client, services):
        bare = asyncio.run(bare_stage(resolved, images, args.batch, args.concurrency))

        sim = resolved.simulator
        lot = f"BENCH-{uuid.uuid4().hex[:8]}"
        publisher = FramePublisher(resolved)
        t0 = time.perf_counter()
        for seq in range(args.units):
            image, defect = frames[seq % len(frames)]
            capture = now_ns()
            unit = f"{lot}-{seq:07d}"
            meta = FrameMeta(unit, sim.line, sim.camera, sim.product, capture, "image/png", lot)
            label = "defect" if defect else "good"
            publisher.publish(meta, image, GroundTruth(unit, sim.line, lot, sim.product, label, defect or "none", capture))
        publisher.close()
        publish_s = time.perf_counter() - t0
        wait_drained(client, resolved.clickhouse.database, lot, args.units, services.stop_event, timeout_s=900)
        report = build_report(client, resolved.clickhouse.database, lot, positive_release=resolved.plc.positive_release)

    ratio = report.throughput_units_per_s / bare["frames_per_s"]
    print()
    print(f"units {args.units}, workers {args.workers}, batch {args.batch}")
    print(f"gateway publish           {args.units / publish_s:8.1f} frames/s")
    print(f"bare Triton stage         {bare['frames_per_s']:8.1f} frames/s   batch latency p50 {bare['batch_p50_ms']:.1f} ms, p99 {bare['batch_p99_ms']:.1f} ms")
    print(f"whole pipeline            {report.throughput_units_per_s:8.1f} units/s    capture->verdict p50 {report.latency_p50_ms:.0f} ms, p99 {report.latency_p99_ms:.0f} ms (backlog included)")
    print(f"ratio pipeline / bare     {ratio:8.2f}")
    print(f"every unit one verdict    {report.every_unit_has_one_verdict}; every reject fired {report.every_reject_fired}")


if __name__ == "__main__":
    main()
