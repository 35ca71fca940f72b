#!/usr/bin/env bash
# Install the real servers the end-to-end tests (tests/e2e) start themselves:
# Debian's prometheus (prometheus, promtool) and prometheus-pushgateway.
#
# Non-interactive; run as root (or with sudo available).  The tests never use
# the system services, so any service the packages start or enable is stopped
# and disabled, leaving ports 9090/9091 free.  Idempotent: if the three
# binaries are already on PATH, nothing is installed.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
SERVICES=(prometheus prometheus-pushgateway)
BINARIES=(prometheus promtool prometheus-pushgateway)

have_all() {
    local b
    for b in "${BINARIES[@]}"; do
        command -v "$b" >/dev/null 2>&1 || return 1
    done
}

if have_all; then
    echo "servers.sh: already installed"
else
    # Keep the packages' maintainer scripts from starting the services at all
    # (invoke-rc.d and deb-systemd-invoke honour policy-rc.d); only if no
    # policy is in place already, and removed again afterwards.
    policy=/usr/sbin/policy-rc.d
    added_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 755 "$policy"
        added_policy=1
    fi
    trap 'if [ -n "$added_policy" ]; then $SUDO rm -f "$policy"; fi' EXIT
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        prometheus prometheus-pushgateway
fi

# Whatever got started or enabled (systemd, or a SysV init script): stop and disable it.
for service in "${SERVICES[@]}"; do
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        $SUDO systemctl stop "$service.service" 2>/dev/null || true
        $SUDO systemctl disable "$service.service" 2>/dev/null || true
    elif [ -x "/etc/init.d/$service" ]; then
        $SUDO "/etc/init.d/$service" stop >/dev/null 2>&1 || true
        if command -v update-rc.d >/dev/null 2>&1; then
            $SUDO update-rc.d "$service" disable >/dev/null 2>&1 || true
        fi
    fi
done

have_all || { echo "servers.sh: missing one of: ${BINARIES[*]}" >&2; exit 1; }
prometheus --version 2>&1 | head -n 1
prometheus-pushgateway --version 2>&1 | head -n 1
