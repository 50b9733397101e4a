"""Fake GigE Vision cameras on the loopback whose frames are images we choose (tests, demo, benchmark).

Each camera is a real GigE Vision device on the wire: GVCP control on UDP 3956 and GVSP streaming
to the address the client writes, so `GenICamCamera` (Aravis) talks to it exactly as to a plant
camera. The device model (GenICam XML, registers, PixelFormat/Width/Trigger... semantics) is
Aravis's own `ArvFakeCamera`; only the network side is here, in Python, because Aravis's
`ArvGvFakeCamera` binds GVCP to the interface's one address (127.0.0.1 on `lo`), so a second one
in the same machine cannot answer control commands: every camera here takes its own loopback
address (127.0.0.2, 127.0.0.3, ...; Linux routes all of 127/8 to `lo` without configuration) and a
discovery responder on port 3956 answers for all of them (Aravis broadcasts it to 255.255.255.255 from 127.0.0.1). Frames are built from `source(n)`, so a test can send rendered units over GVSP.

Packet loss is injected here (`set_packet_loss`): leader, payload and trailer packets are dropped
at that ratio, and resend requests are ignored (as Aravis's fake camera does), so a frame that lost
a packet reaches the client incomplete.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import logging
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.gateway.cameras import load_aravis
from pipeline.gateway.pixels import PIXEL_FORMATS, bytes_per_pixel, encode_raw

log = logging.getLogger(__name__)

GVCP_PORT = 3956
DISCOVERY_ADDRESS = "127.0.0.1"  # where Aravis sends GigE Vision discovery on the loopback
_FIRST_HOST, _LAST_HOST = 2, 254

# GVCP commands and the bootstrap registers the server itself interprets.
_DISCOVERY_CMD, _DISCOVERY_ACK = 0x0002, 0x0003
_READREG_CMD, _READREG_ACK = 0x0080, 0x0081
_WRITEREG_CMD, _WRITEREG_ACK = 0x0082, 0x0083
_READMEM_CMD, _READMEM_ACK = 0x0084, 0x0085
_WRITEMEM_CMD, _WRITEMEM_ACK = 0x0086, 0x0087
_DISCOVERY_DATA_SIZE = 0xF8
_REG_CCP = 0x0A00  # control channel privilege
_REG_PACKET_SIZE = 0x0D04  # GevSCPSPacketSize (low 16 bits)
# ArvFakeCamera's registers (arvfakecamera.h).
_REG_WIDTH, _REG_HEIGHT = 0x100, 0x104
_REG_X_OFFSET, _REG_Y_OFFSET = 0x130, 0x134
_REG_PIXEL_FORMAT = 0x128
_REG_FRAME_PERIOD_US = 0x138
_REG_TRIGGER_MODE, _REG_TRIGGER_SOURCE = 0x300, 0x304
_TRIGGER_SOURCE_LINE0 = 0
# GVSP: 20 (IP) + 8 (UDP) + 8 (GVSP header) bytes of each packet are not payload.
_GVSP_OVERHEAD = 36
_GVSP_LEADER, _GVSP_TRAILER, _GVSP_PAYLOAD = 1, 2, 3
_PAYLOAD_TYPE_IMAGE = 1



def _readable(socks: list[socket.socket], timeout_s: float) -> list[socket.socket]:
    """The sockets with a datagram waiting. poll(), not select(): select() cannot watch descriptors
    above 1023, which a long-running process (a whole test session) does reach."""
    poller = select.poll()
    by_fd = {}
    for sock in socks:
        poller.register(sock, select.POLLIN)
        by_fd[sock.fileno()] = sock
    return [by_fd[fd] for fd, _ in poller.poll(max(0, int(timeout_s * 1000)))]

class _DiscoveryResponder:
    """The one socket on 127.0.0.1:3956 of this process: answers GVCP discovery for every running
    fake camera, each from its own address (so the ack looks as a plant camera's)."""

    _instance: _DiscoveryResponder | None = None
    _life = threading.Lock()  # start and stop of the responder
    _guard = threading.Lock()  # its list of cameras

    def __init__(self) -> None:
        # Aravis sends discovery to 255.255.255.255:3956 from its socket on 127.0.0.1; sockets bound
        # there with SO_REUSEADDR all receive it (so processes with fake cameras coexist, as with
        # Aravis's own fake camera). 127.0.0.1:3956 too where free: the loopback's own "broadcast".
        self._socks: list[socket.socket] = []
        for address, shared in (("255.255.255.255", True), (DISCOVERY_ADDRESS, False)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            if shared:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, GVCP_PORT))
            except OSError as exc:
                sock.close()
                if shared:
                    raise RuntimeError(f"cannot bind GigE Vision discovery on {address}:{GVCP_PORT}: {exc}") from None
                continue
            self._socks.append(sock)
        self._cameras: list[FakeGigECamera] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-gige-discovery", daemon=True)
        self._thread.start()

    @classmethod
    def join(cls, camera: FakeGigECamera) -> None:
        with cls._life:
            if cls._instance is None:
                cls._instance = cls()
            with cls._guard:
                cls._instance._cameras.append(camera)

    @classmethod
    def leave(cls, camera: FakeGigECamera) -> None:
        with cls._life:
            inst = cls._instance
            if inst is None:
                return
            with cls._guard:
                if camera in inst._cameras:
                    inst._cameras.remove(camera)
                if inst._cameras:
                    return
            cls._instance = None
            inst._stop.set()  # the serving thread takes only _guard, so joining it here is safe
            inst._thread.join()
            for sock in inst._socks:
                sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready = _readable(self._socks, 0.05)
            for sock in ready:
                try:
                    packet, peer = sock.recvfrom(2048)
                except OSError:
                    continue
                # Only loopback clients: a discovery broadcast from the plant network gets no answer.
                if not peer[0].startswith("127."):
                    continue
                if len(packet) >= 8 and packet[0] == 0x42 and struct.unpack_from(">H", packet, 2)[0] == _DISCOVERY_CMD:
                    req_id = struct.unpack_from(">H", packet, 6)[0]
                    with self._guard:
                        cameras = list(self._cameras)
                    for cam in cameras:
                        cam._answer_discovery(req_id, peer)


