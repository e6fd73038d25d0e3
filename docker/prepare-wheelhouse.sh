#!/usr/bin/env bash
# Prepares the wheelhouse the image builds from without any package index:
# every wheel the pinned requirements (requirements/server.txt, which includes
# client.txt and workers.txt) need, the torch build TORCH_VARIANT names, and the
# build backend of the three local distributions (setuptools).
#
#   docker/prepare-wheelhouse.sh [DIR]        (default: docker/wheelhouse)
#
# Environment:
#   PYTHON           the interpreter whose pip collects the wheels (default python3);
#                    it must be the image's Python minor (3.11) on Linux x86-64,
#                    as the wheels are picked for it
#   TORCH_VARIANT    cpu (default), cuda or cuXYZ, as in docker/install.sh
#   TORCH_INDEX_URL  an extra index for the torch wheel (e.g. the CPU or CUDA
#                    index of download.pytorch.org); pip's own configuration
#                    (indexes, find-links, cert) applies as usual
#
# DIR ends up holding the wheels, SHA256SUMS (install.sh checks it before
# installing) and .inputs (what the wheelhouse was made from: it is made again
# only when that changes). Sdists among the requirements are built into wheels
# here, so the image never compiles a dependency.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${1:-$root/docker/wheelhouse}
python=${PYTHON:-python3}
# the build backend of client/, workers/ and server/ (their pyproject.toml asks
# for setuptools>=68): pinned, so two wheelhouses hold the same one
setuptools_pin="setuptools==84.2.1"

minor=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[[ "$minor" == 3.11 ]] || { echo "prepare-wheelhouse: $python is Python $minor, the image's is 3.11" >&2; exit 1; }

torch_requirement=$(bash "$root/docker/install.sh" "$root" torch-requirement)
inputs=$(
    cat "$root"/requirements/{client,workers,server}.txt
    echo "$torch_requirement $setuptools_pin ${TORCH_INDEX_URL:-} $minor"
    cat "${BASH_SOURCE[0]}"
)
if [[ -f "$dir/.inputs" && "$(<"$dir/.inputs")" == "$inputs" ]] &&
    (cd "$dir" && sha256sum --quiet --strict -c SHA256SUMS >/dev/null 2>&1); then
    echo "prepare-wheelhouse: $dir is up to date" >&2
    exit 0
fi

mkdir -p "$dir"
work=$(mktemp -d "$dir/.new.XXXXXX")
trap 'rm -rf "$work"' EXIT
extra=()
[[ -z "${TORCH_INDEX_URL:-}" ]] || extra=(--extra-index-url "$TORCH_INDEX_URL")
echo "prepare-wheelhouse: collecting wheels for $torch_requirement and requirements/server.txt" >&2
"$python" -m pip wheel --no-input --wheel-dir "$work" "${extra[@]}" \
    "$torch_requirement" -r "$root/requirements/server.txt" "$setuptools_pin"

# one version of each distribution, or the install is not reproducible
dupes=$(find "$work" -name '*.whl' -printf '%f\n' | cut -d- -f1 | tr 'A-Z-.' 'a-z__' | sort | uniq -d)
[[ -z "$dupes" ]] || { echo "prepare-wheelhouse: several versions of: $dupes" >&2; exit 1; }

find "$dir" -maxdepth 1 -name '*.whl' -delete
mv "$work"/*.whl "$dir"/
(cd "$dir" && find . -maxdepth 1 -name '*.whl' -printf '%f\n' | LC_ALL=C sort | xargs sha256sum >SHA256SUMS)
printf '%s\n' "$inputs" >"$dir/.inputs"
echo "prepare-wheelhouse: $(wc -l <"$dir/SHA256SUMS") wheels, $(du -sh "$dir" | cut -f1) in $dir" >&2
