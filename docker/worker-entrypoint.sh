#!/usr/bin/env bash
# A worker container: one Ray node that joins the head and runs gradserve's actors.
#
#   docker/worker-entrypoint.sh [extra `ray start` flags...]
#
# Waits for the head (GRADSERVE_RAY_HEAD, host:port; default server:6379), then
# runs `ray start --address=<head> --block`. `ray start --block` stops every Ray
# process it started when it gets SIGTERM and exits when one of them dies; this
# script forwards SIGTERM/SIGINT to it and exits with its status.
set -euo pipefail

GS_ROLE=worker
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=docker/lib.sh
source "$here/lib.sh"

command -v ray >/dev/null || gs_die "ray is not on PATH"
head_name=${GRADSERVE_RAY_HEAD:-server:6379}
temp_dir=${GRADSERVE_RAY_TEMP_DIR:-/tmp/ray}
mkdir -p "$temp_dir"

gs_log "waiting for the Ray head at $head_name"
deadline=$((SECONDS + ${GRADSERVE_WAIT_TIMEOUT:-120}))
until head=$(gs_resolve "$head_name" 2>/dev/null) && gs_port_open "$head"; do
    ((SECONDS < deadline)) || gs_die "no Ray head at $head_name after ${GRADSERVE_WAIT_TIMEOUT:-120}s"
    sleep 1
done

gs_ray_auth worker
gs_ray_drain_setup

ray_args=(
    start --block "--address=$head" "--temp-dir=$temp_dir" --disable-usage-stats
)
[[ -z "${GRADSERVE_NODE_IP:-}" ]] || ray_args+=("--node-ip-address=$GRADSERVE_NODE_IP")
gs_ray_resource_args ray_args
ray_args+=("$@")

ray_pid=""
# shellcheck disable=SC2317  # invoked by the trap
forward() {
    trap '' TERM INT
    gs_log "stopping the Ray node (pid $ray_pid)"
    gs_stop "$ray_pid" $((RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S + 20))
    exit 0
}
trap forward TERM INT

gs_log "joining $head (temp dir $temp_dir)"
ray "${ray_args[@]}" &
ray_pid=$!
status=0
wait "$ray_pid" || status=$?
gs_log "the Ray node exited (status $status)"
exit "$status"
