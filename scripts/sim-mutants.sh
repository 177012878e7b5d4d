#!/usr/bin/env bash
# Proof that the simulator bites: each of issue 12's fixes, reverted one at a time
# (tests/sim/mutants/*.patch), must be found from seeds alone. Prints, for each, the first failing
# seed and how long the search took. Usage: scripts/sim-mutants.sh [minutes per mutant, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-3}"
status=0
for patch in tests/sim/mutants/*.patch; do
  name="$(basename "$patch" .patch)"
  git apply "$patch"
  trap 'git apply -R "$patch"' EXIT
  echo "==> $name (the fix reverted)"
  if .venv/bin/alfred-jobs sim --minutes "$minutes" --first 1 --stop-at-first | grep -E "first failing seed|histories:|every invariant held"; then :; fi
  git apply -R "$patch"
  trap - EXIT
done
exit $status
