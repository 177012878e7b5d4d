#!/usr/bin/env bash
# Create .venv and install alfred-jobs into it, showing each step and how long it took.
#   scripts/setup.sh local   what running needs (./run.sh): the runtime plus the `local` extra
#                            (moto server, httpx, pyyaml)
#   scripts/setup.sh dev     everything (./test.sh): `local` plus the test toolchain
# Idempotent and quick when nothing changed (a stamp of pyproject.toml's hash and the extra skips
# pip); a venv set up with `dev` already has `local`, so running reuses it as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-dev}"
case "$extra" in local|dev) ;; *) echo "usage: scripts/setup.sh [local|dev]" >&2; exit 2 ;; esac
PY="${PYTHON:-python3}"

step_start=$SECONDS
step() { step_start=$SECONDS; echo "==> $*"; }
done_step() { echo "    done in $((SECONDS - step_start))s"; }
# This machine's pip config may name local mirrors that are absent: drop those warnings only.
quiet_warnings() { grep --line-buffered -v "^WARNING: Location" >&2 || true; }

stamp=".venv/.alfred-installed"
hash="$(sha256sum pyproject.toml | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ -x .venv/bin/python ] && { [ "$have" = "$hash-$extra" ] || { [ "$extra" = local ] && [ "$have" = "$hash-dev" ]; }; }; then
  exit 0
fi

if [ ! -x .venv/bin/python ]; then
  if ! command -v "$PY" >/dev/null 2>&1 || ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "!! alfred-jobs needs Python 3.11 or newer; '$PY' is $("$PY" -V 2>&1 || echo missing)." >&2
    echo "   Run with PYTHON=/path/to/python3.11 (or newer), e.g. PYTHON=python3.12 ./run.sh demo" >&2
    exit 1
  fi
  step "creating .venv ($("$PY" -V 2>&1))"
  "$PY" -m venv .venv
  done_step
fi

what="the runtime and the local stack (moto server, httpx, pyyaml)"
if [ "$extra" = dev ]; then what="the runtime, the local stack and the test toolchain (larger: a minute or two)"; fi
# pip >= 23 installs a pyproject.toml project editable; an older one (an old venv module) is upgraded.
if ! .venv/bin/python -c 'import sys, pip; sys.exit(int(pip.__version__.split(".")[0]) < 23)' 2>/dev/null; then
  step "upgrading pip in .venv"
  .venv/bin/python -m pip install -q --upgrade pip 2> >(quiet_warnings)
  done_step
fi
step "installing alfred-jobs[$extra] into .venv: $what"
# One line per package as pip resolves it, then the install itself (counted).
.venv/bin/python -m pip install --progress-bar off -e ".[$extra]" 2> >(quiet_warnings) | .venv/bin/python -u -c '
import sys
for line in sys.stdin:
    if line.startswith("Collecting "):
        print("    collecting", line.split()[1], flush=True)
    elif line.startswith("Installing collected packages: "):
        n = len(line.split(":", 1)[1].split(","))
        print(f"    installing {n} packages (no output until it is done)...", flush=True)
    elif line.startswith("Successfully installed "):
        print(f"    installed {len(line.split()) - 2} packages", flush=True)
'
.venv/bin/python -c "import alfred_jobs, alfred_tools.cli" || { echo "!! installation failed" >&2; exit 1; }
done_step
echo "$hash-$extra" > "$stamp"
