#!/usr/bin/env bash
# Set up (if needed) and bring the whole service up on local defaults: Kafka, Redis, the
# stream worker and the API, with a trained model, then send a short burst of demo traffic.
# Stop it all with `.venv/bin/fraudstream down` (or `fraudstream down` in the activated venv).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fraudstream up "$@"
