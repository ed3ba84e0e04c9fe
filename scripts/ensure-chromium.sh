#!/usr/bin/env bash
# The dashboard's browser tests (web/test/*.browser.test.ts) drive Debian's Chromium at
# /usr/bin/chromium through playwright-core (Playwright's own browser download is not used).
# When it is missing and we are root, installs Debian's `chromium` package with apt-get, as
# scripts/with-postgres.sh does for PostgreSQL; otherwise stops and says what to install.
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "/usr/bin/chromium is missing: install Debian's chromium package (as root: apt-get install -y chromium)" >&2
  exit 1
fi
echo "ensure-chromium: installing chromium" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq chromium >&2
