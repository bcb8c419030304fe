#!/usr/bin/env bash
# Runs the examples in examples/ against a fresh Corral and checks what each one did through the
# REST API: telemetry stored, attributes set, commands answered, webhooks verified.
#
#   bash examples/run.sh BINARY        # e.g. bash examples/run.sh target/debug/corral
#
# It starts `BINARY serve` on free 127.0.0.1 ports with a new data directory and the admin key in
# CORRAL_ADMIN_KEY (generated when unset), makes the workspace, fleets and devices with the CLI,
# runs each example, prints PASS/FAIL/SKIP per example and a summary, and exits non-zero if any
# failed. The Rust example is built first when cargo is there, and skipped when it is not. The
# Python examples get a venv in target/examples-venv (PyPI the first time only). Every wait is
# bounded; the server and everything else started here are stopped on exit. EXAMPLES_KEEP=1 keeps
# the work directory (logs, certificates); it is also kept when an example failed.
set -euo pipefail

if [[ $# -ne 1 || ! -f $1 || ! -x $1 ]]; then
  echo "usage: $0 BINARY  (an executable corral binary)" >&2
  exit 2
fi
binary=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
python=${PYTHON:-python3}
venv=$root/target/examples-venv

for tool in curl openssl "$python"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$tool is needed" >&2; exit 2; }
done

started=$SECONDS
work=$(mktemp -d "${TMPDIR:-/tmp}/corral-examples.XXXXXX")
server_pid=
bg_pids=() # the receiver and devices running in the background
failed=0

# shellcheck disable=SC2317  # reached through the trap
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local pid
  for pid in "${bg_pids[@]}" $server_pid; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  # SIGTERM lets the server flush and record a clean stop; it takes well under 10 s.
  for pid in "${bg_pids[@]}" $server_pid; do
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [[ $status -ne 0 || $failed -ne 0 || -n ${EXAMPLES_KEEP:-} ]]; then
    echo "work directory kept: $work"
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers ----------------------------------------------------------------------------------

# Prints one field of the JSON on standard input by a dotted path (items.0.id): strings bare,
# anything else as JSON (null when absent).
jget() {
  "$python" -c '
import json, sys
v = json.load(sys.stdin)
for k in filter(None, sys.argv[1].split(".")):
    if isinstance(v, list):
        v = v[int(k)] if len(v) > int(k) else None
    else:
        v = v.get(k) if isinstance(v, dict) else None
print(v if isinstance(v, str) else json.dumps(v))
' "$1"
}

# Runs the command until it succeeds, for at most $1 seconds.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

corral() { "$binary" "$@"; }

# GET on the admin REST API.
api() { curl -fsS --max-time 15 -H "Authorization: Bearer $admin_key" "$http/api/v1/$1"; }

# In an example: `check ... || fail "why" || return` records why and makes the example fail.
why=
fail() {
  why=$*
  return 1
}
skip() {
  why=$*
  return 2
}
# Fails unless the JSON field of $1 (a document) at path $2 equals $3 (as jget prints it).
expect_field() {
  local got
  got=$(jget "$2" <<<"$1") || got="(not JSON)"
  [[ $got == "$3" ]] || fail "$4: $2 is $got, want $3"
}

# Waits for a background process and forgets it.
reap() {
  local pid=$1 status=0 kept=() p
  wait "$pid" || status=$?
  for p in "${bg_pids[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
  bg_pids=("${kept[@]}")
  return "$status"
}

passed=0
skipped=0
run_example() {
  local name=$1 fn=$2 t0=$SECONDS status=0
  why=
  "$fn" >"$work/$name.log" 2>&1 || status=$?
  local took="($((SECONDS - t0)) s)"
  case $status in
    0)
      passed=$((passed + 1))
      echo "PASS $name $took"
      ;;
    2)
      skipped=$((skipped + 1))
      echo "SKIP $name $took: $why"
      ;;
    *)
      failed=$((failed + 1))
      echo "FAIL $name $took: ${why:-exit status $status}"
      tail -n 15 "$work/$name.log" | sed 's/^/    /'
      ;;
  esac
}

# --- the Python venv, shared by the SDK and provisioning examples -----------------------------

