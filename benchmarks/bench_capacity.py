"""Benchmark: the highest sustainable rate of each product kind, and how many lines one host holds.

    .venv/bin/python benchmarks/bench_capacity.py                          # tablet, vial, blister, label
    .venv/bin/python benchmarks/bench_capacity.py --kinds tablet --seconds 30
    .venv/bin/python benchmarks/bench_capacity.py --plant 10 --line-rate 10 --seconds 600   # a plant: N lines, mixed
    .venv/bin/python benchmarks/bench_capacity.py --plant-search 10 --line-rate 10          # how many such lines hold

A rate is *sustainable* when a run of --seconds at it (units published on a fixed schedule, one
lot per line) ends with: every unit one verdict and accounted for at the gate (reconciliation
OK), no unit fail-safe rejected as late, the publisher keeping the schedule, and no growing
backlog (the slowest tenth of the last third of the run no later than 1.5 x that of the first
third + 50 ms). Each kind's search starts at --start units/s, multiplies by 1.5 while the rate
holds, then halves the gap between the last rate held and the first that failed --refine times.

An embedded stack (Tansu, Triton, chDB, one worker unless --workers, the actuator with the
simulated PLC) is started afresh for each kind's search and each plant-search trial: the
embedded broker keeps every frame in memory and its CPU per fetch grows with what it holds.
Each kind's line runs its recipe. Units are rendered before
a trial (a pool of up to --pool distinct units per line, cycled), so the benchmark's own
rendering does not compete with the pipeline. Nothing here is a test; figures go to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import heapq
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cpu import cpu_between, process_cpu  # noqa: E402
from pipeline.analytics.run_report import RunReport, build_report  # noqa: E402
from pipeline.clickhouse.client import ClickHouseClient  # noqa: E402
from pipeline.core.times import now_ns  # noqa: E402
from pipeline.demo.run import DrainTimeout, pipeline_stack, wait_drained  # noqa: E402
from pipeline.gateway.publisher import FramePublisher  # noqa: E402
from pipeline.imaging.catalog import sample_product  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.settings.actuation import LineTimingSettings  # noqa: E402
from pipeline.wire.codec import encode_png  # noqa: E402
from pipeline.wire.messages import FrameMeta, GroundTruth  # noqa: E402

# kind -> the recipe (recipes/<id>.toml) its line runs; the recipe names the product.
KIND_RECIPES = {
    "tablet": "tablet-round-white-10mm",
    "vial": "vial-2r-clear-5ml",
    "blister": "blister-2x5-round-white",
    "label": "carton-label-gs1",
}
GROWTH_FACTOR, GROWTH_SLACK_MS = 1.5, 50.0
SCHEDULE_KEPT = 0.97  # the publisher must reach this share of the asked rate


@dataclass(frozen=True)
class LinePlan:
    line: str
    kind: str
    rate: float  # units/s


@dataclass(frozen=True)
class LineOutcome:
    plan: LinePlan
    lot: str
    published: int
    achieved: float  # units/s the publisher kept
    report: RunReport
    first_p90_ms: float
    last_p90_ms: float

    @property
    def late(self) -> int:
        return self.report.gate.total("failsafe_late") if self.report.gate else -1

    @property
    def failures(self) -> list[str]:
        r, why = self.report, []
        if r.gate is None or not r.gate.every_unit_accounted:
            why.append(f"reconciliation not OK ({r.gate.total('unaccounted') if r.gate else '?'} unaccounted)")
        if not r.every_unit_has_one_verdict:
            why.append(f"verdicts: missing {r.units_without_verdict}, several {r.units_with_several_verdicts}")
        if self.late:
            why.append(f"{self.late} late")
        if self.achieved < SCHEDULE_KEPT * self.plan.rate:
            why.append(f"publisher kept {self.achieved:.1f} of {self.plan.rate:g} units/s")
        if self.last_p90_ms > GROWTH_FACTOR * self.first_p90_ms + GROWTH_SLACK_MS:
            why.append(f"backlog growing (p90 {self.first_p90_ms:.0f} -> {self.last_p90_ms:.0f} ms)")
        return why

    def line_text(self) -> str:
        r = self.report
        gate = r.gate.total("failsafe_other") if r.gate else 0
        status = "held" if not self.failures else "FAILED: " + "; ".join(self.failures)
        return (f"  {self.plan.line:<10} {self.plan.kind:<8} {self.plan.rate:6.1f} units/s  published {self.published:5d}  "
                f"p50 {r.latency_p50_ms:5.0f} ms  p99 {r.latency_p99_ms:6.0f} ms  late {self.late}  "
                f"other fail-safe {gate}  dead letters {r.dead_lettered}  {status}")


def line_settings(settings: Settings, lines: list[str], kinds: dict[str, str]) -> Settings:
    """Every benchmark line with the default timing (2 s camera to gate) and its kind's recipe."""
    timing = settings.lines.get("line-1", LineTimingSettings())
    stream = settings.stream.model_copy(
        update={"line_recipes": settings.stream.line_recipes | {line: KIND_RECIPES[kinds[line]] for line in lines}})
    return settings.model_copy(update={"lines": {line: timing for line in lines}, "stream": stream})


