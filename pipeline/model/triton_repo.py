"""The classifier's place in the Triton model repository: config, artifacts, model card.

`config.pbtxt` files are committed; training only rewrites the `reject_threshold` and
`product` parameter values of `tablet_classifier/config.pbtxt` and writes the build outputs
`tablet_classifier/1/model.onnx` and `1/model_card.json`. Every write is atomic (temp file +
rename) so a crash never leaves a half-written model where Triton would load it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

CLASSIFIER = "tablet_classifier"
VERSION = "1"
ONNX_FILE = "model.onnx"
CARD_FILE = "model_card.json"


def classifier_dir(repo: Path) -> Path:
    return Path(repo) / CLASSIFIER


def config_path(repo: Path) -> Path:
    return classifier_dir(repo) / "config.pbtxt"


def version_dir(repo: Path) -> Path:
    return classifier_dir(repo) / VERSION


def read_config(repo: Path) -> str:
    """The classifier's committed config text (FileNotFoundError names the expected path)."""
    path = config_path(repo)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {repo} is not a LineSight Triton model repository")
    return path.read_text(encoding="utf-8")


def config_input_size(text: str) -> int:
    """S of the INPUT dims [3, S, S] declared in a classifier config."""
    m = re.search(r'name:\s*"INPUT".*?dims:\s*\[([^\]]*)\]', text, re.S)
    if not m:
        raise ValueError("config declares no INPUT dims")
    dims = [int(d) for d in m.group(1).replace(",", " ").split()]
    if len(dims) != 3 or dims[0] != 3 or dims[1] != dims[2]:
        raise ValueError(f"INPUT dims must be [3, S, S], got {dims}")
    return dims[1]


def config_parameter(text: str, key: str) -> str:
    """The string value of parameter `key` in a config."""
    m = re.search(_param_pattern(key), text, re.S)
    if not m:
        raise ValueError(f"config has no parameter {key!r}")
    return m.group(2)


def set_config_parameter(text: str, key: str, value: str) -> str:
    """Config text with parameter `key` set to `value` (the parameter must already exist)."""
    if '"' in value or "\\" in value:
        raise ValueError(f"parameter value must not contain quotes or backslashes: {value!r}")
    new, n = re.subn(_param_pattern(key), lambda m: f"{m.group(1)}{value}{m.group(3)}", text, flags=re.S)
    if n != 1:
        raise ValueError(f"config has {n} parameters named {key!r}, expected exactly one")
    return new


def _param_pattern(key: str) -> str:
    return r'(key:\s*"' + re.escape(key) + r'"\s*value:\s*\{\s*string_value:\s*")([^"]*)("\s*\})'


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def code_version() -> str:
    """`git describe` of the checkout this code runs from, else the installed package version."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=here, capture_output=True, text=True, timeout=10, check=True,
        )
        if out.stdout.strip():
            return f"git:{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"linesight=={version('linesight')}"
    except PackageNotFoundError:
        return "unknown"


def install(repo: Path, onnx_tmp: Path, card: dict[str, Any], threshold: float, product: str) -> tuple[Path, Path]:
    """Move a checked ONNX file into place, write its card, update the config parameters."""
    text = read_config(repo)
    text = set_config_parameter(text, "reject_threshold", repr(float(threshold)))
    text = set_config_parameter(text, "product", product)
    onnx_path = version_dir(repo) / ONNX_FILE
    card_path = version_dir(repo) / CARD_FILE
    os.replace(onnx_tmp, onnx_path)
    write_atomic(card_path, (json.dumps(card, indent=2, sort_keys=False) + "\n").encode())
    write_atomic(config_path(repo), text.encode())
    return onnx_path, card_path
