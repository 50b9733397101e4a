"""The shadow scorer: a candidate classifier version judges the live frames beside the live one.

It is a process of its own with its own Kafka consumer group on the frames topic, so it can never
delay the live worker, commit offsets for it, or publish on its topics: the worker and the
actuator read the frames exactly as they would without it. It publishes only `ShadowVerdict`s
on ``kafka.topic_shadow`` (stored apart, in ``shadow_inspections``; nothing acts on them).

Per batch (the commit-after-write loop of `pipeline.kafka.commit_loop`): frames of the shadowed
product that are production units (a challenge unit, ``ls-purpose: challenge``, is QA evidence
for the live judge and is skipped; so are frames of other products and frames whose metadata
the live worker would refuse) are scored through the live ensemble's steps with the classifier
step on ``<classifier>__shadow`` (`pipeline.model.shadow`), judged at the candidate's own
thresholds (`verdict_for`, the worker's rule), published, flushed, and only then committed.
A redelivered frame is published again with the same unit id; the sink's table dedups it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import tritonclient.grpc as grpcclient
from confluent_kafka import Message
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from pipeline.core.health import HealthState
from pipeline.core.times import now_ns
from pipeline.kafka.clients import client_config, flush_or_raise, make_consumer, make_producer
from pipeline.kafka.commit_loop import run_batches
from pipeline.model.deploy import DeployError
from pipeline.model.repository import CLASSES_PARAM
from pipeline.model.shadow import ShadowModels, load_shadow
from pipeline.settings import Settings
from pipeline.wire.messages import PURPOSE_CHALLENGE, FrameMeta, MessageError
from pipeline.wire.shadow import ShadowVerdict
from streams.triton_client import Failed, Scored, parse_classes

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 30.0
# A Triton that restarted forgets the shadow model (it was never in its repository): the shadow
# loads it again, at most this often, and the frames scored meanwhile are stored as `failed`.
RELOAD_INTERVAL_S = 10.0


def shadow_group(models: ShadowModels) -> str:
    """The shadow's own consumer group: one per candidate, never the worker's."""
    return f"linesight-shadow-{models.classifier}-v{models.version}"


@dataclass(frozen=True)
class _Frame:
    meta: FrameMeta
    image: bytes


class ShadowScorer:
    """Runs the live ensemble's steps with the shadow classifier, a batch per request each."""

    def __init__(self, url: str, models: ShadowModels, timeout_s: float = 30.0, max_message_bytes: int = 64 << 20) -> None:
        self.models = models
        self._timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(url, channel_args=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ])
        self._dtypes: dict[tuple[str, str], str] = {}  # (model, input) -> Triton data type
        self._classes: dict[int, tuple[str, ...]] = {}

    def _input_type(self, model: str, name: str) -> str:
        if (model, name) not in self._dtypes:
            config = self._client.get_model_config(model, as_json=True)["config"]
            for tensor in config.get("input", []):
                dtype = tensor["data_type"].removeprefix("TYPE_")
                self._dtypes[(model, tensor["name"])] = "BYTES" if dtype == "STRING" else dtype  # config vs wire name
            if model == self.models.shadow_classifier:
                raw = config.get("parameters", {}).get(CLASSES_PARAM, {}).get("string_value")
                self._classes = parse_classes(raw)
        return self._dtypes[(model, name)]

    def _run(self, images: list[bytes]) -> dict[str, np.ndarray]:
        tensors: dict[str, np.ndarray] = {"IMAGE": np.array(images, dtype=np.object_).reshape(len(images), 1)}
        for step in self.models.steps:
            inputs = []
            for model_in, ens in step.inputs:
                dtype = self._input_type(step.model, model_in)
                arr = tensors[ens] if dtype == "BYTES" else tensors[ens].astype(triton_to_np_dtype(dtype), copy=False)
                tensor = grpcclient.InferInput(model_in, list(arr.shape), dtype)
                tensor.set_data_from_numpy(arr)
                inputs.append(tensor)
            answer = self._client.infer(step.model, inputs, client_timeout=self._timeout_s,
                                        outputs=[grpcclient.InferRequestedOutput(o) for o, _ in step.outputs])
            for model_out, ens in step.outputs:
                value = answer.as_numpy(model_out)
                if value is None:
                    raise InferenceServerException(f"{step.model} returned no {model_out}")
                tensors[ens] = value
        return tensors

    def _rows(self, images: list[bytes]) -> list[Scored | Failed]:
        t = self._run(images)
        n = len(images)
        scores, probs = t["SCORE"].reshape(n), t["CLASS_PROBS"].reshape(n, -1)
        thresholds, versions = t["THRESHOLDS"].reshape(n, 2), t["MODEL_VERSION"].reshape(n)
        names = self._classes.get(self.models.version, ())
        out: list[Scored | Failed] = []
        for s, p, (review, reject), v in zip(scores, probs, thresholds, versions, strict=True):
            if not (np.isfinite(s) and np.isfinite(review) and np.isfinite(reject)) or review > reject:
                out.append(Failed(f"model output out of contract: score {s}, thresholds [{review}, {reject}]"))
                continue
            labels = names if len(names) == len(p) else ("good", *(f"class_{i}" for i in range(1, len(p))))
            out.append(Scored(float(s), dict(zip(labels, (float(x) for x in p), strict=True)),
                              float(review), float(reject), int(v), self.models.classifier))
        return out

    def score(self, images: list[bytes]) -> list[Scored | Failed]:
        """A batch; when it fails, each frame alone, so a bad frame costs only its own row."""
        if not images:
            return []
        try:
            return self._rows(images)
        except InferenceServerException as exc:
            if len(images) == 1:
                return [Failed(f"triton: {exc.message() or exc}")]
        out: list[Scored | Failed] = []
        for image in images:
            try:
                out += self._rows([image])
            except InferenceServerException as exc:
                out.append(Failed(f"triton: {exc.message() or exc}"))
        return out

    def close(self) -> None:
        self._client.close()


