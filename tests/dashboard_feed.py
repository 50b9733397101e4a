"""A simulated line feeding an `AlertEngine` directly (no broker, no Triton): rendered frames and
verdicts from the rendered truth, with a defect burst and a stop on demand. Used by the dashboard
tests; the engine is the same object the alert service feeds from Kafka in the stack."""

from __future__ import annotations

import threading

import numpy as np

from pipeline.alerts.engine import AlertEngine
from pipeline.core.times import now_ns
from pipeline.imaging.tablets import sample_unit
from pipeline.wire.codec import encode_png
from pipeline.wire.messages import FrameMeta, Heartbeat, InspectionResult

PRODUCT = "tablet-round-white-10mm"


class SimulatedFeed:
    def __init__(self, engine: AlertEngine, line: str = "line-1", rate_per_s: float = 10.0,
                 defect_rate: float = 0.1, seed: int = 5) -> None:
        self.engine, self.line, self.interval = engine, line, 1.0 / rate_per_s
        self.defect_rate = defect_rate
        self.rng = np.random.default_rng(seed)
        self.burst = 0
        self.paused = False  # a line that stops sending frames (the engine keeps ticking)
        self.seq = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="feed", daemon=True)

    def start(self) -> SimulatedFeed:
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def inject_burst(self, units: int) -> None:
        self.burst = units

    def one(self) -> None:
        forced = self.burst > 0
        image, defect = sample_unit(self.rng, PRODUCT, 1.0 if forced else self.defect_rate)
        self.burst = max(0, self.burst - 1)
        unit = f"lot-{self.line}-{self.seq:06d}"
        self.seq += 1
        t = now_ns()
        self.engine.on_frame(FrameMeta(unit, self.line, "cam-1", PRODUCT, t), encode_png(image), t)
        verdict = "reject" if defect else "pass"
        score = float(self.rng.uniform(0.6, 0.99) if defect else self.rng.uniform(0.0, 0.3))
        self.engine.on_result(InspectionResult(
            unit, self.line, "cam-1", PRODUCT, "lot", verdict, "model", True, defect or "none",  # type: ignore[arg-type]
            score, 0.5, "tablet_classifier", "7", t, t, now_ns(), "worker-0"), now_ns())
        if self.seq % 5 == 0:
            self.engine.on_heartbeat(Heartbeat("worker-0", "worker", now_ns(), True), now_ns())

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            if not self.paused:
                self.one()
            self.engine.tick(now_ns())
