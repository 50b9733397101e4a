"""`linesight train`: versions written per docs/models.md, modes, calibration, bad input, atomicity.

Tiny datasets and one epoch: these check behaviour (files, cards, configs, served outputs,
refusals), not accuracy (benchmarks/bench_training.py and the README figures do that).
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from support import untrained_repository

from pipeline.datasets.folder import DatasetError
from pipeline.imaging.generate import generate_dataset
from pipeline.imaging.products import ASSORTED_TABLETS
from pipeline.model import repository as layout
from pipeline.model.data import CLASSES, GOOD_ONLY_CLASSES, concat_sets, render_set
from pipeline.model.export import ParityError
from pipeline.model.preprocess import prepare_image
from pipeline.model.release import AcceptanceCriteria
from pipeline.model.train import CALIBRATION_VARIANTS, train_model
from pipeline.model.training_sets import as_good_only

REPO = Path(__file__).resolve().parents[2] / "triton_models"
ROUND = "tablet-round-white-10mm"
OVAL = "tablet-oval-yellow-14mm"
# One-epoch models on 40 images cannot meet the real acceptance criteria: these tests judge them by
# criteria every version passes, so a first version goes live (the release gate itself:
# tests/unit/test_release_gating.py).
PASS_ALL = AcceptanceCriteria(min_detection=0.0, max_false_reject=1.0)
FAST = {"epochs": 1, "folds": 2, "progress": False, "mapping": {ROUND: "tablet_inspector"}, "acceptance": PASS_ALL}


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """The committed model repository: configs only, no trained versions."""
    return untrained_repository(tmp_path / "triton_models")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """28 round tablets (every defect class present) and 12 oval ones."""
    root = tmp_path_factory.mktemp("ds")
    generate_dataset(root / "round", 40, [ROUND], 0.5, seed=4)
    return root / "round"


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _run_onnx(path: Path, n: int = 3) -> dict[str, np.ndarray]:
    from pipeline.imaging.tablets import render_tablet
    from pipeline.wire.codec import encode_png

    x = np.stack([prepare_image(encode_png(render_tablet(np.random.default_rng(i), ROUND, None))) for i in range(n)])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"INPUT": x}), strict=True))


def test_supervised_training_writes_version_1_then_2(repo: Path, dataset: Path) -> None:
    committed = (repo / "tablet_classifier/config.pbtxt").read_text()
    first = train_model(repo, ROUND, data=dataset, seed=1, **FAST)
    vdir = repo / "tablet_classifier/1"
    assert (first.model, first.version, first.version_dir, first.live) == ("tablet_classifier", 1, vdir, True)
    assert sorted(p.name for p in vdir.iterdir()) == sorted(
        [layout.ONNX_FILE, layout.CARD_JSON, layout.CARD_MD, layout.TRAINING_HASHES])
    assert not [p for p in repo.rglob(".*") if p.name != ".gitkeep"], "staging directories left behind"
    # Version 1 with the full class list: the committed config comes out byte-identical, but for
    # version 1's input-space reference, which is this training's (of its 40 images).
    assert first.classes == CLASSES
    cfg = layout.read_config(repo, "tablet_classifier")
    assert layout.input_space_by_version(cfg)[1]["n_images"] == 40
    layout.set_input_space(cfg, 1, layout.input_space_by_version(layout.read_config(REPO, "tablet_classifier"))[1])
    layout.write_config(repo, "tablet_classifier", cfg)
    assert (repo / "tablet_classifier/config.pbtxt").read_text() == committed

    card = json.loads((vdir / layout.CARD_JSON).read_text())
    assert (card["product"], card["model"], card["version"], card["mode"]) == (ROUND, "tablet_classifier", 1, "supervised")
    assert card["classes"] == list(CLASSES)
    review, reject = card["thresholds"]["review"], card["thresholds"]["reject"]
    assert 0.0 <= review <= reject <= 1.0
    cal = card["threshold_calibration"]
    assert cal["target_false_reject_rate"] == 0.01 and cal["out_of_fold"]["folds"] == 2
    # Good validation units, their nuisance variants (another session's light, focus, position)
    # and the out-of-fold scores of the good training units.
    n_val_good = card["dataset"]["validation"]["classes"]["good"]
    assert cal["nuisance_variants_per_good_validation_unit"] == CALIBRATION_VARIANTS
    assert cal["n_good_scores"] == (1 + CALIBRATION_VARIANTS) * n_val_good + card["dataset"]["train"]["classes"]["good"]
    ds = card["dataset"]
    assert ds["source"] == "dataset" and len(ds["dataset_sha256"]) == 64 and ds["split_seed"] == 1
    assert ds["train"]["count"] + ds["validation"]["count"] == 40
    for key in ("auroc", "detection_rate", "false_reject_rate", "review_rate", "per_class_recall", "confusion"):
        assert key in card["validation"]
    assert sum(sum(row.values()) for row in card["validation"]["confusion"].values()) == ds["validation"]["count"]
    ref = card["score_reference"]  # the drift reference of the alert service
    assert ref["n"] == ds["validation"]["count"] and len(ref["quantiles"]) == 101
    assert ref["quantiles"] == sorted(ref["quantiles"]) and 0.0 <= ref["quantiles"][0] <= ref["quantiles"][-1] <= 1.0
    assert card["parity"]["passed"] and card["parity"]["max_abs_diff_score"] <= card["parity"]["tolerance"]
    assert card["onnx"]["opset"] == 17 and card["onnx"]["sha256"] == hashlib.sha256((vdir / "model.onnx").read_bytes()).hexdigest()
    for key in ("training", "wall_time_s", "created_utc", "code_version"):
        assert card[key]
    assert "# tablet_classifier version 1" in (vdir / layout.CARD_MD).read_text()
    hashes = (vdir / layout.TRAINING_HASHES).read_text().split()
    labels = list(csv.DictReader((dataset / "labels.csv").open()))
    assert sorted(hashes) == sorted({hashlib.sha256((dataset / r["image"]).read_bytes()).hexdigest() for r in labels})

    # The served graph: batch-first outputs, the version's own thresholds and number as constants.
    out = _run_onnx(vdir / "model.onnx")
    assert out["SCORE"].shape == (3, 1) and out["CLASS_PROBS"].shape == (3, len(CLASSES))
    assert out["THRESHOLDS"].dtype == np.float32 and out["MODEL_VERSION"].dtype == np.int64
    assert np.array_equal(out["THRESHOLDS"], np.tile(np.float32([review, reject]), (3, 1)))
    assert np.array_equal(out["MODEL_VERSION"], np.ones((3, 1), dtype=np.int64))
    assert np.allclose(out["SCORE"][:, 0], 1.0 - out["CLASS_PROBS"][:, 0], atol=1e-5)

    # Retraining makes version 2, leaves version 1 and the live version alone.
    before_v1 = _tree(vdir)
    second = train_model(repo, ROUND, data=dataset, seed=2, **FAST)
    assert (second.version, second.live) == (2, False)
    assert _tree(vdir) == before_v1
    cfg = layout.read_config(repo, "tablet_classifier")
    assert layout.live_version(cfg) == 1
    assert layout.classes_by_version(cfg) == {1: list(CLASSES), 2: list(CLASSES)}
    assert set(layout.input_space_by_version(cfg)) == {1, 2}
    assert _run_onnx(repo / "tablet_classifier/2/model.onnx", 1)["MODEL_VERSION"].tolist() == [[2]]


def test_classes_come_from_the_data_and_a_new_product_gets_its_models(tmp_path: Path, repo: Path) -> None:
    data = generate_dataset(tmp_path / "oval", 16, [OVAL], 0.5, seed=5)
    rows = list(csv.DictReader((data / "labels.csv").open()))
    expected = ["good", *sorted({r["defect"] for r in rows if r["label"] == "defect"})]
    result = train_model(repo, OVAL, data=data, **FAST)
    assert (result.model, result.version, result.live) == ("tablet_oval_yellow_14mm_classifier", 1, True)
    assert list(result.classes) == expected
    cfg = layout.read_config(repo, result.model)
    assert layout.parameter(cfg, "product") == OVAL and layout.live_version(cfg) == 1
    assert layout.classes_by_version(cfg) == {1: expected}
    assert set(layout.input_space_by_version(cfg)) == {1}  # its own, none of the template's
    assert [o.name for o in cfg.output] == ["SCORE", "CLASS_PROBS", "THRESHOLDS", "MODEL_VERSION"]
    ens = layout.read_config(repo, "tablet_oval_yellow_14mm_inspector")
    assert [s.model_name for s in ens.ensemble_scheduling.step] == ["tablet_preprocess", result.model]
    assert (repo / "tablet_oval_yellow_14mm_inspector/1").is_dir()
    assert layout.product_models(repo, OVAL, {}).classifier == result.model
    assert _run_onnx(result.onnx_path, 2)["CLASS_PROBS"].shape == (2, len(expected))
    # The committed tablet models are untouched.
    assert (repo / "tablet_classifier/config.pbtxt").read_text() == (REPO / "tablet_classifier/config.pbtxt").read_text()


def test_good_only_training_learns_from_good_images_only(tmp_path: Path, repo: Path) -> None:
    data = generate_dataset(tmp_path / "good", 20, [ROUND], 0.3, seed=6)
    result = train_model(repo, ROUND, data=data, mode="good-only", **FAST)
    assert result.classes == GOOD_ONLY_CLASSES == ("good", "anomaly")
    card = json.loads(result.card_path.read_text())
    assert card["mode"] == "good-only" and card["classes"] == ["good", "anomaly"]
    assert set(card["dataset"]["train"]["classes"]) == {"good"}, "defective rows must never be trained on"
    n_defect = sum(1 for r in csv.DictReader((data / "labels.csv").open()) if r["label"] == "defect")
    assert card["validation"]["n_defect"] == n_defect
    assert "synthetic" in card["training"]["synthetic_anomalies"]
    out = _run_onnx(result.onnx_path, 2)
    assert out["CLASS_PROBS"].shape == (2, 2)
    assert layout.classes_by_version(layout.read_config(repo, "tablet_classifier"))[1] == ["good", "anomaly"]


def _bad(tmp_path: Path, dataset: Path, edit: str) -> Path:
    """A copy of `dataset` broken in one way."""
    root = tmp_path / edit
    shutil.copytree(dataset, root)
    labels = root / "labels.csv"
    lines = labels.read_text().splitlines()
    if edit == "columns":
        lines[0] = "image,product,label,class"
    elif edit == "rows":
        first, second, third = lines[1].split(","), lines[2].split(","), lines[3].split(",")
        (root / first[0]).unlink()  # missing image
        (root / second[0]).write_bytes(b"not an image")  # unreadable image
        third[2], third[3] = ("good", "chip") if third[2] == "defect" else ("defect", "none")  # inconsistent
        lines[3] = ",".join(third)
    elif edit == "single-class":
        lines = [lines[0]] + [line for line in lines[1:] if ",good,none" in line]
    labels.write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize(
    "edit, product, mode, reasons",
    [
        ("columns", ROUND, "supervised", ["missing column(s) defect"]),
        ("rows", ROUND, "supervised", ["image file not found", "unreadable image", "label"]),
        ("none", OVAL, "supervised", ["no rows for product 'tablet-oval-yellow-14mm'"]),
        ("single-class", ROUND, "supervised", ["needs good and defective units"]),
    ],
)
def test_bad_datasets_are_refused_and_nothing_is_written(
    tmp_path: Path, repo: Path, dataset: Path, edit: str, product: str, mode: str, reasons: list[str]
) -> None:
    data = _bad(tmp_path, dataset, edit)
    before = _tree(repo)
    with pytest.raises(DatasetError) as exc:
        train_model(repo, product, data=data, mode=mode, **FAST)
    for reason in reasons:
        assert reason in str(exc.value)
    if edit == "rows":
        assert len(exc.value.problems) == 3  # every bad row, each with its file
        assert all(where.startswith("labels.csv:") and ".png" in where for where, _ in exc.value.problems)
    assert _tree(repo) == before
    assert sorted(p.name for p in repo.iterdir()) == sorted(p.name for p in REPO.iterdir() if p.is_dir() and p.name[0] != ".")


def test_cli_reports_every_bad_row_and_exits_nonzero(tmp_path: Path, repo: Path, dataset: Path) -> None:
    data = _bad(tmp_path, dataset, "rows")
    before = _tree(repo)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "train", "--data", str(data), "--product", ROUND,
         "--repository", str(repo), "--epochs", "1", "--quiet"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "3 problem(s)" in proc.stderr and "image file not found" in proc.stderr and "unreadable image" in proc.stderr
    assert _tree(repo) == before


def test_a_failed_parity_check_writes_no_version(repo: Path, dataset: Path) -> None:
    before = _tree(repo)
    with pytest.raises(ParityError):
        train_model(repo, ROUND, data=dataset, parity_tolerance=-1.0, **{**FAST, "folds": 0})
    assert _tree(repo) == before
    assert not list(repo.glob(".*")) and not (repo / "tablet_classifier/1").exists()


def test_simulator_training_is_what_make_model_runs(repo: Path) -> None:
    result = train_model(repo, ROUND, train_count=16, epochs=1, seed=3, progress=False, acceptance=PASS_ALL)
    assert (result.version, result.live, result.classes) == (1, True, CLASSES)
    card = json.loads(result.card_path.read_text())
    assert card["dataset"]["source"] == "simulator" and card["threshold_calibration"]["out_of_fold"]["folds"] == 0
    # The committed config, but for version 1's input-space reference: this training's (16 units).
    cfg = layout.read_config(repo, "tablet_classifier")
    assert layout.input_space_by_version(cfg)[1]["n_images"] == 16 + 30
    layout.set_input_space(cfg, 1, layout.input_space_by_version(layout.read_config(REPO, "tablet_classifier"))[1])
    layout.write_config(repo, "tablet_classifier", cfg)
    assert (repo / "tablet_classifier/config.pbtxt").read_text() == (REPO / "tablet_classifier/config.pbtxt").read_text()
    # 16 rendered units of the product, twice as many of the assorted tablet family (the shipped
    # model is every other product's base), 30 rendered validation units of the product only.
    train = card["dataset"]["train"]
    assert (train["product_units"], train["assorted_units"], train["paired"]) == (16, 32, True)
    assert card["dataset"]["validation"]["count"] == 30
    assert len((result.version_dir / layout.TRAINING_HASHES).read_text().split()) == 16 + 32 + 30


def test_joined_rendered_sets_keep_their_pairs_and_refuse_other_classes() -> None:
    first = render_set(ROUND, 4, defect_rate=0.5, subtle_fraction=0.0, seed=1, stream=0, paired=True)
    second = render_set(ASSORTED_TABLETS, 6, defect_rate=0.5, subtle_fraction=0.0, seed=1, stream=3, paired=True)
    both = concat_sets(first, second)
    assert len(both) == 10 and both.paired and both.mask is not None and len(both.image_sha256) == 10
    assert (both.y[0::2] != 0).all() and (both.y[1::2] == 0).all()  # (defective, twin) at 2k, 2k+1
    assert np.array_equal(both.x[4:], second.x)
    assert not concat_sets(first.subset(np.arange(3)), second).paired
    with pytest.raises(ValueError, match="cannot join sets"):
        concat_sets(first, as_good_only(second))


def test_auto_base_is_the_shipped_model_for_any_product(repo: Path, tmp_path: Path) -> None:
    shipped = REPO / "tablet_classifier" / "1" / layout.ONNX_FILE
    if not shipped.is_file():
        pytest.skip("no shipped model: run `make model` first (make test does)")
    generate_dataset(tmp_path / "oval", 24, [OVAL], 0.5, seed=6)
    result = train_model(repo, OVAL, data=tmp_path / "oval", base="auto", **{**FAST, "folds": 0, "mapping": None})
    base = json.loads(result.card_path.read_text())["training"]["base_model"]
    assert (base["model"], base["product"]) == ("tablet_classifier", ROUND)
    assert base["sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()


def test_training_starts_from_a_base_model_or_from_scratch(repo: Path, dataset: Path) -> None:
    scratch = train_model(repo, ROUND, data=dataset, base="none", **{**FAST, "folds": 0})
    card = json.loads(scratch.card_path.read_text())
    assert card["training"]["base_model"] is None and card["training"]["initialisation"].startswith("from scratch")
    tuned = train_model(repo, ROUND, data=dataset, base=scratch.version_dir, **{**FAST, "folds": 0})
    card = json.loads(tuned.card_path.read_text())
    base = card["training"]["base_model"]
    assert (tuned.version, base["model"], base["version"]) == (2, "tablet_classifier", 1)
    assert base["sha256"] == hashlib.sha256(scratch.onnx_path.read_bytes()).hexdigest()
    assert "base model tablet_classifier version 1" in card["training"]["initialisation"]
    assert base["sha256"] in (tuned.version_dir / layout.CARD_MD).read_text()
    with pytest.raises(ValueError, match="no such ONNX file"):
        train_model(repo, ROUND, data=dataset, base=repo / "missing", **FAST)
    assert not (repo / "tablet_classifier/3").exists()


VIAL = "heldout-vial-2ml-upright"


def test_a_non_square_upright_product_keeps_its_geometry_and_views(tmp_path: Path, repo: Path) -> None:
    """An upright vial photographed from the side (96 x 192 frames): its classifier takes
    [3, 192, 96] (not a squeezed square), averages only the mirror its declared invariance allows,
    and gets its own preprocessing model with that geometry in its ensemble (issue 14)."""
    from benchmarks.heldout.generate import generate

    data = generate(tmp_path / "vial", [VIAL], 24, seed=3).parent
    result = train_model(repo, VIAL, data=data, invariance="upright", invariance_source="the test", **FAST)
    card = json.loads(result.card_path.read_text())
    assert card["invariance"] == {"name": "upright", "declared_by": "the test", "views": 2,
                                  "transforms": "mirror left-right"}
    assert card["test_time_views"] == 2
    assert (card["input_geometry"]["height"], card["input_geometry"]["width"]) == (192, 96)
    sess = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[1:] == [3, 192, 96]
    cfg = layout.read_config(repo, result.model)
    assert [list(i.dims) for i in cfg.input] == [[3, 192, 96]]
    assert layout.parameter(cfg, layout.INVARIANCE_PARAM) == "upright"
    pre = layout.read_config(repo, "heldout_vial_2ml_upright_preprocess")
    assert [list(o.dims) for o in pre.output] == [[3, 192, 96]]
    assert (repo / "heldout_vial_2ml_upright_preprocess/1/model.py").read_bytes() == \
        (repo / "tablet_preprocess/1/model.py").read_bytes()
    ens = layout.read_config(repo, "heldout_vial_2ml_upright_inspector")
    assert [s.model_name for s in ens.ensemble_scheduling.step] == ["heldout_vial_2ml_upright_preprocess", result.model]
    # The next version keeps the geometry and the recorded invariance without being told again.
    second = train_model(repo, VIAL, data=data, seed=2, **FAST)
    card2 = json.loads(second.card_path.read_text())
    assert card2["invariance"]["name"] == "upright" and "recorded" in card2["invariance"]["declared_by"]
    assert card2["test_time_views"] == 2
    # Frames of another shape for the same classifier would be squeezed: refused, nothing written.
    square = tmp_path / "square"
    shutil.copytree(data, square)
    for png in square.rglob("*.png"):
        Image.open(png).resize((96, 96)).save(png)
    before = _tree(repo)
    with pytest.raises(ValueError, match="would be squeezed"):
        train_model(repo, VIAL, data=square, **FAST)
    assert _tree(repo) == before


def test_an_undeclared_product_assumes_no_flip_and_quarter_turns_need_a_square(tmp_path: Path, repo: Path) -> None:
    from benchmarks.heldout.generate import generate

    data = generate(tmp_path / "vial", [VIAL], 12, seed=4).parent
    before = _tree(repo)
    with pytest.raises(ValueError, match="square"):
        train_model(repo, VIAL, data=data, invariance="any-orientation", **FAST)
    assert _tree(repo) == before
    oval = generate_dataset(tmp_path / "oval", 16, [OVAL], 0.5, seed=5)
    result = train_model(repo, OVAL, data=oval, **FAST)
    card = json.loads(result.card_path.read_text())
    assert card["invariance"]["name"] == "fixed" and "nothing declared" in card["invariance"]["declared_by"]
    assert card["test_time_views"] == 1
