#!/usr/bin/env bash
# Build the image dataset.jsonl names, offline, from the base image that
# scripts/setup.sh makes: ./build-image.sh [IMAGE] [BASE_IMAGE]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
image="${1:-cwm-agent-example/swebench-calc:1}"
base="${2:-cwm-base:bookworm}"
# Docker's output only when the build fails (the legacy builder warns on every build).
if ! log=$(docker build -q --build-arg "BASE_IMAGE=$base" -t "$image" "$here" 2>&1); then
  printf '%s\n' "$log" >&2
  exit 1
fi
echo "built $image"
