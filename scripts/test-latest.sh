#!/usr/bin/env bash
# The optional job that sees the next break before users do: the whole suite in
# its own venv (.venv-latest) with the newest release of every dependency — past
# pyproject.toml's own upper bounds, which pip then reports — instead of the lock.
# torch stays at TORCH_SPEC (default torch==2.13.0): an unpinned one is a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
CWM_AGENT_UNLOCKED=1 ./scripts/setup.sh >/dev/null  # the Docker engine and base image
venv=.venv-latest
rm -rf "$venv"
python3 -m venv "$venv"
# shellcheck disable=SC2086  # TORCH_SPEC is words: a requirement and pip options
"$venv/bin/pip" install -q ${TORCH_SPEC:-torch==2.13.0}
"$venv/bin/pip" install -q -e '.[dev,swebench,quant,ray]'
# Every declared dependency but torch and swebench (held at 4.1.0 on purpose: 5.x
# dropped the per-repo specs), upgraded to its newest release whatever our bounds say.
mapfile -t newest < <("$venv/bin/python" - <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
names = [re.match(r"[A-Za-z0-9._-]+", r).group() for r in project["dependencies"]]
for extra in project["optional-dependencies"].values():
    names += [re.match(r"[A-Za-z0-9._-]+", r).group() for r in extra]
print("\n".join(n for n in dict.fromkeys(names) if n not in ("torch", "swebench")))
PY
)
"$venv/bin/pip" install -q --upgrade "${newest[@]}" 2>&1 | grep -v '^WARNING: Location' || true
"$venv/bin/pip" list 2>/dev/null | grep -iE "^($(IFS='|'; echo "${newest[*]}")) " || true
exec "$venv/bin/pytest" "$@"
