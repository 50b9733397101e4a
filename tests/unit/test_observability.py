"""Observability (docs/observability.md): the metric catalogue and who records it, /metrics on the
health endpoints, Prometheus in compose scraping every service, the pipeline-health Grafana
dashboard querying only metrics the code exports, and JSON logs."""

from __future__ import annotations

import ast
import io
import json
import logging
import logging.config
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from compose_file import interpolate, published_ports
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from test_compose import APP_SERVICES, COMPOSE_FILE, DUMMY_ENV, HEALTH_PORTS, ONE_SHOT, env_of, settings_from
from test_inspection import PNG, ScriptedScorer, frame

from pipeline.core.health import HealthState, serve_health, serve_metrics
from pipeline.core.logs import JsonFormatter, logging_config
from pipeline.core.metrics import SPECS, Metrics, Totals, exported_names
from pipeline.embedded.process import free_port
from pipeline.kafka.lag import LagGauge, consumer_lag
from pipeline.settings import Settings
from pipeline.settings.logs import LogSettings
from streams.processor import InspectionProcessor

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = ROOT / "infra" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "infra" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "pipeline-health.json"
# App services with no metrics endpoint: one-shots and the simulated camera (no HTTP server).
# Everything else that runs is scraped.
NOT_SCRAPED = ONE_SHOT | {"camera"}
# The settings field of each scraped service's port (the audit service's healthcheck reads its status
# file, so its port is not among the healthchecked HEALTH_PORTS).
METRICS_PORT_FIELDS = {name: field for name, (_, (_, field)) in HEALTH_PORTS.items()} | {
    "auditsealer": "audit_health_port", "dashboard": "dashboard_metrics_port"}
# Triton's own series the dashboard may query (Triton's metrics port, not this code).
TRITON_SERIES = {"nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
                 "nv_inference_request_success", "nv_inference_request_failure"}


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(raw: dict[str, Any]) -> dict[str, Any]:
    """The services as `docker compose` sees them with only the required variables set."""
    return interpolate(raw, DUMMY_ENV)["services"]


def scrape(url: str) -> dict[str, float]:
    """GET a /metrics page and parse it: sample name and sorted labels -> value."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {f"{s.name}{sorted(s.labels.items())}": s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict[str, float], name: str, **labels: str) -> float | None:
    return samples.get(f"{name}{sorted(labels.items())}")


# --------------------------------------------------------------------------- the catalogue


def test_names_follow_prometheus_conventions() -> None:
    for name, spec in SPECS.items():
        assert re.fullmatch(r"linesight_[a-z][a-z0-9_]*", name), name
        assert not name.endswith("_total"), f"{name}: prometheus_client adds _total to counters"
        if spec.kind == "histogram":
            assert name.endswith(("_seconds", "_size")), f"{name}: a histogram names its unit"
            assert list(spec.buckets) == sorted(spec.buckets), name
        assert spec.help.endswith("."), name
    assert {"linesight_frames_total", "linesight_verdicts_total", "linesight_capture_to_verdict_seconds_bucket",
            "linesight_batch_size_bucket", "linesight_failsafe_rejects_total", "linesight_consumer_lag",
            "linesight_gate_margin_seconds_bucket", "linesight_dead_letters_total"} <= exported_names()


def test_registries_are_per_service_and_families_appear_when_used() -> None:
    a, b = Metrics(), Metrics()
    a.counter("linesight_verdicts").labels("line-1", "pass", "model").inc(3)
    b.counter("linesight_verdicts").labels("line-1", "pass", "model").inc()
    assert a.counter("linesight_verdicts") is a.counter("linesight_verdicts")
    text_a, text_b = (m.exposition()[0].decode() for m in (a, b))
    assert 'linesight_verdicts_total{cause="model",line="line-1",verdict="pass"} 3.0' in text_a
    assert 'linesight_verdicts_total{cause="model",line="line-1",verdict="pass"} 1.0' in text_b
    assert "linesight_gate_margin_seconds" not in text_a, "a service exports only what it records"
    with pytest.raises(AssertionError):
        a.gauge("linesight_verdicts")  # the kind is the catalogue's
    everything = Metrics()
    everything.declare_all()
    assert {f.name for f in everything.registry.collect()} == {
        s.name.removesuffix("_total") for s in SPECS.values()}


def test_totals_feed_counters_with_what_grew() -> None:
    m = Metrics()
    units = Totals(m.counter("linesight_gateway_units"))
    for total in (3, 3, 10, 10):
        units.advance(total, "line-1")
    assert m.counter("linesight_gateway_units").labels("line-1")._value.get() == 10


class FakeConsumer:
    """confluent-kafka's Consumer as consumer_lag reads it: assignment, positions, cached watermarks."""

    def __init__(self, positions: dict[tuple[str, int], int], highs: dict[tuple[str, int], int],
                 fail: bool = False) -> None:
        self.positions, self.highs, self.fail = positions, highs, fail
        self.cached: list[bool] = []

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.positions]

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        if self.fail:
            raise KafkaException(KafkaError(KafkaError._STATE, "erroneous state"))
        return [TopicPartition(tp.topic, tp.partition, self.positions[(tp.topic, tp.partition)]) for tp in tps]

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool = False) -> tuple[int, int]:
        self.cached.append(cached)
        return -1001, self.highs.get((tp.topic, tp.partition), -1001)


