#!/usr/bin/env bash
# Run a real S3-compatible object store on this machine for tests and CI, without Docker.
#
# The store is S3Proxy (https://github.com/gaul/s3proxy) with its filesystem backend. It is
# fetched from Maven Central as one self-contained jar (~55 MB, ~5 s cold), whereas MinIO would
# have to be compiled from the Go module proxy (~2 min on 2 cores and ~2 GB of module/build
# cache). It is a real S3 server (SigV2/SigV4 auth, multipart, ranges, conditional writes), not
# an in-process mock like moto.
#
# Usage: scripts/services/s3.sh up|down|status|url
#   up      install if needed, start if not running, wait until it answers, and print the
#           endpoint URL (e.g. http://127.0.0.1:9000) as the last line on stdout.
#   down    stop the server. Data is kept in $CONVEYOR_RUN_DIR/s3/data (delete it to wipe).
#   status  say whether it runs; exit 0 when it runs and answers, 3 when it does not.
#   url     print the endpoint URL.
#
# Environment:
#   CONVEYOR_S3_URL         use this external endpoint: `up` only prints it, nothing is started.
#   CONVEYOR_S3_PORT        port on 127.0.0.1 (default 9000).
#   CONVEYOR_S3_ACCESS_KEY  access key (default conveyor).
#   CONVEYOR_S3_SECRET_KEY  secret key (default conveyor-secret).
#   CONVEYOR_CACHE_DIR      downloads (default ~/.cache/conveyor).
#   CONVEYOR_RUN_DIR        logs, pid file, data (default ~/.cache/conveyor/run).
#   CONVEYOR_S3_START_TIMEOUT  seconds `up` waits for the server (default 60).
#   CONVEYOR_S3_JAVA_OPTS   JVM options (default: small heap, serial GC).
#
# Clients: path-style addressing, any region (us-east-1 is fine), SigV4 (or V2).
set -euo pipefail

# Pinned release and the SHA-256 of its jar-with-dependencies on Maven Central. Bumping the
# version means updating the hash too: the install refuses a jar that does not match.
readonly S3PROXY_VERSION=4.1.0
readonly S3PROXY_SHA256=a4d025969aaf796616ed4b1e2491d87d455ce84bb28cb9db086b2e6aaa68b48d
readonly S3PROXY_ARTIFACT="org.gaul:s3proxy:${S3PROXY_VERSION}:jar:jar-with-dependencies"
# Pinned so that `copy -Dartifact=...` works without a pom (Maven 3.8's default plugin is 2.8).
readonly DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

readonly CACHE_DIR="${CONVEYOR_CACHE_DIR:-$HOME/.cache/conveyor}"
readonly RUN_DIR="${CONVEYOR_RUN_DIR:-$HOME/.cache/conveyor/run}"
readonly PORT="${CONVEYOR_S3_PORT:-9000}"
readonly ACCESS_KEY="${CONVEYOR_S3_ACCESS_KEY:-conveyor}"
readonly SECRET_KEY="${CONVEYOR_S3_SECRET_KEY:-conveyor-secret}"
readonly START_TIMEOUT="${CONVEYOR_S3_START_TIMEOUT:-60}"
# The JVM would otherwise size its heap from the machine (a quarter of RAM); S3Proxy streams
# object bodies to disk, so a small heap is plenty and keeps it a good neighbour to Pulsar.
readonly JAVA_OPTS="${CONVEYOR_S3_JAVA_OPTS:--Xms32m -Xmx384m -XX:+UseSerialGC}"

readonly INSTALL_DIR="$CACHE_DIR/s3proxy-$S3PROXY_VERSION"
readonly JAR="$INSTALL_DIR/s3proxy.jar"
readonly STATE_DIR="$RUN_DIR/s3"
readonly DATA_DIR="$STATE_DIR/data"
readonly CONF="$STATE_DIR/s3proxy.conf"
readonly PID_FILE="$STATE_DIR/s3proxy.pid"
readonly LOG="$STATE_DIR/s3proxy.log"
readonly ENDPOINT="http://127.0.0.1:$PORT"

# Everything but the URL goes to stderr, so `url=$(s3.sh up | tail -n1)` is all a caller needs.
log() { printf 's3: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" >&2
    exit 2
}

# ---------------------------------------------------------------------------------------------
# Install
# ---------------------------------------------------------------------------------------------

java_major() {
    # `java -version` prints e.g. 'openjdk version "17.0.15" 2025-04-15' (or "1.8.0_x" for 8).
    java -version 2>&1 | awk -F'"' '/version/ { split($2, v, "."); print (v[1] == 1 ? v[2] : v[1]); exit }'
}

