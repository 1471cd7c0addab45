#!/usr/bin/env bash
# Fails when gen/ is stale, when buf lint fails, or when buf breaking finds a breaking change
# against the previous commit of main (skipped only when that commit has no buf workspace).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$PATH"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
buf generate -o "$tmp"
if ! diff -r "$tmp/gen" gen >/dev/null; then
  echo "gen/ is stale: run 'npm run generate' and commit the result" >&2
  diff -r "$tmp/gen" gen | head -20 >&2
  exit 1
fi
echo "gen/ is up to date"

buf lint
echo "buf lint: clean"

if git rev-parse --verify -q HEAD~1 >/dev/null && git cat-file -e HEAD~1:buf.yaml 2>/dev/null; then
  buf breaking --against ".git#ref=HEAD~1"
  echo "buf breaking: no breaking change against $(git rev-parse --short HEAD~1)"
else
  echo "buf breaking: skipped (previous commit has no buf workspace)"
fi
