"""The embedded stack: the real broker and inference server a LineSight process starts itself.

Why: on a laptop or CI machine without Docker or a GPU, every service still talks to a real
Kafka-protocol broker (Tansu) and a real Triton (the CPU tritonserver), never to fakes. Whatever
has an external address in the settings is used as is; whatever does not is started here, and
the settings handed back carry the resolved addresses, so the rest of the code only ever sees a
complete `Settings`. ClickHouse is not started here: chDB runs inside the process that owns it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Protocol

from pipeline.embedded.broker import TansuBroker
from pipeline.embedded.triton import TritonServer
from pipeline.kafka.topics import ensure_topics
from pipeline.settings import Settings

log = logging.getLogger(__name__)


class _Service(Protocol):
    def stop(self) -> None: ...


def _announce_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class EmbeddedStack:
    """Start what the settings leave unset; ``with EmbeddedStack(s) as resolved: ...``."""

    def __init__(
        self,
        settings: Settings,
        *,
        with_kafka: bool = True,
        with_triton: bool = True,
        announce: Callable[[str], None] = _announce_stderr,
    ) -> None:
        self.settings = settings
        self.with_kafka = with_kafka
        self.with_triton = with_triton
        self.announce = announce
        self.broker: TansuBroker | None = None
        self.triton: TritonServer | None = None
        self.resolved: Settings | None = None
        self._started: list[tuple[str, _Service]] = []

    def start(self) -> Settings:
        """Start the missing services, create topics; return settings with every address set."""
        if self.resolved is not None:
            return self.resolved
        s = self.settings
        kafka, triton = s.kafka, s.triton
        try:
            if self.with_kafka:
                if kafka.bootstrap_servers:
                    self._say(f"kafka: external {kafka.bootstrap_servers}")
                else:
                    self.broker = TansuBroker(s)
                    self.broker.start()
                    self._started.append(("kafka", self.broker))
                    kafka = kafka.model_copy(update={"bootstrap_servers": self.broker.bootstrap_servers})
                    self._say(
                        f"kafka: embedded Tansu at {self.broker.bootstrap_servers} "
                        f"(memory storage, ready in {self.broker.startup_s:.2f} s, log {self.broker.log_path})"
                    )
                ensure_topics(s.model_copy(update={"kafka": kafka}))
            if self.with_triton:
                if triton.url:
                    self._say(f"triton: external {triton.url}")
                else:
                    self.triton = TritonServer(s)
                    self.triton.start()
                    self._started.append(("triton", self.triton))
                    triton = triton.model_copy(update={"url": self.triton.grpc_url})
                    self._say(
                        f"triton: embedded tritonserver at {self.triton.grpc_url} (gRPC), "
                        f"{self.triton.http_url} (HTTP), models {', '.join(self.triton.models) or 'none'}, "
                        f"ready in {self.triton.startup_s:.1f} s, log {self.triton.log_path}"
                    )
        except BaseException:
            try:
                self.stop()
            except BaseException:  # noqa: BLE001 - the start failure is the error to report
                log.exception("cleanup after a failed embedded stack start failed")
            raise
        self.resolved = s.model_copy(update={"kafka": kafka, "triton": triton})
        return self.resolved

    def stop(self) -> None:
        """Stop what was started, in reverse order; every stop is attempted."""
        errors: list[BaseException] = []
        while self._started:
            name, service = self._started.pop()
            try:
                service.stop()
            except BaseException as exc:  # noqa: BLE001 - keep stopping the others
                log.exception("stopping embedded %s failed", name)
                errors.append(exc)
        self.resolved = None
        if errors:
            raise errors[0]

    def _say(self, line: str) -> None:
        log.debug(line)
        self.announce(line)

    def __enter__(self) -> Settings:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
