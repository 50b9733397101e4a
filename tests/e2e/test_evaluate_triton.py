"""`linesight evaluate` through the real embedded Triton: the command starts its own tritonserver
on the trained tablet model and scores a rendered dataset."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from pipeline.datasets.folder import NO_DEFECT, load_dataset
from pipeline.imaging.generate import generate_dataset
from pipeline.model import repository
from pipeline.settings import Settings
from pipeline.validation.evaluate import evaluate

PROJECT_REPO = Path(__file__).resolve().parents[2] / "triton_models"
PRODUCT = "tablet-round-white-10mm"


def _trained_version() -> int | None:
    try:
        config = repository.read_config(PROJECT_REPO, "tablet_classifier")
    except repository.RepositoryError:
        return None
    live = repository.live_version(config)
    return live if live in repository.versions(PROJECT_REPO, "tablet_classifier") else None


needs_model = pytest.mark.skipif(_trained_version() is None, reason="tablet model not trained (make model)")


@needs_model
def test_evaluate_through_embedded_triton(tmp_path: Path, embedded_settings: Settings) -> None:
    """A real evaluation: the command starts its own Triton, every row is scored once, the CSV
    agrees with the metrics, and images the version was trained on raise the overlap warning."""
    version = _trained_version()
    assert version is not None
    data = generate_dataset(tmp_path / "ds", 24, [PRODUCT], 0.5, seed=11, size=160)
    ds = load_dataset(data, PRODUCT)

    # A repository view whose live version lists some of these images as training images.
    repo = tmp_path / "repo"
    repo.mkdir()
    for model_dir in PROJECT_REPO.iterdir():
        if model_dir.is_dir() and model_dir.name != "tablet_classifier":
            (repo / model_dir.name).symlink_to(model_dir, target_is_directory=True)
    classifier = repo / "tablet_classifier"
    classifier.mkdir()
    shutil.copy(PROJECT_REPO / "tablet_classifier" / repository.CONFIG_FILE, classifier / repository.CONFIG_FILE)
    vdir = classifier / str(version)
    vdir.mkdir()
    for item in (PROJECT_REPO / "tablet_classifier" / str(version)).iterdir():
        if item.name != repository.TRAINING_HASHES:
            (vdir / item.name).symlink_to(item)
    shared = [hashlib.sha256(r.image.read_bytes()).hexdigest() for r in ds.rows[:3]]
    (vdir / repository.TRAINING_HASHES).write_text("\n".join(shared) + "\n")

    settings = embedded_settings.model_copy(
        update={"triton": embedded_settings.triton.model_copy(update={"model_repository": repo})}
    )
    out = tmp_path / "pred.csv"
    result = evaluate(settings, data, PRODUCT, out, f"tablet_classifier:{version}")

    assert result.model_version == version
    assert result.overlap_with_training == 3
    assert any("not an independent test" in w for w in result.warnings)
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [ds.relative(r) for r in ds.rows]
    assert {r["verdict"] for r in rows} <= {"pass", "review", "reject"}
    removed_defects = sum(1 for r, row in zip(rows, ds.rows, strict=True) if row.is_defect and r["verdict"] != "pass")
    m = result.metrics
    assert m["n"] == len(ds.rows) and m["unscored"] == 0
    assert m["detection_rate"] == pytest.approx(removed_defects / m["n_defect"])
    for r in rows:
        assert (r["defect"] == NO_DEFECT) == (r["verdict"] == "pass")
    review, reject = result.thresholds["review"], result.thresholds["reject"]
    for r in rows:  # the verdict is the model's own thresholds applied to the score
        score = float(r["score"])
        expected = "reject" if score > reject else "review" if score > review else "pass"
        if abs(score - reject) > 1e-5 and abs(score - review) > 1e-5:
            assert r["verdict"] == expected
    json.dumps(result.as_dict())  # the --json output is serialisable


VIAL = "heldout-vial-2ml-upright"


def test_a_non_square_product_is_served_at_its_own_geometry(tmp_path: Path, embedded_settings: Settings) -> None:
    """An upright vial (96 x 192 frames) trained into a repository next to the project's models is
    served by the real Triton through its own preprocessing model at [3, 192, 96]: every score
    Triton returns is the score onnxruntime gives the same version offline (issue 14)."""
    from benchmarks.heldout.generate import generate
    from pipeline.model.data import load_images, supervised_classes
    from pipeline.model.export import input_geometry, onnx_outputs
    from pipeline.model.heldout import evaluate_folder
    from pipeline.model.release import AcceptanceCriteria
    from pipeline.model.train import train_model

    data = generate(tmp_path / "vial", [VIAL], 16, seed=5).parent
    repo = tmp_path / "repo"
    repo.mkdir()
    for model_dir in PROJECT_REPO.iterdir():
        if model_dir.is_dir() and not model_dir.name.startswith("."):
            (repo / model_dir.name).symlink_to(model_dir, target_is_directory=True)
    trained = train_model(repo, VIAL, data=data, invariance="upright", base="none", epochs=1, search=False,
                          progress=False, acceptance=AcceptanceCriteria(min_detection=0.0, max_false_reject=1.0))
    assert trained.live and (repo / "heldout_vial_2ml_upright_preprocess").is_dir()

    settings = embedded_settings.model_copy(
        update={"triton": embedded_settings.triton.model_copy(update={"model_repository": repo})}
    )
    result = evaluate(settings, data, VIAL, tmp_path / "pred.csv", f"{trained.model}:1")
    assert result.model_version == 1 and result.metrics["unscored"] == 0
    with open(tmp_path / "pred.csv", newline="", encoding="utf-8") as f:
        served = {r["image"]: float(r["score"]) for r in csv.DictReader(f)}
    offline = evaluate_folder(trained.onnx_path, data, VIAL)
    assert offline["thresholds"] == list(trained.thresholds)
    ds = load_dataset(data, VIAL)
    assert input_geometry(trained.onnx_path) == (192, 96)
    x = load_images([(ds.relative(r), r.image.read_bytes(), r.defect) for r in ds.rows], (192, 96),
                    classes=supervised_classes([r.defect for r in ds.rows])).x
    scores = onnx_outputs(trained.onnx_path, x)["SCORE"][:, 0]
    for row, s in zip(ds.rows, scores, strict=True):
        assert served[ds.relative(row)] == pytest.approx(float(s), abs=1e-4)
