#!/usr/bin/env bash
# Runs schemathesis (every check) against the OpenAPI document a corral binary serves.
#
#   bash tests/openapi/run.sh target/debug/corral [extra `st run` options]
#
# Starts the server on loopback with a fresh data directory, creates one workspace, fleet and
# device so that operations on ids reach their handlers (schemathesis.toml routes the ids),
# runs `st run` with the fixed seed and the settings of schemathesis.toml, and stops the
# server on any exit. The venv lives in target/schemathesis-venv and is reused while it holds
# the pinned version. The run is bounded (max examples per operation, 900 s overall).
# Exit status: 0 when schemathesis found nothing, and the server logged no panic.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 BINARY [st run options]" >&2
  exit 2
fi
bin_arg=$1
shift
binary=$(cd "$(dirname "$bin_arg")" && pwd)/$(basename "$bin_arg")
[[ -x $binary ]] || { echo "not an executable file: $bin_arg" >&2; exit 2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=$root/target/schemathesis-venv
version=4.32.5
python=${PYTHON:-python3}

if ! "$venv/bin/python" -c "import importlib.metadata as m; assert m.version('schemathesis') == '$version'" 2>/dev/null; then
  echo "setting up $venv" >&2
  [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "schemathesis==$version"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/corral-openapi.XXXXXX")
pid=
cleanup() {
  [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

port=${CORRAL_OPENAPI_PORT:-28190}
base=http://127.0.0.1:$port
(
  cd "$work"
  CORRAL_HTTP__LISTEN=127.0.0.1:$port CORRAL_HTTPS__LISTEN=127.0.0.1:0 \
    CORRAL_MQTT__TLS_LISTEN=127.0.0.1:0 CORRAL_STORE__MIN_FREE_MB=16 \
    exec "$binary" serve >serve.log 2>&1
) &
pid=$!
for _ in $(seq 150); do
  curl -fsS "$base/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "$base/readyz" >/dev/null || { cat "$work/serve.log" >&2; exit 1; }
key=$(grep -o 'crl_[A-Za-z0-9_-]*' "$work/serve.log" | head -n1)
[[ -n $key ]] || { echo "no bootstrap key in the server log" >&2; exit 1; }

api() {
  curl -fsS -H "Authorization: Bearer $key" -H 'Content-Type: application/json' "$@"
}
id_of() { "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }
export CORRAL_WS CORRAL_FLEET CORRAL_DEVICE CORRAL_API_KEY=$key
CORRAL_WS=$(api -d '{"name":"openapi-ws"}' "$base/api/v1/workspaces" | id_of)
CORRAL_FLEET=$(api -d "{\"name\":\"openapi-fleet\",\"workspace_id\":\"$CORRAL_WS\"}" "$base/api/v1/fleets" | id_of)
CORRAL_DEVICE=$(api -d "{\"name\":\"openapi-device\",\"fleet_id\":\"$CORRAL_FLEET\"}" "$base/api/v1/devices" \
  | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["device"]["id"])')

# schemathesis keeps its example database in the working directory: the run's own.
cd "$work"
status=0
timeout 900 "$venv/bin/st" --no-color --config-file "$here/schemathesis.toml" run "$base/api/v1/openapi.json" \
  --max-examples 20 --workers 2 --seed 7 --phases examples,coverage,fuzzing \
  "$@" || status=$?
if grep -n 'panicked' "$work/serve.log" >&2; then
  echo "the server panicked during the run" >&2
  status=1
fi
exit $status
