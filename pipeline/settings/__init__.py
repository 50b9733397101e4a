"""The one typed settings object of LineSight.

Every service receives a `Settings` instance; nothing reads the environment elsewhere. Each field
can be overridden by an environment variable named ``LINESIGHT_<SECTION>__<FIELD>`` (for example
``LINESIGHT_KAFKA__BOOTSTRAP_SERVERS=kafka:9092``). An unset external address (Kafka bootstrap
servers, Triton URL, ClickHouse URL) means "use the embedded service the project starts itself".
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.settings.actuation import LineTimingSettings, PlcSettings, WatchdogSettings
from pipeline.settings.logs import LogSettings
from pipeline.settings.secrets import read_secret

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class KafkaSettings(BaseModel):
    """Broker address, topic names and client tuning."""

    bootstrap_servers: str | None = Field(
        default=None, description="host:port list; unset starts the embedded Tansu broker"
    )
    embedded_port: int = 19092
    topic_frames: str = "linesight.frames"
    topic_results: str = "linesight.results"
    topic_rejects: str = "linesight.rejects"
    # One small record per captured frame (the frame's headers, no image), keyed by line: what the
    # reject actuator admits units from, instead of fetching every frame's bytes (docs/scale.md).
    topic_captures: str = "linesight.captures"
    topic_deadletter: str = "linesight.deadletter"
    topic_truth: str = "linesight.truth"
    topic_actuations: str = "linesight.actuations"
    # Reject gate (docs/actuation.md): liveness signals, one event per unit at the gate, alarms.
    topic_heartbeats: str = "linesight.heartbeats"
    topic_gate_events: str = "linesight.gate-events"
    topic_alarms: str = "linesight.alarms"
    # GMP audit trail (docs/audit.md): every appended audit record, keyed by chain, kept forever.
    topic_audit: str = "linesight.audit"
    # Audit events every service submits (docs/audit.md), keyed by chain, kept forever: the audit
    # service is their only appender.
    topic_audit_events: str = "linesight.audit-events"
    # Signed audit seals (docs/audit.md): the trail's anchor outside the database, kept forever.
    topic_audit_seals: str = "linesight.audit-seals"
    # Real-time alerts (docs/alerts.md): every alert change, keyed by alert id.
    topic_alerts: str = "linesight.alerts"
    # A small JPEG of every unit removed from the line (batch records, dashboards), keyed by unit.
    topic_reject_images: str = "linesight.reject-images"
    # Recipe activations (docs/recipes.md): compacted, keyed by line, read in full by every worker.
    topic_recipes: str = "linesight.recipes"
    # One verdict per unit of a multi-station line (docs/actuation.md), keyed by unit id.
    topic_unit_verdicts: str = "linesight.unit-verdicts"
    # Station camera health from the camera gateway (docs/cameras.md), keyed by camera serial.
    topic_camera_status: str = "linesight.camera-status"
    # Shadow deployment (docs/models.md): a candidate version's verdicts, never acted on.
    topic_shadow: str = "linesight.shadow-verdicts"
    partitions: int = 3
    # Line -> partition of the line-keyed topics (captures, results, rejects, the actuator's
    # heartbeats): pinned here, a line never moves when lines or partitions are added. A line not
    # listed gets crc32(line) mod `partitions` (pipeline.kafka.partitioning): pin every production
    # line before raising `partitions`. docs/scale.md, "Partitioning by line".
    line_partitions: dict[str, int] = {}
    replication_factor: int = 1
    # Frames above this size are refused by the gateway (Kafka's default message cap is 1 MB).
    max_message_bytes: int = 1_000_000
    # Tansu completes a librdkafka group join in about half the session timeout: keep it short.
    session_timeout_ms: int = 6000
    # Every client (confluent-kafka and the Faust worker alike) takes these through
    # pipeline.kafka.security: PLAINTEXT (the embedded broker), SSL, SASL_PLAINTEXT or SASL_SSL
    # (production: SCRAM-SHA-512 over TLS, docs/deployment.md "Broker security").
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = Field(default=None, description="SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN")
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = Field(default=None, description="file holding the SASL password")
    # PEM file of the CA(s) that signed the broker's certificate (SSL, SASL_SSL); unset: the system's.
    ssl_ca_file: Path | None = Field(default=None, description="PEM CA bundle that verifies the broker")

    @model_validator(mode="after")
    def _pinned_partitions_exist(self) -> KafkaSettings:
        bad = {line: p for line, p in self.line_partitions.items() if not 0 <= p < self.partitions}
        if bad:
            raise ValueError(f"kafka.line_partitions {bad}: each must be a partition 0..{self.partitions - 1}")
        return self

    def resolved_sasl_password(self) -> str:
        return read_secret(self.sasl_password, self.sasl_password_file)


class TritonSettings(BaseModel):
    """Inference server address and the embedded server's ports."""

    url: str | None = Field(
        default=None, description="gRPC host:port; unset starts the embedded tritonserver"
    )
    # More replicas (gRPC host:port each) the worker spreads requests over, failing over when one
    # is unreachable; `url` is the first of them. Empty: `url` alone.
    urls: list[str] = []
    embedded_http_port: int = 18000
    embedded_grpc_port: int = 18001
    embedded_metrics_port: int = 18002
    model_repository: Path = PROJECT_ROOT / "triton_models"
    startup_timeout_s: float = 180.0
    request_timeout_s: float = 30.0
    # Frames of one batch travel in one gRPC message; Triton's default cap is 4 MB.
    max_grpc_message_bytes: int = 64 * 1024 * 1024
    # Model control (load/unload, the repository index) only with this header carrying the key
    # (tritonserver --http-restricted-api / --grpc-restricted-protocol model-repository). The
    # embedded server makes a new key at each start unless one is set (pipeline.embedded.triton).
    model_control_header: str = "linesight-model-control"
    model_control_key: SecretStr | None = None
    model_control_key_file: Path | None = Field(default=None, description="file holding the model control key")

    def resolved_model_control_key(self) -> str:
        return read_secret(self.model_control_key, self.model_control_key_file)

    def replica_urls(self) -> list[str]:
        """Every replica's gRPC address, `url` first, each once."""
        return list(dict.fromkeys(u for u in [self.url or "", *self.urls] if u))


