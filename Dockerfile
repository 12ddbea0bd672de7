# The cascade's serving image, for `docker run` and for KubeRay (deploy/kuberay/rayservice.yaml).
#   docker build -t distill-cascade .
#   docker build --build-arg CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu22.04 -t distill-cascade .
# The torch wheel pip installs on Linux bundles its own CUDA libraries, so the base image needs
# only the CUDA runtime; the driver comes from the host (docker run --gpus all).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

ARG TORCH_VERSION=2.13.0
# must match rayVersion in deploy/kuberay/rayservice.yaml (a test checks it)
ARG RAY_VERSION=2.60.0

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    CASCADE_HOME=/var/lib/cascade

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.11 (the project's version); wget for KubeRay's health probes. Distribution
# packages follow the base image's security updates rather than pinned versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv wget ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv \
    && groupadd --gid 10001 cascade \
    && useradd --create-home --uid 10001 --gid 10001 cascade \
    && mkdir -p /var/lib/cascade \
    && chown cascade:cascade /var/lib/cascade

WORKDIR /app
# torch and Ray first: the largest layer, kept when only the project's code changes
RUN pip install "torch==${TORCH_VERSION}" "ray[serve,train,data]==${RAY_VERSION}"
COPY pyproject.toml README.md ./
COPY router ./router
COPY distill ./distill
COPY serving ./serving
COPY deploy ./deploy
RUN pip install .

USER 10001:10001
# the registry and the escalation log: mount a volume holding a bootstrapped home
VOLUME ["/var/lib/cascade"]
# 8000: the HTTP API; 8080: Prometheus metrics of the Ray node
EXPOSE 8000 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["cascade", "serve", "--config", "deploy/cascade.yaml"]
