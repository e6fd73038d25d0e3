#!/usr/bin/env bash
# A Docker engine for the deployment test (make test-deploy), on a Debian host.
#
#   docker/engine.sh install   installs docker.io, docker-compose and debootstrap
#                              from apt when they are missing (needs root)
#   docker/engine.sh start     starts dockerd unless one answers already; prints
#                              "started PID" or "running"
#   docker/engine.sh stop      stops the dockerd that `start` started (by its pid)
#
# The daemon gets no bridge and changes no iptables rules: every build and
# container of the test uses host networking, so nothing but loopback carries
# traffic and the host's network stays as it was. Its state (pid, log) is kept
# in GRADSERVE_DEPLOY_STATE (default /tmp/gradserve-deploy); only a daemon whose
# pid is recorded there is ever stopped.
set -euo pipefail

state=${GRADSERVE_DEPLOY_STATE:-/tmp/gradserve-deploy}
pidfile=$state/dockerd.pid
log=$state/dockerd.log
# Debian's own client: the engine's built-in BuildKit with DOCKER_BUILDKIT=1
# (a newer client earlier on PATH may lack buildx and fall back to the legacy builder)
docker=${GRADSERVE_DOCKER:-/usr/bin/docker}

say() { printf 'engine: %s\n' "$*" >&2; }

answers() { "$docker" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

install() {
    local missing=()
    [[ -x /usr/sbin/dockerd && -x /usr/bin/docker ]] || missing+=(docker.io)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    ((${#missing[@]})) || return 0
    say "installing ${missing[*]} from apt"
    ((EUID == 0)) || { say "need root to install ${missing[*]}"; exit 1; }
    # no daemon from the package's own service scripts: `start` below runs it
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

start() {
    mkdir -p "$state"
    if answers; then
        echo running
        return 0
    fi
    ((EUID == 0)) || { say "dockerd runs as root here; run as root or start it yourself"; exit 1; }
    say "starting dockerd (log $log)"
    # setsid: the daemon outlives this script but not the pid file's record
    setsid /usr/sbin/dockerd \
        --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
        --storage-driver=overlay2 \
        --pidfile="$state/dockerd.own.pid" \
        >"$log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$pidfile"
    local deadline=$((SECONDS + 60))
    until answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$pidfile"
            say "dockerd exited; its log:"
            tail -n 30 "$log" >&2
            exit 1
        fi
        ((SECONDS < deadline)) || { say "dockerd did not answer in 60 s"; stop; exit 1; }
        sleep 0.5
    done
    echo "started $pid"
}

stop() {
    [[ -s "$pidfile" ]] || return 0
    local pid children
    pid=$(<"$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        # its own containerd: dockerd stops it, and this makes sure it did
        children=$(pgrep -P "$pid" || true)
        say "stopping dockerd (pid $pid)"
        stop_pid "$pid" 60
        for child in $children; do
            stop_pid "$child" 10
        done
    fi
    rm -f "$pidfile"
}

# SIGTERM, then SIGKILL after $2 seconds; returns once the process is gone.
stop_pid() {
    local pid=$1 deadline=$((SECONDS + $2))
    kill -TERM "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            say "pid $pid ignored SIGTERM for $2 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.5
    done
}

case "${1:-}" in
install) install ;;
start) start ;;
stop) stop ;;
*)
    echo "usage: $0 install|start|stop" >&2
    exit 2
    ;;
esac
