#!/usr/bin/env bash
# Installs everything fraudstream needs on a fresh machine; quick when already done.
#   OS packages: redis-server, python3-venv (and a JDK + Maven if missing, for Kafka)
#   Python:      this project with its dev extras, at the versions of requirements.lock,
#                and its development tools (devtools/:
#                the local launcher, the test environment, the chaos harness), in the
#                project's own virtual environment ./.venv (a stock Debian/Ubuntu
#                python3 refuses system-wide pip installs, PEP 668; the venv also keeps
#                the project off the system)
#   Kafka:       the broker's jars, assembled once with Maven into ~/.cache/fraudstream
#   --bench:     also the benchmarks' load generator (vegeta, built with Go)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
if [ ! -x .venv/bin/python ] && ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing OS packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating the virtual environment .venv"
  "$PYTHON" -m venv .venv
fi
VPY=.venv/bin/python
echo "setup: installing fraudstream and its devtools into .venv, at the versions of requirements.lock"
"$VPY" -m pip install -q --disable-pip-version-check --upgrade "pip>=25.3"
# The lock pins every package (scripts/lock.sh re-resolves it); the floors in pyproject.toml
# stay above known advisories for those who install the product without it.
"$VPY" -m pip install -q --disable-pip-version-check -c requirements.lock -e ".[dev]" -e ./devtools

echo "setup: Kafka jars"
"$VPY" -c "from fraudstream_dev.launcher import ensure_kafka_libs; print('  ', ensure_kafka_libs())"
if [ "${1:-}" = "--bench" ]; then
  # The latency benchmark's load generator (vegeta) and its empty-endpoint floor need Go.
  command -v go >/dev/null || { echo "setup: --bench needs Go (apt-get install golang)"; exit 1; }
  if [ ! -x .venv/bin/vegeta ]; then
    echo "setup: building vegeta into .venv/bin"
    GOBIN="$PWD/.venv/bin" go install github.com/tsenart/vegeta/v12@v12.13.0
  fi
fi
echo "setup: done; activate with: source .venv/bin/activate"
