#!/usr/bin/env bash
# Runs the ThingsBoard SDK suite (tb-mqtt-client 1.13.14) against a corral binary.
#
#   bash tests/tb_sdk/run.sh target/debug/corral [--only NUMBER_OR_NAME] [--keep] [--verbose]
#
# The venv lives in target/tb-sdk-venv and is reused while it holds the pinned SDK. The suite
# starts and stops the server itself on 127.0.0.1; this script bounds the whole run to 600 s
# and kills the server on any exit. Exit status: 0 when every check passed.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 BINARY [suite.py options]" >&2
  exit 2
fi
bin_arg=$1
shift
if [[ ! -f $bin_arg || ! -x $bin_arg ]]; then
  echo "not an executable file: $bin_arg" >&2
  exit 2
fi
binary=$(cd "$(dirname "$bin_arg")" && pwd)/$(basename "$bin_arg")

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=$root/target/tb-sdk-venv
python=${PYTHON:-python3}

venv_ready() {
  [[ -x $venv/bin/python ]] && "$venv/bin/python" - 2>/dev/null <<'EOF'
import importlib.metadata as m
assert m.version("tb-mqtt-client") == "1.13.14"
import cryptography, mmh3, tb_device_mqtt  # noqa: F401
EOF
}

if ! venv_ready; then
  echo "setting up $venv" >&2
  [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
  # mmh3: the SDK's sdk_utils imports it and otherwise pip-installs it at import time.
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "tb-mqtt-client==1.13.14" cryptography mmh3
  venv_ready || { echo "the venv at $venv is not usable" >&2; exit 2; }
fi

pidfile=$(mktemp "${TMPDIR:-/tmp}/corral-tb-sdk-pid.XXXXXX")
suite_pid=

# shellcheck disable=SC2317  # only reached through the trap
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  # timeout(1) leads its own process group: the suite and the server it started are in it.
  if [[ -n $suite_pid ]]; then
    if kill -0 -- "-$suite_pid" 2>/dev/null; then
      kill -TERM -- "-$suite_pid" 2>/dev/null || true
    fi
    wait "$suite_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 -- "-$suite_pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL -- "-$suite_pid" 2>/dev/null || true
  fi
  # The server the suite started, if it is still there (and really is that binary).
  if [[ -s $pidfile ]]; then
    local pid
    pid=$(cat "$pidfile")
    if [[ $pid =~ ^[0-9]+$ ]] && [[ $(readlink -f "/proc/$pid/exe" 2>/dev/null) == "$(readlink -f "$binary")" ]]; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
      done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cd "$root"
# TZ=UTC: TBHTTPDevice stamps telemetry with naive local time labelled UTC (the suite sets it too).
TB_SDK_PIDFILE=$pidfile TZ=UTC PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore::DeprecationWarning \
  timeout --kill-after=15 600 "$venv/bin/python" "$here/suite.py" "$binary" "$@" &
suite_pid=$!
status=0
wait "$suite_pid" || status=$?
if [[ $status -eq 124 ]]; then
  echo "FAIL: the suite did not finish within 600 s" >&2
fi
exit "$status"
