"""The GenICam camera layer against fake GigE Vision cameras on the loopback: real GVCP control and
GVSP streaming through Aravis (docs/cameras.md). Needs the `gige` extra."""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Iterator
from datetime import date
from typing import Any

import numpy as np
import pytest

from pipeline.gateway.cameras import (
    AcquiredFrame,
    CameraConfigError,
    CameraError,
    GenICamCamera,
    list_cameras,
    load_aravis,
)
from pipeline.gateway.fake_cameras import FakeGigECamera
from pipeline.gateway.pixels import decode, demosaic, encode_frame, encode_raw, mosaic
from pipeline.imaging.catalog import sample_product
from pipeline.recipes.schema import CameraFeatures
from pipeline.wire.codec import decode_rgb

_serials = itertools.count(1)


@pytest.fixture(scope="module", autouse=True)
def _aravis() -> None:
    load_aravis()  # CameraError naming the `gige` extra and its apt packages when missing


def serial() -> str:
    """Unique on the machine: another process's fake cameras must not answer for ours."""
    return f"T{os.getpid()}-{next(_serials)}"


def noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def fakes() -> Iterator[list[FakeGigECamera]]:
    """Fake cameras a test makes; all stopped at the end, whatever happened."""
    made: list[FakeGigECamera] = []
    yield made
    for fake in made:
        fake.stop()


def fake_camera(fakes: list[FakeGigECamera], serial_: str, width: int, height: int, **kwargs: Any) -> FakeGigECamera:
    fake = FakeGigECamera(serial_, width, height, **kwargs)
    fakes.append(fake)
    fake.start()
    return fake


def opened(serial_: str, **features: Any) -> GenICamCamera:
    cam = GenICamCamera(serial_, CameraFeatures(**features))
    cam.open(timeout_s=5.0)
    return cam


def triggered_frame(cam: GenICamCamera, timeout_s: float = 2.0) -> AcquiredFrame:
    cam.software_trigger()
    frame = cam.next_frame(timeout_s)
    assert frame is not None, "no frame within the deadline after a software trigger"
    return frame


# -- pixels (no camera) --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["Mono8", "RGB8", "BGR8"])
def test_raw_buffers_round_trip_exactly(fmt: str) -> None:
    img = noise(1, (24, 40) if fmt == "Mono8" else (24, 40, 3))
    assert np.array_equal(decode(encode_raw(img, fmt), 40, 24, fmt), img)


def test_mono16_and_bayer_decode_to_8_bit_images() -> None:
    grey = noise(2, (16, 20))
    assert np.array_equal(decode(encode_raw(grey, "Mono16"), 20, 16, "Mono16"), grey)
    rgb = noise(3, (16, 20, 3))
    out = decode(encode_raw(rgb, "BayerRG8"), 20, 16, "BayerRG8")
    assert out.shape == (16, 20, 3)
    assert np.array_equal(mosaic(out, "RGGB"), mosaic(rgb, "RGGB"))  # recorded samples kept
    flat = np.full((8, 8, 3), (200, 100, 50), dtype=np.uint8)
    assert np.array_equal(demosaic(mosaic(flat, "BGGR"), "BGGR"), flat)  # a flat colour is exact
    with pytest.raises(ValueError, match="needs 320 bytes"):
        decode(b"\0" * 10, 20, 16, "Mono8")


def test_frames_encode_as_the_recipe_codec_says() -> None:
    img = noise(4, (48, 64, 3))
    data, content_type = encode_frame(img, CameraFeatures())
    assert content_type == "image/png" and np.array_equal(decode_rgb(data), img)  # lossless
    data, content_type = encode_frame(img, CameraFeatures(codec="jpeg", jpeg_quality=80))
    assert content_type == "image/jpeg" and data[:2] == b"\xff\xd8"


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aravis", None)  # import aravis now raises ImportError
    with pytest.raises(CameraError, match=r"gige.*libgirepository1.0-dev libcairo2-dev pkg-config"):
        load_aravis()