def _broker_ns(m: Message) -> int | None:
    kind, ms = m.timestamp()
    return ms * 1_000_000 if ms and ms > 0 else None


def running_elsewhere(settings: Settings, models: ShadowModels, timeout_s: float = 10.0) -> str | None:
    """Why a shadow of this version is already running (its group has live members), else None.

    Two shadows of one version would share its group and its model: the first to stop would
    unload the model under the other. A member killed with SIGKILL keeps the group alive until
    the broker's session timeout drops it (Apache Kafka; the embedded Tansu 0.6 keeps reporting such a
    group as stable, so `linesight models shadow --force` goes on). Unknown (the broker cannot say):
    None."""
    from confluent_kafka.admin import AdminClient

    group = shadow_group(models)
    try:
        admin = AdminClient(client_config(settings.kafka))
        described = admin.describe_consumer_groups([group], request_timeout=timeout_s)[group].result()
    except Exception as exc:  # noqa: BLE001 - a broker that cannot describe groups: not known
        log.warning("could not describe consumer group %s: %s", group, exc)
        return None
    state = getattr(described.state, "name", str(described.state))
    if state in ("EMPTY", "DEAD", "UNKNOWN"):
        return None
    return (f"a shadow of {models.classifier} version {models.version} is running (consumer group {group} is "
            f"{state}); stop it first, or, if it was killed, retry after the broker's session timeout "
            f"({settings.kafka.session_timeout_ms / 1000:g} s)")


def _model_missing(reason: str) -> bool:
    text = reason.lower()
    return "unknown model" in text or "not found" in text


def production_frames(messages: Sequence[Message], product: str) -> list[_Frame]:
    """The frames a shadow scores: production units of its product, with metadata the live
    worker accepts (a refused frame is the worker's to dead-letter and fail-safe reject; a
    challenge unit is QA evidence for the live judge; another product is not this model's)."""
    frames: list[_Frame] = []
    for m in messages:
        headers = cast("list[tuple[str, bytes | None]]", m.headers() or [])
        try:
            meta = FrameMeta.from_headers(headers, ref_ns=_broker_ns(m))
        except MessageError:
            continue
        if meta.product == product and meta.purpose != PURPOSE_CHALLENGE and m.value():
            frames.append(_Frame(meta, m.value() or b""))
    return frames


