#!/usr/bin/env bash
# The database servers the tests start on 127.0.0.1 (tests/services.py): Redis (per-key limits
# shared by gateway workers) and PostgreSQL (the decision log of several replicas), from Debian's
# packages. Installs only what is missing; the packages' own services are not started.
set -euo pipefail

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && { echo "services: redis-server and PostgreSQL are installed"; exit 0; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "services: installing ${missing[*]} from Debian's packages"
# policy-rc.d: the packages must not start (or fail to start) their own system services here.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null && $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update -qq || true  # a stale or unreachable list: try the install with what is there
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
