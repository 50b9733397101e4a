"""The embedded stack's supervisor: a service that died is reported down, restarted with
exponential backoff (bounded), and reported back up; a stop is not a crash.

Real short-lived child processes, probed with deadlines (no fixed sleeps).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from support import eventually

from pipeline.embedded.process import ManagedProcess, ServiceChange, Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_backoff_doubles_from_the_initial_wait_up_to_the_bound() -> None:
    sup = Supervisor(initial_backoff_s=0.5, max_backoff_s=4.0)
    assert [sup.backoff_s(n) for n in range(7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


@pytest.mark.timeout(60)
def test_a_killed_child_is_reported_down_restarted_and_reported_back(tmp_path: Path) -> None:
    changes: list[ServiceChange] = []
    procs = [ManagedProcess("sleeper", SLEEPER, None, tmp_path / "sleeper.log")]
    procs[0].start()

    def restart() -> None:
        procs[-1].stop(1.0)
        fresh = ManagedProcess("sleeper", SLEEPER, None, tmp_path / "sleeper.log")
        fresh.start()
        procs.append(fresh)

    sup = Supervisor(changes.append, initial_backoff_s=0.05, poll_s=0.02)
    sup.watch("sleeper", lambda: procs[-1].alive, restart)
    try:
        first = procs[0].pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        eventually(lambda: [c.up for c in changes] == [False, True], 20, "down, then back up", 0.02)
        assert procs[-1].alive and procs[-1].pid != first
        assert sup.down == {} and sup.restarts == {"sleeper": 1}
        assert changes[0].reason == "its process exited" and changes[1].down_s >= 0
        # A second crash is handled the same way.
        second = procs[-1].pid
        assert second is not None
        os.kill(second, signal.SIGKILL)
        eventually(lambda: len(changes) == 4, 20, "second restart", 0.02)
        assert sup.restarts == {"sleeper": 2}
    finally:
        sup.stop()
        for proc in procs:
            proc.stop(1.0)
    # Stopping the service after the supervisor is not reported as a crash.
    assert len(changes) == 4


@pytest.mark.timeout(30)
def test_failed_restarts_back_off_and_the_supervisor_gives_up_with_the_alarm_standing() -> None:
    changes: list[ServiceChange] = []
    attempts: list[float] = []
    alive = threading.Event()

    def restart() -> None:
        attempts.append(time.monotonic())
        raise RuntimeError("port still busy")

    sup = Supervisor(changes.append, initial_backoff_s=0.05, max_backoff_s=0.2, max_attempts=5, poll_s=0.01)
    sup.watch("flaky", alive.is_set, restart)
    try:
        eventually(lambda: len(attempts) == 5, 10, "five attempts", 0.01)
        eventually(lambda: sup.watching == 0, 10, "supervision given up", 0.01)
    finally:
        sup.stop()
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    # waits 0.05, 0.1, 0.2, 0.2 (bounded) between the five attempts
    assert all(g >= w * 0.9 for g, w in zip(gaps, [0.05, 0.1, 0.2, 0.2], strict=True))
    assert [c.up for c in changes] == [False] and "flaky" in sup.down
