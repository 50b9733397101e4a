"""Throughput of a measurement model in the embedded tritonserver against its instance count.

    nice -n 10 .venv/bin/python benchmarks/bench_inspector_instances.py --model vial_inspector --instances 1 2

For each --instances N: a tritonserver of its own on a temporary repository holding only the
model, with the committed config's ``instance_group`` count set to N, fed by --clients gRPC
clients that each send requests of --batch PNG frames back to back for --seconds (after a
warm-up). Prints frames/s, the client-side request latency p50/p99 and the CPU time the server's
process tree (tritonserver and its python stubs) spent per frame, for each N. A python model's
instances are separate stub processes, so a second one is what lets a second core measure.
Wall-clock figures: read `uptime` before trusting them; the clients share the cores.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.embedded.process import free_port  # noqa: E402
from pipeline.embedded.triton import TritonServer  # noqa: E402
from pipeline.imaging.blisters import sample_blister  # noqa: E402
from pipeline.imaging.vials import VIAL_PRODUCTS, sample_vial  # noqa: E402
from pipeline.inspections.blister import BlisterParams  # noqa: E402
from pipeline.inspections.vial import default_params  # noqa: E402
from pipeline.settings import PROJECT_ROOT, Settings  # noqa: E402
from pipeline.wire.codec import encode_png  # noqa: E402

MODELS = ("vial_inspector", "blister_inspector")


def _frames(model: str, n: int) -> tuple[list[bytes], bytes]:
    rng = np.random.default_rng(0)
    if model == "vial_inspector":
        product = "vial-2r-clear-5ml"
        params = default_params(VIAL_PRODUCTS[product]).model_dump_json().encode()
        return [encode_png(sample_vial(rng, product, 0.5)[0]) for _ in range(n)], params
    bp = BlisterParams().model_dump_json().encode()
    return [encode_png(sample_blister(rng, "blister-2x5-round-white", 0.5)[0]) for _ in range(n)], bp


def _repository(model: str, instances: int, root: Path) -> Path:
    src = PROJECT_ROOT / "triton_models" / model
    dst = root / "repo" / model
    (dst / "1").mkdir(parents=True)
    os.symlink(src / "1" / "model.py", dst / "1" / "model.py")
    config = (src / "config.pbtxt").read_text()
    config, n = re.subn(r"count:\s*\d+", f"count: {instances}", config)
    if n != 1:
        raise SystemExit(f"{model}/config.pbtxt: expected one instance_group count, found {n}")
    (dst / "config.pbtxt").write_text(config)
    return root / "repo"


def _load(url: str, model: str, frames: list[bytes], params: bytes, batch: int, clients: int,
          seconds: float) -> tuple[int, list[float]]:
    import tritonclient.grpc as grpcclient

    stop_at = time.perf_counter() + seconds
    done = [0] * clients
    latencies: list[list[float]] = [[] for _ in range(clients)]

    def client(k: int) -> None:
        c = grpcclient.InferenceServerClient(url)
        i = k * batch
        while time.perf_counter() < stop_at:
            items = [frames[(i + j) % len(frames)] for j in range(batch)]
            i += batch
            inputs = []
            for name, data in (("IMAGE", items), ("PARAMS", [params] * batch)):
                t = grpcclient.InferInput(name, [batch, 1], "BYTES")
                t.set_data_from_numpy(np.array(data, dtype=np.object_).reshape(-1, 1))
                inputs.append(t)
            t0 = time.perf_counter()
            c.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput("RESULT")])
            latencies[k].append(time.perf_counter() - t0)
            done[k] += batch

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done), [x for lat in latencies for x in lat]


def _tree_cpu_s(root_pid: int) -> float:
    """CPU seconds (user + system) of `root_pid` and its live descendants (the python stubs)."""
    stats: dict[int, tuple[int, float]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(d.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    tree, total, grew = {root_pid}, 0.0, True
    while grew:
        grew = False
        for pid, (ppid, _) in stats.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    for pid in tree:
        total += stats.get(pid, (0, 0.0))[1]
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=MODELS, default="vial_inspector")
    ap.add_argument("--instances", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args(argv)
    frames, params = _frames(args.model, 64)
    print(f"load before: {Path('/proc/loadavg').read_text().split()[:3]} on {os.cpu_count()} cores")
    for n in args.instances:
        with tempfile.TemporaryDirectory(prefix="ls-instances-") as tmp:
            root = Path(tmp)
            repo = _repository(args.model, n, root)
            base = Settings()
            settings = base.model_copy(update={"state_dir": root / "state", "triton": base.triton.model_copy(update={
                "url": None, "model_repository": repo, "embedded_grpc_port": free_port(),
                "embedded_http_port": free_port(), "embedded_metrics_port": free_port()})})
            server = TritonServer(settings, log_path=root / "tritonserver.log")
            server.start(timeout_s=120)
            try:
                _load(server.grpc_url, args.model, frames, params, args.batch, args.clients, 3.0)  # warm-up
                pid = server.process.pid if server.process else None
                cpu0 = _tree_cpu_s(pid) if pid else float("nan")
                t0 = time.perf_counter()
                count, lat = _load(server.grpc_url, args.model, frames, params, args.batch, args.clients, args.seconds)
                wall = time.perf_counter() - t0
                cpu = (_tree_cpu_s(pid) if pid else float("nan")) - cpu0
            finally:
                server.stop(10)
                shutil.rmtree(root / "state", ignore_errors=True)
        ms = 1000.0 * np.asarray(lat)
        print(f"{args.model} instances {n}: {count / wall:.1f} frames/s ({args.clients} clients x batch {args.batch}, "
              f"{wall:.0f} s), request latency p50 {np.percentile(ms, 50):.0f} ms, p99 {np.percentile(ms, 99):.0f} ms; "
              f"server CPU {1000 * cpu / max(count, 1):.2f} ms/frame ({cpu / wall:.2f} cores)")
    print(f"load after: {Path('/proc/loadavg').read_text().split()[:3]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
