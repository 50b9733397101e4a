"""Who may do what on the broker: one SCRAM principal per service, its ACLs, and the command that
creates both on a production Kafka (docker-compose.yml's `topics-init`, as the broker's super user).

The table below is the single statement of each service's access; it is derived from the code
(the topics each service's modules produce to and consume from, listed in `sources`), and
tests/unit/test_kafka_acl.py reads those modules again and fails when a service starts using a
topic its principal may not, or keeps a permission it no longer uses. Rules it keeps: the
camera gateway writes frames and never results; only workers write results; a subscriber (any
other plant system) reads results only. docs/deployment.md, "Broker security", prints the table.

    python -m pipeline.kafka.acl apply --secrets-dir /run/secrets   # users (SCRAM-SHA-512) and ACLs
    python -m pipeline.kafka.acl table                              # the table, as Markdown

`apply` connects with the settings' own credentials (LINESIGHT_KAFKA__*: the `admin` super user in
compose), upserts each principal's SCRAM-SHA-512 credential from its password file (the Docker
secret `kafka_<service>_password`), creates its ACLs and deletes any other ACL of that principal,
so a permission removed from the table is removed from the broker. Idempotent; it runs at every
start of the stack.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from pipeline.kafka.clients import client_config
from pipeline.settings import Settings

log = logging.getLogger(__name__)

# The broker's super user (server.properties `super.users`): the broker itself (inter-broker and
# controller connections) and the one-shot `topics-init`, which creates topics, users and ACLs.
ADMIN = "admin"
SCRAM_ITERATIONS = 8192
SCRAM_MECHANISM = "SCRAM-SHA-512"
# `linesight audit verify` reads the seal topic: every service with a ClickHouse account may run it.
VERIFY = "pipeline/cli/audit.py::read_topic_seals"


@dataclass(frozen=True)
class Principal:
    """One SCRAM user. Topics are KafkaSettings field names (`topic_frames`), so renamed topics
    follow the settings. `groups` are consumer groups it joins with subscribe() (pattern, name);
    consumers that assign() partitions at explicit offsets (recipe feed, review frames, seal
    reader) join no group and need none. `internal_prefix`: topics it may create and use under
    that prefix (Faust's own, named after its application id)."""

    name: str
    services: tuple[str, ...]  # the compose services that connect as it
    reads: frozenset[str]
    writes: frozenset[str]
    groups: tuple[tuple[str, str], ...] = ()
    internal_prefix: str | None = None
    sources: tuple[str, ...] = ()  # the code its access is derived from
    note: str = ""
    secret: str = field(default="")

    @property
    def password_secret(self) -> str:
        """The Docker secret holding its password: kafka_<name without 'linesight-'>_password."""
        return self.secret or f"kafka_{self.name.removeprefix('linesight-')}_password"


def principals(settings: Settings) -> list[Principal]:
    app_id = settings.stream.app_id
    svc = settings.services
    f = frozenset
    return [
        Principal(
            "linesight-gateway", ("gateway",), reads=f(),
            writes=f({"topic_frames", "topic_captures", "topic_rejects", "topic_deadletter", "topic_camera_status"}),
            sources=("pipeline/gateway/service.py", "pipeline/gateway/camera_status.py",
                     "pipeline/gateway/publisher.py::FramePublisher.connect",
                     "pipeline/gateway/publisher.py::FramePublisher.publish",
                     "pipeline/gateway/publisher.py::FramePublisher.reject",
                     "pipeline/gateway/publisher.py::FramePublisher.status",
                     "pipeline/gateway/publisher.py::FramePublisher.dead_letter"),
            note="frames and their captures (headers only, by line); also, as its code does: fail-safe "
                 "rejects of units it could not publish, "
                 "their frames' dead letters, camera status. Never results; reads nothing",
        ),
        Principal(
            "linesight-camera", ("camera",), reads=f(), writes=f({"topic_frames", "topic_captures", "topic_truth"}),
            sources=("pipeline/gateway/publisher.py::FramePublisher.connect",
                     "pipeline/gateway/publisher.py::FramePublisher.publish",
                     "pipeline/gateway/publisher.py::FramePublisher.truth",
                     "pipeline/gateway/publisher.py::run_simulated_line"),
            note="the simulated line (profile simulator): frames, their captures and ground truth",
        ),
        Principal(
            "linesight-worker", ("worker",), reads=f({"topic_frames", "topic_recipes"}),
            writes=f({"topic_results", "topic_rejects", "topic_deadletter", "topic_reject_images",
                      "topic_heartbeats", "topic_shadow"}),
            groups=(("literal", app_id), ("prefixed", "linesight-shadow-")),
            internal_prefix=app_id,
            sources=("streams/app.py", "streams/processor.py", "streams/shadow.py",
                     "pipeline/recipes/book.py"),
            note="the only writer of results; rejects, dead letters, reject images, heartbeats; "
                 "shadow verdicts (`linesight shadow` runs as the worker)",
        ),
        Principal(
            "linesight-sink", ("sink",),
            reads=f({"topic_results", "topic_truth", "topic_actuations", "topic_deadletter", "topic_gate_events",
                     "topic_alarms", "topic_alerts", "topic_reject_images", "topic_unit_verdicts", "topic_shadow",
                     "topic_audit_seals"}),
            writes=f({"topic_audit_events"}),
            groups=(("literal", svc.sink_group),),
            sources=("pipeline/analytics/sink.py", "pipeline/audit/intake.py", VERIFY),
            note="reads what it stores in ClickHouse; submits its decisions to the audit service; "
                 "`audit verify` reads the seal topic",
        ),
        Principal(
            "linesight-actuator", ("actuator",),
            reads=f({"topic_captures", "topic_results", "topic_rejects", "topic_heartbeats"}),
            writes=f({"topic_heartbeats", "topic_gate_events", "topic_unit_verdicts", "topic_actuations",
                      "topic_alarms", "topic_deadletter"}),
            # A per-line actuator commits under <actuator_group>.<line> (pipeline.actuation.service).
            groups=(("literal", svc.actuator_group), ("prefixed", f"{svc.actuator_group}.")),
            sources=("pipeline/actuation/service.py",),
            note="captures (frame headers), verdicts, rejects and heartbeats in; the gate's events, unit verdicts, "
                 "actuations, alarms, its heartbeats and dead letters out",
        ),
        Principal(
            "linesight-alerts", ("alerts",),
            reads=f({"topic_frames", "topic_results", "topic_heartbeats", "topic_camera_status", "topic_audit"}),
            writes=f({"topic_alerts"}),
            groups=(("literal", svc.alerts_group),),
            sources=("pipeline/alerts/service.py",),
        ),
        Principal(
            "linesight-dashboard", ("dashboard",), reads=f({"topic_frames", "topic_audit_seals"}),
            writes=f({"topic_audit_events"}),
            sources=("pipeline/review/frames.py", "pipeline/audit/intake.py", VERIFY),
            note="the review station reads judged frames back (assign(), no group); audit events out; "
                 "`audit verify` reads the seal topic",
        ),
        Principal(
            "linesight-auditsealer", ("auditsealer",), reads=f({"topic_audit_events", "topic_audit_seals"}),
            writes=f({"topic_audit", "topic_audit_seals", "topic_deadletter"}),
            groups=(("literal", settings.audit.appender_group),),
            sources=("pipeline/audit/appender.py", "pipeline/audit/sealtopic.py", "pipeline/audit/publish.py"),
            note="the audit service, the trail's only appender: audit events in (group), records, seals and "
                 "refused events' dead letters out; copies the seal topic into its anchor file (assign())",
        ),
        Principal(
            "linesight-operator", ("db-init",), reads=f({"topic_recipes", "topic_audit_seals"}),
            writes=f({"topic_audit_events", "topic_recipes"}),
            sources=("pipeline/audit/intake.py", "pipeline/recipes/activate.py", "pipeline/recipes/book.py", VERIFY),
            note="the CLI's GMP actions (`docker compose run db-init users|audit|recipes ...`): audit events, "
                 "recipe activations (and the active recipes read back from their topic); `audit verify`",
        ),
        Principal(
            "linesight-subscriber", (), reads=f({"topic_results"}), writes=f(),
            groups=(("prefixed", "linesight-subscriber-"), ("prefixed", "linesight-tail-")),
            sources=(),
            note="any other plant system (MES, historian; `linesight tail`): results only",
        ),
    ]


def by_service(settings: Settings) -> dict[str, Principal]:
    return {s: p for p in principals(settings) for s in p.services}


def _topic(settings: Settings, field_name: str) -> str:
    return str(getattr(settings.kafka, field_name))


def bindings(settings: Settings, principal: Principal) -> list[AclBinding]:
    """Every ACL (allow) of one principal. Read and Write imply Describe in Kafka."""
    user = f"User:{principal.name}"
    lit, pre = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
    allow = AclPermissionType.ALLOW
    out = [AclBinding(ResourceType.TOPIC, _topic(settings, t), lit, user, "*", AclOperation.READ, allow)
           for t in sorted(principal.reads)]
    out += [AclBinding(ResourceType.TOPIC, _topic(settings, t), lit, user, "*", AclOperation.WRITE, allow)
            for t in sorted(principal.writes)]
    for pattern, group in principal.groups:
        out.append(AclBinding(ResourceType.GROUP, group, lit if pattern == "literal" else pre, user, "*",
                              AclOperation.READ, allow))
    if principal.internal_prefix:
        out += [AclBinding(ResourceType.TOPIC, principal.internal_prefix, pre, user, "*", op, allow)
                for op in (AclOperation.CREATE, AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE)]
    return out


def _name(value: object) -> str:
    """An enum member's name (the admin client returns enums; its stubs also allow str and int)."""
    return str(getattr(value, "name", value))


def _key(b: AclBinding) -> tuple[str, ...]:
    return (_name(b.restype), b.name, _name(b.resource_pattern_type), b.principal, b.host, _name(b.operation),
            _name(b.permission_type))


def read_password(path: Path) -> str:
    password = path.read_text(encoding="utf-8").strip()
    if len(password) < 16:
        raise ValueError(f"{path}: a Kafka password needs 16 characters or more (infra/install-host.sh makes 48)")
    return password


def apply(settings: Settings, secrets_dir: Path, only: Iterable[str] | None = None, timeout_s: float = 30.0) -> None:
    """Create (or update) every principal's SCRAM credential and make its ACLs exactly the table's.
    A principal whose password file is missing is skipped with a warning (the subscriber's, until
    the plant wants one)."""
    admin = AdminClient(client_config(settings.kafka) | {"logger": logging.getLogger("linesight.kafka.acl")})
    wanted = [p for p in principals(settings) if only is None or p.name in set(only)]
    upserts: list[UserScramCredentialAlteration] = []
    ready: list[Principal] = []
    for p in wanted:
        path = secrets_dir / p.password_secret
        if not path.is_file():
            log.warning("no password file %s: Kafka user %s not created", path, p.name)
            continue
        upserts.append(UserScramCredentialUpsertion(
            p.name, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS),
            read_password(path).encode()))
        ready.append(p)
    if upserts:
        for user, future in admin.alter_user_scram_credentials(upserts, request_timeout=timeout_s).items():
            future.result()
            log.info("Kafka user %s: SCRAM-SHA-512 credential set", user)
    for p in ready:
        want = {_key(b): b for b in bindings(settings, p)}
        # None: any resource name, any host (the client's stubs say str).
        existing = admin.describe_acls(AclBindingFilter(
            ResourceType.ANY, None, ResourcePatternType.ANY, f"User:{p.name}", None,  # type: ignore[arg-type]
            AclOperation.ANY, AclPermissionType.ANY), request_timeout=timeout_s).result()
        have = {_key(b): b for b in existing}
        stale = [b for k, b in have.items() if k not in want]
        if stale:
            for future in admin.delete_acls([_as_filter(b) for b in stale], request_timeout=timeout_s).values():
                future.result()
        missing = [b for k, b in want.items() if k not in have]
        if missing:
            for future in admin.create_acls(missing, request_timeout=timeout_s).values():
                future.result()
        log.info("Kafka user %s: %d ACLs (%d added, %d removed)", p.name, len(want), len(missing), len(stale))


