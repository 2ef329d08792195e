#!/usr/bin/env bash
# Set up everything cwm-agent and its tests need, idempotently:
# a Docker engine that answers, the offline base image, and .venv with the
# project and its dev, swebench and quant extras. Quick when all of it is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*"; }

# 1. A Docker engine.
if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    log "no Docker daemon answers and this is not root: start Docker, then run this again" >&2
    exit 1
  fi
  if ! command -v dockerd >/dev/null; then
    log "installing Docker Engine from Debian's packages (docker.io)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  fi
  log "starting dockerd (vfs storage driver)"
  nohup dockerd --storage-driver=vfs >/var/log/cwm-agent-dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { log "dockerd did not answer: see /var/log/cwm-agent-dockerd.log" >&2; exit 1; }
fi
log "docker $(docker version --format '{{.Server.Version}}')"

# 2. The base image (made offline with debootstrap when absent).
./scripts/base-image.sh cwm-base:bookworm

# 3. The virtual environment. torch is pinned to the CPU wheel first: an
# unpinned torch would pull a multi-GB CUDA build.
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  log "installing ${TORCH_SPEC:=torch==2.13.0}"
  .venv/bin/pip install -q "$TORCH_SPEC"
fi
stamp=.venv/.cwm-agent-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing cwm-agent with its dev, swebench and quant extras"
  .venv/bin/pip install -q -e '.[dev,swebench,quant]'
  touch "$stamp"
fi
log "ready: .venv/bin/cwm-agent"
