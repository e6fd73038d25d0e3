#!/usr/bin/env bash
# `make test-deploy`: the compose deployment, built and run on a real Docker engine.
#
#   docker/test-deploy.sh [pytest args...]
#
# From nothing on a Debian host (as root): installs docker.io, docker-compose and
# debootstrap when missing, starts dockerd (no bridge, no iptables changes) unless
# one runs, makes a stand-in base image when python:3.11-slim-bookworm cannot be
# pulled, prepares the wheelhouse from the pinned requirements, and runs
# tests/deploy/compose_deployment.py, which builds the images, runs the deployment
# on host networking and checks it through the SDK. Everything it started ends by
# pid on the way out: the daemon too, when this script started it (build cache and
# images stay in /var/lib/docker for the next run).
#
# Environment: PYTHON (the venv's python; make passes .venv/bin/python),
# GRADSERVE_DEPLOY_STATE (default /tmp/gradserve-deploy: logs, generated compose
# files, report.json), GRADSERVE_PYTHON_IMAGE (skip the pull and use this base).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python=${PYTHON:-$root/.venv/bin/python}
export GRADSERVE_DEPLOY_STATE=${GRADSERVE_DEPLOY_STATE:-/tmp/gradserve-deploy}
export GRADSERVE_DOCKER=${GRADSERVE_DOCKER:-/usr/bin/docker}
export DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1
# Debian's docker client before any other on PATH (compose builds through it)
PATH="$(dirname "$GRADSERVE_DOCKER"):$PATH"
export PATH
mkdir -p "$GRADSERVE_DEPLOY_STATE"
say() { printf 'test-deploy: %s\n' "$*" >&2; }

started_daemon=0
finish() {
    local status=$?
    if ((started_daemon)); then
        docker/engine.sh stop || status=1
    fi
    say "report: $GRADSERVE_DEPLOY_STATE/report.json"
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT TERM

t0=$SECONDS
docker/engine.sh install
engine=$(docker/engine.sh start)
[[ "$engine" != started* ]] || started_daemon=1
say "dockerd: $engine"

if [[ -z "${GRADSERVE_PYTHON_IMAGE:-}" ]]; then
    official=python:3.11-slim-bookworm
    if "$GRADSERVE_DOCKER" image inspect "$official" >/dev/null 2>&1 ||
        timeout 120 "$GRADSERVE_DOCKER" pull -q "$official" >/dev/null 2>&1; then
        GRADSERVE_PYTHON_IMAGE=$official
    else
        say "$official cannot be pulled: a stand-in base from debootstrap"
        GRADSERVE_PYTHON_IMAGE=$(docker/stand-in-base.sh)
    fi
fi
export GRADSERVE_PYTHON_IMAGE
say "base image: $GRADSERVE_PYTHON_IMAGE"

PYTHON=$python docker/prepare-wheelhouse.sh
say "host set up in $((SECONDS - t0)) s"

export TMPDIR=${TMPDIR:-/tmp}
"$python" -m pytest -p no:cacheprovider -q -x -rA tests/deploy/compose_deployment.py "$@"
say "passed in $((SECONDS - t0)) s"
