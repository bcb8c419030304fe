#!/usr/bin/env bash
# Runs the README quickstart literally against a fresh server on loopback: create a workspace,
# fleet and device with the CLI (checking the line each prints), publish one message with
# mosquitto_pub over TLS, read it back.
set -euo pipefail
cd "$(dirname "$0")/.."
CORRAL=${CORRAL:-$PWD/target/debug/corral}
[[ -x $CORRAL ]] || cargo build --locked --ignore-rust-version
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"

# Ports other than the defaults so a developer's running instance does not collide.
export CORRAL_MQTT__TLS_LISTEN=127.0.0.1:28883 CORRAL_HTTP__LISTEN=127.0.0.1:28080 CORRAL_HTTPS__LISTEN=127.0.0.1:28443
"$CORRAL" serve >serve.log 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -fsS http://127.0.0.1:28080/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
export CORRAL_SERVER=http://127.0.0.1:28080
export CORRAL_API_KEY=$(grep -o 'crl_[A-Za-z0-9_-]*' serve.log | head -n1)
corral() { "$CORRAL" "$@"; }

# Each change says what it did, as the README shows.
expect() { echo "$2"; [[ $2 =~ $1 ]] || { echo "expected a line like: $1" >&2; exit 1; }; }
expect '^created workspace Plant \(id [0-9a-f-]+\)$' "$(corral workspace create Plant)"
expect '^created fleet sensors \(id [0-9a-f-]+\) in workspace Plant$' \
  "$(corral fleet create sensors --workspace Plant)"
out=$(corral device create thermo-1 --fleet sensors)
expect '^created device thermo-1 \(id [0-9a-f-]+\) in fleet sensors' "$out"
TOKEN=$(echo "$out" | awk '/^access token/ {print $3}')
mosquitto_pub -h 127.0.0.1 -p 28883 --cafile data/pki/ca.pem \
  -u "$TOKEN" -q 1 -t v1/devices/me/telemetry -m '{"temperature":21.5}'
corral telemetry thermo-1 | tee telemetry.txt
corral telemetry thermo-1 --latest
grep -q 'temperature *21.5' telemetry.txt
kill -TERM "$pid"
wait "$pid"
echo "quickstart: ok"
