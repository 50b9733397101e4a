"""The Knapp study: the machine's rejection probabilities against the manual method's (docs/validation.md).

Knapp & Kushner (PDA) and USP <1790> qualify an automated inspection against the manual one
by rejection probabilities, not by single verdicts: every unit of a qualification set is
inspected n times by each method, a unit's p = rejections / inspections, and units fall into
the accept zone (p <= 0.3), the grey zone (0.3 < p < 0.7) and the reject zone (p >= 0.7). Over
the units the *manual* method rejects (its reject zone R) each method's quality factor is
FQ = sum of its p over R, and the reject zone efficiency RZE = FQ_machine / FQ_manual; the
machine is "equivalent or better" when RZE >= 1.

Here the machine is the served model itself (Triton, the product's inspection ensemble, the
version's own thresholds; `review` counts as rejected because the gate removes it), and each of
the N presentations of a unit is the unit's image as a camera would see it on another pass:
moved, turned as the product's declared invariance allows, under another light level and
focus, seeded per (unit, run) so a study repeats exactly. A false-reject test presents good
units (again with variation) until a large count is reached.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.datasets.folder import Dataset, Row, dataset_hash, load_dataset
from pipeline.datasets.shift import Shift, shift_image
from pipeline.model import repository
from pipeline.model.evaluate_offline import clopper_pearson_upper
from pipeline.model.geometry import INVARIANCES, UNDECLARED
from pipeline.settings import Settings
from pipeline.validation.evaluate import (
    BATCH,
    EvaluationError,
    parse_model_spec,
    resolve_models,
    serving,
)
from pipeline.validation.knapp_report import EQUIVALENT, NOT_EQUIVALENT, KnappStudy, render_pdf, write_json
from streams.triton_client import Failed, TritonInspector

DEFAULT_RUNS = 10
DEFAULT_GOOD_COUNT = 5000
# Zone limits as fractions in tenths: accept p <= 3/10, reject p >= 7/10 (compared in integers).
ACCEPT_TENTHS, REJECT_TENTHS = 3, 7
ZONES = ("accept", "grey", "reject")
MANUAL_COLUMNS = ("unit", "inspector", "inspections", "rejections")
PRESENTATION_COLUMNS = ("study", "unit", "run", "score", "verdict", "defect", "model_version", "error")
RULE = (
    "Knapp & Kushner (PDA), USP <1790>: a unit's rejection probability p = rejections / inspections; "
    "accept zone p <= 0.3, grey zone 0.3 < p < 0.7, reject zone p >= 0.7. Over the units in the manual "
    "method's reject zone, each method's quality factor FQ = sum of its p; reject zone efficiency "
    "RZE = FQ(machine) / FQ(manual). The machine is equivalent or better when RZE >= 1."
)


class KnappError(ValueError):
    """The study cannot run as asked; `problems` lists every reason (where, why)."""

    def __init__(self, what: str, problems: Sequence[tuple[str, str]]):
        self.problems = list(problems)
        lines = "\n".join(f"  {where}: {why}" if where else f"  {why}" for where, why in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in {what}:\n{lines}")


def zone(rejections: int, inspections: int) -> str:
    """accept / grey / reject for rejections out of inspections (exact: no float edge at 0.3 or 0.7)."""
    if 10 * rejections <= ACCEPT_TENTHS * inspections:
        return "accept"
    if 10 * rejections >= REJECT_TENTHS * inspections:
        return "reject"
    return "grey"


# ----------------------------------------------------------------------------- presentation


@dataclass(frozen=True)
class Variation:
    """How one presentation differs from the unit's image, each drawn uniformly per (unit, run).

    Position: a whole-pixel move of up to `max_shift_px` per axis (the trigger timing). Light:
    a gain in `light` (lamp, exposure). Focus: a Gaussian blur sigma in `blur_px`. Orientation:
    only what the product's declared invariance allows (pipeline/model/geometry.py): `fixed`
    none; `upright` a left-right mirror (a vial turned about its axis, never tipped);
    `lying` a left-right or top-bottom mirror or a half turn; `any-orientation` any angle and a
    mirror (a round tablet tumbling onto the belt).
    """

    max_shift_px: int = 3
    light: tuple[float, float] = (0.85, 1.15)
    blur_px: tuple[float, float] = (0.0, 0.8)
    invariance: str = UNDECLARED
    seed: int = 0

    def check(self) -> None:
        problems = []
        if not 0 <= self.max_shift_px <= 64:
            problems.append(f"position shift must be 0..64 px, got {self.max_shift_px}")
        lo, hi = self.light
        if not 0.0 < lo <= hi <= 4.0:
            problems.append(f"light gain range must satisfy 0 < min <= max <= 4, got {lo}..{hi}")
        lo, hi = self.blur_px
        if not 0.0 <= lo <= hi <= 10.0:
            problems.append(f"blur sigma range must satisfy 0 <= min <= max <= 10 px, got {lo}..{hi}")
        if self.invariance not in INVARIANCES:
            problems.append(f"unknown invariance {self.invariance!r}; known: {', '.join(INVARIANCES)}")
        if problems:
            raise KnappError("the presentation variation", [("", p) for p in problems])

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "max_shift_px": self.max_shift_px,
            "light_gain": list(self.light),
            "blur_sigma_px": list(self.blur_px),
            "invariance": self.invariance,
            "orientation": ORIENTATIONS[self.invariance],
        }


ORIENTATIONS = {
    "fixed": "none",
    "upright": "left-right mirror (never tipped or turned over)",
    "lying": "left-right mirror, top-bottom mirror or half turn",
    "any-orientation": "any angle, and a mirror",
}
_LYING = (None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_180)


def unit_stream(study: int, unit: str, run: int, seed: int) -> np.random.Generator:
    """The generator of one presentation: seeded by (seed, study, unit name, run), not by row order,
    so a reordered labels.csv presents every unit exactly as before."""
    key = int.from_bytes(hashlib.sha256(unit.encode("utf-8")).digest()[:8], "big")
    return np.random.default_rng([seed, study, key, run])


def _orient(img: Image.Image, invariance: str, rng: np.random.Generator) -> Image.Image:
    if invariance == "upright":
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img
    if invariance == "lying":
        t = _LYING[int(rng.integers(len(_LYING)))]
        return img.transpose(t) if t is not None else img
    if invariance == "any-orientation":
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        angle = float(rng.uniform(0.0, 360.0))
        # Turn a mirror-padded copy and cut the frame back out: the corners keep belt texture
        # instead of a flat fill the model never saw.
        a = np.asarray(img)
        h, w = a.shape[:2]
        pad = int(math.ceil(0.21 * max(h, w))) + 1
        pad = min(pad, h - 1, w - 1)
        widths = [(pad, pad), (pad, pad)] + ([(0, 0)] if a.ndim == 3 else [])
        big = Image.fromarray(np.pad(a, widths, mode="reflect"))
        turned = big.rotate(angle, resample=Image.Resampling.BILINEAR)
        return turned.crop((pad, pad, pad + w, pad + h))
    return img


def present(img: Image.Image, variation: Variation, rng: np.random.Generator) -> Image.Image:
    """One presentation of a unit: orientation, then light, focus and position (`shift_image`)."""
    oriented = _orient(img, variation.invariance, rng)
    params = Shift(
        brightness=float(rng.uniform(*variation.light)),
        blur=float(rng.uniform(*variation.blur_px)),
        shift=variation.max_shift_px,
    )
    return shift_image(oriented, params, rng)


def _encode(img: Image.Image, fmt: str | None) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, format="JPEG", quality=95)
    else:
        img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# ----------------------------------------------------------------------------- manual results


@dataclass(frozen=True)
class ManualResults:
    """The manual method's rejections per unit, pooled over inspectors x inspections."""

    path: Path
    sha256: str
    inspectors: tuple[str, ...]
    inspections: int  # per inspector and unit (the Knapp form's n)
    rejections: dict[str, int]  # unit -> rejections over all inspectors

    @property
    def per_unit(self) -> int:
        return self.inspections * len(self.inspectors)


