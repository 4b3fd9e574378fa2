#!/usr/bin/env bash
# Install and run a REAL Apache Pulsar standalone broker (no Docker) for tests and CI.
#
#   scripts/services/pulsar.sh up      install if needed, start if not running, wait until ready;
#                                      the last stdout line is the broker URL
#   scripts/services/pulsar.sh down    stop the broker and wait for it to exit
#   scripts/services/pulsar.sh status  exit 0 if the broker is ready, else 1
#   scripts/services/pulsar.sh url     print the broker URL
#   scripts/services/pulsar.sh tls-url print the TLS broker URL (pulsar+ssl://localhost:6651)
#
# Besides the plaintext ports (6650 binary, 8080 admin) the broker serves TLS on 6651 (binary)
# and 8443 (admin, https) with the certificate from scripts/services/tls.sh, valid for
# DNS:localhost only. `up` re-applies the configuration to a running broker and restarts it
# (~15 s, data wiped as on any fresh start) only when the configuration or the certificate changed.
#
# Environment:
#   CONVEYOR_PULSAR_URL    use an existing broker: `up` only prints it, nothing is installed/started
#   CONVEYOR_CACHE_DIR     where the unpacked distribution is kept (default ~/.cache/conveyor)
#   CONVEYOR_RUN_DIR       pid file, logs (default ~/.cache/conveyor/run)
#   CONVEYOR_M2_REPO       Maven local repository used for the download (default ~/.m2/repository)
#   CONVEYOR_PULSAR_READY_TIMEOUT  seconds to wait for readiness (default 180)
#   CONVEYOR_PULSAR_KEEP_DATA=1    `up` keeps the broker's data/ (topics, subscriptions, messages)
#                                  instead of starting fresh: a restart, as in the broker-restart test
#
# All diagnostics go to stderr so that callers can take the URL from stdout.
set -euo pipefail

# 4.0.x is the LTS line; 4.0.6 is the newest 4.0.x that resolves from Maven Central here
# (checked with `mvn dependency:get`). Java 17 runs it.
readonly PULSAR_VERSION="4.0.6"
readonly PULSAR_ARTIFACT="org.apache.pulsar:pulsar-server-distribution:${PULSAR_VERSION}:tar.gz:bin"

readonly CACHE_DIR="${CONVEYOR_CACHE_DIR:-$HOME/.cache/conveyor}"
readonly RUN_DIR="${CONVEYOR_RUN_DIR:-$HOME/.cache/conveyor/run}"
readonly M2_REPO="${CONVEYOR_M2_REPO:-$HOME/.m2/repository}"
readonly PULSAR_HOME_DIR="${CACHE_DIR}/pulsar-${PULSAR_VERSION}"
readonly PID_FILE="${RUN_DIR}/pulsar.pid"
readonly LOG_FILE="${RUN_DIR}/pulsar.log"
readonly LOCK_FILE="${RUN_DIR}/pulsar.lock"
readonly READY_TIMEOUT="${CONVEYOR_PULSAR_READY_TIMEOUT:-180}"
readonly STOP_TIMEOUT=60

readonly HOST="127.0.0.1"
readonly BROKER_URL="pulsar://${HOST}:6650"
readonly ADMIN_URL="http://${HOST}:8080"
# TLS: clients must say "localhost", the only name in the certificate.
readonly TLS_HOST="localhost"
readonly TLS_BROKER_URL="pulsar+ssl://${TLS_HOST}:6651"
readonly TLS_ADMIN_URL="https://${TLS_HOST}:8443"
# What the running broker was started with (see config_stamp).
readonly CONFIG_STAMP="${RUN_DIR}/pulsar.config-stamp"
TLS_DIR=""  # the test CA and server certificate (scripts/services/tls.sh); set by configure
# This endpoint only answers 200 once the metadata store, the bookie and the broker are up
# and the standalone starter has created the public/default namespace.
readonly READY_PROBE="${ADMIN_URL}/admin/v2/namespaces/public/default"

