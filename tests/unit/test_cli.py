"""The `linesight` command: help, dataset writing, and bad input refused with a reason."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli.main import main


def test_help_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("demo", "up", "worker", "sink", "actuator", "camera", "replay", "simulate", "train", "sql"):
        assert command in out


def test_simulate_writes_a_dataset_folder(tmp_path: Path) -> None:
    assert main(["simulate", "--out", str(tmp_path / "ds"), "--count", "6", "--seed", "3"]) == 0
    with open(tmp_path / "ds" / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    assert list(rows[0]) == ["image", "product", "label", "defect"]
    assert all((tmp_path / "ds" / r["image"]).is_file() for r in rows)


def test_replay_refuses_a_bad_dataset_before_connecting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "labels.csv").write_text(
        "image,product,label,defect\nmissing.png,tablet-round-white-10mm,good,none\n", encoding="utf-8"
    )
    assert main(["replay", "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "missing.png: image file not found" in err


def test_publishing_without_a_broker_says_how_to_configure_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LINESIGHT_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    assert main(["camera", "--count", "1"]) == 1
    assert "LINESIGHT_KAFKA__BOOTSTRAP_SERVERS" in capsys.readouterr().err
