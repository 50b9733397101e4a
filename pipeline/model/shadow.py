"""Serve a candidate classifier version beside the live one, under a name the line never calls.

Shadow deployment (docs/models.md, "Shadow deployment") loads, into the running Triton, one model
made from the product's own repository entry: ``<classifier>__shadow``, the classifier's config
with ``version_policy`` naming the candidate version, and that version's ``model.onnx`` (on the
embedded CPU server: the python-backend twin, exactly as `pipeline.embedded.triton` derives it).
Config and file travel in the load request itself (Triton's ``load_model`` with a config
override and files), so the committed repository, the derived repository and the live
classifier's config and ``version_policy`` are never touched: nothing the worker calls changes.

Triton cannot load an ensemble over a model loaded that way (it polls the repository for its
steps and finds no ``__shadow`` there), so the shadow runs the live ensemble's steps itself,
`ensemble_steps`, with the classifier step on the shadow classifier: the same preprocessing
models, the same tensors. A shadow killed before it unloads leaves one idle model that nothing
calls (the next start replaces it, `unload_shadow` removes it, a Triton restart forgets it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc

from pipeline.embedded.triton import ONNX_MODEL_PY, derive_python_config
from pipeline.model import repository as repo_mod
from pipeline.model.deploy import DeployError, TritonTarget, deploy_problems, resolve_classifier
from pipeline.settings import Settings

SUFFIX = "__shadow"
LOAD_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class ShadowModels:
    """What a shadow scores with: the candidate and the live version it is compared with."""

    product: str
    classifier: str  # the live classifier (its repository entry)
    ensemble: str  # the live ensemble the worker calls
    version: int  # the candidate version
    live_version: int | None  # the live version when the shadow started (results name their own)
    shadow_classifier: str
    steps: tuple[Step, ...]  # the live ensemble's steps, the classifier's on the shadow classifier


@dataclass(frozen=True)
class Step:
    """One ensemble step: the model, its inputs and outputs as (model tensor, ensemble tensor)."""

    model: str
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]


def shadow_name(model: str) -> str:
    return f"{model}{SUFFIX}"


def resolve(settings: Settings, product: str, version: int) -> ShadowModels:
    """The models of a shadow of `version` of `product`'s classifier; refuses what may not be scored.

    A candidate must be a released, intact artifact (the deploy checks of `deploy_problems`); its
    release gate is not required: judging a version that failed it on real frames is a reason to
    shadow it. The live version itself is refused (nothing to compare)."""
    repo = Path(settings.triton.model_repository)
    product, classifier = resolve_classifier(settings, product)
    models = repo_mod.product_models(repo, product, settings.stream.product_models)
    live = repo_mod.live_version(repo_mod.read_config(repo, classifier))
    if version == live:
        raise DeployError(f"{classifier} version {version} is the live version: shadow another version")
    problems = deploy_problems(repo, classifier, version)
    if problems:
        raise DeployError(f"refusing to shadow {classifier} version {version}: " + "; ".join(problems))
    return ShadowModels(product, classifier, models.ensemble, version, live, shadow_name(classifier),
                        ensemble_steps(repo, models.ensemble, classifier))


def classifier_config(repo: Path, classifier: str, version: int, embedded: bool) -> mc.ModelConfig:
    """The shadow classifier's config: the live one renamed, naming only `version`."""
    config = repo_mod.read_config(repo, classifier)
    config.name = shadow_name(classifier)
    repo_mod.set_live_version(config, version)
    return derive_python_config(config) if embedded else config


def ensemble_steps(repo: Path, ensemble: str, classifier: str) -> tuple[Step, ...]:
    """The live ensemble's steps in order, its classifier step on the shadow classifier."""
    config = repo_mod.read_config(repo, ensemble)
    steps = tuple(
        Step(shadow_name(s.model_name) if s.model_name == classifier else s.model_name,
             tuple(sorted(s.input_map.items())), tuple(sorted(s.output_map.items())))
        for s in config.ensemble_scheduling.step
    )
    if not any(s.model == shadow_name(classifier) for s in steps):
        raise DeployError(f"ensemble {ensemble!r} has no step on {classifier!r}")
    return steps


def _json(config: mc.ModelConfig) -> str:
    return json_format.MessageToJson(config, preserving_proto_field_name=True)


def classifier_files(repo: Path, classifier: str, version: int, embedded: bool) -> dict[str, bytes]:
    """The version directory as Triton's load request carries it (``file:<version>/<name>``)."""
    vdir = repo_mod.version_dir(repo, classifier, version)
    files = {f"file:{version}/{repo_mod.ONNX_FILE}": (vdir / repo_mod.ONNX_FILE).read_bytes()}
    if embedded:  # the CPU server runs the ONNX file with onnxruntime inside the python backend
        files[f"file:{version}/model.py"] = ONNX_MODEL_PY.read_bytes()
    return files


def load_shadow(settings: Settings, models: ShadowModels, timeout_s: float = LOAD_TIMEOUT_S) -> float:
    """Load the shadow classifier into the running Triton; returns the seconds it took.

    Raises DeployError when no Triton answers or it refuses the model (nothing is left loaded)."""
    target = TritonTarget.from_settings(settings)
    if not target.reachable():
        raise DeployError(f"no Triton answers at {target.url}: a shadow needs the running line's Triton")
    repo = Path(settings.triton.model_repository)
    client = target.client()
    started = time.monotonic()
    try:
        client.load_model(
            models.shadow_classifier, headers=target.control_headers, client_timeout=timeout_s,
            config=_json(classifier_config(repo, models.classifier, models.version, target.embedded)),
            files=classifier_files(repo, models.classifier, models.version, target.embedded),
        )
    except Exception as exc:  # noqa: BLE001 - any refusal: leave nothing half-loaded
        unload_shadow(settings, models)
        why = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
        raise DeployError(f"Triton at {target.url} did not load the shadow of {models.classifier} "
                          f"version {models.version}: {(why or type(exc).__name__).strip().splitlines()[0]}") from exc
    return time.monotonic() - started


def unload_shadow(settings: Settings, models: ShadowModels) -> list[str]:
    """Unload the shadow classifier; returns what could not be unloaded and why ([] when done)."""
    target = TritonTarget.from_settings(settings)
    problems: list[str] = []
    try:
        client: Any = target.client()
        client.unload_model(models.shadow_classifier, headers=target.control_headers)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"Triton at {target.url}: {exc}")
    return problems


def served(settings: Settings, models: ShadowModels) -> bool:
    """The shadow classifier is ready in Triton with the candidate version (and only it)."""
    # Not from the repository index: a model loaded with its files in the request is not in it.
    target = TritonTarget.from_settings(settings)
    try:
        return bool(target.client().is_model_ready(models.shadow_classifier, str(models.version)))
    except Exception:  # noqa: BLE001
        return False
