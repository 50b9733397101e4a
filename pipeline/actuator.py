"""Reject actuator: consumes reject commands, fires the gate once per unit, records each firing.

The gate driver is behind `RejectGate` so the line's real PLC driver plugs in without touching
the loop. Duplicate commands for a unit (redelivery, a fail-safe and a model reject) fire once.
Malformed commands are dead-lettered with their reason and never stop the actuator. Offsets are
committed only after the actuation records are confirmed by the broker.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from confluent_kafka import Message, Producer

from pipeline.consumer_loop import run_batches
from pipeline.health import HealthState
from pipeline.inspection import worker_id
from pipeline.kafka import flush_or_raise, make_consumer, make_producer
from pipeline.messages import Actuation, MessageError, RejectCommand, dead_letter_headers, now_ns
from pipeline.settings import Settings

log = logging.getLogger(__name__)


class RejectGate(Protocol):
    """Something that physically removes a unit from the line."""

    def fire(self, command: RejectCommand) -> int:
        """Remove the unit; return the fire time (epoch ns)."""
        ...


class SimulatedGate:
    """The gate of the simulated line: removing a unit is recording that it was removed."""

    def __init__(self) -> None:
        self.fired: list[str] = []

    def fire(self, command: RejectCommand) -> int:
        self.fired.append(command.unit_id)
        return now_ns()


class UnitMemory:
    """Bounded memory of units already fired (the table dedups beyond this window too)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._capacity = capacity

    def first_time(self, line: str, unit: str) -> bool:
        key = (line, unit)
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return True


class Actuator:
    def __init__(self, settings: Settings, gate: RejectGate, producer: Producer) -> None:
        self._kafka = settings.kafka
        self._line = settings.services.actuator_line
        self._gate = gate
        self._producer = producer
        self._memory = UnitMemory()
        self._name = f"actuator-{worker_id()}"
        self.fired = 0
        self.duplicates = 0
        self.dead_lettered = 0

    def handle(self, messages: Sequence[Message]) -> None:
        for m in messages:
            try:
                command = RejectCommand.from_json(m.value())
                if not command.unit_id:
                    raise MessageError("reject command without a unit")
            except MessageError as exc:
                self._dead_letter(m, str(exc))
                continue
            # A command whose line is unknown (a frame without metadata) is fired by every gate:
            # when in doubt, reject.
            if self._line and command.line and command.line != self._line:
                continue
            if not self._memory.first_time(command.line, command.unit_id):
                self.duplicates += 1
                continue
            fired_ns = self._gate.fire(command)
            self.fired += 1
            record = Actuation(
                unit_id=command.unit_id,
                line=command.line,
                lot=command.lot,
                cause=command.cause,
                defect=command.defect,
                capture_ns=command.capture_ns,
                command_issued_ns=command.issued_ns,
                fired_ns=fired_ns,
                actuator=self._name,
            )
            self._producer.produce(
                self._kafka.topic_actuations, key=command.unit_id.encode(), value=record.to_json()
            )
        flush_or_raise(self._producer, 30.0)

    def _dead_letter(self, m: Message, reason: str) -> None:
        log.warning("dead-lettering reject command at %s:%s:%s: %s", m.topic(), m.partition(), m.offset(), reason)
        self.dead_lettered += 1
        source = f"{m.topic()}:{m.partition()}:{m.offset()}"
        self._producer.produce(
            self._kafka.topic_deadletter,
            key=m.key(),
            value=m.value(),
            headers=dead_letter_headers(m.headers(), reason, "actuator", source),
        )


def run_actuator(settings: Settings, gate: RejectGate, stop: threading.Event, health: HealthState) -> None:
    producer = make_producer(settings.kafka, "linesight-actuator")
    actuator = Actuator(settings, gate, producer)
    consumer = make_consumer(settings.kafka, settings.services.actuator_group, "linesight-actuator")

    def handle(messages: Sequence[Message]) -> None:
        actuator.handle(messages)
        health.tick(fired=actuator.fired, duplicates=actuator.duplicates, dead_lettered=actuator.dead_lettered)

    run_batches(consumer, [settings.kafka.topic_rejects], handle, health, stop, max_batch=500)
