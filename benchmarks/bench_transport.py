"""Benchmark: where a tablet frame is prepared for the model and how its bytes reach Triton.

    .venv/bin/python benchmarks/bench_transport.py [--frames 400] [--batches 1,16] [--concurrency 4]

Four ways, against the same embedded tritonserver and the same rendered frames:
  png-grpc     the encoded frame (PNG, ~46 KiB) over gRPC to the ensemble, which decodes and
               prepares it in its python preprocessing model (what the worker does today);
  png-shm      the same bytes through a system shared-memory region registered with Triton;
  tensor-grpc  the worker decodes and prepares the frame (pipeline.model.preprocess) and sends
               the float32 model input (3x160x160, 300 KiB) over gRPC straight to the classifier;
  tensor-shm   the prepared input through shared memory (co-located worker and server only).
For each, at each batch size: frames/s with --concurrency requests in flight, request latency
p50/p99 one request at a time, and CPU ms per frame in this (client) process and in the server's
processes (tritonserver and its python stubs). A GPU decoder (DALI / nvJPEG) needs a GPU: not
measured here. Nothing here is a test; figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import serialize_byte_tensor, serialized_byte_size

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cpu import cpu_between, process_cpu  # noqa: E402
from pipeline.embedded.process import free_port  # noqa: E402
from pipeline.embedded.triton import TritonServer  # noqa: E402
from pipeline.imaging.tablets import sample_unit  # noqa: E402
from pipeline.model.preprocess import prepare_image  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.wire.codec import encode_png  # noqa: E402

ENSEMBLE, CLASSIFIER, HW = "tablet_inspector", "tablet_classifier", (160, 160)
OUTPUTS = ("SCORE", "CLASS_PROBS", "THRESHOLDS", "MODEL_VERSION")


class Way:
    """One way of sending a batch; `prepare` runs in the client (counted in its CPU)."""

    def __init__(self, name: str, client: grpcclient.InferenceServerClient, slots: int, slot_bytes: int) -> None:
        self.name, self.client, self.slot_bytes = name, client, slot_bytes
        self.regions: list[tuple[str, object]] = []
        if name.endswith("shm"):
            for i in range(slots):
                region = f"ls-bench-{uuid.uuid4().hex[:8]}-{i}"
                handle = shm.create_shared_memory_region(region, f"/{region}", slot_bytes)
                self.regions.append((region, handle))

    async def register(self) -> None:
        for region, _ in self.regions:
            await self.client.register_system_shared_memory(region, f"/{region}", self.slot_bytes)

    async def close(self) -> None:
        for region, handle in self.regions:
            await self.client.unregister_system_shared_memory(region)
            shm.destroy_shared_memory_region(handle)

    async def infer(self, images: list[bytes], slot: int) -> None:
        if self.name.startswith("png"):
            arr = np.array([[b] for b in images], dtype=np.object_)
            inp = grpcclient.InferInput("IMAGE", list(arr.shape), "BYTES")
            model = ENSEMBLE
            if self.name == "png-grpc":
                inp.set_data_from_numpy(arr)
            else:
                payload = serialize_byte_tensor(arr)
                region, handle = self.regions[slot]
                shm.set_shared_memory_region(handle, [payload])
                inp.set_shared_memory(region, serialized_byte_size(payload))
        else:
            x = np.stack([prepare_image(b, HW) for b in images])
            inp = grpcclient.InferInput("INPUT", list(x.shape), "FP32")
            model = CLASSIFIER
            if self.name == "tensor-grpc":
                inp.set_data_from_numpy(x)
            else:
                region, handle = self.regions[slot]
                shm.set_shared_memory_region(handle, [x])
                inp.set_shared_memory(region, x.nbytes)
        await self.client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput(o) for o in OUTPUTS])


async def measure(way: Way, frames: list[bytes], batch: int, concurrency: int) -> dict[str, float]:
    batches = [frames[i : i + batch] for i in range(0, len(frames) - batch + 1, batch)]
    # Latency: one request at a time.
    lat: list[float] = []
    for b in batches[: max(20, 200 // batch)]:
        t0 = time.perf_counter()
        await way.infer(b, 0)
        lat.append((time.perf_counter() - t0) * 1e3)
    # Throughput and CPU: `concurrency` requests in flight.
    queue = list(enumerate(batches))
    cpu0, own0, t0 = process_cpu(), time.process_time(), time.perf_counter()

    async def runner(slot: int) -> None:
        while queue:
            _, b = queue.pop()
            await way.infer(b, slot)

    await asyncio.gather(*(runner(s) for s in range(concurrency)))
    elapsed, client = time.perf_counter() - t0, time.process_time() - own0
    server = sum(v for k, v in cpu_between(cpu0, process_cpu()).items() if "bench_transport" not in k)
    n = sum(len(b) for b in batches)
    return {"fps": n / elapsed, "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "client_ms": client / n * 1e3, "server_ms": server / n * 1e3}


async def run(server: TritonServer, frames: list[bytes], ways: list[str], sizes: list[int], concurrency: int) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    slot_bytes = max(max(sizes) * 3 * HW[0] * HW[1] * 4, max(sizes) * (max(len(f) for f in frames) + 4)) + 4096
    print(f"{'way':<12} {'batch':>5} {'frames/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'client CPU ms/frame':>20} "
          f"{'server CPU ms/frame':>20}")
    for name in ways:
        way = Way(name, client, concurrency, slot_bytes)
        await way.register()
        try:
            for batch in sizes:
                await way.infer(frames[:batch], 0)  # warm-up: stubs and the first shm map
                r = await measure(way, frames, batch, concurrency)
                print(f"{name:<12} {batch:5d} {r['fps']:9.1f} {r['p50']:7.1f} {r['p99']:7.1f} {r['client_ms']:20.2f} "
                      f"{r['server_ms']:20.2f}", flush=True)
        finally:
            await way.close()
    await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--ways", default="png-grpc,png-shm,tensor-grpc,tensor-shm")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    distinct = [encode_png(sample_unit(rng, "tablet-round-white-10mm", 0.15)[0]) for _ in range(min(args.frames, 200))]
    frames = [distinct[i % len(distinct)] for i in range(args.frames)]
    settings = Settings()
    settings = settings.model_copy(update={"state_dir": Path(tempfile.mkdtemp(prefix="bench-transport-"))})
    server = TritonServer(settings, free_port(), free_port(), free_port(), log_path=settings.state_dir / "triton.log")
    server.start()
    try:
        print(f"embedded tritonserver ready in {server.startup_s:.1f} s; {args.frames} frames, mean "
              f"{np.mean([len(f) for f in frames]) / 1024:.1f} KiB; {args.concurrency} requests in flight for frames/s",
              flush=True)
        asyncio.run(run(server, frames, [w.strip() for w in args.ways.split(",")],
                        [int(b) for b in args.batches.split(",")], args.concurrency))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
