#!/usr/bin/env bash
# bench/soak.sh — owns the soak benchmark: does the server's memory level off under sustained
# QoS 1 ingest? Runs Corral, then Debian's mosquitto, each for DUR seconds under the same load
# generator (`corral simulate`, TLS, RATE messages/s on each of CONNS connections), and samples RSS and messages stored every
# INTERVAL seconds. Stays on 127.0.0.1, bounds every wait, kills its servers on exit. A benchmark,
# never a test: it prints a table for BENCHMARKS.md and asserts nothing.
set -Eeuo pipefail

CONNS=${CONNS:-100}             # connections
RATE=${RATE:-50}                # messages/s per connection (0 = unthrottled)
DUR=${DUR:-600}                 # seconds of publishing per server
INTERVAL=${INTERVAL:-30}        # seconds between samples
INFLIGHT=${INFLIGHT:-64}
SERVERS=${SERVERS-"corral mosquitto"}
SKIP_BUILD=${SKIP_BUILD:-0}
CORRAL_MQTT_PORT=${CORRAL_MQTT_PORT:-18893}
CORRAL_HTTP_PORT=${CORRAL_HTTP_PORT:-18090}
MOSQ_PORT=${MOSQ_PORT:-18894}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CORRAL_BIN:-$ROOT/target/release/corral}
STAMP=$(date +%Y%m%d-%H%M%S)
OUT_DIR=$ROOT/bench/out
RUN_DIR=$OUT_DIR/soak-$STAMP
REPORT=$OUT_DIR/soak-$STAMP.md
TMP=$(mktemp -d "${TMPDIR:-/tmp}/corral-soak.XXXXXX")
ADMIN_KEY=$(openssl rand -hex 24)
SRV_PID="" GEN_PID=""

