#!/usr/bin/env bash
# Run a REAL PostgreSQL server on this machine for tests and CI, without Docker.
#
# The server is Debian's `postgresql` package, but not its system cluster: a private cluster
# (initdb/pg_ctl) in $CONVEYOR_RUN_DIR/postgres, listening on 127.0.0.1:5433 only (5432 stays
# free for a system cluster), with a database `conveyor` owned by the user conveyor/conveyor.
# PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user
# the package creates; as any other user it belongs to that user.
#
# Usage: scripts/services/postgres.sh up|down|status|url
#   up      install the package if needed, create the cluster if needed, start it if it is not
#           healthy, wait until it is, make sure the user and database exist, and print
#           postgresql://conveyor:conveyor@127.0.0.1:5433/conveyor as the last line on stdout.
#   down    stop the cluster (fast shutdown; a hung server is killed). Data is kept.
#   status  say whether it runs; exit 0 when it accepts logins, 3 when not.
#   url     print the URL.
#
# Environment:
#   CONVEYOR_DATABASE_URL            use this external server: `up` only prints it.
#   CONVEYOR_RUN_DIR                 lock file and cluster (default ~/.cache/conveyor/run).
#   CONVEYOR_POSTGRES_DIR            the cluster's directory (default $CONVEYOR_RUN_DIR/postgres;
#                                    as root, when the postgres user cannot reach that path,
#                                    e.g. under a mode-700 /root, ~postgres/conveyor-cluster).
#   CONVEYOR_POSTGRES_PORT           port on 127.0.0.1 (default 5433).
#   CONVEYOR_POSTGRES_START_TIMEOUT  seconds `up` waits for the server (default 60).
#
# Needs root or password-less sudo only to install the package.
set -euo pipefail

readonly RUN_DIR="${CONVEYOR_RUN_DIR:-$HOME/.cache/conveyor/run}"
readonly HOST="127.0.0.1"
readonly PORT="${CONVEYOR_POSTGRES_PORT:-5433}"
readonly START_TIMEOUT="${CONVEYOR_POSTGRES_START_TIMEOUT:-60}"
readonly STOP_TIMEOUT=60
readonly DB_NAME="conveyor"
readonly DB_USER="conveyor"
readonly DB_PASSWORD="conveyor"
readonly SUPERUSER="postgres"  # the cluster's bootstrap superuser: trusted on its private socket only
readonly DB_URL="postgresql://${DB_USER}:${DB_PASSWORD}@${HOST}:${PORT}/${DB_NAME}"

# Everything but the URL goes to stderr, so `url=$(postgres.sh up | tail -n1)` is all a caller
# needs.
log() { printf 'postgres: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
if [[ $(id -u) == 0 ]]; then SVC_USER="postgres"; else SVC_USER="$(id -un)"; fi

# Set by resolve_layout once the package is installed.
PG_BIN=""
SVC_HOME=""
CLUSTER_DIR=""
DATA_DIR=""
SOCKET_DIR=""
LOG_FILE=""

# ---------------------------------------------------------------------------------------------
# Install
# ---------------------------------------------------------------------------------------------

# The newest installed server's bin directory (Debian keeps one per major version).
find_pg_bin() {
    local dir best=""
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres && -x $dir/psql ]] || continue
        best=$(printf '%s\n%s\n' "$best" "$dir" | sed '/^$/d' | sort -V | tail -n 1)
    done
    printf '%s\n' "$best"
}

installed() { [[ -n $(find_pg_bin) ]]; }

install_package() {
    installed && return 0
    apt_install_package postgresql
    installed || die "no PostgreSQL server binaries under /usr/lib/postgresql after apt-get install"
}

# ---------------------------------------------------------------------------------------------
# Layout and running things as the cluster's owner
# ---------------------------------------------------------------------------------------------

# Run a command as the cluster's owner, from / (the caller's directory may be unreadable to
# it), with that user's HOME. The lock fd 9 is not passed on.
as_svc() {
    if [[ $(id -u) == 0 ]]; then
        (cd / && runuser -u "$SVC_USER" -- env HOME="$SVC_HOME" "$@") 9>&-
    else
        (cd / && "$@") 9>&-
    fi
}

ensure_svc_user() {
    [[ $(id -u) == 0 ]] || { SVC_HOME=$HOME; return 0; }
    if ! getent passwd "$SVC_USER" >/dev/null; then
        # The package creates it; a half-installed system may lack it.
        log "creating the system user ${SVC_USER}"
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash "$SVC_USER" \
            || die "could not create the user ${SVC_USER}"
    fi
    SVC_HOME=$(getent passwd "$SVC_USER" | cut -d: -f6)
    [[ -n $SVC_HOME ]] || SVC_HOME=/
}