# -- fake GigE Vision cameras ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["RGB8", "Mono8", "BayerRG8"])
def test_a_rendered_unit_travels_over_gvsp_unchanged(fakes: list[FakeGigECamera], fmt: str) -> None:
    units = [
        np.asarray(
            sample_product(np.random.default_rng(n), "tablet-round-white-10mm", 0.5, "LOT1", n, date.today()).image
        )
        for n in range(3)
    ]
    h, w = units[0].shape[:2]
    sn = serial()
    fake_camera(fakes, sn, w, h, source=lambda n: units[n], pixel_format=fmt)
    cam = opened(sn, pixel_format=fmt)
    try:
        cam.start()
        for n, unit in enumerate(units):
            frame = triggered_frame(cam)
            assert frame.complete and frame.status == "success" and frame.pixel_format == fmt
            assert (frame.width, frame.height, frame.serial) == (w, h, sn)
            assert frame.image is not None
            if fmt == "RGB8":
                assert np.array_equal(frame.image, unit), f"unit {n}: pixels changed on the way"
            elif fmt == "Mono8":
                assert np.array_equal(frame.image, decode(encode_raw(unit, "Mono8"), w, h, "Mono8"))
            else:
                assert np.array_equal(mosaic(frame.image, "RGGB"), mosaic(unit, "RGGB"))
    finally:
        cam.close()


def test_cameras_are_opened_by_serial_among_several(fakes: list[FakeGigECamera]) -> None:
    a, b = serial(), serial()
    images = {a: noise(10, (64, 96)), b: noise(11, (64, 96))}
    fake_a = fake_camera(fakes, a, 96, 64, source=lambda n: images[a])
    fake_b = fake_camera(fakes, b, 96, 64, source=lambda n: images[b])
    assert fake_a.address != fake_b.address
    found = {c.serial: c for c in list_cameras()}
    assert found[a].protocol == found[b].protocol == "GigEVision"
    assert (found[a].address, found[b].address) == (fake_a.address, fake_b.address)
    for sn in (b, a):
        cam = opened(sn)
        try:
            assert cam.info is not None and cam.info.address == found[sn].address
            cam.start()
            before = time.time_ns()
            frame = triggered_frame(cam)
            assert frame.serial == sn and frame.image is not None and np.array_equal(frame.image, images[sn])
            assert frame.frame_id >= 1
            # The camera's clock (the fake's is the host's) and the host's arrival time, in ns.
            assert abs(frame.camera_ts_ns - before) < 2e9 and abs(frame.system_ts_ns - before) < 2e9
        finally:
            cam.close()
    with pytest.raises(CameraError, match="not found"):
        GenICamCamera("NO-SUCH-CAMERA", CameraFeatures()).open(timeout_s=1.5)


@pytest.mark.parametrize(
    ("features", "feature", "message"),
    [
        ({"pixel_format": "Mono12"}, "PixelFormat", "Mono12 is not offered by the camera; it offers .*Mono8"),
        ({"exposure_us": 5e7}, "ExposureTime", "5e\\+07 us is outside the camera's range 10-1e\\+07"),
        ({"gain": 50.0}, "Gain", "50 is outside the camera's range 0-10"),
        ({"roi": (0, 0, 4096, 64)}, "Width", "4096 is outside the camera's range"),
        ({"roi": (2040, 0, 64, 64)}, "Width", "64 is outside the camera's range"),
        ({"trigger_source": "Line7"}, "TriggerSource", "Line7 is not offered by the camera; it offers Line0, Software"),
    ],
)
def test_a_feature_the_camera_cannot_take_is_refused_by_name(
    fakes: list[FakeGigECamera], features: dict[str, Any], feature: str, message: str
) -> None:
    sn = serial()
    fake_camera(fakes, sn, 64, 64)
    cam = GenICamCamera(sn, CameraFeatures(**features))
    with pytest.raises(CameraConfigError, match=f"^{feature}: {message}") as err:
        cam.open()
    assert err.value.feature == feature
    assert not cam.connected  # refused before acquiring, and released
    cam.close()


def test_features_are_applied_and_read_back(fakes: list[FakeGigECamera]) -> None:
    sn = serial()
    scene = noise(20, (240, 320))
    fake_camera(fakes, sn, 320, 240, source=lambda n: scene)
    cam = opened(sn, exposure_us=5000.0, gain=3.0, roi=(16, 8, 128, 96))
    try:
        raw = cam._camera  # the Aravis camera, to read what the camera holds now
        assert raw.get_exposure_time() == pytest.approx(5000.0, abs=1.0)
        assert raw.get_gain() == pytest.approx(3.0, abs=0.5)
        assert tuple(raw.get_region()) == (16, 8, 128, 96)
        device = raw.get_device()
        assert device.get_string_feature_value("TriggerMode") == "On"
        assert device.get_string_feature_value("TriggerSource") == "Software"
        cam.start()
        frame = triggered_frame(cam)
        assert (frame.width, frame.height) == (128, 96)
        assert frame.image is not None and np.array_equal(frame.image, scene[8:104, 16:144])  # the scene's region
    finally:
        cam.close()


