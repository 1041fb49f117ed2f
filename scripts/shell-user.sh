#!/bin/sh
# The unprivileged user that shell jobs' programs run as (SHELL_USER, default portal-shell):
# a system account with no home, no login shell and a group of its own. Run as root; does
# nothing if the user exists.
set -eu
name="${1:-${SHELL_USER:-portal-shell}}"
if id -u "$name" >/dev/null 2>&1; then
    exit 0
fi
useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "$name"
