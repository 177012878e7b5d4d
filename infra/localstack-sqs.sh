#!/usr/bin/env bash
# The integration suite with SQS on LocalStack (host mode, no Docker) and DynamoDB on moto.
#
# Why this mix: LocalStack's current releases need Python >= 3.12 and its DynamoDB needs Java and
# DynamoDB Local downloaded at start. LocalStack 4.9.2 runs on Python 3.11 in host mode once its
# dependencies are pinned to versions of its time, and its SQS (visibility, redrive, long poll)
# is the part where a second implementation tells us most. See docs/testing.md, "LocalStack".
#
# LocalStack lives in its own virtual environment (.venv-localstack): its pins (cryptography<44,
# ...) must not leak into the project's. The tests run from the project's venv as usual.
#
# It runs the integration tests that go through the queue (marker `queue`: jobs run by workers
# polling the target's queue, the CLI and `dev` against it, its attributes and redrive read
# back), in two pytest processes. The others would only run a second time on the same moto
# DynamoDB: the faithful-proxy tests (test_guarantees, test_conversations, test_asking,
# test_faithful, test_template_env) and the bench harness start moto servers of their own and never
# reach LocalStack, and the rest talk to DynamoDB only.
#
#   infra/localstack-sqs.sh                    # the integration tests marked `queue`
#   infra/localstack-sqs.sh -k cli -x          # extra arguments go to pytest
#   infra/localstack-sqs.sh -m ""              # the whole integration suite
#   infra/localstack-sqs.sh --prepare          # only create .venv-localstack (CI does it meanwhile)
#
# Environment: PYTHON (for the LocalStack venv, default python3), LOCALSTACK_VENV, PROJECT_VENV,
# LOCALSTACK_PORT, MOTO_PORT (default: free ports), KEEP_LOGS=1 (print the LocalStack log at the end),
# ALFRED_TEST_WORKERS (pytest processes, default 2; 0: one process, no xdist).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
LS_VENV="${LOCALSTACK_VENV:-$ROOT/.venv-localstack}"
PROJECT_VENV="${PROJECT_VENV:-$ROOT/.venv}"
LOCALSTACK_VERSION="4.9.2"
# localstack-core[runtime], not the `localstack` meta-package: the latter also installs
# localstack-ext (Pro), whose start-up hook fails without a licence. psutil<7: LocalStack's DNS
# plugin imports a name psutil 7 removed (we disable DNS anyway; the pin keeps the log clean).
PINS=("localstack-core[runtime]==$LOCALSTACK_VERSION" "cbor2<5.7" "pyopenssl<24.3" "cryptography<44"
      "service_identity<24.3" "psutil<7")

log() { printf '[localstack-sqs] %s\n' "$*" >&2; }

if [[ ! -x "$LS_VENV/bin/python" ]] || ! "$LS_VENV/bin/python" -c "import localstack.runtime.main" 2>/dev/null; then
  log "creating $LS_VENV with LocalStack $LOCALSTACK_VERSION"
  "$PYTHON" -m venv "$LS_VENV"
  # (sed drops pip's notes about unused local package folders; pipefail keeps pip's status)
  "$LS_VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | sed '/^WARNING: Location/d' >&2
  "$LS_VENV/bin/python" -m pip install -q "${PINS[@]}" 2>&1 | sed '/^WARNING: Location/d' >&2
fi
if [[ "${1:-}" == "--prepare" ]]; then
  log "$LS_VENV is ready"; exit 0
fi

if [[ ! -x "$PROJECT_VENV/bin/python" ]]; then
  log "no project venv at $PROJECT_VENV: create it first (see README)"; exit 2
fi
free_port() { "$PROJECT_VENV/bin/python" -c 'from alfred_tools.emulator import free_port; print(free_port())'; }


LS_PORT="${LOCALSTACK_PORT:-$(free_port)}"
MOTO_PORT="${MOTO_PORT:-$(free_port)}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/alfred-localstack.XXXXXX")"
PIDS=()
cleanup() {
  local code=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [[ "${KEEP_LOGS:-0}" == 1 || $code -ne 0 ]]; then
    log "LocalStack log (last 40 lines):"; tail -n 40 "$WORK/localstack.log" >&2 || true
  fi
  rm -rf "$WORK"
  exit $code
}
trap cleanup EXIT INT TERM

log "starting LocalStack (SQS only, host mode) on 127.0.0.1:$LS_PORT"
env -i PATH="$PATH" HOME="$HOME" TMPDIR="$WORK" \
  GATEWAY_LISTEN="127.0.0.1:$LS_PORT" SERVICES=sqs EAGER_SERVICE_LOADING=1 DNS_ADDRESS=0 \
  SKIP_SSL_CERT_DOWNLOAD=1 DISABLE_EVENTS=1 LOCALSTACK_VOLUME_DIR="$WORK/volume" \
  FILESYSTEM_ROOT="$WORK/fs" SQS_ENDPOINT_STRATEGY=path \
  "$LS_VENV/bin/python" -m localstack.runtime.main >"$WORK/localstack.log" 2>&1 &
PIDS+=($!)

log "starting moto server (DynamoDB) on 127.0.0.1:$MOTO_PORT"
AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
  "$PROJECT_VENV/bin/python" -m moto.server -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
PIDS+=($!)

wait_for() {  # url, what, pid
  for _ in $(seq 1 240); do
    if curl -fsS "$1" >/dev/null 2>&1; then return 0; fi
    kill -0 "$3" 2>/dev/null || { log "$2 exited before it answered"; return 1; }
    sleep 0.25
  done
  log "$2 did not answer at $1 within 60 s"; return 1
}
wait_for "http://127.0.0.1:$LS_PORT/_localstack/health" LocalStack "${PIDS[0]}"
wait_for "http://127.0.0.1:$MOTO_PORT/moto-api/" "moto server" "${PIDS[1]}"
curl -fsS "http://127.0.0.1:$LS_PORT/_localstack/health" | grep -q '"sqs": "\(available\|running\)"' \
  || { log "LocalStack answers but SQS is not available"; exit 1; }
log "LocalStack $(curl -fsS "http://127.0.0.1:$LS_PORT/_localstack/health" | sed -n 's/.*"version": "\([^"]*\)".*/\1/p') ready"

cd "$ROOT"
export ALFRED_TEST_TARGET=external
export AWS_ENDPOINT_URL_SQS="http://127.0.0.1:$LS_PORT"
export AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:$MOTO_PORT"
export AWS_DEFAULT_REGION=us-east-1 AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
unset AWS_ENDPOINT_URL AWS_SESSION_TOKEN AWS_PROFILE || true
workers="${ALFRED_TEST_WORKERS:-2}"
xdist=()
if [[ "$workers" != 0 ]]; then xdist=(-n "$workers" --dist loadfile); fi
log "running tests/integration -m queue with SQS=$AWS_ENDPOINT_URL_SQS DynamoDB=$AWS_ENDPOINT_URL_DYNAMODB"
set +e
"$PROJECT_VENV/bin/python" -m pytest tests/integration -m queue "${xdist[@]}" -q -p no:cacheprovider "$@"
code=$?
set -e
exit $code
