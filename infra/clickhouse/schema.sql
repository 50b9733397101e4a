-- LineSight analytics schema. Applied by `linesight db init` (and by the sink at start-up).
-- {db} is replaced by the configured database name.
-- Redelivered messages are absorbed twice over: inserts carry an insert_deduplication_token
-- (topic:partition:first-last offset) within the dedup window, and ReplacingMergeTree tables are
-- keyed by unit, so `FINAL` queries see one row per unit even if a duplicate slipped through.

CREATE DATABASE IF NOT EXISTS {db};

-- One row per inspected (or fail-safe rejected) frame: one per unit on a one-camera line, one per
-- station frame on a multi-station line (station names it; '' on a one-camera line). verdict:
-- pass, reject, or review (the gate removes the unit and a person decides); model_version is the
-- version that judged it. The unit's own verdict on a multi-station line: unit_verdicts.
CREATE TABLE IF NOT EXISTS {db}.inspections
(
    site           LowCardinality(String),
    unit_id        String,
    line           LowCardinality(String),
    camera         LowCardinality(String),
    station        LowCardinality(String),
    product        LowCardinality(String),
    lot            String,
    verdict        LowCardinality(String),
    cause          LowCardinality(String),
    inspected      Bool,
    defect         LowCardinality(String),
    score          Nullable(Float32),
    threshold      Nullable(Float32),  -- the judging version's reject threshold
    review_threshold Nullable(Float32), -- and its review threshold (grey zone: review < score <= reject)
    model_name     LowCardinality(String),
    model_version  LowCardinality(String),
    capture_time   DateTime64(6, 'UTC'),
    received_time  DateTime64(6, 'UTC'),
    inferred_time  DateTime64(6, 'UTC'),
    latency_ms     Float64 MATERIALIZED dateDiff('microsecond', capture_time, inferred_time) / 1000.0,
    worker         LowCardinality(String),
    error          String,
    class_scores   Map(String, Float32),
    recipe         LowCardinality(String),   -- the line's recipe that judged the unit (id@vN)
    measurements   Map(String, Float64),     -- measured numbers (fill_mm, pockets_bad, ...; flags as 0/1)
    measured_text  Map(String, String),      -- measured text (gtin, lot, expiry, serial of a label)
    parts          String,                   -- per-pocket verdicts, JSON [{index, verdict, defect, reason}]
    reasons        Array(String),            -- one line per failing check
    purpose        LowCardinality(String),   -- '' production; 'challenge': a challenge unit, never production
    frame_source   String,                   -- the judged frame on the broker: topic:partition:offset
    image_sha256   String,                   -- sha256 of the judged frame's bytes (as the audit record)
    kafka_partition UInt32,
    kafka_offset   UInt64,
    stored_time    DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(capture_time)
ORDER BY (line, unit_id, station, site)
SETTINGS non_replicated_deduplication_window = 1000;

-- Databases created before the grey zone existed gain its column (idempotent).
ALTER TABLE {db}.inspections ADD COLUMN IF NOT EXISTS review_threshold Nullable(Float32) AFTER threshold;
-- ... and the recipe columns (docs/recipes.md).
ALTER TABLE {db}.inspections ADD COLUMN IF NOT EXISTS recipe LowCardinality(String) AFTER class_scores;
ALTER TABLE {db}.inspections ADD COLUMN IF NOT EXISTS measurements Map(String, Float64) AFTER recipe;
ALTER TABLE {db}.inspections ADD COLUMN IF NOT EXISTS measured_text Map(String, String) AFTER measurements;
ALTER TABLE {db}.inspections ADD COLUMN IF NOT EXISTS parts String AFTER measured_text;
ALTER TABLE {db}.inspections ADD COLUMN IF NOT EXISTS reasons Array(String) AFTER parts;
-- ... and the station (multi-station lines), which joins the sorting key: one row per station frame.
-- ClickHouse lets a column join the key only in the ALTER that adds it, and only without a default
-- expression (a String's implicit default is ''); on a table that has it, both parts change nothing.
-- The plant (`site`, docs/scale.md) joins the key in the same ALTER, last: a later ALTER could
-- not put it before station, and one key here keeps the statement a no-op on a current table.
ALTER TABLE {db}.inspections ADD COLUMN IF NOT EXISTS station LowCardinality(String) AFTER camera,
    ADD COLUMN IF NOT EXISTS site LowCardinality(String) FIRST,
    MODIFY ORDER BY (line, unit_id, station, site);
-- ... and the frame's purpose (docs/validation.md, "Challenge runs"): challenge units are kept
-- out of every production count by `purpose = ''` (the column's default for older rows).
ALTER TABLE {db}.inspections ADD COLUMN IF NOT EXISTS purpose LowCardinality(String) AFTER reasons;
-- ... and where the judged frame is on the broker (docs/review.md: the review station reads it back).
ALTER TABLE {db}.inspections ADD COLUMN IF NOT EXISTS frame_source String AFTER purpose;
ALTER TABLE {db}.inspections ADD COLUMN IF NOT EXISTS image_sha256 String AFTER frame_source;

-- One row per unit of a multi-station line (docs/actuation.md): its verdict (pass only when every
-- declared station passed it), the gate's cause (model | late | failsafe), every station's result
-- and the stations with no result by the cutoff. Read the stations with ARRAY JOIN stations.
CREATE TABLE IF NOT EXISTS {db}.unit_verdicts
(
    site           LowCardinality(String),
    unit_id        String,
    line           LowCardinality(String),
    lot            String,
    product        LowCardinality(String),
    verdict        LowCardinality(String),
    cause          LowCardinality(String),
    decided_time   DateTime64(6, 'UTC'),    -- when the gate acted on the unit
    stations       Nested(
        station        LowCardinality(String),
        verdict        LowCardinality(String),
        score          Nullable(Float32),
        defect         LowCardinality(String),
        model_version  LowCardinality(String),
        camera         LowCardinality(String)
    ),
    missing        Array(LowCardinality(String)),  -- declared stations with no result by the cutoff
    reason         String,
    stored_time    DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(decided_time)
ORDER BY (line, unit_id, site)
SETTINGS non_replicated_deduplication_window = 1000;

-- Every reject the gate fired.
CREATE TABLE IF NOT EXISTS {db}.actuations
(
    site           LowCardinality(String),
    unit_id        String,
    line           LowCardinality(String),
    lot            String,
    cause          LowCardinality(String),
    defect         LowCardinality(String),
    capture_time   DateTime64(6, 'UTC'),
    command_time   DateTime64(6, 'UTC'),
    fired_time     DateTime64(6, 'UTC'),
    actuator       LowCardinality(String),
    purpose        LowCardinality(String),   -- '' production; 'challenge'
    stored_time    DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(fired_time)
ORDER BY (line, unit_id, site)
SETTINGS non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.actuations ADD COLUMN IF NOT EXISTS purpose LowCardinality(String) AFTER actuator;

-- What simulators and labelled replays know about each unit (never shown to the model).
CREATE TABLE IF NOT EXISTS {db}.ground_truth
(
    site           LowCardinality(String),
    unit_id        String,
    line           LowCardinality(String),
    lot            String,
    product        LowCardinality(String),
    label          LowCardinality(String),
    defect         LowCardinality(String),
    capture_time   DateTime64(6, 'UTC'),
    source         LowCardinality(String),
    purpose        LowCardinality(String),   -- '' production; 'challenge'
    stored_time    DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(capture_time)
ORDER BY (line, unit_id, site)
SETTINGS non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.ground_truth ADD COLUMN IF NOT EXISTS purpose LowCardinality(String) AFTER source;

-- Shadow deployment (docs/models.md): a candidate classifier version's verdict on a live frame,
-- at its own thresholds. Never acted on and never in a production count: kept apart from
-- inspections. One row per unit (station frame) and candidate version; verdict 'failed' when the
-- candidate could not score the frame (error says why).
CREATE TABLE IF NOT EXISTS {db}.shadow_inspections
(
    site             LowCardinality(String),
    unit_id          String,
    line             LowCardinality(String),
    camera           LowCardinality(String),
    station          LowCardinality(String),
    product          LowCardinality(String),
    lot              String,
    verdict          LowCardinality(String),
    defect           LowCardinality(String),
    score            Nullable(Float32),
    review_threshold Nullable(Float32),
    reject_threshold Nullable(Float32),
    model_name       LowCardinality(String),   -- the classifier (served as <name>__shadow)
    model_version    UInt32,                   -- the candidate version
    live_version     Nullable(UInt32),         -- the live version when the shadow started
    capture_time     DateTime64(6, 'UTC'),
    scored_time      DateTime64(6, 'UTC'),
    shadow_id        String,
    error            String,
    kafka_partition  UInt32,
    kafka_offset     UInt64,
    stored_time      DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(capture_time)
ORDER BY (line, model_name, model_version, unit_id, station, site)
SETTINGS non_replicated_deduplication_window = 1000;

-- Frames that could not be inspected, with the reason (their units were fail-safe rejected).
CREATE TABLE IF NOT EXISTS {db}.dead_letters
(
    site           LowCardinality(String),
    unit_id        String,
    line           LowCardinality(String),
    lot            String,
    reason         String,
    stage          LowCardinality(String),
    source         String,
    size_bytes     UInt32,
    dead_time      DateTime64(6, 'UTC'),
    stored_time    DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(dead_time)
ORDER BY (source, site)
SETTINGS non_replicated_deduplication_window = 1000;

-- What physically happened to each unit at the reject gate: exactly one row per captured unit
-- (docs/actuation.md). outcome: fired | passed | fire_failed | missed; cause: model | late |
-- failsafe. The per-lot reconciliation (`linesight report batch LOT`) is computed from this table.
CREATE TABLE IF NOT EXISTS {db}.gate_events
(
    site           LowCardinality(String),
    unit_id        String,
    line           LowCardinality(String),
    lot            String,
    outcome        LowCardinality(String),
    cause          LowCardinality(String),
    verdict        LowCardinality(String),  -- action received in time: pass | reject | '' (none in time)
    admitted       Bool,                    -- the actuator saw the unit's frame at capture
    capture_time   Nullable(DateTime64(6, 'UTC')),
    deadline_time  DateTime64(6, 'UTC'),    -- unit centred on the gate
    fire_at_time   DateTime64(6, 'UTC'),
    cutoff_time    DateTime64(6, 'UTC'),    -- a verdict after this is late
    window_start   DateTime64(6, 'UTC'),
    window_end     DateTime64(6, 'UTC'),
    verdict_time   Nullable(DateTime64(6, 'UTC')),
    acted_time     DateTime64(6, 'UTC'),
    fired_time     Nullable(DateTime64(6, 'UTC')),  -- the PLC's confirmation time
    margin_ms      Nullable(Float64) MATERIALIZED dateDiff('microsecond', verdict_time, fire_at_time) / 1000.0,
    reason         String,
    actuator       LowCardinality(String),
    purpose        LowCardinality(String),   -- '' production; 'challenge'
    stored_time    DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(deadline_time)
ORDER BY (line, unit_id, site)
SETTINGS non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.gate_events ADD COLUMN IF NOT EXISTS purpose LowCardinality(String) AFTER actuator;

-- Challenge runs (docs/validation.md): one row per run of a recipe's challenge set through a live
-- line at the start or end of a lot; `failures` lists every unit that broke a criterion.
CREATE TABLE IF NOT EXISTS {db}.challenge_runs
(
    site           LowCardinality(String),
    run_id         String,
    line           LowCardinality(String),
    lot            String,
    phase          LowCardinality(String),   -- when in the lot: start | end
    recipe         LowCardinality(String),   -- id@vN
    set_id         String,                   -- the recipe's [challenge] set
    set_sha256     String,                   -- its dataset hash
    units          UInt32,
    defects        UInt32,
    defects_rejected UInt32,
    good           UInt32,
    good_removed   UInt32,
    good_review    UInt32,
    passed         Bool,
    failures       Array(String),
    user           String,
    started_time   DateTime64(6, 'UTC'),
    finished_time  DateTime64(6, 'UTC'),
    audit_record   String,                   -- the signed challenge.run record (CHAIN#SEQ)
    signature      String,                   -- its e-signature record
    stored_time    DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
ORDER BY (line, lot, run_id, site);

-- Operator alarms with raise and clear times (PLC unreachable, pipeline unhealthy, bad commands).
-- The clear replaces its raise (revision 1 over 0) and carries the raise's time and reason.
CREATE TABLE IF NOT EXISTS {db}.alarms
(
    alarm_id       String,
    code           LowCardinality(String),
    active         Bool,
    raised_time    DateTime64(6, 'UTC'),
    cleared_time   Nullable(DateTime64(6, 'UTC')),
    reason         String,
    clear_reason   String,
    source         LowCardinality(String),
    revision       UInt8,
    stored_time    DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMM(raised_time)
ORDER BY (alarm_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- Real-time alerts (docs/alerts.md): one row per change of an alert episode; the highest revision
-- (raise 0, refreshes, clear, acknowledgement) is its current state. Query with FINAL.
CREATE TABLE IF NOT EXISTS {db}.alerts
(
    site             LowCardinality(String),
    alert_id         String,
    kind             LowCardinality(String),
    severity         LowCardinality(String),
    line             LowCardinality(String),
    state            LowCardinality(String),
    first_seen       DateTime64(6, 'UTC'),
    last_seen        DateTime64(6, 'UTC'),
    cleared_time     Nullable(DateTime64(6, 'UTC')),
    message          String,
    value            Float64,
    acknowledged_by  String,
    acknowledged_at  Nullable(DateTime64(6, 'UTC')),
    revision         UInt32,
    source           LowCardinality(String),
    stored_time      DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMM(first_seen)
ORDER BY (alert_id, site)
SETTINGS non_replicated_deduplication_window = 1000;

-- A small JPEG of every unit removed from the line (reject, review, fail-safe with a decodable
-- frame), for batch records; one row per unit (a redelivered image replaces itself).
CREATE TABLE IF NOT EXISTS {db}.reject_images
(
    unit_id        String,
    line           LowCardinality(String),
    lot            String,
    verdict        LowCardinality(String),
    defect         LowCardinality(String),
    capture_time   DateTime64(6, 'UTC'),
    jpeg_base64    String CODEC(ZSTD(1)),
    size_bytes     UInt32,
    stored_time    DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(stored_time)
PARTITION BY toYYYYMM(capture_time)
ORDER BY (line, unit_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- GMP audit trail (docs/audit.md): append-only, hash-chained. The application only ever INSERTs
-- here (grant the services INSERT and SELECT, never ALTER/DELETE/TRUNCATE). Plain MergeTree, not
-- Replacing: a duplicated or inserted record must stay visible to `linesight audit verify`.
-- One chain per (line, results partition) for inspection decisions, 'system' for every change.
CREATE TABLE IF NOT EXISTS {db}.audit_records
(
    chain          LowCardinality(String),
    seq            UInt64,
    time           DateTime64(6, 'UTC'),
    user           String,
    role           LowCardinality(String),
    action         LowCardinality(String),
    subject        String,
    old_value      String,
    new_value      String,
    reason         String,
    detail         String,                   -- canonical JSON of the action's own fields
    prev_hash      FixedString(64),
    record_hash    FixedString(64),          -- sha256 of the canonical record incl. prev_hash
    trail_sig      String DEFAULT '',        -- Ed25519 signature of record_hash, last record of an append
    event_id       String DEFAULT '',        -- the submitted event's id (outside the hash): appended once
    stored_time    DateTime64(6, 'UTC') DEFAULT now64(6),
    INDEX subject_idx subject TYPE bloom_filter GRANULARITY 4,
    INDEX event_idx event_id TYPE bloom_filter GRANULARITY 4
)
ENGINE = MergeTree
ORDER BY (chain, seq)
SETTINGS non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.audit_records ADD COLUMN IF NOT EXISTS trail_sig String DEFAULT '' AFTER record_hash;
ALTER TABLE {db}.audit_records ADD COLUMN IF NOT EXISTS event_id String DEFAULT '' AFTER trail_sig;
ALTER TABLE {db}.audit_records ADD INDEX IF NOT EXISTS event_idx event_id TYPE bloom_filter GRANULARITY 4;

-- Users (pipeline/auth): argon2id password hashes, one role each. Every change is a new revision
-- (and an audit record); FINAL shows the current state.
CREATE TABLE IF NOT EXISTS {db}.users
(
    username       String,
    role           LowCardinality(String),
    password_hash  String,
    enabled        Bool,
    revision       UInt64,
    changed_time   DateTime64(6, 'UTC'),
    changed_by     String
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY (username);

-- Login sessions for UIs: only the sha256 of the token is stored.
CREATE TABLE IF NOT EXISTS {db}.sessions
(
    token_sha256   FixedString(64),
    username       String,
    role           LowCardinality(String),
    created_time   DateTime64(6, 'UTC'),
    expires_time   DateTime64(6, 'UTC'),
    revoked        Bool,
    revision       UInt8
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY (token_sha256);

-- Reject images per station frame: a multi-station unit keeps each removed station's frame
-- (rows stored before the column existed have station '').
-- The plant (`site`) joins in the same ALTER, as in inspections.
ALTER TABLE {db}.reject_images ADD COLUMN IF NOT EXISTS station LowCardinality(String),
    ADD COLUMN IF NOT EXISTS site LowCardinality(String) FIRST, MODIFY ORDER BY (line, unit_id, station, site);

-- The plant (docs/scale.md, "A plant/site column"): every table with a `line` has `site`, stamped
-- from the `site` setting by whoever writes the row ('' on databases and settings from before it).
-- It is the last column of each sorting key: ClickHouse lets a column join a key only at its end,
-- in the ALTER that adds it, so older databases get the same key as new ones. In a plant it is a
-- constant; in a central copy it keeps two plants' `line-1`/unit rows apart (ReplacingMergeTree
-- replaces rows of equal key) and leads the cluster's sharding key (pipeline/clickhouse/cluster.py).
ALTER TABLE {db}.unit_verdicts ADD COLUMN IF NOT EXISTS site LowCardinality(String) FIRST, MODIFY ORDER BY (line, unit_id, site);
ALTER TABLE {db}.actuations ADD COLUMN IF NOT EXISTS site LowCardinality(String) FIRST, MODIFY ORDER BY (line, unit_id, site);
ALTER TABLE {db}.ground_truth ADD COLUMN IF NOT EXISTS site LowCardinality(String) FIRST, MODIFY ORDER BY (line, unit_id, site);
ALTER TABLE {db}.shadow_inspections ADD COLUMN IF NOT EXISTS site LowCardinality(String) FIRST, MODIFY ORDER BY (line, model_name, model_version, unit_id, station, site);
ALTER TABLE {db}.dead_letters ADD COLUMN IF NOT EXISTS site LowCardinality(String) FIRST, MODIFY ORDER BY (source, site);
ALTER TABLE {db}.gate_events ADD COLUMN IF NOT EXISTS site LowCardinality(String) FIRST, MODIFY ORDER BY (line, unit_id, site);
ALTER TABLE {db}.challenge_runs ADD COLUMN IF NOT EXISTS site LowCardinality(String) FIRST, MODIFY ORDER BY (line, lot, run_id, site);
ALTER TABLE {db}.alerts ADD COLUMN IF NOT EXISTS site LowCardinality(String) FIRST, MODIFY ORDER BY (alert_id, site);

-- What a person decided about a review unit (pipeline/review, docs/review.md): every decision is
-- also an e-signed audit record (review.decide); a later decision (QA confirming) is another row.
CREATE TABLE IF NOT EXISTS {db}.review_decisions
(
    site           LowCardinality(String),
    unit_id        String,
    lot            String,
    line           LowCardinality(String),
    product        LowCardinality(String),
    station        LowCardinality(String),   -- the station(s) that sent the unit to review ('' one camera)
    decision       LowCardinality(String),   -- good | defect | cannot_decide
    defect         LowCardinality(String),   -- the defect class of a defect decision
    user           String,
    role           LowCardinality(String),
    decided_time   DateTime64(6, 'UTC'),
    seconds_spent  Float32,                  -- from opening the unit to signing the decision
    machine_defect LowCardinality(String),   -- what the machine said
    score          Nullable(Float32),
    model_version  LowCardinality(String),
    camera         LowCardinality(String),
    capture_time   DateTime64(6, 'UTC'),
    audit_record   String,                   -- the review.decide record (CHAIN#SEQ)
    signature      String,                   -- its e-signature record
    stored_time    DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
ORDER BY (lot, unit_id, audit_record, site);
ALTER TABLE {db}.review_decisions ADD COLUMN IF NOT EXISTS site LowCardinality(String) FIRST,
    MODIFY ORDER BY (lot, unit_id, audit_record, site);

-- The ISO 2859-1 sample of a lot's recovered units and its result (QA, e-signed).
CREATE TABLE IF NOT EXISTS {db}.review_samples
(
    lot            String,
    recovered      UInt32,                   -- the recovered units sampled from
    level          LowCardinality(String),
    aql            Float32,
    code_letter    LowCardinality(String),
    sample_size    UInt32,
    accept         UInt32,                   -- Ac
    defective      UInt32,                   -- defective units found in the sample
    accepted       Bool,
    user           String,
    decided_time   DateTime64(6, 'UTC'),
    audit_record   String,
    signature      String,
    stored_time    DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
ORDER BY (lot, audit_record);

-- Good units the machine removed: review units whose latest decision is good (docs/review.md,
-- "False-reject root causes"), with what the machine saw, for a Pareto by class, score band,
-- station, camera, product and hour.
CREATE VIEW IF NOT EXISTS {db}.false_rejects AS
SELECT d.unit_id AS unit_id, d.lot AS lot, d.line AS line, d.product AS product, d.station AS station,
       d.camera AS camera, d.machine_defect AS defect, d.score AS score,
       if(isNull(d.score), '', format('{}-{}', toString(floor(d.score * 10) / 10), toString(floor(d.score * 10) / 10 + 0.1))) AS score_band,
       toStartOfHour(d.capture_time) AS hour, d.user AS decided_by, d.decided_time AS decided_time,
       d.audit_record AS audit_record
FROM {db}.review_decisions AS d FINAL
INNER JOIN (SELECT lot, unit_id, max(decided_time) AS last FROM {db}.review_decisions FINAL GROUP BY lot, unit_id) AS l
    ON d.lot = l.lot AND d.unit_id = l.unit_id AND d.decided_time = l.last
WHERE d.decision = 'good';
