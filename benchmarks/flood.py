"""Malformed frames beside a live line (issue 13): no crash, real units keep their verdict latency.

    timeout 1500 .venv/bin/python benchmarks/flood.py [--rate 20] [--quiet-s 30] [--malformed 10000]
        [--malformed-rate 100] [--workers 2] [--deadline-s 1500]

Starts the embedded stack as benchmarks/chaos.py does (Tansu, tritonserver with the tiny contract
model, --workers workers, the actuator, the PLC simulator over OPC UA, the chDB sink in this
process; loopback ports only), then runs two phases of the same simulated line at --rate units/s:

* quiet: one lot for --quiet-s seconds, nothing else on the frames topic;
* flood: another lot for as long as the flood lasts (--line-s; by default --malformed /
  --malformed-rate seconds), while a second thread publishes --malformed hostile frames at
  --malformed-rate/s straight to the frames topic with a confluent-kafka producer: every kind the
  edge validation refuses (`KINDS`: garbage and truncated images, missing, oversized, repeated
  and non-UTF-8 headers, 10 kB and non-printable unit ids, absurd, stale and future capture
  times, unknown and ill-formed products, wrong content types, a PNG declaring 20000x20000 px,
  tiny, blank, overexposed and dark frames). Their unit ids never collide with the line's, and
  they carry the line's id where their headers are readable, so the actuator admits them as
  units on the same belt (reject-by-default), as it would a broken camera's.

Per phase it prints, from ClickHouse: the real units published, verdicts stored, capture->verdict
latency (the ``inspections.latency_ms`` column) p50/p95/p99/max, the lot's gate reconciliation
(`build_reconciliation`: late, missed, unaccounted, passed without a pass verdict); the malformed
frames sent, dead-lettered by the worker (``dead_letters``, one row per frame offset) and given a
pass verdict; p99(flood)/p99(quiet) against 2.0; and crashes: service outages the embedded
supervisor saw plus managed processes whose pid changed. Exits 1 when a target fails: a crash,
p99 ratio > 2, an unaccounted real unit, a unit passed without a pass verdict, a malformed frame
not dead-lettered or given a pass verdict. Not a test.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import signal
import struct
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_actuation import publish_lot  # noqa: E402
from chaos import line_frames, settle, stack_settings  # noqa: E402
from tables import md_header, md_row  # noqa: E402

from pipeline.analytics.reconciliation import build_reconciliation  # noqa: E402
from pipeline.clickhouse import ClickHouseClient  # noqa: E402
from pipeline.core.times import NS_PER_S, now_ns  # noqa: E402
from pipeline.demo.run import pipeline_stack  # noqa: E402
from pipeline.demo.services import Services  # noqa: E402
from pipeline.embedded.process import live_processes  # noqa: E402
from pipeline.kafka.clients import flush_or_raise, make_producer  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.wire.codec import MAX_FRAME_PIXELS, encode_jpeg, encode_png  # noqa: E402
from pipeline.wire.messages import H_CAPTURE_NS, H_CONTENT_TYPE, H_LINE, H_PRODUCT, H_UNIT, FrameMeta  # noqa: E402

MAX_P99_RATIO = 2.0
Headers = list[tuple[str, str | bytes | None]]


def png_declaring(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header declares width x height px (a decompression bomb's
    header, without the allocation)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@dataclass
class Hostile:
    """What the flood sends: per kind, (headers, value, with a key) from a fresh valid header set."""

    line: str
    camera: str
    product: str
    lot: str
    good: bytes
    rng: random.Random = field(default_factory=lambda: random.Random(13))

    def __post_init__(self) -> None:
        with Image.open(io.BytesIO(self.good)) as frame:
            side = frame.width
        max_side = int(MAX_FRAME_PIXELS ** 0.5)
        px = np.full((side, side), 255, np.uint8)
        px[: side // 5] = np.random.default_rng(1).integers(0, 255, (side // 5, side), dtype=np.uint8)
        self.images = {
            "grey": encode_png(Image.new("RGB", (side, side), (120, 120, 120))),
            "black-jpeg": encode_jpeg(Image.new("RGB", (side, side))),
            "saturated": encode_png(Image.fromarray(px)),
            "tiny": encode_png(Image.new("RGB", (8, 8), (90, 140, 90))),
            "bomb": png_declaring(20_000, 20_000),
            "max-blank": encode_png(Image.new("L", (max_side, max_side), 255)),
        }

    def meta(self, unit: str, **replace: bytes) -> Headers:
        meta = FrameMeta(unit, self.line, self.camera, self.product, now_ns(), "image/png", self.lot)
        h: dict[str, str | bytes | None] = dict(meta.to_headers())
        h.update(replace)
        return list(h.items())

    def kinds(self) -> dict[str, Callable[[str], tuple[Headers, bytes, bool]]]:
        r, good, img = self.rng, self.good, self.images
        return {
            "garbage bytes": lambda u: (self.meta(u), r.randbytes(r.randrange(16, 4096)), True),
            "empty value": lambda u: (self.meta(u), b"", True),
            "truncated png": lambda u: (self.meta(u), good[: len(good) // 2], True),
            "png signature, garbage body": lambda u: (self.meta(u), good[:8] + r.randbytes(2048), True),
            "jpeg signature, garbage body": lambda u: (
                self.meta(u, **{H_CONTENT_TYPE: b"image/jpeg"}), b"\xff\xd8\xff" + r.randbytes(2048), True),
            "no headers, no key": lambda u: ([], good, False),
            "missing capture time": lambda u: ([h for h in self.meta(u) if h[0] != H_CAPTURE_NS], good, True),
            "oversized header (10 kB camera)": lambda u: (self.meta(u, **{"ls-camera": b"c" * 10_000}), good, True),
            "10 kB unit id": lambda u: (self.meta(u, **{H_UNIT: (u + "-").encode() + b"U" * 10_000}), good, True),
            "unit id over 256 chars": lambda u: (self.meta(u, **{H_UNIT: (u + "-").encode() + b"U" * 300}), good, True),
            "non-printable unit id": lambda u: (self.meta(u, **{H_UNIT: u.encode() + b"-\x00\x1b[2J"}), good, True),
            "repeated unit id header": lambda u: (self.meta(u) + [(H_UNIT, (u + "-other").encode())], good, True),
            "non-UTF-8 line": lambda u: (self.meta(u, **{H_LINE: b"\xff\xfe-line"}), good, True),
            "capture 99999999999999999999999999": lambda u: (
                self.meta(u, **{H_CAPTURE_NS: b"99999999999999999999999999"}), good, True),
            "capture 1 h old": lambda u: (
                self.meta(u, **{H_CAPTURE_NS: str(now_ns() - 3601 * NS_PER_S).encode()}), good, True),
            "capture 1 h ahead": lambda u: (
                self.meta(u, **{H_CAPTURE_NS: str(now_ns() + 3600 * NS_PER_S).encode()}), good, True),
            "capture not a number": lambda u: (self.meta(u, **{H_CAPTURE_NS: b"12e9; DROP TABLE"}), good, True),
            "unknown product": lambda u: (self.meta(u, **{H_PRODUCT: b"no-such-product"}), good, True),
            "ill-formed product": lambda u: (self.meta(u, **{H_PRODUCT: b"../../etc/passwd"}), good, True),
            "content-type image/gif": lambda u: (self.meta(u, **{H_CONTENT_TYPE: b"image/gif"}), good, True),
            "content-type text/plain": lambda u: (self.meta(u, **{H_CONTENT_TYPE: b"text/plain"}), b"hello", True),
            "png declaring 20000x20000": lambda u: (self.meta(u), img["bomb"], True),
            "8x8 px frame": lambda u: (self.meta(u), img["tiny"], True),
            "blank grey frame": lambda u: (self.meta(u), img["grey"], True),
            "black jpeg frame": lambda u: (self.meta(u, **{H_CONTENT_TYPE: b"image/jpeg"}), img["black-jpeg"], True),
            "overexposed frame": lambda u: (self.meta(u), img["saturated"], True),
            "blank frame at the pixel limit": lambda u: (self.meta(u), img["max-blank"], True),
        }


def flood(settings: Settings, hostile: Hostile, n: int, rate: float, sent: Counter[str], stop: threading.Event,
          skip: tuple[str, ...] = ()) -> None:
    """Publish `n` hostile frames at `rate`/s, kinds in turn; count what was sent per kind."""
    producer = make_producer(settings.kafka, "linesight-flood")
    kinds = [(k, make) for k, make in hostile.kinds().items() if not any(x and x in k for x in skip)]
    topic = settings.kafka.topic_frames
    interval = 1.0 / rate
    next_at = time.monotonic()
    try:
        for seq in range(n):
            if stop.is_set():
                break
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at += interval
            name, make = kinds[seq % len(kinds)]
            unit = f"{hostile.lot}-{seq:06d}"
            headers, value, keyed = make(unit)
            while True:
                try:
                    producer.produce(topic, key=unit.encode() if keyed else None, value=value, headers=headers)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
            sent[name] += 1
    finally:
        flush_or_raise(producer, 60.0)


@dataclass
class Phase:
    name: str
    lot: str
    published: int = 0
    verdicts: int = 0
    p50: float = float("nan")
    p95: float = float("nan")
    p99: float = float("nan")
    max: float = float("nan")
    late: int = 0
    missed: int = 0
    unaccounted: int = 0
    passed_no_verdict: int = 0
    dead_lettered_real: int = 0
    malformed_sent: int = 0
    malformed_dead: int = 0
    malformed_pass: int = 0
    malformed_gate_passed: int = 0

    COLUMNS = ("phase", "real units published", "verdicts", "p50 ms", "p95 ms", "p99 ms", "max ms", "late at gate",
               "missed at gate", "unaccounted", "passed without pass verdict", "real units dead-lettered",
               "malformed sent", "malformed dead-lettered", "malformed with a pass verdict", "malformed passed the gate")

    @staticmethod
    def header() -> str:
        return md_header(Phase.COLUMNS)

    def line(self) -> str:
        return md_row((self.name, self.published, self.verdicts, f"{self.p50:.0f}", f"{self.p95:.0f}", f"{self.p99:.0f}",
                       f"{self.max:.0f}", self.late, self.missed, self.unaccounted, self.passed_no_verdict,
                       self.dead_lettered_real, self.malformed_sent, self.malformed_dead, self.malformed_pass,
                       self.malformed_gate_passed))


def measure(client: ClickHouseClient, db: str, phase: Phase) -> None:
    """The real lot's verdict latency and gate reconciliation."""
    q = {"lot": phase.lot}
    n, p50, p95, p99, mx = client.query(
        f"""SELECT count(), quantileExact(0.5)(latency_ms), quantileExact(0.95)(latency_ms),
                   quantileExact(0.99)(latency_ms), max(latency_ms)
            FROM {db}.inspections FINAL WHERE lot = {{lot:String}}""", q).rows[0]
    phase.verdicts = int(n)
    phase.p50, phase.p95, phase.p99, phase.max = (float(x) if n else float("nan") for x in (p50, p95, p99, mx))
    rec = build_reconciliation(client, db, phase.lot)
    phase.late = rec.total("failsafe_late")
    phase.missed = rec.total("missed")
    phase.unaccounted = rec.total("unaccounted") + max(0, phase.published - rec.total("captured"))
    phase.passed_no_verdict = rec.total("passed_without_pass_verdict")
    phase.dead_lettered_real = int(client.query(
        f"SELECT count() FROM {db}.dead_letters FINAL WHERE lot = {{lot:String}}", q).rows[0][0])


