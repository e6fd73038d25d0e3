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
#   docker/install.sh [REPO_ROOT]   (default: the folder above this script)
#
# The tests run this script into a fresh venv (tests/deploy/test_requirements_install.py).
set -euo pipefail

root=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
pip=(python -m pip install --no-input)

torch_pin=$(grep -E '^torch==' "$root/requirements/workers.txt")
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    "${pip[@]}" --index-url "$TORCH_INDEX_URL" "$torch_pin"
else
    "${pip[@]}" "$torch_pin"
fi
"${pip[@]}" -r "$root/requirements/server.txt"
"${pip[@]}" --no-deps "$root/client" "$root/workers" "$root/server"
python -m pip check
