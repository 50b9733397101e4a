# LineSight: `make demo` sets everything up and runs the pipeline; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LINESIGHT := $(VENV)/bin/linesight
DURATION ?= 60
RATE ?= 20
# A recipe of recipes/ (e.g. RECIPE=vial-2r-clear-5ml): the simulated line makes its product.
RECIPE ?=
# CAMERAS=gige: a two-station line acquired over GigE Vision from fake cameras (docs/cameras.md).
CAMERAS ?= simulated
MODEL := triton_models/tablet_classifier/1/model.onnx

.PHONY: install model demo up test test-unit typecheck chaos clean-state help lock lockcheck audit

help:
	@echo "make demo   set up .venv, train the model if absent, run a simulated line (DURATION=$(DURATION) s;"
	@echo "           RECIPE=vial-2r-clear-5ml | blister-2x5-round-white | carton-label-gs1 for other products;"
	@echo "           CAMERAS=gige: both faces of each tablet over GigE Vision, fake cameras, one verdict per unit)"
	@echo "make test   run the test suite: tests/unit, then tests/e2e (end-to-end on the embedded stack)"
	@echo "make test-unit  only tests/unit: no services, no trained model needed (fast)"
	@echo "make chaos  kill each embedded service mid-lot and account for every unit (docs/faults.md; minutes)"
	@echo "make typecheck  mypy over pipeline/ and streams/ (part of make test)"
	@echo "make model  train the tablet model into triton_models/ if absent"
	@echo "make lock   regenerate requirements/*.txt (exact versions, sha256 hashes) from pyproject.toml (UPGRADE=1: newest allowed)"
	@echo "make audit  known-vulnerability audit of every lock file (part of make test; docs/deployment.md)"

# Locked builds (docs/deployment.md, "Locked builds"): every environment installs exact versions with
# sha256 hashes from requirements/*.txt, which `make lock` regenerates from pyproject.toml's ranges.
# dev.txt: this venv (make demo, make test, CI; all extras); app.txt: the application image;
# triton.txt: the Triton image's Python 3.10 (requirements/triton.in).
DEV_LOCK := requirements/dev.txt
APP_LOCK := requirements/app.txt
TRITON_LOCK := requirements/triton.txt
LOCKS := $(DEV_LOCK) $(APP_LOCK) $(TRITON_LOCK)
# torch==2.13.0+cpu, the wheel this machine's pip takes from its wheel cache (see README): the lock holds its hash.
TORCH_WHEELS ?= /opt/wheels

$(VENV)/.installed: pyproject.toml $(DEV_LOCK)
	# GigE Vision cameras (Aravis, docs/cameras.md): the lock's PyGObject builds from source against Debian's
	# GObject introspection and cairo headers; tests/unit/test_cameras.py needs it.
	@if ! pkg-config --exists gobject-introspection-1.0 cairo 2>/dev/null && ! { test -x $(PY) && $(PY) -c 'import gi' 2>/dev/null; }; then \
		echo "The gige extra builds PyGObject from source and needs: apt-get install libgirepository1.0-dev libcairo2-dev pkg-config" >&2; \
		exit 1; \
	fi
	$(PYTHON) -m venv $(VENV)
	# Exactly the locked versions (pip itself included), each file checked against its sha256.
	$(PY) -m pip install -q --require-hashes --no-deps -r $(DEV_LOCK)
	# The project itself: no dependency resolution, and setuptools from the lock (no unhashed build environment).
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) tools/lockcheck.py $(DEV_LOCK)
	touch $@

install: $(VENV)/.installed

$(MODEL): | $(VENV)/.installed
	$(LINESIGHT) train --product tablet-round-white-10mm

model: $(MODEL)

demo: install model
	$(LINESIGHT) demo --duration $(DURATION) --rate $(RATE) --cameras $(CAMERAS) $(if $(RECIPE),--recipe $(RECIPE))

chaos: install
	$(PY) benchmarks/chaos.py

up: install model
	$(LINESIGHT) up --rate $(RATE)

# Tests that drive fake GigE Vision cameras (Aravis's C threads, cameras unplugged mid-run) run in a
# pytest process of their own: chDB's signal handlers share a process with whatever else runs in it,
# and a fault in a camera thread must not take the embedded ClickHouse down for the other tests.
CAMERA_TESTS := tests/unit/test_cameras.py tests/unit/test_gateway.py tests/unit/test_camera_health_gige.py

test: install model typecheck lockcheck audit
	$(PY) -m pytest -q $(CAMERA_TESTS)
	$(PY) -m pytest -q tests/unit tests/e2e $(addprefix --ignore=,$(CAMERA_TESTS))

test-unit: install
	$(PY) -m pytest -q $(CAMERA_TESTS)
	$(PY) -m pytest -q tests/unit $(addprefix --ignore=,$(CAMERA_TESTS))

# mypy over pipeline/ and streams/ (settings in pyproject.toml).
typecheck: install
	$(PY) -m mypy

# Regenerates the lock files from pyproject.toml (and requirements/*.in) with uv: keeps every pinned version
# that still satisfies the ranges unless UPGRADE=1. The app lock takes the dev lock's versions as constraints,
# so the image runs what the tests ran; the Triton lock (Python 3.10, where some of them no longer install)
# keeps its own pins (a new one starts from the dev lock's). Then `make install` and commit requirements/.
LOCK_FLAGS = --quiet --generate-hashes --custom-compile-command "make lock" --python-platform
UV ?= $(VENV)/bin/uv
lock:
	@test -x $(UV) || { echo "make lock needs uv: make install (the dev extra has it) or UV=/path/to/uv" >&2; exit 1; }
	$(UV) pip compile $(LOCK_FLAGS) x86_64-manylinux_2_35 --python-version 3.11 $(if $(UPGRADE),--upgrade) \
		--find-links $(TORCH_WHEELS) pyproject.toml requirements/build.in \
		--extra embedded --extra train --extra dev --extra gige -o $(DEV_LOCK)
	$(UV) pip compile $(LOCK_FLAGS) x86_64-manylinux_2_36 --python-version 3.11 $(if $(UPGRADE),--upgrade) \
		pyproject.toml requirements/build.in --extra gige -c $(DEV_LOCK) -o $(APP_LOCK)
	test -f $(TRITON_LOCK) || cp $(DEV_LOCK) $(TRITON_LOCK)
	$(UV) pip compile $(LOCK_FLAGS) x86_64-manylinux_2_35 --python-version 3.10 $(if $(UPGRADE),--upgrade) \
		requirements/triton.in -o $(TRITON_LOCK)

# This venv holds every package of the dev lock at its locked version (read-only; packages installed by hand
# beside them only warn). Also run by make install and by tests/unit/test_locks.py.
lockcheck: install
	$(PY) tools/lockcheck.py $(DEV_LOCK)

# Known vulnerabilities in every locked version (pip-audit); accepted findings with their reasons in
# requirements/audit-exceptions.toml. Without a reachable vulnerability service it says so in a banner and
# audits against PyPI's record of the newest releases and the advisory snapshot requirements/advisories.json
# instead (AUDIT_ONLINE=require: fail then; AUDIT_ONLINE=skip: the snapshot only, offline).
audit: install
	$(PY) tools/audit.py $(LOCKS)

clean-state:
	rm -rf .linesight
