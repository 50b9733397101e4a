"""Drift references from the model repository: each released version's validation scores.

A version's model card records the released graph's score quantiles on its validation units
(`score_reference`, written by `linesight train`); drift is the line's scores moving away from
them. Cards are read when a version first answers on the line, so a deploy needs no restart.
A version whose card is unreadable or older than the field gets no reference here, and the
engine falls back to the version's first scores on the line (docs/alerts.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.model import repository

log = logging.getLogger(__name__)


class CardReferences:
    """`get("classifier:version")` -> that version's validation score quantiles, or None."""

    def __init__(self, repo: Path | None) -> None:
        self.repo = Path(repo) if repo else None
        self._cache: dict[str, list[float] | None] = {}

    def get(self, key: str, default: list[float] | None = None) -> list[float] | None:
        if key not in self._cache:
            self._cache[key] = self._load(key)
        found = self._cache[key]
        return found if found is not None else default

    def _load(self, key: str) -> list[float] | None:
        model, _, version = key.rpartition(":")
        if self.repo is None or not model or not version.isdigit():
            return None
        try:
            card = repository.read_card(self.repo, model, int(version))
        except (repository.RepositoryError, OSError, json.JSONDecodeError) as exc:
            log.info("no drift reference for %s in %s (%s): using its first scores on the line", key, self.repo, exc)
            return None
        quantiles = card.get("score_reference", {}).get("quantiles") or None
        return [float(q) for q in quantiles] if quantiles else None
