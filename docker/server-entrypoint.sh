#!/usr/bin/env bash
# The server container: a Ray head node and `gradserve serve` joined to it.
#
#   docker/server-entrypoint.sh [gradserve serve flags...]
#
# Starts `ray start --head --block` in the background, waits until the head is
# up (and, with GRADSERVE_WAIT_FOR_NODES, until that many nodes joined), then
# runs `gradserve serve --ray-address <head>`. SIGTERM/SIGINT stop gradserve
# first (it drains in-flight calls and checkpoints jobs), then the Ray
# processes this script started, and only those. If either half dies, the
# other is stopped and the script exits non-zero, so the container restarts.
#
# With GRADSERVE_RAY_ADDRESS set there is no head: gradserve joins that
# existing cluster (see docs/deployment.md).
set -euo pipefail

GS_ROLE=server
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=docker/lib.sh
source "$here/lib.sh"

command -v gradserve >/dev/null || gs_die "gradserve is not on PATH"
[[ -z "${GRADSERVE_DATA_DIR:-}" ]] || mkdir -p "$GRADSERVE_DATA_DIR"

if [[ -n "${GRADSERVE_RAY_ADDRESS:-}" ]]; then
    gs_log "joining the existing Ray cluster at $GRADSERVE_RAY_ADDRESS"
    gs_ray_auth worker
    exec gradserve serve "$@"
fi

command -v ray >/dev/null || gs_die "ray is not on PATH"
ray_port=${GRADSERVE_RAY_PORT:-6379}
temp_dir=${GRADSERVE_RAY_TEMP_DIR:-/tmp/ray}
node_ip=$(gs_node_ip)
head="$node_ip:$ray_port"
mkdir -p "$temp_dir"
rm -f "$temp_dir/ray_current_cluster"

gs_ray_auth head
gs_ray_drain_setup

ray_args=(
    start --head --block
    "--node-ip-address=$node_ip" "--port=$ray_port" "--temp-dir=$temp_dir"
    --include-dashboard=false --disable-usage-stats
)
gs_ray_resource_args ray_args

ray_pid=""
serve_pid=""
stopping=0

shutdown() {
    stopping=1
    trap '' TERM INT
    if [[ -n "$serve_pid" ]]; then
        gs_log "stopping gradserve (pid $serve_pid)"
        gs_stop "$serve_pid" "${GRADSERVE_STOP_TIMEOUT:-40}"
    fi
    if [[ -n "$ray_pid" ]]; then
        gs_log "stopping the Ray head (pid $ray_pid)"
        gs_stop "$ray_pid" $((RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S + 20))
    fi
}
trap 'shutdown; exit 0' TERM INT

gs_log "starting the Ray head at $head (temp dir $temp_dir)"
ray "${ray_args[@]}" &
ray_pid=$!

# `ray start` writes ray_current_cluster once every head process is up.
deadline=$((SECONDS + ${GRADSERVE_WAIT_TIMEOUT:-120}))
until [[ -s "$temp_dir/ray_current_cluster" ]]; do
    kill -0 "$ray_pid" 2>/dev/null || gs_die "ray start exited before the head was up"
    ((SECONDS < deadline)) || { shutdown; gs_die "the Ray head did not come up"; }
    sleep 0.5
done

# A token the head turned on by itself (older Ray releases wrote one into the
# temp dir): hand it to gradserve and, through the token file, to the workers.
if [[ -z "${RAY_AUTH_TOKEN:-}" && -s "$temp_dir/auth_token" ]]; then
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN
    RAY_AUTH_TOKEN=$(<"$temp_dir/auth_token")
    if [[ -n "${GRADSERVE_RAY_TOKEN_FILE:-}" ]]; then
        (umask 077 && printf '%s\n' "$RAY_AUTH_TOKEN" >"$GRADSERVE_RAY_TOKEN_FILE")
    fi
fi

# The actor pool is sized from the cluster's CPUs when gradserve starts: give
# the workers of a fresh `docker compose up` a moment to join first.
wanted=${GRADSERVE_WAIT_FOR_NODES:-1}
if ((wanted > 1)); then
    gs_log "waiting up to ${GRADSERVE_WAIT_TIMEOUT:-120}s for $wanted Ray nodes"
    python "$here/wait_for_nodes.py" "$head" "$wanted" "${GRADSERVE_WAIT_TIMEOUT:-120}" ||
        gs_log "fewer than $wanted nodes joined; starting anyway"
fi

gs_log "starting gradserve against $head"
gradserve serve --ray-address "$head" "$@" &
serve_pid=$!

# Whichever half ends first (unless we are stopping) takes the other down.
status=0
wait -n "$ray_pid" "$serve_pid" || status=$?
if ((stopping == 0)); then
    if kill -0 "$serve_pid" 2>/dev/null; then
        gs_log "the Ray head exited (status $status)"
    else
        gs_log "gradserve exited (status $status)"
    fi
    shutdown
    exit $((status == 0 ? 1 : status))
fi
