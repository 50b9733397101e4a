"""Preprocessing, metrics, committed Triton configs, the preprocess model, training pieces, parity."""

from __future__ import annotations

import importlib.util
import io
import re
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2

from pipeline.imaging.products import DEFECT_CLASSES
from pipeline.imaging.tablets import render_tablet
from pipeline.model import repository as layout
from pipeline.model import triton_repo
from pipeline.model.augment import augment
from pipeline.model.data import CLASSES, render_set
from pipeline.model.evaluate_offline import (
    auroc,
    clopper_pearson_upper,
    inspection_metrics,
    threshold_for_frr,
)
from pipeline.model.export import ParityError, check_parity, export_onnx
from pipeline.model.fit import FitConfig, deterministic_torch, fit, predict
from pipeline.model.net import ServingModel, TabletNet
from pipeline.model.preprocess import MODEL_INPUT_SIZE, prepare_image, prepare_pil, restore_pil
from pipeline.wire.codec import encode_jpeg, encode_png

REPO = Path(__file__).resolve().parents[2] / "triton_models"
ROUND = "tablet-round-white-10mm"


def _frame(seed: int = 0, defect: str | None = None) -> Image.Image:
    return render_tablet(np.random.default_rng(seed), ROUND, defect)


# -- preprocessing -----------------------------------------------------------------------------


def test_prepare_image_shape_dtype_range() -> None:
    img = _frame()
    x = prepare_image(encode_png(img))
    assert x.shape == (3, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE) and x.dtype == np.float32
    assert x.flags["C_CONTIGUOUS"]
    assert -2.0 <= x.min() < 0.0 < x.max() <= 2.0
    assert np.array_equal(x, prepare_pil(img))  # PNG is lossless: serving == training input
    assert np.array_equal(np.asarray(restore_pil(x)), np.asarray(img))


def test_prepare_image_jpeg_grey_and_resizing() -> None:
    img = _frame(1)
    assert np.abs(prepare_image(encode_jpeg(img)) - prepare_pil(img)).mean() < 0.05
    buf = io.BytesIO()
    img.convert("L").resize((200, 120)).save(buf, format="PNG")
    x = prepare_image(buf.getvalue(), size=64)
    assert x.shape == (3, 64, 64)
    assert np.array_equal(x[0], x[1]) and np.array_equal(x[1], x[2])


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"definitely not an image", "not a readable image"),
        (encode_png(_frame())[:900], "corrupt PNG"),
        (b"GIF89a" + b"\x00" * 32, "not a readable image"),
    ],
)
def test_prepare_image_rejects_bad_bytes(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        prepare_image(data)


def test_prepare_image_rejects_other_formats() -> None:
    buf = io.BytesIO()
    _frame().save(buf, format="BMP")
    with pytest.raises(ValueError, match="not PNG or JPEG"):
        prepare_image(buf.getvalue())


# -- metrics -----------------------------------------------------------------------------------


def test_auroc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(300), 2)  # many ties
    labels = rng.random(300) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        pos.size * neg.size
    )
    assert auroc(scores, labels) == pytest.approx(pairwise, abs=1e-12)
    assert auroc([0.1, 0.2, 0.9], [False, False, True]) == 1.0
    assert auroc([0.9, 0.2, 0.1], [False, False, True]) == 0.0
    with pytest.raises(ValueError):
        auroc([0.1, 0.2], [False, False])


def test_threshold_and_rates() -> None:
    good = np.linspace(0.0, 0.99, 100)
    t = threshold_for_frr(good, 0.01)
    assert (good > t).sum() == 1 and (good >= t).sum() == 1
    assert (good > threshold_for_frr(good, 0.0)).sum() == 0
    scores = np.concatenate([good, [0.995, 0.5, 0.999]])
    labels = np.array([False] * 100 + [True] * 3)
    m = inspection_metrics(scores, labels, t, ["none"] * 100 + ["chip", "crack", "chip"])
    assert (m.false_rejects, m.detected) == (1, 2)
    assert m.false_reject_rate == 0.01 and m.detection_rate == pytest.approx(2 / 3)
    assert m.detection_by_class == {"chip": 1.0, "crack": 0.0}
    assert clopper_pearson_upper(0, 100) == pytest.approx(1 - 0.05 ** (1 / 100), abs=1e-6)
    assert m.false_reject_rate_upper95 > 0.01


# -- Triton repository files --------------------------------------------------------------------


