"""`linesight models shadow|compare`: score a candidate version beside the live one, then compare.

`shadow` runs in the foreground until SIGTERM/Ctrl-C: it loads ``<classifier>__shadow`` into the
running Triton (`pipeline.model.shadow`), scores the live frames in its own consumer group
(`streams.shadow`) and unloads the model when stopped. It needs no log-in or signature: it
changes no verdict, no config and no model the line uses. It is still a change to the running
system, so its start and stop (who, which version, why, how many frames) are recorded in the
audit trail's system chain as ``model.shadow.start`` / ``model.shadow.stop``; a start that cannot
be recorded does not run. A shadow killed with SIGKILL records no stop and leaves its idle model
loaded: ``--unload`` removes it (recorded as ``model.shadow.unload``). A second shadow of a version
whose shadow runs is refused (one group, one model: the first to stop would unload it under the
other); ``--force`` goes on when the group only looks alive (a killed member the broker has not
expired: the embedded Tansu never expires one).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pipeline.cli.handlers import with_settings
from pipeline.settings import Settings

SettingsFn = Callable[[argparse.Namespace], Settings]


def _record(settings: Settings, action: str, subject: str, reason: str, detail: dict[str, Any],
            new_value: str = "") -> str:
    """One system-chain audit record by the OS user (no log-in: see the module docstring)."""
    from pipeline.audit.record import AuditEvent, os_user
    from pipeline.cli.audit import gmp_context

    with gmp_context(settings) as ctx:
        rec = ctx.trail.record(AuditEvent(action, subject=subject, user=os_user(), role="system",
                                          new_value=new_value, reason=reason, detail=detail))
    return f"{rec.record_id} ({rec.record_hash[:16]})"


def cmd_shadow(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.core.health import HealthState
    from pipeline.model.deploy import DeployError, TritonTarget
    from pipeline.model.shadow import load_shadow, resolve, unload_shadow
    from streams.shadow import ShadowService, running_elsewhere, shadow_group

    try:
        models = resolve(settings, args.product, args.version)
    except (DeployError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    subject = f"{models.classifier}:{models.version}"
    if not args.force and (busy := running_elsewhere(settings, models)):
        print(f"error: {busy}; --force goes on all the same", file=sys.stderr)
        return 1
    if args.unload:
        problems = unload_shadow(settings, models)
        record = _record(settings, "model.shadow.unload", subject, args.reason, {"problems": problems})
        print(f"unloaded {models.shadow_classifier}" if not problems else f"unload: {'; '.join(problems)}")
        print(f"  audit record {record}")
        return 1 if problems else 0
    try:
        load_s = load_shadow(settings, models)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    detail = {"product": models.product, "live_version": models.live_version, "group": shadow_group(models),
              "served_as": models.shadow_classifier, "topic": settings.kafka.topic_shadow}
    try:
        record = _record(settings, "model.shadow.start", subject, args.reason, detail,
                         new_value=f"shadow {models.version} beside live {models.live_version}")
    except Exception:
        unload_shadow(settings, models)  # an unrecorded change does not run
        raise
    print(f"shadow: {models.classifier} ({models.product}) version {models.version} beside live version "
          f"{models.live_version}; loaded as {models.shadow_classifier} in {load_s:.1f} s; audit record {record}",
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    service = ShadowService(settings, models, TritonTarget.from_settings(settings).url)
    health = HealthState("linesight-shadow")
    failure: list[BaseException] = []

    def run() -> None:
        try:
            service.run(stop, health)
        except BaseException as exc:  # noqa: BLE001 - reported below, after the unload
            failure.append(exc)
            stop.set()

    worker = threading.Thread(target=run, name="shadow", daemon=True)
    worker.start()
    announced = False
    while worker.is_alive():
        worker.join(0.2)
        if not announced and health.snapshot().get("ready"):
            print(f"shadow ready: consuming {settings.kafka.topic_frames} in group {shadow_group(models)}", flush=True)
            announced = True
    problems = unload_shadow(settings, models)
    c = service.counts
    per_frame = 1000 * service.seconds_scoring / c.scored if c.scored else 0.0
    summary = {"scored": c.scored, "failed": c.failed, "skipped": c.skipped,
               "scoring_s": round(service.seconds_scoring, 3), "ms_per_scored_frame": round(per_frame, 2),
               "unload_problems": problems, "error": repr(failure[0])[:500] if failure else ""}
    record = _record(settings, "model.shadow.stop", subject, args.reason, summary)
    print(f"shadow stopped: {c.scored} scored, {c.failed} failed, {c.skipped} skipped; "
          f"{per_frame:.1f} ms per scored frame; {'unloaded' if not problems else '; '.join(problems)}; "
          f"audit record {record}", flush=True)
    if failure:
        raise failure[0]
    return 0


def _time(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def cmd_compare(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.analytics.shadow_compare import compare
    from pipeline.clickhouse import connect
    from pipeline.model.deploy import DeployError, resolve_classifier

    try:
        product, classifier = resolve_classifier(settings, args.product)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    db = settings.clickhouse.database
    client = connect(settings)
    try:
        if settings.clickhouse.url:
            client.use_database(db)
        else:
            client.apply_schema(db)
        result = compare(client, db, product, classifier, args.version,
                         _time(args.since) if args.since else None, args.line, args.ids)
    finally:
        client.close()
    print(result.to_json() if args.json else result.to_text())
    return 0 if result.units else 2


def register(models: argparse._SubParsersAction, settings_fn: SettingsFn) -> None:  # noqa: SLF001
    """Add ``shadow`` and ``compare`` to the ``models`` command group."""

    run = with_settings(settings_fn)

    m = models.add_parser("shadow", help="score a candidate version on the live frames beside the live one "
                          "(no effect on any verdict; runs until SIGTERM/Ctrl-C)")
    m.add_argument("product", help="product id (or its classifier's name)")
    m.add_argument("--version", type=int, required=True, help="the candidate version")
    m.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    m.add_argument("--unload", action="store_true",
                   help="only unload a shadow model left loaded (a shadow that was killed)")
    m.add_argument("--force", action="store_true",
                   help="go on although the shadow's consumer group looks alive (a killed shadow on a broker "
                        "that does not expire members, such as the embedded Tansu)")
    m.set_defaults(func=run(cmd_shadow))
    m = models.add_parser("compare", help="a shadowed version's verdicts against the live ones and ground truth")
    m.add_argument("product", help="product id (or its classifier's name)")
    m.add_argument("--version", type=int, help="the candidate version (default: the newest shadowed)")
    m.add_argument("--since", metavar="T", help="units captured at or after T (UTC ISO time)")
    m.add_argument("--line", help="one line only")
    m.add_argument("--ids", type=int, default=20, metavar="N", help="unit ids listed per disagreement (default 20)")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=run(cmd_compare))
