"""The classifier's cost per unit against its held-out accuracy, per serving option (issue 18, item 4).

Re-exports the *same trained weights* of a released classifier version (default: the shipped
`tablet_classifier` v1, read back from its ONNX file as `pipeline.model.base` does) in several
ways and, for each, prints:

- cost: CPU milliseconds per unit of one onnxruntime session with intra_op_num_threads=1
  (`time.process_time` around `session.run` of a batch, median over repeats): robust to other
  load on the machine, unlike a throughput figure;
- parity: max |dSCORE| against the fp32 graph with the same views on the validation images;
- accuracy: thresholds calibrated on the option's own scores of the version's validation set
  exactly as `linesight train` calibrates rendered training (the make-model validation set:
  seed 0, 1,200 units; review at 1 % of good units, reject at 0.25 %), then detection, false
  rejects, review rate, AUROC and subtle detection on held-out units the model never saw
  (`pipeline.model.heldout`'s stream, seed 1000) and on the same units under another session
  (`linesight dataset shift` defaults: light x0.8, blur sigma 1 px, shift <= 3 px).

Options: the test-time views the product's invariance allows (8 = every flip and quarter turn
for a tablet; 4, 2, 1 = the first views of `pipeline.model.net.dihedral_views`), onnxruntime
graph optimisation saved offline, int8 (static QDQ, calibrated on validation images; dynamic)
and fp16.

    .venv/bin/python benchmarks/bench_model_cost.py [--heldout 2000] [--options v8,v4,v2,v1,...]

`--triton N [N ...]` instead measures the bare stage as served: the embedded tritonserver with
`tablet_inspector` (preprocessing + the committed classifier version) and the classifier's
instance count set to each N, fed by --clients gRPC clients sending batches of --batch PNG
frames back to back for --seconds: frames/s (wall clock: read the printed load) and the server's
CPU ms per frame.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.model import export as ex  # noqa: E402
from pipeline.model.evaluate_offline import detection_at_frr, inspection_metrics  # noqa: E402

DEFAULT_ONNX = ROOT / "triton_models" / "tablet_classifier" / "1" / "model.onnx"
PRODUCT = "tablet-round-white-10mm"
ALL_OPTIONS = ("v8", "v4", "v2", "v1", "v8-ortopt", "v8-int8", "v4-int8", "v2-int8", "v1-int8",
               "v8-int8dyn", "v8-fp16")


def render(count: int, seed: int, stream: int, defect_rate: float, subtle_fraction: float,
           shifted: bool) -> dict[str, np.ndarray]:
    """Rendered units as the model sees them, and (shifted) the same units under another session."""
    from pipeline.datasets.shift import Shift, shift_image
    from pipeline.imaging.tablets import draw_unit, render_tablet_with_mask
    from pipeline.model.preprocess import prepare_pil

    n = count
    x = np.empty((n, 3, 160, 160), np.float32)
    xs = np.empty_like(x) if shifted else None
    is_defect = np.zeros(n, bool)
    subtle = np.zeros(n, bool)
    names = []
    params, srng = Shift(), np.random.default_rng(0)
    for i in range(n):
        rng = np.random.default_rng([seed, stream, i])
        defect, is_subtle = draw_unit(rng, defect_rate, subtle_fraction)
        img, _ = render_tablet_with_mask(rng, PRODUCT, defect, subtle=is_subtle)
        x[i] = prepare_pil(img, 160)
        if xs is not None:
            xs[i] = prepare_pil(shift_image(img, params, srng), 160)
        is_defect[i], subtle[i] = defect is not None, bool(is_subtle and defect is not None)
        names.append(defect or "none")
    out = {"x": x, "is_defect": is_defect, "subtle": subtle, "names": np.asarray(names)}
    if xs is not None:
        out["x_shift"] = xs
    return out


def cost_ms(path: Path, x: np.ndarray, batch: int, repeats: int) -> float:
    """Median CPU ms per unit of one single-threaded onnxruntime session."""
    sess = ex.session(path, threads=1)
    feed = {ex.INPUT_NAME: np.ascontiguousarray(x[:batch])}
    sess.run(None, feed)
    per = []
    for _ in range(repeats):
        t = time.process_time()
        sess.run(None, feed)
        per.append((time.process_time() - t) * 1000.0 / batch)
    return float(np.median(per))


def scores(path: Path, x: np.ndarray) -> np.ndarray:
    return ex.onnx_outputs(path, x, threads=1)["SCORE"][:, 0]


def judged(s: np.ndarray, d: dict[str, np.ndarray], review: float, reject: float, key: str = "x") -> dict[str, Any]:
    m = inspection_metrics(s, d["is_defect"], review, d["names"])
    sub = d["subtle"]
    return {
        "detection": m.detection_rate, "false_reject": m.false_reject_rate,
        "review": float(((s > review) & (s <= reject)).mean()), "auroc": m.auroc,
        "subtle": float((s[sub] > review).mean()) if sub.any() else float("nan"),
        "oracle_det_at_1pct": detection_at_frr(s, d["is_defect"], 0.01)[0],
        "n_good": m.n_good, "n_defect": m.n_defect,
    }


def thresholds(good: np.ndarray) -> tuple[float, float]:
    """train.py's calibration for rendered training (no variants, no folds)."""
    from pipeline.model.train import REJECT_FRR_FRACTION, TARGET_FRR, calibrate

    review, _ = calibrate(good, TARGET_FRR)
    reject, _ = calibrate(good, TARGET_FRR * REJECT_FRR_FRACTION)
    if reject <= review and good.size and float(good.max()) > review:
        reject = float(good.max())
    return float(np.float32(review)), float(np.float32(max(review, reject)))


