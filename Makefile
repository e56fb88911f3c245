# Two commands matter: `make demo` and `make test`. Both install first, so either works on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/dagster_home

.PHONY: install demo test lint format validate dev dev-postgres workers bench clean

install: $(STAMP)

# Re-installs only when the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,celery]'
	touch $(STAMP)

demo: install
	$(BIN)/python -m enrichment_pipeline.demo

test: install lint
	$(BIN)/python -m pytest -q
	$(BIN)/dagster definitions validate -w workspace.yaml

# ruff: lint and formatting (configured in pyproject.toml); `make format` applies both.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

validate: install
	$(BIN)/dagster definitions validate -w workspace.yaml

# The UI (http://127.0.0.1:$(DEV_PORT)) and the daemon, on this machine only, with the default SQLite
# instance in dagster_home/. DAGSTER_HOME is set here, whatever the shell has (it must be absolute).
DEV_PORT ?= 3000
dev: install
	DAGSTER_HOME=$(CURDIR)/dagster_home $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(DEV_PORT)

# The same on the PostgreSQL instance (dagster_home/postgres/dagster.yaml); needs the DAGSTER_PG_* variables.
dev-postgres: install
	@for name in DAGSTER_PG_HOST DAGSTER_PG_PORT DAGSTER_PG_USER DAGSTER_PG_PASSWORD DAGSTER_PG_DB; do \
	  printenv $$name >/dev/null || { echo "dev-postgres: set $$name (README, Orchestration)" >&2; exit 1; }; \
	done
	DAGSTER_HOME=$(CURDIR)/dagster_home/postgres $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(DEV_PORT)

# Celery workers for `enrich_day_celery` (README, "Scale out with Celery"): WORKERS processes on this host, each
# running one step at a time, bound to the broker only (CELERY_BROKER_URL / CELERY_BACKEND_URL, default Redis on
# 127.0.0.1:6379). They need what the daemon's host has: the DAGSTER_PG_* variables, the pipeline's variables
# (ENRICHMENT_DB_URL on PostgreSQL, COWRIE_LOG_DIR, CYMRU_*, GREYNOISE_*...) and the same paths. Ctrl-C stops
# them. VISIBILITY_TIMEOUT_S: after how long a dead worker's task is run again (longer than any step).
WORKERS ?= 2
VISIBILITY_TIMEOUT_S ?= 3600
WORKER_HOME := $(CURDIR)/dagster_home/postgres
WORKER_CONFIG := $(WORKER_HOME)/celery_worker.yaml
workers: install
	@for name in DAGSTER_PG_HOST DAGSTER_PG_PORT DAGSTER_PG_USER DAGSTER_PG_PASSWORD DAGSTER_PG_DB; do \
	  printenv $$name >/dev/null || { echo "workers: set $$name (README, Scale out with Celery)" >&2; exit 1; }; \
	done
	DAGSTER_HOME=$(WORKER_HOME) $(BIN)/python -c 'import sys, enrichment_pipeline.jobs as jobs; \
	  jobs.write_celery_worker_config(sys.argv[1], visibility_timeout_s=int(sys.argv[2]))' $(WORKER_CONFIG) $(VISIBILITY_TIMEOUT_S)
	@trap 'kill $$(jobs -p) 2>/dev/null; wait' INT TERM; \
	for n in $$(seq 1 $(WORKERS)); do \
	  DAGSTER_HOME=$(WORKER_HOME) PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dagster-celery worker start \
	    -A dagster_celery.app -y $(WORKER_CONFIG) -n worker$$n -i enrichment_pipeline.definitions -- \
	    --concurrency=1 & \
	done; \
	wait

# The performance suite (issue 7): prints its table and adds it to bench/RESULTS.md (~5 min).
bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) *.egg-info
