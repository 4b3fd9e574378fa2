#!/usr/bin/env bash
# Run a REAL Prometheus server on this machine, scraping Conveyor workers, without Docker.
#
# The server is Debian's `prometheus` package (2.42 on bookworm), which also brings `promtool`.
# It listens on 127.0.0.1 only, scrapes the given worker /metrics endpoints and loads the alert
# and recording rules of deploy/prometheus/rules/. Its data is throwaway (under the run dir).
#
# Usage: scripts/services/prometheus.sh up|down|status|url|install
#   up      install the package if needed, start the server if it is not running, wait until it
#           is ready, and print its URL (http://127.0.0.1:9090) as the last line on stdout.
#   down    stop the server.
#   status  say whether it runs; exit 0 when it runs and is ready, 3 when not.
#   url     print the URL.
#   install only install the package (prometheus + promtool); used by scripts/check-deploy.
#
# Environment:
#   CONVEYOR_PROMETHEUS_URL        use this external server: `up` only prints it.
#   CONVEYOR_PROMETHEUS_PORT       port on 127.0.0.1 (default 9090).
#   CONVEYOR_PROMETHEUS_TARGETS    comma-separated host:port of worker metrics endpoints
#                                  (default 127.0.0.1:9464, the worker's default).
#   CONVEYOR_PROMETHEUS_SCRAPE_INTERVAL  scrape and rule evaluation interval (default 5s).
#   CONVEYOR_RUN_DIR               config, data, pid file, log (default ~/.cache/conveyor/run).
#   CONVEYOR_PROMETHEUS_START_TIMEOUT    seconds `up` waits for readiness (default 60).
set -euo pipefail

readonly ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly RUN_DIR="${CONVEYOR_RUN_DIR:-$HOME/.cache/conveyor/run}"
readonly PORT="${CONVEYOR_PROMETHEUS_PORT:-9090}"
readonly TARGETS="${CONVEYOR_PROMETHEUS_TARGETS:-127.0.0.1:9464}"
readonly SCRAPE_INTERVAL="${CONVEYOR_PROMETHEUS_SCRAPE_INTERVAL:-5s}"
readonly START_TIMEOUT="${CONVEYOR_PROMETHEUS_START_TIMEOUT:-60}"
readonly RULES_DIR="$ROOT/deploy/prometheus/rules"

readonly STATE_DIR="$RUN_DIR/prometheus-$PORT"
readonly CONF="$STATE_DIR/prometheus.yml"
readonly DATA_DIR="$STATE_DIR/data"
readonly PID_FILE="$STATE_DIR/prometheus.pid"
readonly LOG="$STATE_DIR/prometheus.log"
readonly URL="http://127.0.0.1:$PORT"

