#!/usr/bin/env bash
# Set up (first time) and run every check and test: lint, types, template checks, unit,
# integration (on a moto server this script's pytest session starts), browser, chaos (short), fuzz.
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
if [ -f infra/check-template.sh ]; then
  echo "==> template checks (cfn-lint, sam validate --lint, sam build, checkov, hadolint)"
  bash infra/check-template.sh
fi
echo "==> pytest"
.venv/bin/pytest "$@"
