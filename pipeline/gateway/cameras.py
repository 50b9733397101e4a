"""GenICam cameras (GigE Vision, USB3 Vision) through Aravis: find a camera by serial, set the
features the recipe names and verify them, acquire frames with the camera's own ids and timestamps.

Aravis is imported lazily (`load_aravis`): the rest of the project, and `import pipeline.gateway`,
work without the `gige` extra; only opening a camera needs it. A recipe feature the camera lacks
or cannot take stops the gateway before it acquires (`CameraConfigError`, naming the feature): a
frame taken with the wrong exposure or pixel format would be judged as if it were right.

A GigE Vision camera that stops answering is noticed within about a second by a GVCP read of its
privilege register every `PROBE_PERIOD_S` from a socket of our own (Aravis's heartbeat takes up to
six seconds to give up); USB3 Vision cameras rely on Aravis's control-lost signal.
"""

from __future__ import annotations

import importlib
import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.gateway.pixels import PIXEL_FORMATS, decode, pixel_format_name
from pipeline.recipes.schema import CameraFeatures

log = logging.getLogger(__name__)

GIGE_EXTRA_HELP = (
    "GenICam cameras need the `gige` extra: pip install -e '.[gige]' (aravis-python and PyGObject; "
    "PyGObject builds from source: apt-get install libgirepository1.0-dev libcairo2-dev pkg-config)"
)
# GVCP liveness read of a GigE camera. A camera on its own network answers a READREG in well under
# a millisecond: three unanswered reads 0.1 s apart (0.3-0.6 s) leave the alert service the rest
# of the second the issue allows from unplugging to the operator's alert.
PROBE_PERIOD_S = 0.1
PROBE_TIMEOUT_S = 0.1
PROBE_FAILURES = 3  # consecutive unanswered reads: the camera is gone
_GVCP_PORT = 3956
_REG_CCP = 0x0A00
_POP_SLICE_S = 0.05  # next_frame waits in slices this long, to notice a lost camera while waiting
_DEVICE_LIST = threading.Lock()  # Aravis's device list is process-wide: one discovery at a time
_RELATIVE_TOLERANCE = 0.02  # read-back of float features: cameras quantise (line time, gain steps)


class CameraError(RuntimeError):
    """The camera is not found, unreachable, controlled by another application, or was lost."""


class CameraConfigError(ValueError):
    """A recipe feature the camera lacks or cannot take; the message names the GenICam feature."""

    def __init__(self, feature: str, problem: str) -> None:
        super().__init__(f"{feature}: {problem}")
        self.feature = feature
        self.problem = problem


@dataclass(frozen=True)
class AcquiredFrame:
    serial: str
    frame_id: int
    camera_ts_ns: int  # the camera's timestamp of the exposure
    system_ts_ns: int  # host time (time.time_ns() domain) when the frame's first packet arrived
    complete: bool  # False: incomplete or failed buffer (GVSP packet loss, timeout...)
    status: str  # "success", "missing-packets", "timeout", "size-mismatch", ...
    width: int
    height: int
    pixel_format: str  # GenICam name, e.g. "Mono8", "RGB8"
    image: np.ndarray | None  # HxW uint8 (mono) or HxWx3 uint8 RGB; None when not complete


@dataclass
class CameraStats:
    frames: int = 0  # buffers returned by next_frame, complete or not
    incomplete: int = 0
    last_frame_ns: int = 0  # system_ts_ns of the last complete frame
    errors: int = 0  # failed camera calls and losses of the camera
    last_error: str = ""


@dataclass(frozen=True)
class CameraInfo:
    serial: str
    model: str
    vendor: str
    protocol: str  # "GigEVision" or "USB3Vision"
    address: str  # IP for GigE Vision, bus address for USB3 Vision


def load_aravis() -> Any:
    """The Aravis GI module (`from aravis import Aravis`), or CameraError naming the extra."""
    try:
        return importlib.import_module("aravis").Aravis
    except (ImportError, ValueError) as exc:  # gi raises ValueError for a missing typelib
        raise CameraError(f"{GIGE_EXTRA_HELP} ({exc})") from exc