def to_verdict(frame: _Frame, outcome: Scored | Failed, models: ShadowModels, shadow_id: str) -> ShadowVerdict:
    meta = frame.meta
    common: dict[str, Any] = dict(
        unit_id=meta.unit_id, line=meta.line, camera=meta.camera, station=meta.station, product=meta.product,
        lot=meta.lot, model_name=models.classifier, model_version=models.version,
        live_version=models.live_version, capture_ns=meta.capture_ns, scored_ns=now_ns(), shadow_id=shadow_id,
    )
    if isinstance(outcome, Failed):
        return ShadowVerdict(verdict="failed", defect="", score=None, review_threshold=None,
                             reject_threshold=None, error=outcome.reason, **common)
    verdict = outcome.verdict
    return ShadowVerdict(verdict=verdict, defect="none" if verdict == "pass" else outcome.defect,
                         score=outcome.score, review_threshold=outcome.review_threshold,
                         reject_threshold=outcome.reject_threshold, **common)


@dataclass
class ShadowCounts:
    scored: int = 0
    failed: int = 0
    skipped: int = 0


class ShadowService:
    """Consume frames in the shadow's own group, score, publish; commit after the broker acked."""

    def __init__(self, settings: Settings, models: ShadowModels, url: str) -> None:
        self.settings = settings
        self.models = models
        self.shadow_id = f"{socket.gethostname()}-{now_ns()}"
        self.scorer = ShadowScorer(url, models, timeout_s=settings.triton.request_timeout_s)
        self.producer = make_producer(settings.kafka, "linesight-shadow")
        self.counts = ShadowCounts()
        self.seconds_scoring = 0.0
        self.reloads = 0
        self._last_reload = 0.0

    def handle(self, messages: Sequence[Message]) -> None:
        frames = production_frames(messages, self.models.product)
        self.counts.skipped += len(messages) - len(frames)
        if not frames:
            return
        started = time.perf_counter()
        outcomes = self.scorer.score([f.image for f in frames])
        self.seconds_scoring += time.perf_counter() - started
        topic = self.settings.kafka.topic_shadow
        for frame, outcome in zip(frames, outcomes, strict=True):
            verdict = to_verdict(frame, outcome, self.models, self.shadow_id)
            self.producer.produce(topic, key=verdict.unit_id.encode(), value=verdict.to_json())
            if isinstance(outcome, Failed):
                self.counts.failed += 1
            else:
                self.counts.scored += 1
        flush_or_raise(self.producer, FLUSH_TIMEOUT_S)
        if any(isinstance(o, Failed) and _model_missing(o.reason) for o in outcomes):
            self._reload()

    def _reload(self) -> None:
        """Load the shadow model again (Triton restarted); a failure is logged, tried again later."""
        if time.monotonic() - self._last_reload < RELOAD_INTERVAL_S:
            return
        self._last_reload = time.monotonic()
        try:
            load_shadow(self.settings, self.models)
            self.reloads += 1
            log.warning("Triton had lost %s: loaded it again", self.models.shadow_classifier)
        except DeployError as exc:
            log.warning("reloading %s failed: %s", self.models.shadow_classifier, exc)

    def run(self, stop: threading.Event, health: HealthState) -> None:
        """Until `stop`: a consumer of its own group, starting at the newest frames."""
        k, s = self.settings.kafka, self.settings.stream
        consumer = make_consumer(k, shadow_group(self.models), "linesight-shadow", **{"auto.offset.reset": "latest"})
        try:
            run_batches(consumer, [k.topic_frames], self.handle, health, stop,
                        max_batch=max(1, s.batch_size), max_wait_s=s.batch_window_s)
        finally:
            self.producer.flush(5.0)
            self.scorer.close()
