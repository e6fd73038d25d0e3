# syntax=docker/dockerfile:1
#
# gradserve images. Targets:
#   server (default)  the server/worker image: client + workers + server, Ray, torch;
#                     docker-compose.yml runs it as the Ray head + gRPC server and as
#                     the Ray worker nodes (same image everywhere: Ray and Python
#                     versions must match on every node)
#   client            the SDK and CLI alone (grpcio, protobuf, numpy; no torch, no ray)
#
#   docker build -t gradserve .
#   docker build --target client -t gradserve-client .
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t gradserve:cuda .
#
# Versions come from requirements/*.txt (pinned); the Python minor is the one
# the project tests with (tests/deploy/test_compose_file.py checks both).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# gcc builds the workers' comparison kernel (plain C, loaded with ctypes); only this
# stage has it, the runtime image gets the built library
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/gradserve
ENV PATH=/opt/gradserve/bin:$PATH
WORKDIR /src
# the pinned dependencies first: that layer is rebuilt only when requirements/ changes
COPY requirements/ requirements/
COPY docker/install.sh docker/install.sh
# torch's CPU wheels (CUDA builds are several GB); override for the GPU image
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN TORCH_INDEX_URL="${TORCH_INDEX_URL}" bash docker/install.sh /src deps
COPY client/ client/
COPY workers/ workers/
COPY server/ server/
RUN bash docker/install.sh /src local

# ---------------------------------------------------------------- client
FROM ${PYTHON_IMAGE} AS client-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/gradserve
ENV PATH=/opt/gradserve/bin:$PATH
COPY requirements/client.txt /src/requirements/client.txt
COPY client/ /src/client/
RUN pip install -r /src/requirements/client.txt \
    && pip install --no-deps /src/client \
    && pip check

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
# Ray's daemons and torch need nothing beyond the slim base; procps is for operators
RUN apt-get update \
    && apt-get install -y --no-install-recommends procps \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group gradserve \
    && mkdir -p /data /run/gradserve/ray /tmp/ray \
    && chown -R gradserve:gradserve /data /run/gradserve /tmp/ray \
    && chmod 700 /run/gradserve/ray
COPY --from=build /opt/gradserve /opt/gradserve
COPY --chmod=0755 docker/server-entrypoint.sh docker/worker-entrypoint.sh /opt/gradserve/docker/
COPY --chmod=0644 docker/lib.sh docker/healthcheck.py docker/wait_for_nodes.py /opt/gradserve/docker/
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
VOLUME ["/data"]
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/gradserve/docker/healthcheck.py"]
ENTRYPOINT ["/opt/gradserve/docker/server-entrypoint.sh"]
CMD []
