"""`linesight evaluate`: a dataset through the real serving path, scored against its labels.

Every image goes through Triton exactly as a camera frame would (encoded bytes into the
product's inspection ensemble), so the figures describe the deployed artifact, preprocessing
included, not a notebook copy of it. The thresholds are the model's own (fixed at training);
nothing is tuned on the evaluated set. A unit in the grey zone (`review`) is removed by the gate,
so it counts as a reject for the detection and false-reject rates; the review rate is reported
beside them.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.datasets.folder import NO_DEFECT, Dataset, dataset_hash, load_dataset
from pipeline.embedded.process import free_port
from pipeline.embedded.triton import TritonServer
from pipeline.model import repository
from pipeline.model.evaluate_offline import auroc, clopper_pearson_upper
from pipeline.settings import Settings
from pipeline.wire.messages import VERDICT_ORDER
from streams.triton_client import Failed, TritonInspector

VERDICTS = VERDICT_ORDER
PREDICTION_COLUMNS = ("image", "score", "verdict", "defect")
FAILED_DEFECT = "unscored"
BATCH = 32


class EvaluationError(ValueError):
    """The evaluation cannot run as asked (message says why)."""


@dataclass(frozen=True)
class Prediction:
    image: str  # as written in labels.csv
    score: float
    verdict: str
    defect: str  # predicted defect class; 'none' for pass
    model_version: int | None
    thresholds: tuple[float, float] | None  # (review, reject) of the version that judged it
    error: str | None = None  # Triton refused the image: fail-safe reject


@dataclass
class Evaluation:
    product: str
    model: str
    classifier: str
    model_version: int | None
    thresholds: dict[str, float]
    dataset: dict[str, Any]
    metrics: dict[str, Any]
    overlap_with_training: int
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_model_spec(spec: str | None) -> tuple[str | None, int | None]:
    """`NAME[:VERSION]` -> (NAME or None, VERSION or None)."""
    if not spec:
        return None, None
    name, _, version = spec.partition(":")
    if version and not version.isdigit():
        raise EvaluationError(f"--model {spec!r}: VERSION must be a positive integer")
    return (name or None), (int(version) if version else None)


def resolve_models(settings: Settings, product: str, name: str | None) -> repository.ProductModels:
    """The ensemble to call and the classifier behind it; NAME may be either of them."""
    repo = Path(settings.triton.model_repository)
    models = repository.product_models(repo, product, settings.stream.product_models)
    if name is None or name in (models.ensemble, models.classifier):
        return models
    for classifier, owner in repository.products(repo).items():
        if name == classifier:
            found = repository.product_models(repo, owner, settings.stream.product_models)
            if found.classifier == name:
                return found
    mapping = {**settings.stream.product_models, product: name}
    try:
        return repository.product_models(repo, product, mapping)
    except repository.RepositoryError as exc:
        raise EvaluationError(f"--model {name!r}: {exc}") from exc


# ----------------------------------------------------------------------------- serving


@contextmanager
def serving(settings: Settings, models: repository.ProductModels, version: int | None) -> Iterator[Settings]:
    """Settings with a Triton URL: the configured one, or an embedded server started here.

    The embedded server runs on free ports with its own state directory, so it can run beside a
    `linesight up`. With `version`, it serves that version of the classifier (a derived source
    repository whose version policy names it); an external Triton must already serve it.
    """
    if settings.triton.url:
        yield settings
        return
    repo = Path(settings.triton.model_repository)
    with tempfile.TemporaryDirectory(prefix="linesight-evaluate-") as tmp:
        state = Path(tmp)
        source = repo if version is None else _pinned_repository(repo, models.classifier, version, state / "source")
        local = settings.model_copy(
            update={
                "state_dir": state,
                "triton": settings.triton.model_copy(
                    update={
                        "model_repository": source,
                        "embedded_http_port": free_port(),
                        "embedded_grpc_port": free_port(),
                        "embedded_metrics_port": free_port(),
                    }
                ),
            }
        )
        server = TritonServer(local, log_path=settings.log_dir / "evaluate-tritonserver.log")
        server.start()
        try:
            yield local.model_copy(update={"triton": local.triton.model_copy(update={"url": server.grpc_url})})
        finally:
            server.stop()


def _pinned_repository(repo: Path, classifier: str, version: int, out: Path) -> Path:
    """A view of `repo` (links) whose `classifier` serves `version`; nothing in `repo` changes."""
    if version not in repository.versions(repo, classifier):
        known = repository.versions(repo, classifier)
        raise EvaluationError(f"{classifier} has no version {version} (released: {known or 'none'})")
    out.mkdir(parents=True)
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if model_dir.name != classifier:
            (out / model_dir.name).symlink_to(model_dir.resolve(), target_is_directory=True)
            continue
        (out / classifier).mkdir()
        for item in model_dir.iterdir():
            if item.name != repository.CONFIG_FILE:
                (out / classifier / item.name).symlink_to(item.resolve(), target_is_directory=item.is_dir())
        config = repository.read_config(repo, classifier)
        repository.set_live_version(config, version)
        repository.write_config(out, classifier, config)
    return out


async def _score_all(
    settings: Settings, ensemble: str, dataset: Dataset, progress: Callable[[int], None] | None
) -> list[Prediction]:
    inspector = TritonInspector(settings.triton)
    predictions: list[Prediction] = []
    try:
        for start in range(0, len(dataset.rows), BATCH):
            rows = dataset.rows[start : start + BATCH]
            outcomes = await inspector.score(ensemble, [r.image.read_bytes() for r in rows])
            for row, outcome in zip(rows, outcomes, strict=True):
                name = dataset.relative(row)
                if isinstance(outcome, Failed):
                    predictions.append(Prediction(name, 1.0, "reject", FAILED_DEFECT, None, None, outcome.reason))
                    continue
                defect = NO_DEFECT if outcome.verdict == "pass" else outcome.defect
                predictions.append(
                    Prediction(
                        name, outcome.score, outcome.verdict, defect, outcome.model_version,
                        (outcome.review_threshold, outcome.reject_threshold),
                    )
                )
            if progress:
                progress(len(rows))
    finally:
        await inspector.close()
    return predictions


# ----------------------------------------------------------------------------- metrics


def verdict_metrics(dataset: Dataset, predictions: list[Prediction]) -> dict[str, Any]:
    """AUROC on scores; detection/false-reject/review rates at the model's own thresholds."""
    is_defect = np.array([r.is_defect for r in dataset.rows], dtype=bool)
    scores = np.array([p.score for p in predictions], dtype=np.float64)
    verdicts = np.array([p.verdict for p in predictions], dtype=object)
    removed = verdicts != "pass"
    n_good, n_defect = int((~is_defect).sum()), int(is_defect.sum())
    false_rejects, detected = int(removed[~is_defect].sum()), int(removed[is_defect].sum())

    by_class: dict[str, dict[str, float | int]] = {}
    for name in sorted({r.defect for r in dataset.rows if r.is_defect}):
        sel = np.array([r.is_defect and r.defect == name for r in dataset.rows])
        by_class[name] = {"n": int(sel.sum()), "recall": float(removed[sel].mean())}

    truth = ["good" if not r.is_defect else r.defect for r in dataset.rows]
    confusion: dict[str, dict[str, int]] = {}
    for t, v in zip(truth, verdicts, strict=True):
        confusion.setdefault(t, dict.fromkeys(VERDICTS, 0))[str(v)] += 1
    class_confusion: dict[str, dict[str, int]] = {}
    for row, p in zip(dataset.rows, predictions, strict=True):
        if row.is_defect and p.verdict != "pass":
            class_confusion.setdefault(row.defect, Counter())[p.defect] += 1

    def rate(k: int, n: int) -> float | None:
        return k / n if n else None

    return {
        "n": len(predictions),
        "n_good": n_good,
        "n_defect": n_defect,
        "auroc": auroc(scores, is_defect) if n_good and n_defect else None,
        "detection_rate": rate(detected, n_defect),
        "detection_rate_lower95": (1.0 - clopper_pearson_upper(n_defect - detected, n_defect)) if n_defect else None,
        "false_reject_rate": rate(false_rejects, n_good),
        "false_reject_rate_upper95": clopper_pearson_upper(false_rejects, n_good) if n_good else None,
        "review_rate": rate(int((verdicts == "review").sum()), len(predictions)),
        "good_in_review": int(((verdicts == "review") & ~is_defect).sum()),
        "defects_auto_rejected": rate(int(((verdicts == "reject") & is_defect).sum()), n_defect),
        "unscored": sum(1 for p in predictions if p.error),
        "recall_by_class": by_class,
        "confusion": confusion,
        "defect_class_confusion": {k: dict(v) for k, v in class_confusion.items()},
    }


