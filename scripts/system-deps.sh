#!/usr/bin/env bash
# Installs the system programs the portal and its tests use, where they are missing:
# redis-server, PostgreSQL's server binaries, openssl (the TLS test makes its certificates),
# and Chromium for the browser tests (Debian/Ubuntu).
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing+=(postgresql)
command -v openssl >/dev/null || missing+=(openssl)
command -v useradd >/dev/null || missing+=(passwd)
[ -x /usr/bin/chromium ] || missing+=(chromium)
fc-list 2>/dev/null | grep -qi dejavu || missing+=(fonts-dejavu-core)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
