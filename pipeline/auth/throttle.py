"""Bounds on guessing and on the audit records it causes: log-in lockout and refusal windows.

Why: without them a password can be guessed at the speed of argon2, and a flood of forged session
cookies writes a flood of audit records. Every attempt stays audited, but repeated refusals of one
source become one record with their count.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Clock = Callable[[], float]  # seconds, monotonic

# Past this many tracked keys, the ones with nothing left to remember are dropped (memory bound
# under a flood of invented user names).
_PRUNE_ABOVE = 1024

K = TypeVar("K", bound=Hashable)


@dataclass
class Lockout:
    """After ``max_failures`` failed log-ins of one key within ``window_s``, the key is refused for
    ``lockout_s`` without its password being checked. Any key locks, existing user or not, so a
    lockout says nothing about which user names exist. ``max_failures`` 0 disables it."""

    max_failures: int
    window_s: float
    lockout_s: float
    clock: Clock = time.monotonic
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _locked_until: dict[str, float] = field(default_factory=dict)

    def remaining_s(self, key: str) -> float:
        """Seconds ``key`` stays locked (0: not locked)."""
        until = self._locked_until.get(key)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            del self._locked_until[key]
            return 0.0
        return left

    def failed(self, key: str) -> bool:
        """Count a failure of ``key``; True when it starts a lockout."""
        if self.max_failures <= 0:
            return False
        now = self.clock()
        if len(self._failures) > _PRUNE_ABOVE:
            self._prune(now)
        recent = self._failures.setdefault(key, deque())
        recent.append(now)
        while recent and recent[0] <= now - self.window_s:
            recent.popleft()
        if len(recent) < self.max_failures:
            return False
        del self._failures[key]
        self._locked_until[key] = now + self.lockout_s
        return True

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)

    def _prune(self, now: float) -> None:
        for key in [k for k, ts in self._failures.items() if not ts or ts[-1] <= now - self.window_s]:
            del self._failures[key]
        for key in [k for k, until in self._locked_until.items() if until <= now]:
            del self._locked_until[key]


@dataclass
class RefusalWindows(Generic[K]):
    """At most one audit record per key and window, plus one with the count of the rest.

    The first refusal of a key opens a window and is recorded at once (`admit` returns True);
    later ones in that window are only counted. `due` returns the counts of windows that have
    closed, for one summary record each."""

    window_s: float
    clock: Clock = time.monotonic
    _open: dict[K, list[float]] = field(default_factory=dict)  # key -> [window start, refusals counted]
    _closed: list[tuple[K, int]] = field(default_factory=list)

    def admit(self, key: K) -> bool:
        """True: record this refusal now; False: it was counted for the window's summary."""
        now = self.clock()
        window = self._open.get(key)
        if window is not None and now - window[0] < self.window_s:
            window[1] += 1
            return False
        if window is not None and window[1]:
            self._closed.append((key, int(window[1])))
        self._open[key] = [now, 0]
        return True

    def due(self) -> list[tuple[K, int]]:
        """(key, refusals not yet recorded) of every closed window with any; those windows end."""
        now = self.clock()
        ended = [k for k, (start, _) in self._open.items() if now - start >= self.window_s]
        closed = self._closed + [(k, int(n)) for k in ended if (n := self._open.pop(k)[1]) > 0]
        self._closed = []
        return closed