def malformed_outcome(client: ClickHouseClient, settings: Settings, junk_lot: str, real_lots: list[str],
                      since_ns: int) -> tuple[int, int, int, list[tuple[str, str, int]]]:
    """(dead-lettered by the worker, with a pass verdict, passed at the gate, top reasons) of the flood's frames:
    every frames-topic dead letter since the flood began that is not a real unit's."""
    db = settings.clickhouse.database
    p = {"src": settings.kafka.topic_frames + ":%", "since": since_ns, "real": real_lots, "junk": junk_lot}
    where = f"""FROM {db}.dead_letters FINAL WHERE source LIKE {{src:String}}
                AND dead_time >= fromUnixTimestamp64Nano({{since:Int64}}, 'UTC') AND lot NOT IN {{real:Array(String)}}"""
    dead = int(client.query(f"SELECT count() {where}", p).rows[0][0])
    reasons = [(str(s), str(r), int(c)) for s, r, c in client.query(
        f"""SELECT stage, replaceRegexpAll(substring(reason, 1, 60), '[0-9]+', 'N') AS r, count() AS c {where}
            GROUP BY stage, r ORDER BY c DESC LIMIT 40""", p).rows]
    passed = int(client.query(
        f"""SELECT count() FROM {db}.inspections FINAL
            WHERE verdict = 'pass' AND (lot = {{junk:String}} OR unit_id LIKE concat({{junk:String}}, '%')
                                        OR unit_id LIKE 'invalid-%')""", p).rows[0][0])
    gate = build_reconciliation(client, db, junk_lot).total("inspected_passed")
    return dead, passed, gate, reasons