def render_pool(kind: str, lot: str, n: int, seed: int) -> list[tuple[bytes, str | None, str]]:
    """`n` distinct units of the kind's product for `lot` (labels print the lot): PNG, defect, flag."""
    rng = np.random.default_rng(seed)
    today = datetime.now(UTC).date()
    product = KIND_RECIPES[kind]
    out = []
    for seq in range(n):
        made = sample_product(rng, product, 0.15, lot, seq, today)
        out.append((encode_png(made.image), made.defect, made.flag))
    return out


def latency_thirds(client: ClickHouseClient, db: str, lot: str) -> tuple[float, float]:
    """p90 capture->verdict of the first and the last third of the lot (by capture time)."""
    row = client.query(
        f"""WITH (SELECT (min(toUnixTimestamp64Micro(capture_time)), max(toUnixTimestamp64Micro(capture_time)))
                  FROM {db}.inspections FINAL WHERE lot = {{lot:String}}) AS span,
                 toUnixTimestamp64Micro(capture_time) AS t
            SELECT quantileExactIf(0.9)(latency_ms, t <= span.1 + (span.2 - span.1) / 3) AS first,
                   quantileExactIf(0.9)(latency_ms, t >= span.2 - (span.2 - span.1) / 3) AS last
            FROM {db}.inspections FINAL WHERE lot = {{lot:String}}""",
        {"lot": lot},
    ).rows[0]
    return float(row[0] or 0.0), float(row[1] or 0.0)


def run_trial(resolved: Settings, client: ClickHouseClient, stop_event, plans: list[LinePlan], seconds: float,
              pool: int, trial: int) -> tuple[list[LineOutcome], dict[str, float]]:
    """Every line of `plans` at its rate for `seconds`, together; each line's outcome."""
    lots = {p.line: f"C{trial:03d}{i:02d}-{uuid.uuid4().hex[:6]}" for i, p in enumerate(plans)}
    pools = {p.line: render_pool(p.kind, lots[p.line], min(pool, max(1, int(p.rate * seconds))), trial * 100 + i)
             for i, p in enumerate(plans)}
    counts = {p.line: int(p.rate * seconds) for p in plans}
    publisher = FramePublisher(resolved)
    cpu0 = process_cpu()
    t0 = time.monotonic()
    # (due time, line index, sequence): every line on its own fixed schedule, phases spread.
    queue = [(t0 + i / (len(plans) * p.rate), i, 0) for i, p in enumerate(plans)]
    heapq.heapify(queue)
    last_at: dict[str, float] = {}
    while queue:
        due, i, seq = heapq.heappop(queue)
        plan = plans[i]
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        image, defect, flag = pools[plan.line][seq % len(pools[plan.line])]
        lot = lots[plan.line]
        capture = now_ns()
        unit = f"{lot}-{seq:07d}"
        product = KIND_RECIPES[plan.kind]
        meta = FrameMeta(unit, plan.line, "cam-1", product, capture, "image/png", lot)
        label: Literal["good", "defect"] = "defect" if defect else "good"
        publisher.publish(meta, image, GroundTruth(unit, plan.line, lot, product, label, defect or "none", capture,
                                                   source=f"simulator:{flag}" if flag else "simulator"))
        last_at[plan.line] = time.monotonic()
        if seq + 1 < counts[plan.line]:
            heapq.heappush(queue, (t0 + i / (len(plans) * plan.rate) + (seq + 1) / plan.rate, i, seq + 1))
    publisher.close()
    db = resolved.clickhouse.database
    outcomes = []
    for plan in plans:
        lot, n = lots[plan.line], counts[plan.line]
        try:
            wait_drained(client, db, lot, n, stop_event, timeout_s=max(120.0, 4 * seconds))
        except DrainTimeout as exc:
            print(f"  {plan.line}: not drained: {exc}")
        first, last = latency_thirds(client, db, lot)
        achieved = (n - 1) / max(1e-9, last_at[plan.line] - t0) if n > 1 else plan.rate
        report = build_report(client, db, lot, positive_release=resolved.plc.positive_release)
        outcomes.append(LineOutcome(plan, lot, n, achieved, report, first, last))
    return outcomes, cpu_between(cpu0, process_cpu())


def search_kind(resolved: Settings, client: ClickHouseClient, stop_event, kind: str, line: str, args: argparse.Namespace,
                trial: list[int]) -> tuple[float, float | None]:
    """The highest rate held for `kind` (0 if none) and the lowest that failed (None if none)."""
    held: float = 0.0
    failed: float | None = None
    rate = float(args.start)
    while failed is None and rate <= args.max_rate:
        ok = _one(resolved, client, stop_event, [LinePlan(line, kind, rate)], args, trial)
        held, failed = (rate, None) if ok else (held, rate)
        rate *= 1.5
    for _ in range(args.refine):
        if failed is None:
            break
        rate = round((held + failed) / 2, 1) if held else round(failed / 2, 1)
        if rate <= held or rate >= failed:
            break
        if _one(resolved, client, stop_event, [LinePlan(line, kind, rate)], args, trial):
            held = rate
        else:
            failed = rate
    return held, failed


