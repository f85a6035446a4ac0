# Every target sets itself up from nothing: a .venv is created and the project installed into it on demand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test test-all test-docker demo lint protos protos-check bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[datasets,bench,dev]'
	touch $(STAMP)

## make test: unit and integration tests (a few minutes)
test: $(STAMP)
	scripts/system-deps.sh $(PY) test
	$(PY) -m pytest -q tests/unit tests/integration

## make test-all: every test but the FPGA ones: unit, integration, system (demo, stack, faults) and slow
test-all: $(STAMP)
	scripts/system-deps.sh $(PY) test
	$(PY) -m pytest -q -m 'not fpga'

## make test-docker: build the images and run the compose stack against a real Docker engine (needs Compose v2
## and an engine; not part of CI): health, exit codes, Prometheus targets, bytes counters, dashboard queries
test-docker:
	scripts/test-docker.sh

## make demo: the main job on the embedded default (MNIST-1D)
demo: $(STAMP)
	scripts/system-deps.sh $(PY) demo
	$(VENV)/bin/nessa demo

## make lint: ruff, formatting, mypy and a check that the generated protobuf code is fresh
lint: $(STAMP) protos-check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy nessa services trainer

## make protos: regenerate nessa/v1 from proto/nessa/v1
protos: $(STAMP)
	$(PY) scripts/gen_protos.py

protos-check: $(STAMP)
	$(PY) scripts/gen_protos.py --check

## make bench: every benchmark (prints the README's figures)
bench: $(STAMP)
	$(PY) bench/store.py
	$(PY) bench/kernels.py
	$(PY) bench/kernels_selection.py
	$(PY) bench/selection.py
	$(PY) bench/stream.py

clean:
	rm -rf $(VENV) build dist *.egg-info
