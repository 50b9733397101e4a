"""Requests spread over several Triton replicas, failing over when one goes away.

Why in the worker and not only behind a load balancer: on a line host the replicas are often two
tritonservers (one per GPU, or a spare) with nothing in front of them, and a worker that keeps
sending to a dead one would fail-safe reject every unit routed there. Each call goes to the next
replica in turn; a replica that cannot be reached (gRPC UNAVAILABLE, or the deadline passed) is
skipped for `down_s` and the call goes on to the others; one that answers it has no such model
(a replica shutting down unloads its models first) is asked no more for that call. Only when
every replica failed does the last error reach the caller, whose units then fail safe as
before. A single URL behaves exactly as one client did.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from tritonclient.utils import InferenceServerException

log = logging.getLogger(__name__)

C = TypeVar("C")
R = TypeVar("R")

# gRPC statuses that say the replica itself is gone or stuck, not that the request was wrong.
UNREACHABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")
# Messages Triton answers with while it shuts down or has not loaded its models yet.
NOT_SERVING = ("server is not ready", "server not ready", "shutting down", "failed to connect")
# A model this replica does not serve (now): a replica shutting down unloads its models first,
# one being deployed to may lag. Another replica may serve it; when none does, the caller gets
# this error as from a single Triton (an unknown product fails safe).
MODEL_MISSING = ("unknown model", "no available versions", "is not ready", "not found")


def unreachable(exc: BaseException) -> bool:
    """True when `exc` says the replica cannot serve (another one may), not that the request failed."""
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "").upper()
        message = str(exc.message() or "").lower()
        return any(s in status for s in UNREACHABLE) or any(m in message for m in NOT_SERVING)
    return isinstance(exc, (ConnectionError, TimeoutError))


def model_missing(exc: BaseException) -> bool:
    """True when this replica does not serve the model now (another one may)."""
    if isinstance(exc, InferenceServerException):
        text = f"{exc.status() or ''} {exc.message() or ''}".lower()
        return "not_found" in text or any(m in text for m in MODEL_MISSING)
    return False


@dataclass
class Replica(Generic[C]):
    url: str
    client: C
    down_until: float = 0.0


class Replicas(Generic[C]):
    """Clients of every replica; `call` tries them in turn, healthy ones first."""

    def __init__(self, urls: list[str], connect: Callable[[str], C], down_s: float = 5.0) -> None:
        if not urls:
            raise RuntimeError("Triton URL is not resolved (start the embedded stack first)")
        self._replicas = [Replica(url, connect(url)) for url in urls]
        self._next = 0
        self._down_s = down_s

    @property
    def clients(self) -> list[C]:
        return [r.client for r in self._replicas]

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self._replicas]

    def _order(self) -> list[Replica[C]]:
        """Round robin from the next replica; those marked down go last (tried when all are)."""
        n = len(self._replicas)
        start, self._next = self._next, (self._next + 1) % n
        turn = [self._replicas[(start + i) % n] for i in range(n)]
        now = time.monotonic()
        return [r for r in turn if r.down_until <= now] + [r for r in turn if r.down_until > now]

    async def call(self, request: Callable[[C], Awaitable[R]]) -> R:
        """`request` on one replica; on an unreachable replica, on the next; raises the last error."""
        error: BaseException | None = None
        for replica in self._order():
            try:
                result = await request(replica.client)
            except Exception as exc:
                if unreachable(exc):
                    if replica.down_until <= time.monotonic():
                        log.warning("Triton replica %s unreachable (%s); trying the others", replica.url, exc)
                    replica.down_until = time.monotonic() + self._down_s
                elif not (model_missing(exc) and len(self._replicas) > 1):
                    raise
                error = exc
                continue
            replica.down_until = 0.0
            return result
        assert error is not None
        raise error