def list_cameras() -> list[CameraInfo]:
    """Every GenICam camera Aravis discovers now (GigE Vision discovery waits about a second)."""
    aravis = load_aravis()
    with _DEVICE_LIST:
        aravis.update_device_list()
        return [
            CameraInfo(
                serial=aravis.get_device_serial_nbr(i) or "",
                model=aravis.get_device_model(i) or "",
                vendor=aravis.get_device_vendor(i) or "",
                protocol=aravis.get_device_protocol(i) or "",
                address=aravis.get_device_address(i) or "",
            )
            for i in range(aravis.get_n_devices())
        ]


def _release(doomed: list[Any]) -> None:
    """Drop the last references to Aravis objects, in the thread that calls this."""
    doomed.clear()


def _probe_gvcp(sock: socket.socket, address: str, req_id: int) -> int | None:
    """The camera's control channel privilege register by a GVCP READREG, None without answer."""
    sock.sendto(struct.pack(">BBHHHI", 0x42, 0x01, 0x0080, 4, req_id, _REG_CCP), (address, _GVCP_PORT))
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            ack = sock.recv(64)
        except (TimeoutError, OSError):
            return None
        if len(ack) >= 12 and struct.unpack_from(">HHHH", ack) == (0, 0x0081, 4, req_id):
            return int(struct.unpack_from(">I", ack, 8)[0])
    return None


