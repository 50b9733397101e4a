"""Tiny classifiers that honour the model-repository contract (docs/models.md), for tests.

`classifier_onnx` builds an ONNX graph with the contract's tensors whose outputs are known in
advance: ``SCORE = weight * mean(INPUT) + bias`` (``weight=0``: a constant score), class
probabilities ``[1 - SCORE, SCORE / (C - 1), ...]``, the version's own ``THRESHOLDS`` and its
``MODEL_VERSION`` as constants in the graph. `add_version` writes a released version directory
(model.onnx, model_card.json with the ONNX sha256 and a parity record, classes entry in the
config) and `model_repository` copies the committed configs into a temporary repository with
no trained versions in it, so tests never depend on artifacts under ``triton_models/``.
`repo_settings` points `Settings` (and the embedded Triton's ports) at such a repository.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pipeline.embedded.process import free_port
from pipeline.embedded.triton import TritonServer
from pipeline.model import repository
from pipeline.settings import PROJECT_ROOT, Settings

COMMITTED = PROJECT_ROOT / "triton_models"
CLASSES = ["good", "chip", "contamination", "crack", "discoloration"]


def classifier_onnx(
    version: int,
    review: float,
    reject: float,
    bias: float,
    weight: float = 0.0,
    n_classes: int = len(CLASSES),
    size: int = 160,
    input_name: str = "INPUT",
) -> bytes:
    """Serialized contract-conforming classifier (opset 17, dynamic batch)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(value, name)

    init = [
        const("w", np.array(weight, dtype=np.float32)),
        const("b", np.array(bias, dtype=np.float32)),
        const("zero", np.array(0.0, dtype=np.float32)),
        const("one", np.array(1.0, dtype=np.float32)),
        const("lo", np.array(0.0, dtype=np.float32)),
        const("hi", np.array(1.0, dtype=np.float32)),
        const("share", np.array(1.0 / max(1, n_classes - 1), dtype=np.float32)),
        const("thresholds", np.array([[review, reject]], dtype=np.float32)),
        const("version", np.array([[version]], dtype=np.int64)),
    ]
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["m_hw"], axes=[2, 3], keepdims=0),  # [N, 3]
        helper.make_node("ReduceMean", ["m_hw"], ["m"], axes=[1], keepdims=1),  # [N, 1]
        helper.make_node("Mul", ["m", "w"], ["wm"]),
        helper.make_node("Add", ["wm", "b"], ["raw"]),
        helper.make_node("Clip", ["raw", "lo", "hi"], ["SCORE"]),
        helper.make_node("Sub", ["one", "SCORE"], ["p_good"]),
        helper.make_node("Mul", ["SCORE", "share"], ["p_defect"]),
        helper.make_node(
            "Concat", ["p_good"] + ["p_defect"] * (n_classes - 1), ["CLASS_PROBS"], axis=1
        ),
        helper.make_node("Mul", ["m", "zero"], ["zeros"]),  # [N, 1] of 0: carries the batch size
        helper.make_node("Add", ["zeros", "thresholds"], ["THRESHOLDS"]),  # [N, 2]
        helper.make_node("Cast", ["zeros"], ["zeros_i"], to=TensorProto.INT64),
        helper.make_node("Add", ["zeros_i", "version"], ["MODEL_VERSION"]),  # [N, 1]
    ]
    graph = helper.make_graph(
        nodes,
        f"contract_classifier_v{version}",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3, size, size])],
        [
            helper.make_tensor_value_info("SCORE", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("CLASS_PROBS", TensorProto.FLOAT, ["N", n_classes]),
            helper.make_tensor_value_info("THRESHOLDS", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("MODEL_VERSION", TensorProto.INT64, ["N", 1]),
        ],
        initializer=init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def add_version(
    repo: Path,
    classifier: str,
    version: int,
    *,
    review: float,
    reject: float,
    bias: float,
    weight: float = 0.0,
    classes: list[str] | None = None,
    parity_passed: bool = True,
    record_classes: bool = True,
    product: str = "tablet-round-white-10mm",
    input_name: str = "INPUT",
) -> Path:
    """Write `<classifier>/<version>/` with model.onnx and model_card.json; add its classes."""
    classes = list(classes or CLASSES)
    data = classifier_onnx(version, review, reject, bias, weight, n_classes=len(classes), input_name=input_name)
    vdir = repository.version_dir(repo, classifier, version)
    vdir.mkdir(parents=True)
    (vdir / repository.ONNX_FILE).write_bytes(data)
    card = {
        "product": product,
        "model": classifier,
        "version": version,
        "mode": "supervised",
        "classes": classes,
        "thresholds": {"review": review, "reject": reject, "target_false_reject_rate": 0.01},
        "validation": {"auroc": 0.99, "detection_rate": 0.995, "false_reject_rate": 0.008, "review_rate": 0.01},
        "parity": {"max_abs_diff": 1e-7 if parity_passed else 0.2, "tolerance": 1e-4, "passed": parity_passed},
        "onnx": {"file": repository.ONNX_FILE, "opset": 17, "sha256": hashlib.sha256(data).hexdigest()},
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": "test",
    }
    (vdir / repository.CARD_JSON).write_text(json.dumps(card, indent=2))
    if record_classes:
        config = repository.read_config(repo, classifier)
        repository.set_classes(config, version, classes)
        repository.write_config(repo, classifier, config)
    return vdir


def model_repository(
    root: Path, classifier: str = "tablet_classifier", inspector: str = "tablet_inspector", live: int = 1
) -> Path:
    """A copy of the committed configs (no versions): preprocess, `inspector` -> `classifier`."""
    repo = root / "models"
    repo.mkdir(parents=True)
    shutil.copytree(
        COMMITTED / "tablet_preprocess", repo / "tablet_preprocess", ignore=shutil.ignore_patterns("__pycache__")
    )
    for src, name in (("tablet_classifier", classifier), ("tablet_inspector", inspector)):
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        text = (COMMITTED / src / repository.CONFIG_FILE).read_text()
        text = text.replace('"tablet_classifier"', f'"{classifier}"').replace('"tablet_inspector"', f'"{inspector}"')
        (repo / name / repository.CONFIG_FILE).write_text(text)
    (repo / classifier / "1").rmdir()  # versions are added by add_version
    config = repository.read_config(repo, classifier)
    config.parameters[repository.CLASSES_PARAM].string_value = "{}"
    repository.set_live_version(config, live)
    repository.write_config(repo, classifier, config)
    return repo


def repo_settings(base: Settings, repo: Path, state_dir: Path, grpc_port: int | None = None) -> Settings:
    """Settings whose model repository is `repo` and whose embedded Triton ports are `grpc_port`
    (a free port: no Triton running) ."""
    return base.model_copy(
        update={
            "state_dir": state_dir,
            "triton": base.triton.model_copy(
                update={
                    "url": None,
                    "model_repository": repo,
                    "embedded_grpc_port": grpc_port or free_port(),
                    "embedded_http_port": free_port(),
                    "embedded_metrics_port": free_port(),
                }
            ),
        }
    )


@contextmanager
def own_triton(base: Settings, repo: Path, state_dir: Path) -> Iterator[tuple[Settings, TritonServer]]:
    """A tritonserver of the test's own on `repo` (fresh ports), stopped on exit; the settings
    `linesight` commands would use to reach it, and the server (a test may stop and start it)."""
    settings = repo_settings(base, repo, state_dir, free_port())
    server = TritonServer(settings)
    server.start(timeout_s=120)
    try:
        yield settings, server
    finally:
        server.stop(10)
