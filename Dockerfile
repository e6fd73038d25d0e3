# gradserve images. Targets:
#   server (default)  the server/worker image: client + workers + server, Ray, torch;
#                     docker-compose.yml runs it as the Ray head + gRPC server and as
#                     the Ray worker nodes (same image everywhere: Ray and Python
#                     versions must match on every node)
#   client            the SDK and CLI alone (grpcio, protobuf, numpy; no torch, no ray)
#
#   docker build -t gradserve .
#   docker build --target client -t gradserve-client .
#   docker build --build-arg TORCH_VARIANT=cu128 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t gradserve:cuda .
#
# Offline: docker/prepare-wheelhouse.sh fills docker/wheelhouse/, and the build then
# installs from those wheels with no package index (docs/deployment.md).
#
# Plain Dockerfile syntax, no `# syntax=` line (that fetches a frontend image from
# Docker Hub at build time) and no BuildKit-only flags: BuildKit (DOCKER_BUILDKIT=1)
# and the legacy builder both build it.
#
# Versions come from requirements/*.txt (pinned); the Python minor is the one
# the project tests with (tests/deploy/test_compose_file.py checks both).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/gradserve
ENV PATH=/opt/gradserve/bin:$PATH
WORKDIR /src
# the pinned dependencies first: that layer is rebuilt only when requirements/ changes
COPY requirements/ requirements/
COPY docker/install.sh docker/install.sh
# empty but for its README unless docker/prepare-wheelhouse.sh filled it
COPY docker/wheelhouse/ /wheelhouse/
ENV GRADSERVE_WHEELHOUSE=/wheelhouse
# torch's CPU build (a CUDA build is GBs): install.sh asks for torch==X+cpu and
# fails the build if anything else arrives; TORCH_VARIANT=cu128 (or cuda) and a
# CUDA index for the GPU image
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN TORCH_VARIANT="${TORCH_VARIANT}" TORCH_INDEX_URL="${TORCH_INDEX_URL}" \
    bash docker/install.sh /src deps
COPY client/ client/
COPY workers/ workers/
COPY server/ server/
RUN bash docker/install.sh /src local
# the container's scripts, with their modes set here (COPY --chmod is BuildKit-only)
COPY docker/server-entrypoint.sh docker/worker-entrypoint.sh docker/lib.sh \
     docker/healthcheck.py docker/wait_for_nodes.py /opt/gradserve/docker/
RUN chmod 0755 /opt/gradserve/docker \
    && chmod 0644 /opt/gradserve/docker/* \
    && chmod 0755 /opt/gradserve/docker/*-entrypoint.sh

# ---------------------------------------------------------------- client
FROM ${PYTHON_IMAGE} AS client-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/gradserve
ENV PATH=/opt/gradserve/bin:$PATH
WORKDIR /src
COPY requirements/ requirements/
COPY docker/install.sh docker/install.sh
COPY docker/wheelhouse/ /wheelhouse/
ENV GRADSERVE_WHEELHOUSE=/wheelhouse
COPY client/ client/
# requirements/client.txt and ./client only: no torch, no ray
RUN bash docker/install.sh /src client

FROM ${PYTHON_IMAGE} AS client
RUN useradd --create-home --uid 10001 --user-group gradserve
COPY --from=client-build /opt/gradserve /opt/gradserve
ENV PATH=/opt/gradserve/bin:$PATH \
    PYTHONUNBUFFERED=1
USER gradserve
WORKDIR /home/gradserve
ENTRYPOINT ["gradserve"]
CMD ["--help"]

# ---------------------------------------------------------------- server
FROM ${PYTHON_IMAGE} AS server
LABEL org.opencontainers.image.title="gradserve" \
      org.opencontainers.image.description="gradserve server and Ray worker image"
# Ray's daemons and torch need nothing beyond the slim base; procps gives the worker
# healthcheck its pgrep (and operators ps); apt's caches go, as in the python images
RUN apt-get update \
    && apt-get install -y --no-install-recommends procps \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group gradserve \
    && mkdir -p /data /run/gradserve/ray /tmp/ray \
    && chown -R gradserve:gradserve /data /run/gradserve /tmp/ray \
    && chmod 700 /run/gradserve/ray
COPY --from=build /opt/gradserve /opt/gradserve
ENV PATH=/opt/gradserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GRADSERVE_HOST=0.0.0.0 \
    GRADSERVE_PORT=50051 \
    GRADSERVE_DATA_DIR=/data \
    GRADSERVE_RAY_PORT=6379 \
    GRADSERVE_RAY_TEMP_DIR=/tmp/ray \
    RAY_DISABLE_USAGE_STATS=1
USER gradserve
WORKDIR /home/gradserve
# /data is the job store: compose mounts the named volume gradserve-data there.
# No VOLUME instruction: it would give every container of this image (each
# worker too) an anonymous volume on every `up`, left behind by `down`.
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/gradserve/docker/healthcheck.py"]
ENTRYPOINT ["/opt/gradserve/docker/server-entrypoint.sh"]
CMD []
