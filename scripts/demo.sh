#!/usr/bin/env bash
# The bundled example end to end: a small repository with a real bug, fixed by
# `cwm-agent fix` driven by a recorded CWM trajectory (examples/calc/replay.json).
# Writes ./cwm-agent-runs/demo-repo (the repository, with a new branch holding
# the fix) and the run's outputs beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=cwm-agent-runs
repo=$runs/demo-repo
rm -rf "$repo" && mkdir -p "$runs" && cp -r examples/calc/repo "$repo"
git -C "$repo" init -q
git -C "$repo" add -A
git -C "$repo" -c user.name=demo -c user.email=demo@example.invalid commit -qm "calc: mean and median"
.venv/bin/cwm-agent fix --repo "$repo" --issue-file examples/calc/issue.md \
  --model replay:examples/calc/replay.json --image "${CWM_AGENT_DEMO_IMAGE:-cwm-base:bookworm}" \
  --branch cwm-agent/fix-median --output "$runs/demo-$(date +%Y%m%d-%H%M%S)"
echo "the fix, on its branch:"
git -C "$repo" log --oneline -1 cwm-agent/fix-median
git -C "$repo" diff HEAD cwm-agent/fix-median --stat
