"""Secrets given inline (environment) or as files (Docker and Kubernetes secrets)."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr


def read_secret(value: SecretStr | None, path: Path | None) -> str:
    """A secret given inline (environment) or as a file (Docker/Kubernetes secrets)."""
    if path is not None:
        return path.read_text(encoding="utf-8").strip()
    return value.get_secret_value() if value is not None else ""
