"""Helpers shared by tests: waiting on a condition with a deadline, a stand-in for a consumed
Kafka message (the subset of `confluent_kafka.Message` the services read), scraping a service's
/metrics, and where the live tablet classifier is."""

from __future__ import annotations

import asyncio
import shutil
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.clickhouse import ClickHouseClient
from pipeline.model import repository
from pipeline.settings import Settings
from pipeline.settings.actuation import PlcSettings

T = TypeVar("T")


def eventually(probe: Callable[[], T], timeout_s: float = 60.0, what: str = "", poll_s: float = 0.2) -> T:
    """The probe's first truthy answer, polled until a deadline (never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(poll_s)
    return value


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A /metrics page as {(sample name, sorted labels): value}, parsed by prometheus_client."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def eventually_async(
    pred: Callable[[], object], timeout_s: float = 10.0, what: str = "condition", poll_s: float = 0.01
) -> None:
    """`eventually` inside an event loop: the loop keeps running the code under test meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s:g} s")
        await asyncio.sleep(poll_s)


class Msg:
    """A consumed message: topic, partition, offset, value, key and headers."""

    def __init__(
        self, topic: str, value: bytes = b"", offset: int = 0, headers: list[tuple[str, bytes]] | None = None,
        partition: int = 0, key: bytes = b"",
    ) -> None:
        self._t, self._v, self._o, self._h, self._p, self._k = topic, value, offset, headers, partition, key

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes:
        return self._v

    def key(self) -> bytes:
        return self._k

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._h

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)  # TIMESTAMP_NOT_AVAILABLE, like a message the broker stamped no time on


_REPO = Settings().triton.model_repository
# The tablet classifier version the committed config makes live (docs/models.md), and its ONNX.
LIVE_TABLET_VERSION = repository.live_version(repository.read_config(_REPO, "tablet_classifier")) or 1
LIVE_TABLET_MODEL = repository.version_dir(_REPO, "tablet_classifier", LIVE_TABLET_VERSION) / repository.ONNX_FILE


def fast_plc(endpoint: str, **kw: object) -> PlcSettings:
    """PLC settings with test-speed timeouts (production defaults are seconds)."""
    base: dict[str, object] = dict(
        enabled=True, endpoint=endpoint, heartbeat_poll_s=0.05, heartbeat_timeout_s=0.5,
        confirm_timeout_s=0.3, request_timeout_s=2.0, connect_timeout_s=5.0,
        reconnect_initial_s=0.05, reconnect_max_s=0.3,
    )
    base.update(kw)
    return PlcSettings.model_validate(base)


def cli_database(prefix: str, settings: Settings, client: ClickHouseClient, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database that the in-process CLI (``pipeline.cli.main``) uses: the test's state
    folder, no ClickHouse server, audit records not waiting for a broker."""
    db = f"{prefix}_{uuid.uuid4().hex[:8]}"
    client.apply_schema(db)
    monkeypatch.setenv("LINESIGHT_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("LINESIGHT_CLICKHOUSE__DATABASE", db)
    monkeypatch.setenv("LINESIGHT_AUDIT__PUBLISH_TIMEOUT_S", "0")
    monkeypatch.delenv("LINESIGHT_CLICKHOUSE__URL", raising=False)
    return db


COMMITTED_REPOSITORY = Path(__file__).resolve().parents[1] / "triton_models"


def untrained_repository(dst: Path) -> Path:
    """A copy of the committed model repository: its configs and python models, no trained
    classifier version (what a fresh checkout has before `make model`)."""
    src = COMMITTED_REPOSITORY
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("[0-9]*", "__pycache__", ".train-*", ".*.tmp-*"))
    for model in ("tablet_inspector", "tablet_preprocess"):
        shutil.copytree(src / model / "1", dst / model / "1", ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def write_test_images(root: Path, product: str, units: list[tuple[str, int]]) -> Path:
    """A dataset folder of plain grey frames: (defect or 'none', grey level 0..255) per unit, in
    that order (the contract models score a frame's mean brightness)."""
    from PIL import Image

    from pipeline.datasets.folder import Row, write_dataset

    rows = []
    for i, (defect, level) in enumerate(units):
        path = root / ("good" if defect == "none" else defect) / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (level, level, level)).save(path)
        rows.append(Row(path, product, "good" if defect == "none" else "defect", defect))
    write_dataset(root, rows)
    return root


def approve_validation_report(
    settings: Settings, client: ClickHouseClient, classifier: str, version: int, *,
    product: str = "tablet-round-white-10mm", criteria: dict[str, object] | None = None,
    units: list[tuple[str, int]] | None = None,
) -> dict[str, object]:
    """What a deploy requires (docs/validation.md), the real way: a QA user registers a locked
    test set, records criteria before the test, generates the version's report and approves it
    (audit records in `settings`' database and state folder). `criteria` default: a review rate
    of at most 100 % and parity passed, i.e. the report judges the version without failing it."""
    from pipeline.audit.trail import AuditTrail
    from pipeline.auth.guard import Guard, Principal
    from pipeline.auth.sessions import SessionStore
    from pipeline.auth.users import UserStore
    from pipeline.validation.criteria import ValidationCriteria, record_criteria
    from pipeline.validation.report import approve_report, make_report
    from pipeline.validation.testsets import register_testset

    db = settings.clickhouse.database
    client.apply_schema(db)
    users = UserStore(client, db)
    if users.get("validation-qa") is None:
        users.add("validation-qa", "qa", "validation-pass-1", "test")
    trail = AuditTrail.from_settings(settings, client)
    guard = Guard(users, SessionStore(client, db), trail, 60)
    qa = Principal("validation-qa", "qa")
    repo = Path(settings.triton.model_repository)
    name = f"{classifier}-v{version}-{uuid.uuid4().hex[:6]}"
    data = write_test_images(settings.state_dir / "test-sets" / name, product,
                             units or [("none", 40), ("none", 60), ("chip", 200), ("crack", 220)])
    register_testset(settings, trail, guard, qa, data, name, product, "test set of a test")
    record_criteria(repo, trail, guard, qa, classifier, version,
                    ValidationCriteria.from_mapping(criteria or {"max_review": 1.0}), "criteria before the test")
    make_report(settings, trail, guard, qa, product, classifier, version, name)
    approval, _, _ = approve_report(repo, trail, guard, qa, classifier, version, "report reviewed")
    return approval
