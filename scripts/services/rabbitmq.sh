#!/usr/bin/env bash
# Run a REAL RabbitMQ broker on this machine for tests and CI, without Docker.
#
# The broker is Debian's `rabbitmq-server` package (3.10 on bookworm: quorum queues yes,
# delayed-message plugin no). It runs as the system node `rabbit@<host>` under the `rabbitmq`
# user, with its data in /var/lib/rabbitmq and its logs in /var/log/rabbitmq.
#
# Usage: scripts/services/rabbitmq.sh up|down|status|url
#   up      install the package if needed, start the node if it is not healthy, wait until it
#           is, make sure the test user exists, and print the AMQP URL
#           (amqp://conveyor:conveyor@127.0.0.1:5672/) as the last line on stdout.
#   down    stop the node (`rabbitmqctl stop`); a hung node is killed.
#   status  say whether it runs; exit 0 when the node is up and accepts AMQP, 3 when not.
#   url     print the AMQP URL.
#
# Environment:
#   CONVEYOR_AMQP_URL               use this external broker: `up` only prints it.
#   CONVEYOR_RUN_DIR                lock file (default ~/.cache/conveyor/run).
#   CONVEYOR_RABBITMQ_START_TIMEOUT seconds `up` waits for the node (default 90).
#
# Needs root or password-less sudo: the package install and the node's CLI tools
# (rabbitmqctl talks to the node with the cookie in /var/lib/rabbitmq, readable by root and
# the rabbitmq user only).
set -euo pipefail

readonly RUN_DIR="${CONVEYOR_RUN_DIR:-$HOME/.cache/conveyor/run}"
readonly START_TIMEOUT="${CONVEYOR_RABBITMQ_START_TIMEOUT:-90}"
readonly STOP_TIMEOUT=60
readonly HOST="127.0.0.1"
readonly PORT=5672
# guest/guest only works over loopback; a dedicated user also works from another host/netns
# and keeps tests independent of the guest account's defaults.
readonly AMQP_USER="conveyor"
readonly AMQP_PASSWORD="conveyor"
readonly VHOST="/"
readonly AMQP_URL="amqp://${AMQP_USER}:${AMQP_PASSWORD}@${HOST}:${PORT}/"
readonly LOG_DIR="/var/log/rabbitmq"
readonly MNESIA_BASE="/var/lib/rabbitmq/mnesia"

