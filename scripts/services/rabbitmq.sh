#!/usr/bin/env bash
# Run a REAL RabbitMQ broker on this machine for tests and CI, without Docker.
#
# The broker is Debian's `rabbitmq-server` package (3.10 on bookworm: quorum queues yes,
# delayed-message plugin no). It runs as the system node `rabbit@<host>` under the `rabbitmq`
# user, with its data in /var/lib/rabbitmq and its logs in /var/log/rabbitmq.
#
# Usage: scripts/services/rabbitmq.sh up|down|status|url|tls-url
#   up      install the package if needed, start the node if it is not healthy, wait until it
#           is, make sure the test user exists, and print the AMQP URL
#           (amqp://conveyor:conveyor@127.0.0.1:5672/) as the last line on stdout.
#           It also keeps a TLS (amqps) listener on 5671 configured, with the certificate from
#           scripts/services/tls.sh (valid for DNS:localhost only), and restarts a running node
#           only when that configuration or the certificate changed (or its listener is missing).
#   down    stop the node (`rabbitmqctl stop`); a hung node is killed.
#   status  say whether it runs; exit 0 when the node is up and accepts AMQP, 3 when not.
#   url     print the AMQP URL.
#   tls-url print the amqps URL of the TLS listener (amqps://conveyor:conveyor@localhost:5671/).
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
readonly OPEN_FILES=65536
readonly HOST="127.0.0.1"
readonly PORT=5672
# guest/guest only works over loopback; a dedicated user also works from another host/netns
# and keeps tests independent of the guest account's defaults.
readonly AMQP_USER="conveyor"
readonly AMQP_PASSWORD="conveyor"
readonly VHOST="/"
readonly AMQP_URL="amqp://${AMQP_USER}:${AMQP_PASSWORD}@${HOST}:${PORT}/"
# The TLS listener. Clients must say "localhost": the certificate names nothing else.
readonly TLS_PORT=5671
readonly TLS_HOST="localhost"
readonly AMQPS_URL="amqps://${AMQP_USER}:${AMQP_PASSWORD}@${TLS_HOST}:${TLS_PORT}/"
# A drop-in of its own (RabbitMQ >= 3.9 reads conf.d/*.conf after rabbitmq.conf), so the TLS
# settings never clash with other edits of the main config file. The certificate and key are
# copied next to it: the node runs as the rabbitmq user, which cannot read a home directory.
readonly TLS_CONF="/etc/rabbitmq/conf.d/60-conveyor-tls.conf"
readonly TLS_FILES_DIR="/etc/rabbitmq/conveyor-tls"
readonly LOG_DIR="/var/log/rabbitmq"
readonly MNESIA_BASE="/var/lib/rabbitmq/mnesia"

