#!/usr/bin/env bash
# Set up (first time) and run alfred-jobs. `./run.sh demo` tells the phone-lock story end to end;
# `./run.sh` (or `./run.sh dev`) runs the whole system locally; any other alfred-jobs command works too.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh dev >&2
if [ $# -eq 0 ]; then set -- dev; fi
exec .venv/bin/alfred-jobs "$@"
