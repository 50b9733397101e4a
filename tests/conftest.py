"""Fixtures shared by tests/unit and tests/e2e (the e2e-only ones are in tests/e2e/conftest.py).

* ``embedded_settings``: `Settings` with a temporary ``state_dir`` and free embedded ports.
* ``chdb_client``: a `ChdbClient` on ``embedded_settings.chdb_dir`` with the schema applied to
  ``embedded_settings.clickhouse.database``. chDB allows ONE data directory per process: open
  further clients with ``connect(embedded_settings)`` (same directory), never another path.

The helper modules next to this file (support, contract_models, dashboard_feed, dashboard_site,
alerts_api) are importable from both folders: pyproject.toml puts tests/ on ``pythonpath``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.clickhouse import ChdbClient
from pipeline.embedded.process import free_port
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
            # The gate's PLC: the embedded simulator (`pipeline.actuation.plc.embedded`) on a free port.
            "plc": base.plc.model_copy(update={"enabled": True, "endpoint": None, "embedded_port": free_port()}),
        }
    )


@pytest.fixture(scope="session")
def chdb_client(embedded_settings: Settings) -> Iterator[ChdbClient]:
    client = ChdbClient(embedded_settings.chdb_dir)
    client.apply_schema(embedded_settings.clickhouse.database)
    try:
        yield client
    finally:
        client.close()
