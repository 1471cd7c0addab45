#!/usr/bin/env bash
# Prints the changelog: every commit since the last release tag (v*), newest first, as Markdown.
set -euo pipefail
cd "$(dirname "$0")/.."
last="$(git describe --tags --abbrev=0 --match 'v*' 2>/dev/null || true)"
echo "# Changes since ${last:-the first commit}"
echo
git log --no-merges --format='- %s (%h, %as)' ${last:+"$last..HEAD"}
