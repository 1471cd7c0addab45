#!/usr/bin/env bash
# Builds the kernel's container image with buildah (docs/release.md, "Container image"), signs it
# and writes it as an OCI archive:
#   1. scripts/image-rootfs.sh assembles the root filesystem (runtime, libraries, the kernel from
#      its signed offline bundle) into the build context; no base image is pulled;
#   2. buildah builds image/Dockerfile from that context (its first stage runs `release verify`
#      inside the image, so a tree that is not the signed release fails the build);
#   3. `release sign-image` signs the image's config digest with the release key and
#      `release verify-image` checks the signature.
# Output in --out (default image-out/): nops-kernel.oci.tar, image.dsse.json, image-digest.txt.
# Usage: scripts/build-image.sh [--key <release key file>] [--tag <name:tag>] [--out <dir>]
# Without --key a key is made for this run and thrown away (CI); a real image is signed with the
# release key. Buildah's storage is a temporary directory, removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
key="" tag="" out="image-out"
while [ $# -gt 0 ]; do
  case "$1" in
    --key) key="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "build-image: unknown argument $1 (usage: build-image.sh [--key f] [--tag t] [--out d])" >&2; exit 2 ;;
  esac
done
export PATH="$PATH:/usr/sbin"
if ! command -v buildah >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah >/dev/null
fi
node_bin="$(bash scripts/ensure-node.sh)"
export PATH="$node_bin:$PATH"
[ -n "$tag" ] || tag="localhost/nops-kernel:$(node -p 'require("./package.json").version')"

work="$(mktemp -d)"
chmod 700 "$work"
storage="$work/storage"
buildah=(buildah --root "$storage/root" --runroot "$storage/run" --storage-driver vfs)
cleanup() {
  "${buildah[@]}" rm --all >/dev/null 2>&1 || true
  "${buildah[@]}" rmi --all --force >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
[ -n "$key" ] || key="$work/release.key"

started=$SECONDS
prepared="$(bash scripts/image-rootfs.sh "$work/context" "$key")"
echo "$prepared"
vkey="$(sed -n 's/^verifier key: //p' <<<"$prepared")"
cp image/Dockerfile "$work/context/Dockerfile"
echo "build-image: rootfs ready after $((SECONDS - started)) s"

revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
"${buildah[@]}" bud --isolation chroot --layers=false --quiet \
  --timestamp "$(git log -1 --format=%ct 2>/dev/null || echo 0)" \
  --build-arg VERSION="${tag##*:}" --build-arg REVISION="$revision" \
  --iidfile "$work/iid" -t "$tag" -f "$work/context/Dockerfile" "$work/context" >/dev/null
digest="$(cat "$work/iid")"
echo "build-image: built $tag ($digest) after $((SECONDS - started)) s"

mkdir -p "$out"
rm -f "$out/nops-kernel.oci.tar"
"${buildah[@]}" push --quiet "$tag" "oci-archive:$out/nops-kernel.oci.tar:$tag"
node dist/src/cli.js release sign-image --key "$key" --image "$tag" --digest "$digest" \
  --dir "$work/context/rootfs/opt/nops-kernel/release" --out "$out/image.dsse.json" --builder "image:$(hostname)"
node dist/src/cli.js release verify-image --signature "$out/image.dsse.json" --digest "$digest" --trusted-key "$vkey"
echo "$digest" >"$out/image-digest.txt"
echo "verifier key: $vkey"
echo "build-image: $out/nops-kernel.oci.tar ($(du -m "$out/nops-kernel.oci.tar" | cut -f1) MiB) in $((SECONDS - started)) s"