ensure_tools() {
    local missing=()
    command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
    command -v mvn >/dev/null || missing+=(maven)
    command -v curl >/dev/null || missing+=(curl)
    command -v flock >/dev/null || missing+=(util-linux)
    if ((${#missing[@]})); then
        # A fresh machine of another image may lack them; Debian's packages are reachable.
        if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
            log "installing ${missing[*]} with apt-get"
            apt-get update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
        else
            die "missing tools: ${missing[*]} (install them, e.g. apt-get install ${missing[*]})"
        fi
    fi
    local major
    major=$(java_major)
    if ! [[ $major =~ ^[0-9]+$ ]] || ((major < 17)); then
        die "S3Proxy $S3PROXY_VERSION needs Java 17+, found '${major:-?}'"
    fi
}

jar_is_good() { [[ -f $1 ]] && [[ $(sha256sum "$1" | cut -d' ' -f1) == "$S3PROXY_SHA256" ]]; }

install_s3proxy() {
    # Re-hashing costs ~0.1 s and catches a cache damaged by hand; the atomic rename below is
    # what keeps a killed install from ever leaving a partial jar at $JAR.
    if jar_is_good "$JAR"; then
        return 0
    fi
    [[ -e $JAR ]] && log "cached $JAR does not match its pinned hash; fetching it again"
    ensure_tools
    mkdir -p "$INSTALL_DIR"
    # Leftovers of an install that was SIGKILLed (no trap ran). We hold the lock, so no other
    # install is using them.
    rm -rf "$INSTALL_DIR"/.tmp.*
    local tmp
    # Same directory as the target, so the final mv is a rename on one filesystem.
    tmp=$(mktemp -d "$INSTALL_DIR/.tmp.XXXXXX")
    # shellcheck disable=SC2064  # expand $tmp now: it is local to this function.
    trap "rm -rf '$tmp'" EXIT
    log "fetching S3Proxy $S3PROXY_VERSION from Maven Central"
    # -C: fail (not just warn) on a checksum mismatch. Run from $tmp so no stray pom.xml in the
    # caller's directory is picked up. The normal local Maven repo (~/.m2) is used and kept, so
    # it is shared with the other service scripts and cached between runs.
    if ! (cd "$tmp" && mvn -B -q -C "$DEPENDENCY_PLUGIN:copy" \
        -Dartifact="$S3PROXY_ARTIFACT" -DoutputDirectory="$tmp/out" \
        -Dmdep.stripVersion=true) >"$tmp/mvn.log" 2>&1; then
        tail -n 30 "$tmp/mvn.log" >&2
        die "could not fetch $S3PROXY_ARTIFACT"
    fi
    local got="$tmp/out/s3proxy-jar-with-dependencies.jar"
    jar_is_good "$got" || die "$S3PROXY_ARTIFACT does not match the pinned SHA-256 $S3PROXY_SHA256"
    mv -f "$got" "$JAR"
    rm -rf "$tmp"
    trap - EXIT
    log "installed $JAR"
}

# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------

write_config() {
    # jclouds.* are S3Proxy's historical backend keys; in 4.x "filesystem" is its own NIO
    # store, which keeps user metadata in extended attributes (the data dir's filesystem must
    # support user xattrs: ext4, xfs, btrfs do).
    local tmp
    tmp=$(mktemp "$STATE_DIR/.conf.XXXXXX")
    chmod 600 "$tmp" # it holds the secret
    cat >"$tmp" <<EOF
s3proxy.endpoint=$ENDPOINT
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity=$ACCESS_KEY
s3proxy.credential=$SECRET_KEY
jclouds.provider=filesystem
jclouds.filesystem.basedir=$DATA_DIR
EOF
    printf '%s' "$tmp"
}

# Print the pid of our running server, or fail. A pid file alone is not trusted: after a reboot
# or a crash the pid may belong to an unrelated process.
running_pid() {
    local pid
    [[ -f $PID_FILE ]] || return 1
    pid=$(<"$PID_FILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$JAR" || return 1
    printf '%s\n' "$pid"
}

# True when an S3 server answers HTTP on $1. An unsigned `GET /` gets 403 AccessDenied from a
# healthy S3Proxy (S3Proxy has no health endpoint); any HTTP status means it serves requests.
answers() {
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1/" 2>/dev/null) || true
    [[ -n $code && $code != 000 ]]
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

start_server() {
    mkdir -p "$DATA_DIR"
    if port_in_use; then
        die "port $PORT on 127.0.0.1 is taken by another process; set CONVEYOR_S3_PORT or stop it"
    fi
    local conf
    conf=$(write_config)
    mv -f "$conf" "$CONF"
    # Keep the previous run's log for post-mortems instead of growing one file forever.
    [[ -f $LOG ]] && mv -f "$LOG" "$LOG.1"
    log "starting S3Proxy $S3PROXY_VERSION on $ENDPOINT (log: $LOG)"
    # setsid: own session, so a Ctrl-C or the end of the calling job does not take the server
    # down with it. bash writes its own pid and then execs java, so the pid file names the JVM
    # itself. 9>&- closes the lock fd: an inherited lock would block the next `up`/`down`.
    # shellcheck disable=SC2016,SC2086  # $$ is for the inner bash; JAVA_OPTS is split on purpose.
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PID_FILE" \
        java $JAVA_OPTS -jar "$JAR" --properties "$CONF" \
        </dev/null >>"$LOG" 2>&1 9>&- &
}

wait_ready() {
    local deadline=$((SECONDS + START_TIMEOUT)) pid
    while ((SECONDS < deadline)); do
        if pid=$(running_pid); then
            if answers "$ENDPOINT"; then
                log "ready (pid $pid)"
                return 0
            fi
        elif [[ -f $PID_FILE ]] && ! kill -0 "$(<"$PID_FILE")" 2>/dev/null; then
            tail -n 30 "$LOG" >&2 || true
            die "S3Proxy exited during start-up (log above, full log: $LOG)"
        fi
        sleep 0.2
    done
    tail -n 30 "$LOG" >&2 || true
    die "S3Proxy did not answer on $ENDPOINT within ${START_TIMEOUT}s (log: $LOG)"
}

stop_server() {
    local pid
    if ! pid=$(running_pid); then
        rm -f "$PID_FILE"
        log "not running"
        return 0
    fi
    log "stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 15))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid ignored SIGTERM for 15 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
    log "stopped"
}

# Serialise up/down: parallel CI steps calling `up` must not start two servers on one port.
take_lock() { hold_lock "$STATE_DIR/.lock" 300; }

# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------

cmd_up() {
    if [[ -n ${CONVEYOR_S3_URL:-} ]]; then
        printf '%s\n' "$CONVEYOR_S3_URL"
        return 0
    fi
    take_lock
    install_s3proxy
    local pid
    if pid=$(running_pid); then
        # Already up: fine if it runs with the settings asked for now, an error otherwise,
        # since tests would otherwise talk to a server with other credentials or port.
        local conf
        conf=$(write_config)
        if ! cmp -s "$conf" "$CONF"; then
            rm -f "$conf"
            die "S3Proxy (pid $pid) runs with other settings (port/keys); run '$0 down' first"
        fi
        rm -f "$conf"
        log "already running (pid $pid)"
    else
        rm -f "$PID_FILE"
        # CONVEYOR_SCRATCH_SERVER=1 (scripts/test's own `up` only): a store that is not running starts
        # empty; what a killed run left (half-written objects among them) is scratch.
        if [[ ${CONVEYOR_SCRATCH_SERVER:-} == 1 && -d $DATA_DIR ]]; then
            log "starting from an empty store (CONVEYOR_SCRATCH_SERVER=1): removing ${DATA_DIR}"
            rm -rf "$DATA_DIR"
        fi
        start_server
    fi
    wait_ready
    printf '%s\n' "$ENDPOINT"
}

cmd_down() {
    take_lock
    stop_server
}

cmd_status() {
    if [[ -n ${CONVEYOR_S3_URL:-} ]]; then
        if answers "$CONVEYOR_S3_URL"; then
            echo "external S3 at $CONVEYOR_S3_URL answers"
            return 0
        fi
        echo "external S3 at $CONVEYOR_S3_URL does not answer"
        return 3
    fi
    local pid
    if pid=$(running_pid) && answers "$ENDPOINT"; then
        echo "running: S3Proxy $S3PROXY_VERSION pid $pid at $ENDPOINT (data: $DATA_DIR)"
        return 0
    elif [[ -n ${pid:-} ]]; then
        echo "starting or hung: pid $pid does not answer on $ENDPOINT (log: $LOG)"
        return 3
    fi
    echo "not running"
    return 3
}

cmd_url() { printf '%s\n' "${CONVEYOR_S3_URL:-$ENDPOINT}"; }

main() {
    [[ $# == 1 ]] || usage
    case $1 in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    url) cmd_url ;;
    -h | --help | help) usage ;;
    *) usage ;;
    esac
}

main "$@"
