#!/bin/sh
# `cargo fuzz ARGS...` on the stable toolchain (docs/development.md, "Fuzzing"):
# RUSTC_BOOTSTRAP=1 lets stable rustc take the -Z flags libFuzzer's instrumentation needs, and
# shim/cargo adds `--ignore-rust-version` to the builds cargo-fuzz starts. Example:
#   fuzz/fuzz.sh run telemetry -- -max_total_time=60
set -eu
here=$(cd "$(dirname "$0")" && pwd)
CORRAL_REAL_CARGO=$(command -v cargo)
export CORRAL_REAL_CARGO
cd "$here"
PATH="$here/shim:$PATH" RUSTC_BOOTSTRAP=1 exec "$CORRAL_REAL_CARGO" fuzz "$@"
