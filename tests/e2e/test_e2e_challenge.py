"""A challenge run end to end on the real embedded stack (docs/validation.md, "Challenge runs"):
a challenge set of rendered tablets, registered and e-signed; the recipe's [challenge] table;
`linesight challenge run` sends the set through the live line (broker, worker, Triton, actuator
and the simulated PLC's gate); the gate fires on every defect unit; the verdict, the signed audit
record and the batch record's section; challenge units are no production.

Its own module (own stack, own recipes topic): the activation lives on the session broker.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from support import eventually

from pipeline.analytics.batch_record import build_batch_record, render_html
from pipeline.audit.trail import AuditTrail
from pipeline.auth.users import UserStore
from pipeline.cli.main import main
from pipeline.clickhouse import ClickHouseClient
from pipeline.datasets.folder import Row, write_dataset
from pipeline.demo.services import Services
from pipeline.imaging.tablets import render_tablet
from pipeline.settings import PROJECT_ROOT, Settings
from pipeline.wire.codec import encode_png

LINE = "line-1"
PRODUCT = "tablet-round-white-10mm"
DEFECTS = ("chip", "contamination", "crack", "discoloration")


@pytest.fixture(scope="module")
def e2e_settings(e2e_settings: Settings) -> Settings:
    """The shared e2e settings with a recipes topic of this module's own."""
    kafka = e2e_settings.kafka.model_copy(update={"topic_recipes": f"linesight.recipes-{uuid.uuid4().hex[:8]}"})
    return e2e_settings.model_copy(update={"kafka": kafka})


def _challenge_set(root: Path, size: int) -> Path:
    """One clear-cut unit of every defect class the tablet model rejects, and four good ones."""
    rng = np.random.default_rng(5)
    rows = []
    for i, defect in enumerate([*DEFECTS, None, None, None, None]):
        path = root / (defect or "good") / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(render_tablet(rng, PRODUCT, defect, size=size)))
        rows.append(Row(path, PRODUCT, "defect" if defect else "good", defect or "none"))
    write_dataset(root, rows)
    return root


def _worker_recipes(services: Services) -> dict[str, str]:
    try:
        with urllib.request.urlopen(services.worker_urls()[0] + "/healthz", timeout=5) as r:
            return json.loads(r.read()).get("recipes", {})
    except OSError:
        return {}


