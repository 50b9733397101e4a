"""Shared fixtures: real embedded services, started once per test session on random free ports.

* ``embedded_settings``: `Settings` with a temporary ``state_dir`` and free embedded ports.
* ``broker``: a started Tansu broker; yields its bootstrap string (``127.0.0.1:PORT``).
  Memory storage: topics exist only for this session.
* ``triton_server``: a started `TritonServer` serving the project's ``triton_models``
  (skips, with the reason, when the models are not trained yet: run ``make model``).
* ``chdb_client``: a `ChdbClient` on ``embedded_settings.chdb_dir`` with the schema applied to
  ``embedded_settings.clickhouse.database``. chDB allows ONE data directory per process: open
  further clients with ``connect(embedded_settings)`` (same directory), never another path.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.clickhouse import ChdbClient
from pipeline.embedded.broker import TansuBroker
from pipeline.embedded.process import free_port
from pipeline.embedded.triton import ModelNotTrainedError, TritonServer
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
