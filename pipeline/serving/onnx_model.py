"""Triton python-backend model that runs an ONNX file with onnxruntime on CPU.

Why: the tritonserver shipped in nvidia-pytriton (used by the embedded stack on machines without
a GPU) has no onnxruntime backend. The embedded stack derives a model repository in which each
``onnxruntime_onnx`` model becomes a ``backend: "python"`` model whose version directory links
this file as ``model.py`` next to the very same ``model.onnx``. The inputs, outputs, data types,
dims and batching come from the model's own config, so one artifact and one config serve both
the native onnxruntime backend (GPU hosts, NGC image) and this path.

Batching: Triton's dynamic batcher hands ``execute`` several requests; their inputs are
concatenated along the batch axis into one onnxruntime run and the outputs split back.
Config parameters (same keys as Triton's onnxruntime backend): ``intra_op_thread_count``
(default 1) and ``inter_op_thread_count`` (default 1); the pool never spins. ``onnx_model_filename`` names the file
when the original config used ``default_model_filename``.

This file is loaded by the backend stub, not imported by the pipeline: it depends only on
numpy, onnxruntime and ``triton_python_backend_utils``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    dims: tuple[int, ...]


def _specs(entries: list[dict[str, Any]]) -> list[TensorSpec]:
    return [
        TensorSpec(
            name=e["name"],
            dtype=np.dtype(pb_utils.triton_string_to_numpy(e["data_type"])),
            dims=tuple(int(d) for d in e.get("dims", [])),
        )
        for e in entries
    ]


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value if value.strip() else default


class TritonPythonModel:
    """onnxruntime session behind Triton's python backend."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.model_name = config.get("name", args.get("model_name", "?"))
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.inputs = _specs(config.get("input", []))
        self.outputs = _specs(config.get("output", []))
        if not self.inputs or not self.outputs:
            raise pb_utils.TritonModelException(
                f"{self.model_name}: the config must list its inputs and outputs"
            )
        filename = _parameter(config, "onnx_model_filename", "model.onnx")
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"{self.model_name}: no ONNX file at {path}")

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(_parameter(config, "intra_op_thread_count", "1"))
        options.inter_op_num_threads = int(_parameter(config, "inter_op_thread_count", "1"))
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # No busy-waiting between operators: on the embedded CPU stack the cores are shared with
        # the broker and the workers, and a spinning pool took CPU from them for nothing.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._check_signature()
        self.output_names = [o.name for o in self.outputs]

    def _check_signature(self) -> None:
        """Config and ONNX graph must agree: a drifted artifact fails at load, not per request."""
        graph_in = {i.name: i.type for i in self.session.get_inputs()}
        graph_out = {o.name: o.type for o in self.session.get_outputs()}
        problems: list[str] = []
        for kind, specs, graph in (("input", self.inputs, graph_in), ("output", self.outputs, graph_out)):
            for spec in specs:
                if spec.name not in graph:
                    problems.append(f"{kind} {spec.name!r} not in the ONNX graph ({sorted(graph)})")
                    continue
                onnx_dtype = _ORT_TO_NUMPY.get(graph[spec.name])
                if onnx_dtype is not None and np.dtype(onnx_dtype) != spec.dtype:
                    problems.append(
                        f"{kind} {spec.name!r} is {graph[spec.name]} in ONNX but {spec.dtype} in the config"
                    )
        missing = sorted(set(graph_in) - {s.name for s in self.inputs})
        if missing:
            problems.append(f"ONNX inputs missing from the config: {missing}")
        if problems:
            raise pb_utils.TritonModelException(f"{self.model_name}: " + "; ".join(problems))

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        try:
            feeds = [self._feeds(r) for r in requests]
        except Exception as exc:  # noqa: BLE001 - reported per request, the model stays up
            return [self._error(exc) for _ in requests]
        if self.max_batch_size > 0:
            # Requests whose non-batch shapes agree run together in one session call.
            groups: dict[tuple[Any, ...], list[int]] = {}
            for idx, feed in enumerate(feeds):
                key = tuple((name, arr.shape[1:]) for name, arr in sorted(feed.items()))
                groups.setdefault(key, []).append(idx)
        else:
            groups = {(idx,): [idx] for idx in range(len(requests))}
        for members in groups.values():
            try:
                self._run_group(members, feeds, responses)
            except Exception as exc:  # noqa: BLE001
                for idx in members:
                    responses[idx] = self._error(exc)
        return responses

    def _feeds(self, request: Any) -> dict[str, np.ndarray]:
        feed: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
            if tensor is None:
                raise ValueError(f"input {spec.name!r} missing from the request")
            feed[spec.name] = tensor.as_numpy()
        return feed

    def _run_group(self, members: list[int], feeds: list[dict[str, np.ndarray]], responses: list[Any]) -> None:
        if len(members) == 1:
            outs = self.session.run(self.output_names, feeds[members[0]])
            responses[members[0]] = self._response(outs)
            return
        sizes = [feeds[i][self.inputs[0].name].shape[0] for i in members]
        batch = {
            spec.name: np.concatenate([feeds[i][spec.name] for i in members], axis=0)
            for spec in self.inputs
        }
        outs = self.session.run(self.output_names, batch)
        cuts = np.cumsum(sizes)[:-1]
        parts = [np.split(out, cuts, axis=0) for out in outs]
        for pos, idx in enumerate(members):
            responses[idx] = self._response([p[pos] for p in parts])

    def _response(self, outs: list[np.ndarray]) -> Any:
        tensors = [
            pb_utils.Tensor(spec.name, np.ascontiguousarray(out, dtype=spec.dtype))
            for spec, out in zip(self.outputs, outs, strict=True)
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _error(self, exc: Exception) -> Any:
        return pb_utils.InferenceResponse(
            output_tensors=[], error=pb_utils.TritonError(f"{self.model_name}: {type(exc).__name__}: {exc}")
        )

    def finalize(self) -> None:
        self.session = None