# Everything but the URL goes to stderr, so `url=$(rabbitmq.sh up | tail -n1)` is all a caller
# needs.
log() { printf 'rabbitmq: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The node is rabbit@<short hostname>, which must resolve. Containers and CI machines sometimes
# lack an /etc/hosts entry for their own name; then the node is rabbit@localhost instead (the
# CLI tools and the server read RABBITMQ_NODENAME from the environment).
NODE_ENV=()
if ! getent hosts "$(hostname -s 2>/dev/null || hostname)" >/dev/null 2>&1; then
    NODE_ENV=(RABBITMQ_NODENAME=rabbit@localhost)
fi

# Run a RabbitMQ tool (the /usr/sbin wrappers switch to the rabbitmq user when run as root)
# under a timeout: a wedged node must not hang a CI job.
rmq() {
    local seconds=$1
    shift
    timeout "$seconds" "${SUDO[@]}" env "${NODE_ENV[@]}" "$@"
}
ctl() { rmq 60 rabbitmqctl "$@"; }
diag() { rmq 30 rabbitmq-diagnostics "$@"; }

# ---------------------------------------------------------------------------------------------
# Install
# ---------------------------------------------------------------------------------------------

installed() {
    [[ -x /usr/sbin/rabbitmq-server ]] \
        && dpkg-query -W -f='${Status}' rabbitmq-server 2>/dev/null | grep -q 'install ok installed'
}

install_package() {
    installed && return 0
    apt_install_package rabbitmq-server
    installed || die "rabbitmq-server still not installed after apt-get install"
}

# ---------------------------------------------------------------------------------------------
# Node state
# ---------------------------------------------------------------------------------------------

pinging() { diag -q ping --timeout 10 >/dev/null 2>&1; }

# The rabbit application (not just the Erlang VM) is running: `ping` alone also answers for a
# node whose app was stopped or is still booting.
app_running() { diag -q check_running --timeout 10 >/dev/null 2>&1; }

accepts_tcp() { (exec 3<>"/dev/tcp/${HOST}/${PORT}") 2>/dev/null; }

# The listener completes an AMQP handshake: after the protocol header the broker sends
# Connection.Start, a method frame (type 1). A node that accepts TCP but never answers is not
# healthy: e.g. out of file handles, it queues every new connection forever.
accepts_amqp() {
    local first
    first=$(timeout 5 bash -c 'exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "AMQP\0\0\x09\x01" >&3
        head -c 1 <&3 | od -An -tx1' _ "$HOST" "$PORT" 2>/dev/null) || return 1
    [[ ${first// /} == 01 ]]
}

healthy() { pinging && app_running && accepts_amqp; }

# The TLS listener completes a handshake with the test CA and the name "localhost". (Erlang
# opens the port even when it cannot read the key; only a handshake shows that it works.)
accepts_amqps() {
    timeout 10 openssl s_client -brief -connect "${HOST}:${TLS_PORT}" -servername "$TLS_HOST" \
        -verify_hostname "$TLS_HOST" -CAfile "${TLS_SRC_DIR}/ca.pem" -verify_return_error \
        </dev/null >/dev/null 2>&1
}

# The node's name, as the server and the CLI tools derive it: RABBITMQ_NODENAME (ours, above),
# else NODENAME in rabbitmq-env.conf, else rabbit@<short hostname>.
node_name() {
    local name=""
    if ((${#NODE_ENV[@]})); then
        name=${NODE_ENV[0]#RABBITMQ_NODENAME=}
    elif [[ -r /etc/rabbitmq/rabbitmq-env.conf ]]; then
        name=$(sed -n 's/^[[:space:]]*NODENAME=//p' /etc/rabbitmq/rabbitmq-env.conf | tail -n 1 | tr -d "\"'")
    fi
    name=${name:-rabbit}
    [[ $name == *@* ]] || name="${name}@$(hostname -s 2>/dev/null || hostname)"
    printf '%s\n' "$name"
}

# PID of this machine's RabbitMQ VM, from the pid file `rabbitmq-server -detached` writes,
# if that process is alive and is an Erlang VM of the rabbitmq user. Other nodes on the machine
# (other names, other data dirs) are never touched.
node_pids() {
    local file pid
    file="${MNESIA_BASE}/$(node_name).pid"
    pid=$("${SUDO[@]}" cat "$file" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    [[ $(ps -o user= -p "$pid" 2>/dev/null | tr -d ' ') == rabbitmq ]] || return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'beam' || return 0
    printf '%s\n' "$pid"
}

# True while any of the given pids is alive.
any_alive() {
    local pid
    for pid in "$@"; do
        "${SUDO[@]}" kill -0 "$pid" 2>/dev/null && return 0
    done
    return 1
}

# Wait up to $1 seconds for the given pids to exit.
wait_exit() {
    local deadline=$((SECONDS + $1))
    shift
    while any_alive "$@" && ((SECONDS < deadline)); do sleep 0.3; done
    ! any_alive "$@"
}

# Stop this machine's node for good: `rabbitmqctl stop` (given $1 seconds; 0 = skip) if it
# answers, then signals to the VM's own pid (taken from its pid file before anything else, since
# the node removes the file early in its shutdown; never by process name).
kill_node() {
    local polite=${1:-$STOP_TIMEOUT} pids pid
    pids=$(node_pids)
    if ((polite)) && pinging; then
        log "stopping RabbitMQ${pids:+ (VM ${pids})}: rabbitmqctl stop"
        rmq "$polite" rabbitmqctl -q stop >/dev/null 2>&1 || log "rabbitmqctl stop failed or timed out"
        [[ -n $pids ]] || return 0
        # shellcheck disable=SC2086  # one pid per word
        wait_exit 15 $pids && return 0
    fi
    [[ -n $pids ]] || return 0
    log "sending SIGTERM to RabbitMQ VM ${pids}"
    # SIGCONT first: a stopped (SIGSTOP, ^Z) VM cannot act on SIGTERM.
    for pid in $pids; do "${SUDO[@]}" kill -CONT "$pid" 2>/dev/null || true; done
    for pid in $pids; do "${SUDO[@]}" kill -TERM "$pid" 2>/dev/null || true; done
    # shellcheck disable=SC2086
    wait_exit 15 $pids && return 0
    log "RabbitMQ VM ${pids} ignored SIGTERM; sending SIGKILL"
    for pid in $pids; do "${SUDO[@]}" kill -KILL "$pid" 2>/dev/null || true; done
    # shellcheck disable=SC2086
    wait_exit 5 $pids || die "RabbitMQ VM ${pids} survived SIGKILL"
}

# ---------------------------------------------------------------------------------------------
# TLS listener
# ---------------------------------------------------------------------------------------------

TLS_SRC_DIR=""   # where scripts/services/tls.sh keeps the material (set by configure_tls)
TLS_CHANGED=0    # configure_tls changed a file the node reads at start-up

tls_conf() {
    cat <<EOF
# Written by Conveyor's scripts/services/rabbitmq.sh ('up' rewrites it): amqps for the TLS tests.
# Test material from scripts/services/tls.sh; the certificate is valid for DNS:localhost only.
listeners.ssl.default = ${TLS_PORT}
ssl_options.cacertfile = ${TLS_FILES_DIR}/ca.pem
ssl_options.certfile = ${TLS_FILES_DIR}/server.pem
ssl_options.keyfile = ${TLS_FILES_DIR}/server.key
# No client certificates: clients authenticate with user and password over the TLS channel.
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
EOF
}

# Make the node's TLS files and drop-in config match the test material; TLS_CHANGED=1 when a
# file had to change (the node reads them at start-up, so it must then be restarted).
configure_tls() {
    local file conf
    TLS_SRC_DIR=$(bash "$(dirname "${BASH_SOURCE[0]}")/tls.sh" up | tail -n 1) \
        || die "could not create the TLS test material (scripts/services/tls.sh up)"
    "${SUDO[@]}" install -d -o rabbitmq -g rabbitmq -m 0750 "$TLS_FILES_DIR"
    for file in ca.pem server.pem server.key; do
        if ! "${SUDO[@]}" cmp -s "${TLS_SRC_DIR}/${file}" "${TLS_FILES_DIR}/${file}"; then
            "${SUDO[@]}" install -o rabbitmq -g rabbitmq -m 0600 "${TLS_SRC_DIR}/${file}" "${TLS_FILES_DIR}/${file}"
            TLS_CHANGED=1
        fi
    done
    conf=$(tls_conf)
    if [[ $("${SUDO[@]}" cat "$TLS_CONF" 2>/dev/null) != "$conf" ]]; then
        log "writing ${TLS_CONF} (TLS listener on ${TLS_PORT})"
        "${SUDO[@]}" install -d -m 0755 "$(dirname "$TLS_CONF")"
        printf '%s\n' "$conf" | "${SUDO[@]}" tee "${TLS_CONF}.tmp" >/dev/null
        "${SUDO[@]}" chmod 644 "${TLS_CONF}.tmp"
        "${SUDO[@]}" mv -f "${TLS_CONF}.tmp" "$TLS_CONF"
        TLS_CHANGED=1
    fi
}

# After wait_ready: a node started before the drop-in existed (or by hand) has no TLS listener.
ensure_tls_listener() {
    accepts_amqps && return 0
    log "the node does not serve TLS on ${TLS_PORT}; restarting it to load ${TLS_CONF}"
    kill_node "$STOP_TIMEOUT"
    start_node
    wait_ready
    local deadline=$((SECONDS + 30))
    until accepts_amqps; do
        if ((SECONDS >= deadline)); then
            print_log_tail
            die "no TLS handshake on ${HOST}:${TLS_PORT} with the test CA"
        fi
        sleep 1
    done
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
    if accepts_tcp && [[ -z $(node_pids) ]]; then
        die "port ${PORT} on ${HOST} is taken by a process that is not this machine's RabbitMQ node"
    fi
    log "starting RabbitMQ (rabbitmq-server -detached; logs in ${LOG_DIR})"
    # Started as the rabbitmq user with a raised open-files limit. Debian's wrapper, run as root,
    # switches user through su/PAM, which resets the soft limit to 1024; with that, a node
    # holding a few hundred quorum queues runs out of file handles and then accepts TCP
    # connections but never completes an AMQP handshake. 65536 is what the package's systemd
    # unit sets (LimitNOFILE); we take the hard limit if that is lower. The wrapper, run as the
    # rabbitmq user, cds to /var/lib/rabbitmq and logs to startup_log/startup_err.
    # -detached daemonises; 9>&- keeps the lock fd out of the long-lived node.
    # shellcheck disable=SC2016  # expanded by the inner shell
    rmq 60 su rabbitmq -s /bin/sh -c \
        'ulimit -n "$1" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
         exec /usr/sbin/rabbitmq-server -detached' _ "$OPEN_FILES" >&2 9>&- \
        || { print_log_tail; die "rabbitmq-server -detached failed"; }
}

# Warn when a node we did not just start runs with a small open-files limit.
check_open_files() {
    local pid soft
    pid=$(node_pids | head -n 1)
    [[ -n $pid ]] || return 0
    soft=$("${SUDO[@]}" awk '/^Max open files/ {print $4}' "/proc/$pid/limits" 2>/dev/null) || return 0
    if [[ $soft =~ ^[0-9]+$ ]] && ((soft < 4096)); then
        log "warning: the node runs with an open-files limit of ${soft}; '$0 down && $0 up' raises it"
    fi
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

# Conveyor needs 3.10+: quorum queues with message TTL and at-least-once dead-lettering.
check_version() {
    local version
    version=$(ctl -q version 2>/dev/null | tail -n 1) || return 0
    if [[ $version =~ ^([0-9]+)\.([0-9]+) ]]; then
        local major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
        if ((major < 3 || (major == 3 && minor < 10))); then
            die "RabbitMQ ${version} is too old: Conveyor needs 3.10 or later (quorum queue TTL)"
        fi
    fi
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
    kill_node "$STOP_TIMEOUT"
    log "stopped"
}

# Serialise up/down: parallel CI steps calling `up` must not start two nodes.
take_lock() { hold_lock "$RUN_DIR/rabbitmq.lock" 300; }

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
    configure_tls
    if ((TLS_CHANGED)) && { [[ -n $(node_pids) ]] || pinging; }; then
        log "TLS configuration changed; restarting the node to load it"
        kill_node "$STOP_TIMEOUT"
    fi
    if pinging; then
        if app_running && accepts_amqp; then
            log "already running"
        else
            # The VM answers but the app is stopped or stuck (e.g. `rabbitmqctl stop_app`).
            log "node is up but the rabbit app is not serving; trying start_app"
            ctl -q start_app >/dev/null 2>&1 || true
            if ! healthy; then
                log "node still unhealthy; restarting it"
                kill_node 20
            fi
        fi
    elif [[ -n $(node_pids) ]]; then
        # A VM from an earlier run that does not even answer ping: hung, stopped or half dead.
        log "a RabbitMQ VM ($(node_pids)) is running but does not answer; restarting it"
        kill_node 0
    fi
    healthy || start_node
    wait_ready
    ensure_tls_listener
    check_version
    check_open_files
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

cmd_tls_url() { printf '%s\n' "$AMQPS_URL"; }

main() {
    [[ $# == 1 ]] || usage
    case $1 in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    url) cmd_url ;;
    tls-url) cmd_tls_url ;;
    *) usage ;;
    esac
}

main "$@"