def wait_stable(probe: Callable[[], int], target: int, quiet_s: float, deadline: float) -> int:
    """Poll until `probe` reaches `target` or stops changing for `quiet_s` (or the deadline)."""
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = probe()
        if now >= target:
            return now
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
        time.sleep(1.0)
    return last


def run_phase(name: str, resolved: Settings, client: ClickHouseClient, frames: list[bytes], rate: float,
              seconds: float) -> Phase:
    phase = Phase(name, f"{name.upper()}-{uuid.uuid4().hex[:6]}")
    phase.published, held = publish_lot(resolved, frames, rate, seconds, phase.lot)
    print(f"[{name}] lot {phase.lot}: {phase.published} units at {held:.1f}/s", flush=True)
    travel_s = max(t.camera_to_gate_mm / t.conveyor_speed_mm_s for t in resolved.lines.values())
    time.sleep(travel_s)  # the last unit reaches the gate
    settle(client, resolved.clickhouse.database, phase.lot, quiet_s=6.0, deadline=time.monotonic() + 180)
    measure(client, resolved.clickhouse.database, phase)
    return phase


def crashes(services: Services, pids: dict[str, int | None]) -> tuple[int, list[str]]:
    """Service outages the supervisor saw, plus managed processes whose pid changed or that are gone."""
    sup = services.supervisor
    assert sup is not None
    seen = [f"{c.service} down: {c.reason}" for c in sup.history if not c.up]
    now = {p.name: p.pid for p in live_processes() if p.alive}
    changed = [f"{name} pid {pid} -> {now.get(name)}" for name, pid in pids.items() if now.get(name) != pid]
    return len(seen) + len(changed), seen + changed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=20.0, help="the real line, units/s")
    ap.add_argument("--quiet-s", type=float, default=30.0, help="line time of the quiet phase")
    ap.add_argument("--line-s", type=float, default=None,
                    help="line time of the flood phase (default: as long as the flood, --malformed / --malformed-rate)")
    ap.add_argument("--malformed", type=int, default=10_000)
    ap.add_argument("--malformed-rate", type=float, default=100.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-kinds", default="", help="comma-separated parts of kind names not to send")
    ap.add_argument("--deadline-s", type=float, default=1500.0, help="the benchmark stops by itself after this")
    # bench_settings' arguments: the default line (500 mm at 250 mm/s), the tiny contract model
    ap.add_argument("--speed-mm-s", type=float, default=250.0)
    ap.add_argument("--distance-mm", type=float, default=500.0)
    ap.add_argument("--real-model", action="store_true")
    args = ap.parse_args()
    flood_s = args.line_s if args.line_s is not None else args.malformed / args.malformed_rate

    def past_deadline() -> None:
        print("flood: deadline passed", flush=True)
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(args.deadline_s, past_deadline)
    timer.daemon = True
    timer.start()
    phases: list[Phase] = []
    sent: Counter[str] = Counter()
    stop = threading.Event()
    crash_count, crash_notes = -1, ["not measured"]
    reasons: list[tuple[str, str, int]] = []
    with tempfile.TemporaryDirectory(prefix="linesight-flood-") as tmp:
        settings = stack_settings(args, Path(tmp), args.workers)
        sim = settings.simulator
        frames = line_frames(settings)
        started = time.monotonic()
        try:
            with pipeline_stack(settings, workers=args.workers) as (resolved, client, services):
                pids = {p.name: p.pid for p in live_processes() if p.alive}
                print(f"flood: stack up in {time.monotonic() - started:.0f} s ({', '.join(sorted(pids))}); "
                      f"{args.workers} workers", flush=True)
                publish_lot(resolved, frames, 5.0, 3.0, f"WARMUP-{uuid.uuid4().hex[:6]}")  # first requests, joins
                time.sleep(5.0)
                phases.append(run_phase("quiet", resolved, client, frames, args.rate, args.quiet_s))
                print(Phase.header() + "\n" + phases[-1].line(), flush=True)

                hostile = Hostile(sim.line, sim.camera, sim.product, f"JUNK-{uuid.uuid4().hex[:6]}", frames[0])
                flood_start = now_ns() - NS_PER_S
                flooder = threading.Thread(target=flood, name="flood", daemon=True, args=(
                    resolved, hostile, args.malformed, args.malformed_rate, sent, stop,
                    tuple(k.strip() for k in args.skip_kinds.split(",") if k.strip())))
                flooder.start()
                phase = run_phase("flood", resolved, client, frames, args.rate, flood_s)
                flooder.join()
                phase.malformed_sent = sum(sent.values())
                db = resolved.clickhouse.database
                real = [p.lot for p in [*phases, phase]]
                wait_stable(lambda: malformed_outcome(client, resolved, hostile.lot, real, flood_start)[0],
                            phase.malformed_sent, quiet_s=15.0, deadline=time.monotonic() + 300)
                settle(client, db, hostile.lot, quiet_s=6.0, deadline=time.monotonic() + 60)
                measure(client, db, phase)
                phase.malformed_dead, phase.malformed_pass, phase.malformed_gate_passed, reasons = malformed_outcome(
                    client, resolved, hostile.lot, real, flood_start)
                phases.append(phase)
                crash_count, crash_notes = crashes(services, pids)
        except KeyboardInterrupt:
            stop.set()
            print("flood: interrupted; figures so far below", flush=True)
    print("\nmalformed frames sent, by kind: " + ", ".join(f"{k} {v}" for k, v in sent.items()))
    if reasons:
        print("dead-letter reasons (stage: reason, digits as N): " + "; ".join(f"{s}: {r} x{c}" for s, r, c in reasons))
    print("\n" + Phase.header())
    for p in phases:
        print(p.line())
    failures: list[str] = []
    if len(phases) < 2:
        failures.append("the run did not finish")
    quiet = phases[0] if phases else None
    loud = phases[1] if len(phases) > 1 else None
    ratio = loud.p99 / quiet.p99 if quiet and loud and quiet.p99 > 0 else float("nan")
    ok = ratio <= MAX_P99_RATIO
    print(f"\np99 capture->verdict flood/quiet: {ratio:.2f} (target <= {MAX_P99_RATIO:g}): {'PASS' if ok else 'FAIL'}")
    if not ok:
        failures.append(f"p99 ratio {ratio:.2f}")
    print(f"crashes (supervisor outages + changed pids): {crash_count}: {'PASS' if crash_count == 0 else 'FAIL'}"
          + (f" ({'; '.join(crash_notes)})" if crash_count else ""))
    if crash_count != 0:
        failures.append(f"crashes {crash_count}")
    for p in phases:
        if p.unaccounted or p.passed_no_verdict or p.verdicts < p.published:
            failures.append(f"{p.name}: unaccounted {p.unaccounted}, passed without pass verdict {p.passed_no_verdict}, "
                            f"verdicts {p.verdicts} of {p.published}")
    if loud is not None:
        if loud.malformed_dead < loud.malformed_sent or loud.malformed_sent < args.malformed:
            failures.append(f"malformed dead-lettered {loud.malformed_dead} of {loud.malformed_sent} sent "
                            f"({args.malformed} asked)")
        if loud.malformed_pass or loud.malformed_gate_passed:
            failures.append(f"malformed frames with a pass verdict {loud.malformed_pass}, passed at the gate "
                            f"{loud.malformed_gate_passed}")
    print("flood: " + ("every target met" if not failures else "FAILED: " + "; ".join(failures)), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
