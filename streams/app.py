"""The Faust inspection worker: frames in, verdicts, reject commands and dead letters out.

Several workers share the frames topic as one consumer group. Frames are consumed without
acknowledgement (`noack`) and batched adaptively, with several batches in flight
(`streams.inflight`); a batch is decided, its outputs are published and awaited until the broker
confirms them, and only then, and only after every earlier batch's, are its input events acked,
so a crash never loses a frame whose outputs were not written (Faust's plain `take` acks in a
`finally` and would).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

import faust
from faust.web import Request, Response, View
from PIL import Image
from tritonclient.grpc.aio import InferenceServerClient as TritonClient

from pipeline.core.health import serve_metrics, worker_id
from pipeline.core.logs import logging_config
from pipeline.core.metrics import Metrics
from pipeline.core.times import now_ns
from pipeline.kafka.clients import bootstrap
from pipeline.kafka.lag import LagGauge
from pipeline.kafka.partitioning import every_partition
from pipeline.kafka.security import faust_credentials
from pipeline.recipes.book import RecipeBook, RecipeFeed, load_defaults
from pipeline.recipes.schema import Recipe
from pipeline.settings import Settings
from pipeline.wire.codec import encode_png
from pipeline.wire.messages import Heartbeat
from streams.inflight import InFlight
from streams.processor import Frame, InspectionProcessor, Outgoing
from streams.routing import recipe_steps
from streams.stage_times import StageTimes
from streams.transport import use_fetch_wait
from streams.triton_client import TritonInspector

log = logging.getLogger(__name__)


def _broker_ns(timestamp_s: float | None) -> int | None:
    """The message's broker time (Kafka create or log-append time; Faust gives seconds from the
    record's milliseconds) in epoch ns, or None when the record has none."""
    if not timestamp_s or timestamp_s <= 0:
        return None
    return round(timestamp_s * 1000) * 1_000_000


def _frame(event: Any) -> Frame:
    """The frame as the processor judges it. Its capture time is checked against the broker time,
    not the receive time: a backlog consumed hours late (after an outage) is still inspected and
    recorded, while a capture time far from when the frame was published is refused."""
    message = event.message
    headers = message.headers or []
    if isinstance(headers, dict):
        headers = list(headers.items())
    return Frame(
        key=message.key,
        value=message.value,
        headers=list(headers),
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        received_ns=now_ns(),
        timestamp_ns=_broker_ns(getattr(message, "timestamp", None)),
    )


class ModelReadiness(Protocol):
    """What the heartbeat asks Triton (tritonclient.grpc.aio's client answers it)."""

    async def is_server_ready(self) -> bool: ...

    async def is_model_ready(self, model_name: str) -> bool: ...

    async def get_model_config(self, model_name: str, as_json: bool = ...) -> Any: ...


def routed_models(product_models: dict[str, str], book: RecipeBook) -> set[str]:
    """Every model this worker may send a frame to: the products' models and the lines' recipes'."""
    recipes = [r for r in book.lines().values() if isinstance(r, Recipe)]
    return set(product_models.values()) | {step.model for r in recipes for step in recipe_steps(r)}


async def models_ready(client: ModelReadiness, models: Iterable[str]) -> bool:
    """Triton is ready for this worker only when every model it routes to is, and every model
    inside those ensembles: an unloaded classifier must raise the watchdog's fail-safe alarm,
    which a server-liveness probe never did."""
    if not await client.is_server_ready():
        return False
    todo, seen = sorted(models), set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        if not await client.is_model_ready(model):
            return False
        config = (await client.get_model_config(model, as_json=True)).get("config", {})
        todo += [str(step["model_name"]) for step in config.get("ensemble_scheduling", {}).get("step", [])]
    return True


# (topic, key, value, headers, partition or None) -> a future resolved by the broker's acknowledgement.
Send = Callable[[str, bytes | None, bytes | None, list[tuple[str, bytes]], int | None], Awaitable["asyncio.Future[Any]"]]


