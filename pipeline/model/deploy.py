"""`linesight models list|deploy|rollback`: switch the live classifier version without stopping the line.

The live version is the classifier config's `version_policy` (docs/models.md). A deploy:

1. refuses a version that is not releasable: missing, no model card, parity check not passed,
   `model.onnx` no longer the file the card's sha256 names (changed after release), no class
   names in the config, or an artifact whose own MODEL_VERSION/THRESHOLDS disagree with its
   directory and card; and a version whose card says it failed its release gate
   (`release_gate`, pipeline.model.release), naming the failed criteria, unless the deploy
   overrides the gate (`override_gate`: the entry and the audit record name the criteria);
   and a version without an approved validation report whose files are still the approved ones
   (pipeline.model.approval; an override does not waive it; a rollback is not refused, its entry
   records what the report lacks);
2. sets `version_policy` to the version and, when a Triton answers (``triton.url``, else the
   embedded server's ports), rebuilds that model's directory of the embedded server's derived
   repository and asks Triton to load the model (explicit model control). Triton loads the new
   version next to the old one and retires the old one when the new one is ready: requests keep
   being answered throughout, and each answer carries the version that produced it;
3. confirms Triton serves the version (a probe inference whose MODEL_VERSION is the version, and
   no other version of the model still ready); on any failure it restores the previous config,
   reloads it, and says why;
4. appends an entry to `deployments.jsonl` (UTC time, action, from, to, user, reason, outcome),
   failed attempts included: the history is append-only.

With no Triton running, only the repository changes; the version takes effect at the next start.
A rollback is a deploy of the version that was live before the current one, per the history.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.audit.record import os_user
from pipeline.core.hashing import sha256_file
from pipeline.model import repository as repo_mod
from pipeline.model.approval import report_problems
from pipeline.settings import Settings

CONTRACT_OUTPUTS = ("SCORE", "CLASS_PROBS", "THRESHOLDS", "MODEL_VERSION")
LOAD_TIMEOUT_S = 180.0
CONFIRM_TIMEOUT_S = 60.0
LOCK_FILE = ".deploy.lock"


class DeployError(RuntimeError):
    """A deploy or rollback that was refused or failed; the message says why."""


# ----------------------------------------------------------------------------- checks


def card_thresholds(card: dict[str, Any]) -> tuple[float | None, float | None]:
    t = card.get("thresholds")
    if isinstance(t, dict):
        review, reject = t.get("review"), t.get("reject")
        return (float(review) if review is not None else None, float(reject) if reject is not None else None)
    reject = card.get("reject_threshold")
    return (None, float(reject) if reject is not None else None)


def card_onnx_sha256(card: dict[str, Any]) -> str | None:
    onnx = card.get("onnx")
    if isinstance(onnx, dict) and onnx.get("sha256"):
        return str(onnx["sha256"])
    return card.get("onnx_sha256")


def gate_of(card: dict[str, Any]) -> dict[str, Any] | None:
    """The card's release-gate record, or None for a version released before release gating."""
    gate = card.get("release_gate")
    return gate if isinstance(gate, dict) else None


def gate_failures(card: dict[str, Any]) -> list[str]:
    """The criteria a version failed at release ([] when it passed or was released before gating)."""
    gate = gate_of(card)
    if gate is None:
        return []
    failed = [str(f) for f in gate.get("failed") or []]
    if gate.get("deployable") is not True and not failed:
        failed = ["the model card's release gate does not record the version as deployable"]
    return failed


def _artifact_problems(path: Path, version: int, card: dict[str, Any]) -> list[str]:
    """Run the artifact once (onnxruntime, zeros): contract outputs, its own version and thresholds."""
    import numpy as np
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any load failure is a refusal reason
        return [f"model.onnx does not load in onnxruntime: {exc}"]
    names = [o.name for o in session.get_outputs()]
    missing = [n for n in CONTRACT_OUTPUTS if n not in names]
    if missing:
        return [f"model.onnx lacks the contract output(s) {', '.join(missing)} (docs/models.md)"]
    inp = session.get_inputs()[0]
    shape = [1] + [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape[1:]]
    try:
        thresholds, model_version = session.run(
            ["THRESHOLDS", "MODEL_VERSION"], {inp.name: np.zeros(shape, dtype=np.float32)}
        )
    except Exception as exc:  # noqa: BLE001
        return [f"model.onnx fails on a probe input: {exc}"]
    problems = []
    if int(np.asarray(model_version).reshape(-1)[0]) != version:
        problems.append(
            f"model.onnx reports MODEL_VERSION {int(np.asarray(model_version).reshape(-1)[0])}, "
            f"but lives in version directory {version}"
        )
    review, reject = (float(x) for x in np.asarray(thresholds).reshape(-1)[:2])
    card_review, card_reject = card_thresholds(card)
    for name, served, carded in (("review", review, card_review), ("reject", reject, card_reject)):
        if carded is not None and abs(served - carded) > 1e-6:
            problems.append(f"model.onnx {name} threshold {served:.6g} differs from its card's {carded:.6g}")
    return problems


