"""The code the Triton image's python models import must run on that image's Python (3.10).

The NGC tritonserver image's python backend stub is Python 3.10 (infra/docker/triton.Dockerfile
installs the package with --ignore-requires-python and imports these modules at build time);
the rest of the project is 3.11. A 3.11-only name in this closure breaks the image build (or, in
an older image, every measurement model on the line).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# What the Dockerfile's import check imports: the python models' code.
ROOTS = ("pipeline.model.preprocess", "pipeline.inspections.vial", "pipeline.inspections.blister",
         "pipeline.inspections.label", "pipeline.inspections.serving")
# Standard-library names that appeared in 3.11 (and would pass every test run on 3.11).
ONLY_311 = ("from datetime import UTC", "datetime.UTC", "import tomllib", "from typing import Self",
            "StrEnum", "except*", "ExceptionGroup", "asyncio.TaskGroup", "asyncio.timeout(")


def _closure() -> list[Path]:
    """Source files of the project's own modules the roots import (in a fresh interpreter)."""
    code = ("import importlib, json, sys\nbefore = set(sys.modules)\n"
            f"for m in {ROOTS!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules[m].__file__ for m in set(sys.modules) - before\n"
            "                        if m.split('.')[0] in ('pipeline', 'streams'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    return [Path(p) for p in json.loads(out.stdout)]


def test_the_python_models_closure_uses_nothing_newer_than_python_310() -> None:
    files = _closure()
    assert any(f.name == "preprocess.py" for f in files)
    found = [f"{f.name}: {p}" for f in files for p in ONLY_311 if p in f.read_text()]
    assert not found, f"3.11-only names in code the Triton image (Python 3.10) imports: {found}"


def _python310() -> str | None:
    """A Python 3.10 that runs (a pyenv shim may exist without the version being active)."""
    candidates = [shutil.which("python3.10"), *map(str, sorted(Path.home().glob(".pyenv/versions/3.10*/bin/python3.10")))]
    for exe in filter(None, candidates):
        if subprocess.run([exe, "-c", "pass"], capture_output=True).returncode == 0:
            return exe
    return None


PYTHON310 = _python310()


@pytest.mark.skipif(PYTHON310 is None, reason="no Python 3.10 on this machine")
def test_the_closure_compiles_under_python_310() -> None:
    files = _closure()
    assert PYTHON310 is not None
    result = subprocess.run([PYTHON310, "-c", "import sys\n"
                             "for f in sys.argv[1:]: compile(open(f).read(), f, 'exec')",
                             *map(str, files)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
