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
