"""Child processes of the embedded stack: start, probe until ready, stop without orphans.

The embedded stack runs real servers (Tansu, tritonserver) as child processes. Each runs in its
own process group so that a stop reaches everything it spawned (Triton's python-backend stubs
included), and, where util-linux ``setpriv`` exists, with a parent-death signal so a crashed
LineSight process does not leave servers holding their ports. Readiness is always a probe polled
until a deadline, never a fixed sleep; a failure names the service, the reason and the log file.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 30
_POLL_MIN_S = 0.02
_POLL_MAX_S = 0.25
_GROUP_GRACE_S = 1.0

_live: set[ManagedProcess] = set()  # started and not yet stopped; stopped at interpreter exit
_live_lock = threading.Lock()


class ServiceStartError(RuntimeError):
    """A service did not start: which one, why, and where its log is."""

    def __init__(self, service: str, reason: str, log_path: Path | str | None = None) -> None:
        self.service = service
        self.reason = reason
        self.log_path = Path(log_path) if log_path is not None else None
        where = f" (log: {self.log_path})" if self.log_path is not None else ""
        super().__init__(f"{service} failed to start: {reason}{where}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free right now (for tests and ad-hoc stacks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could bind ``host:port`` (TIME_WAIT leftovers do not count as busy)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def ensure_port_free(
    port: int, service: str, host: str = "127.0.0.1", setting: str | None = None,
    log_path: Path | None = None,
) -> None:
    """Fail with a clear `ServiceStartError` when the configured port is already taken."""
    if port_is_free(port, host):
        return
    hint = f"; choose another port with {setting}" if setting else ""
    raise ServiceStartError(
        service,
        f"port {host}:{port} is already in use (another LineSight stack or another program?){hint}",
        log_path,
    )


def tail_lines(
    path: Path,
    lines: int = LOG_TAIL_LINES,
    max_bytes: int = 256 * 1024,
    start_offset: int = 0,
    keep: Callable[[str], bool] | None = None,
) -> str:
    """The last ``lines`` lines (after ``start_offset``, passing ``keep``) of a log file."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(start_offset, size - max_bytes))
            data = fh.read()
    except OSError:
        return ""
    selected = [ln for ln in data.decode("utf-8", "replace").splitlines() if keep is None or keep(ln)]
    return "\n".join(selected[-lines:])


def _pdeathsig_prefix() -> list[str]:
    """``setpriv --pdeathsig TERM --`` when available: the child gets SIGTERM if we die.

    Linux delivers the parent-death signal when the *thread* that forked the child exits, so it
    is only used from the main thread: a server started from a worker thread would otherwise die
    with that thread. Without it, the atexit hook and `stop` still clean up.
    """
    if threading.current_thread() is not threading.main_thread():
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


