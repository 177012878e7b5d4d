#!/usr/bin/env bash
# Set up (first time) and run every check and test: lint, types, template checks, unit,
# integration (on a moto server this script's pytest session starts), browser, chaos smoke, fuzz.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh dev
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ]; then
    echo "==> installing Debian's chromium for the browser tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "!! could not install chromium; the browser tests will fail"
  else
    echo "!! /usr/bin/chromium is missing: run 'sudo apt-get install -y chromium' for the browser tests"
  fi
fi
echo "==> ruff"
.venv/bin/ruff check lib functions tests bench
echo "==> mypy"
.venv/bin/mypy
echo "==> import-linter (the runtime never imports the tooling; layers; no cycles)"
.venv/bin/lint-imports
workers="${ALFRED_TEST_WORKERS:-2}"
template_pid=""
if [ -f infra/check-template.sh ]; then
  if [ "$workers" = "0" ]; then
    echo "==> template checks (cfn-lint, sam validate, sam build, checkov, hadolint)"
    bash infra/check-template.sh
  else
    # Alongside pytest: they share nothing with the tests, and their time (their venv's install on
    # a fresh machine, sam's start-up, pip, I/O) then costs no wall time. Their output follows
    # pytest's; a failure fails this script as before.
    echo "==> template checks (cfn-lint, sam validate, sam build, checkov, hadolint): alongside pytest"
    template_log="$(mktemp)"
    setsid bash infra/check-template.sh >"$template_log" 2>&1 &  # its own process group
    template_pid=$!
    trap 'kill -- -"$template_pid" 2>/dev/null || true; rm -f "$template_log"' EXIT
  fi
fi
# Two pytest processes, each a file at a time (module fixtures such as the browser's stack stay in
# one process; each process starts its own emulator): most tests wait on processes and the
# network, not the CPU. Every test is meant to pass on a machine whose CPU is shared (they wait on
# events, with deadlines that only bound a failure), the chaos smoke test included. Only the
# simulator's seed set (marker sim, tests/sim) runs after the rest: it keeps both cores busy for a
# few minutes by itself. ALFRED_TEST_WORKERS=0 runs everything in one pytest process, with the
# arguments as given.
if [ "$workers" = "0" ]; then
  echo "==> pytest"
  exec .venv/bin/pytest "$@"
fi
# pytest exits 5 when a selection holds no test (e.g. ./test.sh tests/unit in the sim step).
echo "==> pytest, all but the simulator (${workers} processes)"
.venv/bin/pytest -n "$workers" --dist loadfile "$@" -m "not sim" || [ $? -eq 5 ]
if [ -n "$template_pid" ]; then
  echo "==> template checks (they ran alongside pytest)"
  if wait "$template_pid"; then
    cat "$template_log"
  else
    cat "$template_log"
    echo "!! template checks failed" >&2
    exit 1
  fi
fi
echo "==> pytest, the simulator"
.venv/bin/pytest "$@" -m sim || [ $? -eq 5 ]
