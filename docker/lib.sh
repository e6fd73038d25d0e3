# shellcheck shell=bash
# Helpers shared by the entrypoints in this folder; sourced, never run.
#
# Everything is configured by GRADSERVE_* variables (docs/deployment.md lists
# them all) and every executable is found on PATH, so the same scripts run in
# the image and, in the tests, straight from a checkout.

gs_log() {
    printf '%s %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${GS_ROLE:-gradserve}" "$*" >&2
}

gs_die() {
    gs_log "error: $*"
    exit 1
}

# The address this node advertises to the rest of the Ray cluster. In a
# container it is the container's own address; outside one, set
# GRADSERVE_NODE_IP (127.0.0.1 for a single-machine cluster).
gs_node_ip() {
    if [[ -n "${GRADSERVE_NODE_IP:-}" ]]; then
        printf '%s\n' "$GRADSERVE_NODE_IP"
    else
        python -c 'import socket; print(socket.gethostbyname(socket.gethostname()))'
    fi
}

# host:port -> ip:port (Ray wants addresses; compose gives service names).
gs_resolve() {
    local host=${1%:*} port=${1##*:}
    local ip
    ip=$(python -c 'import socket, sys; print(socket.gethostbyname(sys.argv[1]))' "$host") ||
        return 1
    printf '%s:%s\n' "$ip" "$port"
}

# Succeeds once something accepts TCP connections at host:port.
gs_port_open() {
    local host=${1%:*} port=${1##*:}
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

# Waits up to GRADSERVE_WAIT_TIMEOUT seconds for host:port to accept connections.
gs_wait_port() {
    local deadline=$((SECONDS + ${GRADSERVE_WAIT_TIMEOUT:-120}))
    until gs_port_open "$1"; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}

# Ray's token authentication, shared between the head, its workers and the
# gradserve driver. Sets (and exports) RAY_AUTH_MODE and RAY_AUTH_TOKEN.
#
#   GRADSERVE_RAY_AUTH        token | disabled | auto (default auto: token when a
#                             token is given, else whatever Ray does by default)
#   GRADSERVE_RAY_TOKEN       the token itself (e.g. from an .env file), or
#   GRADSERVE_RAY_TOKEN_FILE  a file that holds it; with GRADSERVE_RAY_AUTH=token
#                             and no token yet, the head generates one there
#                             (a volume the workers mount read-only).
#
# $1 is "head" or "worker". Workers call it only after the head is reachable,
# and the head writes the file before it starts Ray, so there is no race.
gs_ray_auth() {
    local role=$1
    local mode=${GRADSERVE_RAY_AUTH:-auto}
    local token=${GRADSERVE_RAY_TOKEN:-}
    local file=${GRADSERVE_RAY_TOKEN_FILE:-}
    case "$mode" in
    token | disabled | auto) ;;
    *) gs_die "GRADSERVE_RAY_AUTH must be token, disabled or auto (not '$mode')" ;;
    esac
    if [[ "$mode" == disabled ]]; then
        export RAY_AUTH_MODE=disabled
        unset RAY_AUTH_TOKEN
        return 0
    fi
    if [[ -z "$token" && -n "$file" && -s "$file" ]]; then
        token=$(<"$file")
    fi
    if [[ -z "$token" && "$mode" == token && "$role" == head && -n "$file" ]]; then
        mkdir -p "$(dirname "$file")"
        token=$(python -c 'import secrets; print(secrets.token_hex(32))')
        (umask 077 && printf '%s\n' "$token" >"$file.tmp") && mv -f "$file.tmp" "$file"
        gs_log "generated a Ray auth token in $file"
    fi
    if [[ -n "$token" ]]; then
        export RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$token"
        if [[ "$role" == head && -n "$file" && ! -s "$file" ]]; then
            mkdir -p "$(dirname "$file")"
            (umask 077 && printf '%s\n' "$token" >"$file.tmp") && mv -f "$file.tmp" "$file"
        fi
    elif [[ "$mode" == token ]]; then
        gs_die "GRADSERVE_RAY_AUTH=token but no token: set GRADSERVE_RAY_TOKEN or GRADSERVE_RAY_TOKEN_FILE"
    fi
}

# Ray's resource flags from GRADSERVE_RAY_NUM_CPUS, GRADSERVE_RAY_NUM_GPUS,
# GRADSERVE_RAY_OBJECT_STORE_BYTES and GRADSERVE_RAY_EXTRA_ARGS (word-split),
# appended to the array named by $1.
gs_ray_resource_args() {
    local -n out=$1
    [[ -z "${GRADSERVE_RAY_NUM_CPUS:-}" ]] || out+=("--num-cpus=$GRADSERVE_RAY_NUM_CPUS")
    [[ -z "${GRADSERVE_RAY_NUM_GPUS:-}" ]] || out+=("--num-gpus=$GRADSERVE_RAY_NUM_GPUS")
    [[ -z "${GRADSERVE_RAY_OBJECT_STORE_BYTES:-}" ]] ||
        out+=("--object-store-memory=$GRADSERVE_RAY_OBJECT_STORE_BYTES")
    if [[ -n "${GRADSERVE_RAY_EXTRA_ARGS:-}" ]]; then
        local extra
        read -r -a extra <<<"$GRADSERVE_RAY_EXTRA_ARGS"
        out+=("${extra[@]}")
    fi
}

# `ray start --block` drains its node on SIGTERM and waits for the node's
# workers to leave, up to this many seconds. gradserve's actors never leave on
# their own (the server retries their chunks elsewhere), so keep it short.
gs_ray_drain_setup() {
    export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="${GRADSERVE_RAY_DRAIN_TIMEOUT:-5}"
}

# Stops one process: SIGTERM, then SIGKILL after $2 seconds (default 30).
gs_stop() {
    local pid=$1 grace=${2:-30}
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + grace))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            gs_log "pid $pid ignored SIGTERM for ${grace}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    wait "$pid" 2>/dev/null || true
}