# Can the cluster's owner reach (search) and write directory $1?
svc_can_use() { as_svc test -d "$1" -a -x "$1" -a -w "$1" 2>/dev/null; }

resolve_layout() {
    PG_BIN=$(find_pg_bin)
    [[ -n $PG_BIN ]] || die "no PostgreSQL server binaries under /usr/lib/postgresql"
    ensure_svc_user
    local wanted="${CONVEYOR_POSTGRES_DIR:-$RUN_DIR/postgres}"
    mkdir -p "$wanted" 2>/dev/null || "${SUDO[@]}" mkdir -p "$wanted"
    if [[ $(id -u) == 0 ]]; then
        chown "$SVC_USER:" "$wanted"
        chmod 700 "$wanted"
    fi
    if svc_can_use "$wanted"; then
        CLUSTER_DIR=$wanted
    elif [[ -z ${CONVEYOR_POSTGRES_DIR:-} && $(id -u) == 0 ]]; then
        # E.g. $HOME=/root is mode 700: the postgres user cannot even look inside. Use its own
        # home rather than opening up root's.
        CLUSTER_DIR="${SVC_HOME%/}/conveyor-cluster"
        [[ -e $wanted/cluster-location ]] || log "the ${SVC_USER} user cannot reach ${wanted}; using ${CLUSTER_DIR}"
        mkdir -p "$CLUSTER_DIR"
        chown "$SVC_USER:" "$CLUSTER_DIR"
        chmod 700 "$CLUSTER_DIR"
        svc_can_use "$CLUSTER_DIR" || die "the ${SVC_USER} user cannot use ${CLUSTER_DIR} either"
        printf '%s\n' "$CLUSTER_DIR" >"$wanted/cluster-location"
    else
        die "${SVC_USER} cannot use ${wanted}: pick another CONVEYOR_POSTGRES_DIR"
    fi
    DATA_DIR="$CLUSTER_DIR/data"
    SOCKET_DIR="$CLUSTER_DIR/socket"
    LOG_FILE="$CLUSTER_DIR/postgres.log"
}

pg() { local tool=$1; shift; as_svc "$PG_BIN/$tool" "$@"; }

# ---------------------------------------------------------------------------------------------
# Cluster
# ---------------------------------------------------------------------------------------------

init_cluster() {
    if [[ -f $DATA_DIR/PG_VERSION ]]; then
        local have want
        have=$(<"$DATA_DIR/PG_VERSION")
        want=$(basename "$(dirname "$PG_BIN")")
        [[ $have == "$want" ]] || die "the cluster in ${DATA_DIR} is PostgreSQL ${have}, the server is ${want}: delete ${DATA_DIR} to re-create it"
        return 0
    fi
    if [[ -d $DATA_DIR ]]; then
        # An initdb that died half way leaves a directory initdb refuses to reuse. It is ours
        # and holds nothing yet (no PG_VERSION): start over.
        log "removing the half-initialised cluster in ${DATA_DIR}"
        rm -rf "$DATA_DIR"
    fi
    log "creating a cluster in ${DATA_DIR} (PostgreSQL $(basename "$(dirname "$PG_BIN")"))"
    pg initdb -D "$DATA_DIR" -U "$SUPERUSER" -E UTF8 --no-locale \
        --auth-local=trust --auth-host=scram-sha-256 >"$CLUSTER_DIR/initdb.log" 2>&1 || {
        tail -n 30 "$CLUSTER_DIR/initdb.log" >&2 || true
        die "initdb failed"
    }
    printf "\n# Conveyor's test settings (rewritten by scripts/services/postgres.sh up)\ninclude_if_exists = 'conveyor.conf'\n" \
        | as_svc tee -a "$DATA_DIR/postgresql.conf" >/dev/null
}

