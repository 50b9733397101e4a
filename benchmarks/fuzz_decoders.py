"""Fuzz every decoder at the edge (issue 13): each may raise only its declared error.

    python benchmarks/fuzz_decoders.py --n 100000 [--seed 1] [--only frame]

Inputs are structured mutations of a valid message (random bytes, truncated or oversized JSON,
wrong types, huge ints, NaN/Infinity, unicode, NUL and control characters, deep nesting, missing,
duplicated or conflicting headers). A crash is any exception other than the decoder's declared
one; the first few are printed with their input. tests/unit/test_fuzz_decoders.py runs the same
harness on a few thousand inputs per decoder.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.datasets.folder import DatasetError, load_dataset
from pipeline.recipes.schema import RecipeError, parse_recipe
from pipeline.wire.messages import FrameMeta, InspectionResult, MessageError, RejectCommand, check_image_bytes

T0 = 1_700_000_000_000_000_000
ODD: list[Any] = [
    None, True, False, 0, -1, 2**63, 10**30, -(10**30), 1e308, float("nan"), float("inf"), "", " ", "\x00",
    "é✓\u202e", "\ud800", "x" * 5000, [], {}, [1, [2, [3]]], {"a": {"b": None}}, "NaN", "1e999", 3.5,
]


def _valid_result() -> dict[str, Any]:
    return json.loads(InspectionResult("u-1", "line-1", "cam-1", "tablet-round-white-10mm", "LOT", "pass", "model", True,
                                       "none", 0.1, 0.5, "m", "1", T0, T0, T0, "w", class_scores={"good": 0.9},
                                       measurements={"fill_mm": 1.0}, reasons=["r"]).to_json())


def _valid_reject() -> dict[str, Any]:
    return json.loads(RejectCommand("u-1", "line-1", "cam", "LOT", "model", "crack", T0, T0).to_json())


def _valid_recipe() -> dict[str, Any]:
    return {"id": "tablets-10mm", "version": 1, "product": "tablet-round-white-10mm",
            "inspection": [{"name": "classifier", "kind": "classifier", "model": "tablet_inspector", "params": {}}]}


def _mutate_doc(rng: random.Random, doc: Any, depth: int = 0) -> Any:
    """A structurally plausible but wrong document: a field dropped, retyped, or nested deeper."""
    if isinstance(doc, dict) and doc and depth < 3:
        doc = dict(doc)
        key = rng.choice(list(doc))
        op = rng.randrange(5)
        if op == 0:
            del doc[key]
        elif op == 1:
            doc[key] = rng.choice(ODD)
        elif op == 2:
            doc[key] = _mutate_doc(rng, doc[key], depth + 1)
        elif op == 3:
            doc[rng.choice(["", "\x00", "extra", key.upper()])] = rng.choice(ODD)
        else:
            doc[key] = [doc[key]] * rng.randrange(3)
        return doc
    if isinstance(doc, list) and doc and depth < 3:
        return [_mutate_doc(rng, x, depth + 1) for x in doc] + rng.sample(ODD, rng.randrange(2))
    return rng.choice(ODD)


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    op = rng.randrange(6)
    if op == 0:
        return rng.randbytes(rng.randrange(64))
    if op == 1:
        return data[: rng.randrange(len(data) + 1)]
    if op == 2:
        i = rng.randrange(len(data) + 1)
        return data[:i] + rng.randbytes(rng.randrange(1, 8)) + data[i:]
    if op == 3:
        return b"[" * rng.randrange(1, 5000)
    if op == 4:
        return data.replace(b'"', b"", 1) + b"\x00"
    return data * rng.randrange(2, 4)


def _json_inputs(rng: random.Random, valid: Callable[[], dict[str, Any]]) -> Iterator[bytes | str | None]:
    while True:
        doc = valid()
        for _ in range(rng.randrange(1, 4)):
            doc = _mutate_doc(rng, doc)
        try:
            text = json.dumps(doc, allow_nan=True)
        except (ValueError, TypeError):
            text = "{}"
        r = rng.random()
        if r < 0.7:
            yield text.encode("utf-8", "surrogatepass")
        elif r < 0.8:
            yield text
        elif r < 0.95:
            yield _mutate_bytes(rng, json.dumps(valid()).encode())
        else:
            yield rng.choice([None, b"", b"null", b"1", b'"x"', b"NaN", b"9" * 5000])


def _frame_inputs(rng: random.Random) -> Iterator[tuple[list[tuple[str, Any]], bytes]]:
    base = FrameMeta("u-1", "line-1", "cam-1", "tablet-round-white-10mm", T0, "image/png", "LOT", 42).to_headers()
    while True:
        headers: list[tuple[str, Any]] = list(base)
        for _ in range(rng.randrange(1, 4)):
            op = rng.randrange(6)
            i = rng.randrange(len(headers)) if headers else 0
            if op == 0 and headers:
                del headers[i]
            elif op == 1 and headers:
                value = headers[i][1]
                raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
                headers[i] = (headers[i][0], _mutate_bytes(rng, raw))
            elif op == 2 and headers:
                headers.append((headers[i][0], rng.choice([b"other", headers[i][1]])))
            elif op == 3 and headers:
                odd = rng.choice(ODD)
                headers[i] = (headers[i][0], odd if isinstance(odd, str) else str(odd).encode("utf-8", "surrogatepass"))
            elif op == 4 and headers:
                headers[i] = (headers[i][0], None)
            else:
                headers.append((rng.choice(["ls-x", "", "\x00", "ls-unit-id"]), rng.randbytes(rng.randrange(20))))
        image = rng.choice([b"\x89PNG\r\n\x1a\n" + rng.randbytes(20), b"\xff\xd8\xff", b"", rng.randbytes(10)])
        yield headers, image


def _decode_frame(item: tuple[list[tuple[str, Any]], bytes]) -> None:
    headers, image = item
    FrameMeta.from_headers(headers, ref_ns=T0)
    check_image_bytes(image)


def _decode_recipe(item: bytes | str | None) -> None:
    try:
        doc = json.loads(item) if item else None
    except (ValueError, RecursionError):
        doc = item
    parse_recipe(doc)  # type: ignore[arg-type]  # a decoded activation's recipe: any JSON value


class _Rows:
    """labels.csv documents: valid rows mutated field by field, or random text."""

    def __init__(self, rng: random.Random, root: Path) -> None:
        self.rng, self.root = rng, root
        from PIL import Image

        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (9, 90, 200)).save(root / "img" / "a.png")

    def __iter__(self) -> Iterator[str]:
        rng = self.rng
        fields = ["img/a.png", "tablet-round-white-10mm", "defect", "crack"]
        while True:
            row = list(fields)
            for _ in range(rng.randrange(1, 3)):
                i = rng.randrange(len(row))
                odd = rng.choice(ODD + ["../x.png", "/etc/passwd", "img\\a.png", "a,b", '"q', "\r\n", "img/a.png"])
                row[i] = odd if isinstance(odd, str) else str(odd)
            header = rng.choice(["image,product,label,defect", "image,label,product,defect", "image,product,label",
                                 "image,image,product,label,defect", "", "\ufeffimage,product,label,defect"])
            lines = [header, ",".join(row)] * 1 + ([",".join(row)] if rng.random() < 0.3 else [])
            text = "\n".join(lines)
            if rng.random() < 0.1:
                text = rng.randbytes(rng.randrange(80)).decode("latin-1")
            yield text


def _decode_row(root: Path) -> Callable[[str], None]:
    def decode(text: str) -> None:
        (root / "labels.csv").write_text(text, encoding="utf-8", errors="surrogatepass")
        load_dataset(root)

    return decode


def fuzz(name: str, n: int, seed: int = 1, show: int = 3) -> tuple[int, int, float]:
    """Run `n` inputs through decoder `name`; returns (inputs, crashes, seconds)."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cases: dict[str, tuple[Iterator[Any], Callable[[Any], object], type[Exception]]] = {
            "frame": (_frame_inputs(rng), _decode_frame, MessageError),
            "result": (_json_inputs(rng, _valid_result), InspectionResult.from_json, MessageError),
            "reject": (_json_inputs(rng, _valid_reject), RejectCommand.from_json, MessageError),
            "recipe": (_json_inputs(rng, _valid_recipe), _decode_recipe, RecipeError),
            "dataset_row": (iter(_Rows(rng, root)), _decode_row(root), DatasetError),
        }
        inputs, decode, declared = cases[name]
        crashes = 0
        t = time.perf_counter()
        for _ in range(n):
            item = next(inputs)
            try:
                decode(item)
            except declared:
                pass
            except Exception as exc:  # noqa: BLE001 - counting them is the point
                crashes += 1
                if crashes <= show:
                    print(f"  crash in {name}: {type(exc).__name__}: {str(exc)[:200]} <- {str(item)[:200]!r}")
        return n, crashes, time.perf_counter() - t


DECODERS = ("frame", "result", "reject", "recipe", "dataset_row")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", choices=DECODERS, action="append")
    args = ap.parse_args()
    total = 0
    print(f"{'decoder':12s} {'inputs':>8s} {'crashes':>8s} {'seconds':>8s}")
    for name in args.only or DECODERS:
        n, crashes, s = fuzz(name, args.n, args.seed)
        total += crashes
        print(f"{name:12s} {n:8d} {crashes:8d} {s:8.1f}", flush=True)
    return 1 if total else 0


if __name__ == "__main__":
    raise SystemExit(main())