def build(option: str, net: Any, work: Path, calib_x: np.ndarray, ref: dict[str, Path]) -> Path:
    """The ONNX file of one option (same weights)."""
    views = int(option.split("-")[0][1:])
    base = work / f"v{views}.onnx"
    if not base.exists():
        ex.export_onnx(net, base, 160, views, num_classes=5, thresholds=(0.5, 0.5), version=1)
    ref[f"v{views}"] = base
    kind = option.split("-", 1)[1] if "-" in option else ""
    out = work / f"{option}.onnx"
    if kind == "":
        return base
    if kind == "ortopt":
        ex.optimise_graph(base, out)
    elif kind == "int8":
        ex.quantize_int8(base, out, calib_x)
    elif kind == "int8dyn":
        from onnxruntime.quantization import QuantType, quantize_dynamic
        quantize_dynamic(str(base), str(out), weight_type=QuantType.QInt8)
    elif kind == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16
        m = convert_float_to_float16(onnx.load(str(base)), keep_io_types=True)
        onnx.save(m, str(out))
    else:
        raise ValueError(f"unknown option {option}")
    return out


def triton_bare(instances: list[int], clients: int, batch: int, seconds: float) -> None:
    """Bare Triton stage of the tablet per classifier instance count (module docstring)."""
    import os
    import re
    import shutil
    import tempfile
    import threading

    import tritonclient.grpc as grpcclient

    from benchmarks.bench_inspector_instances import _tree_cpu_s
    from pipeline.embedded.process import free_port
    from pipeline.embedded.triton import TritonServer
    from pipeline.imaging.tablets import sample_unit
    from pipeline.settings import PROJECT_ROOT, Settings
    from pipeline.wire.codec import encode_png

    rng = np.random.default_rng(1)
    frames = [encode_png(sample_unit(rng, PRODUCT, 0.3)[0]) for _ in range(128)]

    def load(url: str, secs: float) -> int:
        stop_at, done = time.perf_counter() + secs, [0] * clients

        def client(k: int) -> None:
            c = grpcclient.InferenceServerClient(url)
            i = k * batch
            while time.perf_counter() < stop_at:
                items = [frames[(i + j) % len(frames)] for j in range(batch)]
                i += batch
                t = grpcclient.InferInput("IMAGE", [batch, 1], "BYTES")
                t.set_data_from_numpy(np.array(items, dtype=np.object_).reshape(-1, 1))
                c.infer("tablet_inspector", [t], outputs=[grpcclient.InferRequestedOutput("SCORE")])
                done[k] += batch

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(done)

    print(f"load before: {Path('/proc/loadavg').read_text().split()[:3]} on {os.cpu_count()} cores", flush=True)
    for n in instances:
        with tempfile.TemporaryDirectory(prefix="ls-modelcost-") as tmp:
            root = Path(tmp)
            repo = root / "repo"
            for name in ("tablet_inspector", "tablet_preprocess", "tablet_classifier"):
                shutil.copytree(PROJECT_ROOT / "triton_models" / name, repo / name, symlinks=True,
                                ignore=shutil.ignore_patterns("__pycache__", "training_images.sha256"))
            cfg = repo / "tablet_classifier" / "config.pbtxt"
            text, k = re.subn(r"(instance_group\s*\{\s*count:\s*)\d+", rf"\g<1>{n}", cfg.read_text())
            if k != 1:
                raise SystemExit(f"{cfg}: expected one instance_group count, found {k}")
            cfg.write_text(text)
            base = Settings()
            settings = base.model_copy(update={"state_dir": root / "state", "triton": base.triton.model_copy(update={
                "url": None, "model_repository": repo, "embedded_grpc_port": free_port(),
                "embedded_http_port": free_port(), "embedded_metrics_port": free_port()})})
            server = TritonServer(settings, log_path=root / "tritonserver.log")
            server.start(timeout_s=180)
            try:
                load(server.grpc_url, 3.0)  # warm-up
                pid = server.process.pid if server.process else None
                cpu0 = _tree_cpu_s(pid) if pid else float("nan")
                t0 = time.perf_counter()
                count = load(server.grpc_url, seconds)
                wall = time.perf_counter() - t0
                cpu = (_tree_cpu_s(pid) if pid else float("nan")) - cpu0
            finally:
                server.stop(10)
        print(f"tablet_inspector, classifier instances {n}: {count / wall:.1f} frames/s ({clients} clients x batch "
              f"{batch}, {wall:.0f} s); server CPU {1000 * cpu / max(count, 1):.2f} ms/frame ({cpu / wall:.2f} cores)",
              flush=True)
    print(f"load after: {Path('/proc/loadavg').read_text().split()[:3]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", type=Path, default=DEFAULT_ONNX)
    p.add_argument("--options", default=",".join(ALL_OPTIONS))
    p.add_argument("--val", type=int, default=1200, help="validation units (make model: 1,200, seed 0)")
    p.add_argument("--heldout", type=int, default=2000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--triton", type=int, nargs="+", default=None, metavar="N",
                   help="measure the bare Triton stage at these classifier instance counts instead")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--seconds", type=float, default=20.0)
    args = p.parse_args(argv)
    if args.triton:
        triton_bare(args.triton, args.clients, 16 if args.batch == 32 else args.batch, args.seconds)
        return 0

    import tempfile

    from pipeline.model.base import init_from_base
    from pipeline.model.net import TabletNet
    from pipeline.model.training_sets import VAL_DEFECT_RATE, VAL_STREAM, VAL_SUBTLE_FRACTION

    t0 = time.perf_counter()
    net = TabletNet().eval()
    init_from_base(net, args.onnx)
    card = json.loads((args.onnx.parent / "model_card.json").read_text())
    val = render(args.val, 0, VAL_STREAM, VAL_DEFECT_RATE, VAL_SUBTLE_FRACTION, shifted=False)
    held = render(args.heldout, 1000, 2, 0.4, 0.33, shifted=True)
    print(f"rendered {args.val} validation + {args.heldout} held-out units (+ shifted copy) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work, ref = Path(tmp), {}
        shipped_val = scores(args.onnx, val["x"])
        rebuilt = work / "v8.onnx"
        ex.export_onnx(net, rebuilt, 160, 8, num_classes=5, thresholds=(0.5, 0.5), version=1)
        d = float(np.abs(scores(rebuilt, val["x"]) - shipped_val).max())
        print(f"rebuilt 8-view graph vs shipped file on validation: max |dSCORE| = {d:.2g}; "
              f"shipped thresholds {card['thresholds']}, recalibrated here {thresholds(shipped_val[~val['is_defect']])}")
        calib_x = val["x"][:256]
        for option in args.options.split(","):
            t = time.perf_counter()
            path = build(option, net, work, calib_x, ref)
            c = cost_ms(path, val["x"], args.batch, args.repeats)
            sv = scores(path, val["x"])
            fp32 = ref.get(f"v{option.split('-')[0][1:]}")
            parity = float(np.abs(sv - scores(fp32, val["x"])).max()) if fp32 is not None and fp32 != path else 0.0
            rv, rj = thresholds(sv[~val["is_defect"]])
            gate = ""
            if fp32 is not None and fp32 != path:
                try:
                    ex.check_reduced_precision(path, fp32, val["x"], thresholds(scores(fp32, val["x"])[~val["is_defect"]]))
                    gate = "parity passed"
                except ex.ParityError as exc:
                    gate = "REJECTED by the parity check: " + str(exc).split(": ", 1)[1]
            sh, ss = scores(path, held["x"]), scores(path, held["x_shift"])
            row = {"option": option, "ms_per_unit": c, "parity_max_abs_dscore": parity, "parity_check": gate, "thresholds": [rv, rj],
                   "validation": judged(sv, val, rv, rj), "heldout": judged(sh, held, rv, rj),
                   "shifted": judged(ss, held, rv, rj), "seconds": time.perf_counter() - t}
            rows.append(row)
            h, s = row["heldout"], row["shifted"]
            print(f"{option:11s} {c:6.2f} ms/unit  parity {parity:.2g}  thr {rv:.4f}/{rj:.4f}  "
                  f"held-out det {100 * h['detection']:.1f} % FR {100 * h['false_reject']:.2f} % "
                  f"review {100 * h['review']:.2f} % AUROC {h['auroc']:.4f} subtle {100 * h['subtle']:.1f} %  | "
                  f"shifted det {100 * s['detection']:.1f} % FR {100 * s['false_reject']:.2f} % "
                  f"AUROC {s['auroc']:.4f}  ({row['seconds']:.0f} s)" + (f"\n{'':12s}{gate}" if gate else ""), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
