#!/usr/bin/env bash
# Run a REAL RabbitMQ 4.x broker on this machine for tests and CI, without Docker.
#
# The broker is Debian trixie's `rabbitmq-server` package (4.0.x on Erlang 27: quorum queues
# with a default delivery limit, no classic mirrored queues). This machine runs Debian bookworm,
# whose own package is the end-of-life 3.10, so the script builds a minimal Debian trixie root
# once with `debootstrap` (30 s to 3 minutes, by mirror; cached in
# ${CONVEYOR_CACHE_DIR}/trixie-root, outside the repository), installs rabbitmq-server into it
# with apt, and runs the node chrooted into it as the root's rabbitmq user: node
# rabbit4@localhost, data in <root>/var/lib/rabbitmq/mnesia, logs in <root>/var/log/rabbitmq,
# its Erlang cookie in <root>/var/lib/rabbitmq/.erlang.cookie.
# The host's epmd (port 4369) serves it; when the host has none, the root's epmd is started.
#
# Usage: scripts/services/rabbitmq.sh up|down|status|url|tls-url|version|ctl ARGS...
#   up      build the trixie root if needed, start the node if it is not healthy, wait until it
#           is, make sure the test user exists, and print the AMQP URL
#           (amqp://conveyor:conveyor@127.0.0.1:5672/) as the last line on stdout.
#           It also keeps a TLS (amqps) listener on 5671 configured, with the certificate from
#           scripts/services/tls.sh (valid for DNS:localhost only), and restarts a running node
#           only when that configuration or the certificate changed (or its listener is missing).
#   down    stop the node (`rabbitmqctl stop`); a hung node is killed.
#   status  say whether it runs; exit 0 when the node is up and accepts AMQP, 3 when not.
#           Another broker on port 5672 (e.g. the host's own rabbitmq-server 3.10) is not it.
#   url     print the AMQP URL.
#   tls-url print the amqps URL of the TLS listener (amqps://conveyor:conveyor@localhost:5671/).
#   version print the version of the running node (e.g. 4.0.5); when it is not running, that of
#           the installed package (and say so on stderr). Exit 3 when nothing is installed.
#   build-root
#           only build the trixie root if needed (rabbitmq-cluster.sh runs its nodes from it).
#   ctl ARGS...
#           run `rabbitmqctl ARGS...` against this node (inside the root, with its name and
#           cookie), e.g. `rabbitmq.sh ctl -q list_queues name`, `rabbitmq.sh ctl stop_app`;
#           its output and exit status are rabbitmqctl's. Use this, not the host's rabbitmqctl.
#
# Environment:
#   CONVEYOR_AMQP_URL               use this external broker: `up` only prints it.
#   CONVEYOR_CACHE_DIR              where the trixie root is kept (default ~/.cache/conveyor).
#   CONVEYOR_RUN_DIR                lock file (default ~/.cache/conveyor/run).
#   CONVEYOR_DEBIAN_MIRROR          Debian mirror for debootstrap (default: the first one apt's
#                                   sources list names that serves trixie).
#   CONVEYOR_RABBITMQ_START_TIMEOUT seconds `up` waits for the node (default 90).
#   CONVEYOR_RABBITMQ_CTL_TIMEOUT   seconds a `ctl` command may take (default 300).
#
# Needs root or password-less sudo: debootstrap, chroot and the proc mount in the root.
set -euo pipefail

readonly CACHE_DIR="${CONVEYOR_CACHE_DIR:-$HOME/.cache/conveyor}"
readonly RUN_DIR="${CONVEYOR_RUN_DIR:-$HOME/.cache/conveyor/run}"
readonly START_TIMEOUT="${CONVEYOR_RABBITMQ_START_TIMEOUT:-90}"
readonly CTL_TIMEOUT="${CONVEYOR_RABBITMQ_CTL_TIMEOUT:-300}"
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

# The trixie root. Its own name for the node (not the host's rabbit@<host>), its own
# distribution port, and all its state inside the root.
readonly SUITE="trixie"
ROOT=$(realpath -m "${CACHE_DIR}/${SUITE}-root")
readonly ROOT
readonly BUILD_LOG="${CACHE_DIR}/${SUITE}-root.build.log"
readonly BASE_MARKER="${ROOT}/.conveyor-debootstrap-complete" # debootstrap finished
readonly READY_MARKER="${ROOT}/.conveyor-root-complete"       # rabbitmq-server installed too
readonly NODENAME="rabbit4@localhost"
readonly DIST_PORT=25672
readonly EPMD_PORT=4369
readonly RMQ_HOME="/var/lib/rabbitmq" # paths inside the root from here on
readonly MNESIA_BASE="${RMQ_HOME}/mnesia"
readonly LOG_BASE="/var/log/rabbitmq"
readonly COOKIE="${RMQ_HOME}/.erlang.cookie"
readonly RMQ_BIN="/usr/lib/rabbitmq/bin"
# A drop-in of its own (RabbitMQ reads conf.d/*.conf after rabbitmq.conf), so the TLS settings
# never clash with other edits of the main config file. The certificate and key are copied next
# to it, owned by the root's rabbitmq user.
readonly TLS_CONF="/etc/rabbitmq/conf.d/60-conveyor-tls.conf"
readonly TLS_FILES_DIR="/etc/rabbitmq/conveyor-tls"

