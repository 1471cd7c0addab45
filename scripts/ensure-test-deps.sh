#!/usr/bin/env bash
# Integration tests start their own nats-server and redis-server; install them from Debian's
# packages when missing (as root), or say which command would.
set -euo pipefail
export PATH="$PATH:/usr/sbin"
missing=()
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} from Debian's packages" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "the integration tests need ${missing[*]}: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
