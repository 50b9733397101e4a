"""Fixtures of the e2e tests: real embedded services, started once per test session on the free
ports of ``embedded_settings`` (tests/conftest.py). Every test collected under tests/e2e/ gets the
``e2e`` marker here (``pytest -m "not e2e"`` selects exactly tests/unit/).

* ``broker``: a started Tansu broker; yields its bootstrap string (``127.0.0.1:PORT``).
  Memory storage: topics exist only for this session.
* ``triton_server``: a started `TritonServer` serving the project's ``triton_models``
  (skips, with the reason, when the models are not trained yet: run ``make model``).
* ``e2e_settings`` / ``running`` (per module): the whole pipeline (workers, sink, actuator,
  alerts, dashboard, simulated PLC) on the session's broker, Triton and chDB.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import LIVE_TABLET_MODEL

from pipeline.clickhouse import ClickHouseClient
from pipeline.demo.run import pipeline_stack
from pipeline.demo.services import Services
from pipeline.embedded.broker import TansuBroker
from pipeline.embedded.process import free_port
from pipeline.embedded.triton import ModelNotTrainedError, TritonServer
from pipeline.settings import Settings

E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A conftest hook sees every collected item (tests/unit too): mark only those in this folder.
    for item in items:
        if item.path.resolve().is_relative_to(E2E_DIR):
            item.add_marker(pytest.mark.e2e)


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