# Rewritten on every `up`, so a changed port takes effect at the next start.
write_config() {
    local fsync=on
    [[ ${CONVEYOR_NO_FSYNC:-} == 1 ]] && fsync=off
    as_svc mkdir -p "$SOCKET_DIR"
    as_svc chmod 700 "$SOCKET_DIR"
    as_svc tee "$DATA_DIR/conveyor.conf" >/dev/null <<EOF
listen_addresses = '${HOST}'
port = ${PORT}
unix_socket_directories = '${SOCKET_DIR}'
unix_socket_permissions = 0700
password_encryption = 'scram-sha-256'
max_connections = 200
shared_buffers = '128MB'
# Commits are written to the OS before they return (the tests kill sessions and workers, and
# check what survives), but a test run's cluster (CONVEYOR_NO_FSYNC=1, exported by scripts/test) does
# not fsync: only a machine crash could lose what the OS holds, and on a CI machine with a slow
# disk every commit would otherwise wait for one. No checkpoint stalls a CI run either.
fsync = ${fsync}
synchronous_commit = on
checkpoint_timeout = '15min'
max_wal_size = '1GB'
log_min_messages = warning
log_line_prefix = '%m [%p] %u@%d '
EOF
}

# The postmaster's pid if postmaster.pid names a live process whose working directory is our
# data directory (the postmaster chdirs there). A stale file, or one whose pid now belongs to
# another process, gives nothing.
server_pid() {
    local pid
    [[ -r $DATA_DIR/postmaster.pid ]] || return 0
    pid=$(head -n 1 "$DATA_DIR/postmaster.pid" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    [[ $(readlink -f "/proc/$pid/cwd" 2>/dev/null) == "$(readlink -f "$DATA_DIR")" ]] || return 0
    printf '%s\n' "$pid"
}

remove_stale_files() {
    if [[ -e $DATA_DIR/postmaster.pid ]]; then
        log "removing the stale pid file ${DATA_DIR}/postmaster.pid"
        rm -f "$DATA_DIR/postmaster.pid"
    fi
    rm -f "$SOCKET_DIR/.s.PGSQL.${PORT}" "$SOCKET_DIR/.s.PGSQL.${PORT}.lock"
}

accepts_tcp() { (exec 3<>"/dev/tcp/${HOST}/${PORT}") 2>/dev/null; }

# The server answers on its private socket (as the superuser, no password).
socket_ready() {
    timeout 10 "$PG_BIN/pg_isready" -q -h "$SOCKET_DIR" -p "$PORT" -U "$SUPERUSER" -d postgres >/dev/null 2>&1
}

# The test user can log in over TCP with its password and run a query.
login_works() {
    local out
    out=$(PGPASSWORD="$DB_PASSWORD" PGCONNECT_TIMEOUT=5 timeout 15 "$PG_BIN/psql" -X -qAt \
        -h "$HOST" -p "$PORT" -U "$DB_USER" -d "$DB_NAME" -c 'SELECT 1' 2>/dev/null) || return 1
    [[ $out == 1 ]]
}

print_log_tail() {
    [[ -s $LOG_FILE ]] || return 0
    log "last lines of ${LOG_FILE}:"
    tail -n 40 "$LOG_FILE" >&2 || true
}

start_server() {
    if accepts_tcp; then
        die "port ${PORT} on ${HOST} is taken by a process that is not this cluster (set CONVEYOR_POSTGRES_PORT)"
    fi
    remove_stale_files
    log "starting PostgreSQL on ${HOST}:${PORT} (data ${DATA_DIR}, log ${LOG_FILE})"
    pg pg_ctl start -D "$DATA_DIR" -l "$LOG_FILE" -w -t "$START_TIMEOUT" -s >&2 \
        || { print_log_tail; die "pg_ctl start failed"; }
}

wait_socket_ready() {
    local deadline=$((SECONDS + START_TIMEOUT))
    until socket_ready; do
        if ((SECONDS >= deadline)); then
            print_log_tail
            die "PostgreSQL not ready after ${START_TIMEOUT}s"
        fi
        sleep 0.5
    done
}

# The test role and database, idempotently; a changed password is reset.
ensure_role_and_database() {
    pg psql -X -q -v ON_ERROR_STOP=1 -h "$SOCKET_DIR" -p "$PORT" -U "$SUPERUSER" -d postgres >/dev/null <<EOF || die "could not create the role or database"
SELECT format('CREATE ROLE %I LOGIN', '${DB_USER}')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${DB_USER}')\\gexec
ALTER ROLE ${DB_USER} WITH LOGIN PASSWORD '${DB_PASSWORD}';
SELECT format('CREATE DATABASE %I OWNER %I', '${DB_NAME}', '${DB_USER}')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '${DB_NAME}')\\gexec
EOF
}