# Everything but the URL goes to stderr, so `url=$(prometheus.sh up | tail -n1)` is enough.
log() { printf 'prometheus: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" >&2; exit 2; }

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------------------------------------
# Install
# ---------------------------------------------------------------------------------------------

installed() { command -v prometheus >/dev/null && command -v promtool >/dev/null; }

install_package() {
    installed && return 0
    apt_install_package prometheus
    installed || die "prometheus still not installed after apt-get install"
}

# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------

write_config() {
    local tmp target
    tmp=$(mktemp "$STATE_DIR/.conf.XXXXXX")
    {
        printf 'global:\n  scrape_interval: %s\n  evaluation_interval: %s\n' "$SCRAPE_INTERVAL" "$SCRAPE_INTERVAL"
        printf 'rule_files:\n  - %s/*.yml\n' "$RULES_DIR"
        printf 'scrape_configs:\n  - job_name: conveyor-worker\n    static_configs:\n      - targets:\n'
        IFS=',' read -ra list <<<"$TARGETS"
        for target in "${list[@]}"; do
            [[ $target =~ ^[A-Za-z0-9._-]+:[0-9]+$ ]] || die "not a host:port target: '$target'"
            printf '          - "%s"\n' "$target"
        done
    } >"$tmp"
    printf '%s' "$tmp"
}

running_pid() {
    local pid
    [[ -f $PID_FILE ]] || return 1
    pid=$(<"$PID_FILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$CONF" || return 1
    printf '%s\n' "$pid"
}

ready() { curl -fs -o /dev/null --max-time 2 "$URL/-/ready" 2>/dev/null; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

start_server() {
    port_in_use && die "port $PORT on 127.0.0.1 is taken by another process; set CONVEYOR_PROMETHEUS_PORT"
    mkdir -p "$DATA_DIR"
    [[ -f $LOG ]] && mv -f "$LOG" "$LOG.1"
    log "starting Prometheus on $URL, scraping $TARGETS (log: $LOG)"
    # setsid: its own session, so the end of the calling job does not take it down; the inner
    # bash writes its pid and execs prometheus, so the pid file names the server. 9>&- keeps
    # the lock fd out of it.
    # shellcheck disable=SC2016
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PID_FILE" \
        prometheus --config.file="$CONF" --storage.tsdb.path="$DATA_DIR" \
        --web.listen-address="127.0.0.1:$PORT" --storage.tsdb.retention.time=1d \
        --web.enable-lifecycle \
        </dev/null >>"$LOG" 2>&1 9>&- &
}

wait_ready() {
    local deadline=$((SECONDS + START_TIMEOUT)) pid
    while ((SECONDS < deadline)); do
        if pid=$(running_pid); then
            ready && { log "ready (pid $pid)"; return 0; }
        elif [[ -f $PID_FILE ]] && ! kill -0 "$(<"$PID_FILE")" 2>/dev/null; then
            tail -n 30 "$LOG" >&2 || true
            die "Prometheus exited during start-up (log above, full log: $LOG)"
        fi
        sleep 0.2
    done
    tail -n 30 "$LOG" >&2 || true
    die "Prometheus not ready on $URL within ${START_TIMEOUT}s (log: $LOG)"
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
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid ignored SIGTERM for 15 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
    log "stopped"
}

take_lock() { hold_lock "$STATE_DIR/.lock" 120; }

# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------

cmd_up() {
    if [[ -n ${CONVEYOR_PROMETHEUS_URL:-} ]]; then
        printf '%s\n' "$CONVEYOR_PROMETHEUS_URL"
        return 0
    fi
    take_lock
    install_package
    local conf pid
    conf=$(write_config)
    promtool check config "$conf" >/dev/null 2>&1 || { promtool check config "$conf" >&2; die "bad configuration"; }
    if pid=$(running_pid); then
        if cmp -s "$conf" "$CONF"; then
            rm -f "$conf"
            log "already running (pid $pid)"
        else
            # Same port, other targets: load the new configuration in place.
            mv -f "$conf" "$CONF"
            log "reloading pid $pid with targets $TARGETS"
            curl -fs -X POST --max-time 5 "$URL/-/reload" >/dev/null || die "reload failed (log: $LOG)"
        fi
    else
        rm -f "$PID_FILE"
        mv -f "$conf" "$CONF"
        start_server
    fi
    wait_ready
    printf '%s\n' "$URL"
}

cmd_down() {
    if [[ -n ${CONVEYOR_PROMETHEUS_URL:-} ]]; then
        log "CONVEYOR_PROMETHEUS_URL is set: an external server is not ours to stop"
        return 0
    fi
    take_lock
    stop_server
}

cmd_status() {
    local target=${CONVEYOR_PROMETHEUS_URL:-$URL} pid
    if [[ -n ${CONVEYOR_PROMETHEUS_URL:-} ]]; then
        curl -fs -o /dev/null --max-time 2 "$target/-/ready" && { echo "external Prometheus at $target is ready"; return 0; }
        echo "external Prometheus at $target is not ready"
        return 3
    fi
    if pid=$(running_pid) && ready; then
        echo "running: Prometheus pid $pid at $URL, scraping $(grep -c '^          - ' "$CONF") target(s)"
        return 0
    elif [[ -n ${pid:-} ]]; then
        echo "starting or hung: pid $pid is not ready on $URL (log: $LOG)"
        return 3
    fi
    echo "not running"
    return 3
}

cmd_url() { printf '%s\n' "${CONVEYOR_PROMETHEUS_URL:-$URL}"; }

main() {
    [[ $# == 1 ]] || usage
    case $1 in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    url) cmd_url ;;
    install) install_package ;;
    *) usage ;;
    esac
}

main "$@"
