#!/usr/bin/env bash
# Re-resolves requirements.lock, the exact versions scripts/setup.sh installs, from
# pyproject.toml's floors (the product and its dev extra; devtools' few dependencies are
# among them). Prefers the versions installed in ./.venv, the ones the tests last passed
# on; `--upgrade` takes the newest each floor allows instead. Then run ./scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
VPY=.venv/bin/python
"$VPY" -m pip install -q --disable-pip-version-check "uv>=0.5"
prefer=()
if [ "${1:-}" != "--upgrade" ]; then
  "$VPY" -m pip list --format=freeze --exclude-editable \
    | grep -v -E '^(uv|fraudstream)' > .venv/lock-prefer.txt
  prefer=(-c .venv/lock-prefer.txt)
fi
.venv/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 --universal \
  "${prefer[@]}" --no-annotate --quiet --custom-compile-command ./scripts/lock.sh \
  -o requirements.lock
echo "lock: requirements.lock, $(grep -c '==' requirements.lock) packages"