def write_predictions(path: Path, predictions: list[Prediction]) -> None:
    """CSV `image,score,verdict,defect`, one row per dataset row, in dataset order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(PREDICTION_COLUMNS)
        for p in predictions:
            w.writerow([p.image, f"{p.score:.6g}", p.verdict, p.defect])
    tmp.replace(path)


def training_overlap(repo: Path, classifier: str, version: int | None, dataset: Dataset) -> int:
    """How many evaluated images have the content hash of an image the version was trained on."""
    if version is None:
        return 0
    path = repository.version_dir(repo, classifier, version) / repository.TRAINING_HASHES
    if not path.is_file():
        return 0
    trained = {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
    return sum(1 for r in dataset.rows if hashlib.sha256(r.image.read_bytes()).hexdigest() in trained)


# ----------------------------------------------------------------------------- command


def evaluate(
    settings: Settings,
    data: Path,
    product: str,
    predictions_path: Path,
    model_spec: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Score every row of `product` in `data` through Triton; write the predictions CSV."""
    name, version = parse_model_spec(model_spec)
    dataset = load_dataset(Path(data), product)  # DatasetError lists every bad row
    if not dataset.rows:
        raise EvaluationError(f"dataset {data} has no rows of product {product!r}")
    models = resolve_models(settings, product, name)
    with serving(settings, models, version) as live:
        predictions = asyncio.run(_score_all(live, models.ensemble, dataset, progress))

    served = sorted({p.model_version for p in predictions if p.model_version is not None})
    if version is not None and served and served != [version]:
        raise EvaluationError(f"asked for {models.classifier} version {version}, Triton served {served}")
    if len(served) > 1:
        raise EvaluationError(f"versions {served} of {models.classifier} answered during one evaluation (a deploy ran?)")
    judged = served[0] if served else version
    write_predictions(Path(predictions_path), predictions)

    repo = Path(settings.triton.model_repository)
    served_thresholds = next((p.thresholds for p in predictions if p.thresholds is not None), None)
    thresholds = dict(zip(("review", "reject"), served_thresholds, strict=True)) if served_thresholds else {}
    overlap = training_overlap(repo, models.classifier, judged, dataset)
    warnings = []
    if overlap:
        warnings.append(
            f"{overlap} of {len(dataset.rows)} evaluated images have the content hash of an image "
            f"{models.classifier} version {judged} was trained or calibrated on: these figures are "
            "not an independent test"
        )
    return Evaluation(
        product=product,
        model=models.ensemble,
        classifier=models.classifier,
        model_version=judged,
        thresholds=thresholds,
        dataset={"path": str(Path(data).resolve()), "rows": len(dataset.rows), "content_hash": dataset_hash(dataset)},
        metrics=verdict_metrics(dataset, predictions),
        overlap_with_training=overlap,
        warnings=warnings,
    )


