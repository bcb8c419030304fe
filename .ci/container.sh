#!/usr/bin/env bash
# Builds the real Dockerfile with podman and checks the container as a user would run it:
# /healthz through the published port, a TLS MQTT publish stored and read back, the data kept
# on its volume across a container restart, the image's healthcheck healthy, the server running
# as a non-root user. Prints the image size.
#
# Where the Dockerfile's base images cannot be pulled (no registry reachable), it builds local
# ones under the same names from Debian packages: debian:bookworm-slim with debootstrap, and
# rust:<version>-bookworm from that plus gcc and this machine's Rust toolchain. The machine's
# locally added CA certificates go into both, so HTTPS inside the build (crates.io) verifies.
#
#   bash .ci/container.sh            # needs root, podman, runc, debootstrap (installed if absent)
set -euo pipefail
cd "$(dirname "$0")/.."

RUST_VERSION=$(sed -n 's/^ARG RUST_VERSION=//p' Dockerfile)
DEBIAN_RELEASE=$(sed -n 's/^ARG DEBIAN_RELEASE=//p' Dockerfile)
IMAGE=corral-ci:latest
NAME=corral-ci
MQTT_PORT=${MQTT_PORT:-28883}
HTTP_PORT=${HTTP_PORT:-28080}
# crun refuses the cgroup setup of these machines; runc works.
podman() { command podman --runtime runc "$@"; }
log() { printf '[container %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# `type -P` looks for the program on PATH only: `command -v podman` would find the function
# above and never install podman.
need=()
type -P podman >/dev/null || need+=(podman)
type -P runc >/dev/null || need+=(runc)
type -P debootstrap >/dev/null || need+=(debootstrap)
type -P mosquitto_pub >/dev/null || need+=(mosquitto-clients)
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

work=$(mktemp -d)
cleanup() {
  podman rm -f "$NAME" >/dev/null 2>&1 || true
  podman volume rm -f corral-ci-data >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# The machine's own CA certificates (a TLS-inspecting egress, say), for HTTPS inside the build.
local_cas() {
  mkdir -p "$1/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" 2>/dev/null || true
}

base=docker.io/library/debian:$DEBIAN_RELEASE-slim
if ! podman image exists "$base" && ! podman pull -q "$base" >/dev/null 2>&1; then
  log "no registry: building $base with debootstrap"
  root=$work/rootfs
  debootstrap --variant=minbase --include=ca-certificates "$DEBIAN_RELEASE" "$root" \
    http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log"; exit 1; }
  local_cas "$root"
  chroot "$root" update-ca-certificates >/dev/null
  # What the slim image leaves out: package caches, documentation, translations.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
  tar -C "$root" -c . | podman import --change 'CMD ["bash"]' - "$base" >/dev/null
  rm -rf "$root"
fi

rust=docker.io/library/rust:$RUST_VERSION-$DEBIAN_RELEASE
if ! podman image exists "$rust" && ! podman pull -q "$rust" >/dev/null 2>&1; then
  log "no registry: building $rust from $base and this machine's Rust toolchain"
  sysroot=$(rustc --print sysroot)
  rustc --version | grep -q "^rustc $RUST_VERSION" \
    || log "note: this machine's rustc is $(rustc --version), the Dockerfile names $RUST_VERSION"
  mkdir -p "$work/rust/toolchain"
  # The toolchain without its documentation (share/).
  cp -a "$sysroot"/bin "$sysroot"/lib "$sysroot"/libexec "$sysroot"/etc "$work/rust/toolchain/" 2>/dev/null || true
  cat >"$work/rust/Containerfile" <<EOF
FROM $base
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev make pkg-config \
 && rm -rf /var/lib/apt/lists/*
COPY toolchain /usr/local/rust
ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CARGO_HOME=/usr/local/cargo
RUN cargo --version && rustc --version
EOF
  podman build -q --pull=never --network host -t "$rust" "$work/rust" >/dev/null
  rm -rf "$work/rust"
fi

if [[ ${SKIP_IMAGE_BUILD:-0} != 1 ]]; then   # 1: check an image built before (iterating)
  log "building the image from the Dockerfile"
  t0=$(date +%s)
  podman build --pull=never --network host --format docker -t "$IMAGE" . >"$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log"; exit 1; }
  log "built in $(($(date +%s) - t0)) s"
fi
log "image size $(podman image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1 / 1e6}')"

run() {
  # podman's default limits (taken from its own defaults, not this shell's) may be above what
  # the machine allows a container: ask for modest, explicit ones.
  podman run -d --name "$NAME" --ulimit nofile=8192:8192 --ulimit nproc=4096:4096 \
    -p "127.0.0.1:$MQTT_PORT:8883" -p "127.0.0.1:$HTTP_PORT:8080" \
    -v corral-ci-data:/data -e CORRAL_LOG__FORMAT=json "$IMAGE" >/dev/null
  for _ in $(seq 120); do
    curl -fsS -o /dev/null "http://127.0.0.1:$HTTP_PORT/healthz" 2>/dev/null && return 0
    sleep 0.5
  done
  podman logs "$NAME" | tail -30
  echo "the container did not answer /healthz through the published port" >&2
  exit 1
}
run
log "/healthz answers through the published port"

user=$(podman exec "$NAME" sh -c 'id -u')
[[ $user != 0 ]] || { echo "the server runs as root" >&2; exit 1; }
ps_user=$(podman top "$NAME" user | awk 'NR == 2 {print $1}')
log "running as uid $user ($ps_user)"
podman healthcheck run "$NAME" >/dev/null || { echo "the image's healthcheck failed" >&2; exit 1; }
log "the image's healthcheck is healthy"

# The first start prints the admin key; the CLI inside the container reaches the admin API on
# loopback, as the README shows.
key=$(podman logs "$NAME" 2>&1 | grep -o 'crl_[A-Za-z0-9_-]*' | head -n1)
[[ -n $key ]] || { echo "no admin key in the first start's log" >&2; exit 1; }
cli() { podman exec -e CORRAL_API_KEY="$key" "$NAME" corral "$@"; }
cli workspace create Plant >/dev/null
cli fleet create sensors --workspace Plant >/dev/null
token=$(cli device create thermo-1 --fleet sensors | awk '/^access token/ {print $3}')
[[ -n $token ]] || { echo "no device token" >&2; exit 1; }
podman exec "$NAME" cat /data/pki/ca.pem >"$work/ca.pem"
mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" --cafile "$work/ca.pem" -u "$token" -q 1 \
  -t v1/devices/me/telemetry -m '{"temperature": 21.5}'
cli telemetry thermo-1 --latest | tee "$work/latest.txt" >&2
grep -q '21.5' "$work/latest.txt" || { echo "the published value was not stored" >&2; exit 1; }
log "a TLS MQTT publish through the published port was stored and read back"

podman stop -t 30 "$NAME" >/dev/null
podman rm "$NAME" >/dev/null
run
cli telemetry thermo-1 --latest | grep -q '21.5' \
  || { echo "the data did not survive a container restart on its volume" >&2; exit 1; }
log "the data survived a new container on the same volume"
log "ok"