def _one(resolved: Settings, client: ClickHouseClient, stop_event, plans: list[LinePlan], args: argparse.Namespace,
         trial: list[int]) -> bool:
    trial[0] += 1
    total = sum(p.rate for p in plans)
    print(f"trial {trial[0]}: {len(plans)} line(s), {total:g} units/s in all, {args.seconds:g} s "
          f"(load {open('/proc/loadavg').read().split()[0]})", flush=True)
    outcomes, cpu = run_trial(resolved, client, stop_event, plans, args.seconds, args.pool, trial[0])
    for o in outcomes:
        print(o.line_text(), flush=True)
    spent = sum(cpu.values())
    print(f"  CPU s per unit {spent / max(1, sum(o.published for o in outcomes)) * 1e3:.1f} ms: "
          + ", ".join(f"{k[:40]} {v:.1f}" for k, v in list(cpu.items())[:6]), flush=True)
    return all(not o.failures for o in outcomes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default=",".join(KIND_RECIPES), help="comma-separated: " + ", ".join(KIND_RECIPES))
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each trial")
    parser.add_argument("--start", type=float, default=10.0, help="first rate tried (units/s)")
    parser.add_argument("--max-rate", type=float, default=400.0)
    parser.add_argument("--refine", type=int, default=2, help="halvings between the last rate held and the first failed")
    parser.add_argument("--pool", type=int, default=200, help="distinct rendered units per line and trial")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--plant", type=int, default=0, help="run N lines at --line-rate each, products mixed")
    parser.add_argument("--plant-search", type=int, default=0,
                        help="find how many lines (up to N) at --line-rate each one host holds")
    parser.add_argument("--line-rate", type=float, default=10.0, help="units/s per line in a plant run (600/min = 10)")
    args = parser.parse_args()

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KIND_RECIPES))
    if unknown:
        raise SystemExit(f"unknown kinds {unknown}; choose from {', '.join(KIND_RECIPES)}")
    n_lines = max(args.plant, args.plant_search, len(kinds))
    lines = [f"line-{i + 1}" for i in range(n_lines)]
    # A plant's lines cycle through the kinds; a kind search runs each kind on its own line.
    line_kind = {line: kinds[i % len(kinds)] for i, line in enumerate(lines)}
    settings = line_settings(Settings(), lines, line_kind)
    s = settings.stream
    print(f"worker: {args.workers} process(es), batch {s.batch_size}, in flight {s.max_in_flight}, fetch wait "
          f"{s.fetch_max_wait_ms} ms; camera to gate {settings.lines[lines[0]].camera_to_gate_mm / settings.lines[lines[0]].conveyor_speed_mm_s:.1f} s",
          flush=True)
    trial = [0]
    if args.plant:
        with pipeline_stack(settings, args.workers) as (resolved, client, services):
            plans = [LinePlan(line, line_kind[line], args.line_rate) for line in lines[: args.plant]]
            ok = _one(resolved, client, services.stop_event, plans, args, trial)
        print(f"\nplant: {args.plant} lines x {args.line_rate:g} units/s ({args.plant * args.line_rate:g} units/s, "
              f"kinds {', '.join(sorted({p.kind for p in plans}))}) for {args.seconds:g} s: "
              + ("every line held" if ok else "NOT held"))
        return
    if args.plant_search:
        lines_held, lines_failed = 0, None
        for n in range(1, args.plant_search + 1):
            # A fresh stack per trial: the embedded broker keeps every frame in memory and its CPU per
            # fetch grows with what it holds (docs/benchmarks.md), which would penalise later trials.
            with pipeline_stack(settings, args.workers) as (resolved, client, services):
                plans = [LinePlan(line, line_kind[line], args.line_rate) for line in lines[:n]]
                ok = _one(resolved, client, services.stop_event, plans, args, trial)
            if not ok:
                lines_failed = n
                break
            lines_held = n
        print(f"\nlines of {args.line_rate:g} units/s (kinds cycling {', '.join(kinds)}) one host holds: {lines_held}"
              + (f" ({lines_failed} did not)" if lines_failed else f" (all {args.plant_search} tried)"))
        return
    results: dict[str, tuple[float, float | None]] = {}
    for i, kind in enumerate(kinds):
        print(f"\n== {kind} ({KIND_RECIPES[kind]})", flush=True)
        # A fresh stack per kind (see above): each kind's search starts from an empty broker.
        with pipeline_stack(settings, args.workers) as (resolved, client, services):
            results[kind] = search_kind(resolved, client, services.stop_event, kind, lines[i], args, trial)
    print("\nhighest sustainable rate (units/s; one worker, this host):")
    for kind, (held, failed) in results.items():
        print(f"  {kind:<8} {held:6.1f}" + (f"   ({failed:g} did not hold)" if failed else "   (every rate tried held)"))


if __name__ == "__main__":
    main()