class ManagedProcess:
    """One server process in its own process group, logging to one file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None,
        log_path: Path | str,
        cwd: Path | str | None = None,
        log_filter: Callable[[str], bool] | None = None,
    ) -> None:
        """``log_filter`` picks the log lines worth quoting in a failure (default: all)."""
        self.name = name
        self.argv = [str(a) for a in argv]
        self.env = dict(env) if env is not None else None
        self.log_path = Path(log_path)
        self.cwd = Path(cwd) if cwd is not None else None
        self.log_filter = log_filter
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.started_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError(f"{self.name} was already started (pid {self._proc.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = _pdeathsig_prefix() + self.argv
        log.debug("starting %s: %s", self.name, " ".join(argv))
        with open(self.log_path, "ab") as logf:
            self._log_offset = logf.tell()
            logf.write(f"---- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {self.name}: "
                       f"{' '.join(self.argv)}\n".encode())
            logf.flush()
            try:
                self._proc = subprocess.Popen(
                    argv,
                    env=self.env,
                    cwd=self.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    process_group=0,
                )
            except OSError as exc:
                raise ServiceStartError(self.name, f"cannot execute {self.argv[0]}: {exc}",
                                        self.log_path) from exc
        self.started_at = time.monotonic()
        with _live_lock:
            _live.add(self)

    def wait_ready(self, probe: Callable[[], bool], timeout_s: float) -> float:
        """Poll ``probe`` until it returns True; return the seconds since start.

        Probe exceptions count as "not ready yet". Fails fast, with the log's last lines, when
        the process exits; fails with the last probe error when the deadline passes.
        """
        if self._proc is None:
            raise RuntimeError(f"{self.name} was not started")
        deadline = time.monotonic() + timeout_s
        interval = _POLL_MIN_S
        last_error = ""
        while True:
            rc = self._proc.poll()
            if rc is not None:
                raise self._failure(f"exited with code {rc} before it was ready")
            try:
                if probe():
                    return time.monotonic() - (self.started_at or deadline - timeout_s)
                last_error = "probe reported not ready"
            except Exception as exc:  # noqa: BLE001 - any probe failure means "not yet"
                last_error = f"{type(exc).__name__}: {exc}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._failure(f"not ready after {timeout_s:.0f} s (last probe: {last_error})")
            try:
                # Doubles as the poll interval and an early wake-up when the process dies.
                self._proc.wait(timeout=min(interval, remaining))
            except subprocess.TimeoutExpired:
                pass
            interval = min(interval * 1.5, _POLL_MAX_S)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last log lines of this run (filtered by ``log_filter``)."""
        return tail_lines(self.log_path, lines, start_offset=self._log_offset, keep=self.log_filter)

    def _failure(self, reason: str) -> ServiceStartError:
        tail = self.log_tail()
        if tail:
            reason = f"{reason}; last log lines:\n{tail}"
        return ServiceStartError(self.name, reason, self.log_path)

    def stop(self, timeout_s: float = 10.0, kill_expected: bool = False) -> int | None:
        """SIGTERM the process group, wait up to ``timeout_s``, then SIGKILL; return the exit code.

        ``kill_expected``: the service has nothing to flush, so a kill is routine, not a warning.
        """
        proc = self._proc
        if proc is None:
            return None
        pgid = proc.pid  # process_group=0 made the child its own group leader
        if proc.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                level = logging.INFO if kill_expected else logging.WARNING
                log.log(level, "%s did not exit %.0f s after SIGTERM; killing it", self.name, timeout_s)
                _signal_group(pgid, signal.SIGKILL)
                proc.wait(timeout=10)
        # Children of the leader (e.g. backend stubs) get a short grace, then SIGKILL. The group id
        # cannot be reused while any member lives, so this reaches only our processes (barring a
        # new group taking the id after the whole group died, which a prompt stop makes unlikely).
        deadline = time.monotonic() + _GROUP_GRACE_S
        while _group_exists(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_exists(pgid):
            log.warning("%s left processes in group %d; killing them", self.name, pgid)
            _signal_group(pgid, signal.SIGKILL)
        with _live_lock:
            _live.discard(self)
        return proc.returncode

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, alive={self.alive})"


@dataclass(frozen=True)
class ServiceChange:
    """A supervised service went down (``up`` False) or is back (``up`` True), and why."""

    service: str
    up: bool
    reason: str
    at_ns: int
    down_s: float = 0.0


