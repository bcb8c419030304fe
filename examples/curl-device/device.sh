#!/bin/sh
# A Corral device in plain shell: curl over the HTTP device API (ThingsBoard's HTTP protocol).
# It sends telemetry, reports client attributes, asks for a shared attribute, then long-polls for
# one command (a Corral job), answers it and exits. Needs only curl, sed and grep, so it runs on a
# router's busybox as well as on a laptop.
#
#   TOKEN=... CORRAL_URL=http://127.0.0.1:8080 sh device.sh
#
# CORRAL_URL is Corral's HTTP or HTTPS address (the device API is open to every client on both);
# for https:// give Corral's CA in CORRAL_CA. RPC_WAIT_MS bounds the wait for a command.
set -eu

: "${TOKEN:?set TOKEN to the device access token}"
CORRAL_URL=${CORRAL_URL:-http://127.0.0.1:8080}
RPC_WAIT_MS=${RPC_WAIT_MS:-20000}
base="$CORRAL_URL/api/v1/$TOKEN"

# Every request has a deadline; the long poll's is its own timeout plus a margin.
req() {
  max=$1
  shift
  curl -sS --max-time "$max" ${CORRAL_CA:+--cacert "$CORRAL_CA"} "$@"
}

# POST a JSON body; fails (and so ends the script) on any non-2xx answer. A 200 on telemetry or
# attributes means Corral has the data on disk.
post() {
  req 10 -f -H 'Content-Type: application/json' -d "$2" "$base/$1"
}

post telemetry '{"temperature":19.5,"battery":87}'
echo "telemetry sent"

post attributes '{"firmware_version":"0.9.1","transport":"http"}'
echo "attributes sent"

# Shared attributes are what operators configure (corral attributes set NAME interval=30).
shared=$(req 10 -f "$base/attributes?sharedKeys=interval")
echo "attributes answer: $shared"
# No JSON parser on a small device: pick the number out of {"shared":{"interval":30}}.
interval=$(printf '%s' "$shared" | sed -n 's/.*"interval":\([0-9][0-9]*\).*/\1/p')
if [ -n "$interval" ]; then
  # Say which setting is now in force, so the operator can see it took effect.
  post attributes "{\"interval_applied\":$interval}"
  echo "using interval $interval s"
fi

# The long poll answers 200 with {"id","method","params"} when a command is waiting (at once if
# one was queued while the device was away), or 408 when none came within the timeout.
body=$(mktemp)
trap 'rm -f "$body"' EXIT
status=$(req $((RPC_WAIT_MS / 1000 + 10)) -o "$body" -w '%{http_code}' \
  "$base/rpc?timeout=$RPC_WAIT_MS")
case $status in
  200)
    command=$(cat "$body")
    echo "command: $command"
    # Corral writes "id" first, so the first "id" is the command's (params may hold others).
    id=$(printf '%s' "$command" | grep -o '"id":[0-9]*' | head -n 1 | cut -d: -f2)
    method=$(printf '%s' "$command" | sed -n 's/.*"method":"\([^"]*\)".*/\1/p')
    # The reply becomes the job's result.
    post "rpc/$id" "{\"ok\":true,\"method\":\"$method\",\"battery\":87}"
    echo "answered command $id ($method)"
    ;;
  408)
    echo "no command within $RPC_WAIT_MS ms"
    ;;
  *)
    echo "command poll failed: HTTP $status $(cat "$body")" >&2
    exit 1
    ;;
esac
