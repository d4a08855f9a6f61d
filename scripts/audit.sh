#!/usr/bin/env bash
# Checks every version in requirements.lock against the public advisory database
# (pip-audit). Exit 0: audited, no known advisory; 1: advisories found (listed); 2: not
# audited, because the advisory service did not answer for some package (pip-audit itself
# would then exit 0, having checked nothing: that is not a pass).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
.venv/bin/pip-audit -r requirements.lock --no-deps --disable-pip --progress-spinner off \
  --format json --output "$out" "$@" >/dev/null 2>&1 || true
.venv/bin/python - "$out" <<'PY'
import json
import sys

try:
    deps = json.load(open(sys.argv[1]))["dependencies"]
except (OSError, ValueError, KeyError):
    sys.exit("audit: pip-audit gave no report (is the advisory service reachable?)")
skipped = [d["name"] for d in deps if d.get("skip_reason")]
found = [(d["name"], d["version"], v["id"], v.get("fix_versions", []))
         for d in deps for v in d.get("vulns", [])]
for name, version, vid, fixes in found:
    print(f"audit: {name} {version}: {vid}, fixed in {', '.join(fixes) or 'no release yet'}")
if skipped:
    print(f"audit: NOT AUDITED: the advisory service did not answer for {len(skipped)} of "
          f"{len(deps)} packages ({', '.join(skipped[:5])}...)")
    sys.exit(2)
print(f"audit: {len(deps)} packages, {len(found)} known advisories")
sys.exit(1 if found else 0)
PY
