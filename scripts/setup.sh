#!/usr/bin/env bash
# Create .venv and install alfred-jobs with its dev/test extras. Idempotent and quick when nothing
# changed (a stamp of pyproject.toml's hash skips the pip step).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
stamp=".venv/.alfred-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)-${1:-dev}"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "==> installing alfred-jobs and its ${1:-dev} dependencies into .venv"
  # (this machine's pip config names local mirrors that may be absent: drop those warnings)
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | { grep -v "^WARNING: Location" || true; }
  .venv/bin/python -m pip install -q -e ".[${1:-dev}]" 2>&1 | { grep -v "^WARNING: Location" || true; }
  .venv/bin/python -c "import alfred_jobs" || { echo "!! installation failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