async def publish_acknowledged(send: Send, outgoing: list[Outgoing], retry_s: float = 0.5,
                               give_up_s: float = 60.0) -> None:
    """Send a batch's outputs and wait until the broker acknowledged every one.

    Why retry: a broker that restarted without its state (the embedded Tansu) fails sends in
    flight (aiokafka's UnknownError, not ready), and an exception here would end the Faust agent
    for good while the worker's heartbeat goes on, so its partitions would never be inspected
    again. The failed outputs are sent again (at least once: consumers are idempotent) until
    ``give_up_s``; then the error ends the agent loudly. The inputs are acknowledged only after.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_s
    todo = outgoing
    while True:
        results: list[Any] = []
        for o in todo:
            try:
                results.append(await send(o.topic, o.key, o.value, o.headers, o.partition))
            except Exception as exc:  # noqa: BLE001 - refused before queueing: retried like a failed send
                results.append(exc)
        futures = [r for r in results if not isinstance(r, BaseException)]
        acked = iter(await asyncio.gather(*futures, return_exceptions=True))
        outcomes = [r if isinstance(r, BaseException) else next(acked) for r in results]
        failed = [(o, r) for o, r in zip(todo, outcomes, strict=True) if isinstance(r, BaseException)]
        if not failed:
            return
        if loop.time() >= deadline:
            raise failed[0][1]
        log.warning("%d of %d outputs not acknowledged (%r): sending them again", len(failed), len(todo), failed[0][1])
        await asyncio.sleep(retry_s)
        todo = [o for o, _ in failed]


def create_app(settings: Settings) -> faust.App:
    """Build the worker app for these settings (no module-level configuration)."""
    stream = settings.stream
    use_fetch_wait(stream.fetch_max_wait_ms)
    datadir = settings.state_dir / "faust"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        stream.app_id,
        broker=f"linesight://{bootstrap(settings.kafka)}",
        # SASL/SCRAM and TLS as every confluent-kafka client has them (pipeline.kafka.security).
        broker_credentials=faust_credentials(settings.kafka),
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=settings.kafka.partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        topic_allow_declare=False,
        # No standby replicas (the worker keeps no tables): with Faust's default of 1 its
        # assignor is sticky up to ceil(partitions / workers) per worker, so a worker joining a
        # running group (2 workers on 4 partitions, then a third) got no partitions at all.
        table_standby_replicas=0,
        producer_acks=-1,
        producer_linger=stream.producer_linger_ms / 1000,
        producer_max_request_size=settings.kafka.max_message_bytes + 64 * 1024,
        consumer_max_fetch_size=8 * 1024 * 1024,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        # Tansu completes a group join after about half the session timeout (see
        # docs/embedded-stack notes): keep it short so workers join and rebalance in seconds.
        broker_session_timeout=settings.kafka.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(0.5, settings.kafka.session_timeout_ms / 6000),
        broker_rebalance_timeout=settings.kafka.session_timeout_ms / 1000,
        web_enabled=True,
        web_port=stream.web_port,
        web_bind=stream.web_host,
        datadir=str(datadir),
    )
    frames = app.topic(settings.kafka.topic_frames, key_type=bytes, value_type=bytes)
    worker = worker_id()
    # Every line's recipe: the configured start recipes, then every activation on the topic.
    recipes = RecipeBook()
    # Models are checked against the repository where the worker has it (embedded stack); a
    # production worker does not mount it, and Triton answers for the models instead.
    repo = settings.triton.model_repository
    load_defaults(settings, recipes, repo if repo.is_dir() else None)
    feed: RecipeFeed | None = None
    inspector: TritonInspector | None = None
    health: dict[str, Any] = {"batches": 0, "frames": 0, "last_batch_ns": 0, "warm": False}
    times = StageTimes()
    # Prometheus (docs/observability.md): /metrics on the web server below, and on
    # stream.metrics_port when set (compose: the web server's other pages stay on loopback).
    metrics = Metrics()
    frames_done = metrics.counter("linesight_frames")
    batch_sizes = metrics.histogram("linesight_batch_size").labels("inspect")
    stage_seconds = metrics.histogram("linesight_worker_stage_seconds")
    lag = LagGauge(metrics.gauge("linesight_consumer_lag"), stream.app_id)

    async def send(topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
                   partition: int | None) -> Any:
        return await app.producer.send(topic, key, value, partition, None, headers)

    async def warm_up(scorer: TritonInspector) -> None:
        """First inferences load lazily (gRPC channel, backend stubs): take that cost before
        frames wait on it. Triton being down is not fatal here: frames then fail safe."""
        image = encode_png(Image.new("RGB", (64, 64), (90, 90, 90)))
        try:
            await scorer.warm_up(sorted(set(stream.product_models.values())), image)
        except Exception as exc:  # noqa: BLE001
            log.warning("inference warm-up failed (%s); frames will fail safe until it recovers", exc)
        health["warm"] = True

    def observe_batch(frames: list[Frame], decided_ns: int, done_ns: int) -> None:
        frames_done.inc(len(frames))
        batch_sizes.observe(len(frames))
        fetch, decide = stage_seconds.labels("broker_to_worker"), stage_seconds.labels("worker_to_decided")
        for f in frames:
            if f.timestamp_ns:
                fetch.observe(max(0, f.received_ns - f.timestamp_ns) / 1e9)
            decide.observe(max(0, decided_ns - f.received_ns) / 1e9)
        stage_seconds.labels("decided_to_confirmed").observe((done_ns - decided_ns) / 1e9)

    @app.agent(frames)
    async def inspect(events: faust.StreamT) -> None:
        nonlocal inspector, feed
        if feed is None:
            feed = RecipeFeed(settings, recipes).start()
            # Judge no frame before the activations already on the topic are known.
            if not await asyncio.to_thread(feed.wait_caught_up, 15.0):
                log.warning("recipe activations not read within 15 s; lines use their start recipes meanwhile")
        if inspector is None:
            inspector = TritonInspector(settings.triton)
            await warm_up(inspector)
        processor = InspectionProcessor(settings, inspector, worker, recipes, metrics=metrics)

        async def work(batch: Sequence[Any]) -> None:
            frames = [_frame(e) for e in batch]
            outgoing = await processor.process(frames)
            decided_ns = now_ns()
            # Outputs must be confirmed by the broker before the inputs are acknowledged.
            await publish_acknowledged(send, outgoing)
            done_ns = now_ns()
            times.batch([f.received_ns for f in frames], [f.timestamp_ns for f in frames], decided_ns, done_ns)
            observe_batch(frames, decided_ns, done_ns)

        async def ack(batch: Sequence[Any]) -> None:
            for event in batch:
                await manual.ack(event)
            health["batches"] += 1
            health["frames"] += len(batch)
            health["last_batch_ns"] = now_ns()

        # Several batches in flight, acked in the order taken (streams.inflight).
        flight: InFlight[Any] = InFlight(work, ack, stream.batch_size, stream.max_in_flight)
        # Acks are ours (in order, after the outputs are confirmed); faust.Stream has noack, StreamT does not declare it.
        manual: Any = events.noack()  # type: ignore[attr-defined]
        try:
            async for _ in manual:
                await flight.add(manual.current_event)
        finally:
            # A stopping worker lets its batches finish so their offsets are committed; a
            # killed one leaves them unacknowledged and they are consumed again.
            try:
                await flight.drain(timeout_s=10.0)
            except Exception as exc:  # noqa: BLE001 - the agent's own error (if any) is the one to raise
                log.warning("batches in flight at stop not all acknowledged: %r", exc)

    probes: list[TritonClient] = []
    heartbeat_topic = settings.kafka.topic_heartbeats
    wd = settings.watchdog

    @app.timer(wd.heartbeat_interval_s)
    async def heartbeat() -> None:
        """Tell the reject actuator's watchdog this worker runs, and whether it can reach Triton
        (any one replica with every routed model ready: requests fail over to it)."""
        if not probes:
            probes.extend(TritonClient(url) for url in settings.triton.replica_urls() or [""])
        models = routed_models(stream.product_models, recipes)

        async def probe_one(probe: TritonClient) -> bool:
            try:
                return await asyncio.wait_for(models_ready(probe, models), wd.triton_probe_timeout_s)
            except Exception as exc:  # noqa: BLE001 - unreachable or slow Triton: report it, keep beating
                log.debug("Triton readiness probe failed: %s", exc)
                return False

        # All replicas at once: a hung one must not delay the beat past the watchdog's timeout.
        triton_ready = any(await asyncio.gather(*(probe_one(p) for p in probes)))
        health["triton_ready"] = triton_ready
        beat = Heartbeat(worker, "worker", now_ns(), triton_ready, f"frames={health['frames']}").to_json()
        # To every partition: a per-line actuator reads only its line's (pipeline.kafka.partitioning).
        for partition in every_partition(settings.kafka):
            await app.producer.send(heartbeat_topic, worker.encode(), beat, partition, None, None)

    @app.timer(5.0)
    async def consumer_lag() -> None:
        """Frames behind each assigned partition's high watermark (aiokafka's cached one, from the
        last fetch) at the consumer's fetch position; batches in flight are not counted. An error
        (a rebalance under way) skips the round: a metric must not end the worker's timer."""
        consumer = app.consumer
        lags: dict[tuple[str, int], int] = {}
        try:
            for tp in consumer.assignment():
                if tp.topic != settings.kafka.topic_frames:
                    continue
                position, high = await consumer.position(tp), consumer.highwater(tp)
                if position is not None and high is not None and position >= 0:
                    lags[(tp.topic, tp.partition)] = max(0, high - position)
        except Exception as exc:  # noqa: BLE001 - aiokafka's IllegalStateError and the like
            log.debug("consumer lag not read: %s", exc)
            return
        lag.update(lags)

    if stream.metrics_port:
        @app.task
        async def metrics_listener() -> None:
            serve_metrics(metrics, stream.metrics_port, settings.services.health_host, "worker")

    def status() -> dict[str, Any]:
        consumer = app.consumer
        assigned = sorted(f"{tp.topic}:{tp.partition}" for tp in consumer.assignment())
        ready = not app.rebalancing and bool(assigned) and bool(health.get("warm"))
        lines = {line: getattr(r, "ref", f"refused: {getattr(r, 'reason', '')}") for line, r in recipes.lines().items()}
        return ({"service": "worker", "worker": worker, "ready": ready, "assigned": assigned, "recipes": lines}
                | health | {"timing": times.summary()})

    @app.page("/healthz")
    class Health(View):
        """Liveness: the worker's event loop answers."""

        async def get(self, request: Request) -> Response:
            return self.json(status())

    @app.page("/metrics")
    class MetricsPage(View):
        """Prometheus text format (pipeline.core.metrics)."""

        async def get(self, request: Request) -> Response:
            body, content_type = metrics.exposition()
            # aiohttp refuses a content_type argument with a charset in it: as a header instead.
            return self.bytes(body, headers={"Content-Type": content_type})

    @app.page("/readyz")
    class Ready(View):
        """Readiness: partitions assigned and no rebalance in progress."""

        async def get(self, request: Request) -> Response:
            body = status()
            return self.json(body, status=200 if body["ready"] else 503)

    return app


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run one worker in the foreground until stopped (SIGTERM/SIGINT)."""
    app = create_app(settings)
    # Faust replaces the root logger's handlers: give it ours when logs are JSON (else its own).
    config = logging_config(settings.log.format, "worker", loglevel) if settings.log.format == "json" else None
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, logging_config=config)
    worker.execute_from_commandline()