def deploy_problems(repo: Path, classifier: str, version: int) -> list[str]:
    """Why `version` of `classifier` may not be deployed ([] when it may)."""
    released = repo_mod.versions(repo, classifier)
    if version not in released:
        return [
            f"{classifier} has no version {version} "
            f"(released: {', '.join(map(str, released)) or 'none'}; a version is a directory with model.onnx)"
        ]
    try:
        card = repo_mod.read_card(repo, classifier, version)
    except (repo_mod.RepositoryError, ValueError) as exc:
        return [f"model card unreadable: {exc}"]
    problems: list[str] = []
    parity = card.get("parity")
    if not isinstance(parity, dict):
        problems.append("the model card has no parity record (ONNX vs original scores)")
    elif parity.get("passed") is not True:
        numbers = {k: v for k, v in parity.items() if "diff" in k or k == "tolerance"}
        said = "failed" if parity.get("passed") is False else "is not recorded as passed"
        problems.append(f"the ONNX/original parity check {said} ({json.dumps(numbers)})")
    onnx_path = repo_mod.version_dir(repo, classifier, version) / repo_mod.ONNX_FILE
    expected = card_onnx_sha256(card)
    actual = sha256_file(onnx_path)
    if not expected:
        problems.append("the model card records no ONNX sha256")
    elif actual != expected:
        problems.append(
            f"model.onnx sha256 {actual} is not the card's {expected}: the file changed after release"
        )
    config = repo_mod.read_config(repo, classifier)
    try:
        classes = repo_mod.classes_by_version(config)
    except repo_mod.RepositoryError as exc:
        problems.append(str(exc))
        classes = {}
    if version not in classes:
        problems.append(f"the config's 'classes' parameter has no entry for version {version}")
    if not problems:  # only a file that is the released one is worth running
        problems += _artifact_problems(onnx_path, version, card)
    return problems


# ----------------------------------------------------------------------------- triton


@dataclass
class TritonTarget:
    """The Triton a deploy talks to, and the derived repository of the embedded one."""

    url: str
    embedded: bool
    derived: Path
    control_headers: dict[str, str] = field(default_factory=dict)  # gRPC metadata of Triton's model control

    @classmethod
    def from_settings(cls, settings: Settings) -> TritonTarget:
        """The first Triton (`triton.url`, else the embedded server)."""
        return cls.every_replica(settings)[0]

    @classmethod
    def every_replica(cls, settings: Settings) -> list[TritonTarget]:
        """Every Triton the workers send requests to (`triton.url` and `triton.urls`, each once),
        else the embedded server: a deploy switches all of them, never one version per replica."""
        from pipeline.embedded.triton import model_control_key

        t = settings.triton
        key = model_control_key(settings)
        # tritonserver expects a restricted gRPC protocol's key under this prefix
        headers = {f"triton-grpc-protocol-{t.model_control_header}": key} if key else {}
        urls = t.replica_urls() or [f"127.0.0.1:{t.embedded_grpc_port}"]
        return [cls(url=u, embedded=not t.replica_urls(), derived=settings.state_dir / "triton_repo",
                    control_headers=headers) for u in urls]

    def client(self) -> Any:
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.url)

    def reachable(self) -> bool:
        from tritonclient.utils import InferenceServerException

        try:
            return bool(self.client().is_server_live(client_timeout=3.0))
        except (InferenceServerException, OSError):
            return False

    def ready_versions(self, model: str) -> list[int]:
        index = self.client().get_model_repository_index(headers=self.control_headers, as_json=True).get("models", [])
        return sorted(
            int(m["version"])
            for m in index
            if m.get("name") == model and m.get("state") == "READY" and str(m.get("version", "")).isdigit()
        )


