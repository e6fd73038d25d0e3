#!/usr/bin/env bash
# Installs gradserve into the Python environment of `python` on PATH (a venv),
# exactly as the Dockerfile's build stages do:
#
#   1. torch alone, at the version pinned in requirements/workers.txt and the build
#      TORCH_VARIANT names (default `cpu`: the requirement is torch==X+cpu, which
#      no index offers as a multi-GB CUDA build), from TORCH_INDEX_URL when set;
#      then a check that the installed torch is that build;
#   2. everything else from the pinned requirements/server.txt (which includes
#      client.txt and workers.txt);
#   3. the three local distributions without dependencies (already pinned above);
#   4. `pip check`, so a conflict fails the build, not the first request.
#
#   docker/install.sh [REPO_ROOT [deps|local|all|client|torch-requirement]]
#
# REPO_ROOT defaults to the folder above this script; the Dockerfile runs
# `deps` (steps 1-2, cached while requirements/ is unchanged) and then `local`
# (steps 3-4); the default `all` runs every step. `client` installs the SDK
# alone (requirements/client.txt and ./client: no torch, no ray).
# `torch-requirement` prints the torch requirement of step 1 and installs nothing.
#
# With GRADSERVE_WHEELHOUSE naming a folder that holds wheels (the Dockerfile's
# /wheelhouse, from docker/prepare-wheelhouse.sh), pip uses those wheels and no
# index at all, after checking them against the folder's SHA256SUMS.
#
# TORCH_VARIANT: cpu (default) | cuda (PyPI's default Linux build, with CUDA) |
# cuXYZ (torch==X+cuXYZ, e.g. from https://download.pytorch.org/whl/cu128).
#
# The tests run this script into a fresh venv (tests/deploy/test_requirements_install.py).
set -euo pipefail

root=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
phase=${2:-all}
case "$phase" in
deps | local | all | client | torch-requirement) ;;
*)
    echo "install.sh: phase must be deps, local, all, client or torch-requirement (not '$phase')" >&2
    exit 2
    ;;
esac

variant=${TORCH_VARIANT:-cpu}
version=$(sed -n 's/^torch==\([^ #;]*\).*/\1/p' "$root/requirements/workers.txt")
[[ -n "$version" ]] || { echo "install.sh: no torch==X pin in requirements/workers.txt" >&2; exit 1; }
case "$variant" in
cpu | cu[0-9]*) torch_requirement="torch==${version%%+*}+$variant" ;;
cuda) torch_requirement="torch==${version%%+*}" ;;
*)
    echo "install.sh: TORCH_VARIANT must be cpu, cuda or cuXYZ (not '$variant')" >&2
    exit 2
    ;;
esac
if [[ "$phase" == torch-requirement ]]; then
    echo "$torch_requirement"
    exit 0
fi

pip=(python -m pip install --no-input)
wheelhouse=${GRADSERVE_WHEELHOUSE:-}
offline=0
if [[ -n "$wheelhouse" ]] && compgen -G "$wheelhouse/*.whl" >/dev/null; then
    offline=1
    if [[ -f "$wheelhouse/SHA256SUMS" ]]; then
        (cd "$wheelhouse" && sha256sum --quiet --strict -c SHA256SUMS) ||
            { echo "install.sh: $wheelhouse does not match its SHA256SUMS" >&2; exit 1; }
    fi
    pip+=(--no-index --find-links "$wheelhouse")
fi

install_torch() {
    local from=()
    if ((offline == 0)) && [[ -n "${TORCH_INDEX_URL:-}" ]]; then
        from=(--index-url "$TORCH_INDEX_URL")
    fi
    "${pip[@]}" "${from[@]}" "$torch_requirement" || {
        echo "install.sh: could not install $torch_requirement${from:+ from $TORCH_INDEX_URL}." >&2
        echo "  The CPU build is on https://download.pytorch.org/whl/cpu (not on PyPI, whose" >&2
        echo "  Linux build carries CUDA); or build from a wheelhouse: docker/prepare-wheelhouse.sh" >&2
        return 1
    }
    # the build asked for, and nothing else: a CUDA torch in the CPU image is GBs
    TORCH_VARIANT=$variant python - <<'EOF'
import importlib.metadata as md
import os
import sys

import torch

variant = os.environ["TORCH_VARIANT"]
cuda = torch.version.cuda
nvidia = sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith("nvidia-"))
if variant == "cpu" and (cuda or nvidia):
    sys.exit(f"install.sh: torch {torch.__version__} is a CUDA build ({cuda}, {nvidia}), not cpu")
if variant != "cpu" and not cuda:
    sys.exit(f"install.sh: torch {torch.__version__} has no CUDA, but TORCH_VARIANT={variant}")
print(f"install.sh: torch {torch.__version__} (CUDA {cuda})", file=sys.stderr)
EOF
}

if [[ "$phase" == client ]]; then
    "${pip[@]}" -r "$root/requirements/client.txt"
    "${pip[@]}" --no-deps "$root/client"
    python -m pip check
    exit 0
fi
if [[ "$phase" != local ]]; then
    install_torch
    "${pip[@]}" -r "$root/requirements/server.txt"
fi
if [[ "$phase" != deps ]]; then
    "${pip[@]}" --no-deps "$root/client" "$root/workers" "$root/server"
    python -m pip check
fi
