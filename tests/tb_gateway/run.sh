#!/usr/bin/env bash
# Runs the real ThingsBoard IoT Gateway (thingsboard-gateway 3.8.5) against a corral binary:
# its MQTT connector reads a local mosquitto as the field bus and speaks the gateway API to
# Corral over TLS (thingsboard-gateway.md §4).
#
#   bash tests/tb_gateway/run.sh target/debug/corral [--keep]
#
# The venv lives in target/tb-gateway-venv and is reused while it holds the pinned gateway.
# mosquitto must be installed (.ci/run installs it). The whole run is bounded to 300 s; the
# driver stops everything it started on any exit.
set -euo pipefail

if [[ $# -lt 1 || ! -x $1 ]]; then
  echo "usage: $0 BINARY [--keep]" >&2
  exit 2
fi
binary=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=$root/target/tb-gateway-venv
python=${PYTHON:-python3}

command -v mosquitto >/dev/null 2>&1 || { echo "mosquitto is not installed" >&2; exit 2; }

venv_ready() {
  [[ -x $venv/bin/thingsboard-gateway ]] && "$venv/bin/python" - 2>/dev/null <<'PY'
import importlib.metadata as m
assert m.version("thingsboard-gateway") == "3.8.5"
import aiohttp, paho.mqtt.client  # noqa: F401
PY
}

if ! venv_ready; then
  echo "setting up $venv" >&2
  [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
  # aiohttp: the gateway pip-installs it at run time for some connectors otherwise.
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "thingsboard-gateway==3.8.5" aiohttp
  venv_ready || { echo "the venv at $venv is not usable" >&2; exit 2; }
fi

exec timeout --kill-after=10 300 "$venv/bin/python" "$here/gateway_test.py" \
  --binary "$binary" --gateway "$venv/bin/thingsboard-gateway" "$@"
