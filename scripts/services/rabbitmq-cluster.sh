#!/usr/bin/env bash
# Run a REAL three-node RabbitMQ 4.x cluster on this machine for the cluster fault scenarios,
# the fleet benchmark, the soak and local trials, without Docker.
#
# The nodes run from the same cached Debian trixie root as scripts/services/rabbitmq.sh (built
# there on first use, see that script), chrooted as the root's rabbitmq user, with one Erlang
# cookie (the root's). The single node rabbit4@localhost (5672) is never touched.
#
#   node               AMQP   distribution  outgoing dist. address  data and logs (in the root)
#   rabbitc1@localhost 5681   25681         127.0.0.11              /var/lib/rabbitmq/cluster/rabbitc1, /var/log/rabbitmq/cluster/rabbitc1
#   rabbitc2@localhost 5682   25682         127.0.0.12              … rabbitc2
#   rabbitc3@localhost 5683   25683         127.0.0.13              … rabbitc3
#
# Each node has a config file of its own (/etc/rabbitmq/cluster/rabbitcN.conf: its listener,
# no TLS drop-in, cluster_partition_handling = pause_minority) and a short net_ticktime (10 s),
# so a cut-off node notices within seconds and pauses itself. A node opens its distribution
# connections from its own loopback address, which is how `isolate` can cut one node off from
# the others and only it.
#
# Usage: scripts/services/rabbitmq-cluster.sh COMMAND
#   up            start the nodes that are not running (all at once: a cluster whose nodes all
#                 stopped needs its peers to boot), wait until each runs, join nodes 2 and 3 to
#                 node 1 when they are not members yet, create the conveyor user, and print the
#                 multi-host URL (amqp://conveyor:conveyor@127.0.0.1:5681,127.0.0.1:5682,127.0.0.1:5683/)
#                 as the last line on stdout. Idempotent.
#   down          stop all three nodes (a hung node is killed); removes an `isolate` rule.
#   status        one line per node; exit 0 when all three run as one cluster, 3 when not.
#   url           print the multi-host URL.
#   urls          print one single-host URL per node.
#   kill NODE     kill -9 the node's VM (NODE: 1, 2, 3 or rabbitcN[@localhost]).
#   stop NODE     stop the node (rabbitmqctl stop; a hung one is killed).
#   start NODE    start the node and wait until it runs in the cluster.
#   restart NODE  stop, then start.
#   isolate NODE  cut the node off from the other two with nftables (installed when missing):
#                 drop its distribution traffic on the loopback, in table inet conveyor_cluster.
#   heal          remove that table.
#   leader QUEUE  the node (rabbitcN@localhost) that holds the quorum queue's leader.
#   ctl NODE ARGS...  rabbitmqctl ARGS against the node.
#
# Environment: CONVEYOR_CACHE_DIR, CONVEYOR_RUN_DIR, CONVEYOR_DEBIAN_MIRROR as for rabbitmq.sh;
#   CONVEYOR_RABBITMQ_START_TIMEOUT seconds a node may take to start (default 120).
#
# Needs root or password-less sudo (chroot, the proc mount, nft).
set -euo pipefail

readonly CACHE_DIR="${CONVEYOR_CACHE_DIR:-$HOME/.cache/conveyor}"
readonly RUN_DIR="${CONVEYOR_RUN_DIR:-$HOME/.cache/conveyor/run}"
readonly START_TIMEOUT="${CONVEYOR_RABBITMQ_START_TIMEOUT:-120}"
readonly STOP_TIMEOUT=60
readonly OPEN_FILES=65536
readonly AMQP_USER="conveyor"
readonly AMQP_PASSWORD="conveyor"
readonly VHOST="/"
readonly SUITE="trixie"
ROOT=$(realpath -m "${CACHE_DIR}/${SUITE}-root")
readonly ROOT
readonly BUILD_LOG="${CACHE_DIR}/${SUITE}-root.build.log"
readonly BASE_MARKER="${ROOT}/.conveyor-debootstrap-complete"
readonly READY_MARKER="${ROOT}/.conveyor-root-complete"
readonly EPMD_PORT=4369
readonly RMQ_HOME="/var/lib/rabbitmq"
readonly COOKIE="${RMQ_HOME}/.erlang.cookie"
readonly RMQ_BIN="/usr/lib/rabbitmq/bin"
readonly CONF_DIR="/etc/rabbitmq/cluster" # in the root
readonly NODES=(1 2 3)
readonly NFT_TABLE="conveyor_cluster"

