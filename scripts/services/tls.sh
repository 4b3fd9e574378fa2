#!/usr/bin/env bash
# Test TLS material for the local brokers (RabbitMQ amqps on 5671, Pulsar pulsar+ssl on 6651 and
# https on 8443): a throw-away CA, a server certificate signed by it, and a second, unrelated CA.
#
# Usage: scripts/services/tls.sh up|dir|check
#   up     create the material if a file is missing, unreadable, does not verify or expires within
#          7 days (everything is then made anew, so the files always belong together); print the
#          directory as the last line on stdout.
#   dir    print the directory.
#   check  exit 0 when the material is present and valid, 3 when `up` would regenerate it.
#
# Files (PEM) in ${CONVEYOR_CACHE_DIR:-~/.cache/conveyor}/tls, outside the repository:
#   ca.pem, ca.key          the test CA ("Conveyor test CA")
#   server.pem, server.key  the brokers' certificate; subjectAltName DNS:localhost and nothing else
#                           (no IP: connecting to 127.0.0.1 must fail the hostname check) and a
#                           CN that is not a host name, so no client can fall back to it.
#                           The key is PKCS#8, which Pulsar (Netty) requires.
#   wrong-ca.pem            an unrelated CA that signed nothing here: trusting it must fail.
# Keys are readable by the owner only; the RabbitMQ script copies what its node needs to a place
# the rabbitmq user can read (a home directory usually is not).
#
# Environment:
#   CONVEYOR_CACHE_DIR   base directory (default ~/.cache/conveyor)
#   CONVEYOR_RUN_DIR     lock file (default ~/.cache/conveyor/run)
set -euo pipefail

readonly CACHE_DIR="${CONVEYOR_CACHE_DIR:-$HOME/.cache/conveyor}"
readonly RUN_DIR="${CONVEYOR_RUN_DIR:-$HOME/.cache/conveyor/run}"
readonly TLS_DIR="${CACHE_DIR}/tls"
readonly CA_DAYS=3650
readonly SERVER_DAYS=397
readonly RENEW_BEFORE=$((7 * 86400)) # seconds: regenerate a week before anything expires
readonly FILES=(ca.pem ca.key server.pem server.key wrong-ca.pem)

log() { printf 'tls: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }

# True when every file is there, the server certificate verifies against the CA (for the
# serverAuth purpose) and neither certificate expires within RENEW_BEFORE.
valid() {
    local f
    for f in "${FILES[@]}"; do
        [[ -r "${TLS_DIR}/${f}" && -s "${TLS_DIR}/${f}" ]] || return 1
    done
    openssl x509 -noout -checkend "$RENEW_BEFORE" -in "${TLS_DIR}/ca.pem" >/dev/null 2>&1 || return 1
    openssl x509 -noout -checkend "$RENEW_BEFORE" -in "${TLS_DIR}/server.pem" >/dev/null 2>&1 || return 1
    openssl x509 -noout -checkend "$RENEW_BEFORE" -in "${TLS_DIR}/wrong-ca.pem" >/dev/null 2>&1 || return 1
    openssl verify -purpose sslserver -CAfile "${TLS_DIR}/ca.pem" "${TLS_DIR}/server.pem" >/dev/null 2>&1 || return 1
    # The key belongs to the certificate (a half-finished earlier run could mix generations).
    [[ $(openssl x509 -noout -pubkey -in "${TLS_DIR}/server.pem" 2>/dev/null) \
        == $(openssl pkey -pubout -in "${TLS_DIR}/server.key" 2>/dev/null) ]]
}

# A self-signed CA certificate and its key: $1 = file prefix in $2, $3 = common name.
make_ca() {
    local prefix=$1 dir=$2 cn=$3
    openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days "$CA_DAYS" \
        -keyout "${dir}/${prefix}.key" -out "${dir}/${prefix}.pem" -subj "/O=Conveyor tests/CN=${cn}" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" 2>/dev/null
}

generate() {
    local tmp
    command -v openssl >/dev/null || die "openssl not found"
    mkdir -p "$CACHE_DIR"
    # Built in a private temp dir on the same filesystem, then swapped in: the directory is
    # either the old complete set or the new complete set.
    tmp=$(mktemp -d "${CACHE_DIR}/.tls.tmp.XXXXXX")
    log "generating a test CA, a server certificate for DNS:localhost and an unrelated CA in ${TLS_DIR}"
    make_ca ca "$tmp" "Conveyor test CA"
    make_ca wrong-ca "$tmp" "Conveyor unrelated test CA"
    rm -f "${tmp}/wrong-ca.key" # nothing is ever signed with it
    openssl req -new -newkey rsa:2048 -nodes -sha256 -keyout "${tmp}/server.key" -out "${tmp}/server.csr" \
        -subj "/O=Conveyor tests/CN=Conveyor test broker" 2>/dev/null
    printf '%s\n' \
        "subjectAltName=DNS:localhost" \
        "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" \
        "subjectKeyIdentifier=hash" \
        "authorityKeyIdentifier=keyid" >"${tmp}/server.ext"
    openssl x509 -req -sha256 -days "$SERVER_DAYS" -in "${tmp}/server.csr" -CA "${tmp}/ca.pem" \
        -CAkey "${tmp}/ca.key" -set_serial "0x$(openssl rand -hex 16)" -extfile "${tmp}/server.ext" \
        -out "${tmp}/server.pem" 2>/dev/null
    rm -f "${tmp}/server.csr" "${tmp}/server.ext"
    chmod 600 "${tmp}"/*.key
    chmod 644 "${tmp}"/*.pem
    chmod 755 "$tmp"
    rm -rf "${TLS_DIR}.old"
    [[ -e $TLS_DIR ]] && mv "$TLS_DIR" "${TLS_DIR}.old"
    mv "$tmp" "$TLS_DIR"
    rm -rf "${TLS_DIR}.old"
    valid || die "the generated material in ${TLS_DIR} does not verify"
}

# Serialise: the RabbitMQ and Pulsar scripts may both call `up` at once.
take_lock() { hold_lock "$RUN_DIR/tls.lock" 120; }

cmd_up() {
    take_lock
    rm -rf "${CACHE_DIR}/.tls.tmp."* # leftovers of a run killed mid-way; safe under the lock
    if valid; then
        log "material in ${TLS_DIR} is valid until $(openssl x509 -noout -enddate -in "${TLS_DIR}/server.pem" | cut -d= -f2)"
    else
        generate
    fi
    printf '%s\n' "$TLS_DIR"
}

main() {
    [[ $# == 1 ]] || usage
    case $1 in
    up) cmd_up ;;
    dir) printf '%s\n' "$TLS_DIR" ;;
    check) valid || exit 3 ;;
    *) usage ;;
    esac
}

main "$@"