def summary_text(ev: Evaluation) -> str:
    """What an operator reads: the model judged, the headline rates, per-class recall."""
    m = ev.metrics

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f} %"

    auroc_text = "n/a" if m["auroc"] is None else f"{m['auroc']:.4f}"
    lines = [
        f"{ev.product}: {ev.model} ({ev.classifier} version {ev.model_version}), "
        f"{m['n']} images ({m['n_good']} good, {m['n_defect']} defective)",
        f"  thresholds     {', '.join(f'{k} {v:.4g}' for k, v in ev.thresholds.items()) or 'n/a'}",
        f"  AUROC          {auroc_text}",
        f"  detection      {pct(m['detection_rate'])} (95 % lower bound {pct(m['detection_rate_lower95'])})",
        f"  false rejects  {pct(m['false_reject_rate'])} (95 % upper bound {pct(m['false_reject_rate_upper95'])})",
        f"  review         {pct(m['review_rate'])} of units ({m['good_in_review']} good units recoverable by review)",
    ]
    for name, c in m["recall_by_class"].items():
        lines.append(f"  recall {name:<14} {pct(c['recall'])} of {c['n']}")
    if m["unscored"]:
        lines.append(f"  unscored       {m['unscored']} image(s) Triton refused (counted as rejects)")
    return "\n".join(lines)
