# medkb: `make run` (web UI + daemon), `make test` (whole suite with linters), `make demo` (offline).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MEDKB_DATA_DIR ?= $(CURDIR)/data
export DAGSTER_HOME ?= $(MEDKB_DATA_DIR)/dagster
HOST ?= 127.0.0.1
PORT ?= 3000

.PHONY: install run demo test lint typecheck unit browser instance benchmarks clean

install: $(STAMP)

# torch is pinned to the CPU build this machine carries before anything can pull a CUDA build.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found; set PYTHON=..."; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

instance:
	mkdir -p "$(DAGSTER_HOME)"
	ln -sf "$(CURDIR)/dagster.yaml" "$(DAGSTER_HOME)/dagster.yaml"

# One command for the web UI and the daemon (schedules, sensors, run queue); Ctrl-C stops both.
run: install instance
	$(BIN)/dagster dev -h $(HOST) -p $(PORT) -w workspace.yaml

demo: install instance
	$(BIN)/python -m medkb_assets.demo

lint: install
	$(BIN)/ruff check medkb_assets medkb_assets_tests benchmarks
	$(BIN)/ruff format --check medkb_assets medkb_assets_tests benchmarks

typecheck: install
	$(BIN)/mypy

# Debian's Chromium for the browser test of the web UI; Playwright never downloads a browser.
browser:
	scripts/install_browser.sh

unit: install browser
	$(BIN)/python -m pytest -q

benchmarks: install
	$(BIN)/python benchmarks/embed_throughput.py
	$(BIN)/python benchmarks/search_latency.py

test: lint typecheck unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
