#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, lint included. The fixtures start their
# own Kafka and Redis on free ports under a temporary directory, and stop them after.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The tests start `fraudstream` subprocesses: the venv's bin goes first on the PATH.
export PATH="$PWD/.venv/bin:$PATH"
echo "lint: ruff"
python -m ruff check .
python -m pytest -q -p no:cacheprovider "$@"
