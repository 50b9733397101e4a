"""Read and edit the Triton model repository as docs/models.md defines it.

One module owns the repository's layout so that training (which adds versions), deployment
(which moves the live version) and serving (which reads classes) agree on it. Config files are
parsed and written with Triton's own protobuf schema, never with regular expressions; the
leading comment block of a committed config survives a rewrite.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

CONFIG_FILE = "config.pbtxt"
ONNX_FILE = "model.onnx"
CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
TRAINING_HASHES = "training_images.sha256"
DEPLOYMENTS_FILE = "deployments.jsonl"
ONNX_PLATFORM = "onnxruntime_onnx"
CLASSES_PARAM = "classes"
PRODUCT_PARAM = "product"
# The product's declared invariance (pipeline.model.geometry), recorded at its first training.
INVARIANCE_PARAM = "invariance"
# Per version: the input-space reference the worker checks frames against (pipeline.model.input_space).
INPUT_SPACE_PARAM = "input_space"


class RepositoryError(ValueError):
    """The repository does not hold what the request needs (message says what and where)."""


def slug(product: str) -> str:
    """Model-name form of a product id: `tablet-oval-yellow-14mm` -> `tablet_oval_yellow_14mm`."""
    s = re.sub(r"[^a-z0-9]+", "_", product.lower()).strip("_")
    if not s:
        raise RepositoryError(f"product id {product!r} has no letters or digits")
    return s


@dataclass(frozen=True)
class ProductModels:
    """The two Triton models of one product."""

    product: str
    ensemble: str  # what the worker and `evaluate` call
    classifier: str  # the versioned trained weights


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- configs


def config_path(repo: Path, model: str) -> Path:
    return Path(repo) / model / CONFIG_FILE


def read_config(repo: Path, model: str) -> mc.ModelConfig:
    path = config_path(repo, model)
    if not path.is_file():
        raise RepositoryError(f"{path} not found: no model {model!r} in repository {repo}")
    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())
    except text_format.ParseError as exc:
        raise RepositoryError(f"{path}: invalid model config: {exc}") from exc


def write_config(repo: Path, model: str, config: mc.ModelConfig) -> None:
    """Write `config`, keeping the leading `#` comment block of the file it replaces."""
    path = config_path(repo, model)
    header: list[str] = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            header.append(line)
    text = "\n".join(header + [text_format.MessageToString(config).rstrip()]) + "\n"
    write_atomic(path, text.encode("utf-8"))


def parameter(config: mc.ModelConfig, key: str) -> str | None:
    return config.parameters[key].string_value if key in config.parameters else None


def set_parameter(config: mc.ModelConfig, key: str, value: str) -> None:
    config.parameters[key].string_value = value


# ----------------------------------------------------------------------------- products


def product_models(repo: Path, product: str, mapping: dict[str, str]) -> ProductModels:
    """Models of `product`: the ensemble from `mapping` (settings.stream.product_models) or by
    convention, the classifier from the ensemble's steps (convention when it does not exist)."""
    ensemble = mapping.get(product) or f"{slug(product)}_inspector"
    path = config_path(repo, ensemble)
    if not path.is_file():
        return ProductModels(product, ensemble, f"{slug(product)}_classifier")
    config = read_config(repo, ensemble)
    for step in config.ensemble_scheduling.step:
        step_path = config_path(repo, step.model_name)
        if step_path.is_file() and read_config(repo, step.model_name).platform == ONNX_PLATFORM:
            return ProductModels(product, ensemble, step.model_name)
    raise RepositoryError(f"ensemble {ensemble!r} in {repo} has no onnxruntime classifier step")


def products(repo: Path) -> dict[str, str]:
    """Classifier name -> product id, for every classifier in the repository."""
    found: dict[str, str] = {}
    for path in sorted(Path(repo).glob(f"*/{CONFIG_FILE}")):
        try:
            config = read_config(repo, path.parent.name)
        except RepositoryError:
            continue
        if config.platform == ONNX_PLATFORM:
            found[path.parent.name] = parameter(config, PRODUCT_PARAM) or ""
    return found


# ----------------------------------------------------------------------------- versions


def version_dir(repo: Path, model: str, version: int) -> Path:
    return Path(repo) / model / str(int(version))


def versions(repo: Path, model: str) -> list[int]:
    """Released versions (directories holding a model.onnx), ascending."""
    root = Path(repo) / model
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / ONNX_FILE).is_file())


