#!/usr/bin/env bash
# The browser the UI tests drive (tests/test_ui_browser.py): Chromium and its WebDriver, from
# Debian's packages. Installs only what is missing.
set -euo pipefail

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && { echo "browser: $(chromium --version 2>/dev/null) and its driver are installed"; exit 0; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "browser: installing ${missing[*]} from Debian's packages"
$SUDO apt-get update -qq || true  # a stale or unreachable list: try the install with what is there
# Fonts: without any, headless Chromium draws text as boxes in the screenshots.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" fonts-dejavu-core >/dev/null
echo "browser: $(chromium --version)"
