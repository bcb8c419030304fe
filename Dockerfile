# Dockerfile — owns the container image for Corral: a pinned Rust builder stage that compiles the
# single `corral` binary, and a minimal non-root runtime stage that runs `corral serve`.
#
#   docker build -t corral .
#   docker run -d --name corral \
#     -p 8883:8883 -p 8080:8080 -p 8443:8443 \
#     -v corral-data:/data \
#     -e CORRAL_PKI__HOSTS='["corral.example.lan","10.0.0.5"]' \
#     corral
#   docker logs corral        # first start prints the one-time bootstrap admin key
#
# Plain MQTT (1883) is off by default; enable with -e CORRAL_MQTT__PLAIN_ENABLED=true -p 1883:1883.
# Bind-mounting a host directory instead of a named volume? It must be writable by uid 10001.
# Written for the classic builder and BuildKit alike (no BuildKit-only syntax).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------------------------------------
# Builder. The full (non-slim) rust image already ships gcc/make, which `ring` needs; no cmake,
# no Node. Builder and runtime are the same Debian release so the glibc the binary links against
# is the one it runs on.
# ---------------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /build
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0

# 1) Dependencies only: build the locked dependency graph against a dummy main so this layer is
#    reused until Cargo.toml / Cargo.lock change. Cargo reads every target the manifest declares
#    before it builds any, so each `[[bench]]` gets an empty stand-in too. `--ignore-rust-version`
#    is required: some ntex crates (and our own manifest) declare rustc 1.97 but build fine on 1.95.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && for b in $(awk '/^\[\[bench\]\]/ {b = 1; next} b && /^name *=/ {gsub(/[" ]/, ""); sub(/^name=/, ""); print; b = 0}' Cargo.toml); do \
      echo 'fn main() {}' > "benches/$b.rs"; \
    done \
 && cargo build --release --locked --ignore-rust-version \
 && rm -rf src benches

# 2) The real sources: the whole filtered context (src/, assets/, web-ui/, build.rs, .cargo/ …,
#    whatever exists; see .dockerignore). COPY keeps the files' original mtimes, which can be
#    older than the dummy build above, so drop the dummy's fingerprints to force cargo to rebuild
#    the `corral` crate itself. Finally make sure we really got the real binary.
COPY . .
RUN rm -rf target/release/.fingerprint/corral-* target/release/deps/corral-* target/release/corral \
 && cargo build --release --locked --ignore-rust-version \
 && install -D -m 0755 target/release/corral /out/corral \
 && /out/corral --help > /dev/null

# ---------------------------------------------------------------------------------------------
# Runtime. debian:bookworm-slim rather than gcr.io/distroless/cc-debian12:nonroot because:
#   * it matches the builder's glibc exactly (same Debian release as rust:*-bookworm);
#   * it lets us create the named uid/gid 10001 `corral` user (distroless only has 65532) and
#     chown the /data volume in a RUN step;
#   * ca-certificates comes from apt and stays patchable with the rest of the OS;
#   * a shell is available for `docker exec` debugging.
# Distroless would be ~50 MB smaller with fewer packages to scan; switching is a matter of
# replacing this stage with a COPY --chown'd empty /data and `USER 10001:10001`.
# ---------------------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

LABEL org.opencontainers.image.title="corral" \
      org.opencontainers.image.description="Single-binary, on-premises IoT device management appliance" \
      org.opencontainers.image.licenses="Apache-2.0"

# ca-certificates: outbound TLS (webhooks and the like) verifies against the system trust store.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Dedicated unprivileged user; /data is created and chowned BEFORE the VOLUME instruction so a
# fresh named volume inherits the ownership and mode (0700: it holds the PKI private keys).
RUN groupadd --gid 10001 corral \
 && useradd --uid 10001 --gid corral --no-create-home --no-log-init \
        --home-dir /data --shell /usr/sbin/nologin corral \
 && mkdir -p /data \
 && chown corral:corral /data \
 && chmod 0700 /data

COPY --from=builder /out/corral /usr/local/bin/corral

ENV CORRAL_DATA_DIR=/data
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001

# 8883 MQTT over TLS, 8080 HTTP (REST + HTTP device API), 8443 the same API over TLS.
# (1883 plain MQTT is opt-in, see the header.)
EXPOSE 8883 8080 8443

# The runtime image has no curl: the binary probes its own GET http://127.0.0.1:8080/healthz.
# start-period covers first-start CA/server-certificate generation.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["corral", "healthcheck"]

# corral handles SIGTERM/SIGINT itself (graceful shutdown, exit 0); give it time with
# `docker stop -t 30` if many MQTT sessions need draining.
STOPSIGNAL SIGTERM
ENTRYPOINT ["corral"]
CMD ["serve"]