def unit_names(dataset: Dataset) -> dict[str, Row]:
    """Names a manual CSV may use for a unit: the image path as in labels.csv, and the file name
    without extension when no two units share it (a plant numbers its units by file name)."""
    names = {dataset.relative(r): r for r in dataset.rows}
    stems: dict[str, list[Row]] = {}
    for r in dataset.rows:
        stems.setdefault(r.image.stem, []).append(r)
    for stem, rows in stems.items():
        if len(rows) == 1 and stem not in names:
            names[stem] = rows[0]
    return names


def read_manual(path: Path, dataset: Dataset) -> ManualResults:
    """Read and check the manual results CSV (`unit,inspector,inspections,rejections`).

    One row per unit and inspector, as the Knapp form records it: how many of the inspector's
    `inspections` of the unit ended in a rejection. Every inspector must have inspected every
    unit of the set the same number of times. Raises KnappError listing every problem.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KnappError(f"manual results {path}", [("", f"cannot be read: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise KnappError(f"manual results {path}", [("", f"not UTF-8: {exc}")]) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader, [])]
    if not header:
        raise KnappError(f"manual results {path}", [("line 1", "empty file (no header row)")])
    missing = [c for c in MANUAL_COLUMNS if c not in header]
    if missing:
        raise KnappError(f"manual results {path}",
                         [("line 1", f"missing column(s) {', '.join(missing)}; header is {header}; "
                                     f"expected {','.join(MANUAL_COLUMNS)}")])
    pos = {c: header.index(c) for c in MANUAL_COLUMNS}
    names = unit_names(dataset)
    problems: list[tuple[str, str]] = []
    seen: dict[tuple[str, str], int] = {}  # (unit image, inspector) -> line
    counts: dict[tuple[str, str], tuple[int, int, int]] = {}  # -> (inspections, rejections, line)
    for fields in reader:
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue
        where = f"line {line}"
        if len(fields) != len(header):
            problems.append((where, f"row has {len(fields)} fields, header has {len(header)}"))
            continue
        unit, inspector = fields[pos["unit"]].strip(), fields[pos["inspector"]].strip()
        where = f"line {line} unit {unit!r}"
        row = names.get(unit)
        reasons = []
        if row is None:
            reasons.append(f"unknown unit {unit!r}: not an image path (or unique file name) of the set")
        if not inspector:
            reasons.append("empty inspector")
        numbers: list[int] = []
        for col in ("inspections", "rejections"):
            value = fields[pos[col]].strip()
            try:
                numbers.append(int(value))
            except ValueError:
                reasons.append(f"{col} {value!r} is not a whole number")
        if len(numbers) == 2:
            n, k = numbers
            if n < 1:
                reasons.append(f"inspections must be >= 1, got {n}")
            elif not 0 <= k <= n:
                reasons.append(f"rejections {k} not within 0..{n} inspections")
        if row is not None and inspector:
            key = (dataset.relative(row), inspector)
            if key in seen:
                reasons.append(f"inspector {inspector!r} already has a row for this unit (line {seen[key]})")
            else:
                seen[key] = line
                if not reasons:
                    counts[key] = (numbers[0], numbers[1], line)
        problems.extend((where, r) for r in reasons)

    inspectors = tuple(sorted({i for _, i in seen}))
    if not seen and not problems:
        problems.append(("", "no rows"))
    # One n for the whole study: the Knapp form inspects the set n times per inspector.
    ns = [n for n, _, _ in counts.values()]
    if ns:
        study_n = max(set(ns), key=lambda v: (ns.count(v), v))
        for (unit, inspector), (n, _, line) in sorted(counts.items(), key=lambda kv: kv[1][2]):
            if n != study_n:
                problems.append((f"line {line} unit {unit!r}",
                                 f"inconsistent n: {n} inspections by {inspector!r}; the study's other rows have "
                                 f"{study_n}"))
    for inspector in inspectors:
        absent = [dataset.relative(r) for r in dataset.rows if (dataset.relative(r), inspector) not in seen]
        if absent:
            shown = ", ".join(absent[:8]) + (f" and {len(absent) - 8} more" if len(absent) > 8 else "")
            problems.append(("", f"inspector {inspector!r} has no row for {len(absent)} unit(s) of the set: {shown}"))
    if problems:
        raise KnappError(f"manual results {path}", problems)
    rejections = {dataset.relative(r): 0 for r in dataset.rows}
    for (unit, _), (_, k, _) in counts.items():
        rejections[unit] += k
    return ManualResults(path.resolve(), hashlib.sha256(raw).hexdigest(), inspectors, ns[0], rejections)


# ----------------------------------------------------------------------------- machine


@dataclass(frozen=True)
class Presentation:
    study: str  # "knapp" (the qualification set) or "good" (the false-reject test)
    unit: str
    run: int
    score: float
    verdict: str  # pass / review / reject (a unit Triton refused: reject, fail-safe)
    defect: str
    model_version: int | None
    thresholds: tuple[float, float] | None
    error: str | None = None

    @property
    def rejected(self) -> bool:
        """What the gate does: review and reject both remove the unit."""
        return self.verdict != "pass"


_Job = tuple[str, Row, str, int]  # study, row, unit name, run


def _render(job: _Job, study_id: int, variation: Variation) -> bytes:
    _, row, name, run = job
    with Image.open(row.image) as img:
        fmt = img.format
        img.load()
        return _encode(present(img, variation, unit_stream(study_id, name, run, variation.seed)), fmt)


async def _score_jobs(
    settings: Settings, ensemble: str, jobs: list[_Job], variation: Variation,
    progress: Callable[[int], None] | None,
) -> list[Presentation]:
    """Every job's presentation through Triton in batches; the next batch is rendered in a thread
    while Triton scores the current one."""
    inspector = TritonInspector(settings.triton)
    studies = {"knapp": 0, "good": 1}

    def render(batch: list[_Job]) -> list[bytes]:
        return [_render(j, studies[j[0]], variation) for j in batch]

    out: list[Presentation] = []
    batches = [jobs[i : i + BATCH] for i in range(0, len(jobs), BATCH)]
    try:
        pending = asyncio.ensure_future(asyncio.to_thread(render, batches[0])) if batches else None
        for i, batch in enumerate(batches):
            assert pending is not None
            images = await pending
            pending = asyncio.ensure_future(asyncio.to_thread(render, batches[i + 1])) if i + 1 < len(batches) else None
            outcomes = await inspector.score(ensemble, images)
            for (study, _, name, run), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Failed):
                    out.append(Presentation(study, name, run, 1.0, "reject", "unscored", None, None, outcome.reason))
                    continue
                out.append(Presentation(
                    study, name, run, outcome.score, outcome.verdict,
                    "none" if outcome.verdict == "pass" else outcome.defect, outcome.model_version,
                    (outcome.review_threshold, outcome.reject_threshold),
                ))
            if progress:
                progress(len(batch))
    finally:
        await inspector.close()
    return out


def write_presentations(path: Path, presentations: list[Presentation]) -> None:
    """CSV of every presentation's verdict: the evidence every figure of the study is counted from."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(PRESENTATION_COLUMNS)
        for p in presentations:
            w.writerow([p.study, p.unit, p.run, f"{p.score:.6g}", p.verdict, p.defect,
                        "" if p.model_version is None else p.model_version, p.error or ""])
    tmp.replace(path)