# Stop our server for good: fast shutdown, then immediate, then SIGKILL to the postmaster's
# own pid (never by process name).
stop_server() {
    local pid
    pid=$(server_pid)
    [[ -n $pid ]] || return 0
    log "stopping PostgreSQL (postmaster ${pid})"
    pg pg_ctl stop -D "$DATA_DIR" -m fast -w -t "$STOP_TIMEOUT" -s >&2 2>/dev/null && return 0
    log "fast shutdown timed out; immediate shutdown"
    pg pg_ctl stop -D "$DATA_DIR" -m immediate -w -t 15 -s >&2 2>/dev/null && return 0
    pid=$(server_pid)
    [[ -n $pid ]] || return 0
    log "postmaster ${pid} ignored shutdown; sending SIGKILL"
    kill -CONT "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    ! kill -0 "$pid" 2>/dev/null || die "postmaster ${pid} survived SIGKILL"
}

# Serialise up/down: parallel CI steps calling `up` must not start two servers.
take_lock() { hold_lock "$RUN_DIR/postgres.lock" 300; }

# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------

cmd_up() {
    if [[ -n ${CONVEYOR_DATABASE_URL:-} ]]; then
        printf '%s\n' "$CONVEYOR_DATABASE_URL"
        return 0
    fi
    take_lock
    install_package
    resolve_layout
    # CONVEYOR_SCRATCH_SERVER=1 (scripts/test's own `up` only): a cluster that is not running starts
    # empty. Its data is the tests' scratch, and a run killed half way must not leave the next
    # one its tables, rows or a half-recovered cluster.
    if [[ ${CONVEYOR_SCRATCH_SERVER:-} == 1 && -z $(server_pid) && -d $DATA_DIR ]]; then
        log "starting from an empty cluster (CONVEYOR_SCRATCH_SERVER=1): removing ${DATA_DIR}"
        rm -rf "$DATA_DIR"
    fi
    init_cluster
    write_config
    local running_port
    running_port=$(sed -n 4p "$DATA_DIR/postmaster.pid" 2>/dev/null || true)
    if [[ -n $(server_pid) && $running_port != "$PORT" ]]; then
        log "the cluster runs on port ${running_port:-?}, not ${PORT}; restarting it"
        stop_server
    fi
    if [[ -n $(server_pid) ]]; then
        if socket_ready; then
            log "already running (postmaster $(server_pid))"
        else
            # Still starting (another run's start), or wedged: give it the start timeout.
            local deadline=$((SECONDS + START_TIMEOUT))
            until socket_ready || ((SECONDS >= deadline)); do sleep 0.5; done
            if ! socket_ready; then
                log "the running server does not answer; restarting it"
                stop_server
            fi
        fi
    fi
    [[ -n $(server_pid) ]] || start_server
    wait_socket_ready
    ensure_role_and_database
    if ! login_works; then
        print_log_tail
        die "user ${DB_USER} cannot log in to ${HOST}:${PORT}/${DB_NAME}"
    fi
    log "ready: ${DB_URL/:${DB_PASSWORD}@/:***@}"
    printf '%s\n' "$DB_URL"
}

cmd_down() {
    if [[ -n ${CONVEYOR_DATABASE_URL:-} ]]; then
        log "CONVEYOR_DATABASE_URL is set: an external server is not ours to stop"
        return 0
    fi
    take_lock
    if ! installed; then
        log "not installed"
        return 0
    fi
    resolve_layout
    if [[ -z $(server_pid) ]]; then
        log "not running"
        return 0
    fi
    stop_server
    log "stopped"
}

# host and port of a postgres[ql]:// URL (default port 5432).
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
        port=5432
    fi
    printf '%s %s\n' "${host:-localhost}" "$port"
}

cmd_status() {
    if [[ -n ${CONVEYOR_DATABASE_URL:-} ]]; then
        local host port
        read -r host port < <(url_host_port "$CONVEYOR_DATABASE_URL")
        if timeout 5 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null; then
            echo "external PostgreSQL at ${host}:${port} accepts connections"
            return 0
        fi
        echo "external PostgreSQL at ${host}:${port} does not accept connections"
        return 3
    fi
    if ! installed; then
        echo "not installed"
        return 3
    fi
    resolve_layout
    local pid
    pid=$(server_pid)
    if [[ -n $pid ]] && login_works; then
        echo "running: PostgreSQL at ${HOST}:${PORT} (postmaster ${pid}, data ${DATA_DIR})"
        return 0
    elif [[ -n $pid ]]; then
        echo "starting or unhealthy: postmaster ${pid} (log: ${LOG_FILE})"
        return 3
    fi
    echo "not running"
    return 3
}

cmd_url() { printf '%s\n' "${CONVEYOR_DATABASE_URL:-$DB_URL}"; }

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
