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

.PHONY: install model demo up test test-unit typecheck chaos clean-state help

help:
	@echo "make demo   set up .venv, train the model if absent, run a simulated line (DURATION=$(DURATION) s;"
	@echo "           RECIPE=vial-2r-clear-5ml | blister-2x5-round-white | carton-label-gs1 for other products;"
	@echo "           CAMERAS=gige: both faces of each tablet over GigE Vision, fake cameras, one verdict per unit)"
	@echo "make test   run the test suite: tests/unit, then tests/e2e (end-to-end on the embedded stack)"
	@echo "make test-unit  only tests/unit: no services, no trained model needed (fast)"
	@echo "make chaos  kill each embedded service mid-lot and account for every unit (docs/faults.md; minutes)"
	@echo "make typecheck  mypy over pipeline/ and streams/ (part of make test)"
	@echo "make model  train the tablet model into triton_models/ if absent"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 (CPU) is taken from the machine's wheel cache; see README.
	$(PY) -m pip install -q -e '.[embedded,train,dev]'
	# GigE Vision cameras (Aravis, docs/cameras.md): PyGObject builds from source against Debian's
	# GObject introspection and cairo headers; tests/unit/test_cameras.py needs it.
	@if ! $(PY) -c 'import gi' 2>/dev/null && ! pkg-config --exists gobject-introspection-1.0 cairo 2>/dev/null; then \
		echo "The gige extra builds PyGObject from source and needs: apt-get install libgirepository1.0-dev libcairo2-dev pkg-config" >&2; \
		exit 1; \
	fi
	$(PY) -m pip install -q -e '.[gige]'
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

test: install model typecheck
	$(PY) -m pytest -q $(CAMERA_TESTS)
	$(PY) -m pytest -q tests/unit tests/e2e $(addprefix --ignore=,$(CAMERA_TESTS))

test-unit: install
	$(PY) -m pytest -q $(CAMERA_TESTS)
	$(PY) -m pytest -q tests/unit $(addprefix --ignore=,$(CAMERA_TESTS))

# mypy over pipeline/ and streams/ (settings in pyproject.toml).
typecheck: install
	$(PY) -m mypy

clean-state:
	rm -rf .linesight
