#!/usr/bin/env bash
# Build the REAL Docker Compose v2 CLI from source, so `docker compose config` can validate
# docker-compose.yml without Docker Hub, a container engine or a compose plugin package.
#
# The source is the released Go module github.com/docker/compose/v2, fetched through the Go
# module proxy (its checksum pinned below and checked against the Go checksum database) and
# built with the installed Go the way upstream builds its release binaries (CGO off, -trimpath,
# tag e2e, version stamped). Its own go.sum pins every dependency. The binary is cached under
# $CONVEYOR_CACHE_DIR/compose-<version>/, so a version bump rebuilds; Go's module and build
# caches are kept under $CONVEYOR_CACHE_DIR/go/. A cold build takes a few minutes on 2 cores
# (see README, Deploy); a cached one returns at once.
#
# Usage: scripts/services/compose.sh install|path
#   install build the binary if it is not cached, install it as the docker CLI plugin
#           ${DOCKER_CONFIG:-~/.docker}/cli-plugins/docker-compose (so `docker compose` works;
#           a plugin that is not ours is left alone) and print the binary's path as the last
#           line on stdout. Idempotent.
#   path    print the binary's path; exit 3 when it has not been built yet.
#
# The binary also runs standalone: `$(scripts/services/compose.sh path) -f docker-compose.yml
# config` needs no docker client.
#
# Environment:
#   CONVEYOR_CACHE_DIR     the binary and Go's caches (default ~/.cache/conveyor).
#   DOCKER_CONFIG          the docker client's config dir, for the plugin (default ~/.docker).
#   GOPROXY, GOSUMDB, ...  Go's own settings are honoured (defaults: proxy.golang.org and
#                          sum.golang.org, which Go reaches through the proxy).
set -euo pipefail

# Pinned release and its Go module checksum (the h1: line of go.sum, as recorded in
# sum.golang.org). Bumping the version means updating the checksum too: the build refuses a
# module that does not match. The module's go.mod needs Go >= 1.24.9.
readonly COMPOSE_MODULE=github.com/docker/compose/v2
readonly COMPOSE_VERSION=v2.40.3
readonly COMPOSE_SUM=h1:XeYkQu1svDtyfZPv5nTwFryQ25ZJMkIlc4pz9HalMPI=

readonly CACHE_DIR="${CONVEYOR_CACHE_DIR:-$HOME/.cache/conveyor}"
readonly INSTALL_DIR="$CACHE_DIR/compose-$COMPOSE_VERSION"
readonly BIN="$INSTALL_DIR/docker-compose"
readonly GO_DIR="$CACHE_DIR/go"
readonly PLUGIN_DIR="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
readonly PLUGIN="$PLUGIN_DIR/docker-compose"

