"""The camera service's docker-compose healthcheck run against the real (embedded) broker. The rest
of docker-compose.yml is checked offline by tests/unit/test_compose.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.embedded.process import free_port

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def camera_healthcheck() -> str:
    """The Python the camera's healthcheck runs (``CMD python -c CODE``)."""
    cmd = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["camera"]["healthcheck"]["test"]
    assert cmd[0] == "CMD" and cmd[1] in ("python", "python3") and cmd[2] == "-c", cmd
    assert "$" not in cmd[3], "compose interpolation in the healthcheck: resolve it as tests/unit/test_compose.py does"
    return cmd[3]


def test_camera_healthcheck_answers_with_the_broker(broker: str) -> None:
    code = camera_healthcheck()
    base = {k: v for k, v in os.environ.items() if not k.startswith("LINESIGHT_")}

    def probe(bootstrap: str) -> int:
        env = base | {"LINESIGHT_KAFKA__BOOTSTRAP_SERVERS": bootstrap}
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60).returncode

    assert probe(broker) == 0
    assert probe(f"127.0.0.1:{free_port()}") != 0