log() { printf '[soak %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
cleanup() {
    local p
    for p in $GEN_PID $SRV_PID; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $GEN_PID $SRV_PID; do
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rss_mib() { awk '/^VmRSS:/ {printf "%.0f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo -; }
listening() { [[ -n $(ss -Hltn "( sport = :$1 )") ]]; }
wait_until() { # wait_until SECONDS CMD...
    local deadline; deadline=$(($(date +%s) + $1)); shift
    until "$@"; do (($(date +%s) < deadline)) || return 1; sleep 0.2; done
}
metric() { # metric NAME: a counter from Corral's /metrics
    curl -fsS -m 2 "http://127.0.0.1:$CORRAL_HTTP_PORT/metrics" 2>/dev/null |
        awk -v n="$1" '$1 == n {printf "%.0f", $2; found = 1} END {if (!found) printf "-"}'
}

mkdir -p "$RUN_DIR"
if [[ $SKIP_BUILD != 1 ]]; then
    log "building release"
    (cd "$ROOT" && cargo build --release --ignore-rust-version)
fi
[[ -x $BIN ]] || die "$BIN not found"
for t in openssl ss curl jq awk; do command -v "$t" >/dev/null || die "$t is required"; done
ulimit -n 65536 2>/dev/null || true

start_corral() { # DATA_DIR LOG
    env -u CORRAL_CONFIG -u CORRAL_BIN -u CORRAL_MQTT_PORT -u CORRAL_HTTP_PORT \
        CORRAL_DATA_DIR="$1" CORRAL_ADMIN_KEY="$ADMIN_KEY" \
        CORRAL_MQTT__TLS_LISTEN="127.0.0.1:$CORRAL_MQTT_PORT" \
        CORRAL_HTTP__LISTEN="127.0.0.1:$CORRAL_HTTP_PORT" CORRAL_HTTPS__ENABLED=false \
        CORRAL_LOG__LEVEL=warn \
        CORRAL_LIMITS__DEVICE_MESSAGES_PER_SEC=0 CORRAL_LIMITS__IP_CONNECTS_PER_SEC=0 \
        "$BIN" serve >>"$2" 2>&1 &
    SRV_PID=$!
    wait_until 60 curl -fsS -o /dev/null "http://127.0.0.1:$CORRAL_HTTP_PORT/readyz" ||
        die "corral did not become ready; see $2"
}
stop_server() {
    [[ -n $SRV_PID ]] || return 0
    kill -TERM "$SRV_PID" 2>/dev/null || true
    wait_until 30 eval "! kill -0 $SRV_PID 2>/dev/null" || kill -KILL "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
    SRV_PID=""
}

# One run: samples "elapsed rss stored" lines into $RUN_DIR/$1.tsv.
soak() { # soak SERVER
    local server=$1 port ca tokens=() data=$TMP/data
    case $server in
    corral)
        start_corral "$data" "$RUN_DIR/corral.log"
        local api=http://127.0.0.1:$CORRAL_HTTP_PORT/api/v1 ws fleet
        ws=$(curl -fsS -H "Authorization: Bearer $ADMIN_KEY" -H 'content-type: application/json' \
            -d '{"name":"soak"}' "$api/workspaces" | jq -r .id)
        fleet=$(curl -fsS -H "Authorization: Bearer $ADMIN_KEY" -H 'content-type: application/json' \
            -d "{\"workspace_id\":\"$ws\",\"name\":\"soak\"}" "$api/fleets" | jq -r .id)
        "$BIN" simulate --host 127.0.0.1 --port "$CORRAL_MQTT_PORT" --connections 0 --duration 0 \
            --create "$CONNS" --fleet "$fleet" --tokens "$TMP/tokens.txt" \
            --server "http://127.0.0.1:$CORRAL_HTTP_PORT" --api-key "$ADMIN_KEY" \
            >/dev/null 2>>"$RUN_DIR/corral.log" || die "device creation failed"
        port=$CORRAL_MQTT_PORT ca=$data/pki/ca.pem tokens=(--tokens "$TMP/tokens.txt")
        ;;
    mosquitto)
        command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] ||
            apt-get install -y mosquitto >/dev/null || die "mosquitto is not installed"
        local d=$TMP/mosq; mkdir -p "$d"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj "/CN=soak CA" -keyout "$d/ca.key" -out "$d/ca.pem" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
            -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
        printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$d/ext.cnf"
        openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
            -days 2 -extfile "$d/ext.cnf" -out "$d/server.pem" 2>/dev/null
        printf '%s\n' "allow_anonymous true" "persistence false" "max_inflight_messages 1000" \
            "log_dest stderr" "log_type error" "user $(id -un)" "listener $MOSQ_PORT 127.0.0.1" \
            "cafile $d/ca.pem" "certfile $d/server.pem" "keyfile $d/server.key" >"$d/mosquitto.conf"
        "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c "$d/mosquitto.conf" \
            >>"$RUN_DIR/mosquitto.log" 2>&1 &
        SRV_PID=$!
        wait_until 30 listening "$MOSQ_PORT" || die "mosquitto did not listen"
        port=$MOSQ_PORT ca=$d/ca.pem tokens=(--anonymous)
        ;;
    esac
    local idle; sleep 1; idle=$(rss_mib "$SRV_PID")
    log "$server: $CONNS connections at $RATE msg/s each for ${DUR}s, idle RSS ${idle} MiB"
    "$BIN" simulate --host 127.0.0.1 --port "$port" --ca "$ca" --connections "$CONNS" \
        --rate "$RATE" --inflight "$INFLIGHT" --duration "$DUR" "${tokens[@]}" \
        >"$RUN_DIR/$server.gen.json" 2>"$RUN_DIR/$server.gen.log" &
    GEN_PID=$!
    local t0; t0=$(date +%s)
    printf '0\t%s\t0\n' "$idle" >"$RUN_DIR/$server.tsv"
    while kill -0 "$GEN_PID" 2>/dev/null && (($(date +%s) - t0 < DUR + 150)); do
        sleep "$INTERVAL"
        local stored=-
        [[ $server == corral ]] && stored=$(metric corral_telemetry_points_stored_total)
        printf '%s\t%s\t%s\n' "$(($(date +%s) - t0))" "$(rss_mib "$SRV_PID")" "$stored" \
            | tee -a "$RUN_DIR/$server.tsv" >&2
    done
    wait "$GEN_PID" 2>/dev/null || true
    GEN_PID=""
    sleep 10
    printf 'after\t%s\t-\n' "$(rss_mib "$SRV_PID")" >>"$RUN_DIR/$server.tsv"
    stop_server
    rm -rf "$data"
}

for s in $SERVERS; do soak "$s"; done

{
    echo "### Soak: RSS under sustained QoS 1 ingest ($STAMP)"
    echo
    echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo), $(uname -r). Tree: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet || echo +changes)."
    echo "Load: \`corral simulate\`, $CONNS TLS connections at $RATE msg/s each (0: unthrottled), QoS 1, inflight $INFLIGHT, ${DUR} s per server; RSS sampled every ${INTERVAL} s, and 10 s after the load stopped."
    echo
    for s in $SERVERS; do
        echo "**$s** (seconds → RSS MiB$([[ $s == corral ]] && echo ", points stored"))"
        echo
        echo "| s | RSS MiB | stored |"
        echo "|---|---:|---:|"
        awk -F'\t' '{printf "| %s | %s | %s |\n", $1, $2, $3}' "$RUN_DIR/$s.tsv"
        echo
        jq -r '"Generator: \(.acked // .messages_acked // "?") messages acknowledged"' \
            "$RUN_DIR/$s.gen.json" 2>/dev/null || true
        echo
    done
} | tee "$REPORT"
log "report: $REPORT"
