# ManiReports Cloud Offload: the two commands of the quick start.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export FLASK_APP := wsgi
PORT ?= 5000
HOST ?= 127.0.0.1

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

## run: install, migrate, seed the demo, serve on http://$(HOST):$(PORT) with one worker and SMTP submission on
## 127.0.0.1:$(SMTP_PORT) (make run PORT=8080 HOST=0.0.0.0 SMTP_PORT=2526)
## (development: the public dev key, and private endpoints allowed for the local sinks and emulators)
SMTP_PORT ?= 2525
run: export OFFLOAD_DEV ?= 1
run: export OFFLOAD_ALLOW_PRIVATE_ENDPOINTS ?= 1
run: export OFFLOAD_SMTP_LISTEN ?= 127.0.0.1:$(SMTP_PORT)
run: $(VENV)/.runtime
	$(BIN)/flask --app wsgi db upgrade
	$(BIN)/flask --app wsgi run-demo --host $(HOST) --port $(PORT)

# The second pass runs on PostgreSQL what touches the database through the app (jobs, batches, callbacks,
# bulk SQL); tests where the database plays no part (providers, cloud workers, rendering, the browser, the
# long end-to-end runs) run once, in the first pass. The fault tests bring their own PostgreSQL cluster.
PG_TESTS := tests/core/test_migrations.py tests/core/test_scheduler.py tests/core/lms tests/core/delivery tests/dashboard tests/service tests/tasks tests/submission tests/security/test_h18_api_robustness.py
PG_SKIP := --ignore=tests/dashboard/certificates --ignore=tests/dashboard/events/test_events_concurrency.py

# Two test processes: most tests wait on servers (SES, moto, miniflare, SMTP, the browser), not on the CPU.
# Each process has its own database, Redis, emulators and instance folder; a file's tests stay together.
XDIST := -n 2 --dist loadfile

## test: install what the tests need and run the whole suite (SQLite, then PostgreSQL)
test: $(VENV)/.dev
	bash scripts/test-setup.sh
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest $(XDIST)
	OFFLOAD_TEST_DB=postgresql $(BIN)/pytest $(XDIST) -m "not browser and not slow" $(PG_TESTS) $(PG_SKIP)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

bench: export OFFLOAD_DEV ?= 1
bench: export OFFLOAD_ALLOW_PRIVATE_ENDPOINTS ?= 1
bench: $(VENV)/.dev
	bash scripts/test-setup.sh
	$(BIN)/python bench/bulk_send.py

clean:
	rm -rf $(VENV) instance tests/node/node_modules
