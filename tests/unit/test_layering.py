"""Every import runs down: a package imports only its own modules and packages of lower layers.

The layers follow the data's way (docs/architecture.md): foundations at the bottom, the stages
above them, the commands on top. Packages of one layer are independent of each other, so no two
packages can import each other. Imports are read from the source (top-level and inside
functions alike), so a lazy import cannot hide a backward one.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Bottom to top. A module belongs to the longest package prefix listed here.
LAYERS: list[tuple[str, ...]] = [
    ("pipeline.settings", "pipeline.core"),
    ("pipeline.wire",),
    ("pipeline.kafka", "pipeline.clickhouse", "pipeline.serving"),
    ("pipeline.embedded", "pipeline.datasets"),
    ("pipeline.imaging",),
    ("pipeline.inspections",),
    ("pipeline.audit",),
    ("pipeline.auth",),
    ("pipeline.model",),
    ("pipeline.recipes",),
    ("pipeline.alerts", "pipeline.gateway", "pipeline.actuation", "pipeline.review"),
    ("streams",),
    ("pipeline.analytics", "pipeline.validation"),
    ("pipeline.dashboard",),
    ("pipeline.demo",),
    ("pipeline.cli",),
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def package_of(module: str) -> str | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in RANK:
            return prefix
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str) -> set[str]:
    """Modules `path` imports (absolute names; `from pkg import submodule` resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}")}
    return {m for m in found if m.split(".")[0] in ("pipeline", "streams")}


def _is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def source_modules() -> dict[str, Path]:
    files = [*ROOT.joinpath("pipeline").rglob("*.py"), *ROOT.joinpath("streams").rglob("*.py")]
    return {module_name(p): p for p in files}


MODULES = source_modules()
GRAPH = {name: imports_of(path, name) for name, path in MODULES.items()}


def test_every_module_has_a_layer() -> None:
    lost = sorted(m for m in MODULES if m not in ("pipeline",) and package_of(m) is None)
    assert lost == [], f"modules outside every layer (add their package to LAYERS): {lost}"


def test_imports_run_down() -> None:
    backward = []
    for module, targets in GRAPH.items():
        own = package_of(module)
        if own is None:
            continue
        for target in sorted(targets):
            other = package_of(target)
            if other is None or other == own:
                continue
            if RANK[other] >= RANK[own]:
                backward.append(f"{module} -> {target} ({other} is not below {own})")
    assert backward == [], "imports that run up or sideways:\n" + "\n".join(backward)


def test_no_import_cycles_between_files() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for module, targets in GRAPH.items():
        edges[module] |= {t for t in targets if t in MODULES and t != module}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])
    # A package's __init__ may import its own submodules (re-exports); a submodule importing it back is a cycle.
    assert cycles == [], f"import cycles: {cycles}"


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("pipeline.actuation.service", "tritonclient"),  # the actuator does not load the Triton client
        ("streams.app", "pipeline.imaging"),  # the worker does not load the synthetic renderers
        ("pipeline.settings", "asyncua"),  # settings load everywhere; the OPC UA stack only in the gate
    ],
)
def test_service_does_not_load(module: str, forbidden: str) -> None:
    """What a process loads, checked by importing the module in a fresh interpreter."""
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m == {forbidden!r} or m.startswith({forbidden!r} + '.')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"importing {module} loads {out.stdout.strip()}"


def test_architecture_doc_shows_these_layers_and_every_package() -> None:
    """docs/architecture.md is what a newcomer reads: its layer table is this one, and its package
    table names every package of the tree."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    layers_section = doc.split("### Layers", 1)[1].split("###", 1)[0]
    documented = [
        tuple(re.findall(r"`([\w.]+)`", row.split("|")[2]))
        for row in layers_section.splitlines()
        if re.match(r"\|\s*\d+", row)
    ]
    assert documented == LAYERS
    packages_section = doc.split("### Packages", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([\w/]+)/`", packages_section, flags=re.M))
    on_disk = {
        p.parent.relative_to(ROOT).as_posix()
        for p in [*ROOT.joinpath("pipeline").glob("*/__init__.py"), ROOT / "streams" / "__init__.py"]
    }
    assert on_disk - listed == set(), "packages missing from docs/architecture.md"
