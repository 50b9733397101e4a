# syntax=docker/dockerfile:1
# LineSight application image: one image, one `linesight` command per container
# (worker | sink | actuator | camera | gateway | topics create | db init). Build context: repository root.
#
#   docker build -f infra/docker/app.Dockerfile -t linesight/app:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build: venv with everything
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# A compiler only here, for any dependency without a wheel; the runtime stage has none.
# PyGObject (the gige extra: the camera gateway's Aravis bindings) builds from source against
# GObject Introspection and, through pycairo, cairo: their headers and pkg-config, here only.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
        libgirepository1.0-dev libcairo2-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --upgrade pip
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Dependencies first, from pyproject.toml alone, so code changes reuse this layer: the project's
# and the gige extra's (Aravis with its bundled libaravis, PyGObject) for `linesight gateway`.
COPY pyproject.toml README.md* ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['gige']))" \
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
      org.opencontainers.image.description="LineSight services: inspection worker, ClickHouse sink, reject actuator, alert service, operator dashboard, camera gateway, camera simulator" \
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
# What the gige extra loads at run time: GObject Introspection and GLib (with the GLib, GObject
# and Gio typelibs Aravis's own typelib depends on), libusb and libxml2 for the bundled libaravis,
# cairo for pycairo (a PyGObject dependency). The -dev packages stay in the build stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libgirepository-1.0-1 libglib2.0-0 gir1.2-glib-2.0 libusb-1.0-0 libxml2 libcairo2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
# Fails the build when a library Aravis or PyGObject needs is missing from this stage.
RUN python -c "from pipeline.gateway.cameras import load_aravis; load_aravis()"
USER linesight
# State (Faust data dir, logs) lives here, writable by the service user only. The audit anchors
# (/var/lib/linesight-anchors, outside the state folder) are the auditsealer's volume.
WORKDIR /var/lib/linesight
ENTRYPOINT ["linesight"]
CMD ["--help"]
