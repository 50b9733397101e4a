"""CPU seconds of a benchmark process and everything it started, by process name, from /proc.

Why: on a 2-core host a pipeline's throughput is its CPU share; the benchmarks print where the
CPU went (Triton's stubs, the worker, the broker, ...) beside their rates.
"""

from __future__ import annotations

import os


def process_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of this process and every descendant, by pid, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        name = " ".join(os.path.basename(a) for a in argv[:4]) or stat[stat.find("(") + 1 : stat.rfind(")")]
        procs[int(entry)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / tick)
    mine = {os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _, _) in procs.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                grew = True
    return {pid: (procs[pid][1], procs[pid][2]) for pid in mine if pid in procs}


def cpu_between(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent between two `process_cpu` samples, summed by process name."""
    out: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        out[name] = out.get(name, 0.0) + cpu - before.get(pid, (name, 0.0))[1]
    return {k: v for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v >= 0.05}