def _probe_version(client: Any, model: str, version: int) -> int:
    """MODEL_VERSION answered by `model` for one all-zero input (version left to Triton)."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import triton_to_np_dtype

    config = client.get_model_config(model, as_json=True)["config"]
    inp = config["input"][0]
    dtype = inp["data_type"].removeprefix("TYPE_")
    dims = [int(d) if int(d) > 0 else 1 for d in inp.get("dims", [])]
    shape = ([1] if int(config.get("max_batch_size", 0)) > 0 else []) + dims
    tensor = grpcclient.InferInput(inp["name"], shape, dtype)
    tensor.set_data_from_numpy(np.zeros(shape, dtype=triton_to_np_dtype(dtype)))
    result = client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput("MODEL_VERSION")])
    return int(result.as_numpy("MODEL_VERSION").reshape(-1)[0])


def _switch(target: TritonTarget, source: Path, model: str, version: int) -> None:
    """Make Triton serve `version` of `model` from the repository as it is now on disk."""
    from pipeline.embedded.triton import rebuild_derived_model

    rebuild_derived_model(source, target.derived, model)
    client = target.client()
    client.load_model(model, headers=target.control_headers, client_timeout=LOAD_TIMEOUT_S)
    deadline = time.monotonic() + CONFIRM_TIMEOUT_S
    last = "no answer"
    while True:
        try:
            ready = target.ready_versions(model)
            answered = _probe_version(client, model, version)
            if ready == [version] and answered == version:
                return
            last = f"ready versions {ready}, a probe inference answered MODEL_VERSION {answered}"
        except Exception as exc:  # noqa: BLE001 - keep probing until the deadline
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise DeployError(f"Triton at {target.url} does not serve {model} version {version}: {last}")
        time.sleep(0.2)


# ----------------------------------------------------------------------------- deploy / rollback


@dataclass
class DeployResult:
    action: str
    product: str
    classifier: str
    from_version: int | None
    to_version: int
    triton: str  # what happened on the Triton side
    entry: dict[str, Any] = field(default_factory=dict)

    def to_text(self) -> str:
        head = f"{self.action}: {self.classifier} ({self.product}) version {self.from_version} -> {self.to_version}"
        return f"{head}\n  {self.triton}"


@contextlib.contextmanager
def _locked(repo: Path, classifier: str) -> Iterator[None]:
    """One deploy/rollback at a time per classifier (other processes wait)."""
    path = Path(repo) / classifier / LOCK_FILE
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def resolve_classifier(settings: Settings, product_or_model: str) -> tuple[str, str]:
    """(product id, classifier) from a product id, or from a classifier's own name."""
    repo = Path(settings.triton.model_repository)
    known = repo_mod.products(repo)
    if product_or_model in known:
        return known[product_or_model] or product_or_model, product_or_model
    models = repo_mod.product_models(repo, product_or_model, settings.stream.product_models)
    if models.classifier not in known:
        raise DeployError(
            f"no classifier for product {product_or_model!r} in {repo} "
            f"(looked for {models.classifier!r}; known: {', '.join(sorted(known)) or 'none'})"
        )
    return product_or_model, models.classifier


def live_history(entries: list[dict[str, Any]]) -> list[int]:
    """Live versions in order, from the deploy/rollback entries (a rollback retires the top)."""
    stack: list[int] = []
    for e in entries:
        # Values of the JSON log entries: untyped, converted with int() below.
        frm: Any
        to: Any
        action, frm, to = e.get("action"), e.get("from"), e.get("to")
        if action == "deploy":
            if not stack and frm is not None:
                stack.append(int(frm))
            if not stack or stack[-1] != int(to):
                stack.append(int(to))
        elif action == "rollback":
            if stack and stack[-1] == (int(frm) if frm is not None else None):
                stack.pop()
            if not stack or stack[-1] != int(to):
                stack.append(int(to))
    return stack


def rollback_target(repo: Path, classifier: str) -> int:
    config = repo_mod.read_config(repo, classifier)
    live = repo_mod.live_version(config)
    stack = live_history(repo_mod.deployments(repo, classifier))
    if len(stack) < 2:
        raise DeployError(
            f"nothing to roll back to: {repo_mod.deployments_path(repo, classifier)} records no earlier live version"
        )
    if stack[-1] != live:
        raise DeployError(
            f"the live version in {repo_mod.config_path(repo, classifier)} is {live}, but the deployment "
            f"history ends at {stack[-1]}: deploy the wanted version explicitly"
        )
    return stack[-2]


