# Sourced by scripts/services/*.sh after they define log() and die(): what they share.

if [[ $(id -u) == 0 ]]; then SUDO=(); else SUDO=(sudo -n); fi

# apt_install_package PACKAGE — install a Debian package without letting it start its service.
#
# Server packages' postinst scripts run `invoke-rc.d <service> start`; without systemd that may
# fail (failing the whole install) or start a system-wide server behind our back. A policy-rc.d
# answering 101 ("action forbidden") makes invoke-rc.d skip it: each script runs its own server.
# An existing policy (Docker images ship one) is left alone. apt-get update runs only when apt
# has no candidate for the package (empty or stale lists on a fresh machine).
apt_install_package() {
    local package=$1 candidate policy=/usr/sbin/policy-rc.d added_policy=0 rc=0
    command -v apt-get >/dev/null || die "$package is not installed and apt-get is missing"
    candidate=$(apt-cache policy "$package" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [[ -z $candidate || $candidate == "(none)" ]]; then
        log "$package not in the apt cache; running apt-get update"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
    fi
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# added by conveyor %s during package install\nexit 101\n' "$(basename "$0")" \
            | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        added_policy=1
    fi
    log "installing the Debian package $package"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$package" >&2 || rc=$?
    if ((added_policy)); then
        "${SUDO[@]}" rm -f "$policy"
    fi
    ((rc == 0)) || die "apt-get install $package failed (exit $rc)"
}

# hold_lock FILE [SECONDS] — serialise a script's up/down across processes (parallel CI steps must
# not start two servers): an exclusive flock on fd 9, held until the script exits. Without
# SECONDS it waits for as long as the holder takes.
hold_lock() {
    mkdir -p "$(dirname "$1")"
    exec 9>"$1"
    flock ${2:+-w "$2"} 9 || die "timed out waiting for $1"
}

# =============================================================================================
# RabbitMQ 4 in a Debian trixie root: shared by rabbitmq.sh (the single node) and
# rabbitmq-cluster.sh (three nodes). The caller defines, before sourcing: CACHE_DIR, SUITE, ROOT,
# BUILD_LOG, BASE_MARKER, READY_MARKER, RMQ_BIN, RMQ_HOME, COOKIE, EPMD_PORT, OPEN_FILES,
# START_TIMEOUT, STOP_TIMEOUT, AMQP_USER, AMQP_PASSWORD, VHOST; and for the node these functions
# act on (the cluster script switches them per node): NODENAME, HOST, PORT, MNESIA_BASE, LOG_BASE
# and NODE_ENV (the environment of every RabbitMQ program run for that node).
# =============================================================================================
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

# CONVEYOR_SCRATCH_SERVER=1 (scripts/test sets it for its own `up` calls only) marks the node
# as a test run's scratch. A node that is not running starts from an empty data dir: what a run
# that was killed left there (half-written quorum-queue logs, its queues, its policies) must not
# decide the next run. Its quorum-queue log is not synced to disk (CONVEYOR_NO_FSYNC, see
# start_node). A running node, and every `up` the tests make to restart one (they expect
# its durable queues back), keep their data.
wipe_data_unless_running() {
    [[ ${CONVEYOR_SCRATCH_SERVER:-} == 1 ]] || return 0
    [[ -z $(node_pids) ]] || return 0
    log "starting ${NODENAME} from an empty data dir (CONVEYOR_SCRATCH_SERVER=1)"
    "${SUDO[@]}" find "${ROOT}${MNESIA_BASE}" -mindepth 1 -maxdepth 1 -name "${NODENAME}*" \
        -exec rm -rf {} +
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

# With CONVEYOR_NO_FSYNC=1 (scripts/test exports it to the whole run, so a node a test restarts
# keeps it), the quorum queues write their log without fsync (Ra's
# wal_sync_method none): the tests kill brokers, never the machine, and a killed VM's writes are
# in the page cache already, so nothing they check changes; on a CI machine with a slow disk
# every confirm would otherwise wait for an fsync.

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
    # The node's own environment, plus (no fsync) Ra's wal_sync_method, added to the Erlang
    # arguments the node may already have (a cluster node's net_ticktime and source address:
    # a second RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS would replace them).
    local env=("${NODE_ENV[@]}") i extra=0
    if [[ ${CONVEYOR_NO_FSYNC:-} == 1 ]]; then
        for i in "${!env[@]}"; do
            if [[ ${env[$i]} == RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=* ]]; then
                env[i]+=" -ra wal_sync_method none"
                extra=1
            fi
        done
        ((extra)) || env+=("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-ra wal_sync_method none")
    fi
    # shellcheck disable=SC2016  # expanded by the inner shell
    "${SUDO[@]}" bash -c 'ulimit -n "$1" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
        shift; exec "$@"' _ "$OPEN_FILES" \
        timeout 60 chroot --userspec="$(rmq_ids)" --groups="$(rmq_ids | cut -d: -f2)" "$ROOT" \
        /usr/bin/env -i "${env[@]}" /bin/sh -c \
        'cd "$HOME" && exec "$@" >"$RABBITMQ_LOG_BASE/startup_log" 2>"$RABBITMQ_LOG_BASE/startup_err"' \
        _ "${RMQ_BIN}/rabbitmq-server" -detached 9>&- \
        || { print_log_tail; die "rabbitmq-server -detached failed"; }
}

# NODE_ENV: the environment of every RabbitMQ program run in the root for the node selected
# (server and CLI tools alike), plus "$@". The caller's environment is not passed in: a
# RABBITMQ_NODENAME or ERL_* of the caller's (one meant for another node, e.g. the host's own
# rabbitmq-server) must not redirect us.
set_node_env() {
    NODE_ENV=(
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
        "$@"
    )
}

# Bring the node selected (NODENAME, PORT, NODE_ENV …) to a start: a VM that answers ping is left
# alone (return 1); a VM that does not (hung, stopped or half dead) is killed; then the node is
# started (return 0) and the caller waits for it with wait_ready, after starting any other nodes
# first (a cluster whose nodes all stopped needs its peers to boot).
start_unless_up() {
    if [[ -n $(node_pids) ]]; then
        pinging && return 1
        log "a RabbitMQ VM of ${NODENAME} ($(node_pids | paste -sd ' ')) is running but does not answer; restarting it"
        kill_node 0
    fi
    start_node
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
