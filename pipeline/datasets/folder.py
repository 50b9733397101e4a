"""The inspection dataset folder: the one interchange format of labelled images.

Implements the format of docs/datasets.md: `DATASET/labels.csv` (UTF-8, header, columns
image, product, label, defect in that order, extra columns ignored) plus image files in any
sub-folders. Loading checks every row and raises one `DatasetError` listing every problem
(file/row and reason), so a plant fixes its whole export in one pass and no tool ever trains on
a silently cleaned set.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

LABELS_FILE = "labels.csv"
# Written beside labels.csv by `linesight dataset export --reviewed` (docs/review.md): which review
# decisions the rows come from; training copies it into the model card.
REVIEW_EXPORT = "review_export.json"
COLUMNS: tuple[str, ...] = ("image", "product", "label", "defect")
LABELS: tuple[str, ...] = ("good", "defect")
NO_DEFECT = "none"
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG")
IMAGE_MODES: tuple[str, ...] = ("L", "RGB")  # 8-bit grey or RGB
_DEFECT_NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


class DatasetError(ValueError):
    """A dataset that must not be used; `problems` lists (where, reason) for every bad row."""

    def __init__(self, root: Path, problems: Sequence[tuple[str, str]]):
        self.root = root
        self.problems: list[tuple[str, str]] = list(problems)
        lines = "\n".join(f"  {where}: {reason}" for where, reason in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in dataset {root}:\n{lines}")


@dataclass(frozen=True)
class Row:
    """One labelled image. `image` is absolute once loaded; `defect` is 'none' for good units."""

    image: Path
    product: str
    label: str
    defect: str

    @property
    def is_defect(self) -> bool:
        return self.label == "defect"


@dataclass(frozen=True)
class Dataset:
    """Validated rows of one dataset folder (optionally restricted to one product)."""

    root: Path
    rows: tuple[Row, ...]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    @property
    def products(self) -> tuple[str, ...]:
        return tuple(sorted({r.product for r in self.rows}))

    def relative(self, row: Row) -> str:
        """The row's image path as written in labels.csv."""
        return row.image.relative_to(self.root).as_posix()


def _check_fields(product: str, label: str, defect: str) -> list[str]:
    """Reasons why these product/label/defect fields break the format (empty if fine)."""
    reasons: list[str] = []
    if not product.strip():
        reasons.append("empty product")
    elif product != product.strip():
        reasons.append(f"product {product!r} has leading/trailing spaces")
    if label not in LABELS:
        reasons.append(f"label {label!r} is not 'good' or 'defect'")
    if label == "good" and defect != NO_DEFECT:
        reasons.append(f"label 'good' but defect is {defect!r} (must be 'none')")
    if label == "defect" and defect in (NO_DEFECT, ""):
        reasons.append(f"label 'defect' but defect is {defect!r} (needs a defect class)")
    if defect not in (NO_DEFECT, "") and not _DEFECT_NAME.match(defect):
        reasons.append(f"defect class {defect!r} must be lower-case words joined by '-'")
    return reasons


def _check_path(root: Path, rel: str) -> tuple[Path | None, str | None]:
    """Resolve a labels.csv image path inside root, or say why it is not acceptable."""
    if not rel.strip():
        return None, "empty image path"
    if "\\" in rel:
        return None, f"image path {rel!r} must use forward slashes"
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts:
        return None, f"image path {rel!r} must be relative to the dataset folder, inside it"
    return root.joinpath(*pure.parts), None


def _check_image(path: Path) -> str | None:
    """Why this image file cannot be used (None when it is a readable 8-bit PNG/JPEG)."""
    try:
        if not path.is_file():
            return "image file not found"
    except (OSError, ValueError) as exc:  # a name too long for the file system, NUL in it: not a file
        return f"image path cannot name a file: {exc}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"image file cannot be read: {exc.strerror or exc}"
    try:
        img = Image.open(io.BytesIO(data))
    except Exception as exc:  # UnidentifiedImageError, DecompressionBombError, ...
        return f"unreadable image: {exc}"
    if img.format not in IMAGE_FORMATS:
        return f"image format {img.format} is not PNG or JPEG"
    if img.mode not in IMAGE_MODES:
        return f"image mode {img.mode} is not 8-bit grey (L) or RGB"
    try:
        img.load()
    except Exception as exc:  # truncated or corrupt pixel data
        return f"unreadable image: {exc}"
    return None