class ClickHouseSettings(BaseModel):
    """Analytics store: a ClickHouse server, or embedded chDB when no URL is set."""

    url: str | None = Field(
        default=None, description="http(s)://host:port of ClickHouse; unset uses embedded chDB"
    )
    database: str = "linesight"
    username: str = "default"
    password: SecretStr | None = None
    password_file: Path | None = Field(default=None, description="file holding the password")
    # Sink batching: ClickHouse wants few, large inserts.
    insert_batch_rows: int = 5000
    insert_interval_s: float = 1.0

    def resolved_password(self) -> str:
        return read_secret(self.password, self.password_file)


class StreamSettings(BaseModel):
    """Inspection worker (Faust) batching and identity."""

    app_id: str = "linesight-inspector"
    batch_size: int = 16
    # The shadow scorer's batch window; the inspection worker batches adaptively (streams.inflight).
    batch_window_s: float = 0.05
    # Batches one worker has in flight at once (decided, published, awaiting acks; acked in order).
    # Measured (docs/benchmarks.md): 1 / 2 / 4 / 8 gave pipeline/bare 0.62 / 0.70-0.74 / 0.78 / 0.75.
    max_in_flight: int = Field(default=4, ge=1, le=64)
    # Longest a consumer fetch may wait at the broker (Faust's fixed 1500 ms adds latency on Tansu).
    # Measured at 25 units/s: 500 / 100 / 20 / 5 ms gave capture->verdict p50 268 / 73 / 38 / 38 ms.
    fetch_max_wait_ms: int = 20
    # How long the worker's producer waits to fill a batch of outputs (docs/benchmarks.md).
    producer_linger_ms: float = Field(default=0.0, ge=0.0)
    web_port: int = 16066
    # The Faust web server (/healthz, /readyz, and Faust's own unauthenticated pages): loopback by default.
    web_host: str = "127.0.0.1"
    # A listener serving only /metrics, bound to services.health_host (0: none; /metrics is on the
    # web server above anyway). Compose sets it so Prometheus scrapes workers while the web server stays on loopback.
    metrics_port: int = 0
    # product id -> Triton model (ensemble) that inspects it
    product_models: dict[str, str] = {"tablet-round-white-10mm": "tablet_inspector"}
    # Recipes (docs/recipes.md): folder of recipe files, and the recipe each line starts with
    # (line -> recipe id) until `linesight recipes activate` switches it. A line with neither
    # routes each product to its model as above.
    recipes_dir: Path = PROJECT_ROOT / "recipes"
    line_recipes: dict[str, str] = {}
    # Longest side of the JPEG kept of each rejected unit (0: keep none).
    reject_image_px: int = Field(default=128, ge=0, le=1024)
    # ... and of each unit sent to review: the person deciding it sees the frame at up to this size,
    # and the decision can become training data (docs/review.md; 0: as reject_image_px).
    review_image_px: int = Field(default=1024, ge=0, le=4096)


