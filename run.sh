#!/usr/bin/env bash
# Set up (first time: the runtime and the local stack only; see scripts/setup.sh) and run alfred-jobs.
# `./run.sh demo` tells the phone-lock story end to end; `./run.sh` (or `./run.sh dev`) runs the whole
# system locally until Ctrl-C; any other alfred-jobs command works too (`./run.sh chat "rice" --follow`).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh local >&2
if [ $# -eq 0 ]; then set -- dev; fi
exec .venv/bin/alfred-jobs "$@"
