"""The alert service's HTTP API as the tests call it: the API token, a GET that returns
(status, body) and never raises, an `InspectionResult` to feed an `AlertEngine`, and an alert
publisher without a broker. Used by tests/unit/test_production_services.py and
tests/e2e/test_production_services_on_broker.py."""

from __future__ import annotations

import urllib.error
import urllib.request

from pipeline.core.times import now_ns
from pipeline.wire.messages import InspectionResult

TOKEN = "test-alert-api-token-0123456789"


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def result(unit: str, line: str, verdict: str = "reject", version: str = "3") -> InspectionResult:
    t = now_ns()
    return InspectionResult(unit, line, "cam-1", "tablet-a", "lot", verdict, "model", True,
                            "crack" if verdict == "reject" else "", 0.9, 0.5, "tablet_classifier", version,
                            t, t, t, "w")


class NullPublisher:
    """The alert publisher without a broker (the API tests are about the HTTP side)."""

    def __init__(self) -> None:
        self.published: list = []

    def publish(self, records, timeout_s: float = 30.0) -> None:  # noqa: ANN001
        self.published += list(records)
