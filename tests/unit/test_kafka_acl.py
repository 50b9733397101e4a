"""The broker's principals and ACLs (pipeline/kafka/acl.py) against the code, compose and Kubernetes.

Each principal's topics are read again from the code it lists in `sources` (a module, or one
function or method of it): every `topic_*` setting it names, and which of them it writes (the
topic argument of a `produce`/`send` call, an `Outgoing` or an `AlarmOutbox`, directly or through
a name assigned from the setting). A service that starts writing or reading a topic its principal
may not use fails here, and so does a permission the code no longer needs."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka.admin import AclOperation, ResourcePatternType, ResourceType

from pipeline.kafka import acl
from pipeline.kafka.topics import topic_specs
from pipeline.settings import PROJECT_ROOT, KafkaSettings, Settings

TOPIC_FIELDS = {f for f in KafkaSettings.model_fields if f.startswith("topic_")}
WRITE_CALLS = {"produce", "send", "Outgoing", "_by_line", "AlarmOutbox"}  # _by_line: a line-keyed Outgoing
# Reads the code cannot show by name: the dashboard's review station reads a frame back at the
# `topic:partition:offset` its result records (pipeline/review/frames.py, parse_source), which is
# the frames topic the worker consumed it from.
DATA_NAMED_READS = {"linesight-dashboard": {"topic_frames"}}
SETTINGS = Settings()


@cache
def _tree(path: str) -> ast.Module:
    return ast.parse((PROJECT_ROOT / path).read_text(), path)


def _unit(spec: str) -> tuple[ast.AST, ast.Module]:
    """`path` or `path::name` / `path::Class.method` -> (that node, its module)."""
    path, _, qual = spec.partition("::")
    module = _tree(path)
    node: ast.AST = module
    for part in qual.split(".") if qual else []:
        found = [n for n in ast.iter_child_nodes(node)
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == part]
        assert found, f"{spec}: no {part}"
        node = found[0]
    return node, module


def _fields(node: ast.AST) -> set[str]:
    return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute) and n.attr in TOPIC_FIELDS}


def _assigned(module: ast.Module) -> dict[str, set[str]]:
    """`name` / `self.attr` -> the topic settings assigned to it anywhere in the module."""
    out: dict[str, set[str]] = {}
    for n in ast.walk(module):
        if isinstance(n, ast.Assign):
            for target in n.targets:
                out.setdefault(ast.unparse(target), set()).update(_fields(n.value))
    return out


def _call_name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def code_access(spec: str) -> tuple[set[str], set[str]]:
    """(every topic setting the unit names, the ones it writes)."""
    node, module = _unit(spec)
    names = _assigned(module)
    used, written = _fields(node), set()
    for call in (n for n in ast.walk(node) if isinstance(n, ast.Call) and _call_name(n) in WRITE_CALLS):
        args = call.args if _call_name(call) == "AlarmOutbox" else call.args[:1]
        for arg in [*args, *(k.value for k in call.keywords if k.arg == "topic")]:
            topics = _fields(arg) | names.get(ast.unparse(arg), set())
            written |= topics
            used |= topics
    return used, written


@pytest.mark.parametrize("principal", [p for p in acl.principals(SETTINGS) if p.sources], ids=lambda p: p.name)
def test_each_principal_has_exactly_the_access_its_code_uses(principal: acl.Principal) -> None:
    used, written = set(), set()
    for spec in principal.sources:
        u, w = code_access(spec)
        used |= u
        written |= w
    used |= DATA_NAMED_READS.get(principal.name, set())
    allowed = principal.reads | principal.writes
    assert written <= principal.writes, f"{principal.name} writes {sorted(written - principal.writes)} without an ACL"
    assert used <= allowed, f"{principal.name} uses {sorted(used - allowed)} without an ACL"
    assert principal.writes <= written, f"{principal.name} may write {sorted(principal.writes - written)}, unused"
    assert principal.reads <= used, f"{principal.name} may read {sorted(principal.reads - used)}, unused"


def _methods_called_on(path: str, receiver_suffix: str) -> set[str]:
    return {n.func.attr for n in ast.walk(_tree(path)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and ast.unparse(n.func.value).endswith(receiver_suffix)}


def test_the_gateway_calls_only_the_publisher_methods_its_principal_is_derived_from() -> None:
    """Its principal lists FramePublisher methods, not the whole class (whose `truth` is the
    simulator's): a new call from the gateway into another method must come with its ACL."""
    [gateway] = [p for p in acl.principals(SETTINGS) if p.name == "linesight-gateway"]
    listed = {s.rsplit(".", 1)[1] for s in gateway.sources if "::FramePublisher." in s}
    called = _methods_called_on("pipeline/gateway/service.py", "_publisher")
    called |= _methods_called_on("pipeline/gateway/camera_status.py", "publisher")
    called |= _methods_called_on("pipeline/gateway/camera_status.py", "_publisher")
    assert called - {"close"} <= listed, sorted(called - listed)
    # The simulator publishes each unit with its ground truth (FramePublisher.publish -> truth).
    _, written = code_access("pipeline/gateway/publisher.py::FramePublisher.publish")
    assert "topic_truth" not in written and "self.truth" in ast.unparse(
        _unit("pipeline/gateway/publisher.py::FramePublisher.publish")[0])


def _writers(topic: str) -> set[str]:
    return {p.name for p in acl.principals(SETTINGS) if topic in p.writes}


def test_the_rules_of_issue_19() -> None:
    """The gateway may only write frames (and its own fail-safe outputs, never verdicts); only workers
    write results and rejects from inspection; subscribers read results only."""
    by = {p.name: p for p in acl.principals(SETTINGS)}
    assert _writers("topic_results") == {"linesight-worker"}
    assert _writers("topic_frames") == {"linesight-gateway", "linesight-camera"}
    gateway = by["linesight-gateway"]
    assert not gateway.reads and not gateway.groups and "topic_results" not in gateway.writes
    assert gateway.writes == {"topic_frames", "topic_captures", "topic_rejects", "topic_deadletter",
                              "topic_camera_status"}
    # Captures (frame headers, by line) come from whoever publishes the frames, nobody else.
    assert _writers("topic_captures") == _writers("topic_frames")
    # Rejects: the worker's verdicts and the gateway's fail-safe ones (a unit it could not publish).
    assert _writers("topic_rejects") == {"linesight-worker", "linesight-gateway"}
    subscriber = by["linesight-subscriber"]
    assert subscriber.reads == {"topic_results"} and not subscriber.writes and not subscriber.internal_prefix
    assert [p.name for p in acl.principals(SETTINGS) if p.internal_prefix] == ["linesight-worker"]
    # Every topic named exists; every compose service with a principal has one principal.
    names = {s.name for s in topic_specs(SETTINGS.kafka)}
    for p in acl.principals(SETTINGS):
        assert {str(getattr(SETTINGS.kafka, t)) for t in p.reads | p.writes} <= names, p.name
    services = [s for p in acl.principals(SETTINGS) for s in p.services]
    assert len(services) == len(set(services))


def test_bindings_are_read_write_and_group_read_only() -> None:
    worker = acl.by_service(SETTINGS)["worker"]
    bindings = acl.bindings(SETTINGS, worker)
    topics = {(b.name, b.operation) for b in bindings if b.restype == ResourceType.TOPIC
              and b.resource_pattern_type == ResourcePatternType.LITERAL}
    assert ("linesight.results", AclOperation.WRITE) in topics and ("linesight.frames", AclOperation.READ) in topics
    assert ("linesight.frames", AclOperation.WRITE) not in topics
    groups = {(b.name, b.resource_pattern_type) for b in bindings if b.restype == ResourceType.GROUP}
    assert groups == {(SETTINGS.stream.app_id, ResourcePatternType.LITERAL), ("linesight-shadow-", ResourcePatternType.PREFIXED)}
    assert all(b.principal == "User:linesight-worker" and b.host == "*" for b in bindings)
    # No principal gets a cluster-level permission: only the super user creates topics and users.
    for p in acl.principals(SETTINGS):
        assert all(b.restype != ResourceType.BROKER for b in acl.bindings(SETTINGS, p))


class FakeAdmin:
    """What `apply` asks of confluent-kafka's AdminClient, recorded."""

    def __init__(self, existing: dict[str, list[Any]]) -> None:
        self.existing, self.created, self.deleted, self.users = existing, [], [], []

    @staticmethod
    def _done(value: Any) -> Any:
        from concurrent.futures import Future
        f: Future[Any] = Future()
        f.set_result(value)
        return f

    def alter_user_scram_credentials(self, upserts: list[Any], request_timeout: float) -> dict[str, Any]:
        self.users += [(u.user, u.password) for u in upserts]
        return {u.user: self._done(None) for u in upserts}

    def describe_acls(self, flt: Any, request_timeout: float) -> Any:
        return self._done(self.existing.get(flt.principal, []))

    def create_acls(self, bindings: list[Any], request_timeout: float) -> dict[Any, Any]:
        self.created += bindings
        return {b: self._done(None) for b in bindings}

    def delete_acls(self, filters: list[Any], request_timeout: float) -> dict[Any, Any]:
        self.deleted += filters
        return {f: self._done([]) for f in filters}


def test_apply_sets_passwords_and_makes_the_acls_exactly_the_tables(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from confluent_kafka.admin import AclBinding, AclPermissionType

    settings = Settings(kafka=KafkaSettings(bootstrap_servers="kafka:9092"))
    worker = acl.by_service(settings)["worker"]
    stale = AclBinding(ResourceType.TOPIC, "linesight.frames", ResourcePatternType.LITERAL, "User:linesight-worker",
                       "*", AclOperation.WRITE, AclPermissionType.ALLOW)
    kept = acl.bindings(settings, worker)[0]
    fake = FakeAdmin({"User:linesight-worker": [stale, kept]})
    monkeypatch.setattr(acl, "AdminClient", lambda conf: fake)
    (tmp_path / "kafka_worker_password").write_text("0123456789abcdef0123\n")
    (tmp_path / "kafka_gateway_password").write_text("short\n")
    with pytest.raises(ValueError, match="16 characters"):
        acl.apply(settings, tmp_path)
    (tmp_path / "kafka_gateway_password").unlink()
    acl.apply(settings, tmp_path)  # principals without a password file are skipped
    assert fake.users == [("linesight-worker", b"0123456789abcdef0123")]
    assert [f.operation for f in fake.deleted] == [AclOperation.WRITE] and fake.deleted[0].name == "linesight.frames"
    assert len(fake.created) == len(acl.bindings(settings, worker)) - 1


# ----------------------------------------------------------------- compose and Kubernetes use the table


@cache
def _compose() -> dict[str, Any]:
    return yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = dict(_compose()["x-linesight-env"])
    env.update({k: str(v) for k, v in (service.get("environment") or {}).items() if not k.startswith("<<")})
    return env


def test_every_compose_service_connects_as_its_own_principal() -> None:
    services = _compose()["services"]
    principals = acl.by_service(SETTINGS)
    app = {n for n, s in services.items() if "LINESIGHT_KAFKA__BOOTSTRAP_SERVERS" in _env(s)
           and s.get("build", {}).get("dockerfile") == "infra/docker/app.Dockerfile"}
    assert app - {"topics-init"} == set(principals), sorted(app ^ set(principals))
    password_secrets = {p.password_secret for p in acl.principals(SETTINGS)}
    for name in app:
        env, secrets = _env(services[name]), set(services[name].get("secrets") or [])
        assert env["LINESIGHT_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL", name
        assert env["LINESIGHT_KAFKA__SASL_MECHANISM"] == acl.SCRAM_MECHANISM, name
        assert env["LINESIGHT_KAFKA__SSL_CA_FILE"] == "/run/secrets/kafka_ca_certificate" and "kafka_ca_certificate" in secrets
        if name == "topics-init":
            assert env["LINESIGHT_KAFKA__SASL_USERNAME"] == acl.ADMIN
            assert secrets >= password_secrets | {"kafka_admin_password"}, "it creates every principal"
            continue
        p = principals[name]
        assert env["LINESIGHT_KAFKA__SASL_USERNAME"] == p.name, name
        assert env["LINESIGHT_KAFKA__SASL_PASSWORD_FILE"] == f"/run/secrets/{p.password_secret}", name
        # Its own password and no other principal's, never the super user's.
        assert secrets & (password_secrets | {"kafka_admin_password", "kafka_broker_admin_password"}) == {
            p.password_secret}, name
    assert "python -m pipeline.kafka.acl apply" in " ".join(services["topics-init"]["entrypoint"])
    assert set(_compose()["secrets"]) >= password_secrets


def _k8s_users() -> dict[str, dict[str, set[str]]]:
    users = {}
    for doc in yaml.safe_load_all((PROJECT_ROOT / "infra/k8s/kafka/users.yaml").read_text()):
        if doc and doc.get("kind") == "KafkaUser":
            ops: dict[str, set[str]] = {}
            for rule in doc["spec"]["authorization"]["acls"]:
                r = rule["resource"]
                if r["type"] == "topic" and r.get("patternType", "literal") == "literal":
                    ops.setdefault(r["name"], set()).update(rule["operations"])
            users[doc["metadata"]["name"]] = ops
    return users


def test_the_kubernetes_users_have_the_tables_topic_access() -> None:
    users = _k8s_users()
    k = SETTINGS.kafka
    for p in acl.principals(SETTINGS):
        if p.name not in users:
            continue  # the simulator and the CLI operator run only in compose
        ops = users[p.name]
        reads = {t for t, o in ops.items() if "Read" in o}
        writes = {t for t, o in ops.items() if "Write" in o}
        assert reads == {str(getattr(k, t)) for t in p.reads}, p.name
        assert writes == {str(getattr(k, t)) for t in p.writes}, p.name


def test_the_table_renders_for_the_docs() -> None:
    text = acl.table(SETTINGS)
    assert "| `linesight-subscriber` | (external) | `linesight.results` | - |" in text
    doc = (PROJECT_ROOT / "docs" / "deployment.md").read_text()
    assert text in doc, "docs/deployment.md must show the current table (python -m pipeline.kafka.acl table)"
