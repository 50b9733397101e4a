#!/usr/bin/env python3
"""Compare the packages installed in this interpreter's environment with a lock file (requirements/*.txt).

    python tools/lockcheck.py requirements/dev.txt                 # the dev venv: hand-installed extras only warn
    python tools/lockcheck.py --exact requirements/app.txt         # the app image's venv: nothing more, nothing less
    python tools/lockcheck.py --subset requirements/triton.txt     # Triton's system Python: the base image has its own
    python tools/lockcheck.py --exact requirements/app.txt --pyproject pyproject.toml --optional-dependencies gige
        # and every requirement of pyproject.toml's [project].dependencies (and those extras) holds: a stale lock fails

Exit status 1 when a locked package is missing or installed at another version (or, with --exact, when the
environment holds a package the lock does not name). Read-only: it inspects package metadata and imports nothing.
Standard library only, so it runs in every image and on every Python the locks target (3.10, 3.11).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys
from pathlib import Path

# Never in a lock: the project itself (installed --no-deps from the checkout) and what a venv brings along.
NOT_LOCKED = {"linesight"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. as one dash."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line of a pip requirements lock (hash lines skipped)."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match:
            pins[normalize(match.group(1))] = match.group(2)
    if not pins:
        raise SystemExit(f"{path}: no `name==version` pins")
    return pins


def installed() -> dict[str, str]:
    """name -> version of each distribution as imported: the first of a name on sys.path wins."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(normalize(name), dist.version)
    return found


def same_version(a: str, b: str) -> bool:
    try:
        from packaging.version import Version
    except ImportError:  # pragma: no cover - an image without packaging
        return a == b
    return Version(a) == Version(b)


def compare(lock: dict[str, str], env: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """(missing, different, extra): locked names absent, installed at another version, installed but not locked."""
    missing = sorted(f"{name}=={version}" for name, version in lock.items() if name not in env)
    different = sorted(
        f"{name}: locked {version}, installed {env[name]}"
        for name, version in lock.items()
        if name in env and not same_version(env[name], version)
    )
    extra = sorted(f"{name}=={version}" for name, version in env.items() if name not in lock and name not in NOT_LOCKED)
    return missing, different, extra


def unmet_requirements(pyproject: Path, extras: list[str], env: dict[str, str]) -> list[str]:
    """Requirements of [project].dependencies and the named extras that the installed versions do not satisfy."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = list(project.get("dependencies", []))
    for extra in extras:
        wanted += project.get("optional-dependencies", {})[extra]
    unmet = []
    for text in wanted:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        version = env.get(normalize(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            unmet.append(f"{text} (installed: {version or 'nothing'})")
    return unmet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lock", type=Path)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--exact", action="store_true", help="a package the lock does not name is an error")
    mode.add_argument("--subset", action="store_true", help="packages the lock does not name are not reported")
    parser.add_argument(
        "--pyproject", type=Path, help="also check its [project].dependencies against what is installed"
    )
    parser.add_argument("--optional-dependencies", nargs="*", default=[], metavar="EXTRA", help="and these extras'")
    args = parser.parse_args(argv)

    lock = locked(args.lock)
    env = installed()
    missing, different, extra = compare(lock, env)
    unmet = unmet_requirements(args.pyproject, args.optional_dependencies, env) if args.pyproject else []
    where = f"{sys.prefix} (Python {sys.version.split()[0]})"
    failed = bool(missing or different or unmet or (args.exact and extra))
    for item in unmet:
        print(
            f"lockcheck: {args.pyproject} requires {item}: a stale lock (`make lock`) or environment", file=sys.stderr
        )
    for title, items in (("missing", missing), ("at another version", different)):
        for item in items:
            print(f"lockcheck: {title}: {item}", file=sys.stderr)
    if extra and not args.subset:
        kind = "error" if args.exact else "warning"
        print(f"lockcheck: {kind}: installed but not in {args.lock}: {', '.join(extra)}", file=sys.stderr)
    if failed:
        print(
            f"lockcheck: {where} does not match {args.lock} ({len(lock)} pins); "
            f"`make install` (or rebuild the image) installs the lock",
            file=sys.stderr,
        )
        return 1
    print(f"lockcheck: {where} matches {args.lock}: {len(lock)} pinned versions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
