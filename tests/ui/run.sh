#!/usr/bin/env bash
# Runs the web UI browser suite (headless Chromium driven by playwright-core) against a corral
# binary.
#
#   bash tests/ui/run.sh target/debug/corral
#
# Needs node (>= 20) and Debian's chromium (.ci/run installs both). playwright-core, pinned in
# package.json and package-lock.json here, is installed with `npm ci` into target/ui-tests and
# reused while it matches the lock file. Screenshots and the server log go to target/ui-artifacts/.
# The whole run is bounded to 240 s. Exit status: 0 when every check passed.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 BINARY" >&2
  exit 2
fi
bin_arg=$1
if [[ ! -f $bin_arg || ! -x $bin_arg ]]; then
  echo "not an executable file: $bin_arg" >&2
  exit 2
fi
binary=$(cd "$(dirname "$bin_arg")" && pwd)/$(basename "$bin_arg")

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
node_dir=$root/target/ui-tests
artifacts=$root/target/ui-artifacts

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [[ $node_major -lt 20 ]]; then
  echo "the UI suite needs node >= 20 (playwright-core 1.65); found: $(node --version 2>&1 || true)" >&2
  exit 2
fi

if ! cmp -s "$here/package-lock.json" "$node_dir/package-lock.json" \
  || [[ ! -f $node_dir/node_modules/playwright-core/package.json ]]; then
  echo "installing playwright-core into $node_dir" >&2
  rm -rf "$node_dir"
  mkdir -p "$node_dir"
  cp "$here/package.json" "$here/package-lock.json" "$node_dir/"
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
fi

rm -rf "$artifacts"
mkdir -p "$artifacts"
cd "$root"
status=0
UI_TEST_NODE_DIR=$node_dir UI_ARTIFACTS=$artifacts \
  timeout --kill-after=10 240 node "$here/suite.mjs" "$binary" || status=$?
if [[ $status -eq 124 ]]; then
  echo "FAIL: the UI suite did not finish within 240 s" >&2
fi
exit "$status"
