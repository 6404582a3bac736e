#!/usr/bin/env bash
# Regenerate constraints.txt: resolve Fenji and its dev tools afresh in a throw-away virtualenv
# (torch and flwr held at their required versions), then pin everything that resolved.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
printf 'torch==2.13.0\nflwr==1.41.0\n' > "$tmp/base.txt"
"$tmp/venv/bin/pip" install -q -c "$tmp/base.txt" -e ".[dev]"
{ sed -n '/^#/p' constraints.txt
  "$tmp/venv/bin/pip" freeze --exclude-editable | grep -v '^-e' | sed 's/+cpu//'; } > "$tmp/constraints.txt"
mv "$tmp/constraints.txt" constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) packages pinned"
