#!/usr/bin/env bash
# Fails when the committed stubs in src/nops_agent/_gen differ from what generate.sh makes of proto/.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
bash "$here/scripts/generate.sh" "$tmp" >/dev/null
if ! diff -r "$tmp/nops_agent/_gen" "$here/src/nops_agent/_gen" >/dev/null; then
  echo "sdk/python/src/nops_agent/_gen is stale: run 'bash sdk/python/scripts/generate.sh' and commit the result" >&2
  diff -rq "$tmp/nops_agent/_gen" "$here/src/nops_agent/_gen" | head -20 >&2
  exit 1
fi
echo "sdk/python stubs are up to date"
