# ManiReports Cloud Offload: the two commands of the quick start.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export FLASK_APP := wsgi

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

## run: install, migrate, seed the demo, serve on http://127.0.0.1:5000 with one worker
run: $(VENV)/.runtime
	$(BIN)/flask --app wsgi db upgrade
	$(BIN)/flask --app wsgi run-demo

## test: install what the tests need and run the whole suite (SQLite, then PostgreSQL)
test: $(VENV)/.dev
	bash scripts/test-setup.sh
	$(BIN)/ruff check .
	$(BIN)/pytest
	OFFLOAD_TEST_DB=postgresql $(BIN)/pytest -m "not browser and not slow"

lint: $(VENV)/.dev
	$(BIN)/ruff check .

bench: $(VENV)/.dev
	bash scripts/test-setup.sh
	$(BIN)/python bench/bulk_send.py

clean:
	rm -rf $(VENV) instance tests/node/node_modules
