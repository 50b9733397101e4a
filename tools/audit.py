#!/usr/bin/env python3
"""Known-vulnerability audit of the lock files (requirements/*.txt): `make audit`, part of `make test`.

    python tools/audit.py requirements/dev.txt requirements/app.txt requirements/triton.txt
    python tools/audit.py --refresh-snapshot PATH/advisory-database/vulns    # rewrite requirements/advisories.json

Online (a vulnerability service answers): pip-audit checks every locked version (`-r LOCK --no-deps
--disable-pip`), OSV first, else PyPI's per-release JSON. Offline (neither answers, e.g. an air-gapped
plant or CI without them): it says so in a banner and checks the locks against the advisory snapshot
requirements/advisories.json (OSV records of the PyPA advisory database for the locked packages, with the
snapshot's date), so an old pin with a published advisory still fails the build.

AUDIT_ONLINE=auto (default): online when reachable, else the snapshot. AUDIT_ONLINE=require: no service is a
failure. AUDIT_ONLINE=skip: the snapshot only, no network.

Findings fail the audit unless requirements/audit-exceptions.toml accepts them, each with a reason:

    [[exception]]
    id = "GHSA-xxxx-xxxx-xxxx"      # or PYSEC-/CVE- id; an alias matches too
    package = "name"
    reason = "why the vulnerable code path is not reachable here, or what mitigates it"
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT / "requirements" / "advisories.json"
EXCEPTIONS = ROOT / "requirements" / "audit-exceptions.toml"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")
PROBES = {
    # What pip-audit's services ask for: OSV's query API, PyPI's JSON for one release.
    "osv": (
        "POST",
        "https://api.osv.dev/v1/query",
        b'{"package": {"name": "pip", "ecosystem": "PyPI"}, "version": "24.0"}',
    ),
    "pypi": ("GET", "https://pypi.org/pypi/pip/24.0/json", None),
}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, str]:
    found = {}
    for line in lock.read_text().splitlines():
        match = PIN.match(line)
        if match:
            found[normalize(match.group(1))] = match.group(2)
    return found


@dataclass
class Finding:
    lock: str
    package: str
    version: str
    id: str
    aliases: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    summary: str = ""

    def ids(self) -> set[str]:
        return {self.id, *self.aliases}


# --------------------------------------------------------------------------- exceptions


def load_exceptions(path: Path = EXCEPTIONS) -> list[dict[str, str]]:
    if not path.exists():
        return []
    entries = tomllib.loads(path.read_text()).get("exception", [])
    for entry in entries:
        missing = {"id", "package", "reason"} - entry.keys()
        if missing or not str(entry.get("reason", "")).strip():
            raise SystemExit(f"{path}: an exception needs id, package and a reason: {entry}")
    return entries


def accepted(finding: Finding, exceptions: list[dict[str, str]]) -> dict[str, str] | None:
    for entry in exceptions:
        if normalize(entry["package"]) == finding.package and entry["id"] in finding.ids():
            return entry
    return None


# --------------------------------------------------------------------------- online: pip-audit


def reachable(service: str, timeout: float = 8.0) -> tuple[bool, str]:
    method, url, body = PROBES[service]
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            json.load(response)
        return True, url
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"{url}: {getattr(exc, 'reason', exc)}"


def pip_audit(lock: Path, service: str) -> list[Finding]:
    """pip-audit over one lock's pins (no resolution, no install), its JSON report turned into findings."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [
            sys.executable, "-m", "pip_audit", "-r", str(lock), "--no-deps", "--disable-pip",
            "--vulnerability-service", service, "--format", "json", "--output", str(report),
            "--progress-spinner", "off", "--timeout", "20",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if not report.exists():
            raise RuntimeError(f"pip-audit ({service}) failed on {lock}: {result.stderr.strip()[-2000:]}")
        data = json.loads(report.read_text())
    dependencies = data.get("dependencies", [])
    skipped = [d for d in dependencies if "skip_reason" in d]
    if dependencies and len(skipped) == len(dependencies):
        raise RuntimeError(f"pip-audit ({service}) could audit none of {lock}'s pins: {skipped[0]['skip_reason']}")
    for dep in skipped:
        print(f"audit: warning: {lock}: {dep['name']} not audited: {dep['skip_reason']}", file=sys.stderr)
    return [
        Finding(str(lock), normalize(dep["name"]), dep["version"], vuln["id"], vuln.get("aliases", []),
                vuln.get("fix_versions", []), (vuln.get("description") or "")[:160])
        for dep in dependencies
        for vuln in dep.get("vulns", [])
    ]  # fmt: skip


# --------------------------------------------------------------------------- partial: PyPI's record of the newest release


def pypi_project(name: str, timeout: float = 20.0) -> dict:
    with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=timeout) as response:
        data = json.load(response)
    return {"latest": data["info"]["version"], "vulns": data.get("vulnerabilities") or []}


