"""`linesight`: every LineSight command. Run `linesight --help`.

Each command builds the one `Settings` object (environment-overridable) and passes it on.
Heavy imports happen inside the commands so `--help` and small commands stay fast.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.cli.train_inputs import train_acceptance, train_declaration
from pipeline.core.logs import logging_config
from pipeline.model.geometry import INVARIANCES
from pipeline.settings import Settings

if TYPE_CHECKING:
    from pipeline.analytics.reconciliation import BatchReconciliation
    from pipeline.clickhouse import ClickHouseClient


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings()
    if getattr(args, "log_format", None):  # the worker's Faust sets up its logging from settings.log
        settings = settings.model_copy(update={"log": settings.log.model_copy(update={"format": args.log_format})})
    sim = {}
    if getattr(args, "rate", None):
        sim["rate_per_s"] = args.rate
    if getattr(args, "defect_rate", None) is not None:
        sim["defect_rate"] = args.defect_rate
    if getattr(args, "product", None) and isinstance(args.product, str):
        sim["product"] = args.product
    if getattr(args, "recipe", None):
        from pipeline.recipes.schema import load_recipe

        # The simulated line makes the recipe's product and starts on that recipe.
        recipe = load_recipe(settings.stream.recipes_dir / f"{args.recipe}.toml", settings.triton.model_repository)
        sim["product"] = recipe.product
        line = sim.get("line", settings.simulator.line)
        stream = settings.stream.model_copy(update={"line_recipes": settings.stream.line_recipes | {line: recipe.id}})
        settings = settings.model_copy(update={"stream": stream})
    if sim:
        settings = settings.model_copy(update={"simulator": settings.simulator.model_copy(update=sim)})
    return settings


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def cmd_demo(args: argparse.Namespace) -> int:
    if args.cameras == "gige":
        if args.recipe:
            raise SystemExit("--cameras gige runs its own two-station tablet recipe; leave out --recipe")
        from pipeline.demo.gige import run_gige_demo as run_demo
    else:
        from pipeline.demo.run import run_demo

    report = run_demo(_settings(args), args.duration, workers=args.workers)
    print(report.to_json() if args.json else report.to_text())
    if report.gate is None:
        return 1
    _say_outage(report.gate)
    # Fail-safe rejects are the pipeline working as promised; only a unit unaccounted for fails.
    return 0 if report.gate.every_unit_accounted else 1


def _say_outage(batch: BatchReconciliation) -> None:
    """Say so (on stderr) when units were fail-safe rejected while alarms were raised."""
    failsafe = batch.total("failsafe_rejected")
    if failsafe and batch.alarms:
        codes = ", ".join(sorted({a.code for a in batch.alarms}))
        print(f"{failsafe} units were fail-safe rejected during the lot; alarms raised: {codes} "
              "(an outage: rejected, not shipped)", file=sys.stderr)


def cmd_up(args: argparse.Namespace) -> int:
    from pipeline.demo.run import run_up

    run_up(_settings(args), workers=args.workers)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.app import run_worker

    run_worker(_settings(args), loglevel=args.loglevel)
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    from pipeline.analytics.sink import run_sink
    from pipeline.clickhouse import connect
    from pipeline.core.health import HealthState, serve_health

    settings = _settings(args)
    # The schema is applied by `linesight db init` (an admin); the sink's user may only insert.
    client = connect(settings)
    health = HealthState("sink")
    server = serve_health(health, settings.services.sink_health_port, settings.services.health_host)
    try:
        run_sink(settings, client, _stop_on_signals(), health)
    finally:
        server.shutdown()
        client.close()
    return 0


def cmd_actuator(args: argparse.Namespace) -> int:
    from pipeline.actuation.service import run_actuator
    from pipeline.core.health import HealthState, serve_health

    settings = _settings(args)
    health = HealthState("actuator")
    server = serve_health(health, settings.services.actuator_health_port, settings.services.health_host)
    try:
        run_actuator(settings, _stop_on_signals(), health)
    finally:
        server.shutdown()
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    from pipeline.alerts.service import run_alerts

    run_alerts(_settings(args), _stop_on_signals())
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from pipeline.dashboard.stack import run_dashboard

    run_dashboard(_settings(args), _stop_on_signals(),
                  started=lambda server: print(f"dashboard at {server.url}", flush=True))
    return 0


def cmd_camera(args: argparse.Namespace) -> int:
    from pipeline.gateway.publisher import FramePublisher, run_simulated_line

    settings = _settings(args)
    publisher = FramePublisher(settings)
    lot = run_simulated_line(settings, publisher, _stop_on_signals(), args.duration, args.count, args.lot)
    publisher.close()
    print(f"lot {lot}: published {publisher.stats.published} units ({publisher.stats.defects} defective)")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from pipeline.datasets.folder import load_dataset
    from pipeline.gateway.publisher import FramePublisher, replay_dataset

    settings = _settings(args)
    dataset = load_dataset(args.data, args.product)  # refuses a bad dataset before connecting
    publisher = FramePublisher(settings)
    lot = replay_dataset(settings, publisher, dataset, _stop_on_signals(), args.rate or 0.0, args.lot)
    publisher.close()
    print(f"lot {lot}: replayed {publisher.stats.published} images, refused {publisher.stats.refused}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from pipeline.imaging.generate import generate_dataset

    products = args.product or [Settings().simulator.product]
    out = generate_dataset(args.out, args.count, products, args.defect_rate, args.seed, args.size)
    print(f"wrote {args.count} images and {out / 'labels.csv'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.model.train import train_model

    def _interrupt(*_: object) -> None:
        raise KeyboardInterrupt  # unwinds: the staging directory is removed, nothing is released

    signal.signal(signal.SIGTERM, _interrupt)
    settings = _settings(args)
    if args.data is not None:  # a locked test set is never trained on (docs/validation.md)
        from pipeline.validation.testsets import training_refusal

        refused = training_refusal(settings, args.data)
        if refused:
            raise ValueError(f"refusing to train: {refused}")
    acceptance, acceptance_source = train_acceptance(settings, args.product, args.mode, args.acceptance_recipe)
    declared = train_declaration(settings, args.product, args.acceptance_recipe)
    invariance, invariance_source = declared.invariance, declared.invariance_source
    if args.invariance:
        invariance, invariance_source = args.invariance, "linesight train --invariance"
    result = train_model(
        args.repository or settings.triton.model_repository,
        args.product,
        data=args.data,
        mode=args.mode,
        seed=args.seed,
        target_frr=args.target_frr,
        epochs=args.epochs,
        folds=args.folds,
        train_count=args.count,
        mapping=settings.stream.product_models,
        progress=not args.quiet,
        base=args.base,
        acceptance=acceptance,
        acceptance_source=acceptance_source,
        invariance=invariance,
        invariance_source=invariance_source,
        smallest_defect_px=args.smallest_defect_px or declared.smallest_defect_px,
    )
    print(result.report())
    return result.exit_code  # 0: deployable version released; 3: released, not deployable


def cmd_dataset_shift(args: argparse.Namespace) -> int:
    from pipeline.datasets.shift import Shift, shift_dataset

    params = Shift(brightness=args.brightness, blur=args.blur, shift=args.shift, seed=args.seed)
    labels = shift_dataset(args.data, args.out, params, product=args.product)
    print(f"wrote the shifted copy {labels} (brightness x{params.brightness}, blur sigma {params.blur} px, "
          f"shift <= {params.shift} px, seed {params.seed})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from pipeline.validation.evaluate import evaluate, summary_text
    from pipeline.validation.testsets import evaluation_refusal

    settings = _settings(args)
    refused = evaluation_refusal(settings, args.data)  # docs/validation.md, "The locked test set"
    if refused:
        raise ValueError(f"refusing to evaluate: {refused}")
    with tqdm(desc="evaluate", unit="img", disable=args.json or not sys.stderr.isatty()) as bar:
        result = evaluate(settings, args.data, args.product, args.predictions, args.model, progress=bar.update)
    for warning in result.warnings:
        print(f"linesight evaluate: warning: {warning}", file=sys.stderr)
    print(json.dumps(result.as_dict(), indent=2) if args.json else summary_text(result))
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from pipeline.clickhouse import connect

    settings = _settings(args)
    client = connect(settings)
    try:
        result = client.query(args.query)
    finally:
        client.close()
    print(result.to_table())
    return 0


def cmd_report_batch(args: argparse.Namespace) -> int:
    from pipeline.analytics.reconciliation import build_reconciliation
    from pipeline.clickhouse import connect

    settings = _settings(args)
    client = connect(settings)
    try:
        batch = build_reconciliation(client, settings.clickhouse.database, args.lot,
                                     positive_release=settings.plc.positive_release)
        if args.pdf or args.html:  # the batch record for QA release (pipeline/batch_report.py)
            from pipeline.analytics.batch_record import build_batch_record, render_html, render_pdf
            from pipeline.audit.trail import AuditTrail

            record = build_batch_record(client, settings.clickhouse.database, args.lot,
                                        AuditTrail.from_settings(settings, client),
                                        positive_release=settings.plc.positive_release,
                                        recipes_dir=settings.stream.recipes_dir)
            for path, render in ((args.pdf, render_pdf), (args.html, render_html)):
                if path:
                    render(record, path)
                    print(f"wrote {path}", file=sys.stderr)
        refusals = _release_refusals(client, settings, args.lot) if args.release else []
    finally:
        client.close()
    print(batch.to_json() if args.json else batch.to_text())
    _say_outage(batch)
    if refusals:  # a challenge missing or failed (docs/validation.md), a review unit undecided (docs/review.md)
        print(f"release of lot {args.lot} refused: " + "; ".join(refusals), file=sys.stderr)
        return 3
    return 0 if batch.every_unit_accounted else 1


def _release_refusals(client: ClickHouseClient, settings: Settings, lot: str) -> list[str]:
    from pipeline.analytics.batch_record import lot_release_refusals

    return lot_release_refusals(client, settings.clickhouse.database, lot, settings.stream.recipes_dir)


def cmd_topics(args: argparse.Namespace) -> int:
    from pipeline.kafka.topics import ensure_topics

    settings = _settings(args)
    ensure_topics(settings)
    print("topics ready")
    return 0


def cmd_db_init(args: argparse.Namespace) -> int:
    from pipeline.clickhouse import connect

    settings = _settings(args)
    client = connect(settings)
    try:
        client.apply_schema(settings.clickhouse.database)
    finally:
        client.close()
    print(f"schema applied to database {settings.clickhouse.database}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from pipeline.model.deploy import list_models, listing_json, listing_text

    rows = list_models(_settings(args))
    print(listing_json(rows) if args.json else listing_text(rows))
    return 0


def cmd_models_deploy(args: argparse.Namespace) -> int:
    from pipeline.cli.audit import cmd_models_change, gmp_context, login
    from pipeline.model.release import release_model

    if not args.override_gate:
        return cmd_models_change(args, _settings(args), "deploy")
    # A version that failed its release gate: the same log-in, permission, reason and signature as
    # any deploy, signed `approved`; the audit record names the criteria it failed.
    settings = _settings(args)
    with gmp_context(settings) as ctx:
        who = login(ctx, args, "model.deploy", args.target)
        result, record, signature = release_model(
            settings, ctx.trail, ctx.guard, who, "deploy", args.target, args.version, args.reason or "",
            args.meaning, override_gate=True,
        )
    print(result.to_text())  # type: ignore[attr-defined]
    failed = record.detail_dict().get("gate_override", {}).get("failed_criteria", [])
    print(f"  release gate OVERRIDDEN: the version failed {'; '.join(failed)}")
    print(f"  audit record {record.record_id} ({record.record_hash[:16]}), signed {args.meaning} by "
          f"{who.username} ({who.role}): {signature.record_id}")
    return 0


def cmd_models_rollback(args: argparse.Namespace) -> int:
    from pipeline.cli.audit import cmd_models_change

    return cmd_models_change(args, _settings(args), "rollback")


def build_parser() -> argparse.ArgumentParser:
    from pipeline.cli.audit import add_model_auth_args
    from pipeline.cli.audit import register as register_gmp_commands
    from pipeline.cli.challenge import register as register_challenge_commands
    from pipeline.cli.contracts import register as register_contract_commands
    from pipeline.cli.gateway import register as register_gateway_commands
    from pipeline.cli.knapp import register as register_knapp_commands
    from pipeline.cli.recipes import register as register_recipe_commands
    from pipeline.cli.review import register as register_review_commands
    from pipeline.cli.shadow import register as register_shadow_commands
    from pipeline.cli.validation import register as register_validation_commands

    parser = argparse.ArgumentParser(
        prog="linesight",
        description="AI visual inspection for pharmaceutical lines. Settings come from LINESIGHT_* "
        "environment variables (see pipeline/settings.py).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-format", choices=("text", "json"),
                        help="text for a terminal, json: one object a line for a log collector "
                        "(default: LINESIGHT_LOG__FORMAT, else text; docs/observability.md)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="start the stack, run a simulated line, print the report, stop")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of line time (default 60)")
    p.add_argument("--rate", type=float, help="units per second")
    p.add_argument("--defect-rate", type=float, help="fraction of defective units")
    p.add_argument("--workers", type=int, default=1, help="inspection worker processes")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--recipe", help="run a line of this recipe's product (recipes/RECIPE.toml)")
    p.add_argument("--cameras", choices=("simulated", "gige"), default="simulated",
                   help="gige: a two-station tablet line photographed by fake GigE Vision cameras through the "
                   "camera gateway (docs/cameras.md)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("up", help="run the stack and a simulated line until Ctrl-C")
    p.add_argument("--rate", type=float, help="units per second")
    p.add_argument("--recipe", help="run a line of this recipe's product (recipes/RECIPE.toml)")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("worker", help="run one Faust inspection worker (consumer group member)")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=cmd_worker)

    sub.add_parser("sink", help="run the ClickHouse sink").set_defaults(func=cmd_sink)
    sub.add_parser("actuator", help="run the reject actuator").set_defaults(func=cmd_actuator)
    sub.add_parser("alerts", help="run the alert service (alerts topic; API for the dashboard)").set_defaults(
        func=cmd_alerts)
    sub.add_parser("dashboard", help="serve the operator dashboard (needs a ClickHouse server and "
                   "`linesight alerts`; with embedded chDB use `linesight up`)").set_defaults(func=cmd_dashboard)

    p = sub.add_parser("camera", help="publish a simulated line's frames to Kafka")
    p.add_argument("--rate", type=float, help="units per second")
    p.add_argument("--duration", type=float, default=0.0, help="seconds (0 = until Ctrl-C)")
    p.add_argument("--count", type=int, default=0, help="stop after N units (0 = no limit)")
    p.add_argument("--defect-rate", type=float)
    p.add_argument("--product")
    p.add_argument("--lot", help="lot id (default: line and UTC time)")
    p.set_defaults(func=cmd_camera)

    p = sub.add_parser("replay", help="publish a dataset folder's images as frames")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--rate", type=float, help="images per second (default: as fast as possible)")
    p.add_argument("--product", help="only this product's rows")
    p.add_argument("--lot")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("simulate", help="write a simulated dataset folder (labels.csv + images)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--product", action="append", help="product id (repeatable)")
    p.add_argument("--defect-rate", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=160, help="image side in pixels")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("train", help="train a product's model as the next version in the Triton model repository")
    p.add_argument("--product", default="tablet-round-white-10mm")
    p.add_argument("--data", type=Path, help="dataset folder (default: render simulator images)")
    p.add_argument("--mode", choices=["supervised", "good-only"], default="supervised",
                   help="supervised: labelled defects; good-only: learn good units, flag what deviates")
    p.add_argument("--seed", type=int, default=0, help="validation split and training seed")
    p.add_argument("--target-frr", type=float, default=0.01, help="target false-reject rate of the gate")
    p.add_argument("--epochs", type=int, help="training epochs (default: sized to the data)")
    p.add_argument("--folds", type=int, help="k-fold models whose out-of-fold scores of good "
                   "training images join the calibration (default 0: off)")
    p.add_argument("--count", type=int, default=1200, help="simulated training images (without --data)")
    p.add_argument("--base", default="auto", help="model whose weights training starts from: an ONNX file, "
                   "version or model directory; 'auto' (default): the shipped model with --data "
                   "(none for simulator training); 'none': from scratch")
    p.add_argument("--repository", type=Path, help="Triton model repository (default: settings)")
    p.add_argument("--recipe", dest="acceptance_recipe", metavar="RECIPE",  # not a line's recipe (_settings)
                   help="recipe (id in the recipes folder, or a .toml file) whose [acceptance] "
                   "criteria judge the version and whose [model] table declares the product's invariance "
                   "(default: the product's recipe naming them, else the mode's defaults; docs/models.md)")
    p.add_argument("--invariance", choices=list(INVARIANCES),
                   help="flips/turns under which the product's images stay plausible: any-orientation (tumbling "
                   "tablets), lying (capsules), upright (vials), fixed (labels); overrides the recipe's [model] "
                   "invariance (default: the recipe's, else what the product's classifier recorded at its first training, "
                   "else none assumed: fixed)")
    p.add_argument("--smallest-defect-px", type=float, metavar="PX",
                   help="smallest defect to keep visible, in frame pixels: a new product's input is never "
                   "scaled so far that it shrinks under 1.5 px (default: the recipe's [model] smallest_defect_px)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("dataset", help="dataset folder tools")
    dsub = p.add_subparsers(dest="dataset_command", required=True)
    p = dsub.add_parser("shift", help="write a copy of a dataset folder under another session's light, focus "
                        "and position (labels unchanged)")
    p.add_argument("--data", type=Path, required=True, help="source dataset folder")
    p.add_argument("--out", type=Path, required=True, help="new folder for the shifted copy")
    p.add_argument("--brightness", type=float, default=0.8, help="light level factor")
    p.add_argument("--blur", type=float, default=1.0, help="Gaussian blur sigma in px (0 = none)")
    p.add_argument("--shift", type=int, default=3, help="max translation in px per axis")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--product", help="copy only this product's rows")
    p.set_defaults(func=cmd_dataset_shift)
    register_review_commands(sub, dsub, _settings)  # review status|decide|sample, dataset export (docs/review.md)

    p = sub.add_parser("evaluate", help="score a dataset through the served model; metrics and predictions CSV")
    p.add_argument("--data", type=Path, required=True, help="dataset folder (docs/datasets.md)")
    p.add_argument("--product", required=True)
    p.add_argument("--model", help="NAME[:VERSION] (default: the product's inspection model, live version)")
    p.add_argument("--predictions", type=Path, required=True, help="CSV to write: image,score,verdict,defect")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sql", help="run a SQL query against the analytics store and print a table")
    p.add_argument("query")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("report", help="reports from the analytics store")
    reports = p.add_subparsers(dest="report_command", required=True, metavar="REPORT")
    r = reports.add_parser("batch", help="reject-gate reconciliation of a lot: every unit passed, rejected "
                           "or fail-safe rejected, none unaccounted; alarms (exit 1 if not all accounted)")
    r.add_argument("lot", metavar="LOT")
    r.add_argument("--json", action="store_true", help="print as JSON")
    r.add_argument("--pdf", type=Path, metavar="FILE", help="also write the batch record as PDF (docs/audit.md)")
    r.add_argument("--html", type=Path, metavar="FILE", help="also write the batch record as HTML")
    r.add_argument("--release", action="store_true",
                   help="release check: exit 3 when the lot's start or end challenge is missing or failed")
    r.set_defaults(func=cmd_report_batch)

    p = sub.add_parser("topics", help="Kafka topics")
    p.add_argument("action", choices=["create"])
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("db", help="ClickHouse schema")
    p.add_argument("action", choices=["init"])
    p.set_defaults(func=cmd_db_init)

    p = sub.add_parser("models", help="list classifier versions; deploy or roll back the live one without stopping the line")
    models = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    m = models.add_parser("list", help="versions, validation metrics, which is live and what Triton serves")
    m.add_argument("--json", action="store_true", help="print as JSON")
    m.set_defaults(func=cmd_models_list)
    m = models.add_parser("deploy", help="make a released version live (Triton switches in place)")
    m.add_argument("target", metavar="PRODUCT", help="product id (or classifier model name)")
    m.add_argument("--version", type=int, required=True, help="version directory to make live")
    m.add_argument("--reason", help="why (required; kept in deployments.jsonl and the audit trail)")
    m.add_argument("--override-gate", action="store_true",
                   help="deploy a version that failed its release gate (QA, signed 'approved', with --reason; "
                        "the audit record names the failed criteria)")
    add_model_auth_args(m)
    m.set_defaults(func=cmd_models_deploy)
    m = models.add_parser("rollback", help="return to the version live before the current one")
    m.add_argument("target", metavar="PRODUCT", help="product id (or classifier model name)")
    m.add_argument("--reason", help="why (required; kept in deployments.jsonl and the audit trail)")
    add_model_auth_args(m)
    m.set_defaults(func=cmd_models_rollback)
    register_shadow_commands(models, _settings)  # shadow, compare (docs/models.md, "Shadow deployment")

    register_gmp_commands(sub, _settings)  # audit, users (docs/audit.md)
    register_recipe_commands(sub, _settings)  # recipes (docs/recipes.md)
    register_gateway_commands(sub, _settings, _stop_on_signals)  # gateway, cameras (docs/cameras.md)
    register_challenge_commands(sub, _settings)  # challenge register|run|status (docs/validation.md)
    register_knapp_commands(sub, _settings)  # knapp run|simulate (docs/validation.md)
    register_validation_commands(sub, _settings)  # validation testset|criteria|report|approve (docs/validation.md)
    register_contract_commands(sub, _settings)  # schemas export|check|list, tail (docs/integration.md)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.root.handlers:  # like basicConfig: a host that set up logging (pytest) keeps its own
        fmt = args.log_format or Settings().log.format
        logging.config.dictConfig(logging_config(fmt, args.command, logging.DEBUG if args.verbose else logging.INFO))
    for noisy in ("aiokafka", "asyncua", "faust", "mode", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line for operators; details with -v
        if args.verbose:
            raise
        print(f"linesight {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
