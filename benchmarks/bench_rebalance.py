"""Benchmark: what a line sees when a worker joins or leaves its consumer group (a rebalance).

    .venv/bin/python benchmarks/bench_rebalance.py [--rate 20] [--workers 2] [--partitions 3] [--gap 15]

A line runs at --rate units/s (tablets) for the whole run while --workers supervised workers
share the frames topic's --partitions partitions. Then, --gap seconds apart:
  1. join:  one more worker starts (the group rebalances to give it partitions); how long until
     it reports partitions assigned (or that it got none within --join-timeout s);
  2. leave: that worker is stopped with SIGTERM (a clean leave: it finishes and commits first);
  3. crash: supervised worker 1 is killed with SIGKILL (its partitions wait for the broker to
     notice, the group's session timeout `kafka.session_timeout_ms`; the supervisor starts a
     new worker in its place).
For each event: the pause (the worst capture->verdict of the units captured from 1 s before the
event to --gap s after it, against the run's median), and the units in that window fail-safe
rejected as late. For the whole run: every unit one verdict, reconciliation (none lost, none
passed without a verdict, every reject fired). Nothing here is a test; figures go to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass

from pipeline.analytics.run_report import build_report
from pipeline.clickhouse.client import ClickHouseClient
from pipeline.demo.run import pipeline_stack, wait_drained
from pipeline.demo.services import http_ready, start_worker
from pipeline.embedded.process import ManagedProcess, ServiceStartError
from pipeline.gateway.publisher import FramePublisher, run_simulated_line
from pipeline.settings import Settings


@dataclass(frozen=True)
class Event:
    name: str
    at_ns: int  # wall clock, as capture times are
    took: str  # join: until the new worker had partitions; leave/crash: until the process had exited


def _join(resolved: Settings, index: int, timeout_s: float) -> tuple[ManagedProcess, str]:
    """Start worker `index`; wait until it has partitions (or `timeout_s`): how long, in words."""
    t0 = time.monotonic()
    proc = start_worker(resolved, index)
    url = f"http://127.0.0.1:{resolved.stream.web_port + index}/readyz"
    try:
        proc.wait_ready(http_ready(url, proc.pid, "worker"), timeout_s)
    except ServiceStartError:
        return proc, f"no partitions within {timeout_s:.0f} s"
    return proc, f"assigned after {time.monotonic() - t0:.1f} s"


def window(client: ClickHouseClient, db: str, lot: str, start_ns: int, end_ns: int) -> dict[str, float]:
    """Units captured in [start, end): count, worst and p99 capture->verdict, fail-safe late."""
    row = client.query(
        f"""SELECT count() AS n, max(latency_ms) AS worst, quantileExact(0.99)(latency_ms) AS p99,
                   countIf(cause = 'failsafe') AS failsafe
            FROM {db}.inspections FINAL
            WHERE lot = {{lot:String}} AND capture_time >= fromUnixTimestamp64Nano({{a:Int64}})
                  AND capture_time < fromUnixTimestamp64Nano({{b:Int64}})""",
        {"lot": lot, "a": start_ns, "b": end_ns},
    ).named()[0]
    late = client.query(
        f"""SELECT count() FROM {db}.gate_events FINAL
            WHERE lot = {{lot:String}} AND cause = 'late' AND capture_time >= fromUnixTimestamp64Nano({{a:Int64}})
                  AND capture_time < fromUnixTimestamp64Nano({{b:Int64}})""",
        {"lot": lot, "a": start_ns, "b": end_ns},
    ).rows[0][0]
    return {"n": float(row["n"]), "worst_ms": float(row["worst"] or 0), "p99_ms": float(row["p99"] or 0),
            "failsafe": float(row["failsafe"]), "late": float(late)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--gap", type=float, default=15.0, help="seconds between events (and before the first)")
    parser.add_argument("--join-timeout", type=float, default=30.0, help="how long a joining worker may take")
    args = parser.parse_args()

    settings = Settings()
    settings = settings.model_copy(update={
        "kafka": settings.kafka.model_copy(update={"partitions": args.partitions}),
        "simulator": settings.simulator.model_copy(update={"rate_per_s": args.rate}),
    })
    print(f"line {args.rate:g} units/s, {args.workers} workers, {args.partitions} partitions, session timeout "
          f"{settings.kafka.session_timeout_ms} ms, events {args.gap:g} s apart", flush=True)
    with pipeline_stack(settings, args.workers) as (resolved, client, services):
        publisher = FramePublisher(resolved)
        lot = f"REBAL-{uuid.uuid4().hex[:8]}"
        line_stop = threading.Event()
        line = threading.Thread(target=run_simulated_line, args=(resolved, publisher, line_stop), kwargs={"lot": lot},
                                name="line", daemon=True)
        line.start()
        events: list[Event] = []

        def pause() -> None:
            services.stop_event.wait(args.gap)

        pause()
        now = time.time_ns()
        joined, took = _join(resolved, args.workers, args.join_timeout)
        events.append(Event("join (worker starts)", now, took))
        pause()
        now, t0 = time.time_ns(), time.monotonic()
        joined.stop(30.0)
        events.append(Event("leave (SIGTERM)", now, f"exited after {time.monotonic() - t0:.1f} s"))
        pause()
        victim = services.processes[1]  # a supervised worker: the supervisor starts another in its place
        now, t0 = time.time_ns(), time.monotonic()
        os.kill(victim.pid or 0, signal.SIGKILL)
        events.append(Event("crash (SIGKILL)", now, "killed"))
        pause()
        line_stop.set()
        line.join()
        publisher.close()
        published = publisher.stats.published
        db = resolved.clickhouse.database
        wait_drained(client, db, lot, published, services.stop_event, timeout_s=300)
        report = build_report(client, db, lot, positive_release=resolved.plc.positive_release)
        rows = [(e, window(client, db, lot, e.at_ns - 1_000_000_000, e.at_ns + int(args.gap * 1e9))) for e in events]

    print()
    print(f"units {published}; capture->verdict over the run p50 {report.latency_p50_ms:.0f} ms, "
          f"p99 {report.latency_p99_ms:.0f} ms, max {report.latency_max_ms:.0f} ms")
    print(f"{'event':<22} {'':<28} {'units':>6} {'worst ms':>9} {'p99 ms':>7} {'pause ms':>9} {'late':>5} {'fail-safe':>9}")
    for e, w in rows:
        print(f"{e.name:<22} {e.took:<28} {w['n']:6.0f} {w['worst_ms']:9.0f} {w['p99_ms']:7.0f} "
              f"{max(0.0, w['worst_ms'] - report.latency_p50_ms):9.0f} {w['late']:5.0f} {w['failsafe']:9.0f}")
    gate = report.gate
    print(f"every unit one verdict {report.every_unit_has_one_verdict} (missing {report.units_without_verdict}, "
          f"several {report.units_with_several_verdicts}); every unit accounted at the gate "
          f"{gate.every_unit_accounted if gate else '?'}; every reject fired {report.every_reject_fired}")
    if gate is not None:
        print("gate " + ", ".join(f"{k} {v}" for k, v in gate.as_dict()["totals"].items() if v))


if __name__ == "__main__":
    main()
