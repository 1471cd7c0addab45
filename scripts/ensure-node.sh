#!/usr/bin/env bash
# Prints the bin directory of the Node.js runtime the kernel ships on (Node 24 LTS by default),
# installing it from the npm registry's node-linux-<arch> package when it is not there yet, so CI
# runs the suite on the shipped runtime even on a machine whose system Node is older.
# Usage: export PATH="$(bash scripts/ensure-node.sh):$PATH"
set -euo pipefail
version="${NOPS_NODE_VERSION:-24.22.3}"
case "$(uname -m)" in
  x86_64) arch=x64 ;;
  aarch64) arch=arm64 ;;
  *) echo "ensure-node: unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac
root="${NOPS_NODE_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/nops-kernel/node}/$version"
if [ "$(command -v node)" ] && [ "$(node --version)" = "v$version" ]; then
  dirname "$(command -v node)"
  exit 0
fi
if [ ! -x "$root/bin/node" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "node-linux-$arch@$version" >/dev/null)
  mkdir -p "$root"
  tar -xzf "$tmp"/node-linux-"$arch"-"$version".tgz -C "$root" --strip-components=1
fi
"$root/bin/node" --version >/dev/null
echo "$root/bin"
