#!/usr/bin/env bash
# Set up (first time: the runtime and the local stack only; see scripts/setup.sh) and run alfred-jobs.
# `./run.sh demo` tells the phone-lock story end to end; `./run.sh` (or `./run.sh dev`) runs the whole
# system locally until Ctrl-C; any other alfred-jobs command works too (`./run.sh chat "rice" --follow`).
set -euo pipefail
# The CLI's hints ("follow it: ... watch ID") print the command as it was started here, so they
# run as printed for someone who never activated the venv (a bare name: bash run.sh -> ./run.sh).
case "$0" in */*) ALFRED_CLI_COMMAND="$0" ;; *) ALFRED_CLI_COMMAND="./$0" ;; esac
export ALFRED_CLI_COMMAND
cd "$(dirname "$0")"
bash scripts/setup.sh local >&2
if [ $# -eq 0 ]; then set -- dev; fi
exec .venv/bin/alfred-jobs "$@"