venv_ready() {
  [[ -x $venv/bin/python ]] && "$venv/bin/python" - 2>/dev/null <<'EOF'
import importlib.metadata as m
assert m.version("tb-mqtt-client") == "1.13.14"
import mmh3, paho.mqtt.client, tb_device_mqtt  # noqa: F401
EOF
}
if ! venv_ready; then
  echo "setting up $venv"
  [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
  timeout 300 "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    -r "$here/python-sdk-device/requirements.txt"
  venv_ready || { echo "the venv at $venv is not usable" >&2; exit 2; }
fi

# --- the server -------------------------------------------------------------------------------

# The key must be at least 32 characters; the leading letter keeps it a string when Corral reads
# the variable as TOML.
admin_key=${CORRAL_ADMIN_KEY:-k$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')}
# Port 0 everywhere: the kernel picks free ports, and the start-up log line names them.
env -u CORRAL_CONFIG -u CORRAL_ADMIN_KEY_FILE \
  CORRAL_DATA_DIR="$work/data" \
  CORRAL_ADMIN_KEY="$admin_key" \
  CORRAL_LOG__FORMAT=json \
  CORRAL_MQTT__TLS_LISTEN=127.0.0.1:0 \
  CORRAL_HTTP__LISTEN=127.0.0.1:0 \
  CORRAL_HTTPS__ENABLED=false \
  CORRAL_STORE__MIN_FREE_MB=16 \
  "$binary" serve >"$work/corral.log" 2>&1 &
server_pid=$!

banner_ports() {
  "$python" - "$work/corral.log" <<'EOF'
import json, sys
for line in open(sys.argv[1], errors="replace"):
    try:
        doc = json.loads(line)
    except ValueError:
        continue
    if isinstance(doc, dict) and doc.get("message") == "corral is running":
        print(doc["mqtt_tls"].rsplit(":", 1)[1], doc["http"].rsplit(":", 1)[1])
        sys.exit(0)
sys.exit(1)
EOF
}
if ! wait_for 30 banner_ports; then
  echo "corral did not start within 30 s:" >&2
  tail -n 20 "$work/corral.log" >&2
  exit 1
fi
read -r mqtt_port http_port < <(banner_ports)
http=http://127.0.0.1:$http_port
wait_for 30 curl -fsS --max-time 2 "$http/readyz" || { echo "no /readyz within 30 s" >&2; exit 1; }
curl -fsS --max-time 10 "$http/api/v1/ca.pem" -o "$work/ca.pem"
echo "corral up: MQTT/TLS 127.0.0.1:$mqtt_port, HTTP $http (work directory $work)"

export CORRAL_SERVER=$http CORRAL_API_KEY=$admin_key
corral workspace create examples >/dev/null
for fleet in sdk shell rust provisioned webhooks; do
  corral fleet create "$fleet" --workspace examples >/dev/null
done
fleet_id() { corral fleet show "$1" --json | jget id; }

# --- the examples -----------------------------------------------------------------------------

# 1. The ThingsBoard Python SDK over MQTT/TLS with a token; this script plays the operator.
example_python_sdk() {
  local doc dev token pid job
  doc=$(corral device create sdk-thermo --fleet sdk --json) || fail "device create" || return
  dev=$(jget device.id <<<"$doc")
  token=$(jget credentials.token <<<"$doc")
  timeout 60 "$venv/bin/python" "$here/python-sdk-device/device.py" --host 127.0.0.1 \
    --port "$mqtt_port" --ca "$work/ca.pem" --token "$token" --wait 40 \
    >"$work/python-sdk-device.out" 2>&1 &
  pid=$!
  bg_pids+=("$pid")
  wait_for 20 grep -q '^ready:' "$work/python-sdk-device.out" \
    || fail "not ready within 20 s: $(tail -n 3 "$work/python-sdk-device.out")" || return
  # Both reach the live session: the attribute as a push, the command as an RPC request.
  corral attributes set sdk-thermo target_temperature=23.5 \
    || fail "attributes set" || return
  job=$(corral job send sdk-thermo setInterval --params '{"seconds":10}' --two-way --wait 20 \
    --json) || fail "job send" || return
  reap "$pid" \
    || fail "the device exited with $?: $(tail -n 3 "$work/python-sdk-device.out")" || return
  cat "$work/python-sdk-device.out"
  expect_field "$job" state succeeded "the command" || return
  expect_field "$job" result.interval 10 "the command's reply" || return
  doc=$(api "devices/$dev/telemetry/latest?keys=temperature,humidity") \
    || fail "latest telemetry" || return
  expect_field "$doc" data.temperature.value 21.5 "telemetry" || return
  expect_field "$doc" data.humidity.value 48 "telemetry" || return
  doc=$(api "devices/$dev/attributes?scope=client") || fail "attributes" || return
  expect_field "$doc" client.firmware_version.value 1.4.2 "client attributes" || return
  # The device reports the shared value back once it got the push.
  expect_field "$doc" client.target_temperature_applied.value 23.5 "client attributes" || return
}

# 2. curl over the HTTP device API. The command is queued first: the long poll takes it at once.
example_curl() {
  local doc dev token job
  doc=$(corral device create shell-1 --fleet shell --json) || fail "device create" || return
  dev=$(jget device.id <<<"$doc")
  token=$(jget credentials.token <<<"$doc")
  corral attributes set shell-1 interval=30 || fail "attributes set" || return
  job=$(corral job send shell-1 blink --params '{"times":3}' --two-way --json | jget id) \
    || fail "job send" || return
  CORRAL_URL=$http TOKEN=$token RPC_WAIT_MS=10000 timeout 60 sh "$here/curl-device/device.sh" \
    || fail "device.sh exited with $?" || return
  doc=$(api "jobs/$job?wait_ms=5000") || fail "job show" || return
  expect_field "$doc" state succeeded "the command" || return
  expect_field "$doc" result.method blink "the command's reply" || return
  doc=$(api "devices/$dev/telemetry/latest?keys=temperature,battery") \
    || fail "latest telemetry" || return
  expect_field "$doc" data.temperature.value 19.5 "telemetry" || return
  expect_field "$doc" data.battery.value 87 "telemetry" || return
  doc=$(api "devices/$dev/attributes?scope=client") || fail "attributes" || return
  expect_field "$doc" client.firmware_version.value 0.9.1 "client attributes" || return
  # Only there if the attribute request answered the shared interval.
  expect_field "$doc" client.interval_applied.value 30 "client attributes" || return
}

# 3. Rust (rumqttc + rustls) with a certificate from a CSR: the private key never leaves the device.
example_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    # CI builds Corral with cargo, so there a missing cargo is a broken machine, not a choice.
    [[ ${CI:-} != true ]] || fail "cargo not found, and CI must run this example" || return
    skip "cargo not found: install Rust to build this example" || return
  fi
  local dir=$here/rust-device doc dev job bin
  # Its own target directory (git-ignored there), whatever CARGO_TARGET_DIR says, so the binary
  # is where this script looks. A first build takes a few minutes; later ones are quick.
  timeout 1800 cargo build --locked --ignore-rust-version --manifest-path "$dir/Cargo.toml" \
    --target-dir "$dir/target" || fail "cargo build failed" || return
  bin=$dir/target/debug/corral-rust-device
  doc=$(corral device create rust-1 --fleet rust --json) || fail "device create" || return
  dev=$(jget device.id <<<"$doc")
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=rust-1 \
    -keyout "$work/rust-1.key" -out "$work/rust-1.csr" || fail "openssl req" || return
  corral device sign-csr rust-1 --csr "$work/rust-1.csr" --out "$work/rust-1.pem" \
    || fail "sign-csr" || return
  # Queued while the device is offline; it goes out when the device subscribes.
  job=$(corral job send rust-1 getStatus --two-way --json | jget id) || fail "job send" || return
  timeout 60 "$bin" --host 127.0.0.1 --port "$mqtt_port" --ca "$work/ca.pem" \
    --cert "$work/rust-1.pem" --key "$work/rust-1.key" --client-id rust-1 --timeout 30 \
    || fail "the device exited with $?" || return
  doc=$(api "jobs/$job?wait_ms=5000") || fail "job show" || return
  expect_field "$doc" state succeeded "the command" || return
  expect_field "$doc" result.firmware_version 2.0.1 "the command's reply" || return
  # The binary has no token option: data on this device means the certificate identified it.
  doc=$(api "devices/$dev/telemetry/latest?keys=temperature") || fail "latest telemetry" || return
  expect_field "$doc" data.temperature.value 22.75 "telemetry" || return
  doc=$(api "devices/$dev/attributes?scope=client") || fail "attributes" || return
  expect_field "$doc" client.firmware_version.value 2.0.1 "client attributes" || return
}

# 4. Fleet provisioning over MQTT/TLS, then a connection with the credentials it got.
example_provisioning() {
  local doc key secret fleet dev creds=$work/sensor-0042.json
  doc=$(corral fleet provisioning set provisioned --strategy allow-create --json) \
    || fail "provisioning set" || return
  key=$(jget key <<<"$doc")
  secret=$(jget secret <<<"$doc")
  fleet=$(fleet_id provisioned)
  local cmd=(timeout 60 "$venv/bin/python" "$here/provisioning/provision.py" --host 127.0.0.1
    --port "$mqtt_port" --ca "$work/ca.pem" --key "$key" --secret "$secret" --name sensor-0042
    --credentials-file "$creds")
  "${cmd[@]}" || fail "provision.py exited with $?" || return
  doc=$(api "devices?fleet_id=$fleet&name=sensor-0042") || fail "device list" || return
  dev=$(jget items.0.id <<<"$doc")
  [[ $dev != null ]] || fail "no device sensor-0042 in the fleet" || return
  doc=$(api "devices/$dev/telemetry/latest?keys=temperature") || fail "latest telemetry" || return
  expect_field "$doc" data.temperature.value 20.25 "telemetry" || return
  [[ $(stat -c %a "$creds") == 600 ]] || fail "the credentials file is not mode 0600" || return
  # A restart uses the stored token: asking again for the same name would be refused.
  "${cmd[@]}" | tee "$work/provision-again.out" || fail "the second start exited non-zero" || return
  grep -q '^credentials from' "$work/provision-again.out" \
    || fail "the second start did not reuse the stored credentials" || return
}

# 5. A webhook receiver that verifies Corral's signature; forged requests must get 401.
example_webhook() {
  local secret_file=$work/hook.secret events=$work/events.jsonl pid port url doc token hook
  od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$secret_file"
  timeout 120 "$python" "$here/webhook-receiver/receiver.py" --port 0 \
    --secret-file "$secret_file" --events "$events" >"$work/receiver.out" 2>"$work/receiver.err" &
  pid=$!
  bg_pids+=("$pid")
  wait_for 10 grep -q '^listening on' "$work/receiver.out" \
    || fail "receiver did not start" || return
  port=$(sed -n 's#^listening on http://127\.0\.0\.1:\([0-9]*\)/$#\1#p' "$work/receiver.out")
  url=http://127.0.0.1:$port/corral
  doc=$(corral device create tank-7 --fleet webhooks --json) || fail "device create" || return
  token=$(jget credentials.token <<<"$doc")
  hook=$(corral integration create examples-hook --url "$url" --kind data \
    --fleet "$(fleet_id webhooks)" --signing-secret-file "$secret_file" --json \
    | jget integration.id) || fail "integration create" || return
  curl -fsS --max-time 10 -H 'Content-Type: application/json' -d '{"level":73}' \
    "$http/api/v1/$token/telemetry" || fail "telemetry over HTTP" || return
  wait_for 20 grep -q '"device_name":"tank-7"' "$events" \
    || fail "no verified event from tank-7 within 20 s: $(tail -n 3 "$work/receiver.err")" || return
  doc=$(grep -m1 '"device_name":"tank-7"' "$events")
  expect_field "$doc" kind data "the event" || return
  expect_field "$doc" points.0.values.level 73 "the event" || return
  # Corral counts the delivery once it has read the 200, a moment after the receiver wrote it.
  delivered() { [[ $(api "integrations/$hook" | jget status.delivered_total) -ge 1 ]]; }
  wait_for 10 delivered || fail "the integration's delivered_total stayed 0" || return
  doc=$(api "integrations/$hook") || fail "integration show" || return
  expect_field "$doc" status.dead_letters 0 "the integration" || return

  # Requests Corral did not sign. The body is a harmless test event either way.
  local body='[{"id":"example-check","kind":"test","message":"hello"}]' now sig code
  now=$(date +%s)
  # HMAC-SHA256 of "timestamp.body" in hex, as Corral computes it.
  sign() {
    printf '%s.%s' "$1" "$body" | openssl dgst -sha256 -hmac "$(cat "$secret_file")" -r \
      | cut -d' ' -f1
  }
  post() {
    curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
      "$@" -d "$body" "$url"
  }
  code=$(post) && [[ $code == 401 ]] || fail "unsigned request got $code, want 401" || return
  # Every hex digit shifted by one: the right shape, the wrong MAC.
  sig=$(sign "$now" | tr 0-9a-f 1-9a-f0)
  code=$(post -H "X-Corral-Timestamp: $now" -H "X-Corral-Signature: sha256=$sig")
  [[ $code == 401 ]] || fail "a wrong signature got $code, want 401" || return
  sig=$(sign $((now - 3600)))
  code=$(post -H "X-Corral-Timestamp: $((now - 3600))" -H "X-Corral-Signature: sha256=$sig")
  [[ $code == 401 ]] || fail "an hour-old timestamp got $code, want 401" || return
  # Signed correctly and now, the same request is accepted: the 401s were the signature's doing.
  code=$(post -H "X-Corral-Timestamp: $now" -H "X-Corral-Signature: sha256=$(sign "$now")")
  [[ $code == 200 ]] || fail "a correctly signed request got $code, want 200" || return
  cat "$work/receiver.err"
  kill -TERM "$pid" 2>/dev/null
  reap "$pid" || true
}

run_example python-sdk-device example_python_sdk
run_example curl-device example_curl
run_example rust-device example_rust
run_example provisioning example_provisioning
run_example webhook-receiver example_webhook
echo "NOTE esp32-arduino: documented, not compiled here (no Arduino toolchain; see its README)"
echo "examples: $passed passed, $failed failed, $skipped skipped ($((SECONDS - started)) s)"
((failed == 0))
