#!/usr/bin/env bash
# Set up (see setup.sh), then lint and run the whole test suite, Docker tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/pytest "$@"