log() { printf '[pulsar.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------------------------------------
# Install
# ---------------------------------------------------------------------------------------------

tarball_path() {
    local group_path="org/apache/pulsar/pulsar-server-distribution/${PULSAR_VERSION}"
    printf '%s/%s/pulsar-server-distribution-%s-bin.tar.gz' "$M2_REPO" "$group_path" "$PULSAR_VERSION"
}

download() {
    local tarball
    tarball="$(tarball_path)"
    if [[ -s "$tarball" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found (needed to fetch ${PULSAR_ARTIFACT})"
    log "downloading ${PULSAR_ARTIFACT} from Maven Central (~240 MB)"
    # -Dmaven.repo.local makes the file location deterministic; --strict-checksums fails on a
    # corrupted download instead of caching it. Maven 3.8 emits colour resets even in batch
    # mode, hence the sed. pipefail keeps mvn's exit status.
    mvn -B -q -Dstyle.color=never --strict-checksums dependency:get -Dtransitive=false \
        -Dmaven.repo.local="$M2_REPO" -Dartifact="$PULSAR_ARTIFACT" 2>&1 \
        | sed -e $'s/\x1b\\[[0-9;]*m//g' >&2 \
        || die "mvn dependency:get failed for ${PULSAR_ARTIFACT}"
    [[ -s "$tarball" ]] || die "download finished but ${tarball} is missing"
}

install() {
    # Leftovers of a run killed mid-unpack; safe to remove because we hold the lock.
    rm -rf "${CACHE_DIR}/.pulsar-${PULSAR_VERSION}.tmp."*
    if [[ -x "${PULSAR_HOME_DIR}/bin/pulsar" ]]; then
        return 0
    fi
    command -v java >/dev/null || [[ -n "${JAVA_HOME:-}" ]] || die "java not found (need Java 17+)"
    download
    mkdir -p "$CACHE_DIR"
    # Unpack into a temp dir on the same filesystem, then rename: the final directory either
    # does not exist or is complete, never half-unpacked.
    local tmp
    tmp="$(mktemp -d "${CACHE_DIR}/.pulsar-${PULSAR_VERSION}.tmp.XXXXXX")"
    log "unpacking into ${PULSAR_HOME_DIR}"
    tar -xzf "$(tarball_path)" -C "$tmp"
    mv "${tmp}/apache-pulsar-${PULSAR_VERSION}" "$PULSAR_HOME_DIR"
    rm -rf "$tmp"
}

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

# Set key=value in conf/standalone.conf. Existing keys are edited IN PLACE (every occurrence):
# in standalone mode the bookie reads the first duplicate of a key and the broker the last, so
# appending a second copy would give the two components different values. Missing keys are
# appended once.
set_conf() {
    local file="$1" key="$2" value="$3" escaped
    escaped="$(printf '%s' "$value" | sed -e 's/[\\|&]/\\&/g')"
    if grep -q "^${key}=" "$file"; then
        sed -i -e "s|^${key}=.*|${key}=${escaped}|" "$file"
    else
        # The shipped file ends without a newline: appending would extend its last line.
        [[ -z "$(tail -c 1 "$file")" ]] || printf '\n' >>"$file"
        printf '%s=%s\n' "$key" "$value" >>"$file"
    fi
}

# Re-applied on every `up` (idempotent), so changing a value here takes effect without
# re-unpacking the cached distribution (a running broker is restarted if the result differs).
configure() {
    local conf="${PULSAR_HOME_DIR}/conf/standalone.conf"
    local kv
    TLS_DIR=$(bash "$(dirname "${BASH_SOURCE[0]}")/tls.sh" up | tail -n 1) \
        || die "could not create the TLS test material (scripts/services/tls.sh up)"
    local settings=(
        # Single node, loopback only.
        "bindAddress=${HOST}"
        # The broker tells clients where a topic lives (lookup), and a TLS client checks that
        # name against the certificate: so the TLS address is advertised as "localhost", the
        # plaintext one stays 127.0.0.1. Two hosts need advertisedListeners, which excludes
        # advertisedAddress (hence empty, and no `-a` on the command line).
        "advertisedAddress="
        "advertisedListeners=internal:pulsar://${HOST}:6650,internal:pulsar+ssl://${TLS_HOST}:6651"
        "internalListenerName=internal"
        # TLS ports beside the plaintext ones, server certificate only (no client certificates).
        "brokerServicePortTls=6651"
        "webServicePortTls=8443"
        "tlsCertificateFilePath=${TLS_DIR}/server.pem"
        "tlsKeyFilePath=${TLS_DIR}/server.key"
        "tlsTrustCertsFilePath=${TLS_DIR}/ca.pem"
        "tlsAllowInsecureConnection=false"
        "tlsRequireTrustedClientCertOnConnect=false"
        # One bookie: every ledger must fit on it.
        "managedLedgerDefaultEnsembleSize=1"
        "managedLedgerDefaultWriteQuorum=1"
        "managedLedgerDefaultAckQuorum=1"
        # Delayed delivery: check every 100 ms (default 1 s) and never deliver early.
        "delayedDeliveryEnabled=true"
        "delayedDeliveryTickTimeMillis=100"
        "isDelayedDeliveryDeliverAtTimeStrict=true"
        # Latency (docs/deploy.md "Pulsar in production"): a caught-up subscription reads a new entry as
        # soon as it is stored (the default re-checks 10 ms later: ~5 ms of the 9 ms from
        # publish to handler at 500 jobs/s), and the bookie writes out its journal as soon as
        # nothing else is queued instead of waiting out the group-commit window. Neither skips
        # or delays the journal's fsync (left as the standalone ships it: journalSyncData=false;
        # a production bookie keeps BookKeeper's default, true).
        "managedLedgerNewEntriesCheckDelayInMillis=0"
        "journalFlushWhenQueueEmpty=true"
        # Redelivery counts on messages need the tracker.
        "subscriptionRedeliveryTrackerEnabled=true"
        # Faster start and stop.
        "transactionCoordinatorEnabled=false"
        "brokerShutdownTimeoutMs=5000"
        "webSocketServiceEnabled=false"
        # Let tests drop namespaces/tenants that still have topics.
        "forceDeleteNamespaceAllowed=true"
        "forceDeleteTenantAllowed=true"
        # Small caches (defaults are sized from a multi-GB direct memory budget).
        "managedLedgerCacheSizeMB=32"
        "dbStorage_writeCacheMaxSizeMb=16"
        "dbStorage_readAheadCacheMaxSizeMb=16"
        "dbStorage_rocksDB_blockCacheSize=16777216"
        # Fewer threads: a test broker on a 2-core machine does not need 8+ per pool.
        "numIOThreads=2"
        "numOrderedExecutorThreads=2"
        "topicOrderedExecutorThreadNum=2"
        "numCacheExecutorThreadPoolSize=2"
        "managedLedgerNumSchedulerThreads=2"
        "numWorkerThreadsForNonPersistentTopic=2"
        "bookkeeperClientNumWorkerThreads=2"
        "bookkeeperClientNumIoThreads=2"
    )
    for kv in "${settings[@]}"; do
        set_conf "$conf" "${kv%%=*}" "${kv#*=}"
    done
}

# A digest of everything the broker reads only at start-up: its config and the TLS files
# (their paths stay the same when tls.sh renews them). start() records it for the running broker.
config_stamp() {
    cat "${PULSAR_HOME_DIR}/conf/standalone.conf" "${TLS_DIR}/server.pem" "${TLS_DIR}/server.key" \
        "${TLS_DIR}/ca.pem" | sha256sum | cut -d' ' -f1
}

# TLS answers on both ports with the test CA and the name "localhost".
tls_ready() {
    local code
    timeout 10 openssl s_client -brief -connect "${HOST}:6651" -servername "$TLS_HOST" \
        -verify_hostname "$TLS_HOST" -CAfile "${TLS_DIR}/ca.pem" -verify_return_error \
        </dev/null >/dev/null 2>&1 || return 1
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "${TLS_DIR}/ca.pem" \
        --resolve "${TLS_HOST}:8443:${HOST}" "${TLS_ADMIN_URL}/admin/v2/namespaces/public/default" 2>/dev/null)" || true
    [[ "$code" == "200" ]]
}

wait_tls_ready() {
    local deadline=$((SECONDS + 30))
    until tls_ready; do
        ((SECONDS < deadline)) || fail_with_log "Pulsar does not serve TLS on 6651/8443 with the test CA"
        sleep 1
    done
}

# ---------------------------------------------------------------------------------------------
# Process management
# ---------------------------------------------------------------------------------------------

# Print the broker pid if the pid file points at a live Pulsar standalone JVM. Checking the
# command line guards against a stale pid file whose pid was reused by another process.
running_pid() {
    local pid cmdline
    [[ -s "$PID_FILE" ]] || return 1
    pid="$(<"$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    alive "$pid" || return 1
    # Read into a variable rather than `| grep -q`: with pipefail an early grep exit could
    # SIGPIPE the writer and make the check fail spuriously.
    cmdline="$(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null)" || return 1
    # Right after start the pid is still the launcher shell / bin/pulsar, later the JVM.
    [[ "$cmdline" =~ PulsarStandaloneStarter|pulsar-start|bin/pulsar\ standalone ]] || return 1
    printf '%s\n' "$pid"
}

# True if the process exists and is not a zombie (a dead, not-yet-reaped child still answers
# kill -0).
alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != "Z" ]]
}