def latest_release_findings(locks: list[Path]) -> tuple[list[Finding], set[tuple[str, str]]]:
    """PyPI's project JSON (reachable where its per-release JSON is not) lists the known vulnerabilities of the
    newest release only. A pin that is the newest release is audited exactly; a vulnerability of the newest
    release is counted against an older pin too (nothing fixed it yet). Returns the findings and the
    (package, version) pins this did not cover: the older ones, left to the snapshot."""
    from concurrent.futures import ThreadPoolExecutor

    names = sorted({name for lock in locks for name in pins(lock)})
    with ThreadPoolExecutor(8) as pool:
        projects = dict(zip(names, pool.map(pypi_project, names), strict=True))
    findings, older = [], set()
    for lock in locks:
        for name, version in pins(lock).items():
            project = projects[name]
            if version.split("+", 1)[0] != project["latest"]:
                older.add((name, version))
            for vuln in project["vulns"]:
                if vuln.get("withdrawn"):
                    continue
                summary = " ".join(str(vuln.get("summary") or vuln.get("details") or "").split())[:160]
                findings.append(
                    Finding(str(lock), name, version, vuln["id"], vuln.get("aliases") or [],
                            vuln.get("fixed_in") or [], summary)
                )  # fmt: skip
    return findings, older


# --------------------------------------------------------------------------- offline: the snapshot


def affected(version: str, advisory: dict) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        v = Version(version)
    except InvalidVersion:
        return version in advisory.get("versions", [])
    if version in advisory.get("versions", []):
        return True
    for introduced, fixed, last_affected in advisory.get("ranges", []):
        try:
            above = v >= Version(introduced or "0")
            below = (not fixed or v < Version(fixed)) and (not last_affected or v <= Version(last_affected))
        except InvalidVersion:
            continue
        if above and below:
            return True
    return False


def snapshot_findings(lock: Path, snapshot: dict, only: set[tuple[str, str]] | None = None) -> list[Finding]:
    by_package: dict[str, list[dict]] = {}
    for advisory in snapshot["advisories"]:
        by_package.setdefault(advisory["package"], []).append(advisory)
    findings = []
    for name, version in pins(lock).items():
        if only is not None and (name, version) not in only:
            continue
        public = version.split("+", 1)[0]  # torch 2.13.0+cpu is torch 2.13.0's source
        for advisory in by_package.get(name, []):
            if affected(public, advisory):
                findings.append(
                    Finding(str(lock), name, version, advisory["id"], advisory.get("aliases", []),
                            advisory.get("fixed", []), advisory.get("summary", ""))
                )  # fmt: skip
    return findings


def refresh_snapshot(vulns: Path, locks: list[Path], out: Path = SNAPSHOT) -> int:
    """Keep the OSV records (YAML or JSON) under `vulns` that name a package of the locks."""
    import yaml

    names = {name for lock in locks for name in pins(lock)}
    advisories = []
    for path in sorted(vulns.rglob("*")):
        if path.suffix not in (".yaml", ".yml", ".json") or normalize(path.parent.name) not in names:
            continue
        record = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        if record.get("withdrawn"):
            continue
        for aff in record.get("affected", []):
            package = normalize(aff.get("package", {}).get("name", ""))
            if package not in names or aff.get("package", {}).get("ecosystem") != "PyPI":
                continue
            ranges, fixed = [], []
            for rng in aff.get("ranges", []):
                if rng.get("type") != "ECOSYSTEM":
                    continue
                introduced = None
                for event in rng.get("events", []):
                    if "introduced" in event:
                        if introduced is not None:
                            ranges.append([introduced, None, None])
                        introduced = str(event["introduced"])
                    elif "fixed" in event or "last_affected" in event:
                        end_fixed, end_last = event.get("fixed"), event.get("last_affected")
                        ranges.append([introduced or "0", end_fixed and str(end_fixed), end_last and str(end_last)])
                        if end_fixed:
                            fixed.append(str(end_fixed))
                        introduced = None
                if introduced is not None:
                    ranges.append([introduced, None, None])
            entry = {
                "id": record["id"],
                "aliases": record.get("aliases", []),
                "package": package,
                "summary": " ".join(str(record.get("summary") or record.get("details", "")).split())[:160],
                "ranges": ranges,
                "fixed": fixed,
            }
            if not ranges:
                entry["versions"] = [str(v) for v in aff.get("versions", [])]
            advisories.append(entry)
    source = os.environ.get("AUDIT_SNAPSHOT_SOURCE", str(vulns))
    out.write_text(
        json.dumps({"source": source, "packages": sorted(names), "advisories": advisories}, indent=1, sort_keys=True)
        + "\n"
    )
    print(f"audit: {out}: {len(advisories)} advisories for {len(names)} locked packages from {source}")
    return 0