def test_consumer_lag_from_positions_and_cached_watermarks() -> None:
    consumer = FakeConsumer({("r", 0): 5, ("r", 1): -1001, ("r", 2): 7}, {("r", 0): 12, ("r", 1): 3})
    assert consumer_lag(consumer) == {("r", 0): 7}  # type: ignore[arg-type]
    assert consumer.cached and all(consumer.cached), "no broker round trip"
    m = Metrics()
    gauge = LagGauge(m.gauge("linesight_consumer_lag"), "grp")
    gauge.update({("r", 0): 7, ("r", 1): 0})
    gauge.update({("r", 0): 2})  # partition 1 revoked: its series goes
    text = m.exposition()[0].decode()
    assert 'linesight_consumer_lag{group="grp",partition="0",topic="r"} 2.0' in text
    assert 'partition="1"' not in text
    assert consumer_lag(FakeConsumer({("r", 0): 1}, {}, fail=True)) is None  # type: ignore[arg-type]
    gauge.update(None)  # not read this round: the last values stay
    assert 'linesight_consumer_lag{group="grp",partition="0",topic="r"} 2.0' in m.exposition()[0].decode()


def metric_uses() -> list[tuple[str, str, str]]:
    """(file, accessor, name) of every `.counter("…")`, `.gauge("…")`, `.histogram("…")` in the code."""
    uses = []
    for path in [*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "streams").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("counter", "gauge", "histogram") and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                    and node.args[0].value.startswith("linesight_")):
                uses.append((str(path.relative_to(ROOT)), node.func.attr, node.args[0].value))
    return uses


def test_every_metric_the_code_records_is_in_the_catalogue_and_every_one_is_recorded() -> None:
    uses = metric_uses()
    for where, accessor, name in uses:
        assert name in SPECS, f"{where}: {name} is not in pipeline.core.metrics.SPECS"
        assert SPECS[name].kind == accessor, f"{where}: {name} is a {SPECS[name].kind}"
    assert {name for _, _, name in uses} == set(SPECS), "a catalogued metric nothing records"


# --------------------------------------------------------------------------- /metrics endpoints


def test_health_endpoint_serves_the_services_metrics() -> None:
    health = HealthState("sink")
    health.metrics.counter("linesight_messages_consumed").labels("sink", "linesight.results").inc(7)
    server = serve_health(health, free_port(), "127.0.0.1")
    try:
        samples = scrape(f"http://127.0.0.1:{server.server_address[1]}/metrics")
    finally:
        server.shutdown()
        server.server_close()
    assert sample(samples, "linesight_messages_consumed_total", service="sink", topic="linesight.results") == 7


def test_metrics_only_listener_serves_nothing_else() -> None:
    metrics = Metrics()
    metrics.counter("linesight_frames").inc(2)
    server = serve_metrics(metrics, free_port(), "127.0.0.1", "worker")
    port = server.server_address[1]
    try:
        assert sample(scrape(f"http://127.0.0.1:{port}/metrics"), "linesight_frames_total") == 2
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert refused.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