# ----------------------------------------------------------------------------- figures


@dataclass
class UnitResult:
    unit: str
    label: str
    defect: str
    manual_rejections: int
    manual_inspections: int
    machine_rejections: int
    machine_inspections: int

    @property
    def p_manual(self) -> float:
        return self.manual_rejections / self.manual_inspections

    @property
    def p_machine(self) -> float:
        return self.machine_rejections / self.machine_inspections

    @property
    def zone_manual(self) -> str:
        return zone(self.manual_rejections, self.manual_inspections)

    @property
    def zone_machine(self) -> str:
        return zone(self.machine_rejections, self.machine_inspections)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "p_manual": self.p_manual, "p_machine": self.p_machine,
                "zone_manual": self.zone_manual, "zone_machine": self.zone_machine}


def knapp_figures(units: list[UnitResult]) -> dict[str, Any]:
    """FQ of both methods over the manual reject zone, RZE, zone counts and the zone matrix."""
    reject_zone = [u for u in units if u.zone_manual == "reject"]
    fq_manual = sum(u.p_manual for u in reject_zone)
    fq_machine = sum(u.p_machine for u in reject_zone)
    n = len(reject_zone)
    matrix = {m: dict.fromkeys(ZONES, 0) for m in ZONES}
    for u in units:
        matrix[u.zone_manual][u.zone_machine] += 1
    rze = fq_machine / fq_manual if fq_manual > 0 else None
    return {
        "units": len(units),
        "reject_zone_units": n,
        "fq_manual": fq_manual,
        "fq_machine": fq_machine,
        "rze_manual": fq_manual / n if n else None,  # each method's share of the reject zone it rejects
        "rze_machine": fq_machine / n if n else None,
        "rze": rze,
        "zones_manual": {z: sum(1 for u in units if u.zone_manual == z) for z in ZONES},
        "zones_machine": {z: sum(1 for u in units if u.zone_machine == z) for z in ZONES},
        "zone_matrix": matrix,  # manual zone -> machine zone -> units
    }