def next_version(repo: Path, model: str) -> int:
    root = Path(repo) / model
    taken = [int(p.name) for p in root.iterdir() if p.name.isdigit()] if root.is_dir() else []
    return max(taken, default=0) + 1


def read_card(repo: Path, model: str, version: int) -> dict[str, Any]:
    path = version_dir(repo, model, version) / CARD_JSON
    if not path.is_file():
        raise RepositoryError(f"{path} not found: {model} version {version} has no model card")
    return json.loads(path.read_text(encoding="utf-8"))


def classes_by_version(config: mc.ModelConfig) -> dict[int, list[str]]:
    raw = parameter(config, CLASSES_PARAM)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RepositoryError(f"model {config.name!r}: parameter 'classes' is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RepositoryError(f"model {config.name!r}: parameter 'classes' must map version -> class list")
    return {int(k): [str(c) for c in v] for k, v in data.items()}


def set_classes(config: mc.ModelConfig, version: int, classes: list[str]) -> None:
    """Record `version`'s class names; an existing different entry is refused (versions are immutable)."""
    current = classes_by_version(config)
    if version in current and current[version] != list(classes):
        raise RepositoryError(f"model {config.name!r} version {version} already has classes {current[version]}")
    current[version] = list(classes)
    ordered = {str(v): current[v] for v in sorted(current)}
    set_parameter(config, CLASSES_PARAM, json.dumps(ordered, separators=(",", ":")))


def input_space_by_version(config: mc.ModelConfig) -> dict[int, dict[str, Any]]:
    """The `input_space` parameter: {version: reference dict}; {} when absent or unreadable."""
    try:
        data = json.loads(parameter(config, INPUT_SPACE_PARAM) or "{}")
    except json.JSONDecodeError:
        return {}
    return {int(k): v for k, v in data.items() if str(k).isdigit() and isinstance(v, dict)} if isinstance(data, dict) else {}


def set_input_space(config: mc.ModelConfig, version: int | None, entry: dict[str, Any] | None,
                    keep: set[int] | None = None) -> None:
    """Record `version`'s input-space reference (None: none); `keep`: drop other versions' entries
    not in it (versions with no artifact)."""
    current = input_space_by_version(config)
    if keep is not None:
        current = {v: e for v, e in current.items() if v in keep}
    if version is not None:
        current.pop(version, None)
        if entry is not None:
            current[version] = entry
    if current:
        set_parameter(config, INPUT_SPACE_PARAM, json.dumps({str(v): current[v] for v in sorted(current)},
                                                           separators=(",", ":")))
    elif INPUT_SPACE_PARAM in config.parameters:
        del config.parameters[INPUT_SPACE_PARAM]


def live_version(config: mc.ModelConfig) -> int | None:
    """The one version named by `version_policy.specific`, else None (nothing deployed)."""
    if config.version_policy.WhichOneof("policy_choice") != "specific":
        return None
    chosen = list(config.version_policy.specific.versions)
    return int(chosen[0]) if len(chosen) == 1 else None


def set_live_version(config: mc.ModelConfig, version: int) -> None:
    config.version_policy.Clear()
    config.version_policy.specific.versions.append(int(version))


def clear_live_version(config: mc.ModelConfig) -> None:
    """No live version: `version_policy { specific { } }` names none (a product whose only
    versions failed their release gate; `live_version` is None). Never Triton's default policy,
    which would serve the newest version."""
    config.version_policy.Clear()
    config.version_policy.specific.SetInParent()


def names_no_version(config: mc.ModelConfig) -> bool:
    """The policy `clear_live_version` writes: `specific` with no version (not Triton's default)."""
    policy = config.version_policy
    return policy.WhichOneof("policy_choice") == "specific" and not policy.specific.versions


# ----------------------------------------------------------------------------- deployments


def deployments_path(repo: Path, model: str) -> Path:
    return Path(repo) / model / DEPLOYMENTS_FILE


def append_deployment(repo: Path, model: str, entry: dict[str, Any]) -> None:
    """Append one entry to `deployments.jsonl` (append-only: earlier lines are never rewritten)."""
    path = deployments_path(repo, model)
    line = json.dumps(entry, separators=(",", ":"), sort_keys=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def deployments(repo: Path, model: str) -> list[dict[str, Any]]:
    """Every entry of `deployments.jsonl`, oldest first ([] when nothing was ever deployed)."""
    path = deployments_path(repo, model)
    if not path.is_file():
        return []
    entries: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise RepositoryError(f"{path}:{number}: not JSON: {exc}") from exc
    return entries
