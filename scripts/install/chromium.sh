#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for scripts/screenshots.py (docs/img/*.png).
#
# Only the screenshot script needs it; the test suite talks to the Dagster webserver over
# GraphQL and never starts a browser. Idempotent: does nothing when /usr/bin/chromium exists.
# Needs root (apt-get). Never runs `playwright install` (no browser downloads from the internet).
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  echo "chromium.sh: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium) already installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "chromium.sh: run as root (apt-get install chromium)" >&2
  exit 1
fi
apt-get update -qq
# fonts-dejavu-core: without any font the UI text renders as empty boxes.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "chromium.sh: installed $(/usr/bin/chromium --version 2>/dev/null)"