def test_one_frame_per_software_trigger(fakes: list[FakeGigECamera]) -> None:
    sn = serial()
    fake_camera(fakes, sn, 64, 48)
    cam = opened(sn, trigger_source="Software")
    try:
        cam.start()
        assert cam.next_frame(0.3) is None  # no trigger, no frame
        ids = []
        for _ in range(5):
            ids.append(triggered_frame(cam).frame_id)
            assert cam.next_frame(0.2) is None, "a second frame for one trigger"
        assert ids == list(range(ids[0], ids[0] + 5))
        assert cam.stats.frames == 5 and cam.stats.incomplete == 0
    finally:
        cam.close()


def test_lost_packets_make_incomplete_frames(fakes: list[FakeGigECamera]) -> None:
    sn = serial()
    fake = fake_camera(fakes, sn, 320, 240)  # Aravis's own pattern, 56 GVSP packets a frame
    fake.set_packet_loss(0.05, seed=7)
    cam = opened(sn, trigger_source="off")  # free-running, 25 frames/s
    try:
        cam.start()
        frames: list[AcquiredFrame] = []
        deadline = time.monotonic() + 15.0
        while len(frames) < 12 and time.monotonic() < deadline:
            frame = cam.next_frame(1.0)
            if frame is not None:
                frames.append(frame)
        bad = [f for f in frames if not f.complete]
        assert len(frames) == 12 and bad, [f.status for f in frames]
        assert all(f.image is None and f.status in ("missing-packets", "timeout") for f in bad)
        assert cam.stats.incomplete == len(bad)
        fake.set_packet_loss(0.0)
        deadline = time.monotonic() + 10.0
        while (frame := cam.next_frame(1.0)) is None or not frame.complete:
            assert time.monotonic() < deadline, "no complete frame after the loss stopped"
        assert frame.image is not None and frame.image.shape == (240, 320)
    finally:
        cam.close()


def test_an_unplugged_camera_is_noticed_and_reopened_when_back(fakes: list[FakeGigECamera]) -> None:
    sn = serial()
    fake = fake_camera(fakes, sn, 64, 48)
    cam = opened(sn, trigger_source="Software")
    try:
        cam.start()
        assert triggered_frame(cam).complete
        fake.stop()
        gone = time.monotonic()
        with pytest.raises(CameraError, match="stopped answering"):
            while True:
                cam.next_frame(0.1)
        assert time.monotonic() - gone < 2.0  # about 1 s; slack for a loaded 2-core machine
        assert not cam.connected and cam.stats.errors >= 1
        with pytest.raises(CameraError):
            cam.software_trigger()
        closing = time.monotonic()
        cam.close()
        assert time.monotonic() - closing < 0.5  # Aravis's timeouts on the lost camera run aside
        fake.start()
        cam.open()
        cam.start()
        assert cam.connected and triggered_frame(cam).complete
    finally:
        cam.close()


def test_a_line0_pulse_gives_one_frame_when_the_recipe_wires_the_photo_eye(fakes: list[FakeGigECamera]) -> None:
    sn = serial()
    fake = fake_camera(fakes, sn, 64, 48)
    cam = opened(sn, trigger_source="Line0")
    try:
        cam.start()
        cam.software_trigger()  # not the camera's trigger source now: ignored, as by a plant camera
        assert cam.next_frame(0.3) is None
        for _ in range(2):
            fake.line_trigger()
            frame = cam.next_frame(2.0)
            assert frame is not None and frame.complete
            assert cam.next_frame(0.2) is None
    finally:
        cam.close()


def test_cameras_answer_in_a_process_holding_more_than_1024_descriptors(fakes: list[FakeGigECamera]) -> None:
    """A whole test session (or a long-running gateway) holds more than 1024 file descriptors; the
    fake camera's sockets then get numbers select() cannot watch. Found and triggered all the same."""
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        sn = serial()
        fake_camera(fakes, sn, 64, 48, source=lambda n: noise(3, (48, 64)))
        assert sn in {c.serial for c in list_cameras()}
        cam = opened(sn)
        try:
            cam.start()
            frame = triggered_frame(cam)
            assert frame.complete and frame.image is not None and frame.image.shape[:2] == (48, 64)
        finally:
            cam.close()
    finally:
        for fd in held:
            os.close(fd)