# --------------------------------------------------------------------------- main


def banner(lines: list[str]) -> None:
    print("audit: " + "=" * 100, file=sys.stderr)
    for line in lines:
        print(f"audit: {line}", file=sys.stderr)
    print("audit: " + "=" * 100, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("locks", type=Path, nargs="*", default=sorted((ROOT / "requirements").glob("*.txt")))
    parser.add_argument("--refresh-snapshot", type=Path, metavar="VULNS_DIR")
    args = parser.parse_args(argv)
    if args.refresh_snapshot:
        return refresh_snapshot(args.refresh_snapshot, args.locks)

    mode = os.environ.get("AUDIT_ONLINE", "auto")
    if mode not in ("auto", "require", "skip"):
        raise SystemExit(f"AUDIT_ONLINE={mode}: auto, require or skip")
    exceptions = load_exceptions()
    why_not: list[str] = []
    findings: list[Finding] | None = None
    how = ""
    if mode != "skip":
        for service in PROBES:
            ok, detail = reachable(service)
            if not ok:
                why_not.append(detail)
                continue
            try:
                findings = [f for lock in args.locks for f in pip_audit(lock, service)]
                how = f"pip-audit, vulnerability service {service}"
                break
            except RuntimeError as exc:
                why_not.append(str(exc))
    if findings is None and mode == "require":
        banner(["FAILED: no vulnerability service answered (AUDIT_ONLINE=require):", *[f"  {w}" for w in why_not]])
        return 1
    if findings is None:
        snapshot = json.loads(SNAPSHOT.read_text())
        lines = ["ONLINE AUDIT SKIPPED (AUDIT_ONLINE=skip)."] if mode == "skip" else [
            "FULL ONLINE AUDIT NOT POSSIBLE: no vulnerability service answered:", *[f"  {w}" for w in why_not]
        ]  # fmt: skip
        older: set[tuple[str, str]] | None = None
        if mode != "skip":
            try:
                findings, older = latest_release_findings(args.locks)
                total = len({(n, v) for lock in args.locks for n, v in pins(lock).items()})
                lines.append(
                    f"PyPI's current vulnerability record of each project's newest release covers {total - len(older)} "
                    f"of {total} distinct pins exactly; the {len(older)} older pins "
                    f"({', '.join(sorted(f'{n}=={v}' for n, v in older))}) are checked against the snapshot below only."
                )
                how = "PyPI's record of the newest releases and the advisory snapshot"
            except (OSError, ValueError, KeyError) as exc:
                lines.append(f"  https://pypi.org/pypi/<name>/json: {getattr(exc, 'reason', exc)}")
                findings, older = None, None
        if findings is None:
            findings = []
            how = "advisory snapshot (offline)"
        unknown = sorted({n for lock in args.locks for n in pins(lock)} - set(snapshot["packages"]))
        lines.append(
            f"Advisory snapshot {SNAPSHOT.relative_to(ROOT)}: {len(snapshot['advisories'])} advisories; "
            f"{snapshot['source']}. Advisories published after it are not seen: run `make audit` where "
            "OSV or PyPI's per-release JSON answers before a release."
        )
        if unknown:
            lines.append(f"Packages the snapshot was not refreshed for: {', '.join(unknown)}")
        banner(lines)
        for lock in args.locks:
            findings += snapshot_findings(lock, snapshot, older)

    open_findings = 0
    seen: set[tuple[str, str, str]] = set()
    for finding in sorted(findings, key=lambda f: (f.package, f.id, f.lock)):
        if (finding.lock, finding.package, finding.id) in seen:
            continue
        seen.add((finding.lock, finding.package, finding.id))
        entry = accepted(finding, exceptions)
        fix = f"; fixed in {', '.join(finding.fixed)}" if finding.fixed else ""
        label = f"{finding.lock}: {finding.package}=={finding.version} {finding.id}"
        if finding.aliases:
            label += f" ({', '.join(finding.aliases[:3])})"
        if entry:
            print(f"audit: accepted: {label}{fix}: {entry['reason'].strip()}")
        else:
            open_findings += 1
            print(f"audit: VULNERABLE: {label}{fix}: {finding.summary}", file=sys.stderr)
    total = sum(len(pins(lock)) for lock in args.locks)
    locks = ", ".join(str(lock) for lock in args.locks)
    if open_findings:
        print(
            f"audit: {open_findings} finding(s) in {locks} ({how}): raise the pin (`make lock UPGRADE=1`, or a range "
            f"in pyproject.toml) or justify it in {EXCEPTIONS.relative_to(ROOT)}",
            file=sys.stderr,
        )
        return 1
    print(f"audit: {total} pins of {locks}: no open finding ({how}; {len(seen)} accepted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