# Everything but the URL goes to stderr, so `url=$(rabbitmq.sh up | tail -n1)` is all a caller
# needs.
log() { printf 'rabbitmq: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }

if [[ $(id -u) == 0 ]]; then
    SUDO=()
else
    SUDO=(sudo -n)
fi

# The CLI tools in /usr/sbin are wrappers that switch to the rabbitmq user when run as root.
# Every call gets a timeout: a wedged node must not hang a CI job.
ctl() { timeout 60 "${SUDO[@]}" rabbitmqctl "$@"; }
diag() { timeout 30 "${SUDO[@]}" rabbitmq-diagnostics "$@"; }

# ---------------------------------------------------------------------------------------------
# Install
# ---------------------------------------------------------------------------------------------

installed() {
    [[ -x /usr/sbin/rabbitmq-server ]] \
        && dpkg-query -W -f='${Status}' rabbitmq-server 2>/dev/null | grep -q 'install ok installed'
}

# apt knows a candidate version of the package (i.e. the package lists are not empty/stale).
apt_has_candidate() {
    local candidate
    candidate=$(apt-cache policy rabbitmq-server 2>/dev/null | awk '/Candidate:/ {print $2}')
    [[ -n $candidate && $candidate != "(none)" ]]
}

install_package() {
    installed && return 0
    command -v apt-get >/dev/null || die "rabbitmq-server is not installed and apt-get is missing"
    if ! apt_has_candidate; then
        log "rabbitmq-server not in the apt cache; running apt-get update"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 \
            || die "apt-get update failed"
    fi
    # The package's postinst runs `invoke-rc.d rabbitmq-server start || exit 1`. Without systemd
    # that runs the SysV script, which may fail (or start a node behind our back) and then fails
    # the whole install. A policy-rc.d that answers 101 ("action forbidden") makes invoke-rc.d
    # skip the start; we start the node ourselves below. An existing policy (Docker images ship
    # one) is left alone.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# added by conveyor rabbitmq.sh during package install\nexit 101\n' \
            | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        added_policy=1
    fi
    log "installing the Debian package rabbitmq-server"
    local rc=0
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        rabbitmq-server >&2 || rc=$?
    if ((added_policy)); then
        "${SUDO[@]}" rm -f "$policy"
    fi
    ((rc == 0)) || die "apt-get install rabbitmq-server failed (exit $rc)"
    installed || die "rabbitmq-server still not installed after apt-get install"
}

# ---------------------------------------------------------------------------------------------
# Node state
# ---------------------------------------------------------------------------------------------

pinging() { diag -q ping >/dev/null 2>&1; }

# The rabbit application (not just the Erlang VM) is running: `ping` alone also answers for a
# node whose app was stopped or is still booting.
app_running() { diag -q check_running >/dev/null 2>&1; }

accepts_amqp() { (exec 3<>"/dev/tcp/${HOST}/${PORT}") 2>/dev/null; }

healthy() { pinging && app_running && accepts_amqp; }

# PIDs of RabbitMQ Erlang VMs on this machine: the node's pid file (written by
# `rabbitmq-server -detached`), plus any beam.smp of the rabbitmq user that boots the `rabbit`
# application (a node whose pid file was removed). Only processes of the rabbitmq user.
node_pids() {
    local f pid
    {
        for f in "$MNESIA_BASE"/*.pid; do
            [[ -f $f ]] || continue
            pid=$("${SUDO[@]}" cat "$f" 2>/dev/null) || continue
            [[ $pid =~ ^[0-9]+$ ]] && printf '%s\n' "$pid"
        done
        pgrep -u rabbitmq -f 'beam.*-s rabbit' 2>/dev/null || true
    } | sort -un | while read -r pid; do
        [[ $(ps -o user= -p "$pid" 2>/dev/null | tr -d ' ') == rabbitmq ]] || continue
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'beam' || continue
        printf '%s\n' "$pid"
    done
}

# Stop a node that exists but is not healthy: a polite `rabbitmqctl stop`, then signals to the
# VM's own pid (never by process name).
kill_node() {
    local pids pid
    pids=$(node_pids)
    [[ -n $pids ]] || return 0
    log "stopping RabbitMQ VM(s) $(echo $pids): polite stop first"
    ctl stop >/dev/null 2>&1 || true
    local deadline=$((SECONDS + 15))
    while [[ -n $(node_pids) ]] && ((SECONDS < deadline)); do sleep 0.5; done
    pids=$(node_pids)
    [[ -n $pids ]] || return 0
    log "VM(s) $(echo $pids) still there; sending SIGTERM"
    for pid in $pids; do "${SUDO[@]}" kill -TERM "$pid" 2>/dev/null || true; done
    deadline=$((SECONDS + 15))
    while [[ -n $(node_pids) ]] && ((SECONDS < deadline)); do sleep 0.5; done
    pids=$(node_pids)
    [[ -n $pids ]] || return 0
    log "VM(s) $(echo $pids) ignored SIGTERM; sending SIGKILL"
    for pid in $pids; do "${SUDO[@]}" kill -KILL "$pid" 2>/dev/null || true; done
    sleep 1
}

# ---------------------------------------------------------------------------------------------
# Start / stop
# ---------------------------------------------------------------------------------------------

print_log_tail() {
    local f
    for f in "$LOG_DIR"/rabbit@*.log "$LOG_DIR"/startup_log "$LOG_DIR"/startup_err; do
        [[ -s $f ]] || continue
        log "last lines of $f:"
        "${SUDO[@]}" tail -n 40 "$f" >&2 || true
    done
}

start_node() {
    if accepts_amqp && [[ -z $(node_pids) ]]; then
        die "port ${PORT} on ${HOST} is taken by a process that is not this machine's RabbitMQ node"
    fi
    log "starting RabbitMQ (rabbitmq-server -detached; logs in ${LOG_DIR})"
    # -detached daemonises; 9>&- keeps the lock fd out of the long-lived node.
    "${SUDO[@]}" rabbitmq-server -detached >&2 9>&- \
        || { print_log_tail; die "rabbitmq-server -detached failed"; }
}

wait_ready() {
    local deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if pinging; then
            break
        fi
        sleep 1
    done
    if pinging; then
        # The VM answers; wait for the rabbit app to finish booting (queues recovered,
        # listeners open).
        local left=$((deadline - SECONDS))
        ((left > 0)) || left=1
        if ctl -q await_startup --timeout "$left" >/dev/null 2>&1; then
            while ((SECONDS < deadline)); do
                accepts_amqp && return 0
                sleep 0.5
            done
        fi
    fi
    print_log_tail
    die "RabbitMQ not ready after ${START_TIMEOUT}s"
}

# The test user with full permissions on the vhost. Idempotent; a wrong password is reset.
ensure_user() {
    if ctl -q list_users 2>/dev/null | awk '{print $1}' | grep -qx "$AMQP_USER"; then
        if ! ctl -q authenticate_user "$AMQP_USER" "$AMQP_PASSWORD" >/dev/null 2>&1; then
            log "resetting the password of user ${AMQP_USER}"
            ctl -q change_password "$AMQP_USER" "$AMQP_PASSWORD" >/dev/null
        fi
    else
        log "creating user ${AMQP_USER} (full permissions on vhost ${VHOST})"
        ctl -q add_user "$AMQP_USER" "$AMQP_PASSWORD" >/dev/null
    fi
    ctl -q set_permissions -p "$VHOST" "$AMQP_USER" '.*' '.*' '.*' >/dev/null
    # Quorum queues need their feature flag; a node whose data dir predates it has it off.
    ctl -q enable_feature_flag all >/dev/null 2>&1 || true
}

stop_node() {
    if [[ -z $(node_pids) ]] && ! pinging; then
        log "not running"
        return 0
    fi
    log "stopping RabbitMQ"
    # `stop` without a pid file argument returns once the node has shut down.
    if ! timeout "$STOP_TIMEOUT" "${SUDO[@]}" rabbitmqctl -q stop >/dev/null 2>&1; then
        log "rabbitmqctl stop failed or timed out"
    fi
    kill_node
    log "stopped"
}

# Serialise up/down: parallel CI steps calling `up` must not start two nodes.
take_lock() {
    mkdir -p "$RUN_DIR"
    exec 9>"$RUN_DIR/rabbitmq.lock"
    flock -w 300 9 || die "timed out waiting for $RUN_DIR/rabbitmq.lock"
}

# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------

cmd_up() {
    if [[ -n ${CONVEYOR_AMQP_URL:-} ]]; then
        printf '%s\n' "$CONVEYOR_AMQP_URL"
        return 0
    fi
    take_lock
    install_package
    if healthy; then
        log "already running"
    else
        if [[ -n $(node_pids) ]] || pinging; then
            if pinging && ! app_running; then
                # The VM is up but the app is stopped (e.g. `rabbitmqctl stop_app`): start it.
                log "node is up but the rabbit app is not; trying start_app"
                ctl -q start_app >/dev/null 2>&1 || true
            fi
            if ! healthy; then
                log "a RabbitMQ VM is running but unhealthy; restarting it"
                kill_node
            fi
        fi
        healthy || start_node
    fi
    wait_ready
    ensure_user
    log "ready: ${AMQP_URL/:${AMQP_PASSWORD}@/:***@}"
    printf '%s\n' "$AMQP_URL"
}

cmd_down() {
    if [[ -n ${CONVEYOR_AMQP_URL:-} ]]; then
        log "CONVEYOR_AMQP_URL is set: an external broker is not ours to stop"
        return 0
    fi
    take_lock
    if ! installed; then
        log "not installed"
        return 0
    fi
    stop_node
}

# host:port of an amqp[s]:// URL (default ports 5672 / 5671).
url_host_port() {
    local url=$1 rest host port
    rest=${url#*://}
    rest=${rest##*@}
    rest=${rest%%/*}
    rest=${rest%%\?*}
    host=${rest%:*}
    port=${rest##*:}
    if [[ $host == "$rest" || -z $port ]]; then
        host=$rest
        [[ $url == amqps://* ]] && port=5671 || port=5672
    fi
    printf '%s %s\n' "${host:-localhost}" "$port"
}

cmd_status() {
    if [[ -n ${CONVEYOR_AMQP_URL:-} ]]; then
        local host port
        read -r host port < <(url_host_port "$CONVEYOR_AMQP_URL")
        if timeout 5 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null; then
            echo "external RabbitMQ at ${host}:${port} accepts connections"
            return 0
        fi
        echo "external RabbitMQ at ${host}:${port} does not accept connections"
        return 3
    fi
    if ! installed; then
        echo "not installed"
        return 3
    fi
    if healthy; then
        echo "running: RabbitMQ at ${HOST}:${PORT} (vm pid $(node_pids | tr '\n' ' '))"
        return 0
    elif [[ -n $(node_pids) ]]; then
        echo "starting or unhealthy: VM pid $(node_pids | tr '\n' ' ')(logs: ${LOG_DIR})"
        return 3
    fi
    echo "not running"
    return 3
}

cmd_url() { printf '%s\n' "${CONVEYOR_AMQP_URL:-$AMQP_URL}"; }

main() {
    [[ $# == 1 ]] || usage
    case $1 in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    url) cmd_url ;;
    *) usage ;;
    esac
}

main "$@"
