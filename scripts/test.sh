#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, lint included. The fixtures start their
# own Kafka and Redis on free ports under a temporary directory, and stop them after.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTHON="${PYTHON:-python3}"
echo "lint: ruff"
"$PYTHON" -m ruff check .
"$PYTHON" -m pytest -q -p no:cacheprovider "$@"