@pytest.fixture()
def cli_env(
    running: tuple[Settings, ClickHouseClient, Services], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """The `linesight` commands pointed at the running stack; a QA user; a recipes folder of our own."""
    resolved, client, _ = running
    UserStore(client, resolved.clickhouse.database).add("cheryl", "qa", "cheryl-pass-123", "test")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / f"{PRODUCT}.toml").write_text(
        (PROJECT_ROOT / "recipes" / f"{PRODUCT}.toml").read_text(encoding="utf-8"), encoding="utf-8")
    for key, value in {
        "LINESIGHT_STATE_DIR": str(resolved.state_dir),
        "LINESIGHT_CLICKHOUSE__DATABASE": resolved.clickhouse.database,
        "LINESIGHT_KAFKA__BOOTSTRAP_SERVERS": str(resolved.kafka.bootstrap_servers),
        "LINESIGHT_KAFKA__TOPIC_RECIPES": resolved.kafka.topic_recipes,
        "LINESIGHT_STREAM__RECIPES_DIR": str(recipes),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LINESIGHT_CLICKHOUSE__URL", raising=False)
    (tmp_path / "cheryl.pw").write_text("cheryl-pass-123\n")
    yield tmp_path


@pytest.mark.timeout(240)
def test_a_challenge_run_through_the_live_line(
    running: tuple[Settings, ClickHouseClient, Services], cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    resolved, client, services = running
    db = resolved.clickhouse.database
    auth = ["--user", "cheryl", "--password-file", str(cli_env / "cheryl.pw")]
    data = _challenge_set(cli_env / "challenge-set", resolved.simulator.image_size)

    # A set lacking a class of the recipe is refused with the list of what is missing.
    (data / "labels.csv").write_text("\n".join(line for line in (data / "labels.csv").read_text().splitlines()
                                               if "discoloration" not in line) + "\n")
    assert main(["challenge", "register", "--recipe", PRODUCT, "--data", str(data), "--reason", "set", *auth]) == 1
    assert "missing defect classes of recipe tablet-round-white-10mm@v1: discoloration" in capsys.readouterr().err
    _challenge_set(data, resolved.simulator.image_size)
    assert main(["challenge", "register", "--recipe", PRODUCT, "--data", str(data), "--reason", "QA set", *auth]) == 0
    out = capsys.readouterr().out
    sha = out.split("sha256 ", 1)[1].split()[0]

    # The recipe names the set (a new version QA approves), and the line changes over to it.
    recipe_file = Path(str(cli_env / "recipes" / f"{PRODUCT}.toml"))
    recipe_file.write_text(recipe_file.read_text(encoding="utf-8").replace("version = 1", "version = 2")
                           + f'\n[challenge]\nset = "{PRODUCT}"\nsha256 = "{sha}"\nmax_good_removed = 1\n'
                           "max_review_fraction = 0.5\n", encoding="utf-8")
    assert main(["recipes", "activate", PRODUCT, "--line", LINE, "--reason", "changeover", *auth]) == 0
    assert f"now runs {PRODUCT}@v2" in capsys.readouterr().out
    eventually(lambda: _worker_recipes(services).get(LINE) == f"{PRODUCT}@v2", 60, "the worker to run the recipe")

    lot = f"CH-{uuid.uuid4().hex[:6]}"
    code = main(["challenge", "run", "--line", LINE, "--lot", lot, "--when", "start", "--rate", "10",
                 "--timeout", "60", "--json", *auth])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["passed"], result
    assert (result["units"], result["defects"], result["defects_rejected"]) == (8, 4, 4)

    # The gate fired on every defect unit; every unit is marked a challenge unit in every table.
    rows = client.query(
        f"""SELECT t.unit_id AS unit, t.label AS label, g.outcome AS gate, g.purpose AS gate_purpose,
                   i.verdict AS verdict, i.purpose AS purpose
            FROM {db}.ground_truth AS t FINAL
            INNER JOIN (SELECT * FROM {db}.gate_events FINAL) AS g ON g.unit_id = t.unit_id
            INNER JOIN (SELECT * FROM {db}.inspections FINAL) AS i ON i.unit_id = t.unit_id
            WHERE t.lot = {{lot:String}} ORDER BY unit""", {"lot": lot}).named()
    assert [r["unit"] for r in rows] == [f"{lot}-CHstart-{i:04d}" for i in range(8)]
    assert all(r["purpose"] == r["gate_purpose"] == "challenge" for r in rows)
    assert [r["gate"] for r in rows if r["label"] == "defect"] == ["fired"] * 4
    assert all(r["verdict"] != "pass" for r in rows if r["label"] == "defect")
    fired = client.query(f"SELECT count() FROM {db}.actuations FINAL WHERE lot = {{lot:String}} AND purpose = "
                         "'challenge'", {"lot": lot}).scalar()
    assert int(fired) >= 4

    # The result is in the audit trail, e-signed, and in challenge_runs.
    (record,) = client.query(
        f"SELECT concat(chain, '#', toString(seq)) AS id, user, new_value, detail FROM {db}.audit_records "
        f"WHERE action = 'challenge.run' AND old_value = {{lot:String}}", {"lot": lot}).named()
    assert (record["user"], record["new_value"], record["id"]) == ("cheryl", "passed", result["audit_record"])
    assert json.loads(record["detail"])["set_sha256"] == sha
    (sig,) = client.query(f"SELECT subject, new_value FROM {db}.audit_records WHERE action = 'audit.signature' "
                          f"AND subject = {{id:String}}", {"id": record["id"]}).rows
    assert tuple(sig) == (record["id"], "approved")

    # The batch record: the start challenge in its own section, no production unit counted, and
    # the release refused for the missing end challenge.
    batch = build_batch_record(client, db, lot, AuditTrail.from_settings(resolved, client))
    assert batch.captured == 0 and batch.inspected == 0
    assert [(c.phase, c.passed) for c in batch.challenges] == [("start", True), ("end", False)]
    assert batch.release_refusals == ["end challenge missing"]
    render_html(batch, cli_env / "lot.html")
    html = (cli_env / "lot.html").read_text(encoding="utf-8")
    assert "RELEASE REFUSED: end challenge missing" in html and result["audit_record"] in html
    assert main(["challenge", "status", "--lot", lot]) == 1
