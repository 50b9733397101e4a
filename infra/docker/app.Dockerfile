# syntax=docker/dockerfile:1
# LineSight application image: one image, one `linesight` command per container
# (worker | sink | actuator | camera | topics create | db init). Build context: repository root.
#
#   docker build -f infra/docker/app.Dockerfile -t linesight/app:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build: venv with everything
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# A compiler only here, for any dependency without a wheel; the runtime stage has none.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --upgrade pip
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Dependencies first, from pyproject.toml alone, so code changes reuse this layer.
COPY pyproject.toml README.md* ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# The project itself, installed editable from /app on purpose: the code resolves repository
# files from its own location (pipeline.settings.PROJECT_ROOT, e.g. infra/clickhouse/schema.sql
# for `linesight db init`), so /app mirrors the repository layout.
COPY pipeline ./pipeline
COPY streams ./streams
COPY infra/clickhouse/schema.sql ./infra/clickhouse/schema.sql
# The shipped recipes (docs/recipes.md); compose mounts the plant's own over them.
COPY recipes ./recipes
RUN pip install --no-deps -e . \
    && linesight --help >/dev/null

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
ARG APP_UID=10001
LABEL org.opencontainers.image.title="linesight" \
      org.opencontainers.image.description="LineSight services: inspection worker, ClickHouse sink, reject actuator, alert service, operator dashboard, camera simulator" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LINESIGHT_STATE_DIR=/var/lib/linesight
# Fixed non-root uid/gid: the Docker secret files on the host must be readable by it.
RUN groupadd --system --gid "${APP_UID}" linesight \
    && useradd --system --uid "${APP_UID}" --gid linesight --home-dir /var/lib/linesight \
        --no-create-home --shell /usr/sbin/nologin linesight \
    && install -d -o linesight -g linesight -m 0750 /var/lib/linesight \
    && install -d -o linesight -g linesight -m 0700 /var/lib/linesight-anchors
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
USER linesight
# State (Faust data dir, logs) lives here, writable by the service user only. The audit anchors
# (/var/lib/linesight-anchors, outside the state folder) are the auditsealer's volume.
WORKDIR /var/lib/linesight
ENTRYPOINT ["linesight"]
CMD ["--help"]