is_ready() {
    local code
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$READY_PROBE" 2>/dev/null)" || true
    [[ "$code" == "200" ]]
}

port_in_use() {
    (exec 3<>"/dev/tcp/${HOST}/$1") 2>/dev/null
}

start() {
    local port
    for port in 6650 8080 6651 8443; do
        port_in_use "$port" && die "port ${port} on ${HOST} is already in use by another process"
    done
    # A fresh start gets fresh state: leftovers from an earlier run (or a crash) can keep the
    # bookie from starting and would leak messages between test runs. A restart keeps them.
    if [[ "${CONVEYOR_PULSAR_KEEP_DATA:-0}" != "1" ]]; then
        rm -rf "${PULSAR_HOME_DIR}/data"
    fi
    mkdir -p "$RUN_DIR"
    config_stamp >"$CONFIG_STAMP"
    log "starting Pulsar ${PULSAR_VERSION} standalone (log: ${LOG_FILE})"
    # setsid detaches it from our session/terminal so it survives the caller (CI step, shell).
    # `9>&-` closes the lock fd in the child: otherwise the JVM would hold the lock forever.
    # The inner shell writes its own pid and then execs bin/pulsar, which execs java: the pid
    # in the file is the JVM's.
    PULSAR_MEM="-Xms256m -Xmx512m -XX:MaxDirectMemorySize=512m" \
    PULSAR_GC="-XX:+UseSerialGC" \
    PULSAR_LOG_DIR="$RUN_DIR" \
    PULSAR_LOG_IMMEDIATE_FLUSH=true \
    PULSAR_GC_LOG="-Xlog:gc:file=${RUN_DIR}/pulsar-gc.log:time,uptime:filecount=2,filesize=10M" \
        setsid bash -c 'echo $$ >"$1"; cd "$2"; exec bin/pulsar standalone \
            --no-functions-worker --no-stream-storage' \
            pulsar-start "$PID_FILE" "$PULSAR_HOME_DIR" \
            >"$LOG_FILE" 2>&1 </dev/null 9>&- &
    # Wait for the pid file so later steps can track the process.
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -s "$PID_FILE" ]] && return 0
        sleep 0.1
    done
    die "broker process did not start"
}

