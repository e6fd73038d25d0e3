#!/usr/bin/env bash
# Installs gradserve's server/worker side into the Python environment of `python`
# on PATH (a venv), exactly as the Dockerfile's build stage does:
#
#   1. torch alone, at the version pinned in requirements/workers.txt, from
#      TORCH_INDEX_URL when set (the image uses the CPU wheel index, or a CUDA
#      one for the GPU variant), so pip never pulls a multi-GB CUDA build;
#   2. everything else from the pinned requirements/server.txt (which includes
#      client.txt and workers.txt);
#   3. the three local distributions without dependencies (already pinned above);
#   4. `pip check`, so a conflict fails the build, not the first request.
#
#   docker/install.sh [REPO_ROOT [deps|local|all]]
#
# REPO_ROOT defaults to the folder above this script; the Dockerfile runs
# `deps` (steps 1-2, cached while requirements/ is unchanged) and then `local`
# (steps 3-4); the default `all` runs every step.
#
# The tests run this script into a fresh venv (tests/deploy/test_requirements_install.py).
set -euo pipefail

root=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
phase=${2:-all}
case "$phase" in
deps | local | all) ;;
*) echo "install.sh: phase must be deps, local or all (not '$phase')" >&2; exit 2 ;;
esac
pip=(python -m pip install --no-input)

if [[ "$phase" != local ]]; then
    torch_pin=$(grep -E '^torch==' "$root/requirements/workers.txt")
    if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
        "${pip[@]}" --index-url "$TORCH_INDEX_URL" "$torch_pin"
    else
        "${pip[@]}" "$torch_pin"
    fi
    "${pip[@]}" -r "$root/requirements/server.txt"
fi
if [[ "$phase" != deps ]]; then
    "${pip[@]}" --no-deps "$root/client" "$root/workers" "$root/server"
    python -m pip check
fi
