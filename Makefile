# keeneye — the two set-up commands a fresh machine needs are `make demo` and `make test`.
# Each installs what it needs: a virtualenv in .venv, the package, and (as root) system packages.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=
# make test runs two pytest workers (pytest-xdist), a test file per worker at a time: the tests are
# independent (own ports, databases, temp folders) and half their time waits on services.

.PHONY: help install demo doctor test lint unit services browser promtool checkov clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[all,dev]'
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)  ## create .venv and install keeneye with every extra

browser:  ## Debian chromium for the browser tests (never `playwright install`)
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing: run 'sudo apt-get install chromium'"; fi; }

promtool:  ## Debian prometheus + alertmanager for promtool and amtool (the exported rules and routes are checked with them)
	@{ command -v promtool >/dev/null && command -v amtool >/dev/null; } || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-alertmanager >/dev/null; \
	  else echo "promtool/amtool missing: run 'sudo apt-get install prometheus prometheus-alertmanager'"; fi; }

checkov:  ## checkov (Kubernetes static analysis, tests/unit/deploy) in its own venv: its pins clash with keeneye's
	@test -x $(VENV)/tools/checkov/bin/checkov || { $(PYTHON) -m venv $(VENV)/tools/checkov && $(VENV)/tools/checkov/bin/pip install -q "checkov>=3.2"; }

services:  ## start (or install) PostgreSQL and Redis for the integration tests
	@bash scripts/services.sh

demo: install  ## the whole loop on embedded defaults: synth → train → register → serve → requests
	$(VENV)/bin/keeneye demo

doctor: install  ## check every configured backend
	$(VENV)/bin/keeneye doctor

lint: install  ## ruff + mypy --strict on src/ + import-linter (the layers of docs/architecture.md)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: install  ## fast tests only (no services)
	$(VENV)/bin/pytest -m "not integration and not slow and not e2e" $(PYTEST_ARGS)

test: install services browser promtool checkov lint  ## lint + every test against real services (what CI runs; soaks: pytest -m soak)
	$(VENV)/bin/pytest -m "not soak" -n 2 --dist loadfile $(PYTEST_ARGS)

clean:  ## remove caches and the local data directory
	rm -rf .keeneye .pytest_cache .mypy_cache .ruff_cache