def false_reject_figures(presentations: list[Presentation], units: int, source: str) -> dict[str, Any]:
    n = len(presentations)
    k = sum(p.rejected for p in presentations)
    return {
        "source": source,
        "good_units": units,
        "presentations": n,
        "rejected": k,
        "review": sum(p.verdict == "review" for p in presentations),
        "unscored": sum(p.error is not None for p in presentations),
        "rate": k / n if n else None,
        "upper95": clopper_pearson_upper(k, n) if n else None,
    }


def _served_version(presentations: list[Presentation], version: int | None, classifier: str) -> int | None:
    served = sorted({p.model_version for p in presentations if p.model_version is not None})
    if version is not None and served and served != [version]:
        raise EvaluationError(f"asked for {classifier} version {version}, Triton served {served}")
    if len(served) > 1:
        raise EvaluationError(f"versions {served} of {classifier} answered during one study (a deploy ran?)")
    return served[0] if served else version


def declared_invariance(settings: Settings, classifier: str) -> str:
    """What the classifier recorded at its first training (pipeline.model.geometry); else none assumed."""
    try:
        config = repository.read_config(Path(settings.triton.model_repository), classifier)
    except (repository.RepositoryError, OSError):
        return UNDECLARED
    return repository.parameter(config, repository.INVARIANCE_PARAM) or UNDECLARED