# The node the shared functions (lib.sh) act on; use_node sets these.
NODENAME="" HOST="127.0.0.1" PORT="" DIST_PORT="" MNESIA_BASE="" LOG_BASE="" NODE_ENV=()

use_node() {
    local n=$1
    NODENAME="rabbitc${n}@localhost"
    PORT="568${n}"
    DIST_PORT="2568${n}"
    MNESIA_BASE="${RMQ_HOME}/cluster/rabbitc${n}"
    LOG_BASE="/var/log/rabbitmq/cluster/rabbitc${n}"
    set_node_env \
        RABBITMQ_CONFIG_FILE="${CONF_DIR}/rabbitc${n}.conf" \
        RABBITMQ_CONFIG_FILES="${CONF_DIR}/conf.d" \
        RABBITMQ_ENABLED_PLUGINS_FILE="${CONF_DIR}/enabled_plugins" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel net_ticktime 10 -kernel inet_dist_connect_options [{ip,{127,0,0,1${n}}}] -rabbit dead_letter_worker_publisher_confirm_timeout 10000"
}
# dead_letter_worker_publisher_confirm_timeout (ms; RabbitMQ's default is 180,000): a quorum
# queue's at-least-once dead-lettering (our retry tiers) re-sends a message its target did not
# confirm only after it, and a target whose leader was on a cut-off node confirms nothing. It was
# set while chasing the cut-off scenario's intermittent stall (9 jobs unsettled 240 s after the
# heal); that stall was seen again with it, so it is not the stall's cause, only a shorter wait.

