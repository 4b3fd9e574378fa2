#!/usr/bin/env bash
# Debian's chromium for the console's browser tests (tests/e2e/console), driven by Playwright for
# Python through executable_path: Playwright's own browser download is not reachable here, and
# the distribution's browser is what the tests should run anyway. Nothing runs in the background:
# each test session launches its own headless browser.
#
# Usage: scripts/services/chromium.sh up|status|path
#   up      install the Debian package (and fonts-liberation, for legible screenshots) if it is
#           missing (idempotent), check that it starts, and
#           print the executable's path as the last line on stdout.
#   status  exit 0 when chromium is installed and answers --version, 3 when not.
#   path    print the executable's path.
#
# Environment:
#   CONVEYOR_CHROMIUM   use this browser executable instead: `up` only checks and prints it.
#   CONVEYOR_RUN_DIR    lock file (default ~/.cache/conveyor/run)
set -euo pipefail

readonly RUN_DIR="${CONVEYOR_RUN_DIR:-$HOME/.cache/conveyor/run}"

log() { printf 'chromium: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" >&2; exit 2; }
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

executable() {
    if [[ -n ${CONVEYOR_CHROMIUM:-} ]]; then
        printf '%s\n' "$CONVEYOR_CHROMIUM"
    else
        command -v chromium || printf '/usr/bin/chromium\n'
    fi
}

works() {
    local exe
    exe=$(executable)
    [[ -x $exe ]] && "$exe" --headless --no-sandbox --version >/dev/null 2>&1
}

case "${1:-}" in
    up)
        hold_lock "$RUN_DIR/chromium.lock"
        if ! works; then
            [[ -n ${CONVEYOR_CHROMIUM:-} ]] && die "CONVEYOR_CHROMIUM=$CONVEYOR_CHROMIUM does not start"
            apt_install_package chromium
            works || die "chromium is installed but does not start: $("$(executable)" --version 2>&1 | tail -n 1)"
        fi
        # Recommended, not a dependency: without a font the screenshots show boxes for text.
        if [[ -z ${CONVEYOR_CHROMIUM:-} ]] && ! dpkg -s fonts-liberation >/dev/null 2>&1; then
            apt_install_package fonts-liberation
        fi
        log "$("$(executable)" --version 2>/dev/null)"
        executable
        ;;
    status) works || exit 3 ;;
    path) executable ;;
    *) usage ;;
esac
