"""Where training puts a model version in the Triton model repository (docs/models.md).

Training never edits files in place: a version's files are written into a staging directory
inside the repository (same file system) and renamed into `<classifier>/<V>/` in one step, then
the classifier's config gets the version's classes (and, for a product's first version that
passed its release gate, its live version; one that failed leaves the product with none). A product without models gets `<slug>_inspector` and `<slug>_classifier`, made
from the committed `tablet_inspector` / `tablet_classifier` configs, each renamed into place
whole. A failure before the rename leaves the repository as it was. The layout itself (names,
configs, versions) is `pipeline.model.repository`'s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from pipeline.model import repository as layout

TEMPLATE_ENSEMBLE = "tablet_inspector"
TEMPLATE_CLASSIFIER = "tablet_classifier"
TEMPLATE_PREPROCESS = "tablet_preprocess"
INPUT_NAME = "INPUT"


@dataclass(frozen=True)
class Target:
    """The models a training run writes into, and the version it will write."""

    repo: Path
    models: layout.ProductModels
    version: int
    new_product: bool  # neither model exists yet: both are created from the templates
    make_live: bool  # nothing is live: this version becomes live (training clears it when the gate fails)

    @property
    def version_dir(self) -> Path:
        return layout.version_dir(self.repo, self.models.classifier, self.version)


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


def input_hw(config: mc.ModelConfig) -> tuple[int, int]:
    """(H, W) of the INPUT dims [3, H, W] a classifier config declares: its input geometry."""
    for tensor in config.input:
        if tensor.name == INPUT_NAME:
            dims = list(tensor.dims)
            if len(dims) != 3 or dims[0] != 3 or min(dims[1:]) < 8:
                raise layout.RepositoryError(f"model {config.name!r}: INPUT dims must be [3, H, W], got {dims}")
            return int(dims[1]), int(dims[2])
    raise layout.RepositoryError(f"model {config.name!r} declares no INPUT")


def _set_dims(tensors: Any, name: str, hw: tuple[int, int]) -> None:
    for tensor in tensors:
        if tensor.name == name:
            del tensor.dims[:]
            tensor.dims.extend([3, *hw])


def plan(repo: Path, product: str, mapping: dict[str, str] | None = None) -> tuple[Target, mc.ModelConfig]:
    """Which models and version a training of `product` writes, and the classifier config it
    will extend (the template's, for a new product). Raises RepositoryError when the repository
    cannot take it (missing templates, classifier of another product)."""
    repo = Path(repo)
    if mapping is None:
        from pipeline.settings import Settings

        mapping = Settings().stream.product_models
    models = layout.product_models(repo, product, mapping)
    if layout.config_path(repo, models.classifier).is_file():
        config = layout.read_config(repo, models.classifier)
        if config.platform != layout.ONNX_PLATFORM:
            raise layout.RepositoryError(f"model {models.classifier!r} in {repo} is not an onnxruntime classifier")
        owner = layout.parameter(config, layout.PRODUCT_PARAM)
        if owner and owner != product:
            raise layout.RepositoryError(
                f"classifier {models.classifier!r} belongs to product {owner!r}, not {product!r}"
            )
        new_product = False
        make_live = not layout.versions(repo, models.classifier)
    else:
        config = layout.read_config(repo, TEMPLATE_CLASSIFIER)  # RepositoryError names the path
        layout.read_config(repo, TEMPLATE_ENSEMBLE)
        new_product, make_live = True, True
    version = layout.next_version(repo, models.classifier)
    return Target(repo, models, version, new_product, make_live), config


@contextmanager
def staging(repo: Path) -> Iterator[Path]:
    """A fresh directory inside the repository for a version's files; removed on exit."""
    path = Path(tempfile.mkdtemp(prefix=".train-", dir=Path(repo)))
    # mkdtemp makes it 0700 and it is renamed into place as the version folder: every service
    # reads a released version (Triton its model, the alert service its model card), not only
    # the user who trained it.
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _header(text: str) -> str:
    return "".join(f"# {line}\n" if line else "#\n" for line in text.splitlines())


def _classifier_config(template: mc.ModelConfig, target: Target, classes: list[str], hw: tuple[int, int],
                       invariance: str | None, input_space: dict[str, Any] | None = None) -> mc.ModelConfig:
    config = mc.ModelConfig()
    config.CopyFrom(template)
    config.name = target.models.classifier
    if layout.CLASSES_PARAM in config.parameters:
        del config.parameters[layout.CLASSES_PARAM]
    layout.set_parameter(config, layout.PRODUCT_PARAM, target.models.product)
    _set_dims(config.input, INPUT_NAME, hw)
    if invariance:
        layout.set_parameter(config, layout.INVARIANCE_PARAM, invariance)
    elif layout.INVARIANCE_PARAM in config.parameters:  # the template's product's, not this one's
        del config.parameters[layout.INVARIANCE_PARAM]
    layout.set_classes(config, target.version, classes)
    layout.set_input_space(config, target.version, input_space, keep=set())  # the template's are not this product's
    if target.make_live:  # a new product's first version goes live only if it passed its release gate
        layout.set_live_version(config, target.version)
    else:
        layout.clear_live_version(config)
    return config


def _output_hw(config: mc.ModelConfig) -> tuple[int, int]:
    for tensor in config.output:
        if tensor.name == INPUT_NAME and len(tensor.dims) == 3:
            return int(tensor.dims[1]), int(tensor.dims[2])
    raise layout.RepositoryError(f"model {config.name!r} declares no output {INPUT_NAME} [3, H, W]")


def preprocess_name(product: str) -> str:
    """The preprocessing model of a product whose input geometry is not the template's."""
    return f"{layout.slug(product)}_preprocess"


def _preprocess_config(repo: Path, target: Target, hw: tuple[int, int]) -> mc.ModelConfig:
    config = layout.read_config(repo, TEMPLATE_PREPROCESS)
    config.name = preprocess_name(target.models.product)
    _set_dims(config.output, INPUT_NAME, hw)
    return config


def _ensemble_config(repo: Path, target: Target, preprocess: str) -> mc.ModelConfig:
    config = layout.read_config(repo, TEMPLATE_ENSEMBLE)
    config.name = target.models.ensemble
    for step in config.ensemble_scheduling.step:
        if step.model_name == TEMPLATE_CLASSIFIER:
            step.model_name = target.models.classifier
        elif step.model_name == TEMPLATE_PREPROCESS:
            step.model_name = preprocess
    if layout.PRODUCT_PARAM in config.parameters:
        layout.set_parameter(config, layout.PRODUCT_PARAM, target.models.product)
    return config


def _forget_unreleased(repo: Path, config: mc.ModelConfig) -> None:
    """Drop `classes` entries of versions that have no artifact (e.g. the committed entry for
    version 1 before `make model` built it), so this version's entry is the one recorded."""
    current = layout.classes_by_version(config)
    released = set(layout.versions(repo, config.name))
    layout.set_input_space(config, None, None, keep=released)
    if all(v in released for v in current):
        return
    del config.parameters[layout.CLASSES_PARAM]
    for v in sorted(released & set(current)):
        layout.set_classes(config, v, current[v])


def install(target: Target, config: mc.ModelConfig, staged: Path, classes: list[str],
            hw: tuple[int, int] | None = None, invariance: str | None = None,
            input_space: dict[str, Any] | None = None) -> Path:
    """Move the staged version files into `<classifier>/<V>/` and record the version's classes,
    its `input_space` reference (pipeline.model.input_space) and the product's declared
    `invariance`.

    `staged` holds model.onnx, the model cards and training_images.sha256; it is renamed (not
    copied). `hw`: the version's input geometry; an existing classifier's must equal its config's;
    a new product whose geometry is not the template preprocessing's gets its own
    `<slug>_preprocess` (the template's code, its output dims) in its ensemble. Returns the
    version directory.
    """
    repo, models = target.repo, target.models
    final = target.version_dir
    hw = hw or input_hw(config)
    if final.exists():
        raise layout.RepositoryError(f"{final} appeared while training: versions are never overwritten")
    if not target.new_product:
        if input_hw(config) != hw:
            raise layout.RepositoryError(f"{models.classifier} takes INPUT {input_hw(config)}, the version is {hw}")
        config = mc.ModelConfig.FromString(config.SerializeToString())
        _forget_unreleased(repo, config)
        layout.set_classes(config, target.version, classes)
        layout.set_input_space(config, target.version, input_space)
        if invariance:
            layout.set_parameter(config, layout.INVARIANCE_PARAM, invariance)
        if not layout.parameter(config, layout.PRODUCT_PARAM):
            layout.set_parameter(config, layout.PRODUCT_PARAM, models.product)
        if target.make_live:
            layout.set_live_version(config, target.version)
        os.rename(staged, final)
        try:
            layout.write_config(repo, models.classifier, config)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        return final

    # A new product: build its model directories beside the repository's models, then rename.
    template_hw = _output_hw(layout.read_config(repo, TEMPLATE_PREPROCESS))
    own_preprocess = hw != template_hw and not layout.config_path(repo, models.ensemble).is_file()
    preprocess = preprocess_name(models.product) if own_preprocess else TEMPLATE_PREPROCESS
    if own_preprocess and (repo / preprocess).exists():
        raise layout.RepositoryError(f"{repo / preprocess} exists but no ensemble {models.ensemble!r} uses it")
    built: list[Path] = []
    placed: list[Path] = []
    try:
        for name, cfg, note, version_files in (
            (preprocess, _preprocess_config(repo, target, hw) if own_preprocess else None,
             f"{preprocess}: decodes product {models.product}'s frames into its classifier's input\n"
             f"[3, {hw[0]}, {hw[1]}] ({TEMPLATE_PREPROCESS}'s code; see docs/models.md, Input geometry).",
             repo / TEMPLATE_PREPROCESS / "1"),
            (models.classifier, _classifier_config(config, target, classes, hw, invariance, input_space),
             f"{models.classifier}: classifier of product {models.product}, trained by `linesight train`\n"
             f"(made from {TEMPLATE_CLASSIFIER}; see docs/models.md). version_policy names the live version.",
             staged),
            (models.ensemble, _ensemble_config(repo, target, preprocess)
             if not layout.config_path(repo, models.ensemble).is_file() else None,
             f"{models.ensemble}: inspection ensemble of product {models.product}\n"
             f"({TEMPLATE_ENSEMBLE}'s steps with {models.classifier}; see docs/models.md).",
             None),
        ):
            if cfg is None:
                continue
            tmp_name = f".{name}.tmp-{os.getpid()}"
            tmp = repo / tmp_name
            tmp.mkdir()
            built.append(tmp)
            (tmp / layout.CONFIG_FILE).write_text(_header(note), encoding="utf-8")
            layout.write_config(repo, tmp_name, cfg)
            if version_files is not None and name == preprocess:
                shutil.copytree(version_files, tmp / "1", ignore=shutil.ignore_patterns("__pycache__"))
            elif version_files is not None:
                os.rename(version_files, tmp / str(target.version))
            else:
                (tmp / "1").mkdir()
                (tmp / "1" / ".gitkeep").touch()
        for tmp in built:
            name = tmp.name[1:].rsplit(".tmp-", 1)[0]
            if (repo / name).exists():
                raise layout.RepositoryError(f"{repo / name} appeared while training")
        for tmp in list(built):
            name = tmp.name[1:].rsplit(".tmp-", 1)[0]
            os.rename(tmp, repo / name)
            placed.append(repo / name)
            built.remove(tmp)
    except BaseException:
        for path in built + placed:
            shutil.rmtree(path, ignore_errors=True)
        raise
    return final
