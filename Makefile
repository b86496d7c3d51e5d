# Developer entry points. `make run` and `make test` are the two commands in the README.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
CONFIG ?= examples/router.yaml

.PHONY: setup deps run test test-fast lint typecheck bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Debian packages the tests talk to (real DICOM peers). Needs root or sudo.
deps:
	@command -v /usr/bin/storescu >/dev/null && command -v /usr/sbin/Orthanc >/dev/null && [ -x /usr/sbin/sshd ] && [ -x /usr/bin/tmux ] || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q dcmtk orthanc openssh-server tmux; }

# The router on the example config, state and logs under ./run/ (no root paths).
run: setup
	$(PY) -m appliance.router config check $(CONFIG)
	$(PY) -m appliance.router serve --config $(CONFIG)

test: setup deps
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q tests/unit

lint: setup
	$(VENV)/bin/ruff check appliance tests
	$(VENV)/bin/ruff format --check appliance tests

typecheck: setup
	$(VENV)/bin/mypy

bench: setup deps
	$(PY) -m tests.bench.bench_relay

clean:
	rm -rf run build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