async def test_worker_decisions_are_counted_and_fail_safe_units_logged_with_their_identity(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    frames = [frame("good", PNG + b"score=0.1", offset=0), frame("bad", PNG + b"score=0.9", offset=1),
              frame("garbage", b"not an image", offset=2)]
    with caplog.at_level(logging.WARNING, logger="streams.processor"):
        await InspectionProcessor(Settings(), ScriptedScorer(), worker="w", metrics=metrics).process(frames)
    samples = {f"{s.name}{sorted(s.labels.items())}": s.value
               for fam in text_string_to_metric_families(metrics.exposition()[0].decode()) for s in fam.samples}
    assert sample(samples, "linesight_verdicts_total", line="line-1", verdict="pass", cause="model") == 1
    assert sample(samples, "linesight_verdicts_total", line="line-1", verdict="reject", cause="model") == 1
    assert sample(samples, "linesight_verdicts_total", line="line-1", verdict="reject", cause="failsafe") == 1
    assert sample(samples, "linesight_dead_letters_total", line="line-1", stage="validate") == 1
    assert sample(samples, "linesight_capture_to_verdict_seconds_count", line="line-1") == 2
    (record,) = [r for r in caplog.records if "fail-safe" in r.getMessage()]
    assert (record.unit_id, record.lot, record.line) == ("garbage", "LOT-7", "line-1")  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- compose and Prometheus


def scrape_targets() -> dict[str, list[tuple[str, int]]]:
    """job -> (host, port) of each target in infra/prometheus/prometheus.yml."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs: dict[str, list[tuple[str, int]]] = {}
    for job in config["scrape_configs"]:
        targets = [tuple(t.rsplit(":", 1)) for s in job.get("static_configs", []) for t in s["targets"]]
        targets += [(n, int(d["port"])) for d in job.get("dns_sd_configs", []) for n in d["names"]]
        jobs[job["job_name"]] = [(h, int(p)) for h, p in targets]
    return jobs


def test_prometheus_is_pinned_unprivileged_holds_no_secret_and_keeps_its_data(
    services: dict[str, Any], raw: dict[str, Any]
) -> None:
    p = services["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", p["image"]), p["image"]
    assert "secrets" not in p, "Prometheus reads nothing secret"
    uid = str(p["user"]).split(":")[0]
    assert uid not in ("0", "root") and p["read_only"] is True and p["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in p["security_opt"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in p["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./infra/prometheus/prometheus.yml"
    assert all(str(v).endswith(":ro") for v in p["volumes"] if str(v).startswith("./"))
    assert mounts["/prometheus"] in raw["volumes"], "the TSDB on a named volume"
    assert "--config.file=/etc/prometheus/prometheus.yml" in p["command"]
    assert "--storage.tsdb.path=/prometheus" in p["command"]
    assert p["healthcheck"]["test"][:2] == ["CMD", "wget"] and "/-/ready" in p["healthcheck"]["test"][-1]
    assert raw["services"]["prometheus"]["ports"] == ["${PROMETHEUS_BIND:-127.0.0.1}:${PROMETHEUS_PORT:-9090}:9090"]
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and urlsplit(source["url"]).hostname == "prometheus"
    assert "secureJsonData" not in source and "basicAuth" not in source


def test_every_running_app_service_is_scraped_and_every_target_exists(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = scrape_targets()
    running = {n for n in APP_SERVICES if n in services} - NOT_SCRAPED
    assert running <= set(jobs), f"not scraped: {running - set(jobs)}"
    assert set(jobs) <= running | {"triton", "prometheus"}, "a job for a service compose does not run"
    prometheus_nets = set(services["prometheus"].get("networks") or ["default"])
    for job, targets in jobs.items():
        assert targets, job
        service = services.get(job, {})
        for host, port in targets:
            if job == "prometheus":
                assert (host, port) == ("127.0.0.1", 9090)
                continue
            if job == "triton":
                assert (host, port) == ("triton", 8002) and "triton-metrics" in prometheus_nets
                continue
            settings = settings_from(env_of(service), monkeypatch)
            if service.get("network_mode") == "host":  # the gateway: at the host's address
                assert host == "host.docker.internal" and "host.docker.internal:host-gateway" in (
                    services["prometheus"].get("extra_hosts") or [])
            else:
                assert host == job, f"{job}: scraped at {host}"
                # The alert service's API (its health and /metrics) listens on every interface anyway.
                listens = "0.0.0.0" if job == "alerts" else settings.services.health_host
                assert listens == "0.0.0.0", f"{job}: its /metrics must listen beyond loopback"
                assert "default" in prometheus_nets and not service.get("network_mode")
            expected = settings.stream.metrics_port if job == "worker" else getattr(
                settings.services, METRICS_PORT_FIELDS[job])
            assert port == expected, f"{job}: scraped on {port}, listens on {expected}"
            assert port not in published_ports(service), f"{job}: /metrics stays on the compose network"
    # The worker's Faust web server (Faust's own pages) stays on loopback; only /metrics is open.
    worker = settings_from(env_of(services["worker"]), monkeypatch)
    assert worker.stream.web_host == "127.0.0.1" and worker.stream.metrics_port not in (0, worker.stream.web_port)


def test_compose_services_log_json(services: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in APP_SERVICES:
        assert settings_from(env_of(services[name]), monkeypatch).log.format == "json", name
    assert LogSettings().format == "text", "people at a terminal get text"


# --------------------------------------------------------------------------- the Grafana dashboard


def provisioned_datasources() -> dict[str, str]:
    uids = {}
    for path in (GRAFANA / "provisioning" / "datasources").glob("*.yaml"):
        for ds in yaml.safe_load(path.read_text())["datasources"]:
            uids[ds["uid"]] = ds["type"]
    return uids


def test_pipeline_health_dashboard_queries_only_what_is_exported() -> None:
    dash = json.loads(DASHBOARD.read_text())
    sources = provisioned_datasources()
    assert dash["uid"] != json.loads((GRAFANA / "dashboards" / "linesight.json").read_text())["uid"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exported = exported_names()
    queried: set[str] = set()
    refs = [dash["templating"]["list"][0]["datasource"]]
    for panel in dash["panels"]:
        refs.append(panel["datasource"])
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            refs.append(target["datasource"])
            queried |= set(re.findall(r"\b(?:linesight|nv)_[a-z0-9_]+", target["expr"]))
    queried |= set(re.findall(r"\blinesight_[a-z0-9_]+", dash["templating"]["list"][0]["definition"]))
    for ref in refs:
        assert sources.get(ref["uid"]) == ref["type"] == "prometheus", ref
    unknown = {n for n in queried if n.startswith("linesight_")} - exported
    assert not unknown, f"the dashboard queries metrics the code does not export: {unknown}"
    assert {n for n in queried if n.startswith("nv_")} <= TRITON_SERIES
    # What pipeline health needs on one page.
    for needed in ("linesight_frames_total", "linesight_verdicts_total", "linesight_capture_to_verdict_seconds_bucket",
                   "linesight_batch_size_sum", "linesight_failsafe_rejects_total", "linesight_consumer_lag",
                   "linesight_gate_margin_seconds_bucket", "nv_inference_queue_duration_us",
                   "nv_inference_compute_infer_duration_us"):
        assert needed in queried, needed
    # Provisioned beside the analytics dashboard, from the folder the provider reads.
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "linesight.yaml").read_text())
    assert provider["providers"][0]["type"] == "file" and DASHBOARD.parent.name == "dashboards"


# --------------------------------------------------------------------------- logs


def emit(config: dict[str, Any], *args: Any, **kwargs: Any) -> str:
    """Log one record through a dictConfig document, captured from its handler."""
    stream = io.StringIO()
    config["handlers"]["stderr"]["stream"] = stream
    logger = logging.getLogger("linesight.test.logs")
    logging.config.dictConfig(config | {"root": {"level": "INFO", "handlers": []},
                                        "loggers": {logger.name: {"handlers": ["stderr"], "propagate": False}}})
    try:
        logger.warning(*args, **kwargs)
    finally:
        logger.handlers.clear()
        logger.propagate = True
    return stream.getvalue()


def test_json_logs_one_object_a_line_with_the_units_identity() -> None:
    line = emit(logging_config("json", "actuator"), "unit %s fail-safe rejected", "u-1",
                extra={"unit_id": "u-1", "lot": "LOT-7", "line": "line-1"})
    assert line.endswith("\n") and line.count("\n") == 1
    doc = json.loads(line)
    assert doc["message"] == "unit u-1 fail-safe rejected" and doc["level"] == "WARNING"
    assert doc["service"] == "actuator" and doc["logger"] == "linesight.test.logs"
    assert (doc["unit_id"], doc["lot"], doc["line"]) == ("u-1", "LOT-7", "line-1")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", doc["time"])
    plain = json.loads(emit(logging_config("json", "sink"), "no unit here"))
    assert "unit_id" not in plain and "lot" not in plain


def test_json_logs_carry_the_traceback_in_one_line() -> None:
    formatter = JsonFormatter("worker")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    out = formatter.format(record)
    assert "\n" not in out and "ValueError: boom" in json.loads(out)["exc"]


def test_text_logs_stay_for_people_and_bad_formats_are_refused() -> None:
    assert emit(logging_config("text", "sink"), "hello %s", "there").rstrip().endswith("WARNING linesight.test.logs: hello there")
    with pytest.raises(ValueError):
        logging_config("xml", "sink")


def test_log_format_comes_from_the_environment_and_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.cli.main import _settings, build_parser

    monkeypatch.setenv("LINESIGHT_LOG__FORMAT", "json")
    assert Settings().log.format == "json"
    monkeypatch.setenv("LINESIGHT_LOG__FORMAT", "text")
    args = build_parser().parse_args(["--log-format", "json", "worker"])
    assert _settings(args).log.format == "json", "the worker's Faust logging reads it from the settings"


def test_docs_list_every_metric() -> None:
    doc = (ROOT / "docs" / "observability.md").read_text()
    for spec in SPECS.values():
        name = f"{spec.name}_total" if spec.kind == "counter" else spec.name
        assert f"| `{name}` | {spec.kind} |" in doc, f"docs/observability.md does not list {name}"
    assert "docs/observability.md" in (ROOT / "README.md").read_text()