def deploy(
    settings: Settings, product: str, version: int, reason: str = "", action: str = "deploy",
    user: str | None = None, override_gate: bool = False,
) -> DeployResult:
    """Make `version` the live classifier version of `product` (see the module docstring).

    `override_gate`: deploy a version that failed its release gate (its failed criteria are
    recorded in the deployment entry as ``gate_override``); refused for a version that passed.
    """
    repo = Path(settings.triton.model_repository)
    product, classifier = resolve_classifier(settings, product)
    problems = deploy_problems(repo, classifier, version)
    if problems:
        raise DeployError(f"refusing to {action} {classifier} version {version}: " + "; ".join(problems))
    # A rollback returns to a version that was live before (through the gate or an audited override).
    failed = gate_failures(repo_mod.read_card(repo, classifier, version)) if action == "deploy" else []
    if failed and not override_gate:
        raise DeployError(
            f"refusing to {action} {classifier} version {version}: it failed its release gate ("
            + "; ".join(failed) + "): train a better version, or deploy this one anyway with --override-gate, "
            "a reason and a QA signature (audited with the failed criteria)"
        )
    if override_gate and not failed:
        raise DeployError(f"{classifier} version {version} passed its release gate (or predates gating): "
                          "there is nothing to override; deploy it without --override-gate")
    # Its approved validation report (docs/validation.md): a gate override does not replace it; a
    # rollback returns to a version that was live before and only records what its report lacks.
    unvalidated = report_problems(repo_mod.version_dir(repo, classifier, version),
                                  card_onnx_sha256(repo_mod.read_card(repo, classifier, version)))
    if unvalidated and action == "deploy":
        raise DeployError(f"refusing to {action} {classifier} version {version}: " + "; ".join(unvalidated))
    targets = TritonTarget.every_replica(settings)
    with _locked(repo, classifier):
        config_file = repo_mod.config_path(repo, classifier)
        previous_text = config_file.read_bytes()
        config = repo_mod.read_config(repo, classifier)
        previous = repo_mod.live_version(config)
        entry: dict[str, Any] = {
            "time_utc": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "action": action,
            "model": classifier,
            "product": product,
            "from": previous,
            "to": version,
            "user": user or os_user(),
            "reason": reason,
        }
        if failed:
            entry["gate_override"] = failed
        entry["validation_report"] = unvalidated or "approved"
        if previous == version and action == "deploy":
            return DeployResult(action, product, classifier, previous, version, f"version {version} is already live; nothing changed")
        repo_mod.set_live_version(config, version)
        repo_mod.write_config(repo, classifier, config)
        live = [t for t in targets if t.reachable()]
        down = [t.url for t in targets if t not in live]
        if not live:
            where = ", ".join(t.url for t in targets)
            outcome = f"no Triton answers at {where}: the repository is updated; version {version} takes effect at the next start"
            entry["triton"] = "not running"
            repo_mod.append_deployment(repo, classifier, entry)
            return DeployResult(action, product, classifier, previous, version, outcome, entry)
        switched: list[TritonTarget] = []
        try:
            for target in live:
                switched.append(target)
                _switch(target, repo, classifier, version)
        except Exception as exc:  # noqa: BLE001 - every failure restores the previous version everywhere
            why = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
            why = (why or type(exc).__name__).strip().splitlines()[0]  # Triton appends a traceback
            why = f"{switched[-1].url}: {why}" if len(targets) > 1 else why
            repo_mod.write_atomic(config_file, previous_text)
            restored = "previous config restored"
            for target in switched:
                try:
                    if previous is not None:
                        _switch(target, repo, classifier, previous)
                        restored += f"; Triton{' at ' + target.url if len(targets) > 1 else ''} serves version {previous} again"
                except Exception as again:  # noqa: BLE001
                    restored += f"; reloading version {previous} failed too: {again}"
            entry |= {"action": f"{action}-failed", "triton": f"failed: {why}; {restored}"}
            repo_mod.append_deployment(repo, classifier, entry)
            raise DeployError(f"{action} of {classifier} version {version} failed: {why} ({restored})") from exc
        serving = ", ".join(t.url for t in live)
        entry["triton"] = f"serving at {serving}" + (f"; not answering (loads it at start): {', '.join(down)}"
                                                     if down else "")
        repo_mod.append_deployment(repo, classifier, entry)
        outcome = f"Triton at {serving} serves version {version} (switched in place, no restart)" + (
            f"; {', '.join(down)} did not answer and loads it at its next start" if down else "")
        return DeployResult(action, product, classifier, previous, version, outcome, entry)


def rollback(settings: Settings, product: str, reason: str = "", user: str | None = None) -> DeployResult:
    """Return to the version that was live before the current one."""
    repo = Path(settings.triton.model_repository)
    product, classifier = resolve_classifier(settings, product)
    return deploy(settings, product, rollback_target(repo, classifier), reason, action="rollback", user=user)


# ----------------------------------------------------------------------------- list


@dataclass
class VersionRow:
    version: int
    mode: str | None
    review_threshold: float | None
    reject_threshold: float | None
    detection_rate: float | None
    false_reject_rate: float | None
    auroc: float | None
    created_utc: str | None
    live: bool
    served: bool | None  # None: Triton not reachable
    deployable: bool
    problems: list[str]
    gate: str = "not recorded"  # "passed", "failed", or "not recorded" (released before release gating)
    gate_failures: list[str] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)  # what its validation report lacks ([]: approved)


