"""ONNX export of the serving model and the parity check that guards every deployment.

Exported models that disagree with their originals are a recurring field failure (score drift,
flipped outputs), so nothing reaches the Triton repository unless onnxruntime reproduces the
torch scores on the validation images within a stated tolerance, at more than one batch size.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from pipeline.model.net import CLASSES, ServingModel, TabletNet

OPSET = 17
INPUT_NAME = "INPUT"
OUTPUT_NAMES = ("SCORE", "CLASS_PROBS")
PARITY_TOLERANCE = 1e-4


class ParityError(RuntimeError):
    """onnxruntime and torch disagree on the exported model."""


@dataclass(frozen=True)
class ParityReport:
    """How closely the ONNX graph reproduces torch on the checked images."""

    n_images: int
    max_abs_diff_score: float
    max_abs_diff_class_probs: float
    tolerance: float
    batch_sizes: tuple[int, ...]
    onnxruntime_version: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def export_onnx(net: TabletNet, path: Path, size: int, views: int = 8) -> None:
    """Write INPUT [N, 3, S, S] -> SCORE [N, 1], CLASS_PROBS [N, C] (opset 17, dynamic N)."""
    model = ServingModel(net, views).eval()
    dummy = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs
        # onnxscript (not a project dependency); its output is checked below and for parity.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            do_constant_folding=True,
        )
    check_signature(path, size)


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def check_signature(path: Path, size: int) -> None:
    """Raise ValueError unless the graph has exactly the inputs/outputs Triton's config declares."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    g = model.graph
    fp32 = onnx.TensorProto.FLOAT
    problems = []
    inputs = {i.name: i for i in g.input}
    outputs = {o.name: o for o in g.output}
    if list(inputs) != [INPUT_NAME]:
        problems.append(f"inputs are {list(inputs)}, expected [{INPUT_NAME!r}]")
    elif inputs[INPUT_NAME].type.tensor_type.elem_type != fp32 or _dims(inputs[INPUT_NAME])[1:] != [3, size, size]:
        problems.append(f"{INPUT_NAME} is {_dims(inputs[INPUT_NAME])}, expected [batch, 3, {size}, {size}] FP32")
    expected = {"SCORE": 1, "CLASS_PROBS": len(CLASSES)}
    if sorted(outputs) != sorted(expected):
        problems.append(f"outputs are {list(outputs)}, expected {list(expected)}")
    else:
        for name, width in expected.items():
            dims = _dims(outputs[name])
            if outputs[name].type.tensor_type.elem_type != fp32 or dims[1:] != [width] or isinstance(dims[0], int):
                problems.append(f"{name} is {dims}, expected [batch, {width}] FP32")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))


def onnx_predict(path: Path, x: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """SCORE [N] and CLASS_PROBS [N, C] from onnxruntime (CPU)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    scores, probs = [], []
    for i in range(0, len(x), batch_size):
        s, p = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: x[i : i + batch_size]})
        scores.append(s[:, 0])
        probs.append(p)
    return np.concatenate(scores), np.concatenate(probs)


def check_parity(
    path: Path,
    x: np.ndarray,
    torch_scores: np.ndarray,
    torch_probs: np.ndarray,
    tolerance: float = PARITY_TOLERANCE,
) -> ParityReport:
    """Compare onnxruntime with torch on x (at batch 64 and batch 1); ParityError if off."""
    scores, probs = onnx_predict(path, x, batch_size=64)
    n_single = min(8, len(x))
    s1, p1 = onnx_predict(path, x[:n_single], batch_size=1)
    d_score = float(max(np.abs(scores - torch_scores).max(), np.abs(s1 - torch_scores[:n_single]).max()))
    d_probs = float(max(np.abs(probs - torch_probs).max(), np.abs(p1 - torch_probs[:n_single]).max()))
    report = ParityReport(len(x), d_score, d_probs, tolerance, (64, 1), ort.__version__)
    if not (d_score <= tolerance and d_probs <= tolerance):
        raise ParityError(
            f"ONNX export disagrees with torch on {len(x)} images: max |dSCORE| = {d_score:.3g}, "
            f"max |dCLASS_PROBS| = {d_probs:.3g}, tolerance {tolerance:g}"
        )
    return report
