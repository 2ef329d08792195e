#!/usr/bin/env bash
# Refresh constraints.txt, the lock that setup.sh (and so CI), the Dockerfile and
# the GitHub Action install with: one version of every runtime and dev dependency
# (all extras), resolved by `uv pip compile` for every platform and Python the
# project supports (--universal), with torch held at the CPU wheel's version
# ($TORCH_SPEC's, default 2.13.0). Run it after changing pyproject.toml's
# dependencies; tests/test_lock.py fails until the two agree.
set -euo pipefail
cd "$(dirname "$0")/.."
uv_version=0.13.9
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/pip" install -q "uv==$uv_version"
torch=${TORCH_SPEC:-torch==2.13.0}
echo "$torch" >"$tools/torch.txt"
digest=$(python3 scripts/lock_digest.py)
# uv keeps the versions of its output file where they still fit: pins move only
# when pyproject.toml asks (or with UPGRADE=1).
[ "${UPGRADE:-0}" = 1 ] || cp constraints.txt "$tools/lock.txt" 2>/dev/null || true
"$tools/venv/bin/uv" pip compile pyproject.toml --universal --python-version 3.11 \
  --all-extras --fork-strategy fewest --constraint "$tools/torch.txt" --no-header --no-annotate \
  --quiet --no-emit-package cwm-agent --output-file "$tools/lock.txt"
{
  echo "# The lock: every dependency of cwm-agent and its extras, one version each."
  echo "# Made by scripts/update-lock.sh (uv $uv_version); do not edit by hand."
  echo "# Used as pip constraints: pip install -c constraints.txt -e '.[dev,swebench,quant,ray]'"
  echo "# pyproject-dependencies-sha256: $digest"
  cat "$tools/lock.txt"
} >constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) pins"
