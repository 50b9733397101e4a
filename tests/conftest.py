"""Shared fixtures: real embedded services, started once per test session on random free ports.

* ``embedded_settings``: `Settings` with a temporary ``state_dir`` and free embedded ports.
* ``broker``: a started Tansu broker; yields its bootstrap string (``127.0.0.1:PORT``).
  Memory storage: topics exist only for this session.
* ``triton_server``: a started `TritonServer` serving the project's ``triton_models``
  (skips, with the reason, when the models are not trained yet: run ``make model``).
* ``e2e_settings`` / ``running`` (per module): the whole pipeline (workers, sink, actuator,
  alerts, dashboard, simulated PLC) on the session's broker, Triton and chDB.
* ``chdb_client``: a `ChdbClient` on ``embedded_settings.chdb_dir`` with the schema applied to
  ``embedded_settings.clickhouse.database``. chDB allows ONE data directory per process: open
  further clients with ``connect(embedded_settings)`` (same directory), never another path.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import LIVE_TABLET_MODEL

from pipeline.clickhouse import ChdbClient, ClickHouseClient
from pipeline.demo import pipeline_stack
from pipeline.embedded.broker import TansuBroker
from pipeline.embedded.process import free_port
from pipeline.embedded.triton import ModelNotTrainedError, TritonServer
from pipeline.runtime import Services
from pipeline.settings import Settings


@pytest.fixture(scope="session")
def embedded_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    base = Settings()
    return base.model_copy(
        update={
            "state_dir": tmp_path_factory.mktemp("linesight-state"),
            "kafka": base.kafka.model_copy(update={"bootstrap_servers": None, "embedded_port": free_port()}),
            "triton": base.triton.model_copy(
                update={
                    "url": None,
                    "embedded_http_port": free_port(),
                    "embedded_grpc_port": free_port(),
                    "embedded_metrics_port": free_port(),
                }
            ),
            "clickhouse": base.clickhouse.model_copy(update={"url": None}),
            # The gate's PLC: the embedded simulator (`pipeline.plc.embedded`) on a free port.
            "plc": base.plc.model_copy(update={"enabled": True, "endpoint": None, "embedded_port": free_port()}),
        }
    )


@pytest.fixture(scope="session")
def broker(embedded_settings: Settings) -> Iterator[str]:
    tansu = TansuBroker(embedded_settings)
    tansu.start()
    try:
        yield tansu.bootstrap_servers
    finally:
        tansu.stop()


@pytest.fixture(scope="session")
def triton_server(embedded_settings: Settings) -> Iterator[TritonServer]:
    repo = embedded_settings.triton.model_repository
    if not repo.is_dir() or not any(p.is_dir() for p in repo.iterdir()):
        pytest.skip(f"no models in {repo}")
    server = TritonServer(embedded_settings)
    try:
        server.start()
    except ModelNotTrainedError as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def chdb_client(embedded_settings: Settings) -> Iterator[ChdbClient]:
    client = ChdbClient(embedded_settings.chdb_dir)
    client.apply_schema(embedded_settings.clickhouse.database)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def e2e_settings(embedded_settings: Settings, broker: str, request: pytest.FixtureRequest) -> Settings:
    """The session's broker, Triton and chDB directory; fresh ports for the services."""
    # Fail (not skip) without a model: `make test` trains it first.
    assert LIVE_TABLET_MODEL.exists(), "the tablet model is not trained: run `make model`"
    triton_server: TritonServer = request.getfixturevalue("triton_server")
    base = embedded_settings
    return base.model_copy(
        update={
            "kafka": base.kafka.model_copy(update={"bootstrap_servers": broker}),
            "triton": base.triton.model_copy(update={"url": triton_server.grpc_url}),
            "stream": base.stream.model_copy(update={"web_port": free_port()}),
            "services": base.services.model_copy(
                update={"sink_health_port": free_port(), "actuator_health_port": free_port(),
                        "dashboard_port": free_port()}
            ),
            "simulator": base.simulator.model_copy(update={"rate_per_s": 30.0, "defect_rate": 0.3, "seed": 11}),
            # A +-100 ms gate window: the simulated PLC times its fires in Python, whose wake-ups
            # slip by tens of ms when a 2-core CI machine is saturated (docs/actuation.md).
            "lines": {
                line: timing.model_copy(update={"gate_window_mm": 0.2 * timing.conveyor_speed_mm_s})
                for line, timing in base.lines.items()
            },
        }
    )


@pytest.fixture(scope="module")
def running(e2e_settings: Settings) -> Iterator[tuple[Settings, ClickHouseClient, Services]]:
    """Workers, actuator and sink on the session's broker, Triton and chDB."""
    with pipeline_stack(e2e_settings, workers=1) as stack:
        yield stack