log() { printf 'rabbitmq-cluster: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

url_of() { printf 'amqp://%s:%s@127.0.0.1:568%s/' "$AMQP_USER" "$AMQP_PASSWORD" "$1"; }
cluster_url() { printf 'amqp://%s:%s@127.0.0.1:5681,127.0.0.1:5682,127.0.0.1:5683/\n' "$AMQP_USER" "$AMQP_PASSWORD"; }

# NODE as 1..3 from "1", "rabbitc1" or "rabbitc1@localhost".
node_number() {
    local arg=${1:-}
    arg=${arg%@localhost}
    arg=${arg#rabbitc}
    [[ $arg =~ ^[123]$ ]] || die "no such node: ${1:-(none)} (1, 2, 3 or rabbitcN@localhost)"
    printf '%s\n' "$arg"
}

node_conf() {
    cat <<EOF
# Written by Conveyor's scripts/services/rabbitmq-cluster.sh ('up' rewrites it).
listeners.tcp.default = $1
# A node cut off from the majority pauses (closes its clients' connections) instead of serving
# a minority: clients move to the majority's nodes.
cluster_partition_handling = pause_minority
EOF
}

# The per-node config files (and an empty conf.d, so the single node's TLS drop-in is not read).
configure_nodes() {
    local n ids
    ids=$(rmq_ids)
    "${SUDO[@]}" install -d -m 0755 "${ROOT}${CONF_DIR}" "${ROOT}${CONF_DIR}/conf.d"
    printf '[].\n' | put_root_file "${CONF_DIR}/enabled_plugins" 644
    "${SUDO[@]}" chown "$ids" "${ROOT}${CONF_DIR}/enabled_plugins"
    for n in "${NODES[@]}"; do
        node_conf "568${n}" | put_root_file "${CONF_DIR}/rabbitc${n}.conf" 644
        use_node "$n"
        ensure_cookie # also the node's data and log directories
    done
}

take_lock() { hold_lock "$RUN_DIR/rabbitmq-cluster.lock" 900; }

# Node names listed under KEY ("running_nodes", "disk_nodes") in `cluster_status --formatter json`
# (no JSON tool needed: node names are plain words).
json_nodes() { grep -o "\"$1\":\[[^]]*\]" | grep -o 'rabbitc[0-9]@localhost' || true; }

# Running members as the first running node sees them.
running_members() {
    local n
    for n in "${NODES[@]}"; do
        use_node "$n"
        [[ -n $(node_pids) ]] || continue
        ctl -q cluster_status --formatter json 2>/dev/null | json_nodes running_nodes && return 0
    done
    return 0
}

all_members() {
    use_node 1
    ctl -q cluster_status --formatter json 2>/dev/null | json_nodes disk_nodes
}

start_nodes() {
    local n started=()
    ensure_epmd
    for n in "$@"; do
        use_node "$n"
        if start_unless_up; then
            started+=("$n")
        fi
    done
    for n in "${started[@]}"; do
        use_node "$n"
        wait_ready
    done
}

# CONVEYOR_SCRATCH_SERVER=1 (see wipe_data_unless_running): only when no node runs, all three start
# empty and form the cluster anew; a node wiped while its peers run would come back a stranger
# they still list as a member.
fresh_cluster() {
    local n
    for n in "${NODES[@]}"; do
        use_node "$n"
        [[ -z $(node_pids) ]] || return 0
    done
    for n in "${NODES[@]}"; do
        use_node "$n"
        wipe_data_unless_running
    done
}

# Node $1 (not node 1) joins node 1's cluster when it is not a member yet.
join_node() {
    local n=$1
    if all_members | grep -qx "rabbitc${n}@localhost"; then
        return 0
    fi
    use_node "$n"
    log "joining ${NODENAME} to rabbitc1@localhost"
    ctl -q stop_app >/dev/null
    ctl -q reset >/dev/null
    ctl -q join_cluster rabbitc1@localhost >/dev/null || die "join_cluster failed for ${NODENAME}"
    ctl -q start_app >/dev/null
    wait_ready
}

wait_cluster() {
    local deadline=$((SECONDS + START_TIMEOUT)) count
    while ((SECONDS < deadline)); do
        count=$(running_members | grep -c '^rabbitc' || true)
        ((count == ${#NODES[@]})) && return 0
        sleep 1
    done
    die "the cluster does not show ${#NODES[@]} running nodes after ${START_TIMEOUT}s: $(running_members | paste -sd ' ')"
}

cmd_up() {
    take_lock
    bash "$(dirname "${BASH_SOURCE[0]}")/rabbitmq.sh" build-root >&2 || die "the trixie root could not be built"
    prepare_root
    configure_nodes
    fresh_cluster
    start_nodes "${NODES[@]}"
    join_node 2
    join_node 3
    wait_cluster
    use_node 1
    check_version
    ensure_user
    log "ready: $(running_members | paste -sd ' ')"
    cluster_url
}

cmd_down() {
    take_lock
    root_ready || { log "not installed"; return 0; }
    prepare_root
    nft_remove
    local n pids=()
    # Stop all three at once: one at a time, each remaining node waits for the others.
    for n in "${NODES[@]}"; do
        use_node "$n"
        (kill_node 30 && log "${NODENAME} stopped") &
        pids+=($!)
    done
    for n in "${pids[@]}"; do wait "$n" || true; done
}

cmd_status() {
    root_ready || { echo "not installed (no ${SUITE} root in ${ROOT})"; return 3; }
    prepare_root
    local n rc=0 members
    members=$(running_members)
    for n in "${NODES[@]}"; do
        use_node "$n"
        if grep -qx "$NODENAME" <<<"$members" && accepts_amqp; then
            echo "running: ${NODENAME} AMQP ${HOST}:${PORT} (VM pid $(node_pids | paste -sd ' '))"
        elif [[ -n $(node_pids) ]]; then
            echo "not serving: ${NODENAME} (VM pid $(node_pids | paste -sd ' '); logs in ${ROOT}${LOG_BASE})"
            rc=3
        else
            echo "not running: ${NODENAME}"
            rc=3
        fi
    done
    return "$rc"
}

cmd_kill() {
    local pid pids
    use_node "$(node_number "$1")"
    pids=$(node_pids)
    [[ -n $pids ]] || { log "${NODENAME} is not running"; return 0; }
    log "kill -9 ${NODENAME} (VM ${pids//$'\n'/ })"
    for pid in $pids; do "${SUDO[@]}" kill -KILL "$pid" 2>/dev/null || true; done
    # shellcheck disable=SC2086  # one pid per word
    wait_exit 10 $pids || die "${NODENAME} survived SIGKILL"
}

cmd_stop() {
    use_node "$(node_number "$1")"
    kill_node 30
    log "${NODENAME} stopped"
}

cmd_start() {
    local n
    n=$(node_number "$1")
    configure_nodes
    start_nodes "$n"
    wait_cluster
}

nft_remove() {
    command -v nft >/dev/null || return 0
    "${SUDO[@]}" nft delete table inet "$NFT_TABLE" 2>/dev/null || true
}

cmd_isolate() {
    local n others
    n=$(node_number "$1")
    command -v nft >/dev/null || apt_install_package nftables
    command -v nft >/dev/null || die "nft is still missing after installing nftables"
    others=$(printf '2568%s, ' "${NODES[@]}")
    others=${others%, }
    nft_remove
    # Only loopback traffic of this node's distribution: connections to its listener (either
    # direction) and the connections it opened itself (from its own address 127.0.0.1N).
    "${SUDO[@]}" nft -f - <<EOF || die "nft refused the rules"
table inet ${NFT_TABLE} {
    chain input {
        type filter hook input priority 0; policy accept;
        iifname "lo" tcp dport 2568${n} drop
        iifname "lo" tcp sport 2568${n} drop
        iifname "lo" ip saddr 127.0.0.1${n} tcp dport { ${others} } drop
        iifname "lo" ip daddr 127.0.0.1${n} tcp sport { ${others} } drop
    }
}
EOF
    log "rabbitc${n}@localhost cut off from the other nodes (nft table inet ${NFT_TABLE}); '$0 heal' removes it"
}

cmd_heal() {
    nft_remove
    log "nft table inet ${NFT_TABLE} removed"
}

cmd_leader() {
    local queue=$1 n leader
    for n in "${NODES[@]}"; do
        use_node "$n"
        [[ -n $(node_pids) ]] || continue
        leader=$(ctl -q list_queues name leader 2>/dev/null | awk -F'\t' -v q="$queue" '$1 == q {print $2}')
        if [[ -n $leader ]]; then
            printf '%s\n' "$leader"
            return 0
        fi
    done
    die "no running node knows a leader of ${queue}"
}

main() {
    (($# >= 1)) || usage
    local command=$1
    shift
    case $command in
    up | down | status | url | urls | heal) (($# == 0)) || usage ;;&
    kill | stop | start | restart | isolate | leader) (($# == 1)) || usage ;;&
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    url) cluster_url ;;
    urls) for n in "${NODES[@]}"; do url_of "$n"; echo; done ;;
    kill) prepare_root; cmd_kill "$1" ;;
    stop) prepare_root; cmd_stop "$1" ;;
    start) take_lock; prepare_root; cmd_start "$1" ;;
    restart) take_lock; prepare_root; cmd_stop "$1"; cmd_start "$1" ;;
    isolate) cmd_isolate "$1" ;;
    heal) cmd_heal ;;
    leader) prepare_root; cmd_leader "$1" ;;
    ctl)
        (($# >= 1)) || usage
        prepare_root
        use_node "$(node_number "$1")"
        shift
        as_rabbitmq 300 "${RMQ_BIN}/rabbitmqctl" "$@"
        ;;
    *) usage ;;
    esac
}

main "$@"
