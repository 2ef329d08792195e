#!/usr/bin/env bash
# Set up everything cwm-agent and its tests need, idempotently:
# a Docker engine that answers, the offline base image, Chromium, and .venv with the
# project and its dev, swebench, quant and ray extras. Quick when all of it is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*"; }

dockerd_log=/var/log/cwm-agent-dockerd.log
# Start dockerd with storage driver $1; succeed once it answers with that driver.
start_dockerd() {
  nohup dockerd --storage-driver="$1" >"$dockerd_log" 2>&1 &
  local pid=$!
  for _ in $(seq 60); do
    if docker info >/dev/null 2>&1; then
      [ "$(docker info --format '{{.Driver}}')" = "$1" ] && return 0
      break
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 1
  done
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
  return 1
}

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
  # overlay2 explicitly: left to choose, dockerd keeps whichever driver it finds
  # data of, so a machine that once ran vfs would stay on it. vfs copies every
  # image layer for each container (seconds per start): only a fallback.
  start_dockerd overlay2 || {
    log "overlay2 storage driver did not start (see $dockerd_log); falling back to vfs"
    start_dockerd vfs
  } || { log "dockerd did not answer: see $dockerd_log" >&2; exit 1; }
fi
log "docker $(docker version --format '{{.Server.Version}}'), storage driver $(docker info --format '{{.Driver}}')"

# 2. The base image (made offline with debootstrap when absent).
./scripts/base-image.sh cwm-base:bookworm

# 3. Chromium, for the browser tests of `cwm-agent view`, from Debian's packages.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Chromium from Debian's packages (chromium), for the view's browser tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    log "chromium is missing and this is not a root Debian shell: the view's browser tests will skip (outside CI)"
  fi
fi

# 4. The virtual environment, installed from the lock (constraints.txt, made by
# scripts/update-lock.sh), so what gets installed does not depend on what the
# registry serves that day. CWM_AGENT_UNLOCKED=1 takes pyproject.toml's ranges
# instead. torch comes first, pinned: an unpinned torch would pull a multi-GB CUDA
# build. TORCH_SPEC (default torch==2.13.0, the CPU wheel here) may carry pip
# options, e.g. "torch==2.13.0 --index-url URL" for a CUDA build.
python=${PYTHON:-python3}
lock=(-c constraints.txt)
[ "${CWM_AGENT_UNLOCKED:-0}" = 1 ] && lock=()
[ -x .venv/bin/python ] || "$python" -m venv .venv
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  log "installing ${TORCH_SPEC:=torch==2.13.0}"
  # shellcheck disable=SC2086  # TORCH_SPEC is words: a requirement and pip options
  .venv/bin/pip install -q "${lock[@]}" $TORCH_SPEC
fi
stamp=.venv/.cwm-agent-installed
want="lock=${#lock[@]}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ] \
  || [ "$(cat "$stamp")" != "$want" ]; then
  log "installing cwm-agent with its dev, swebench, quant and ray extras$([ ${#lock[@]} = 0 ] && echo ' (unlocked)')"
  .venv/bin/pip install -q "${lock[@]}" -e '.[dev,swebench,quant,ray]'
  echo "$want" >"$stamp"
fi
# 5. `cwm-agent` on PATH, so examples and printed hints work as written: as root, a
# link in /usr/local/bin (one to another checkout's venv is left alone, and said so).
cli="$PWD/.venv/bin/cwm-agent"
if [ "$(id -u)" = 0 ] && [ -d /usr/local/bin ]; then
  link=/usr/local/bin/cwm-agent
  if [ ! -e "$link" ] || { [ -L "$link" ] && [ "$(readlink "$link")" = "$cli" ]; }; then
    ln -sfn "$cli" "$link"
    log "ready: cwm-agent (linked from $link)"
  else
    log "ready: $cli ($link is another cwm-agent, left as it is: source .venv/bin/activate)"
  fi
else
  log "ready: $cli (not root, so not linked: source .venv/bin/activate)"
fi
