#!/usr/bin/env bash
# Set up (if needed) and bring the whole service up on local defaults: Kafka, Redis, the
# stream worker and the API, with a trained model, then send a short burst of demo traffic.
# Stop it all with `fraudstream down`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec fraudstream up "$@"
