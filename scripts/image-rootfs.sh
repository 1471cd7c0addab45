#!/usr/bin/env bash
# Assembles the root filesystem of the kernel's container image (docs/release.md, "Container
# image") into <out>/rootfs, from nothing but this machine: no base image is pulled.
#
#   /usr/local/bin/node            the Node.js 24 binary the kernel ships on (scripts/ensure-node.sh)
#   /lib, /lib64 ...               the shared libraries node and the native modules link (ldd)
#   /usr/local/lib/libjemalloc.so.2  the allocator the image preloads (LD_PRELOAD in image/Dockerfile)
#   /opt/nops-kernel               the kernel, installed from a signed offline bundle: built code,
#                                  production dependencies only, and its signed release
#   /etc/nops/kernel.yaml          the default config: release.enforce on, the release key pinned
#   /etc/passwd, /etc/group        the non-root user nops (65532), the chart's runAsUser
#   /etc/ssl/certs                 CA certificates; /tmp and /var/lib/nops owned by nops
#
# The kernel goes in through `release sign` + `bundle create` + `bundle install`, so the rootfs
# holds exactly the files of the signed manifest and the install verifies them.
# Usage: scripts/image-rootfs.sh <out dir> <release key file>; prints "verifier key: <key>".
set -euo pipefail
out="${1:?usage: image-rootfs.sh <out dir> <release key file>}"
key="${2:?usage: image-rootfs.sh <out dir> <release key file>}"
cd "$(dirname "$0")/.."
repo="$PWD"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
key="$(cd "$(dirname "$key")" && pwd)/$(basename "$key")"

node_bin="$(bash scripts/ensure-node.sh)"
export PATH="$node_bin:$PATH"
node scripts/build-if-stale.mjs >/dev/null

rootfs="$out/rootfs"
bundle="$out/bundle"
release="$out/release"
rm -rf "$rootfs" "$bundle" "$release"
signed="$(node dist/src/cli.js release sign --key "$key" --out "$release" --builder "image:$(hostname)")"
vkey="$(sed -n 's/^verifier key: //p' <<<"$signed")"
[ -n "$vkey" ] || { echo "image-rootfs: signing printed no verifier key" >&2; exit 1; }
node dist/src/cli.js bundle create --key "$key" --dir "$release" --out "$bundle" >/dev/null
install_dir="$rootfs/opt/nops-kernel"
node dist/src/cli.js bundle install --dir "$bundle" --target "$install_dir" --trusted-key "$vkey" >/dev/null
# release.yaml names the host path it was installed to; the image's config below names /opt.
rm -f "$install_dir/release.yaml"
rm -rf "$bundle" "$release"

# jemalloc, preloaded by the image: it returns the memory a burst freed to the OS where glibc's malloc
# keeps it in its arenas (docs/observability.md, "Memory after a burst").
jemalloc() { /usr/sbin/ldconfig -p | awk '/^\tlibjemalloc\.so\.2 / { print $NF; exit }'; }
if [ -z "$(jemalloc)" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libjemalloc2 >/dev/null
fi
jemalloc_lib="$(jemalloc)"
[ -n "$jemalloc_lib" ] || { echo "image-rootfs: libjemalloc.so.2 not found: apt-get install libjemalloc2" >&2; exit 1; }
install -D -m 0755 "$(readlink -f "$jemalloc_lib")" "$rootfs/usr/local/lib/libjemalloc.so.2"

# The runtime and every shared library it, jemalloc, or a native module of the kernel, loads.
install -D -m 0755 "$node_bin/node" "$rootfs/usr/local/bin/node"
libs() { ldd "$1" 2>/dev/null | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }'; }
{
  libs "$node_bin/node"
  libs "$jemalloc_lib"
  find "$install_dir/node_modules" -name '*.node' -type f -print0 | while IFS= read -r -d '' m; do libs "$m"; done
} | sort -u | while read -r lib; do
  real="$(readlink -f "$lib")"
  install -D -m 0755 "$real" "$rootfs$real"
  # The name the binaries ask for, as a link to the real file when the two differ.
  [ "$real" = "$lib" ] || { mkdir -p "$rootfs$(dirname "$lib")" && ln -sf "$real" "$rootfs$lib"; }
done
# Both exist whatever the architecture's loader path is: the Dockerfile copies both.
mkdir -p "$rootfs/lib" "$rootfs/lib64"

install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
mkdir -p "$rootfs/etc/nops" "$rootfs/var/lib/nops" "$rootfs/tmp" "$rootfs/proc" "$rootfs/dev"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnops:x:65532:65532:nops kernel:/var/lib/nops:/sbin/nologin\n' \
  >"$rootfs/etc/passwd"
printf 'root:x:0:\nnops:x:65532:\n' >"$rootfs/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$rootfs/etc/hosts"
cat >"$rootfs/etc/nops/kernel.yaml" <<EOF
# The image's default config (a Helm install mounts its own over /etc/nops). Every option can be
# overridden with NOPS_<PATH> environment variables, e.g. NOPS_RELEASE_TRUSTED_KEYS.
# The volume /var/lib/nops holds the database (data/) and, beside it, the audit key (data.keys/).
dataDir: /var/lib/nops/data
grpc: { host: 0.0.0.0, port: 50051 }
http: { host: 0.0.0.0, port: 8080 }
release:
  enforce: true
  root: /opt/nops-kernel
  trustedKeys:
    - "$vkey"
EOF
chmod 1777 "$rootfs/tmp"
chown 65532:65532 "$rootfs/var/lib/nops"
chmod 0750 "$rootfs/var/lib/nops"
# Reproducible timestamps for the image layer.
find "$rootfs" -exec touch -h -d "@$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)" {} +
echo "rootfs in $rootfs ($(du -sm "$rootfs" | cut -f1) MiB)"
echo "verifier key: $vkey"
