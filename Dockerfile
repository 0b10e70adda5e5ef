# syntax=docker/dockerfile:1
#
# One image for every ahps workload: the KFP pipeline components, the scheduler (ahps submit /
# ahps schedule) and the MLflow tracking server of the Helm chart (charts/ahps).
#
#   docker build -t registry.example.com/ahps:0.1.0 .   # the default image name of ahps compile/submit and the chart
#   docker build --build-arg CUDA_VERSION=12.8 -t registry.example.com/ahps:0.1.0-cu128 .   # nodes with driver < 580
#
# The base is the official PyTorch runtime image, tag pattern
# pytorch/pytorch:<torch>-cuda<major.minor>-cudnn<major>-runtime. TORCH_VERSION must equal the
# torch pin of pyproject.toml / constraints.txt (a test checks it); torch is never reinstalled here.
# torch 2.13.0 on PyPI is built against CUDA 13.0 (needs NVIDIA driver >= 580 on the GPU nodes).

ARG TORCH_VERSION=2.13.0
ARG CUDA_VERSION=13.0
ARG CUDNN_MAJOR=9
ARG BASE_IMAGE=pytorch/pytorch:${TORCH_VERSION}-cuda${CUDA_VERSION}-cudnn${CUDNN_MAJOR}-runtime

# ---------------------------------------------------------------------------------------------
# builder: build the wheel of this repository (pure Python; setuptools comes from build isolation)
# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY ahps ./ahps
COPY ahps_core ./ahps_core
COPY components ./components
COPY pipelines ./pipelines
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------
# runtime
# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG TORCH_VERSION
ARG CUDA_VERSION
# torchvision X.Y matching torch 2.Z is 0.(Z+15): 2.13 -> 0.28 (a test checks it).
ARG TORCHVISION_VERSION=0.28.0
# PostgreSQL driver for the MLflow server's backend store (not an ahps dependency).
ARG PSYCOPG2_VERSION=2.9.13
# Flask-WTF (and its WTForms) for the MLflow server's basic-auth app (the chart's mlflow.auth; mlflow[auth]).
ARG FLASK_WTF_VERSION=1.3.0
ARG WTFORMS_VERSION=3.3.2

LABEL org.opencontainers.image.title="ahps" \
      org.opencontainers.image.description="Architecture-aware hyperparameter scaling: KFP components, scheduler and MLflow server" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    HOME=/home/ahps \
    XDG_CACHE_HOME=/home/ahps/.cache \
    AHPS_CACHE_DIR=/home/ahps/.cache \
    MPLCONFIGDIR=/home/ahps/.cache/matplotlib \
    TORCH_HOME=/home/ahps/.cache/torch

# The official image ships gcc only for Triton's JIT (torch.compile); ahps does not compile kernels,
# so the runtime keeps no compiler. Ubuntu >= 23.04 images own uid 1000 as "ubuntu": free it first.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN if dpkg -s gcc >/dev/null 2>&1; then \
        apt-get purge -y --auto-remove gcc; \
    fi \
 && rm -rf /var/lib/apt/lists/* \
 && if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
 && groupadd --gid 1000 ahps \
 && useradd --uid 1000 --gid 1000 --home-dir /home/ahps --create-home --shell /usr/sbin/nologin ahps \
 && mkdir -p /home/ahps/.cache \
 && chown -R 1000:1000 /home/ahps

# torchvision from the PyTorch index of the same CUDA build as the base's torch; --no-deps keeps torch
# untouched (a no-op when the base already has it). Then the ahps wheel with the project pins
# (constraints.txt: torch, kfp, kfp-kubernetes, mlflow); the installed torch satisfies torch==X.
COPY constraints.txt /tmp/constraints.txt
COPY --from=builder /wheels /tmp/wheels
RUN python -m pip install --no-deps \
        --index-url "https://download.pytorch.org/whl/cu${CUDA_VERSION//./}" \
        "torchvision==${TORCHVISION_VERSION}" \
 && python -m pip install --constraint /tmp/constraints.txt \
        /tmp/wheels/ahps-*.whl "psycopg2-binary==${PSYCOPG2_VERSION}" \
        "Flask-WTF==${FLASK_WTF_VERSION}" "WTForms==${WTFORMS_VERSION}" \
 && python -c "import torch, torchvision, ahps, ahps_core, kfp, mlflow, boto3, psycopg2, flask_wtf; \
assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__; \
assert torch.version.cuda, 'torch was replaced by a CPU build'; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__)" \
 && rm -rf /tmp/wheels /tmp/constraints.txt

WORKDIR /home/ahps
USER 1000:1000

# KFP and the Helm chart always set the command; this default only prints the CLI's help.
CMD ["ahps", "--help"]
