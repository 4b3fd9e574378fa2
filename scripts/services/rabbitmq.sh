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

# The environment of every RabbitMQ program run in the root (server and CLI tools alike). The
# caller's environment is not passed in: a RABBITMQ_NODENAME or ERL_* of the caller's (one meant
# for another node, e.g. the host's own rabbitmq-server) must not redirect us.
readonly NODE_ENV=(
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    HOME="$RMQ_HOME"
    LANG=C.UTF-8
    LC_ALL=C.UTF-8
    RABBITMQ_NODENAME="$NODENAME"
    RABBITMQ_NODE_PORT="$PORT"
    RABBITMQ_DIST_PORT="$DIST_PORT"
    RABBITMQ_MNESIA_BASE="$MNESIA_BASE"
    RABBITMQ_LOG_BASE="$LOG_BASE"
    ERL_EPMD_PORT="$EPMD_PORT"
)

# Everything but the URL goes to stderr, so `url=$(rabbitmq.sh up | tail -n1)` is all a caller
# needs.
log() { printf 'rabbitmq: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------------------------------------
# The trixie root
# ---------------------------------------------------------------------------------------------

root_ready() { [[ -e $READY_MARKER && -x ${ROOT}${RMQ_BIN}/rabbitmq-server ]]; }

# A path as /proc/mounts spells it (space, tab, newline and backslash are octal escapes).
mounts_path() {
    local p=$1
    p=${p//\\/\\134}
    p=${p// /\\040}
    p=${p//$'\t'/\\011}
    p=${p//$'\n'/\\012}
    printf '%s' "$p"
}

proc_mounted() {
    awk -v t="$(mounts_path "${ROOT}/proc")" '$2 == t && $3 == "proc" {found = 1} END {exit !found}' /proc/mounts
}

# Unmount everything mounted at or below the root, deepest first.
unmount_all() {
    local prefix mnt
    prefix=$(mounts_path "$ROOT")
    while read -r mnt; do
        [[ -n $mnt ]] || continue
        mnt=$(printf '%b' "${mnt//\\/\\0}") # undo the octal escapes
        "${SUDO[@]}" umount "$mnt" 2>/dev/null || "${SUDO[@]}" umount -l "$mnt" \
            || die "cannot unmount ${mnt}"
    done < <(awk -v r="$prefix" '$2 == r || index($2, r "/") == 1 {print $2}' /proc/mounts | sort -r)
}

# PIDs of processes whose root directory is the trixie root (the node, its CLI tools, epmd).
root_pids() {
    [[ -d $ROOT ]] || return 0
    # shellcheck disable=SC2016  # expanded by the inner shell
    "${SUDO[@]}" bash -c 'for d in /proc/[0-9]*; do
            [[ $(readlink "$d/root" 2>/dev/null) == "$1" ]] && printf "%s\n" "${d#/proc/}"
        done; true' _ "$ROOT"
}

# Remove a half-built root (never one a process still runs in).
wipe_root() {
    [[ $ROOT == /*/* && $ROOT != / ]] || die "refusing to wipe ${ROOT}"
    [[ -e $ROOT ]] || return 0
    if [[ -n $(root_pids) ]]; then
        die "processes still run in ${ROOT} ($(root_pids | tr '\n' ' ')); stop them before it is rebuilt"
    fi
    log "removing the incomplete root ${ROOT}"
    unmount_all
    "${SUDO[@]}" rm -rf --one-file-system "$ROOT"
    [[ ! -e $ROOT ]] || die "could not remove ${ROOT}"
}

# "URI SUITE" for every `deb` entry in apt's sources (one-line and deb822 formats).
apt_sources() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        awk '$1 == "deb" {
                i = 2
                if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                print $i, $(i + 1)
            }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        awk 'function flush(   n, m, i, j, u, s) {
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled != "no") {
                    n = split(uris, u, /[ \t]+/); m = split(suites, s, /[ \t]+/)
                    for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) if (u[i] != "" && s[j] != "") print u[i], s[j]
                }
                types = uris = suites = enabled = key = ""
            }
            /^#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]/ { if (key == "uris") uris = uris " " $0; else if (key == "suites") suites = suites " " $0; next }
            {
                key = tolower($1); sub(/:$/, "", key)
                val = $0; sub(/^[^:]*:[ \t]*/, "", val)
                if (key == "types") types = val
                else if (key == "uris") uris = val
                else if (key == "suites") suites = val
                else if (key == "enabled") enabled = tolower(val)
            }
            END { flush() }' "$f"
    done
}

# The Debian mirror for debootstrap: CONVEYOR_DEBIAN_MIRROR, else the first mirror of Debian's
# main archive that apt's sources name (not the security archive) and that serves trixie.
debian_mirror() {
    if [[ -n ${CONVEYOR_DEBIAN_MIRROR:-} ]]; then
        printf '%s\n' "${CONVEYOR_DEBIAN_MIRROR%/}"
        return 0
    fi
    local codename candidates uri
    codename=$(. /etc/os-release 2>/dev/null && printf '%s' "${VERSION_CODENAME:-bookworm}")
    candidates=$(apt_sources | awk -v c="$codename" '
        $1 ~ /^https?:\/\// && $1 !~ /security/ && $2 !~ /security/ \
            && ($2 == c || index($2, c "-") == 1 || $2 ~ /^(stable|testing|unstable|sid|trixie)/) {
            sub(/\/+$/, "", $1); if (!seen[$1]++) print $1
        }')
    [[ -n $candidates ]] || die "apt's sources name no Debian mirror; set CONVEYOR_DEBIAN_MIRROR"
    for uri in $candidates; do
        if timeout 30 wget -q -O /dev/null "${uri}/dists/${SUITE}/Release" 2>/dev/null \
            || timeout 30 curl -fsS -o /dev/null "${uri}/dists/${SUITE}/Release" 2>/dev/null; then
            printf '%s\n' "$uri"
            return 0
        fi
        log "mirror ${uri} does not serve ${SUITE}"
    done
    die "none of apt's mirrors ($(tr '\n' ' ' <<<"$candidates")) serves ${SUITE}; set CONVEYOR_DEBIAN_MIRROR"
}

ensure_debootstrap() {
    command -v debootstrap >/dev/null && return 0
    command -v apt-get >/dev/null || die "debootstrap is not installed and apt-get is missing"
    log "installing debootstrap on the host (apt-get update, apt-get install)"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        debootstrap >&2 || die "apt-get install debootstrap failed"
    command -v debootstrap >/dev/null || die "debootstrap still missing after apt-get install"
}

# The root's copy of /etc/hosts must resolve "localhost" (the node is rabbit4@localhost).
root_hosts() {
    cat /etc/hosts
    if ! awk '!/^[ \t]*#/ && $1 == "127.0.0.1" { for (i = 2; i <= NF; i++) if ($i == "localhost") f = 1 } END { exit !f }' /etc/hosts; then
        printf '127.0.0.1\tlocalhost\n'
    fi
}

# Replace a file in the root when its content differs: $1 = path in the root, $2 = mode, content
# on stdin.
put_root_file() {
    local target="${ROOT}$1" mode=$2 content
    content=$(cat)
    [[ $("${SUDO[@]}" cat "$target" 2>/dev/null) == "$content" ]] && return 0
    printf '%s\n' "$content" | "${SUDO[@]}" tee "${target}.conveyor-tmp" >/dev/null
    "${SUDO[@]}" chmod "$mode" "${target}.conveyor-tmp"
    "${SUDO[@]}" mv -f "${target}.conveyor-tmp" "$target"
}

# What chroot and the node need from the host, every time (a reboot drops the proc mount; the
# host's /etc/hosts and resolv.conf may change).
prepare_root() {
    if ! proc_mounted; then
        "${SUDO[@]}" mount -t proc proc "${ROOT}/proc" || die "cannot mount proc in ${ROOT}/proc"
    fi
    root_hosts | put_root_file /etc/hosts 644
    if [[ -r /etc/resolv.conf ]]; then
        "${SUDO[@]}" rm -f "${ROOT}/etc/resolv.conf.conveyor-tmp"
        [[ -L ${ROOT}/etc/resolv.conf ]] && "${SUDO[@]}" rm -f "${ROOT}/etc/resolv.conf"
        put_root_file /etc/resolv.conf 644 </etc/resolv.conf
    fi
}

# Run a command as root inside the root, with a clean environment.
in_root_as_root() {
    "${SUDO[@]}" chroot "$ROOT" /usr/bin/env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "$@"
}

# Build the root once: debootstrap (marker BASE_MARKER), then rabbitmq-server (READY_MARKER).
# A root without BASE_MARKER is what an interrupted debootstrap left: wiped and built anew.
ensure_root() {
    local started=$SECONDS mirror
    if root_ready; then
        prepare_root
        return 0
    fi
    "${SUDO[@]}" mkdir -p "$CACHE_DIR"
    if [[ ! -e $BASE_MARKER ]]; then
        wipe_root
        ensure_debootstrap
        mirror=$(debian_mirror)
        log "building a Debian ${SUITE} root in ${ROOT} from ${mirror} (debootstrap, up to 3 minutes, once; log: ${BUILD_LOG})"
        "${SUDO[@]}" mkdir -p "$ROOT"
        # (pipefail: the pipeline fails when debootstrap does)
        if ! "${SUDO[@]}" debootstrap --variant=minbase "$SUITE" "$ROOT" "$mirror" 2>&1 \
            | "${SUDO[@]}" tee "$BUILD_LOG" >/dev/null; then
            log "last lines of ${BUILD_LOG}:"
            "${SUDO[@]}" tail -n 30 "$BUILD_LOG" >&2 || true
            # debootstrap mounts proc and sys itself and may leave them behind when it fails.
            wipe_root
            die "debootstrap ${SUITE} failed"
        fi
        "${SUDO[@]}" touch "$BASE_MARKER"
        log "debootstrap finished in $((SECONDS - started)) s"
    fi
    # No service is ever started by a package's maintainer script in the root.
    printf '#!/bin/sh\n# Conveyor: maintainer scripts must not start services in this root.\nexit 101\n' \
        | put_root_file /usr/sbin/policy-rc.d 755
    prepare_root
    log "installing rabbitmq-server in the ${SUITE} root (apt-get)"
    if ! {
        in_root_as_root apt-get update -q \
            && in_root_as_root apt-get install -y -q -o Dpkg::Options::=--force-confdef \
                -o Dpkg::Options::=--force-confold rabbitmq-server \
            && in_root_as_root apt-get clean
    } 2>&1 | "${SUDO[@]}" tee -a "$BUILD_LOG" >/dev/null || [[ ! -x ${ROOT}${RMQ_BIN}/rabbitmq-server ]]; then
        log "last lines of ${BUILD_LOG}:"
        "${SUDO[@]}" tail -n 30 "$BUILD_LOG" >&2 || true
        die "apt-get install rabbitmq-server in ${ROOT} failed (the next 'up' retries it)"
    fi
    in_root_as_root dpkg-query -W -f='${Package} ${Version}\n' rabbitmq-server erlang-base \
        | "${SUDO[@]}" tee "$READY_MARKER" >/dev/null
    log "${SUITE} root ready in $((SECONDS - started)) s: $(tr '\n' ' ' <"$READY_MARKER")"
}

# ---------------------------------------------------------------------------------------------
# Running RabbitMQ's programs in the root
# ---------------------------------------------------------------------------------------------

RMQ_IDS="" # uid:gid of the root's rabbitmq user

rmq_ids() {
    if [[ -z $RMQ_IDS ]]; then
        RMQ_IDS=$(awk -F: '$1 == "rabbitmq" {print $3 ":" $4}' "${ROOT}/etc/passwd" 2>/dev/null)
        [[ $RMQ_IDS =~ ^[0-9]+:[0-9]+$ ]] || die "no rabbitmq user in ${ROOT}/etc/passwd"
    fi
    printf '%s\n' "$RMQ_IDS"
}

# as_rabbitmq SECONDS COMMAND... — run a command in the root as its rabbitmq user (numeric ids:
# no PAM, no lookup in the host's user database), in its home, with NODE_ENV only, under a
# timeout (a wedged node must not hang a CI job). 9>&- keeps the lock fd out of anything that
# outlives us (the detached node, epmd).
as_rabbitmq() {
    local seconds=$1 ids
    shift
    ids=$(rmq_ids)
    # shellcheck disable=SC2016  # expanded by the inner shell
    timeout "$seconds" "${SUDO[@]}" chroot --userspec="$ids" --groups="${ids#*:}" "$ROOT" \
        /usr/bin/env -i "${NODE_ENV[@]}" /bin/sh -c 'cd "$HOME" && exec "$@"' _ "$@" 9>&-
}

ctl() { as_rabbitmq 60 "${RMQ_BIN}/rabbitmqctl" "$@"; }
diag() { as_rabbitmq 30 "${RMQ_BIN}/rabbitmq-diagnostics" "$@"; }

# The node and its CLI tools authenticate with one cookie file inside the root (the package's
# postinst writes one; a missing or empty one is made anew). Also the node's data and log dirs.
ensure_cookie() {
    local file="${ROOT}${COOKIE}" ids
    ids=$(rmq_ids)
    if ! "${SUDO[@]}" test -s "$file"; then
        log "writing the Erlang cookie ${file}"
        "${SUDO[@]}" install -d -o "${ids%:*}" -g "${ids#*:}" -m 0750 "${ROOT}${RMQ_HOME}"
        LC_ALL=C tr -dc 'A-Z' </dev/urandom | head -c 32 | "${SUDO[@]}" tee "${file}.tmp" >/dev/null
        "${SUDO[@]}" chmod 0400 "${file}.tmp"
        "${SUDO[@]}" chown "$ids" "${file}.tmp"
        "${SUDO[@]}" mv -f "${file}.tmp" "$file"
    fi
    # Erlang refuses a cookie others can read; the node and the CLI run as its owner.
    "${SUDO[@]}" chown "$ids" "$file"
    "${SUDO[@]}" chmod 0400 "$file"
    local dir
    for dir in "$MNESIA_BASE" "$LOG_BASE"; do
        "${SUDO[@]}" install -d -o "${ids%:*}" -g "${ids#*:}" -m 0750 "${ROOT}${dir}"
    done
}

# epmd on the host's port 4369: the host's if it runs one, else the root's.
ensure_epmd() {
    (exec 3<>"/dev/tcp/127.0.0.1/${EPMD_PORT}") 2>/dev/null && return 0
    log "no epmd on port ${EPMD_PORT}; starting the ${SUITE} root's (epmd -daemon)"
    as_rabbitmq 20 epmd -daemon >&2 || die "epmd -daemon failed"
    local deadline=$((SECONDS + 10))
    until (exec 3<>"/dev/tcp/127.0.0.1/${EPMD_PORT}") 2>/dev/null; do
        ((SECONDS < deadline)) || die "epmd does not listen on ${EPMD_PORT}"
        sleep 0.2
    done
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

# PIDs of the VM of our node: an Erlang VM whose root directory is the trixie root, that boots
# the rabbit application (not a CLI tool's VM) and was started with our RABBITMQ_NODENAME (the
# node name is not on RabbitMQ 4's command line) -- never the host's rabbit@<host> 3.10 node
# or any other node on the machine.
node_pids() {
    local pid cmd
    for pid in $(root_pids); do
        cmd=$("${SUDO[@]}" cat "/proc/${pid}/cmdline" 2>/dev/null | tr '\0' ' ') || continue
        [[ $cmd == *beam* && $cmd == *" -s rabbit boot "* ]] || continue
        "${SUDO[@]}" cat "/proc/${pid}/environ" 2>/dev/null | tr '\0' '\n' \
            | grep -qx "RABBITMQ_NODENAME=${NODENAME}" && printf '%s\n' "$pid"
    done
    return 0
}

# Our node answers (with our cookie), runs the rabbit app, and the AMQP port answers.
healthy() { root_ready && [[ -n $(node_pids) ]] && pinging && app_running && accepts_amqp; }

# Who listens on the AMQP port when it is not our node, for the error message.
port_owner() {
    local line pid exe proot
    line=$("${SUDO[@]}" ss -Hltnp "sport = :${PORT}" 2>/dev/null | head -n 1) || true
    pid=$(grep -o 'pid=[0-9]*' <<<"$line" | head -n 1 | cut -d= -f2)
    [[ -n $pid ]] || { echo "an unknown process"; return 0; }
    exe=$("${SUDO[@]}" cat "/proc/${pid}/cmdline" 2>/dev/null | tr '\0\n' '  ' | cut -c1-120)
    proot=$("${SUDO[@]}" readlink "/proc/${pid}/root" 2>/dev/null) || true
    if [[ $exe == *beam* && $proot == / ]]; then
        echo "another Erlang node, pid ${pid} (the host's own rabbitmq-server, e.g. Debian bookworm's 3.10?" \
            "Stop it: 'rabbitmqctl stop' or 'service rabbitmq-server stop'): ${exe}..."
    elif [[ -n $proot && $proot != / ]]; then
        echo "pid ${pid}, chrooted into ${proot}: ${exe}..."
    else
        echo "pid ${pid}: ${exe}..."
    fi
}

# The TLS listener completes a handshake with the test CA and the name "localhost". (Erlang
# opens the port even when it cannot read the key; only a handshake shows that it works.)
accepts_amqps() {
    timeout 10 openssl s_client -brief -connect "${HOST}:${TLS_PORT}" -servername "$TLS_HOST" \
        -verify_hostname "$TLS_HOST" -CAfile "${TLS_SRC_DIR}/ca.pem" -verify_return_error \
        </dev/null >/dev/null 2>&1
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

# Stop our node for good: `rabbitmqctl stop` (given $1 seconds; 0 = skip) if it answers, then
# signals to the VM's own pid (found before anything else; never by process name).
kill_node() {
    local polite=${1:-$STOP_TIMEOUT} pids pid
    pids=$(node_pids)
    if ((polite)) && pinging; then
        log "stopping RabbitMQ ${NODENAME}${pids:+ (VM ${pids})}: rabbitmqctl stop"
        as_rabbitmq "$polite" "${RMQ_BIN}/rabbitmqctl" -q stop >/dev/null 2>&1 \
            || log "rabbitmqctl stop failed or timed out"
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

# ---------------------------------------------------------------------------------------------
# Start / stop
# ---------------------------------------------------------------------------------------------

print_log_tail() {
    local f
    for f in "${ROOT}${LOG_BASE}/${NODENAME}.log" "${ROOT}${LOG_BASE}/startup_log" "${ROOT}${LOG_BASE}/startup_err"; do
        "${SUDO[@]}" test -s "$f" || continue
        log "last lines of $f:"
        "${SUDO[@]}" tail -n 40 "$f" >&2 || true
    done
}

start_node() {
    if accepts_tcp && [[ -z $(node_pids) ]]; then
        die "port ${PORT} on ${HOST} is taken by $(port_owner), not by this script's RabbitMQ ${NODENAME}"
    fi
    ensure_epmd
    log "starting RabbitMQ ${NODENAME} in ${ROOT} (rabbitmq-server -detached; logs in ${ROOT}${LOG_BASE})"
    # With a raised open-files limit: with 1024, a node holding a few hundred quorum queues runs
    # out of file handles and then accepts TCP connections but never completes an AMQP
    # handshake. 65536 is what the package's systemd unit sets (LimitNOFILE); we take the hard
    # limit if that is lower. The limit is set before chroot and inherited across it. The
    # launcher's output (the detached VM's goes nowhere) goes to startup_log/startup_err.
    # shellcheck disable=SC2016  # expanded by the inner shell
    "${SUDO[@]}" bash -c 'ulimit -n "$1" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
        shift; exec "$@"' _ "$OPEN_FILES" \
        timeout 60 chroot --userspec="$(rmq_ids)" --groups="$(rmq_ids | cut -d: -f2)" "$ROOT" \
        /usr/bin/env -i "${NODE_ENV[@]}" /bin/sh -c \
        'cd "$HOME" && exec "$@" >"$RABBITMQ_LOG_BASE/startup_log" 2>"$RABBITMQ_LOG_BASE/startup_err"' \
        _ "${RMQ_BIN}/rabbitmq-server" -detached 9>&- \
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

# The version the running node reports (e.g. 4.0.5).
server_version() { diag -q server_version 2>/dev/null | tail -n 1; }

# This script exists to run RabbitMQ 4: a node that reports anything older is not ours.
check_version() {
    local version
    version=$(server_version) || return 0
    if [[ $version =~ ^([0-9]+)\. ]] && ((BASH_REMATCH[1] < 4)); then
        die "node ${NODENAME} reports RabbitMQ ${version}; expected 4.x from Debian ${SUITE}"
    fi
    log "RabbitMQ ${version:-(unknown version)} (node ${NODENAME})"
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
    elif [[ -n $(node_pids) ]]; then
        # A VM from an earlier run that does not even answer ping: hung, stopped or half dead.
        log "a RabbitMQ VM ($(node_pids | paste -sd ' ')) is running but does not answer; restarting it"
        kill_node 0
    fi
    if ((!serving)); then
        start_node
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
    up | down | status | url | tls-url | version) (($# == 0)) || usage ;;&
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