def load_dataset(root: Path, product: str | None = None) -> Dataset:
    """Read and validate `root/labels.csv` and every image it lists.

    With `product`, only that product's rows are returned, but every row is still validated.
    Raises DatasetError listing every problem found.
    """
    root = Path(root).resolve()
    labels = root / LABELS_FILE
    if not labels.is_file():
        raise DatasetError(root, [(LABELS_FILE, f"not found in {root}")])
    try:
        text = labels.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(root, [(LABELS_FILE, f"not UTF-8: {exc}")]) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise DatasetError(root, [(LABELS_FILE, "empty file (no header row)")])
    header = [h.strip() for h in header]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise DatasetError(
            root, [(f"{LABELS_FILE}:1", f"missing column(s) {', '.join(missing)}; header is {header}")]
        )
    duplicated = sorted({c for c in COLUMNS if header.count(c) > 1})
    if duplicated:
        raise DatasetError(root, [(f"{LABELS_FILE}:1", f"duplicated column(s) {', '.join(duplicated)}")])
    pos = [header.index(c) for c in COLUMNS]
    if pos != sorted(pos):
        raise DatasetError(
            root, [(f"{LABELS_FILE}:1", f"columns must come in the order {', '.join(COLUMNS)}; header is {header}")]
        )

    problems: list[tuple[str, str]] = []
    rows: list[Row] = []
    first_line: dict[Path, int] = {}
    for fields in reader:
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue  # blank line
        rel = fields[pos[0]] if len(fields) > pos[0] else ""
        where = f"{LABELS_FILE}:{line} {rel}".rstrip()
        if len(fields) != len(header):
            problems.append((where, f"row has {len(fields)} fields, header has {len(header)}"))
            continue
        prod, label, defect = (fields[p] for p in pos[1:])
        reasons = _check_fields(prod, label, defect)
        path, path_problem = _check_path(root, rel)
        if path_problem:
            reasons.append(path_problem)
        elif path is not None:
            if path in first_line:
                reasons.append(f"image listed again (first at line {first_line[path]})")
            else:
                first_line[path] = line
                image_problem = _check_image(path)
                if image_problem:
                    reasons.append(image_problem)
        problems.extend((where, reason) for reason in reasons)
        if not reasons and path is not None:
            rows.append(Row(path, prod, label, defect))

    if not problems:
        if not rows:
            problems.append((LABELS_FILE, "no rows"))
        elif product is not None and not any(r.product == product for r in rows):
            present = ", ".join(sorted({r.product for r in rows}))
            problems.append((LABELS_FILE, f"no rows for product {product!r} (products present: {present})"))
    elif product is not None and not any(r.product == product for r in rows):
        problems.append((LABELS_FILE, f"no valid rows for product {product!r}"))
    if problems:
        raise DatasetError(root, problems)
    if product is not None:
        rows = [r for r in rows if r.product == product]
    return Dataset(root, tuple(rows))


def write_dataset(root: Path, rows: Iterable[Row]) -> Path:
    """Write `root/labels.csv` for rows whose images lie under root; returns its path.

    Image paths may be absolute (under root) or relative to root. Field problems of every row
    are reported together as a DatasetError; nothing is written then.
    """
    root = Path(root).resolve()
    problems: list[tuple[str, str]] = []
    lines: list[tuple[str, str, str, str]] = []
    for i, row in enumerate(rows, start=1):
        image = Path(row.image)
        where = f"row {i} {image}"
        try:
            rel = (image if image.is_absolute() else root / image).resolve().relative_to(root).as_posix()
        except ValueError:
            problems.append((where, f"image is not inside the dataset folder {root}"))
            continue
        reasons = _check_fields(row.product, row.label, row.defect)
        problems.extend((where, r) for r in reasons)
        lines.append((rel, row.product, row.label, row.defect))
    if problems:
        raise DatasetError(root, problems)
    if not lines:
        raise DatasetError(root, [("rows", "no rows to write")])
    root.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(lines)
    target = root / LABELS_FILE
    tmp = target.with_name(f".{LABELS_FILE}.tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, target)
    return target


def dataset_hash(dataset: Dataset) -> str:
    """Content hash for model cards: sha256 over sorted (image sha256, product, label, defect).

    Independent of row order and file names; changes with any pixel byte or label.
    """
    entries = sorted(
        f"{hashlib.sha256(r.image.read_bytes()).hexdigest()}\t{r.product}\t{r.label}\t{r.defect}\n"
        for r in dataset.rows
    )
    h = hashlib.sha256()
    for e in entries:
        h.update(e.encode())
    return h.hexdigest()


def review_export(root: Path) -> dict[str, Any] | None:
    """The review-export manifest of a dataset folder (None: the folder is not such an export)."""
    path = Path(root) / REVIEW_EXPORT
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(Path(root), [(str(path), f"unreadable review-export manifest: {exc}")]) from None
    return data if isinstance(data, dict) else None