class Supervisor:
    """Restarts services that died, so a crash is an outage with an end, not the end of the line.

    Each watched service is probed (``alive``) every ``poll_s`` on its own thread; a dead one is
    reported (``on_change`` down), restarted (``restart`` must bring it back ready or raise) with
    exponential backoff from ``initial_backoff_s`` to ``max_backoff_s``, and reported back up.
    After ``max_attempts`` failed restarts in a row it gives up: the down report stands, so the
    alarm stays raised and the line stays fail-safe. A service that stays up ``stable_s`` earns
    back its first quick retry.
    """

    def __init__(
        self,
        on_change: Callable[[ServiceChange], None] | None = None,
        *,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        max_attempts: int = 10,
        stable_s: float = 30.0,
        poll_s: float = 0.2,
    ) -> None:
        self._on_change = on_change
        self.initial_backoff_s, self.max_backoff_s = initial_backoff_s, max_backoff_s
        self.max_attempts, self.stable_s, self.poll_s = max_attempts, stable_s, poll_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.down: dict[str, ServiceChange] = {}  # services down now (their down report)
        self.restarts: dict[str, int] = {}  # successful restarts per service
        self.history: list[ServiceChange] = []

    def backoff_s(self, failures: int) -> float:
        """The wait before restart attempt ``failures + 1`` (0 before the first)."""
        if failures <= 0:
            return 0.0
        return float(min(self.initial_backoff_s * 2 ** (failures - 1), self.max_backoff_s))

    def watch(self, service: str, alive: Callable[[], bool], restart: Callable[[], None]) -> None:
        """Supervise ``service`` from now on (it must be running)."""
        thread = threading.Thread(target=self._run, args=(service, alive, restart),
                                  name=f"supervise-{service}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def watch_process(self, proc: ManagedProcess, restart: Callable[[], None]) -> None:
        """Supervise a managed process: alive while its process runs."""
        self.watch(proc.name, lambda: proc.alive, restart)

    @property
    def watching(self) -> int:
        """How many services are still supervised (a given-up one is not)."""
        return sum(t.is_alive() for t in self._threads)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop supervising (call before stopping the services, so a stop is not a crash)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s)

    def _report(self, change: ServiceChange) -> None:
        with self._lock:
            if change.up:
                self.down.pop(change.service, None)
                self.restarts[change.service] = self.restarts.get(change.service, 0) + 1
            else:
                self.down[change.service] = change
            self.history.append(change)
        (log.warning if change.up else log.error)("%s %s: %s", change.service, "is back" if change.up else "is DOWN",
                                                   change.reason)
        if self._on_change is not None:
            try:
                self._on_change(change)
            except Exception:  # noqa: BLE001 - a broken alarm path must not stop supervision
                log.exception("service change callback failed")

    def _run(self, service: str, alive: Callable[[], bool], restart: Callable[[], None]) -> None:
        failures = 0
        up_since = time.monotonic()
        while not self._stop.wait(self.poll_s):
            try:
                ok = alive()
            except Exception as exc:  # noqa: BLE001 - a probe that raises reports "down"
                ok, why = False, f"{type(exc).__name__}: {exc}"
            else:
                why = "its process exited"
            if ok:
                if failures and time.monotonic() - up_since >= self.stable_s:
                    failures = 0
                continue
            went_down, down_ns = time.monotonic(), time.time_ns()
            self._report(ServiceChange(service, False, why, down_ns))
            while not self._stop.is_set():
                if failures >= self.max_attempts:
                    log.error("%s: giving up after %d failed restarts; the alarm stays raised", service, failures)
                    return
                if self._stop.wait(self.backoff_s(failures)):
                    return
                try:
                    restart()
                except Exception as exc:  # noqa: BLE001 - counted; retried with backoff
                    failures += 1
                    log.error("%s: restart %d failed: %s", service, failures, exc)
                    continue
                failures += 1  # a quick relapse backs off further; `stable_s` up resets it
                up_since = time.monotonic()
                down_s = up_since - went_down
                self._report(ServiceChange(service, True, f"restarted after {down_s:.1f} s", time.time_ns(), down_s))
                break


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_exists(pgid: int) -> bool:
    """Whether a live (non-zombie) process is still in the group.

    Zombies are skipped: an orphan's zombie waits for whatever reaps orphans (PID 1 in a
    container may be slow to), and it holds no port or memory.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def live_processes() -> list[ManagedProcess]:
    """The managed processes started and not stopped (fault injection finds its targets here)."""
    with _live_lock:
        return list(_live)


@atexit.register
def _stop_all_at_exit() -> None:
    """Last resort on interpreter exit: no server outlives the process that started it."""
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        try:
            proc.stop(timeout_s=5)
        except Exception:  # noqa: BLE001 - best effort during shutdown
            log.exception("stopping %s at exit failed", proc.name)