@dataclass
class ClassifierRow:
    classifier: str
    product: str
    ensemble: str
    live_version: int | None
    served_versions: list[int] | None
    triton: str
    versions: list[VersionRow]


def _metric(card: dict[str, Any], key: str) -> float | None:
    value = (card.get("validation") or {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def list_models(settings: Settings, check: bool = True) -> list[ClassifierRow]:
    repo = Path(settings.triton.model_repository)
    target = TritonTarget.from_settings(settings)
    reachable = target.reachable()
    rows: list[ClassifierRow] = []
    for classifier, product in sorted(repo_mod.products(repo).items()):
        if classifier.startswith("."):  # a training run's staging directory
            continue
        config = repo_mod.read_config(repo, classifier)
        live = repo_mod.live_version(config)
        try:
            ensemble = repo_mod.product_models(repo, product, settings.stream.product_models).ensemble if product else ""
        except repo_mod.RepositoryError:
            ensemble = ""
        served: list[int] | None = None
        if reachable:
            try:
                served = target.ready_versions(classifier)
                triton = f"Triton {target.url}: serving {', '.join(map(str, served)) or 'nothing'}"
            except Exception as exc:  # noqa: BLE001
                triton = f"Triton {target.url}: {exc}"
        else:
            triton = f"Triton {target.url}: not reachable"
        versions: list[VersionRow] = []
        for v in repo_mod.versions(repo, classifier):
            try:
                card = repo_mod.read_card(repo, classifier, v)
            except (repo_mod.RepositoryError, ValueError):
                card = {}
            review, reject = card_thresholds(card)
            problems = deploy_problems(repo, classifier, v) if check else []
            failed = gate_failures(card)
            unvalidated = report_problems(repo_mod.version_dir(repo, classifier, v), card_onnx_sha256(card)) if check else []
            gate = "not recorded" if gate_of(card) is None else ("failed" if failed else "passed")
            versions.append(
                VersionRow(
                    version=v,
                    mode=card.get("mode"),
                    review_threshold=review,
                    reject_threshold=reject,
                    detection_rate=_metric(card, "detection_rate"),
                    false_reject_rate=_metric(card, "false_reject_rate"),
                    auroc=_metric(card, "auroc"),
                    created_utc=card.get("created_utc"),
                    live=v == live,
                    served=(v in served) if served is not None else None,
                    deployable=not problems and not failed and not unvalidated,
                    problems=problems,
                    gate=gate,
                    gate_failures=failed,
                    validation=unvalidated,
                )
            )
        rows.append(ClassifierRow(classifier, product, ensemble, live, served, triton, versions))
    return rows


def listing_json(rows: list[ClassifierRow]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)


def listing_text(rows: list[ClassifierRow]) -> str:
    if not rows:
        return "no classifiers in the model repository"
    fmt = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
    out: list[str] = []
    for r in rows:
        out.append(f"{r.classifier}  product {r.product or '?'}, ensemble {r.ensemble or '?'}")
        out.append(f"  live in repository: {r.live_version if r.live_version is not None else 'none'}; {r.triton}")
        out.append(
            "  version  live  served  mode        review  reject  detection  FRR      AUROC   created (UTC)              deployable"
        )
        for v in r.versions:
            served = "?" if v.served is None else ("yes" if v.served else "")
            rate = lambda x: "-" if x is None else f"{100 * x:.2f} %"  # noqa: E731
            out.append(
                f"  {v.version:<7}  {'*' if v.live else '':<4}  {served:<6}  {v.mode or '-':<10}  "
                f"{fmt(v.review_threshold, '.4g'):<6}  {fmt(v.reject_threshold, '.4g'):<6}  "
                f"{rate(v.detection_rate):<9}  {rate(v.false_reject_rate):<7}  {fmt(v.auroc, '.4f'):<6}  "
                f"{v.created_utc or '-':<25}  {_deployable_text(v)}"
            )
        if not r.versions:
            out.append("  (no released versions)")
    return "\n".join(out)


def _deployable_text(v: VersionRow) -> str:
    """yes / no with every reason: release-gate failures first, then artifact problems."""
    if v.deployable:
        return "yes" + (" (release gate not recorded: released before gating)" if v.gate == "not recorded" else "")
    reasons = [f"release gate failed: {f}" for f in v.gate_failures] + v.problems + v.validation
    return "no: " + "; ".join(reasons)
