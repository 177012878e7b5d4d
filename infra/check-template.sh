#!/usr/bin/env bash
# Lint, validate, build and scan the SAM stack, without AWS credentials or Docker.
#
#   bash infra/check-template.sh
#
# 1. cfn-lint on template.yaml, on a copy whose defaults select the other hostings
#    (StreamHosting=service, SubmitSnapStart=Enabled) and on one with Architecture=x86_64, in one run
# 2. sam validate of the three (the SAM translation; `sam validate --lint` is cfn-lint with the
#    same default configuration, which step 1 already ran, so it is not run again)
# 3. one sam build of the zip functions and the layers they share (built once) into a temporary
#    directory; the stream function is a container image and needs Docker, so it is left out of
#    the copy of the template that is built: its Dockerfile is linted by hadolint instead (step 5)
# 4. checkov on both templates, in one run: every finding is fixed or skipped inline with a
#    justification
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

# checkov and the SAM translator drop the resources whose Condition is false with the
# parameters' defaults, so the service hosting of the stream (StreamHosting=service) and SnapStart
# are linted and scanned in a copy whose defaults select them.
SERVICE="$WORK/template-service.yaml"
"$BIN/python" - template.yaml "$SERVICE" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
for name, old, new in (("StreamHosting", "lambda", "service"), ("SubmitSnapStart", "Disabled", "Enabled")):
    text, n = re.subn(rf"(\n  {name}:\n    Type: String\n    Default: ){re.escape(old)}\n", rf"\g<1>{new}\n", text)
    assert n == 1, f"{name}: default {old} not found"
open(sys.argv[2], "w", encoding="utf-8").write(text)
PY
# ... and the x86_64 functions and layer (Architecture=x86_64) in another.
X86="$WORK/template-x86.yaml"
sed 's/^    Default: arm64$/    Default: x86_64/' template.yaml > "$X86"
grep -q '^    Default: x86_64$' "$X86" || { echo "Architecture: default arm64 not found" >&2; exit 1; }

# ---- 1-2: lint and validate ----------------------------------------------------------------
step "cfn-lint template.yaml (and with StreamHosting=service, SubmitSnapStart=Enabled; and Architecture=x86_64)"
"$BIN/cfn-lint" template.yaml "$SERVICE" "$X86"

step "sam validate (both architectures, and the other hostings)"
"$BIN/sam" validate --template-file template.yaml
"$BIN/sam" validate --template-file "$X86"
"$BIN/sam" validate --template-file "$SERVICE"

# ---- 3: build the zip functions and the layer, once ------------------------------------------
FUNCTIONS=(SubmitFunction WorkerFunction SweeperFunction)
step "sam build ${FUNCTIONS[*]} and the layers"
# The template without its image functions (JSON, intrinsics in long form, as cfn-lint reads it);
# --base-dir keeps CodeUri/ContentUri relative to the checkout.
ZIP_TEMPLATE="$WORK/template-zip.json"
"$BIN/python" - template.yaml "$ZIP_TEMPLATE" "${FUNCTIONS[@]}" <<'PY'
import json, sys
from cfnlint.decode import decode
template, problems = decode(sys.argv[1])
assert template is not None and not problems, problems
resources = template["Resources"]
images = [k for k, v in resources.items() if v.get("Properties", {}).get("PackageType") == "Image"]
for k in images:
    del resources[k]
zips = sorted(k for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function")
assert zips == sorted(sys.argv[3:]), f"zip functions {zips}: update FUNCTIONS in infra/check-template.sh"
json.dump(template, open(sys.argv[2], "w", encoding="utf-8"))
PY
BUILD="$WORK/build"
"$BIN/sam" build --template-file "$ZIP_TEMPLATE" --base-dir "$ROOT" --build-dir "$BUILD" >"$WORK/build.log" 2>&1 \
    || { cat "$WORK/build.log"; echo "sam build failed" >&2; exit 1; }
for fn in "${FUNCTIONS[@]}"; do
    test -f "$BUILD/$fn/app.py" || { echo "$fn: app.py missing from the build" >&2; exit 1; }
    echo "built $fn"
done
# Check each layer built is a Lambda layer of its runtime and architecture (the default's,
# AlfredLibLayerArm64, must be there; sam build may build the others whatever their Condition).
check_layer() {  # logical id, the pydantic_core wheel tag it must hold
    local LAYER="$BUILD/$1/python"
    test -f "$LAYER/alfred_jobs/__init__.py" || { echo "$1: alfred_jobs missing" >&2; exit 1; }
    compgen -G "$LAYER/pydantic_core/_pydantic_core.$2.so" >/dev/null \
        || { echo "$1: no $2 pydantic_core (wrong platform flags?)" >&2; exit 1; }
    compgen -G "$LAYER/cryptography/hazmat/bindings/_rust.abi3.so" >/dev/null \
        || { echo "$1: no manylinux cryptography (Web Push needs it)" >&2; exit 1; }
    if compgen -G "$LAYER/moto" >/dev/null; then echo "$1: moto (local only) must not ship" >&2; exit 1; fi
    echo "$1: $2, $(du -sh "$LAYER" | cut -f1) unzipped (limit 250M)"
}
check_layer AlfredLibLayerArm64 cpython-312-aarch64-linux-gnu
if [[ -d "$BUILD/AlfredLibLayer" ]]; then check_layer AlfredLibLayer cpython-312-x86_64-linux-gnu; fi

# ---- 4: checkov ------------------------------------------------------------------------------
step "checkov -f template.yaml (and with StreamHosting=service, SubmitSnapStart=Enabled)"
# --skip-download: no calls to the vendor's platform (CI has no account, and may have no network).
"$BIN/checkov" -f template.yaml -f "$SERVICE" --framework cloudformation --quiet --compact --skip-download

# ---- 5: hadolint ----------------------------------------------------------------------------
DOCKERFILE=functions/stream/Dockerfile
step "hadolint $DOCKERFILE"
if [[ -f "$DOCKERFILE" ]]; then
    "$BIN/hadolint" "$DOCKERFILE"
    echo "hadolint: clean"
else
    echo "hadolint: $DOCKERFILE not present yet, skipped"
fi

printf '\ncheck-template: OK (cfn-lint and sam validate on both stream hostings and both architectures, checkov, one sam build of %s and the layers for both architectures, hadolint) in %ss\n' \
    "${FUNCTIONS[*]}" "$((SECONDS - START))"