# Everything but the URL goes to stderr, so `url=$(rabbitmq.sh up | tail -n1)` is all a caller
# needs.
log() { printf 'rabbitmq: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
set_node_env
readonly NODE_ENV

# The TLS listener completes a handshake with the test CA and the name "localhost". (Erlang
# opens the port even when it cannot read the key; only a handshake shows that it works.)
accepts_amqps() {
    timeout 10 openssl s_client -brief -connect "${HOST}:${TLS_PORT}" -servername "$TLS_HOST" \
        -verify_hostname "$TLS_HOST" -CAfile "${TLS_SRC_DIR}/ca.pem" -verify_return_error \
        </dev/null >/dev/null 2>&1
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

# Make the node's TLS files and drop-in config (in the root) match the test material;
# TLS_CHANGED=1 when a file had to change (the node reads them at start-up, so it must then be
# restarted).
configure_tls() {
    local file conf ids dir="${ROOT}${TLS_FILES_DIR}"
    TLS_SRC_DIR=$(bash "$(dirname "${BASH_SOURCE[0]}")/tls.sh" up | tail -n 1) \
        || die "could not create the TLS test material (scripts/services/tls.sh up)"
    ids=$(rmq_ids)
    "${SUDO[@]}" install -d -o "${ids%:*}" -g "${ids#*:}" -m 0750 "$dir"
    for file in ca.pem server.pem server.key; do
        if ! "${SUDO[@]}" cmp -s "${TLS_SRC_DIR}/${file}" "${dir}/${file}"; then
            "${SUDO[@]}" install -o "${ids%:*}" -g "${ids#*:}" -m 0600 "${TLS_SRC_DIR}/${file}" "${dir}/${file}"
            TLS_CHANGED=1
        fi
    done
    conf=$(tls_conf)
    if [[ $("${SUDO[@]}" cat "${ROOT}${TLS_CONF}" 2>/dev/null) != "$conf" ]]; then
        log "writing ${ROOT}${TLS_CONF} (TLS listener on ${TLS_PORT})"
        "${SUDO[@]}" install -d -m 0755 "$(dirname "${ROOT}${TLS_CONF}")"
        printf '%s\n' "$conf" | put_root_file "$TLS_CONF" 644
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

# Serialise up/down: parallel CI steps calling `up` must not start two nodes (or build two
# roots: the first `up` on a fresh machine holds the lock for the whole build).
take_lock() { hold_lock "$RUN_DIR/rabbitmq.lock" 900; }

# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------

cmd_up() {
    if [[ -n ${CONVEYOR_AMQP_URL:-} ]]; then
        printf '%s\n' "$CONVEYOR_AMQP_URL"
        return 0
    fi
    take_lock
    ensure_root
    ensure_cookie
    configure_tls
    if ((TLS_CHANGED)) && { [[ -n $(node_pids) ]] || pinging; }; then
        log "TLS configuration changed; restarting the node to load it"
        kill_node "$STOP_TIMEOUT"
    fi
    local serving=0
    if [[ -n $(node_pids) ]] && pinging; then
        if app_running && accepts_amqp; then
            log "already running"
            serving=1
        else
            # The VM answers but the app is stopped or stuck (e.g. `rabbitmqctl stop_app`).
            log "node is up but the rabbit app is not serving; trying start_app"
            ctl -q start_app >/dev/null 2>&1 || true
            if healthy; then
                serving=1
            else
                log "node still unhealthy; restarting it"
                kill_node 20
            fi
        fi
    fi
    if ((!serving)); then
        wipe_data_unless_running
        start_unless_up || true # a VM from an earlier run that does not answer ping is killed first
        wait_ready
    fi
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
    if ! root_ready; then
        log "not installed"
        return 0
    fi
    prepare_root
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
    if ! root_ready; then
        echo "not installed (no ${SUITE} root in ${ROOT})"
        if accepts_tcp; then echo "note: port ${PORT} is taken by $(port_owner)"; fi
        return 3
    fi
    prepare_root
    if healthy; then
        echo "running: RabbitMQ $(server_version) ${NODENAME} at ${HOST}:${PORT} (VM pid $(node_pids | paste -sd ' '))"
        return 0
    elif [[ -n $(node_pids) ]]; then
        echo "starting or unhealthy: VM pid $(node_pids | paste -sd ' ') (logs: ${ROOT}${LOG_BASE})"
        return 3
    fi
    echo "not running"
    if accepts_tcp; then echo "note: port ${PORT} is taken by $(port_owner)"; fi
    return 3
}

cmd_url() { printf '%s\n' "${CONVEYOR_AMQP_URL:-$AMQP_URL}"; }

cmd_tls_url() { printf '%s\n' "$AMQPS_URL"; }

cmd_version() {
    local version
    root_ready || { log "not installed (no ${SUITE} root in ${ROOT}); run '$0 up'"; return 3; }
    prepare_root
    if [[ -n $(node_pids) ]] && version=$(server_version) && [[ -n $version ]]; then
        printf '%s\n' "$version"
        return 0
    fi
    version=$(awk '$1 == "rabbitmq-server" {print $2}' "$READY_MARKER")
    log "node ${NODENAME} is not running; the installed package is rabbitmq-server ${version}"
    printf '%s\n' "${version%%-*}"
}

cmd_ctl() {
    root_ready || die "not installed (no ${SUITE} root in ${ROOT}); run '$0 up'"
    prepare_root
    as_rabbitmq "$CTL_TIMEOUT" "${RMQ_BIN}/rabbitmqctl" "$@"
}

main() {
    (($# >= 1)) || usage
    local command=$1
    shift
    case $command in
    ctl) cmd_ctl "$@" ;;
    up | down | status | url | tls-url | version | build-root) (($# == 0)) || usage ;;&
    build-root) take_lock; ensure_root ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    url) cmd_url ;;
    tls-url) cmd_tls_url ;;
    version) cmd_version ;;
    *) usage ;;
    esac
}

main "$@"
