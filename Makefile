# pqmpc — one entry point for set-up, tests and the demo.
# `make demo` runs the main job, `make test` the whole test suite; both install
# everything they need (a virtual environment, the local control plane, and for the
# tests a liboqs build for the optional liboqs backend) first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv control-plane prometheus liboqs image test test-unit lint typecheck demo bench clean

venv: $(STAMP)
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,oqs]'
	touch $(STAMP)

control-plane:
	bash scripts/build-control-plane.sh

prometheus:
	bash scripts/install-prometheus.sh

# liboqs for tests/crypto/test_liboqs_backend.py, cached in ~/.cache/pqmpc/liboqs-<version>
# (the test points the venv's liboqs-python at it through OQS_INSTALL_PATH).
liboqs:
	bash scripts/build-liboqs.sh

# The Dockerfile's runtime image built from Debian packages (no Docker engine, no registry):
# an OCI layout in build/image/pqmpc, tag = the project version. Root; cached under
# ~/.cache/pqmpc/image. tests/image/test_image_oci.py runs the same script (see docs/image.md).
image: venv
	PYTHON=$(abspath $(PY)) bash scripts/build-image.sh

lint: venv
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

typecheck: lint

test-unit: venv
	$(PY) -m pytest -m 'not integration'

test: venv control-plane prometheus liboqs
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(PY) -m pytest

demo: venv control-plane prometheus
	$(PY) -m pqmpc_local.demo

bench: venv control-plane
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .hypothesis build/image
