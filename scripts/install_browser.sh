#!/usr/bin/env bash
# Installs Debian's Chromium for the browser test of the web UI. Playwright drives this system
# build instead of downloading its own: the test machines have no route to Playwright's CDN.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [[ -x "$CHROMIUM" ]]; then
    exit 0
fi

if [[ "$(id -u)" -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "install_browser.sh: $CHROMIUM is missing and installing it needs root or sudo" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update
"${as_root[@]}" apt-get install -y --no-install-recommends chromium

"$CHROMIUM" --version
