"""The Faust inspection worker: frames in, verdicts, reject commands and dead letters out.

Several workers share the frames topic as one consumer group. A batch is taken without
acknowledgement (`noack_take`), decided, its outputs are published and awaited until the broker
confirms them, and only then are its input events acked, so a crash never loses a frame whose
outputs were not written (Faust's plain `take` acks in a `finally` and would).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from faust.web import Request, Response, View

from pipeline.inference import TritonInspector
from pipeline.inspection import Frame, InspectionProcessor, Outgoing, worker_id
from pipeline.kafka import bootstrap
from pipeline.messages import now_ns
from pipeline.settings import Settings

log = logging.getLogger(__name__)


def _frame(event: Any) -> Frame:
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
    )


def create_app(settings: Settings) -> faust.App:
    """Build the worker app for these settings (no module-level configuration)."""
    stream = settings.stream
    app = faust.App(
        stream.app_id,
        broker=f"kafka://{bootstrap(settings.kafka)}",
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=settings.kafka.partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        topic_allow_declare=False,
        producer_acks=-1,
        producer_max_request_size=settings.kafka.max_message_bytes + 64 * 1024,
        consumer_max_fetch_size=8 * 1024 * 1024,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        web_enabled=True,
        web_port=stream.web_port,
        web_bind="0.0.0.0",
        datadir=str(settings.state_dir / "faust"),
    )
    frames = app.topic(settings.kafka.topic_frames, key_type=bytes, value_type=bytes)
    worker = worker_id()
    inspector: TritonInspector | None = None
    health: dict[str, Any] = {"batches": 0, "frames": 0, "last_batch_ns": 0}

    async def publish(outgoing: list[Outgoing]) -> None:
        producer = app.producer
        pending = [
            await producer.send(o.topic, o.key, o.value, None, None, o.headers) for o in outgoing
        ]
        await asyncio.gather(*pending)

    @app.agent(frames)
    async def inspect(events: faust.StreamT) -> None:
        nonlocal inspector
        if inspector is None:
            inspector = TritonInspector(settings.triton)
        processor = InspectionProcessor(settings, inspector, worker)
        async for batch in events.noack_take(stream.batch_size, within=stream.batch_window_s):
            outgoing = await processor.process([_frame(e) for e in batch])
            # Outputs must be confirmed by the broker before the inputs are acknowledged.
            await publish(outgoing)
            for event in batch:
                await events.ack(event)
            health["batches"] += 1
            health["frames"] += len(batch)
            health["last_batch_ns"] = now_ns()

    def status() -> dict[str, Any]:
        consumer = app.consumer
        assigned = sorted(f"{tp.topic}:{tp.partition}" for tp in consumer.assignment())
        ready = not app.rebalancing and bool(assigned)
        return {"service": "worker", "worker": worker, "ready": ready, "assigned": assigned} | health

    @app.page("/healthz")
    class Health(View):
        """Liveness: the worker's event loop answers."""

        async def get(self, request: Request) -> Response:
            return self.json(status())

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
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