def _config(model: str) -> model_config_pb2.ModelConfig:
    """Parse a committed config.pbtxt the way Triton does (protobuf text format)."""
    return text_format.Parse((REPO / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_classifier_config_matches_code() -> None:
    cfg = _config("tablet_classifier")
    assert cfg.name == "tablet_classifier" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 64
    fp32, i64 = model_config_pb2.TYPE_FP32, model_config_pb2.TYPE_INT64
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [
        ("INPUT", fp32, [3, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE])
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [
        ("SCORE", fp32, [1]),
        ("CLASS_PROBS", fp32, [-1]),
        ("THRESHOLDS", fp32, [2]),
        ("MODEL_VERSION", i64, [1]),
    ]
    # No queue delay, one instance of two onnxruntime threads: chosen by measurement on the
    # embedded CPU stack (docs/benchmarks.md, "Triton instances and threads").
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 0
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_GPU, 1)]
    assert cfg.parameters["intra_op_thread_count"].string_value == "2"
    # Version 1 (what `make model` trains) has the classes the code gives a supervised model.
    assert layout.classes_by_version(cfg)[1] == list(CLASSES) == ["good", *sorted(DEFECT_CLASSES)]
    assert layout.live_version(cfg) == 1
    assert cfg.parameters["product"].string_value == ROUND
    # The platform line stands alone, so the embedded stack can swap it for the python backend.
    text = (REPO / "tablet_classifier/config.pbtxt").read_text()
    assert re.search(r'^platform: "onnxruntime_onnx"$', text, re.M)
    assert triton_repo.input_hw(cfg) == (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE)


def test_committed_config_survives_a_rewrite_unchanged(tmp_path: Path) -> None:
    """Training version 1 rewrites the classifier config: the committed file must come out identical."""
    shutil.copytree(REPO / "tablet_classifier", tmp_path / "tablet_classifier",
                    ignore=shutil.ignore_patterns("[0-9]*", ".train-*"))
    before = (tmp_path / "tablet_classifier/config.pbtxt").read_text()
    cfg = layout.read_config(tmp_path, "tablet_classifier")
    layout.set_classes(cfg, 1, list(CLASSES))
    layout.set_live_version(cfg, 1)
    layout.write_config(tmp_path, "tablet_classifier", cfg)
    assert (tmp_path / "tablet_classifier/config.pbtxt").read_text() == before


def test_preprocess_and_ensemble_configs() -> None:
    pre = _config("tablet_preprocess")
    assert pre.backend == "python" and pre.max_batch_size == 64
    assert [(i.name, i.data_type, list(i.dims)) for i in pre.input] == [("IMAGE", model_config_pb2.TYPE_STRING, [1])]
    assert [(o.name, list(o.dims)) for o in pre.output] == [("INPUT", [3, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE])]
    assert pre.HasField("dynamic_batching")
    assert [g.kind for g in pre.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    ens = _config("tablet_inspector")
    assert ens.platform == "ensemble" and ens.max_batch_size == 64
    assert [(i.name, list(i.dims)) for i in ens.input] == [("IMAGE", [1])]
    assert [(o.name, list(o.dims)) for o in ens.output] == [
        ("SCORE", [1]), ("CLASS_PROBS", [-1]), ("THRESHOLDS", [2]), ("MODEL_VERSION", [1])
    ]
    steps = ens.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["tablet_preprocess", "tablet_classifier"]
    assert dict(steps[0].input_map) == {"IMAGE": "IMAGE"}
    assert dict(steps[1].input_map) == {"INPUT": steps[0].output_map["INPUT"]}
    assert dict(steps[1].output_map) == {n: n for n in ("SCORE", "CLASS_PROBS", "THRESHOLDS", "MODEL_VERSION")}
    assert (REPO / "tablet_inspector/1/.gitkeep").exists()


def _load_preprocess_model() -> ModuleType:
    path = REPO / "tablet_preprocess/1/model.py"
    spec = importlib.util.spec_from_file_location("tablet_preprocess_model", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_triton_preprocess_request_logic() -> None:
    model = _load_preprocess_model()
    frames = [encode_png(_frame(i)) for i in range(3)]
    batch = model.decode_request(np.array(frames, dtype=object).reshape(3, 1))
    assert batch.shape == (3, 3, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE) and batch.dtype == np.float32
    for i, data in enumerate(frames):
        assert np.array_equal(batch[i], prepare_image(data))
    bad = np.array([frames[0], b"garbage", frames[1], b""], dtype=object).reshape(4, 1)
    with pytest.raises(ValueError) as exc:
        model.decode_request(bad)
    assert "2 of 4" in str(exc.value) and "item 1" in str(exc.value) and "item 3" in str(exc.value)
    with pytest.raises(ValueError, match="expected encoded image bytes"):
        model.decode_request(np.array(["text"], dtype=object))


def test_triton_preprocess_reads_geometry_from_config() -> None:
    """The geometry is the config's (a product with non-square frames has its own copy), and a
    frame is decoded at exactly that height and width."""
    model = _load_preprocess_model()
    ok = {"output": [{"name": "INPUT", "dims": [3, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE]}]}
    assert model.input_hw(ok) == (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE)
    assert model.input_hw({"output": [{"name": "INPUT", "dims": [3, 192, 96]}]}) == (192, 96)
    frame = encode_png(Image.new("RGB", (96, 192), (40, 90, 200)))
    batch = model.decode_request(np.array([frame], dtype=object).reshape(1, 1), (192, 96))
    assert batch.shape == (1, 3, 192, 96)
    assert np.array_equal(batch[0], prepare_image(frame, (192, 96)))
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        model.input_hw({"output": [{"name": "INPUT", "dims": [64, 64]}]})
    with pytest.raises(ValueError, match="no output"):
        model.input_hw({"output": []})


# -- training, export, parity -----------------------------------------------------------------


def test_training_is_deterministic() -> None:
    data = render_set(ROUND, 8, defect_rate=0.5, subtle_fraction=0.5, seed=1, stream=0, paired=True, size=MODEL_INPUT_SIZE)
    weights = []
    with deterministic_torch():
        for _ in range(2):
            net = fit(data, FitConfig(epochs=1, batch_size=4, seed=11), progress=False)
            weights.append(torch.cat([p.detach().flatten() for p in net.state_dict().values() if p.is_floating_point()]))
    assert torch.equal(weights[0], weights[1])


def test_augmentation_keeps_pairs_and_masks_aligned() -> None:
    x = torch.zeros(8, 3, 160, 160)
    mask = torch.zeros(8, 20, 20)
    x[:, :, 40:48, 96:104] = 1.0  # a bright 8x8 block exactly on mask cell (5, 12)
    mask[:, 5, 12] = 1.0
    out, out_mask = augment(x, torch.Generator().manual_seed(0), mask, group=2)
    assert torch.equal(out[0::2], out[1::2]) and torch.equal(out_mask[0::2], out_mask[1::2])
    for img, m in zip(out, out_mask, strict=True):
        spot = (img[0] == img[0].max()).nonzero().float().mean(dim=0) / 8.0
        cell = (m == 1.0).nonzero()[0].float()
        assert torch.all((spot - cell).abs() <= 1.0)
    with pytest.raises(ValueError):
        augment(x[:3], torch.Generator(), group=2)


def test_augmentation_blurs_the_share_it_is_told_to() -> None:
    """blur_chance 0: edges stay crisp; 1: every image is softened, up to sigma ~1.1 px."""
    x = torch.zeros(64, 3, 160, 160)
    x[:, :, :, 80:] = 1.0  # a vertical step edge (turned and flipped by the augmentation)

    def sharpness(out: torch.Tensor) -> torch.Tensor:  # strongest neighbour step of each image
        a = out[:, 0]
        return torch.maximum((a[:, :, 1:] - a[:, :, :-1]).abs().amax((1, 2)), (a[:, 1:] - a[:, :-1]).abs().amax((1, 2)))

    crisp = sharpness(augment(x, torch.Generator().manual_seed(1), blur_chance=0.0)[0])
    soft = sharpness(augment(x, torch.Generator().manual_seed(1), blur_max=2.0, blur_chance=1.0)[0])
    assert (crisp > 0.8).all()  # contrast/gain scale the step, noise aside it stays one jump
    assert (soft < crisp).float().mean() > 0.9 and soft.min() < 0.5 * crisp.median()


def test_served_score_is_invariant_to_flips_and_turns() -> None:
    """Eight averaged views make the served model blind to how the unit lies on the belt."""
    torch.manual_seed(0)
    model = ServingModel(TabletNet(), views=8).eval()
    x = torch.from_numpy(prepare_image(encode_png(_frame(4, "chip"))))[None]
    with torch.no_grad():
        reference = model(x)
        for turned in (x.flip(3), x.flip(2), x.transpose(2, 3), torch.rot90(x, 1, dims=(2, 3))):
            for a, b in zip(model(turned), reference, strict=True):
                assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError):
        ServingModel(TabletNet(), views=3)


def test_parity_check_catches_a_drifted_model(tmp_path: Path) -> None:
    data = render_set(ROUND, 6, defect_rate=0.5, subtle_fraction=0.0, seed=2, stream=0)
    with deterministic_torch():
        net = fit(data, FitConfig(epochs=1, batch_size=3, seed=0), progress=False)
        path = tmp_path / "m.onnx"
        export_onnx(net, path, MODEL_INPUT_SIZE)
        scores, probs = predict(net, data.x)
        assert check_parity(path, data.x, scores, probs).max_abs_diff_score <= 1e-4
        with torch.no_grad():
            net.head.bias[0] += 0.5  # the torch model changes after export
        drifted_scores, drifted_probs = predict(net, data.x)
    with pytest.raises(ParityError, match="disagrees"):
        check_parity(path, data.x, drifted_scores, drifted_probs)


def test_a_base_model_is_read_back_from_its_released_onnx(tmp_path: Path) -> None:
    """Transfer (pipeline.model.base): the folded ONNX weights rebuild a TabletNet that computes
    what the base computed, before and after its BatchNorms are re-expressed for new data."""
    from pipeline.model.base import BaseModelError, adapt_norm, init_from_base, load_base, resolve_base

    data = render_set(ROUND, 6, defect_rate=0.5, subtle_fraction=0.0, seed=3, stream=0)
    with deterministic_torch():
        net = fit(data, FitConfig(epochs=1, batch_size=3, seed=0), progress=False)
        vdir = tmp_path / "tablet_classifier" / "1"
        vdir.mkdir(parents=True)
        export_onnx(net, vdir / "model.onnx", MODEL_INPUT_SIZE)
        scores, probs = predict(net, data.x)
        rebuilt = TabletNet()
        init_from_base(rebuilt, vdir / "model.onnx")
        rebuilt.eval()
        s2, p2 = predict(rebuilt, data.x)
        assert np.abs(s2 - scores).max() <= 1e-5 and np.abs(p2 - probs).max() <= 1e-5
        other = render_set("tablet-oval-yellow-14mm", 4, defect_rate=0.5, subtle_fraction=0.0, seed=3, stream=0)
        adapt_norm(rebuilt, other.x)
        s3, _ = predict(rebuilt, data.x)
        assert np.abs(s3 - scores).max() <= 1e-4
        # Fine-tuning from it: deterministic, a fresh head for other classes.
        weights = []
        for _ in range(2):
            tuned = fit(replace_classes(other), FitConfig(epochs=1, batch_size=2, seed=5, aux_pairs=1),
                        progress=False, base=vdir / "model.onnx")
            weights.append(torch.cat([p.detach().flatten() for p in tuned.state_dict().values() if p.is_floating_point()]))
        assert torch.equal(weights[0], weights[1]) and tuned.head.out_features == 3
    assert resolve_base("none") is None
    assert resolve_base(vdir) == resolve_base(vdir.parent) == resolve_base(vdir / "model.onnx") == vdir / "model.onnx"
    assert load_base(vdir / "model.onnx").describe()["version"] == 1
    with pytest.raises(BaseModelError):
        resolve_base(tmp_path / "nowhere")


def replace_classes(s: Any) -> Any:
    """Two classes, as a dataset of good and cracked units would have."""
    from dataclasses import replace

    return replace(s, y=(s.y != 0).astype(np.int64), classes=("good", "crack"), mask=None, paired=False)


def test_nuisance_variants_for_calibration_are_seeded_and_change_the_light() -> None:
    from pipeline.model.train import CALIBRATION_VARIANTS, nuisance_variants

    x = render_set(ROUND, 3, defect_rate=0.0, subtle_fraction=0.0, seed=4, stream=0).x
    with deterministic_torch():
        a, b = nuisance_variants(x, CALIBRATION_VARIANTS, 1), nuisance_variants(x, CALIBRATION_VARIANTS, 1)
    assert a.shape == (CALIBRATION_VARIANTS * 3, *x.shape[1:]) and np.array_equal(a, b)
    assert not np.array_equal(a[:3], x) and nuisance_variants(x, 0, 1).shape == (0, *x.shape[1:])
    # Pixel means move by more than the photometric jitter alone would (light level x0.75-1.25).
    assert np.ptp([v.mean() for v in a]) > 0.1


def test_reduced_precision_check_passes_its_own_graph_and_rejects_a_drifted_one(tmp_path: Path) -> None:
    """An int8/fp16 graph is released only if it scores like its fp32 graph (tolerance, no
    verdict changed); one that drifts is rejected with the figures."""
    from pipeline.model.export import REDUCED_PRECISION_TOLERANCE, check_reduced_precision

    torch.manual_seed(0)
    net = TabletNet().eval()
    ref, fp16 = tmp_path / "ref.onnx", tmp_path / "fp16.onnx"
    export_onnx(net, ref, 32, 1)
    x = np.random.default_rng(0).normal(size=(16, 3, 32, 32)).astype(np.float32)
    report = check_reduced_precision(ref, ref, x, (0.5, 0.9))
    assert report["passed"] and report["max_abs_diff_score"] == 0.0 and report["verdicts_changed"] == 0
    assert report["tolerance"] == REDUCED_PRECISION_TOLERANCE
    torch.manual_seed(1)
    export_onnx(TabletNet().eval(), fp16, 32, 1)  # another network: far off
    with pytest.raises(ParityError, match="reduced-precision graph disagrees"):
        check_reduced_precision(fp16, ref, x, (0.5, 0.9), tolerance=1e-6)
