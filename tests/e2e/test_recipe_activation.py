"""Switching a line's recipe at run time against the real broker and chDB: authenticated,
audited, published on the recipes topic and picked up by a worker's feed."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import eventually

from pipeline.auth.users import UserStore
from pipeline.cli.main import main
from pipeline.clickhouse import ChdbClient
from pipeline.kafka.topics import ensure_topics
from pipeline.recipes.book import RecipeBook, RecipeFeed
from pipeline.settings import PROJECT_ROOT, Settings


@pytest.fixture()
def env(
    embedded_settings: Settings, broker: str, chdb_client: ChdbClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Settings, str]]:
    """A fresh database with two users, a private recipes topic and a recipes folder of our own."""
    db = f"rcp_{uuid.uuid4().hex[:8]}"
    chdb_client.apply_schema(db)
    users = UserStore(chdb_client, db)
    users.add("olga", "operator", "olga-pass-123", "test")
    users.add("adam", "admin", "adam-pass-123", "test")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    shutil.copy(PROJECT_ROOT / "recipes" / "tablet-round-white-10mm.toml", recipes)
    (recipes / "bad.toml").write_text('id = "bad"\nversion = 1\nproduct = "p"\nspeed = 3\n[[inspection]]\n'
                                      'name = "a"\nkind = "classifier"\nmodel = "nope"\n', encoding="utf-8")
    topic = f"recipes-{uuid.uuid4().hex[:8]}"
    for key, value in {
        "LINESIGHT_STATE_DIR": str(embedded_settings.state_dir),
        "LINESIGHT_CLICKHOUSE__DATABASE": db,
        "LINESIGHT_AUDIT__PUBLISH_TIMEOUT_S": "0",
        "LINESIGHT_KAFKA__BOOTSTRAP_SERVERS": broker,
        "LINESIGHT_KAFKA__TOPIC_RECIPES": topic,
        "LINESIGHT_STREAM__RECIPES_DIR": str(recipes),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LINESIGHT_CLICKHOUSE__URL", raising=False)
    settings = Settings()
    ensure_topics(settings)
    (tmp_path / "olga.pw").write_text("olga-pass-123\n")
    (tmp_path / "adam.pw").write_text("adam-pass-123\n")
    yield settings, db


def _audit(client: ChdbClient, db: str, action: str) -> list[dict]:
    return client.query(
        f"SELECT user, role, subject, old_value, new_value, reason, detail FROM {db}.audit_records "
        f"WHERE action = '{action}' ORDER BY seq", {}).named()


def test_operator_switches_a_line_and_a_worker_feed_sees_it(
    env: tuple[Settings, str], chdb_client: ChdbClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, db = env
    args = ["recipes", "activate", "tablet-round-white-10mm", "--line", "line-7", "--reason", "changeover"]
    assert main([*args, "--user", "olga", "--password-file", str(tmp_path / "olga.pw")]) == 0
    assert "line line-7 now runs tablet-round-white-10mm@v1" in capsys.readouterr().out
    (rec,) = _audit(chdb_client, db, "recipe.activate")
    assert (rec["user"], rec["role"], rec["subject"], rec["new_value"]) == ("olga", "operator", "line-7",
                                                                         "tablet-round-white-10mm@v1")
    assert rec["reason"] == "changeover" and '"sha256"' in rec["detail"]

    book = RecipeBook()
    feed = RecipeFeed(settings, book).start()
    try:
        assert feed.wait_caught_up(20.0)
        assert book.get("line-7").ref == "tablet-round-white-10mm@v1"
        # A second switch reaches a running feed too, and the audit record names the previous recipe.
        assert main([*args, "--user", "olga", "--password-file", str(tmp_path / "olga.pw")]) == 0
        assert eventually(lambda: len(_audit(chdb_client, db, "recipe.activate")) == 2, timeout_s=20)
        assert _audit(chdb_client, db, "recipe.activate")[1]["old_value"] == "tablet-round-white-10mm@v1"
    finally:
        feed.stop()
    assert main(["recipes", "active"]) == 0
    assert "line-7: tablet-round-white-10mm@v1" in capsys.readouterr().out


def test_refusals_are_audited_and_publish_nothing(
    env: tuple[Settings, str], chdb_client: ChdbClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, db = env
    olga, adam = str(tmp_path / "olga.pw"), str(tmp_path / "adam.pw")
    base = ["recipes", "activate", "--line", "line-8", "--password-file"]
    assert main([*base, adam, "tablet-round-white-10mm", "--reason", "x", "--user", "adam"]) == 1  # admin: no
    assert main([*base, olga, "tablet-round-white-10mm", "--user", "olga"]) == 1  # no reason
    assert main([*base, olga, "bad", "--reason", "x", "--user", "olga"]) == 1  # invalid recipe
    err = capsys.readouterr().err
    assert "speed: unknown key" in err and "no model 'nope'" in err
    refusals = [r["reason"] for r in _audit(chdb_client, db, "access.refused")]
    assert any("a reason is required" in r for r in refusals) and len(refusals) == 2
    (bad,) = _audit(chdb_client, db, "recipe.activate.refused")
    assert bad["new_value"] == "bad" and "unknown key" in bad["detail"]
    assert _audit(chdb_client, db, "recipe.activate") == []
    book = RecipeBook()
    feed = RecipeFeed(settings, book).start()
    try:
        assert feed.wait_caught_up(20.0) and book.lines() == {}
    finally:
        feed.stop()
    assert main(["recipes", "validate", str(settings.stream.recipes_dir / "bad.toml")]) == 1
    assert main(["recipes", "list"]) == 1  # one invalid recipe in the folder
