#!/usr/bin/env bash
# Installs everything fraudstream needs on a fresh machine; quick when already done.
#   OS packages: redis-server (and a JDK + Maven if missing, for the Kafka broker)
#   Python:      this project and its dev extras
#   Kafka:       the broker's jars, assembled once with Maven into ~/.cache/fraudstream
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing OS packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
echo "setup: installing fraudstream (pip install -e .[dev])"
"$PYTHON" -m pip install -q --disable-pip-version-check -e ".[dev]"

echo "setup: Kafka jars"
"$PYTHON" -c "from ops.services import ensure_kafka_libs; print('  ', ensure_kafka_libs())"
