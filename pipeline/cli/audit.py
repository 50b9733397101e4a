"""`linesight audit ...`, `linesight users ...` and the authenticated `models deploy|rollback`.

Every command that changes something names its user (``--user``) and takes the password from a
prompt (getpass) or ``--password-file`` (automation); the permission table decides, and refusals
are audited before the command fails with the reason (docs/audit.md).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.audit.check import TopicSeals
from pipeline.audit.publish import BestEffortPublisher
from pipeline.audit.record import ADOPT_ACTION, SYSTEM_CHAIN, AuditEvent
from pipeline.audit.trail import AuditTrail
from pipeline.auth.guard import AccessDenied, Guard, Principal
from pipeline.auth.roles import LOGGABLE_ACTIONS, ROLES
from pipeline.auth.sessions import SessionStore
from pipeline.auth.users import UserStore
from pipeline.cli.handlers import with_settings
from pipeline.clickhouse import ClickHouseClient, connect
from pipeline.settings import Settings

if TYPE_CHECKING:
    from pipeline.audit.service import AuditService

log = logging.getLogger(__name__)

@dataclass
class Context:
    settings: Settings
    client: ClickHouseClient
    trail: AuditTrail
    guard: Guard
    users: UserStore


@contextlib.contextmanager
def gmp_context(settings: Settings) -> Iterator[Context]:
    client = connect(settings)
    try:
        db = settings.clickhouse.database
        if settings.clickhouse.url:  # a server: db-init applied the schema; least-privilege accounts may not
            client.use_database(db)
        else:
            client.apply_schema(db)
        publisher = None
        if settings.audit.append_via == "direct" and settings.audit.publish_timeout_s > 0:
            try:
                publisher = BestEffortPublisher(settings)
            except Exception as exc:  # noqa: BLE001 - no broker configured: ClickHouse is the record
                log.warning("audit records go to ClickHouse only, not to %s: %s", settings.kafka.topic_audit, exc)
        trail = AuditTrail.from_settings(settings, client, publisher)
        try:
            users = UserStore(client, db)
            guard = Guard(users, SessionStore(client, db), trail, settings.audit.session_ttl_s)
            yield Context(settings, client, trail, guard, users)
        finally:
            trail.close()
    finally:
        client.close()


def read_password(path: Path | None, prompt: str) -> str:
    if path is not None:
        return Path(path).read_text(encoding="utf-8").rstrip("\n")
    if not sys.stdin.isatty():
        raise AccessDenied("refused: no password: give --password-file, or run in a terminal to be prompted")
    return getpass.getpass(prompt)


def read_new_password(path: Path | None, who: str) -> str:
    if path is not None:
        return Path(path).read_text(encoding="utf-8").rstrip("\n")
    first = read_password(None, f"new password for {who}: ")
    if read_password(None, "repeat it: ") != first:
        raise ValueError("the passwords differ")
    return first


def login(ctx: Context, args: argparse.Namespace, attempted: str, subject: str = "") -> Principal:
    """The user named by --user, authenticated by the password (re-entered every time)."""
    if not args.user:
        raise ctx.guard.refuse("", "", attempted, subject, f"{attempted} needs --user and that user's password")
    if args.password_file is None and not sys.stdin.isatty():
        raise ctx.guard.refuse(args.user, "", attempted, subject,
                               "no password: give --password-file, or run in a terminal to be prompted")
    password = read_password(args.password_file, f"password for {args.user}: ")
    return ctx.guard.authenticate(args.user, password, attempted, subject)


def add_auth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", help="who does this (their password is asked, or read from --password-file)")
    p.add_argument("--password-file", type=Path, help="file holding the user's password (automation)")


def _time(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


# ----------------------------------------------------------------------------- audit


def read_topic_seals(settings: Settings, timeout_s: float) -> TopicSeals:
    """Every statement on the seal topic (raises `SealTopicError` when it cannot be read to its end)."""
    from pipeline.audit.sealtopic import read_seal_topic

    topic = settings.kafka.topic_audit_seals
    statements, damaged = read_seal_topic(settings.kafka, topic, timeout_s)
    # The sealer copies the topic into its anchor file every interval: younger statements may be missing there.
    return TopicSeals(topic, statements, damaged, grace_s=2 * settings.audit.seal_interval_s + 60)


def cmd_audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.audit.sealtopic import SealTopicError

    use_topic = args.seals_from_kafka if args.seals_from_kafka is not None else bool(settings.kafka.bootstrap_servers)
    topic: TopicSeals | None = None
    topic_error = ""
    if use_topic:
        try:
            topic = read_topic_seals(settings, args.kafka_timeout)
        except (SealTopicError, RuntimeError) as exc:
            topic_error = str(exc)
    with gmp_context(settings) as ctx:
        report = ctx.trail.verify(args.chain, _time(args.time_from) if args.time_from else None,
                                  _time(args.time_to) if args.time_to else None, topic=topic)
    if not use_topic:
        report.anchor_notes.append(f"the seal topic {settings.kafka.topic_audit_seals} was not read "
                                   f"({'--no-seals-from-kafka' if args.seals_from_kafka is False else 'no broker configured'})")
    if topic_error:
        report.anchor_findings.append(f"the seal topic {settings.kafka.topic_audit_seals} could not be read: "
                                      f"{topic_error} (--no-seals-from-kafka checks the anchor file only)")
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.to_text())
    brk = report.first_break
    if brk is not None:
        print(f"linesight audit verify: first broken link: {brk.record_id}: expected {brk.expected}, "
              f"found {brk.found}", file=sys.stderr)
    elif report.anchor_findings:
        print(f"linesight audit verify: anchor mismatch: {report.anchor_findings[0]}", file=sys.stderr)
    return 0 if report.ok else 1


def cmd_audit_adopt_legacy(args: argparse.Namespace, settings: Settings) -> int:
    """Vouch for every chain's unsigned prefix written before signing began (docs/audit.md)."""
    with gmp_context(settings) as ctx:
        who = ctx.guard.authorize(login(ctx, args, ADOPT_ACTION, args.chain or ""), "audit.sign", args.chain or "")
        if not (args.reason or "").strip():
            raise ctx.guard.refuse(who.username, who.role, ADOPT_ACTION, args.chain or "", "a reason is required")
        report = ctx.trail.verify(args.chain)
        legacy = [c for c in report.chains if c.broken is not None and c.broken.kind == "legacy"]
        others = [c for c in report.chains if c.broken is not None and c.broken.kind != "legacy"]
        for c in others:
            print(f"not adoptable: {c.chain}: {c.broken.message if c.broken else ''}", file=sys.stderr)
        if not legacy:
            print("no unsigned legacy prefix to adopt" + (f" in {args.chain}" if args.chain else ""))
            return 1 if others else 0
        legacy.sort(key=lambda c: (c.chain != SYSTEM_CHAIN, c.chain))  # the system chain first: it takes the records
        for c in legacy:
            head_seq = c.legacy_records - 1
            (head,) = ctx.trail.store.get(c.chain, head_seq)
            rec = ctx.trail.adopt_legacy(c.chain, head_seq, head.record_hash, who.username, who.role, args.reason)
            print(f"adopted {c.chain}#0..{head_seq} ({c.legacy_records} unsigned record(s), head {head.record_hash[:16]}) "
                  f"at {rec.record_id} by {who.username} ({who.role}); signed seal anchored by the audit service")
        after = ctx.trail.verify(args.chain)
    print(after.to_text())
    return 0 if after.ok else 1


