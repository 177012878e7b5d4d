#!/usr/bin/env bash
# Lint, validate, build and scan the SAM stack, without AWS credentials or Docker.
#
#   bash infra/check-template.sh
#
# 1. cfn-lint template.yaml
# 2. sam validate (SAM translation) and sam validate --lint
# 3. sam build of each zip function (and the layer it uses) into a temporary directory; the
#    stream function is a container image and needs Docker, so it is not built here: its
#    Dockerfile is linted by hadolint instead (step 5)
# 4. checkov on the template: every finding is fixed or skipped inline with a justification
# 5. hadolint functions/stream/Dockerfile (if present)
#
# The tools live in their own virtual environment (default .venv/infra, override with
# ALFRED_INFRA_VENV), created on first use from infra/requirements-check.txt, because
# aws-sam-cli and checkov pin libraries the application needs at other versions.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REQS="$ROOT/infra/requirements-check.txt"
VENV="${ALFRED_INFRA_VENV:-$ROOT/.venv/infra}"
START=$SECONDS

step() { printf '\n== %s\n' "$*"; }

# ---- tools ---------------------------------------------------------------------------------
stamp="$VENV/.requirements-check.sha256"
want="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    step "installing the check tools into $VENV"
    PY="${PYTHON:-python3}"
    command -v "$PY" >/dev/null || PY=python
    "$PY" -m venv "$VENV"
    # (sed drops pip's notes about unused local package folders; pipefail keeps pip's status)
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 \
        | sed '/^WARNING: Location/d'
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS" 2>&1 \
        | sed '/^WARNING: Location/d'
    echo "$want" > "$stamp"
fi
BIN="$VENV/bin"

export SAM_CLI_TELEMETRY=0
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
# The layer's Makefile runs pip with this interpreter (any Python >= 3.11 with pip will do:
# it only downloads cp312 manylinux wheels).
export PYTHON="$BIN/python"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# ---- 1-2: lint and validate ----------------------------------------------------------------
step "cfn-lint template.yaml"
"$BIN/cfn-lint" template.yaml

step "sam validate"
"$BIN/sam" validate --template-file template.yaml
"$BIN/sam" validate --lint --template-file template.yaml

# ---- 3: build the zip functions and the layer ----------------------------------------------
FUNCTIONS=(SubmitFunction WorkerFunction SweeperFunction)
for fn in "${FUNCTIONS[@]}"; do
    step "sam build $fn"
    "$BIN/sam" build "$fn" --template-file template.yaml --build-dir "$WORK/$fn" >"$WORK/$fn.log" 2>&1 \
        || { cat "$WORK/$fn.log"; echo "sam build $fn failed" >&2; exit 1; }
    test -f "$WORK/$fn/$fn/app.py" || { echo "$fn: app.py missing from the build" >&2; exit 1; }
    echo "built $fn"
done
# The layer is built with each function; check one copy is a python3.12 Lambda layer.
LAYER="$WORK/SubmitFunction/AlfredLibLayer/python"
test -f "$LAYER/alfred_jobs/__init__.py" || { echo "layer: alfred_jobs missing" >&2; exit 1; }
compgen -G "$LAYER/pydantic_core/_pydantic_core.cpython-312-x86_64-linux-gnu.so" >/dev/null \
    || { echo "layer: no cp312 manylinux pydantic_core (wrong platform flags?)" >&2; exit 1; }
compgen -G "$LAYER/cryptography/hazmat/bindings/_rust.abi3.so" >/dev/null \
    || { echo "layer: no manylinux cryptography (Web Push needs it)" >&2; exit 1; }
if compgen -G "$LAYER/moto" >/dev/null; then echo "layer: moto (local only) must not ship" >&2; exit 1; fi
echo "layer: $(du -sh "$LAYER" | cut -f1) unzipped (limit 250M)"

# ---- 4: checkov ------------------------------------------------------------------------------
step "checkov -f template.yaml"
# --skip-download: no calls to the vendor's platform (CI has no account, and may have no network).
"$BIN/checkov" -f template.yaml --framework cloudformation --quiet --compact --skip-download
# checkov drops the resources whose Condition is false with the parameters' defaults, so the
# service hosting of the stream (StreamHosting=service) and SnapStart are scanned, and
# translated by SAM, in a copy whose defaults select them.
step "checkov and sam validate with StreamHosting=service, SubmitSnapStart=Enabled"
SERVICE="$WORK/template-service.yaml"
"$BIN/python" - template.yaml "$SERVICE" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
for name, old, new in (("StreamHosting", "lambda", "service"), ("SubmitSnapStart", "Disabled", "Enabled")):
    text, n = re.subn(rf"(\n  {name}:\n    Type: String\n    Default: ){old}\n", rf"\g<1>{new}\n", text)
    assert n == 1, f"{name}: default {old} not found"
open(sys.argv[2], "w", encoding="utf-8").write(text)
PY
"$BIN/sam" validate --lint --template-file "$SERVICE"
"$BIN/checkov" -f "$SERVICE" --framework cloudformation --quiet --compact --skip-download

# ---- 5: hadolint ----------------------------------------------------------------------------
DOCKERFILE=functions/stream/Dockerfile
step "hadolint $DOCKERFILE"
if [[ -f "$DOCKERFILE" ]]; then
    "$BIN/hadolint" "$DOCKERFILE"
    echo "hadolint: clean"
else
    echo "hadolint: $DOCKERFILE not present yet, skipped"
fi

printf '\ncheck-template: OK (cfn-lint, sam validate, sam build %s, checkov (both stream hostings), hadolint) in %ss\n' \
    "${FUNCTIONS[*]}" "$((SECONDS - START))"