# Everything but the path goes to stderr, so `bin=$(compose.sh install | tail -n1)` is enough.
log() { printf 'compose: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" >&2; exit 2; }

# True when $1 is a working Compose binary of the pinned version. Running it (~20 ms) rather
# than testing for the file catches a truncated or foreign binary left in the cache.
binary_is_good() {
    [[ -x $1 ]] && [[ $("$1" version --short 2>/dev/null) == "${COMPOSE_VERSION#v}" ]]
}

go_env() {
    # Our own module and build caches, writable module files (so the cache can be deleted
    # with rm -rf) and never a rewritten go.mod/go.sum: a dependency missing from the
    # release's go.sum is an error, not a download.
    env GOMODCACHE="$GO_DIR/mod" GOCACHE="$GO_DIR/build" \
        GOFLAGS="-modcacherw -mod=readonly -buildvcs=false" CGO_ENABLED=0 "$@"
}

build() {
    # The official tarball's location, for a shell whose PATH lacks it.
    if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then PATH="$PATH:/usr/local/go/bin"; fi
    command -v go >/dev/null || die "Go is needed to build Docker Compose $COMPOSE_VERSION (>= 1.24.9; https://go.dev/dl/)"
    mkdir -p "$INSTALL_DIR" "$GO_DIR"
    # Leftovers of a build that was SIGKILLed (no trap ran). We hold the lock: nobody uses them.
    rm -rf "$INSTALL_DIR"/.tmp.*
    local tmp json dir sum started=$SECONDS
    tmp=$(mktemp -d "$INSTALL_DIR/.tmp.XXXXXX")
    # shellcheck disable=SC2064  # expand $tmp now: it is local to this function.
    trap "rm -rf '$tmp'" EXIT
    log "building Docker Compose $COMPOSE_VERSION from source with $(go env GOVERSION) (~2 min when its Go caches are cold)"
    # Outside any module (cd $tmp), so no go.mod of the caller's is involved.
    if ! json=$(cd "$tmp" && go_env go mod download -json "$COMPOSE_MODULE@$COMPOSE_VERSION" 2>"$tmp/download.log"); then
        cat "$tmp/download.log" >&2
        printf '%s\n' "$json" >&2
        die "could not download $COMPOSE_MODULE@$COMPOSE_VERSION"
    fi
    dir=$(sed -n 's/^\t"Dir": "\(.*\)",$/\1/p' <<<"$json")
    sum=$(sed -n 's/^\t"Sum": "\(.*\)",$/\1/p' <<<"$json")
    [[ $sum == "$COMPOSE_SUM" ]] || die "$COMPOSE_MODULE@$COMPOSE_VERSION has checksum '$sum', pinned $COMPOSE_SUM"
    [[ -f $dir/go.mod ]] || die "no module source at '$dir'"
    # A writable copy: the release's go.mod has exclude directives, so `go install mod@version`
    # refuses it; building inside a copy of the module is what upstream's Makefile does.
    cp -R "$dir" "$tmp/src"
    chmod -R u+w "$tmp/src"
    # nice: the machine's cores are shared with the test servers and other jobs.
    if ! (cd "$tmp/src" && go_env nice -n 10 go build -trimpath -tags e2e \
        -ldflags "-w -X $COMPOSE_MODULE/internal.Version=$COMPOSE_VERSION" \
        -o "$tmp/docker-compose" ./cmd) >"$tmp/build.log" 2>&1; then
        tail -n 40 "$tmp/build.log" >&2
        die "go build of Docker Compose $COMPOSE_VERSION failed"
    fi
    binary_is_good "$tmp/docker-compose" || die "the built binary does not report version $COMPOSE_VERSION"
    mv -f "$tmp/docker-compose" "$BIN"
    rm -rf "$tmp"
    trap - EXIT
    log "built $BIN in $((SECONDS - started)) s"
}

install_plugin() {
    # A symlink to the cached binary, so a version bump re-points it. Anything else already
    # there (Docker Desktop's or a distribution's plugin) belongs to someone else: left alone.
    if [[ -L $PLUGIN && $(readlink "$PLUGIN") == "$BIN" ]]; then
        return 0
    fi
    if [[ -e $PLUGIN || -L $PLUGIN ]] && ! [[ -L $PLUGIN && $(readlink "$PLUGIN") == "$CACHE_DIR"/compose-v*/docker-compose ]]; then
        log "$PLUGIN exists and is not ours; leaving it (the pinned binary is $BIN)"
        return 0
    fi
    mkdir -p "$PLUGIN_DIR"
    ln -sfn "$BIN" "$PLUGIN.tmp.$$"
    mv -Tf "$PLUGIN.tmp.$$" "$PLUGIN"
    log "installed the docker CLI plugin $PLUGIN -> $BIN"
}

# A concurrent cold build may take several minutes.
take_lock() { hold_lock "$CACHE_DIR/.compose-$COMPOSE_VERSION.lock" 1800; }

cmd_install() {
    if ! binary_is_good "$BIN"; then
        take_lock
        binary_is_good "$BIN" || build
    fi
    install_plugin
    printf '%s\n' "$BIN"
}

cmd_path() {
    binary_is_good "$BIN" || { log "Docker Compose $COMPOSE_VERSION is not built; run: $0 install"; exit 3; }
    printf '%s\n' "$BIN"
}

main() {
    [[ $# == 1 ]] || usage
    case $1 in
    install) cmd_install ;;
    path) cmd_path ;;
    *) usage ;;
    esac
}

main "$@"