class SimulatorSettings(BaseModel):
    """Simulated line (camera gateway)."""

    line: str = "line-1"
    camera: str = "cam-1"
    product: str = "tablet-round-white-10mm"
    rate_per_s: float = 20.0
    defect_rate: float = 0.15
    image_size: int = 160
    seed: int = 7


class AuditSettings(BaseModel):
    """GMP audit trail and users (docs/audit.md)."""

    # A seal record (the chain head's hash) closes a chain every N records or T seconds; the sealer
    # (`linesight audit seal --watch`) anchors a signed heartbeat seal of every chain every T seconds.
    seal_every: int = 1000
    seal_interval_s: float = 300.0
    session_ttl_s: float = 8 * 3600.0
    # Publishing from CLI actions to the audit topic waits at most this long (ClickHouse is the record).
    publish_timeout_s: float = 5.0
    # The trail key (Ed25519, PEM): signs every append and every seal. Held by the services that
    # append and seal, never by the database; unset: <state_dir>.audit/seal.key, created 0600.
    seal_key_file: Path | None = Field(default=None, description="the audit trail's Ed25519 private key")
    # Hex of the key's raw public half: what `audit verify` trusts (`linesight audit key` prints it).
    seal_public_key: str | None = None
    # Anchor folder (signed seals, append-only; unset: <state_dir>.audit/anchors): outside the state folder.
    anchor_dir: Path | None = None
    # How this process writes the trail: "direct" appends itself (chDB with no broker; the audit
    # service), "topic" submits events to kafka.topic_audit_events for the audit service to append
    # and waits up to append_timeout_s for the appended record (docs/audit.md, "One writer").
    append_via: Literal["direct", "topic"] = "direct"
    append_timeout_s: float = 15.0
    appender_group: str = "linesight-audit-appender"
    # The audit service appends what arrived within this window in one insert (as the sink does its
    # tables): an append costs ~15 CPU ms of queries whatever its size, and ClickHouse takes about one
    # insert a second per table well; an action waiting for its record waits up to this much longer.
    append_interval_s: float = 1.0