class FakeGigECamera:
    """An Aravis fake GigE Vision camera on the loopback whose frames are images we choose.

    `source(n)` gives the n-th frame's image (HxW or HxWx3 uint8, converted to the camera's pixel
    format; n counts frames sent since construction); None sends Aravis's own test pattern. The
    image is the scene on the sensor at (0, 0): a region of interest set by the client crops it
    (pixels outside the image are black). `start()`/`stop()` plug and unplug the camera; a restart
    is a power cycle (registers back to their defaults, privilege free, frame ids from 1).
    """

    def __init__(
        self,
        serial: str,
        width: int,
        height: int,
        source: Callable[[int], np.ndarray] | None = None,
        pixel_format: str = "Mono8",
        interface: str = "lo",
    ) -> None:
        if interface != "lo":
            raise ValueError(f"fake cameras live on the loopback only, got interface {interface!r}")
        if pixel_format not in PIXEL_FORMATS:
            raise ValueError(f"pixel format {pixel_format} is not one of {', '.join(PIXEL_FORMATS)}")
        self.serial = serial
        self.width = width
        self.height = height
        self.source = source
        self.pixel_format = pixel_format
        self.address: str | None = None  # the camera's loopback IP while started
        self.frames_sent = 0
        self._loss = 0.0
        self._rng = random.Random()
        self._line_triggers = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gvcp: socket.socket | None = None
        self._gvsp: socket.socket | None = None
        self._fake: Any = None
        self._controller: tuple[str, int] | None = None
        self._controller_seen = 0.0
        self._frame_id = 0
        self._next_frame_ns = 0

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Appear on the network: a fresh device (power on) at a free loopback address."""
        if self._thread is not None:
            return
        aravis = load_aravis()
        gio = importlib.import_module("gi.repository.Gio")  # importable once Aravis is
        sensor_w, sensor_h = aravis.FAKE_CAMERA_SENSOR_WIDTH, aravis.FAKE_CAMERA_SENSOR_HEIGHT
        if not (0 < self.width <= sensor_w and 0 < self.height <= sensor_h):
            raise ValueError(f"fake camera frames are at most {sensor_w}x{sensor_h}, got {self.width}x{self.height}")
        fake = aravis.FakeCamera.new(self.serial)
        fake.write_register(_REG_WIDTH, self.width)
        fake.write_register(_REG_HEIGHT, self.height)
        fake.write_register(_REG_PIXEL_FORMAT, PIXEL_FORMATS[self.pixel_format])
        _DiscoveryResponder.join(self)  # answers for this camera once its GVCP socket exists
        try:
            gvcp, address = self._bind_free_address()
            gvsp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            gvsp.bind((address, 0))
            gvsp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        except BaseException:
            _DiscoveryResponder.leave(self)
            raise
        fake.set_inet_address(gio.InetAddress.new_from_string(address))
        self._fake, self.address, self._controller, self._frame_id, self._next_frame_ns = fake, address, None, 0, 0
        with self._lock:
            self._gvcp, self._gvsp = gvcp, gvsp
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name=f"fake-gige-{self.serial}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Disappear (a camera unplugged): no GVCP answers, no GVSP packets. Idempotent."""
        if self._thread is None:
            return
        _DiscoveryResponder.leave(self)
        self._stop.set()
        self._thread.join()
        self._thread = None
        with self._lock:
            for sock in (self._gvcp, self._gvsp):
                if sock is not None:
                    sock.close()
            self._gvcp = self._gvsp = None
        self._fake = None
        self.address = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def __enter__(self) -> FakeGigECamera:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- fault injection and triggers --------------------------------------------------------

    def set_packet_loss(self, ratio: float, seed: int | None = None) -> None:
        """Drop each GVSP packet (leader, payload, trailer) with probability `ratio`; resend
        requests stay unanswered, so a frame missing a packet arrives incomplete."""
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"packet loss ratio must be in [0, 1], got {ratio}")
        if seed is not None:
            self._rng = random.Random(seed)
        self._loss = ratio

    def line_trigger(self) -> None:
        """A pulse on the camera's Line0 (a photo-eye): one frame when TriggerMode is On with
        TriggerSource Line0 and acquisition runs; ignored otherwise, as a camera would."""
        with self._lock:
            self._line_triggers += 1

    # -- network -----------------------------------------------------------------------------

    def _bind_free_address(self) -> tuple[socket.socket, str]:
        for host in range(_FIRST_HOST, _LAST_HOST + 1):
            address = f"127.0.0.{host}"
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((address, GVCP_PORT))
            except OSError as exc:
                sock.close()
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise
            return sock, address
        raise RuntimeError("no free loopback address 127.0.0.2-254 for a fake camera's GVCP port")

    def _answer_discovery(self, req_id: int, peer: tuple[str, int]) -> None:
        with self._lock:
            if self._gvcp is None or self._fake is None:
                return
            data = self._read_memory(0, _DISCOVERY_DATA_SIZE)
            try:
                self._gvcp.sendto(struct.pack(">HHHH", 0, _DISCOVERY_ACK, len(data), req_id) + data, peer)
            except OSError:
                pass

    def _read_memory(self, address: int, size: int) -> bytes:
        buf = ctypes.create_string_buffer(size)
        self._fake.read_memory(address, size, ctypes.addressof(buf))
        return buf.raw

    def _register(self, address: int) -> int:
        return int(self._fake.read_register(address)[1])

    def _serve(self) -> None:
        """GVCP commands and GVSP frames, on one thread so that the device model is never shared."""
        gvcp = self._gvcp
        assert gvcp is not None
        while not self._stop.is_set():
            wait = 0.05
            if self._streaming() and self._register(_REG_TRIGGER_MODE) == 0:
                wait = max(0.0, min(wait, (self._next_frame_ns - time.time_ns()) / 1e9))
            ready = _readable([gvcp], wait)
            if ready:
                try:
                    packet, peer = gvcp.recvfrom(2048)
                except OSError:
                    continue
                self._handle_control(packet, peer)
            self._check_heartbeat()
            try:
                self._maybe_send_frame()
            except Exception:  # a source that raises must not kill the camera thread silently
                log.exception("fake camera %s: frame not sent", self.serial)

    def _check_heartbeat(self) -> None:
        if self._controller is None:
            return
        timeout_s = self._fake.get_heartbeat_timeout() / 1000.0
        if time.monotonic() - self._controller_seen > timeout_s:
            log.info("fake camera %s: heartbeat timeout, control released", self.serial)
            self._fake.set_control_channel_privilege(0)
            self._controller = None

    def _handle_control(self, packet: bytes, peer: tuple[str, int]) -> None:
        if len(packet) < 8 or packet[0] != 0x42:
            return
        _, _, command, size, req_id = struct.unpack_from(">BBHHH", packet)
        body = packet[8 : 8 + size]
        may_write = self._controller is None or self._controller == peer
        ack: bytes | None = None
        if command == _DISCOVERY_CMD:
            data = self._read_memory(0, _DISCOVERY_DATA_SIZE)
            ack = struct.pack(">HHHH", 0, _DISCOVERY_ACK, len(data), req_id) + data
        elif command == _READREG_CMD:
            addresses = struct.unpack(f">{len(body) // 4}I", body[: len(body) // 4 * 4])
            values = [self._register(a) for a in addresses]
            if _REG_CCP in addresses and self._controller == peer:
                self._controller_seen = time.monotonic()
            ack = struct.pack(">HHHH", 0, _READREG_ACK, 4 * len(values), req_id) + struct.pack(
                f">{len(values)}I", *values
            )
        elif command == _WRITEREG_CMD and may_write:
            pairs = struct.unpack(f">{len(body) // 4}I", body[: len(body) // 8 * 8])
            for address, value in zip(pairs[::2], pairs[1::2], strict=True):
                self._fake.write_register(address, value)
            ack = struct.pack(">HHHHI", 0, _WRITEREG_ACK, 4, req_id, len(pairs) // 2)
        elif command == _READMEM_CMD and len(body) >= 8:
            address, count = struct.unpack_from(">II", body)
            count &= 0xFFFF
            ack = struct.pack(">HHHHI", 0, _READMEM_ACK, 4 + count, req_id, address) + self._read_memory(address, count)
        elif command == _WRITEMEM_CMD and may_write and len(body) >= 4:
            address = struct.unpack_from(">I", body)[0]
            block = ctypes.create_string_buffer(bytes(body[4:]), len(body) - 4)
            self._fake.write_memory(address, len(body) - 4, ctypes.addressof(block))
            ack = struct.pack(">HHHHI", 0, _WRITEMEM_ACK, 4, req_id, address)
        # Packet resend requests (0x0040) and anything else: no answer, as Aravis's fake camera.
        privilege = self._fake.get_control_channel_privilege()
        if self._controller is None and privilege != 0:
            self._controller, self._controller_seen = peer, time.monotonic()
        elif self._controller is not None and privilege == 0:
            self._controller = None
        if ack is not None:
            with self._lock:
                if self._gvcp is not None:
                    self._gvcp.sendto(ack, peer)

    def _streaming(self) -> bool:
        return bool(self._fake.get_control_channel_privilege() != 0 and self._fake.get_acquisition_status() != 0)

    def _maybe_send_frame(self) -> None:
        if not self._streaming():
            self._next_frame_ns = 0
            with self._lock:
                self._line_triggers = 0
            return
        if self._register(_REG_TRIGGER_MODE) == 0:
            now = time.time_ns()
            if self._next_frame_ns == 0:
                self._next_frame_ns = now
            if now < self._next_frame_ns:
                return
            period_ns = max(1, self._register(_REG_FRAME_PERIOD_US)) * 1000
            self._next_frame_ns = max(self._next_frame_ns + period_ns, now)
        elif self._fake.is_in_software_trigger_mode():
            if not self._fake.check_and_acknowledge_software_trigger():
                return
        else:
            with self._lock:
                fire = self._line_triggers > 0 and self._register(_REG_TRIGGER_SOURCE) == _TRIGGER_SOURCE_LINE0
                self._line_triggers = 0 if not fire else self._line_triggers - 1
            if not fire:
                return
        self._send_frame()

    def _frame_payload(self, width: int, height: int, pixel_format: str) -> bytes:
        n = self.frames_sent
        if self.source is None:
            aravis = load_aravis()
            buf = aravis.Buffer.new_allocate(self._fake.get_payload())
            self._fake.fill_buffer(buf)
            return bytes(buf.get_data())
        image = np.asarray(self.source(n))
        x, y = self._register(_REG_X_OFFSET), self._register(_REG_Y_OFFSET)
        shape = (height, width) if image.ndim == 2 else (height, width, image.shape[2])
        view = np.zeros(shape, dtype=np.uint8)
        crop = image[y : y + height, x : x + width]
        view[: crop.shape[0], : crop.shape[1]] = crop
        return encode_raw(view, pixel_format)

    def _send_frame(self) -> None:
        fake = self._fake
        width, height = self._register(_REG_WIDTH), self._register(_REG_HEIGHT)
        code = self._register(_REG_PIXEL_FORMAT)
        names = {v: k for k, v in PIXEL_FORMATS.items()}
        pixel_format = names.get(code, self.pixel_format)
        payload = self._frame_payload(width, height, pixel_format)
        expected = width * height * bytes_per_pixel(pixel_format)
        payload = payload[:expected].ljust(expected, b"\0")
        self.frames_sent += 1
        self._frame_id = self._frame_id % 65535 + 1  # 16-bit GVSP block id; 0 is invalid
        dest = fake.get_stream_address()
        peer = (dest.get_address().to_string(), dest.get_port())
        chunk = max(64, (self._register(_REG_PACKET_SIZE) & 0xFFFF) - _GVSP_OVERHEAD)
        x, y = self._register(_REG_X_OFFSET), self._register(_REG_Y_OFFSET)
        timestamp = time.time_ns()
        fid = self._frame_id
        packets: list[list[bytes | memoryview]] = []
        leader = struct.pack(
            ">HHIHHIIIIIIIHH",
            0,
            fid,
            (_GVSP_LEADER << 24) | 0,
            0,
            _PAYLOAD_TYPE_IMAGE,
            timestamp >> 32,
            timestamp & 0xFFFFFFFF,
            code,
            width,
            height,
            x,
            y,
            0,
            0,
        )
        packets.append([leader])
        view = memoryview(payload)
        packet_id = 1
        for offset in range(0, len(payload), chunk):
            header = struct.pack(">HHI", 0, fid, (_GVSP_PAYLOAD << 24) | packet_id)
            packets.append([header, view[offset : offset + chunk]])
            packet_id += 1
        packets.append([struct.pack(">HHIII", 0, fid, (_GVSP_TRAILER << 24) | packet_id, _PAYLOAD_TYPE_IMAGE, height)])
        with self._lock:
            sock = self._gvsp
            if sock is None:
                return
            for parts in packets:
                if self._loss > 0.0 and self._rng.random() < self._loss:
                    continue
                try:
                    sock.sendmsg(parts, [], 0, peer)
                except OSError as exc:  # receiver gone: a real camera keeps streaming regardless
                    log.debug("fake camera %s: GVSP send failed: %s", self.serial, exc)
                    break
