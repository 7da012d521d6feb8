# Every target installs what it needs into .venv (torch first, so no other torch is pulled).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint demo mlflow-ui sweep report export services services-stop

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(PY) -m pytest -q

# The inner loop: everything but the tests marked slow (real processes, sweeps, services, SLURM).
test-fast: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports  # the layers of pyproject.toml [tool.importlinter]

demo: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(PY) -m eelight.demo $(ARGS)

# Serves the local MLflow store (./mlruns/mlflow.db, artifacts in ./mlruns/artifacts) on 127.0.0.1.
MLFLOW_PORT ?= 5000
MLFLOW_DB ?= $(CURDIR)/mlruns/mlflow.db
MLFLOW_ARTIFACTS ?= $(dir $(MLFLOW_DB))artifacts
mlflow-ui: $(STAMP)
	mkdir -p $(dir $(MLFLOW_DB))
	@echo "MLflow UI: http://127.0.0.1:$(MLFLOW_PORT)/#/experiments?workflowType=machine_learning (a sweep prints its runs table's address)"
	MLFLOW_DISABLE_TELEMETRY=true MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow server \
	  --backend-store-uri sqlite:///$(MLFLOW_DB) --default-artifact-root $(MLFLOW_ARTIFACTS) \
	  --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

# make sweep NAME=weight_reuse [ARGS="trainer.max_steps=50"]
NAME ?= weight_reuse
sweep: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(PY) -m eelight.demo --prepare-only
	MLFLOW_DISABLE_TELEMETRY=true $(PY) -m eelight.cli sweep sweeps/$(NAME).yaml $(ARGS)

report: $(STAMP)
	$(PY) -m eelight.cli report $(NAME) $(ARGS)

export: $(STAMP)
	$(PY) -m eelight.cli export --study $(NAME) --out exported/$(NAME) $(ARGS)

# A local PostgreSQL (study storage) + MLflow tracking server pair under ./services; prints how to use them.
services: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(PY) -m eelight.cli services start $(ARGS)

services-stop: $(STAMP)
	$(PY) -m eelight.cli services stop $(ARGS)
