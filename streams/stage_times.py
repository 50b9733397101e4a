"""Where a worker's latency goes, kept for /healthz and the benchmark (docs/benchmarks.md).

Why: capture->verdict is one number in ClickHouse; tuning the broker's fetch wait, the batching
and Triton's queue delay needs it split. Per frame: broker -> worker (the frame's broker time to
its receipt: fetch wait and consumer queueing) and worker -> outputs confirmed, split into
worker -> decided (checks, Triton, verdict) and decided -> confirmed (publish, broker ack); per
batch: its size. The last `keep` samples of each.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class StageTimes:
    def __init__(self, keep: int = 20_000) -> None:
        self.fetch_ms: deque[float] = deque(maxlen=keep)
        self.batch_ms: deque[float] = deque(maxlen=keep)
        self.decide_ms: deque[float] = deque(maxlen=keep)
        self.publish_ms: deque[float] = deque(maxlen=keep)
        self.sizes: deque[int] = deque(maxlen=keep)

    def batch(self, received_ns: list[int], broker_ns: list[int | None], decided_ns: int, done_ns: int) -> None:
        """One batch: each frame's receipt and broker time, when the batch was decided and when
        its outputs were confirmed."""
        self.fetch_ms.extend((r - b) / 1e6 for r, b in zip(received_ns, broker_ns, strict=True) if b)
        self.batch_ms.extend((done_ns - r) / 1e6 for r in received_ns)
        self.decide_ms.extend((decided_ns - r) / 1e6 for r in received_ns)
        self.publish_ms.append((done_ns - decided_ns) / 1e6)
        self.sizes.append(len(received_ns))

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, values in (("broker_to_worker_ms", self.fetch_ms), ("worker_to_confirmed_ms", self.batch_ms),
                             ("worker_to_decided_ms", self.decide_ms), ("publish_to_confirmed_ms", self.publish_ms)):
            if values:
                p50, p99 = np.quantile(np.fromiter(values, float), [0.5, 0.99])
                out[f"{name}_p50"], out[f"{name}_p99"] = round(float(p50), 1), round(float(p99), 1)
        if self.sizes:
            out["batch_size_mean"] = round(float(np.mean(self.sizes)), 2)
        return out