def cmd_audit_sign(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.auth.signatures import sign_record

    with gmp_context(settings) as ctx:
        who = login(ctx, args, "audit.sign", args.record)
        sig = sign_record(ctx.trail, ctx.guard, who, args.record, args.meaning, args.reason or "", args.hash)
    print(f"signed {args.record} ({args.meaning}) by {who.username} ({who.role}): signature {sig.record_id}, "
          f"bound to hash {sig.detail_dict()['signed_hash']}")
    return 0


def cmd_audit_log(args: argparse.Namespace, settings: Settings) -> int:
    with gmp_context(settings) as ctx:
        who = login(ctx, args, args.action, args.subject)
        ctx.guard.authorize(who, LOGGABLE_ACTIONS[args.action], args.subject)
        if not (args.reason or "").strip():
            raise ctx.guard.refuse(who.username, who.role, args.action, args.subject, "a reason is required")
        rec = ctx.trail.record(AuditEvent(
            args.action, subject=args.subject, user=who.username, role=who.role, old_value=args.old or "",
            new_value=args.new or "", reason=args.reason,
        ))
    print(f"recorded {rec.record_id} {rec.action} {rec.subject} by {who.username} ({who.role}), hash {rec.record_hash}")
    return 0


def cmd_audit_list(args: argparse.Namespace, settings: Settings) -> int:
    with gmp_context(settings) as ctx:
        cond, params = ["1"], {}
        if args.chain:
            cond.append("chain = {chain:String}")
            params["chain"] = args.chain
        if args.action:
            cond.append("action = {action:String}")
            params["action"] = args.action
        result = ctx.client.query(
            f"SELECT concat(chain, '#', toString(seq)) AS record, time, user, role, action, subject, old_value, "
            f"new_value, reason, substring(record_hash, 1, 16) AS hash FROM {ctx.trail.store.table} "
            f"WHERE {' AND '.join(cond)} ORDER BY time DESC, chain, seq DESC LIMIT {int(args.limit)}",
            params,
        )
    print(result.to_table())
    return 0


def cmd_audit_seal(args: argparse.Namespace, settings: Settings) -> int:
    """Seal now (e.g. at the end of a lot): where the audit service runs, it is the only appender."""
    chains = [args.chain] if args.chain else None
    with gmp_context(settings) as ctx:
        seals = ctx.trail.seal(chains)
        statements = ctx.trail.heartbeat(chains)
    for s in seals:
        print(f"sealed {s.chain} at {s.record_id}: head {s.new_value}")
    for st in statements:
        print(f"anchored signed seal of {st.chain}#{st.head_seq} ({st.head_hash[:16]}), key {st.key_id}")
    print(f"{len(seals)} chain(s) sealed, {len(statements)} head(s) anchored")
    return 0


def cmd_audit_serve(args: argparse.Namespace, settings: Settings) -> int:
    """The audit service (compose ``auditsealer``): appends every submitted audit event, seals and
    anchors, until SIGTERM/Ctrl-C; then appends what is left on the events topic and seals it. Exits
    1 when the appender or the sealer died, so the container is restarted."""
    import signal
    import threading

    from pipeline.audit.service import AuditService

    client = connect(settings)
    try:
        db = settings.clickhouse.database
        if settings.clickhouse.url:
            client.use_database(db)
        else:
            client.apply_schema(db)
        service = AuditService(settings, client)
        service.each_round = _sealer_round(service, settings, args)  # before start: the sealer calls it
        key = service.trail.key
        print(f"appending {settings.kafka.topic_audit_events} to the trail; sealing every "
              f"{settings.audit.seal_interval_s:g} s; trail key {key.key_id if key else '-'}", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):  # docker stop: drain, the final seal, then exit
            signal.signal(sig, lambda *_: stop.set())
        from pipeline.core.health import serve_health

        server = serve_health(service.health, settings.services.audit_health_port, settings.services.health_host)
        service.start()
        died = False
        while not stop.wait(1.0):
            if not service.alive:
                log.error("the audit service's %s stopped: exiting so that it is restarted",
                          "appender" if not service.status()["appender_alive"] else "sealer")
                died = True
                break
        final = service.stop()
        server.shutdown()
        print(f"stopped; final seal anchored {len(final)} head(s)", flush=True)
        return 1 if died else 0
    finally:
        client.close()


def _sealer_round(service: AuditService, settings: Settings, args: argparse.Namespace):  # noqa: ANN202
    """After each sealing round: copy the seal topic into the anchor file (when a broker is configured
    and not --no-mirror: a restored anchor volume gets back what the topic kept) and write the status
    file the compose healthcheck reads (the round's result and the appender's liveness)."""
    import os
    import time

    from pipeline.audit.sealtopic import SealMirror, SealTopicReader

    trail, key = service.trail, service.trail.key
    mirror = None
    if settings.kafka.bootstrap_servers and not args.no_mirror and trail.anchor is not None and key is not None:
        mirror = SealMirror(SealTopicReader(settings.kafka, settings.kafka.topic_audit_seals), trail.anchor, key)

    def each_round(anchored: int | None) -> None:
        appender = service.status()
        status: dict[str, object] = {"time": time.time(), "ok": anchored is not None and appender["appender_alive"],
                                     "anchored": anchored, "interval_s": settings.audit.seal_interval_s} | appender
        if mirror is not None:
            try:
                status["copied_from_topic"] = mirror()
            except Exception as exc:  # noqa: BLE001 - the broker is down: the heartbeats go on, the file too
                log.warning("could not copy the seal topic into the anchor file: %s", exc)
                status["topic_error"] = str(exc)
        if args.status_file is not None:
            tmp = args.status_file.with_name(args.status_file.name + ".tmp")
            tmp.write_text(json.dumps(status), encoding="utf-8")
            os.replace(tmp, args.status_file)

    return each_round


def cmd_audit_key(args: argparse.Namespace, settings: Settings) -> int:
    with gmp_context(settings) as ctx:
        key = ctx.trail.verify_key
    if key is None:
        print("no trail key configured (audit.seal_key_file)", file=sys.stderr)
        return 1
    print(f"key id {key.key_id}\npublic key {key.public_hex}\n"
          f"pin it: LINESIGHT_AUDIT__SEAL_PUBLIC_KEY={key.public_hex}")
    return 0


def cmd_audit_export(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.audit.export import export_trail

    with gmp_context(settings) as ctx:
        who = ctx.guard.authorize(login(ctx, args, "audit.export", str(args.out)), "audit.export", str(args.out))
        manifest = export_trail(ctx.trail, args.out, args.format)
        digest = (args.out / "manifest.json.sha256").read_text().split()[0]
        ctx.trail.record(AuditEvent("audit.export", subject=str(args.out), user=who.username, role=who.role,
                                    new_value=digest, reason=args.reason or "",
                                    detail={"format": args.format, "records": manifest["files"][0]["records"]}))
    f = manifest["files"][0]
    print(f"exported {f['records']} audit records from {len(manifest['chains'])} chain(s) to {args.out / f['name']} "
          f"(sha256 {f['sha256']}); manifest {args.out / 'manifest.json'}")
    return 0 if manifest["verification_at_export"]["ok"] else 1


def cmd_audit_verify_export(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.audit.export import verify_export

    public = args.public_key
    if public and public.startswith("@"):
        public = Path(public[1:]).read_text(encoding="utf-8").strip()
    check = verify_export(args.folder, public or settings.audit.seal_public_key)
    print(check.to_text())
    return 0 if check.ok else 1


# ----------------------------------------------------------------------------- users


def cmd_users_add(args: argparse.Namespace, settings: Settings) -> int:
    with gmp_context(settings) as ctx:
        bootstrap = ctx.users.count() == 0
        if bootstrap:
            if args.role != "admin":
                raise ctx.guard.refuse(args.user or "", "", "user.add", args.name,
                                       "no users yet: the first user must be an admin (bootstrap)")
            who = Principal("bootstrap", "system")
        else:
            who = ctx.guard.authorize(login(ctx, args, "user.add", args.name), "user.add", args.name)
        password = read_new_password(args.new_password_file, args.name)
        user = ctx.users.add(args.name, args.role, password, who.username)
        ctx.trail.record(AuditEvent("user.add", subject=user.username, user=who.username, role=who.role,
                                    new_value=user.role, reason=args.reason or ("first admin" if bootstrap else "")))
    print(f"user {user.username} added with role {user.role}" + (" (bootstrap admin)" if bootstrap else ""))
    return 0


def cmd_users_list(args: argparse.Namespace, settings: Settings) -> int:
    with gmp_context(settings) as ctx:
        users = ctx.users.list()
    for u in users:
        print(f"{u.username:<20} {u.role:<9} {'enabled' if u.enabled else 'DISABLED':<9} "
              f"changed {u.changed_time:%Y-%m-%d %H:%M:%S} UTC by {u.changed_by}")
    if not users:
        print("no users: add the first admin with `linesight users add NAME --role admin`")
    return 0


def cmd_users_disable(args: argparse.Namespace, settings: Settings) -> int:
    with gmp_context(settings) as ctx:
        who = ctx.guard.authorize(login(ctx, args, "user.disable", args.name), "user.disable", args.name)
        user = ctx.users.get(args.name)
        if user is None:
            raise ctx.guard.refuse(who.username, who.role, "user.disable", args.name, f"unknown user {args.name!r}")
        ctx.users.update(user, who.username, enabled=False)
        ctx.trail.record(AuditEvent("user.disable", subject=user.username, user=who.username, role=who.role,
                                    old_value="enabled", new_value="disabled", reason=args.reason or ""))
    print(f"user {args.name} disabled")
    return 0


def cmd_users_passwd(args: argparse.Namespace, settings: Settings) -> int:
    with gmp_context(settings) as ctx:
        who = login(ctx, args, "user.passwd", args.name)
        if who.username != args.name:
            ctx.guard.authorize(who, "user.passwd", args.name)
        user = ctx.users.get(args.name)
        if user is None:
            raise ctx.guard.refuse(who.username, who.role, "user.passwd", args.name, f"unknown user {args.name!r}")
        ctx.users.update(user, who.username, password=read_new_password(args.new_password_file, args.name))
        ctx.trail.record(AuditEvent("user.passwd", subject=user.username, user=who.username, role=who.role,
                                    reason=args.reason or "password changed"))
    print(f"password of {args.name} changed")
    return 0


def cmd_users_login(args: argparse.Namespace, settings: Settings) -> int:
    with gmp_context(settings) as ctx:
        token = ctx.guard.login(args.user, read_password(args.password_file, f"password for {args.user}: "))
    print(token)
    return 0


# ----------------------------------------------------------------------------- models


def cmd_models_change(args: argparse.Namespace, settings: Settings, action: str) -> int:
    from pipeline.model.release import release_model

    with gmp_context(settings) as ctx:
        who = login(ctx, args, f"model.{action}", args.target)
        result, record, signature = release_model(
            settings, ctx.trail, ctx.guard, who, action, args.target, getattr(args, "version", None),
            args.reason or "", args.meaning,
        )
    print(result.to_text())  # type: ignore[attr-defined]
    print(f"  audit record {record.record_id} ({record.record_hash[:16]}), signed {args.meaning} by "
          f"{who.username} ({who.role}): {signature.record_id}")
    return 0


def add_model_auth_args(p: argparse.ArgumentParser) -> None:
    add_auth_args(p)
    p.add_argument("--meaning", default="approved", choices=["reviewed", "approved"],
                   help="meaning of the electronic signature of this release (default approved)")


def register(sub: argparse._SubParsersAction, settings_of) -> None:  # noqa: ANN001 - argparse internals
    """Add the ``audit`` and ``users`` commands; ``settings_of(args)`` gives the Settings."""

    run = with_settings(settings_of)

    p = sub.add_parser("audit", help="GMP audit trail: verify, sign, log an action, seal, export")
    a = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    v = a.add_parser("verify", help="check every hash chain and signature (exit 1 naming the first broken link)")
    v.add_argument("--from", dest="time_from", metavar="T", help="UTC ISO time: verify records from T")
    v.add_argument("--to", dest="time_to", metavar="T", help="UTC ISO time: verify records up to T")
    v.add_argument("--chain", help="only this chain (system, decisions/LINE/pN)")
    v.add_argument("--json", action="store_true")
    k = v.add_mutually_exclusive_group()
    k.add_argument("--seals-from-kafka", dest="seals_from_kafka", action="store_true", default=None,
                   help="also check against every signed seal on the seal topic and compare it with the anchor "
                        "file (default when a broker is configured; a topic that cannot be read fails)")
    k.add_argument("--no-seals-from-kafka", dest="seals_from_kafka", action="store_false",
                   help="check against the anchor file only")
    v.add_argument("--kafka-timeout", type=float, default=30.0, metavar="S",
                   help="read the seal topic to its end within S seconds (default 30)")
    v.set_defaults(func=run(cmd_audit_verify))
    ad = a.add_parser("adopt-legacy", help="vouch for the unsigned records written before signing began: a signed "
                      "audit.adopt_legacy record and an anchored seal of each legacy prefix (qa)")
    ad.add_argument("--chain", help="only this chain (default: every chain verify reports as legacy)")
    ad.add_argument("--reason", required=True, help="why the prefix is trusted (review, change control)")
    add_auth_args(ad)
    ad.set_defaults(func=run(cmd_audit_adopt_legacy))
    s = a.add_parser("sign", help="electronically sign a record (password re-entered, meaning stated)")
    s.add_argument("record", metavar="RECORD", help="record id CHAIN#SEQ (see `audit list`)")
    s.add_argument("--meaning", required=True, choices=["reviewed", "approved"])
    s.add_argument("--hash", help="the record hash the signer reviewed (prefix): refused if the record differs")
    s.add_argument("--reason")
    add_auth_args(s)
    s.set_defaults(func=run(cmd_audit_sign))
    g = a.add_parser("log", help="record an action: line start/stop, alarm acknowledgement, unit override, "
                     "threshold or recipe change")
    g.add_argument("action", choices=sorted(LOGGABLE_ACTIONS))
    g.add_argument("--subject", required=True, help="what it concerns (line, alarm id, unit, product)")
    g.add_argument("--old", help="value before")
    g.add_argument("--new", help="value after")
    g.add_argument("--reason", required=True)
    add_auth_args(g)
    g.set_defaults(func=run(cmd_audit_log))
    lst = a.add_parser("list", help="latest audit records (ids to sign)")
    lst.add_argument("--chain")
    lst.add_argument("--action")
    lst.add_argument("--limit", type=int, default=20)
    lst.set_defaults(func=run(cmd_audit_list))
    se = a.add_parser("seal", help="seal every chain with records after its last seal and anchor a signed "
                      "seal of every head (where the audit service runs: it is the only appender)")
    se.add_argument("--chain")
    se.set_defaults(func=run(cmd_audit_seal))
    sv = a.add_parser("serve", help="the audit service: append every submitted audit event, seal every "
                      "audit.seal_interval_s, anchor; at SIGTERM drain and seal")
    sv.add_argument("--status-file", type=Path, help="write each sealing round's status here (healthcheck)")
    sv.add_argument("--no-mirror", action="store_true",
                    help="do not copy the seal topic into the anchor file (default: copy when a broker is configured)")
    sv.set_defaults(func=run(cmd_audit_serve))
    a.add_parser("key", help="the trail key's id and public key (to pin in audit.seal_public_key)").set_defaults(
        func=run(cmd_audit_key))
    e = a.add_parser("export", help="write every record (CSV or Parquet) and a manifest with hashes")
    e.add_argument("--out", type=Path, required=True, help="new folder")
    e.add_argument("--format", choices=["csv", "parquet"], default="csv")
    e.add_argument("--reason", help="for whom / why (recorded)")
    add_auth_args(e)
    e.set_defaults(func=run(cmd_audit_export))
    ve = a.add_parser("verify-export", help="verify an export folder offline (no database)")
    ve.add_argument("folder", type=Path, metavar="DIR")
    ve.add_argument("--public-key", metavar="HEX|@FILE",
                    help="the trail's public key (`linesight audit key`) to check the signatures and seals with "
                         "(default: audit.seal_public_key, else the key the export lists)")
    ve.set_defaults(func=run(cmd_audit_verify_export))

    p = sub.add_parser("users", help="users and roles (operator, qa, admin)")
    u = p.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    ua = u.add_parser("add", help="add a user (the first one, an admin, needs no --user)")
    ua.add_argument("name")
    ua.add_argument("--role", required=True, choices=list(ROLES))
    ua.add_argument("--new-password-file", type=Path, help="file holding the new user's password")
    ua.add_argument("--reason")
    add_auth_args(ua)
    ua.set_defaults(func=run(cmd_users_add))
    u.add_parser("list", help="users, roles, enabled").set_defaults(func=run(cmd_users_list))
    ud = u.add_parser("disable", help="disable a user (kept for the records)")
    ud.add_argument("name")
    ud.add_argument("--reason")
    add_auth_args(ud)
    ud.set_defaults(func=run(cmd_users_disable))
    up = u.add_parser("passwd", help="change a password (own, or any as admin)")
    up.add_argument("name")
    up.add_argument("--new-password-file", type=Path)
    up.add_argument("--reason")
    add_auth_args(up)
    up.set_defaults(func=run(cmd_users_passwd))
    ul = u.add_parser("login", help="open a session: prints a token that expires (audit.session_ttl_s)")
    add_auth_args(ul)
    ul.set_defaults(func=run(cmd_users_login))