fail_with_log() {
    log "ERROR: $*"
    if [[ -f "$LOG_FILE" ]]; then
        # The real cause is usually logged well before the shutdown noise at the end.
        log "errors in ${LOG_FILE}:"
        grep -E ' ERROR |Caused by' "$LOG_FILE" | cut -c1-400 | head -n 20 >&2 || true
        log "last 60 lines of ${LOG_FILE}:"
        tail -n 60 "$LOG_FILE" >&2
    fi
    exit 1
}

wait_ready() {
    local deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        if is_ready; then
            return 0
        fi
        if ! running_pid >/dev/null; then
            # /proc/PID/cmdline read during one of the launcher's execs (shell, bin/pulsar, java)
            # can come back empty: only a second miss, half a second later, means it is gone.
            sleep 0.5
            running_pid >/dev/null || fail_with_log "Pulsar exited during start-up"
        fi
        sleep 1
    done
    # Do not leave a half-started JVM behind: the next `up` would find it "running" and wait
    # on it again instead of starting clean.
    log "Pulsar not ready after ${READY_TIMEOUT}s; stopping it"
    stop
    fail_with_log "Pulsar not ready after ${READY_TIMEOUT}s"
}

# End-to-end check through the REST API (no client library needed): create a persistent topic
# with a subscription, publish one message (broker -> bookie write), then peek it back from the
# subscription (bookie read). The admin probe alone can answer before the first ledger write works.
smoke_test() {
    local topic="persistent/public/default/conveyor-smoke-$$-${RANDOM}"
    local payload="ping-${RANDOM}" body i
    curl -sf --max-time 30 -X PUT "${ADMIN_URL}/admin/v2/${topic}/subscription/smoke" >/dev/null \
        || fail_with_log "smoke test: could not create ${topic}"
    for ((i = 0; i < 10; i++)); do
        if curl -sf --max-time 30 -H 'Content-Type: application/json' \
            -d "{\"messages\":[{\"payload\":\"${payload}\"}]}" \
            "${ADMIN_URL}/topics/${topic}" >/dev/null; then
            break
        fi
        sleep 1
    done
    body="$(curl -sf --max-time 30 "${ADMIN_URL}/admin/v2/${topic}/subscription/smoke/position/1")" \
        || fail_with_log "smoke test: could not read back from ${topic}"
    [[ "$body" == "$payload" ]] || fail_with_log "smoke test: expected '${payload}', got '${body}'"
    curl -sf --max-time 30 -X DELETE "${ADMIN_URL}/admin/v2/${topic}?force=true" >/dev/null || true
}

