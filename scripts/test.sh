#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, lint included: against one Redis and
# one Kafka broker, then the tests that use Redis or Kafka (marker "integration"; the others
# start neither) again against a Redis Cluster (three primaries) and a Kafka of three
# brokers, but those marked "any_topology" (what they check does not depend on it). The fixtures start their own servers on free ports under a temporary directory,
# and stop them after. FRAUDSTREAM_TEST_RUNS="single" (or "cluster") runs one of the two;
# arguments go to pytest. Each run ends with its 15 slowest tests: CI's whole run must stay
# under 30 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The tests start `fraudstream` subprocesses: the venv's bin goes first on the PATH.
export PATH="$PWD/.venv/bin:$PATH"
echo "lint: ruff"
python -m ruff check .
echo "lint: layers (import-linter; the contracts are in pyproject.toml)"
lint-imports --no-cache
echo "types: mypy"
mypy
echo "dependencies: the lock against the advisory database (pip-audit)"
# A known advisory fails the run. Where the advisory service cannot be reached (this
# workplace's machines reach the package index alone) the run says so and goes on: the
# floors in pyproject.toml, checked by tests/test_packaging.py, are what holds there.
audit=0; bash scripts/audit.sh || audit=$?
[ "$audit" -eq 2 ] || [ "$audit" -eq 0 ] || exit "$audit"
# Each run bounded as a whole too (a test is, by pytest-timeout): a hang fails it in minutes.
guard=(timeout --kill-after=30 "${FRAUDSTREAM_TEST_RUN_TIMEOUT:-1200}")
for run in ${FRAUDSTREAM_TEST_RUNS:-single cluster}; do
  case "$run" in
    single)
      echo "tests: one Redis, one Kafka broker"
      FRAUDSTREAM_REDIS_CLUSTER=false FRAUDSTREAM_TEST_KAFKA_BROKERS=1 \
        "${guard[@]}" python -m pytest -q -p no:cacheprovider --durations=15 "$@" ;;
    cluster)
      echo "tests using Redis or Kafka: Redis Cluster of three primaries, three Kafka brokers"
      FRAUDSTREAM_REDIS_CLUSTER=true FRAUDSTREAM_TEST_KAFKA_BROKERS=3 \
        "${guard[@]}" python -m pytest -q -p no:cacheprovider -m "integration and not any_topology" \
        --durations=15 "$@" ;;
    *) echo "FRAUDSTREAM_TEST_RUNS: unknown run '$run' (single, cluster)" >&2; exit 2 ;;
  esac
done
