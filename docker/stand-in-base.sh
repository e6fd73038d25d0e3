#!/usr/bin/env bash
# A stand-in for python:3.11-slim-bookworm, for hosts that cannot pull from
# Docker Hub: Debian bookworm (minbase, from the host's apt mirror) with its
# python3 (3.11), venv and pip, made with debootstrap and `docker import`.
#
#   docker/stand-in-base.sh [TAG]          (default gradserve-base:bookworm)
#
# Prints TAG. An image already tagged TAG is kept (delete it to make it again).
# The host's CA certificates go into the image (added to its trust store, and
# pip's `cert` points at the bundle), and so do the http(s) indexes of the host's
# pip configuration: behind a TLS-inspecting proxy or with a registry mirror,
# pip and apt in the build reach what they reach on the host.
# Needs root (debootstrap) and debootstrap (docker/engine.sh install).
set -euo pipefail

tag=${1:-gradserve-base:bookworm}
docker=${GRADSERVE_DOCKER:-/usr/bin/docker}
say() { printf 'stand-in-base: %s\n' "$*" >&2; }

if "$docker" image inspect "$tag" >/dev/null 2>&1; then
    say "$tag is there already"
    echo "$tag"
    exit 0
fi
((EUID == 0)) || { say "debootstrap needs root"; exit 1; }

# the host's Debian mirror (deb822 or one-line sources), else deb.debian.org
mirror=$(
    grep -hoE '^URIs: *http[^ ]*/debian/?$|^deb +http[^ ]*/debian/? ' \
        /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
        grep -oE 'http[^ ]*' | head -n 1
) || true
mirror=${mirror:-http://deb.debian.org/debian}

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/gradserve-rootfs.XXXXXX")
trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT
# downloaded packages are kept for the next time
cache=${GRADSERVE_DEPLOY_STATE:-/tmp/gradserve-deploy}/debootstrap-cache
mkdir -p "$cache"
# a command inside the new root, with none of this host's environment
in_root() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 chroot "$rootfs" "$@"; }
say "debootstrap bookworm from $mirror"
started=$SECONDS
debootstrap --variant=minbase --cache-dir="$cache" \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    tail -n 30 "$rootfs.log" >&2
    exit 1
}

# the host's trust store, added to the image's own
host_bundle=/etc/ssl/certs/ca-certificates.crt
if [[ -s "$host_bundle" ]]; then
    mkdir -p "$rootfs/usr/local/share/ca-certificates/host"
    cp "$host_bundle" "$rootfs/usr/local/share/ca-certificates/host/host-bundle.crt"
    in_root update-ca-certificates >/dev/null
fi
{
    echo "[global]"
    echo "cert = /etc/ssl/certs/ca-certificates.crt"
    for key in index-url extra-index-url trusted-host timeout; do
        value=$(pip3 config get "global.$key" 2>/dev/null || true)
        # file:// indexes and local find-links are paths of this host: not in the image
        value=$(tr ' ' '\n' <<<"$value" | grep -E '^(https?://|[a-z0-9.-]+$|[0-9]+$)' | tr '\n' ' ') || true
        [[ -z "${value// /}" ]] || echo "$key = ${value% }"
    done
} >"$rootfs/etc/pip.conf"
# what the python images do: no apt caches, no docs
in_root apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*

tar -C "$rootfs" -c . | "$docker" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$tag" >/dev/null
say "$tag made in $((SECONDS - started)) s"
echo "$tag"