stop() {
    local pid i
    if ! pid="$(running_pid)"; then
        rm -f "$PID_FILE"
        log "Pulsar is not running"
        return 0
    fi
    log "stopping Pulsar (pid ${pid})"
    kill -TERM "$pid" 2>/dev/null || true
    # brokerShutdownTimeoutMs=5000 bounds the graceful broker shutdown; the bookie and metadata
    # store follow. Escalate to SIGKILL rather than hang a CI job.
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        log "still running after ${STOP_TIMEOUT}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while alive "$pid"; do sleep 0.1; done
    fi
    rm -f "$PID_FILE"
    log "stopped"
}

# Serialize up/down between concurrent invocations (e.g. parallel CI steps): only one of them
# may unpack or start the broker.
with_lock() {
    hold_lock "$LOCK_FILE"
    "$@"
}

# ---------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------

cmd_up() {
    if [[ -n "${CONVEYOR_PULSAR_URL:-}" ]]; then
        printf '%s\n' "$CONVEYOR_PULSAR_URL"
        return 0
    fi
    command -v curl >/dev/null || die "curl not found"
    if running_pid >/dev/null; then
        configure
        if [[ "$(config_stamp)" == "$(cat "$CONFIG_STAMP" 2>/dev/null)" ]]; then
            log "Pulsar already running (pid $(running_pid))"
        else
            log "configuration or TLS material changed since Pulsar started; restarting it"
            stop
            start
        fi
    elif is_ready; then
        # Something we did not start (another checkout's broker, a manual run) owns the ports.
        log "a Pulsar broker not started by this script is already answering on ${ADMIN_URL}; using it"
        printf '%s\n' "$BROKER_URL"
        return 0
    else
        install
        configure
        start
    fi
    wait_ready
    smoke_test
    wait_tls_ready
    log "Pulsar ready"
    printf '%s\n' "$BROKER_URL"
}

cmd_down() { stop; }

cmd_status() {
    if [[ -n "${CONVEYOR_PULSAR_URL:-}" ]]; then
        # External broker: its admin port is unknown, so check that the broker port accepts
        # TCP connections (first host of a pulsar://h1:p1,h2:p2 list).
        local hostport="${CONVEYOR_PULSAR_URL#*://}"
        hostport="${hostport%%[,/]*}"
        timeout 5 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "${hostport%:*}" "${hostport##*:}" 2>/dev/null
        return
    fi
    is_ready
}

cmd_url() { printf '%s\n' "${CONVEYOR_PULSAR_URL:-$BROKER_URL}"; }

cmd_tls_url() { printf '%s\n' "$TLS_BROKER_URL"; }

main() {
    case "${1:-}" in
        up) with_lock cmd_up ;;
        down) with_lock cmd_down ;;
        status) cmd_status ;;
        url) cmd_url ;;
        tls-url) cmd_tls_url ;;
        *)
            echo "usage: $0 {up|down|status|url|tls-url}" >&2
            exit 2
            ;;
    esac
}

main "$@"