class GenICamCamera:
    """One camera of a station, by serial, with the recipe's `CameraFeatures` applied.

    Not thread-safe for concurrent `next_frame` calls; `software_trigger` may come from another
    thread. `close()` is idempotent and also what a lost camera needs before a new `open()`.
    """

    def __init__(self, serial: str, features: CameraFeatures, buffers: int = 16) -> None:
        if buffers < 2:
            raise ValueError(f"a camera needs at least 2 buffers, got {buffers}")
        self.serial = serial
        self.features = features
        self.buffers = buffers
        self.stats = CameraStats()
        self.info: CameraInfo | None = None
        self._aravis: Any = None
        self._camera: Any = None
        self._stream: Any = None
        self._acquiring = False
        self._lost = threading.Event()
        self._watch_stop = threading.Event()
        self._watch: threading.Thread | None = None

    # -- open and configure ---------------------------------------------------------------------

    def open(self, timeout_s: float = 5.0) -> None:
        """Find the camera by serial (discovery repeats until `timeout_s`), take control, apply
        and verify every feature the recipe sets, and prepare the stream's buffers."""
        if self._camera is not None:
            if not self._lost.is_set():
                return
            self.close()  # a lost camera: look for it again
        aravis = self._aravis = load_aravis()
        deadline = time.monotonic() + timeout_s
        while True:
            with _DEVICE_LIST:
                aravis.update_device_list()
                serials = [aravis.get_device_serial_nbr(i) for i in range(aravis.get_n_devices())]
                if self.serial in serials:
                    i = serials.index(self.serial)
                    self.info = CameraInfo(
                        serial=self.serial,
                        model=aravis.get_device_model(i) or "",
                        vendor=aravis.get_device_vendor(i) or "",
                        protocol=aravis.get_device_protocol(i) or "",
                        address=aravis.get_device_address(i) or "",
                    )
                    device_id = aravis.get_device_id(i)
                    break
            if time.monotonic() >= deadline:
                raise CameraError(
                    f"camera {self.serial} not found within {timeout_s:g} s; found: {', '.join(serials) or 'none'}"
                )
        try:
            self._camera = aravis.Camera.new(device_id)
        except Exception as exc:
            raise CameraError(f"camera {self.serial} at {self.info.address}: cannot open: {exc}") from exc
        # One flag per session: a lost device's late signal must not mark a reopened camera lost.
        self._lost = lost = threading.Event()
        try:
            self._configure(lost)
        except (CameraError, CameraConfigError) as exc:
            self.close()
            # Without the frames below: their locals hold the Aravis device, which must go now.
            raise exc.with_traceback(None) from None
        except Exception as exc:
            self.close()
            raise CameraError(f"camera {self.serial}: configuring failed: {exc}").with_traceback(None) from None
        if self.info.protocol == "GigEVision":
            self._watch_stop = threading.Event()
            self._watch = threading.Thread(
                target=self._watchdog,
                args=(self.info.address, lost, self._watch_stop),
                name=f"camera-watch-{self.serial}",
                daemon=True,
            )
            self._watch.start()
        log.info(
            "camera %s (%s %s, %s) open: %s",
            self.serial,
            self.info.vendor,
            self.info.model,
            self.info.address,
            self.features,
        )

    def _configure(self, lost: threading.Event) -> None:
        device = self._camera.get_device()
        if hasattr(device, "is_controller") and not device.is_controller():
            raise CameraError(f"camera {self.serial}: another application controls it (monitor access only)")
        device.connect("control-lost", lambda *_: self._on_control_lost(lost))
        self._apply_features()
        self._stream = self._camera.create_stream(None, None)
        if self._stream is None:
            raise CameraError(f"camera {self.serial}: no stream channel")
        payload = self._camera.get_payload()
        for _ in range(self.buffers):
            self._stream.push_buffer(self._aravis.Buffer.new_allocate(payload))

    def _apply_features(self) -> None:
        f = self.features
        self._apply_pixel_format(f.pixel_format)
        if f.roi is not None:
            self._apply_roi(*f.roi)
        if f.exposure_us is not None:
            self._apply_exposure(f.exposure_us)
        if f.gain is not None:
            self._apply_gain(f.gain)
        self._apply_trigger(f.trigger_source)

    def _apply_pixel_format(self, name: str) -> None:
        cam = self._camera
        offered = list(cam.dup_available_pixel_formats_as_strings() or [])
        if name not in offered:
            raise CameraConfigError(
                "PixelFormat", f"{name} is not offered by the camera; it offers {', '.join(offered)}"
            )
        if name not in PIXEL_FORMATS:
            raise CameraConfigError(
                "PixelFormat",
                f"{name} is not decoded by the gateway; use one of {', '.join(p for p in offered if p in PIXEL_FORMATS)}",
            )
        cam.set_pixel_format_from_string(name)
        got = cam.get_pixel_format_as_string()
        if got != name:
            raise CameraConfigError("PixelFormat", f"set {name}, the camera reads back {got}")

    def _apply_roi(self, x: int, y: int, width: int, height: int) -> None:
        cam = self._camera
        sensor_w, sensor_h = cam.get_sensor_size()
        # The camera's Width/Height maxima shrink with the offsets it has now: judge on the sensor.
        checks = (
            ("OffsetX", x, 0, sensor_w - 1, cam.get_x_offset_increment()),
            ("OffsetY", y, 0, sensor_h - 1, cam.get_y_offset_increment()),
            ("Width", width, cam.get_width_bounds()[0], sensor_w - x, cam.get_width_increment()),
            ("Height", height, cam.get_height_bounds()[0], sensor_h - y, cam.get_height_increment()),
        )
        for feature, value, lo, hi, inc in checks:
            if not lo <= value <= hi:
                raise CameraConfigError(
                    feature,
                    f"{value} is outside the camera's range {lo}-{hi} (roi {x},{y} {width}x{height}, sensor {sensor_w}x{sensor_h})",
                )
            if inc > 1 and (value - lo) % inc:
                raise CameraConfigError(feature, f"{value} is not a multiple of the camera's increment {inc} from {lo}")
        cam.set_region(x, y, width, height)
        got = tuple(cam.get_region())
        if got != (x, y, width, height):
            raise CameraConfigError("Width", f"roi set to {(x, y, width, height)}, the camera reads back {got}")

    def _apply_exposure(self, exposure_us: float) -> None:
        cam = self._camera
        if not cam.is_exposure_time_available():
            raise CameraConfigError("ExposureTime", "the camera has no exposure time feature")
        lo, hi = cam.get_exposure_time_bounds()
        if not lo <= exposure_us <= hi:
            raise CameraConfigError("ExposureTime", f"{exposure_us:g} us is outside the camera's range {lo:g}-{hi:g}")
        if cam.is_exposure_auto_available():
            cam.set_exposure_time_auto(self._aravis.Auto.OFF)
        cam.set_exposure_time(exposure_us)
        got = cam.get_exposure_time()
        if abs(got - exposure_us) > max(1.0, _RELATIVE_TOLERANCE * exposure_us):
            raise CameraConfigError("ExposureTime", f"set {exposure_us:g} us, the camera reads back {got:g} us")

    def _apply_gain(self, gain: float) -> None:
        cam = self._camera
        if not cam.is_gain_available():
            raise CameraConfigError("Gain", "the camera has no gain feature")
        lo, hi = cam.get_gain_bounds()
        if not lo <= gain <= hi:
            raise CameraConfigError("Gain", f"{gain:g} is outside the camera's range {lo:g}-{hi:g}")
        if cam.is_gain_auto_available():
            cam.set_gain_auto(self._aravis.Auto.OFF)
        cam.set_gain(gain)
        got = cam.get_gain()
        # Integer gain registers (GainRaw) round: half a step is the camera's precision.
        if abs(got - gain) > max(0.5, _RELATIVE_TOLERANCE * gain):
            raise CameraConfigError("Gain", f"set {gain:g}, the camera reads back {got:g}")

    def _apply_trigger(self, source: str) -> None:
        device = self._camera.get_device()
        if not device.is_feature_available("TriggerMode"):
            if source == "off":
                return
            raise CameraConfigError(
                "TriggerMode", f"the camera has no trigger; the recipe asks for TriggerSource {source}"
            )
        if device.is_feature_available("AcquisitionMode"):
            device.set_string_feature_value("AcquisitionMode", "Continuous")
        if device.is_feature_available("TriggerSelector"):
            selectors = list(device.dup_available_enumeration_feature_values_as_strings("TriggerSelector") or [])
            if "FrameStart" in selectors:
                # A trigger left on AcquisitionStart by a previous application would gate the stream.
                if "AcquisitionStart" in selectors:
                    device.set_string_feature_value("TriggerSelector", "AcquisitionStart")
                    device.set_string_feature_value("TriggerMode", "Off")
                device.set_string_feature_value("TriggerSelector", "FrameStart")
        if source == "off":
            self._set_enum(device, "TriggerMode", "Off")
            return
        offered = list(device.dup_available_enumeration_feature_values_as_strings("TriggerSource") or [])
        if source not in offered:
            raise CameraConfigError(
                "TriggerSource", f"{source} is not offered by the camera; it offers {', '.join(offered)}"
            )
        self._set_enum(device, "TriggerSource", source)
        self._set_enum(device, "TriggerMode", "On")

    @staticmethod
    def _set_enum(device: Any, feature: str, value: str) -> None:
        device.set_string_feature_value(feature, value)
        got = device.get_string_feature_value(feature)
        if got != value:
            raise CameraConfigError(feature, f"set {value}, the camera reads back {got}")

    # -- acquisition ----------------------------------------------------------------------------

    def _require_open(self) -> Any:
        if self._camera is None:
            raise CameraError(f"camera {self.serial} is not open")
        if self._lost.is_set():
            raise CameraError(f"camera {self.serial} stopped answering (control channel lost)")
        return self._camera

    def _fail(self, what: str, exc: Exception) -> CameraError:
        self.stats.errors += 1
        self.stats.last_error = f"{what}: {exc}"
        return CameraError(f"camera {self.serial}: {what}: {exc}")

    def start(self) -> None:
        """Start acquisition: frames flow (free-running) or wait for triggers."""
        cam = self._require_open()
        try:
            cam.start_acquisition()
        except Exception as exc:
            raise self._fail("start acquisition", exc) from exc
        self._acquiring = True

    def software_trigger(self) -> None:
        """One TriggerSoftware command: one frame when TriggerSource is Software."""
        cam = self._require_open()
        try:
            cam.software_trigger()
        except Exception as exc:
            raise self._fail("software trigger", exc) from exc

    def next_frame(self, timeout_s: float) -> AcquiredFrame | None:
        """The next buffer the camera filled, complete or not; None when none came within
        `timeout_s`; CameraError once the camera stopped answering (checked while waiting)."""
        self._require_open()
        stream = self._stream
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            buf = stream.timeout_pop_buffer(max(1, int(min(left, _POP_SLICE_S) * 1e6)))
            if buf is not None:
                try:
                    return self._frame(buf)
                finally:
                    stream.push_buffer(buf)
            if self._lost.is_set():
                self.stats.errors += 1
                self.stats.last_error = "control channel lost"
                raise CameraError(f"camera {self.serial} stopped answering (control channel lost)")
            if left <= 0:
                return None

    def _frame(self, buf: Any) -> AcquiredFrame:
        status = buf.get_status()
        status_name = str(getattr(status, "value_nick", status))
        complete = status == self._aravis.BufferStatus.SUCCESS
        # An incomplete buffer may lack its leader (no image part): Aravis asserts on reading its
        # size, so it is described by what the camera was set to instead.
        width = height = 0
        pixel_format = self.features.pixel_format
        image = None
        if complete:
            width, height = buf.get_image_width(), buf.get_image_height()
            pixel_format = pixel_format_name(buf.get_image_pixel_format())
            try:
                image = decode(buf.get_data(), width, height, pixel_format)
            except ValueError as exc:
                complete, status_name = False, "size-mismatch"
                self.stats.last_error = str(exc)
        self.stats.frames += 1
        system_ts = int(buf.get_system_timestamp())
        if complete:
            self.stats.last_frame_ns = system_ts
        else:
            self.stats.incomplete += 1
        return AcquiredFrame(
            serial=self.serial,
            frame_id=int(buf.get_frame_id()),
            camera_ts_ns=int(buf.get_timestamp()),
            system_ts_ns=system_ts,
            complete=complete,
            status=status_name,
            width=width,
            height=height,
            pixel_format=pixel_format,
            image=image,
        )

    def stop(self) -> None:
        """Stop acquisition (nothing to do on a lost camera)."""
        if self._camera is None or not self._acquiring:
            return
        self._acquiring = False
        if self._lost.is_set():
            return
        try:
            self._camera.stop_acquisition()
        except Exception as exc:
            raise self._fail("stop acquisition", exc) from exc

    def close(self) -> None:
        """Release the camera (control privilege, stream, buffers). Idempotent."""
        if self._watch is not None:
            self._watch_stop.set()
            self._watch.join()
            self._watch = None
        if self._camera is not None and self._acquiring and not self._lost.is_set():
            try:
                self._camera.stop_acquisition()
            except Exception as exc:
                log.warning("camera %s: stop acquisition on close: %s", self.serial, exc)
        self._acquiring = False
        doomed: list[Any] = [self._stream, self._camera]
        self._stream = self._camera = None
        if doomed[1] is not None and self._lost.is_set():
            # Dropping the last reference makes Aravis write to the camera (stream channel, control
            # privilege), each write timing out after 5 x 500 ms on a camera that is gone: a thread
            # of its own waits for that, so a gateway can look for the camera again at once.
            name = f"camera-release-{self.serial}"
            threading.Thread(target=_release, args=(doomed,), name=name, daemon=True).start()
        # Otherwise the last references go with `doomed`: Aravis leaves control, closes its sockets.

    @property
    def connected(self) -> bool:
        """False once the camera stopped answering (control channel lost), and while closed."""
        return self._camera is not None and not self._lost.is_set()

    def __enter__(self) -> GenICamCamera:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- liveness -------------------------------------------------------------------------------

    def _on_control_lost(self, lost: threading.Event) -> None:
        if not lost.is_set():
            log.warning("camera %s: control lost (Aravis heartbeat)", self.serial)
        lost.set()

    def _watchdog(self, address: str, lost: threading.Event, stop: threading.Event) -> None:
        """GVCP reads of the privilege register: no answer `PROBE_FAILURES` times in a row, or an
        answer saying nobody controls it (the camera restarted), is a lost camera."""
        failures = 0
        req_id = 0x8000
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while not stop.wait(PROBE_PERIOD_S):
                req_id = req_id % 0xFFFF + 1
                try:
                    ccp = _probe_gvcp(sock, address, req_id)
                except OSError:
                    ccp = None
                failures = failures + 1 if ccp is None else 0
                if failures >= PROBE_FAILURES or ccp == 0:
                    why = "no GVCP answer" if ccp is None else "control privilege released (camera restarted)"
                    log.warning("camera %s at %s: lost: %s", self.serial, address, why)
                    lost.set()
                    return
