# Two commands matter: `make demo` and `make test`. Both install first, so either works on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/dagster_home

.PHONY: install demo test validate dev bench clean

install: $(STAMP)

# Re-installs only when the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python -m enrichment_pipeline.demo

test: install
	$(BIN)/python -m pytest -q
	$(BIN)/dagster definitions validate -w workspace.yaml

validate: install
	$(BIN)/dagster definitions validate -w workspace.yaml

dev: install
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean:
	rm -rf $(VENV) *.egg-info
