"""Recipes: validation on load, the line's recipe at run time, and how the worker applies it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_inspection import PNG, ScriptedScorer, by_topic, frame

from pipeline.inspections import kinds
from pipeline.inspections.base import InspectionParams, Judgement, Measurement
from pipeline.recipes.book import RecipeBook, Refused, load_defaults
from pipeline.recipes.schema import RecipeError, load_recipe, parse_recipe
from pipeline.settings import PROJECT_ROOT, Settings
from pipeline.wire.messages import H_DLQ_REASON, FrameMeta, RecipeActivation, header_value
from streams.processor import Frame, InspectionProcessor
from streams.triton_client import Failed, Measured

REPO = PROJECT_ROOT / "triton_models"
TABLET = {
    "id": "tablets", "version": 2, "product": "tablet-round-white-10mm",
    "inspection": [{"name": "appearance", "kind": "classifier", "model": "tablet_inspector"}],
}


# ------------------------------------------------------------------ a measurement kind for the tests
class GaugeParams(InspectionParams):
    """Test kind: a unit fails when its measured `level` is below `min_level`."""

    min_level: float

    def model_post_init(self, _ctx: object) -> None:
        if self.min_level <= 0:
            raise ValueError(f"min_level must be > 0, got {self.min_level}")


def judge_gauge(m: Measurement, p: GaugeParams) -> Judgement:
    level = float(m.values["level"])
    if level < p.min_level:
        return Judgement("reject", "low-level", [f"level {level} < {p.min_level}"], {"level": level})
    return Judgement("pass", "none", [], {"level": level})


@pytest.fixture
def gauge_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(kinds.MEASUREMENT_KINDS, "gauge", kinds.MeasurementKind("test_recipes", "GaugeParams", "judge_gauge"))
    monkeypatch.setattr(kinds, "KINDS", (*kinds.KINDS, "gauge"))


GAUGE = {
    "id": "gauges", "version": 1, "product": "gauge-1",
    "inspection": [{"name": "level", "kind": "gauge", "model": "gauge_model", "params": {"min_level": 2.0}}],
}


class MeasuringScorer(ScriptedScorer):
    """Measures `level=<x>` written in the image; `broken` fails; records the params it got."""

    def __init__(self) -> None:
        super().__init__()
        self.params: list[dict] = []

    async def measure(self, model: str, images: list[bytes], params_json: bytes):
        self.params.append(json.loads(params_json))
        out = []
        for image in images:
            if b"broken" in image:
                out.append(Failed("triton: no gauge found in the frame"))
            else:
                out.append(Measured(Measurement({"level": float(image.split(b"level=")[1])}), model, "1"))
        return out


# ------------------------------------------------------------------ validation on load
def test_a_valid_recipe_has_a_stable_content_hash_and_ref() -> None:
    a, b = parse_recipe(TABLET, repository=REPO), parse_recipe(json.loads(json.dumps(TABLET)), repository=REPO)
    assert a.ref == "tablets@v2" and a.sha256 == b.sha256 and len(a.sha256) == 64
    changed = parse_recipe(TABLET | {"description": "x"})
    assert changed.sha256 != a.sha256


@pytest.mark.parametrize(
    "doc, problem",
    [
        (TABLET | {"colour": "white"}, "colour: unknown key"),
        (TABLET | {"inspection": [TABLET["inspection"][0] | {"treshold": 0.5}]}, "inspection[0].treshold: unknown key"),
        (TABLET | {"inspection": [TABLET["inspection"][0] | {"model": "no_such_model"}]},
         "inspection[0].model: no model 'no_such_model'"),
        (TABLET | {"inspection": [TABLET["inspection"][0] | {"kind": "xray"}]}, "unknown inspection kind 'xray'"),
        (TABLET | {"inspection": []}, "inspection: List should have at least 1 item"),
        (TABLET | {"version": 0}, "version: Input should be greater than or equal to 1"),
        ({k: v for k, v in TABLET.items() if k != "product"}, "product: Field required"),
        (TABLET | {"inspection": [TABLET["inspection"][0] | {"params": {"reject_threshold": 0.9}}]},
         "inspection[0].params.reject_threshold: unknown key"),
        (TABLET | {"inspection": TABLET["inspection"] * 2}, "'appearance' is used twice"),
    ],
)
def test_bad_recipes_are_refused_with_every_reason(doc: dict, problem: str) -> None:
    with pytest.raises(RecipeError) as err:
        parse_recipe(doc, "t.toml", repository=REPO)
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_impossible_tolerances_are_refused(gauge_kind: None) -> None:
    with pytest.raises(RecipeError, match="min_level must be > 0"):
        parse_recipe(GAUGE | {"inspection": [GAUGE["inspection"][0] | {"params": {"min_level": -1}}]})
    with pytest.raises(RecipeError, match=r"params.min_level: Field required"):
        parse_recipe(GAUGE | {"inspection": [GAUGE["inspection"][0] | {"params": {}}]})


def test_recipe_files(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text("id = [unclosed", encoding="utf-8")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(tmp_path / "broken.toml")
    with pytest.raises(RecipeError, match="cannot read"):
        load_recipe(tmp_path / "absent.toml")
    (tmp_path / "other.toml").write_text('id = "tablets"\nversion = 1\nproduct = "p"\n[[inspection]]\n'
                                         'name = "a"\nkind = "classifier"\nmodel = "tablet_inspector"\n')
    with pytest.raises(RecipeError, match="must match the file name"):
        load_recipe(tmp_path / "other.toml")


def test_every_shipped_recipe_is_valid() -> None:
    files = sorted((PROJECT_ROOT / "recipes").glob("*.toml"))
    assert files
    for path in files:
        recipe = load_recipe(path, REPO)
        assert recipe.inspections


# ------------------------------------------------------------------ the line's recipe at run time
def _activation(doc: dict, line: str = "line-1") -> bytes:
    r = parse_recipe(doc)
    return RecipeActivation(line, r.to_dict(), r.ref, r.sha256, "qa1", "changeover", 1).to_json()


def test_book_applies_activations_and_refuses_bad_ones() -> None:
    book = RecipeBook()
    assert book.apply(b"line-1", _activation(TABLET)) == "line-1"
    assert book.get("line-1").ref == "tablets@v2"
    tampered = json.loads(_activation(TABLET))
    tampered["recipe"]["description"] = "edited in transit"
    book.apply(b"line-1", json.dumps(tampered).encode())
    assert isinstance(book.get("line-1"), Refused) and "content hash" in book.get("line-1").reason
    book.apply(b"line-2", b"{not json")
    assert isinstance(book.get("line-2"), Refused)
    assert book.get("line-3") is None


def test_start_recipes_come_from_settings(tmp_path: Path) -> None:
    settings = Settings()
    stream = settings.stream.model_copy(update={"line_recipes": {"line-1": "tablet-round-white-10mm", "line-9": "nope"}})
    book = RecipeBook()
    load_defaults(settings.model_copy(update={"stream": stream}), book, REPO)
    assert book.get("line-1").ref == "tablet-round-white-10mm@v1"
    assert isinstance(book.get("line-9"), Refused) and "cannot read" in book.get("line-9").reason


# ------------------------------------------------------------------ the worker applies the recipe
async def test_measurement_recipe_judges_with_its_tolerances_and_results_carry_it(gauge_kind: None) -> None:
    settings = Settings()
    k = settings.kafka
    book = RecipeBook()
    book.apply(b"line-1", _activation(GAUGE))
    scorer = MeasuringScorer()
    frames = [
        frame("ok", PNG + b"level=3.5", product="gauge-1", offset=0),
        frame("low", PNG + b"level=1.5", product="gauge-1", offset=1),
        frame("broken", PNG + b"broken", product="gauge-1", offset=2),
        frame("tablet", PNG + b"score=0.1", offset=3),  # a product the line's recipe does not know
    ]
    out = await InspectionProcessor(settings, scorer, worker="w1", recipes=book).process(frames)
    results = {json.loads(o.value)["unit_id"]: json.loads(o.value) for o in by_topic(out, k.topic_results)}
    assert len(results) == 4 and scorer.params == [{"min_level": 2.0}]
    assert results["ok"]["verdict"] == "pass" and results["ok"]["measurements"] == {"level": 3.5}
    assert results["ok"]["recipe"] == "gauges@v1" and results["ok"]["model_name"] == "gauge_model"
    assert results["low"]["verdict"] == "reject" and results["low"]["defect"] == "low-level"
    assert results["low"]["reasons"] == ["level 1.5 < 2.0"] and results["low"]["measurements"] == {"level": 1.5}
    for unit, why in (("broken", "no gauge found"), ("tablet", "not in recipe gauges@v1 of line 'line-1'")):
        assert results[unit]["verdict"] == "reject" and results[unit]["cause"] == "failsafe"
        assert why in results[unit]["error"] and results[unit]["recipe"] == "gauges@v1"
    dead = {header_value(o.headers, H_DLQ_REASON) for o in by_topic(out, k.topic_deadletter)}
    assert len(dead) == 2 and any("gauge-1" in d and "tablet-round" in d for d in dead)
    rejects = [json.loads(o.value) for o in by_topic(out, k.topic_rejects)]
    assert sorted(r["unit_id"] for r in rejects) == ["broken", "low", "tablet"]
    assert any("gauges@v1: level 1.5 < 2.0" in r["reason"] for r in rejects)


async def test_a_line_whose_recipe_was_refused_rejects_everything() -> None:
    settings = Settings()
    book = RecipeBook()
    book.set("line-1", Refused("recipe activation refused: bad"))
    out = await InspectionProcessor(settings, ScriptedScorer(), worker="w1", recipes=book).process(
        [frame("u1", PNG + b"score=0.0")])
    r = json.loads(by_topic(out, settings.kafka.topic_results)[0].value)
    assert r["verdict"] == "reject" and r["cause"] == "failsafe" and "no runnable recipe" in r["error"]


async def test_classifier_recipe_routes_to_its_model_and_stamps_the_recipe() -> None:
    settings = Settings()
    book = RecipeBook()
    book.apply(b"line-1", _activation(TABLET))
    scorer = ScriptedScorer()
    out = await InspectionProcessor(settings, scorer, worker="w1", recipes=book).process(
        [frame("u1", PNG + b"score=0.9"), frame("u2", PNG + b"score=0.1", offset=1)])
    results = {json.loads(o.value)["unit_id"]: json.loads(o.value) for o in by_topic(out, settings.kafka.topic_results)}
    assert scorer.models == ["tablet_inspector"]
    assert results["u1"]["verdict"] == "reject" and results["u1"]["recipe"] == "tablets@v2"
    assert results["u1"]["reasons"] and results["u2"]["verdict"] == "pass" and results["u2"]["reasons"] == []


# ------------------------------------------------------------------ stations (one camera view each)
STATIONED = {
    "id": "gauged-tablets", "version": 1, "product": "tablet-round-white-10mm",
    "inspection": [{"name": "appearance", "kind": "classifier", "model": "tablet_inspector"},
                   {"name": "level", "kind": "gauge", "model": "gauge_model", "params": {"min_level": 2.0}}],
    "station": [{"name": "side", "inspections": ["appearance"]}, {"name": "top", "inspections": ["level"]}],
}


def station_frame(unit: str, image: bytes, station: str, offset: int) -> Frame:
    meta = FrameMeta(unit, "line-1", f"S-{station}", "tablet-round-white-10mm", 1_000, "image/png", "LOT-7",
                     station=station)
    return Frame(unit.encode(), image, meta.to_headers(), "frames", 0, offset, 2_000)


async def test_a_station_frame_runs_only_its_stations_inspections_and_an_undeclared_station_is_refused(
    gauge_kind: None,
) -> None:
    settings = Settings()
    k = settings.kafka
    book = RecipeBook()
    book.apply(b"line-1", _activation(STATIONED))
    assert [s.name for s in book.get("line-1").stations] == ["side", "top"]
    scorer = MeasuringScorer()
    frames = [
        station_frame("u1", PNG + b"score=0.1", "side", 0),  # classifier only (no level= in it)
        station_frame("u1", PNG + b"level=1.5", "top", 1),  # gauge only
        station_frame("u2", PNG + b"score=0.1", "bottom", 2),  # not a station of the recipe
        frame("u3", PNG + b"score=0.1", offset=3),  # names no station
    ]
    out = await InspectionProcessor(settings, scorer, worker="w1", recipes=book).process(frames)
    results = [json.loads(o.value) for o in by_topic(out, k.topic_results)]
    assert [(r["unit_id"], r["station"], r["verdict"], r["cause"]) for r in results] == [
        ("u2", "bottom", "reject", "failsafe"), ("u3", "", "reject", "failsafe"),
        ("u1", "side", "pass", "model"), ("u1", "top", "reject", "model")]
    assert scorer.models == ["tablet_inspector"] and scorer.params == [{"min_level": 2.0}]
    assert results[2]["model_name"] == "tablet_classifier" and results[3]["model_name"] == "gauge_model"
    dead = sorted(header_value(o.headers, H_DLQ_REASON) for o in by_topic(out, k.topic_deadletter))
    assert dead == ["station '' is not in recipe gauged-tablets@v1 of line 'line-1' (its stations: side, top)",
                    "station 'bottom' is not in recipe gauged-tablets@v1 of line 'line-1' (its stations: side, top)"]
    assert sorted(json.loads(o.value)["unit_id"] for o in by_topic(out, k.topic_rejects)) == ["u1", "u2", "u3"]
