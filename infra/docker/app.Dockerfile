# syntax=docker/dockerfile:1
# LineSight application image: one image, one `linesight` command per container
# (worker | sink | actuator | camera | gateway | topics create | db init). Build context: repository root.
#
#   docker build -f infra/docker/app.Dockerfile -t linesight/app:0.1.0 .

# The base of both stages. Pin it by digest for a build that does not move with the tag (docs/deployment.md,
# "Locked builds"): PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> in .env (compose passes it here).
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
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Dependencies first, from the lock alone, so code changes reuse this layer: requirements/app.txt holds
# the exact versions and sha256 hashes of the project's dependencies and the gige extra's (Aravis with
# its bundled libaravis, PyGObject) for `linesight gateway`, pip and setuptools included (`make lock`).
# --no-deps: nothing is resolved here; a file whose hash differs from the lock's stops the build.
COPY requirements/app.txt ./requirements/app.txt
RUN pip install --require-hashes --no-deps -r requirements/app.txt

# The project itself, installed editable from /app on purpose: the code resolves repository
# files from its own location (pipeline.settings.PROJECT_ROOT, e.g. infra/clickhouse/schema.sql
# for `linesight db init`), so /app mirrors the repository layout.
COPY pipeline ./pipeline
COPY streams ./streams
COPY infra/clickhouse/schema.sql ./infra/clickhouse/schema.sql
# The shipped recipes (docs/recipes.md); compose mounts the plant's own over them.
COPY recipes ./recipes
COPY pyproject.toml README.md* ./
COPY tools/lockcheck.py ./tools/lockcheck.py
# Built with the lock's setuptools (no unhashed build environment). Then the venv must hold exactly the
# lock's packages at the lock's versions (and nothing else but linesight), and satisfy pyproject.toml's
# ranges (dependencies and the gige extra): a rebuild that would install anything else fails here.
RUN pip install --no-deps --no-build-isolation -e . \
    && python tools/lockcheck.py --exact requirements/app.txt --pyproject pyproject.toml --optional-dependencies gige \
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
