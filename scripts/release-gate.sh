#!/usr/bin/env bash
# The release gate (CI): builds the kernel, signs its release (the manifest of every file it runs,
# the CycloneDX SBOM, an in-toto statement with SLSA provenance in a DSSE envelope) with a key made
# for this run, verifies it against the built files, and writes the changelog since the last
# release tag. A build without any of them fails here. docs/release.md says where a real release
# key lives (a file outside the data directory, or a KMS/HSM behind the signer interface).
set -euo pipefail
cd "$(dirname "$0")/.."

npm run build --silent
keydir="$(mktemp -d)"
chmod 700 "$keydir"
trap 'rm -rf "$keydir"' EXIT
rm -rf release
signed="$(node dist/src/cli.js release sign --key "$keydir/release.key" --out release --builder "ci:$(hostname)")"
echo "$signed"
key="$(sed -n 's/^verifier key: //p' <<<"$signed")"
[ -n "$key" ] || { echo "release gate: signing printed no verifier key" >&2; exit 1; }
for file in manifest.json sbom.cdx.json attestation.dsse.json; do
  [ -s "release/$file" ] || { echo "release gate: release/$file is missing" >&2; exit 1; }
done
node dist/src/cli.js release verify --dir release --trusted-key "$key"
bash scripts/changelog.sh >release/CHANGELOG.md
echo "release gate: changelog in release/CHANGELOG.md ($(grep -c '^- ' release/CHANGELOG.md) commits)"