class ServiceSettings(BaseModel):
    """Consumer groups and health ports of the sink and actuator services."""

    sink_group: str = "linesight-clickhouse-sink"
    actuator_group: str = "linesight-actuator"
    actuator_line: str | None = Field(default=None, description="fire only for this line")
    sink_health_port: int = 16070
    actuator_health_port: int = 16071
    gateway_health_port: int = 16073
    # The audit service's /healthz, /readyz (its appender) and /metrics (`linesight audit serve`).
    audit_health_port: int = 16074
    # Address the sink's and actuator's /healthz and /readyz listen on (open endpoints): loopback
    # unless another host or container probes them (compose: the dashboard's health panel).
    health_host: str = "127.0.0.1"
    # Alert service and operator dashboard (docs/alerts.md), run by the stack process.
    alerts_group: str = "linesight-alerts"
    alerts_interval_s: float = 10.0
    alerts_run_length: int = 8
    alerts_missing_after_s: float = 5.0
    # Camera health (docs/alerts.md). The gateway sends a camera's status every 0.25 s: four
    # missed in a row is a gateway that died with the camera (a lost camera is reported at once).
    alerts_camera_silent_s: float = 1.0
    # Frames against units over this window: a triggered camera takes exactly one frame per unit,
    # so a sustained difference is a camera missing triggers or free-running; the window keeps the
    # +-1 unit of counting (and the lag of a station downstream of the trigger) within tolerance.
    alerts_camera_rate_window_s: float = 5.0
    alerts_camera_rate_tolerance: float = 0.1
    # The drift must last this long (a speed change reaches a downstream station seconds later).
    alerts_camera_rate_sustain_s: float = 5.0
    # Consecutive camera timestamps further apart than this many unit intervals: a missed
    # exposure (one missed exposure is 2; trigger jitter stays well under 1.5).
    alerts_camera_gap_factor: float = 1.5
    # A gap alert clears after this long without another one: a single missed exposure is an
    # event a person should see, not a blink on the screen.
    alerts_camera_gap_clear_s: float = 10.0
    # challenge_overdue (docs/validation.md): production this long after a changeover or model
    # deploy on a line with no passed challenge run since raises it.
    alerts_challenge_grace_s: float = 900.0
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 16080
    # The dashboard's /metrics on its own listener (on health_host; 0: none): its port is the
    # operators', authenticated, and Prometheus reads metrics without a session.
    dashboard_metrics_port: int = 0
    # Production (`linesight alerts` / `linesight dashboard` as separate services, docs/deployment.md):
    # the alert service's health endpoint and internal API (state, reject frames, acknowledgements).
    alerts_health_port: int = 16072
    alerts_url: str | None = Field(default=None, description="the alert service for `linesight dashboard`, "
                                   "e.g. http://alerts:16072")
    alerts_api_token: SecretStr | None = None
    alerts_api_token_file: Path | None = Field(default=None, description="file holding the alert API token")
    # Health endpoints the dashboard probes (None: 127.0.0.1 and the port above, as in `linesight up`).
    sink_url: str | None = None
    actuator_url: str | None = None
    # Session cookie only over HTTPS: set when a TLS-terminating reverse proxy serves the dashboard.
    dashboard_secure_cookie: bool = False
    # Log-in lockout (pipeline.auth.guard): this many failures of one user name (or, second number,
    # of one client address; behind a reverse proxy every client is the proxy) within the window
    # lock it for login_lockout_s; repeated refusals are audited once per source and window, with a count.
    login_max_failures: int = Field(default=5, ge=0)
    login_max_failures_per_source: int = Field(default=20, ge=0)
    login_failure_window_s: float = 900.0
    login_lockout_s: float = 300.0
    refusal_audit_window_s: float = 60.0

    def resolved_alerts_api_token(self) -> str:
        return read_secret(self.alerts_api_token, self.alerts_api_token_file)


class Settings(BaseSettings):
    """All settings of one LineSight deployment."""

    model_config = SettingsConfigDict(
        env_prefix="LINESIGHT_", env_nested_delimiter="__", extra="ignore"
    )

    state_dir: Path = PROJECT_ROOT / ".linesight"
    # The plant this stack runs in (LINESIGHT_SITE): stamped on every analytics row that has a line,
    # so a central copy keeps plants apart (docs/scale.md). '' (one plant) is also what rows stored
    # before the column existed read as.
    site: str = ""
    kafka: KafkaSettings = KafkaSettings()
    triton: TritonSettings = TritonSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    stream: StreamSettings = StreamSettings()
    simulator: SimulatorSettings = SimulatorSettings()
    services: ServiceSettings = ServiceSettings()
    audit: AuditSettings = AuditSettings()
    # Reject gate PLC (OPC UA) and, per line id, where/when a captured unit meets the gate.
    plc: PlcSettings = PlcSettings()
    lines: dict[str, LineTimingSettings] = {"line-1": LineTimingSettings()}
    # Heartbeats the actuator must keep receiving (worker, Triton, broker), else reject-all.
    watchdog: WatchdogSettings = WatchdogSettings()
    # Log format of every command (LINESIGHT_LOG__FORMAT=json in compose).
    log: LogSettings = LogSettings()

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def chdb_dir(self) -> Path:
        return self.state_dir / "chdb"
