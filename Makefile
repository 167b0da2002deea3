# Two commands set everything up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEMO ?= demo_models
STAMP := $(VENV)/.installed

.PHONY: serve test install build demo bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Editable install: builds the Cython twins and the gRPC code in place, so tests use this checkout; a changed
# .pyx or .proto re-runs it.
$(STAMP): $(VENV)/bin/python pyproject.toml setup.py $(wildcard ovms/_native/*.pyx) $(shell find protos -name '*.proto')
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

build: $(STAMP)

$(DEMO)/config.json: $(STAMP) tests/fixtures/models.py
	$(PY) tests/fixtures/models.py $(DEMO)

demo: $(DEMO)/config.json

serve: build demo
	$(PY) -m ovms --config_path $(DEMO)/config.json --port 9000 --rest_port 8000

test: build
	$(PY) -m pytest -q

bench: build
	$(PY) bench/kserve_bench.py

clean:
	rm -rf build *.egg-info ovms/_native/*.c ovms/_native/*.so $(DEMO)