def run_study(
    settings: Settings,
    set_dir: Path,
    manual_csv: Path,
    out_dir: Path,
    *,
    runs: int = DEFAULT_RUNS,
    product: str | None = None,
    model_spec: str | None = None,
    good_dir: Path | None = None,
    good_count: int = DEFAULT_GOOD_COUNT,
    seed: int = 0,
    variation: Variation | None = None,
    invariance: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> KnappStudy:
    """Run the study; write `out_dir/knapp.json`, `knapp.pdf` and `presentations.csv`.

    `variation` gives the ranges (its invariance and seed are replaced); orientation follows
    `invariance` when given, else the invariance the product's classifier declared. Everything
    (set, manual CSV, model, ranges) is checked before the first presentation.
    """
    if runs < 1:
        raise KnappError("the study", [("--runs", f"must be >= 1, got {runs}")])
    if good_count < 0:
        raise KnappError("the study", [("--good-count", f"must be >= 0, got {good_count}")])
    everything = load_dataset(Path(set_dir))
    if product is None:
        if len(everything.products) != 1:
            raise KnappError(f"set {set_dir}", [("--product", f"the set holds several products "
                                                               f"({', '.join(everything.products)}): name one")])
        product = everything.products[0]
    dataset = load_dataset(Path(set_dir), product)
    manual = read_manual(manual_csv, dataset)
    reject_units = [u for u, k in manual.rejections.items() if zone(k, manual.per_unit) == "reject"]
    if not reject_units:
        raise KnappError(f"manual results {manual_csv}", [("", "no unit is in the manual method's reject zone "
                                                               "(p >= 0.7): the study has nothing to compare")])
    if good_dir is not None:
        good_set = load_dataset(Path(good_dir), product)
        good_source = f"good units of {Path(good_dir).resolve()}"
    else:
        good_set, good_source = dataset, "good units of the qualification set"
    good_rows = [r for r in good_set.rows if not r.is_defect]
    if good_count and not good_rows:
        raise KnappError("the false-reject test", [("", f"no good units in {good_source.removeprefix('good units of ')} "
                                                        "(use --good DIR, or --good-count 0)")])

    name, version = parse_model_spec(model_spec)
    models = resolve_models(settings, product, name)
    base = variation or Variation()
    var = Variation(base.max_shift_px, base.light, base.blur_px,
                    invariance or declared_invariance(settings, models.classifier), seed)
    var.check()

    jobs: list[_Job] = [("knapp", r, dataset.relative(r), run) for run in range(runs) for r in dataset.rows]
    good_names = [good_set.relative(r) for r in good_rows]
    for j in range(good_count):
        i = j % len(good_rows)
        jobs.append(("good", good_rows[i], good_names[i], j // len(good_rows)))

    with serving(settings, models, version) as live:
        presentations = asyncio.run(_score_jobs(live, models.ensemble, jobs, var, progress))
    judged = _served_version(presentations, version, models.classifier)

    machine = {u: 0 for u in manual.rejections}
    for p in presentations:
        if p.study == "knapp" and p.rejected:
            machine[p.unit] += 1
    units = [
        UnitResult(dataset.relative(r), r.label, r.defect, manual.rejections[dataset.relative(r)], manual.per_unit,
                   machine[dataset.relative(r)], runs)
        for r in dataset.rows
    ]
    figures = knapp_figures(units)
    rze = figures["rze"]
    verdict = EQUIVALENT if rze is not None and rze >= 1.0 else NOT_EQUIVALENT
    good = [p for p in presentations if p.study == "good"]
    served_thresholds = next((p.thresholds for p in presentations if p.thresholds is not None), None)
    warnings = []
    if len(manual.inspectors) < 3:
        warnings.append(f"{len(manual.inspectors)} manual inspector(s): Knapp studies use several (typically 3 to 5)")
    unscored = sum(p.error is not None for p in presentations)
    if unscored:
        warnings.append(f"{unscored} presentation(s) Triton refused, counted as rejections (fail-safe)")
    study = KnappStudy(
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        product=product,
        model=models.ensemble,
        classifier=models.classifier,
        model_version=judged,
        thresholds=dict(zip(("review", "reject"), served_thresholds, strict=True)) if served_thresholds else {},
        set={"path": str(dataset.root), "units": len(dataset.rows), "content_hash": dataset_hash(dataset),
             "good": sum(not r.is_defect for r in dataset.rows), "defect": sum(r.is_defect for r in dataset.rows)},
        manual={"path": str(manual.path), "sha256": manual.sha256, "inspectors": list(manual.inspectors),
                "inspections_per_inspector": manual.inspections, "inspections_per_unit": manual.per_unit},
        machine={"runs": runs, "presentations": runs * len(dataset.rows),
                 "unscored": sum(p.error is not None for p in presentations if p.study == "knapp")},
        variation=var.as_dict(),
        rule=RULE,
        figures=figures,
        verdict=verdict,
        machine_accepts_manual_rejects=[u.unit for u in units if u.zone_manual == "reject" and u.zone_machine == "accept"],
        machine_rejects_manual_accepts=[u.unit for u in units if u.zone_manual == "accept" and u.zone_machine == "reject"],
        units=[u.as_dict() for u in units],
        false_reject=false_reject_figures(good, len(good_rows), good_source) if good_count else None,
        warnings=warnings,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_presentations(out_dir / "presentations.csv", presentations)
    write_json(study, out_dir / "knapp.json")
    render_pdf(study, out_dir / "knapp.pdf")
    return study


def summary_text(s: KnappStudy) -> str:
    """What the person running the study reads on the terminal."""
    f = s.figures

    def num(x: float | None, fmt: str = ".3f") -> str:
        return "n/a" if x is None else format(x, fmt)

    lines = [
        f"Knapp study of {s.product}: {s.model} ({s.classifier} version {s.model_version}), "
        f"{s.set['units']} units x {s.machine['runs']} presentations; manual: {len(s.manual['inspectors'])} "
        f"inspector(s) x {s.manual['inspections_per_inspector']} inspections",
        f"  manual reject zone   {f['reject_zone_units']} units (p >= 0.7)",
        f"  FQ manual / machine  {num(f['fq_manual'], '.2f')} / {num(f['fq_machine'], '.2f')}",
        f"  RZE                  {num(f['rze'])}  -> {s.verdict.upper()} (rule: RZE >= 1)",
        "  zones manual         " + ", ".join(f"{z} {f['zones_manual'][z]}" for z in ZONES),
        "  zones machine        " + ", ".join(f"{z} {f['zones_machine'][z]}" for z in ZONES),
    ]
    if s.machine_accepts_manual_rejects:
        lines.append(f"  machine accepts, manual rejects: {', '.join(s.machine_accepts_manual_rejects)}")
    fr = s.false_reject
    if fr:
        lines.append(f"  false rejects        {fr['rejected']} of {fr['presentations']} good presentations "
                     f"({100 * fr['rate']:.2f} %, 95 % upper bound {100 * fr['upper95']:.2f} %)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- dry run


def simulate_inputs(
    out: Path, count: int, product: str, *, defect_rate: float = 0.5, subtle_fraction: float = 0.5,
    inspectors: int = 3, inspections: int = DEFAULT_RUNS, seed: int = 0, size: int = 160,
) -> tuple[Path, Path]:
    """A rendered qualification set and a *synthetic* manual results CSV, to rehearse a study.

    The manual results are not anyone's inspection: each unit gets a visibility (good units
    0-0.04, obvious defects 0.85-1.0, subtle ones 0.35-0.9, drawn uniformly), each inspector a
    skill factor 0.9-1.05 on defects, and each inspector's rejections of a unit are binomial
    over `inspections`. Returns (set folder, manual CSV path).
    """
    from pipeline.datasets.folder import LABELS_FILE, NO_DEFECT, write_dataset
    from pipeline.imaging.catalog import product_kind
    from pipeline.imaging.tablets import draw_unit, render_tablet
    from pipeline.wire.codec import encode_png

    if product_kind(product) != "tablet":
        raise KnappError("the simulated study", [("--product", f"{product!r} is not a tablet product: "
                                                               "the dry run renders tablets")])
    if count < 1 or inspectors < 1 or inspections < 1:
        raise KnappError("the simulated study", [("", "count, inspectors and inspections must be >= 1")])
    set_dir = Path(out).resolve() / "set"
    if (set_dir / LABELS_FILE).exists():
        raise FileExistsError(f"{set_dir / LABELS_FILE} exists: choose an empty folder")
    rows: list[Row] = []
    visibility: list[float] = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        defect, subtle = draw_unit(rng, defect_rate, subtle_fraction)
        img = render_tablet(rng, product, defect, subtle=subtle, size=size)
        path = set_dir / (defect or "good") / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(img))
        rows.append(Row(path, product, "defect" if defect else "good", defect or NO_DEFECT))
        lo, hi = (0.0, 0.04) if defect is None else (0.35, 0.9) if subtle else (0.85, 1.0)
        visibility.append(float(rng.uniform(lo, hi)))
    write_dataset(set_dir, rows)
    rng = np.random.default_rng([seed, 1 << 20])
    skills = rng.uniform(0.9, 1.05, size=inspectors)
    manual = Path(out).resolve() / "manual.csv"
    with open(manual, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(MANUAL_COLUMNS)
        for row, q in zip(rows, visibility, strict=True):
            for j, skill in enumerate(skills):
                p = min(1.0, q * skill) if row.is_defect else q
                w.writerow([row.image.relative_to(set_dir).as_posix(), f"inspector-{j + 1}", inspections,
                            int(rng.binomial(inspections, p))])
    return set_dir, manual