def _as_filter(b: AclBinding) -> AclBindingFilter:
    return AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation,
                            b.permission_type)


def table(settings: Settings) -> str:
    """The principal table as Markdown (docs/deployment.md)."""
    rows = ["| principal | compose service | reads | writes | consumer groups |", "|---|---|---|---|---|"]
    for p in principals(settings):
        reads = ", ".join(f"`{_topic(settings, t)}`" for t in sorted(p.reads)) or "-"
        writes = ", ".join(f"`{_topic(settings, t)}`" for t in sorted(p.writes)) or "-"
        if p.internal_prefix:
            writes += f"; creates `{p.internal_prefix}*` (Faust's own)"
        groups = ", ".join(f"`{g}`" + ("*" if pattern == "prefixed" else "") for pattern, g in p.groups) or "-"
        rows.append(f"| `{p.name}` | {', '.join(p.services) or '(external)'} | {reads} | {writes} | {groups} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.kafka.acl", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    ap = sub.add_parser("apply", help="create the SCRAM users and set their ACLs (as the super user)")
    ap.add_argument("--secrets-dir", type=Path, default=Path("/run/secrets"))
    ap.add_argument("--timeout", type=float, default=30.0)
    sub.add_parser("table", help="print the principal table (Markdown)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings()
    if args.cmd == "table":
        print(table(settings))
        return 0
    try:
        apply(settings, args.secrets_dir, timeout_s=args.timeout)
    except (KafkaException, OSError, ValueError) as exc:
        print(f"kafka acl: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
