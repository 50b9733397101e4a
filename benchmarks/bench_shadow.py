"""What a shadow deployment costs on the embedded CPU Triton (docs/models.md, "Shadow deployment").

    .venv/bin/python benchmarks/bench_shadow.py [--frames 480] [--batch 16] [--repository triton_models]

Starts the embedded tritonserver on the model repository, loads the live tablet classifier's own
version a second time as ``<classifier>__shadow`` (`pipeline.model.shadow.load_shadow`; a
candidate of the same architecture costs the same), and scores the same simulated round-tablet
frames (PNG, as the camera gateway sends them) in batches:

* live: the ensemble the worker calls (one request per batch);
* shadow: `streams.shadow.ShadowScorer` (the live ensemble's steps, the classifier step on the
  shadow model: two requests per batch, the preprocessed tensor sent back and forth);

and prints the wall time per frame of each, the CPU time per frame of the tritonserver process and
its python-backend stubs (from /proc) and of the calling process during each phase. Not a test: timings depend on the machine and on who else uses it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.embedded.process import free_port  # noqa: E402
from pipeline.embedded.triton import TritonServer  # noqa: E402
from pipeline.imaging.catalog import sample_product  # noqa: E402
from pipeline.model import repository as repo_mod  # noqa: E402
from pipeline.model.shadow import ShadowModels, ensemble_steps, load_shadow, shadow_name, unload_shadow  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.wire.codec import encode_png  # noqa: E402
from streams.shadow import ShadowScorer  # noqa: E402

PRODUCT = "tablet-round-white-10mm"


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children that were waited for (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and its live descendants (the python backend stubs are children)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += _cpu_s(p)
            for task in Path(f"/proc/{p}/task").iterdir():  # a child belongs to the thread that made it
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=480)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repository", type=Path, default=Settings().triton.model_repository)
    args = ap.parse_args()

    base = Settings()
    state = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    settings = base.model_copy(update={"state_dir": state, "triton": base.triton.model_copy(update={
        "url": None, "model_repository": args.repository, "embedded_grpc_port": free_port(),
        "embedded_http_port": free_port(), "embedded_metrics_port": free_port()})})
    repo = Path(args.repository)
    models = repo_mod.product_models(repo, PRODUCT, settings.stream.product_models)
    live = repo_mod.live_version(repo_mod.read_config(repo, models.classifier))
    assert live is not None, f"{models.classifier} has no live version"
    shadow = ShadowModels(PRODUCT, models.classifier, models.ensemble, live, live,
                          shadow_name(models.classifier), ensemble_steps(repo, models.ensemble, models.classifier))
    rng = np.random.default_rng(7)
    today = datetime.now(UTC).date()
    frames = [encode_png(sample_product(rng, PRODUCT, 0.3, "BENCH", i, today).image) for i in range(args.frames)]
    batches = [frames[i:i + args.batch] for i in range(0, len(frames), args.batch)]

    server = TritonServer(settings)
    server.start(timeout_s=180)
    try:
        assert server.process is not None
        pid = server.process.pid
        load_s = load_shadow(settings, shadow)
        live_scorer = ShadowScorer(server.grpc_url, ShadowModels(
            PRODUCT, models.classifier, models.ensemble, live, live, models.classifier,
            ensemble_steps(repo, models.ensemble, models.classifier)))  # the live classifier, same path
        shadow_scorer = ShadowScorer(server.grpc_url, shadow)
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(server.grpc_url)

        def ensemble(batch: list[bytes]) -> None:
            t = grpcclient.InferInput("IMAGE", [len(batch), 1], "BYTES")
            t.set_data_from_numpy(np.array(batch, dtype=np.object_).reshape(len(batch), 1))
            client.infer(models.ensemble, [t], outputs=[grpcclient.InferRequestedOutput("SCORE")])

        phases = {
            "live ensemble (what the worker calls)": ensemble,
            "live classifier through the shadow's path": live_scorer.score,
            "shadow classifier (the candidate)": shadow_scorer.score,
        }
        for fn in phases.values():  # warm up every path
            fn(batches[0])
        print(f"shadow model loaded in {load_s:.1f} s; {len(frames)} frames, batches of {args.batch}\n")
        print("| path | wall ms per frame | Triton CPU ms per frame | caller CPU ms per frame |")
        print("|---|---|---|---|")
        for name, fn in phases.items():
            cpu0, own0, t0 = _tree_cpu_s(pid), time.process_time(), time.perf_counter()
            for b in batches:
                fn(b)
            wall, cpu, own = time.perf_counter() - t0, _tree_cpu_s(pid) - cpu0, time.process_time() - own0
            n = len(frames)
            print(f"| {name} | {1000 * wall / n:.1f} | {1000 * cpu / n:.1f} | {1000 * own / n:.1f} |")
        unload_shadow(settings, shadow)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
