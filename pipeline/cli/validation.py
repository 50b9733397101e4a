"""`linesight validation testset|criteria|report|approve|status`: the validation report of a model
version (docs/validation.md, "Validation report")."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.cli.handlers import with_settings
from pipeline.settings import Settings

# Exit status of `validation report` when the report was written and its criteria failed.
CRITERIA_FAILED_EXIT = 3


def _target(settings: Settings, product: str) -> tuple[str, str]:
    from pipeline.model.deploy import resolve_classifier

    return resolve_classifier(settings, product)


def cmd_testset_register(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.cli.audit import gmp_context, login
    from pipeline.validation.testsets import REGISTER_ACTION, register_testset

    with gmp_context(settings) as ctx:
        who = login(ctx, args, REGISTER_ACTION, args.name)
        entry, record, signature = register_testset(settings, ctx.trail, ctx.guard, who, args.data, args.name,
                                                    args.product, args.reason or "", args.meaning)
    print(f"registered and locked test set {entry.name}: {entry.units} units ({entry.defects} defective; classes "
          f"{', '.join(entry.classes)}) at {entry.path}\n  sha256 {entry.sha256}\n  audit record {record.record_id}, "
          f"signed {args.meaning} by {who.username} ({who.role}): {signature.record_id}\n"
          "  training refuses this folder, its hash and its images from now on")
    return 0


def cmd_testset_list(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.validation.testsets import load_registry

    sets = load_registry(settings)
    for s in sets.values():
        print(f"{s.name:<20} {s.product:<26} {s.units:>6} units  {s.sha256[:16]}  {s.path}  "
              f"(by {s.registered_by} {s.registered_at})")
    if not sets:
        print("no test sets registered (linesight validation testset register)")
    return 0


def cmd_criteria(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.cli.audit import gmp_context, login
    from pipeline.validation.criteria import ACTION, ValidationCriteria, record_criteria

    product, classifier = _target(settings, args.product)
    if args.file:
        criteria = ValidationCriteria.from_toml(args.file)
    else:
        criteria = ValidationCriteria(args.min_detection, args.min_class_detection, args.max_false_reject,
                                      args.max_review, args.min_auroc, not args.no_parity)
    repo = Path(settings.triton.model_repository)
    with gmp_context(settings) as ctx:
        who = login(ctx, args, ACTION, f"{classifier}@v{args.version}")
        doc, record, signature = record_criteria(repo, ctx.trail, ctx.guard, who, classifier, args.version,
                                                 criteria, args.reason or "", args.meaning)
    print(f"acceptance criteria of {classifier} version {args.version} ({product}): {json.dumps(doc['criteria'])}\n"
          f"  recorded {doc['recorded_utc']}, audit record {record.record_id}, signed {args.meaning} by "
          f"{who.username} ({who.role}): {signature.record_id}")
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.cli.audit import gmp_context, login
    from pipeline.cli.train_inputs import product_recipes
    from pipeline.model.approval import REPORT_JSON, REPORT_PDF
    from pipeline.model.repository import version_dir
    from pipeline.validation.report import REPORT_ACTION, challenge_rows, make_report

    product, classifier = _target(settings, args.product)
    recipes = [r for _, r in product_recipes(settings, product, args.recipe)[0]]
    with gmp_context(settings) as ctx:
        who = login(ctx, args, REPORT_ACTION, f"{classifier}@v{args.version}")
        challenges = challenge_rows(ctx.client, settings.clickhouse.database, recipes)
        report, record = make_report(settings, ctx.trail, ctx.guard, who, product, classifier, args.version,
                                     args.testset, recipes, args.knapp, challenges, args.reason or "")
    vdir = version_dir(Path(settings.triton.model_repository), classifier, args.version)
    m = report["evaluation"]["metrics"]
    pct = lambda x: "n/a" if x is None else f"{100 * x:.2f} %"  # noqa: E731
    print(f"validation report of {classifier} version {args.version} on test set {args.testset}: "
          + ("criteria met" if report["passed"] else "CRITERIA FAILED"))
    print(f"  detection {pct(m['detection_rate'])}, false rejects {pct(m['false_reject_rate'])}, "
          f"review {pct(m['review_rate'])} ({m['n_good']} good, {m['n_defect']} defective)")
    for c in report["judgement"]["checks"]:
        print(f"  {c['text']}")
    for f in report["judgement"]["failed"]:
        print(f"  failed: {f}", file=sys.stderr)
    print(f"wrote {vdir / REPORT_JSON} and {vdir / REPORT_PDF}; audit record {record.record_id} (sha256 "
          f"{record.new_value})")
    return 0 if report["passed"] else CRITERIA_FAILED_EXIT


def cmd_approve(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.cli.audit import gmp_context, login
    from pipeline.validation.report import APPROVE_ACTION, approve_report

    _, classifier = _target(settings, args.product)
    with gmp_context(settings) as ctx:
        who = login(ctx, args, APPROVE_ACTION, f"{classifier}@v{args.version}")
        approval, record, signature = approve_report(Path(settings.triton.model_repository), ctx.trail, ctx.guard,
                                                     who, classifier, args.version, args.reason or "")
    print(f"approved the validation report of {classifier} version {args.version} (sha256 "
          f"{approval['report_sha256']}): audit record {record.record_id}, signed approved by {who.username} "
          f"({who.role}): {signature.record_id}")
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.model.approval import report_problems
    from pipeline.model.deploy import card_onnx_sha256
    from pipeline.model.repository import read_card, version_dir

    _, classifier = _target(settings, args.product)
    repo = Path(settings.triton.model_repository)
    problems = report_problems(version_dir(repo, classifier, args.version),
                               card_onnx_sha256(read_card(repo, classifier, args.version)))
    print(f"{classifier} version {args.version}: " + ("approved validation report" if not problems
                                                      else "; ".join(problems)))
    return 1 if problems else 0


def register(sub: argparse._SubParsersAction, settings_of) -> None:  # noqa: ANN001 - argparse internals
    from pipeline.cli.audit import add_model_auth_args

    run = with_settings(settings_of)

    p = sub.add_parser("validation", help="validation report of a model version: locked test sets, criteria "
                       "before the test, the report (JSON + PDF), QA approval (docs/validation.md)")
    v = p.add_subparsers(dest="validation_command", required=True, metavar="ACTION")
    t = v.add_parser("testset", help="independent test sets (registered, hash-locked)")
    ts = t.add_subparsers(dest="testset_command", required=True, metavar="ACTION")
    r = ts.add_parser("register", help="hash and lock a dataset folder as a test set (audited, e-signed)")
    r.add_argument("data", type=Path, metavar="DIR", help="dataset folder (docs/datasets.md)")
    r.add_argument("--name", required=True)
    r.add_argument("--product", required=True)
    r.add_argument("--reason", help="why (required; kept in the audit trail)")
    add_model_auth_args(r)
    r.set_defaults(func=run(cmd_testset_register))
    ts.add_parser("list", help="registered test sets").set_defaults(func=run(cmd_testset_list))

    c = v.add_parser("criteria", help="record a version's acceptance criteria before its test (audited, e-signed)")
    c.add_argument("product", metavar="PRODUCT", help="product id (or classifier model name)")
    c.add_argument("--version", type=int, required=True)
    c.add_argument("--file", type=Path, help="TOML file with the criteria (a [criteria] table or top-level keys)")
    c.add_argument("--min-detection", type=float, help="detection rate (review + reject) of defective units")
    c.add_argument("--min-class-detection", type=float, help="detection rate of each defect class of the model")
    c.add_argument("--max-false-reject", type=float, help="good units removed (review + reject)")
    c.add_argument("--max-review", type=float, help="share of all units sent to a person")
    c.add_argument("--min-auroc", type=float)
    c.add_argument("--no-parity", action="store_true", help="do not require the ONNX parity record to pass")
    c.add_argument("--reason", help="why (required)")
    add_model_auth_args(c)
    c.set_defaults(func=run(cmd_criteria))

    r = v.add_parser("report", help="evaluate a version on a locked test set against its recorded criteria; write "
                     f"validation_report.json and .pdf next to the version (exit {CRITERIA_FAILED_EXIT}: criteria failed)")
    r.add_argument("product", metavar="PRODUCT", help="product id (or classifier model name)")
    r.add_argument("--version", type=int, required=True)
    r.add_argument("--testset", required=True, metavar="NAME")
    r.add_argument("--knapp", type=Path, metavar="FILE", help="knapp.json of this version's Knapp study")
    r.add_argument("--recipe", help="the product's recipe (default: every recipe of the product)")
    r.add_argument("--reason", help="why the test set is read (kept with the read record)")
    add_model_auth_args(r)
    r.set_defaults(func=run(cmd_report))

    a = v.add_parser("approve", help="QA e-signature (approved) on a version's passed, unchanged report")
    a.add_argument("product", metavar="PRODUCT", help="product id (or classifier model name)")
    a.add_argument("--version", type=int, required=True)
    a.add_argument("--reason", help="why (required)")
    add_model_auth_args(a)
    a.set_defaults(func=run(cmd_approve))

    s = v.add_parser("status", help="what a deploy of the version would say of its report (exit 1: not approved)")
    s.add_argument("product", metavar="PRODUCT")
    s.add_argument("--version", type=int, required=True)
    s.set_defaults(func=run(cmd_status))
