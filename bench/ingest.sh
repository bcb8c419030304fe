#!/usr/bin/env bash
# bench/ingest.sh — owns the ingest benchmark: Corral vs Debian's mosquitto under the same load
# generator (`corral simulate`), plus an optional check of that generator against mqttwrk.
# It starts and kills its own servers on 127.0.0.1 only; results go to bench/out/ (git-ignored).
# See bench/README.md for what is measured and how to read it.
set -Eeuo pipefail

# ---------------------------------------------------------------- settings (all env-overridable)
CONNS_A=${CONNS_A:-10}          # scenario A: connections, unthrottled
DUR_A=${DUR_A:-20}              #             seconds of publishing
CONNS_B=${CONNS_B:-10000}       # scenario B: connections
RATE_B=${RATE_B:-10}            #             msg/s per connection
DUR_B=${DUR_B:-30}              #             seconds of publishing
INFLIGHT=${INFLIGHT:-64}        # QoS 1 publishes in flight per connection
CONNECT_CONCURRENCY=${CONNECT_CONCURRENCY:-200}
SCENARIOS=${SCENARIOS-"A B"}   # may be empty (e.g. only the generator check)
SERVERS=${SERVERS-"corral mosquitto"}
SKIP_BUILD=${SKIP_BUILD:-0}
CHECK_GENERATOR=${CHECK_GENERATOR:-0}
CHECK_CONNS=${CHECK_CONNS:-$CONNS_A}   # generator check = scenario A settings
CHECK_DUR=${CHECK_DUR:-$DUR_A}
CHECK_PAYLOAD=${CHECK_PAYLOAD:-40}     # bytes; corral simulate's JSON is ~40 bytes
RAMP_TIMEOUT=${RAMP_TIMEOUT:-125}      # the generator itself gives up ramping after 120 s
CORRAL_MQTT_PORT=${CORRAL_MQTT_PORT:-18883}
CORRAL_PLAIN_PORT=${CORRAL_PLAIN_PORT:-11883}
CORRAL_HTTP_PORT=${CORRAL_HTTP_PORT:-18080}
MOSQ_PORT=${MOSQ_PORT:-18884}
MOSQ_PLAIN_PORT=${MOSQ_PLAIN_PORT:-11884}
MQTTWRK_VERSION=${MQTTWRK_VERSION:-0.2.0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CORRAL_BIN:-$ROOT/target/release/corral}
MQTTWRK_ROOT=${MQTTWRK_ROOT:-$ROOT/target/bench-tools}
STAMP=$(date +%Y%m%d-%H%M%S)
OUT_DIR=$ROOT/bench/out
RUN_DIR=$OUT_DIR/ingest-$STAMP          # logs and raw generator output of this run
REPORT=$OUT_DIR/ingest-$STAMP.md
TMP=$(mktemp -d "${TMPDIR:-/tmp}/corral-bench.XXXXXX")   # certificates, data dirs, tokens
CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)
ADMIN_KEY=$(openssl rand -hex 24)

SRV_PID="" GEN_PID="" AUX_PID=""

log() { printf '[ingest %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

cleanup() {
    local p
    for p in $GEN_PID $AUX_PID $SRV_PID; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in $GEN_PID $AUX_PID $SRV_PID; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'log "failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- /proc sampling helpers
now() { date +%s.%N; }
# utime+stime of the whole process (all threads), in clock ticks. Fields after "(comm) ".
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# the process's peak RSS so far (the kernel's high-water mark), in KiB
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
# whole machine, in jiffies: busy (user nice system irq softirq), steal, total (guest is in user)
host_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
# per-thread CPU ticks of process $1: "tid name ticks" lines
thread_ticks() {
    local t
    for t in /proc/"$1"/task/*; do
        printf '%s %s %s\n' "${t##*/}" "$(tr ' ' _ <"$t/comm" 2>/dev/null)" \
            "$(sed 's/^.*) //' "$t/stat" 2>/dev/null | awk '{print $12 + $13}')"
    done 2>/dev/null || true
}
# thread_top FILE0 FILE1 WALL: CPU % per thread name (trailing digits folded into *), top 6
thread_top() {
    awk -v hz="$CLK_TCK" -v wall="$3" '
        NR == FNR { t0[$1] = $3; next }
        $3 != "" { n = $2; sub(/[0-9]+$/, "*", n); d[n] += $3 - ($1 in t0 ? t0[$1] : 0) }
        END { for (n in d) if (d[n] > 0) printf "%.0f %s\n", d[n] / hz / wall * 100, n }' "$1" "$2" |
        sort -rn | head -6 | awk '{printf "%s%s %s%%", (NR > 1 ? ", " : ""), $2, $1}'
}
# established TCP connections whose local port is $1 (server side of each connection)
established() { ss -Htn state established "( sport = :$1 )" | wc -l; }
listening() { [[ -n $(ss -Hltn "( sport = :$1 )") ]]; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }

port_free() { ! listening "$1" || die "port $1 is already in use on this machine; set another (see bench/README.md)"; }

# ---------------------------------------------------------------- prerequisites
prepare() {
    mkdir -p "$OUT_DIR" "$RUN_DIR"
    if [[ $SKIP_BUILD != 1 ]]; then
        log "building release (cargo build --release)"
        (cd "$ROOT" && cargo build --release --ignore-rust-version)
    fi
    [[ -x $BIN ]] || die "$BIN not found (build it, or unset SKIP_BUILD)"
    if ! command -v mosquitto >/dev/null && [[ ! -x /usr/sbin/mosquitto ]]; then
        log "mosquitto not installed; installing Debian's package"
        apt-get install -y mosquitto >/dev/null || die "apt-get install -y mosquitto failed"
    fi
    MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    local t
    for t in openssl ss curl jq awk; do command -v "$t" >/dev/null || die "$t is required"; done

    # File descriptors: RLIMIT_NOFILE is per process, so each of server and generator needs
    # N + slack; ask for 2N + slack (and at least 65536) and settle for the hard limit.
    local maxc=0 s c
    for s in $SCENARIOS; do c=$(conns_of "$s"); ((c > maxc)) && maxc=$c; done
    local want=$((2 * maxc + 1024)) need=$((maxc + 512))
    ((want < 65536)) && want=65536
    ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    local have; have=$(ulimit -n)
    ((have >= need)) || die "ulimit -n is $have (hard limit $(ulimit -Hn)); $maxc connections need at least $need per process. Raise the hard limit (e.g. run as root, or 'ulimit -Hn $want' in a privileged shell) or lower CONNS_B."
    ((have >= 2 * maxc + 1024)) || log "note: ulimit -n is $have (hard limit); enough, since each process needs only ~$need"
    ULIMIT_N=$have
    # How busy is the machine before we start? (2 s of /proc/stat; a benchmark wants ~0 %)
    local a b ab at bb bt
    a=$(host_ticks); sleep 2; b=$(host_ticks)
    read -r ab _ at <<<"$a"
    read -r bb _ bt <<<"$b"
    BASELINE_BUSY=$(calc %.0f "($bb - $ab) / ($bt - $at) * 100")
    ((BASELINE_BUSY <= 5)) || log "warning: the machine is already ${BASELINE_BUSY}% busy before the benchmark; figures will be disturbed"
    for p in $CORRAL_MQTT_PORT $CORRAL_PLAIN_PORT $CORRAL_HTTP_PORT $MOSQ_PORT $MOSQ_PLAIN_PORT; do port_free "$p"; done
}

conns_of() { case $1 in A) echo "$CONNS_A" ;; B) echo "$CONNS_B" ;; *) die "unknown scenario $1" ;; esac; }
rate_of() { case $1 in A) echo 0 ;; B) echo "$RATE_B" ;; esac; }
dur_of() { case $1 in A) echo "$DUR_A" ;; B) echo "$DUR_B" ;; esac; }

# ---------------------------------------------------------------- mosquitto: TLS material + config
mosquitto_setup() {
    local d=$TMP/mosq
    mkdir -p "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=corral-bench CA" -keyout "$d/ca.key" -out "$d/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=localhost" -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$d/ext.cnf"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/ext.cnf" -out "$d/server.pem" 2>/dev/null
    cat >"$d/mosquitto.conf" <<EOF
# written by bench/ingest.sh
per_listener_settings false
allow_anonymous true
persistence false
max_inflight_messages 1000
max_queued_messages 100000
log_dest stderr
log_type error
connection_messages false
user $(id -un)

listener $MOSQ_PORT 127.0.0.1
cafile $d/ca.pem
certfile $d/server.pem
keyfile $d/server.key

# plain TCP, used only by the generator check when mqttwrk cannot do TLS
listener $MOSQ_PLAIN_PORT 127.0.0.1
EOF
    MOSQ_CA=$d/ca.pem
    MOSQ_CONF=$d/mosquitto.conf
}

# Corral's own counters over the same window: telemetry stored, group-commit flushes.
scrape_metrics() { curl -fsS -m 2 "http://127.0.0.1:$CORRAL_HTTP_PORT/metrics" >"$1" 2>/dev/null || : >"$1"; }
store_stats() { # store_stats M0 M1 WALL SCENARIO
    awk -v wall="$3" -v sc="$4" '
        NR == FNR { a[$1] = $2; next }
        { d[$1] = $2 - a[$1] }
        END {
            f = d["corral_store_flushes_total"]
            if (f <= 0) { printf "  - corral %s: no flush counters (is /metrics served?)\n", sc; exit }
            p = d["corral_telemetry_points_stored_total"] / wall
            printf "  - corral %s: %.0f telemetry points stored/s (the generator sends 3 per message: %.0f msg/s), %.0f flushes/s, mean batch %.1f, mean flush %.2f ms\n", sc,
                p, p / 3, f / wall,
                d["corral_store_flush_batch_size_sum"] / d["corral_store_flush_batch_size_count"],
                d["corral_store_flush_seconds_sum"] / d["corral_store_flush_seconds_count"] * 1000
        }' "$1" "$2"
}

# ---------------------------------------------------------------- server start/stop
wait_until() { # wait_until SECONDS CMD...: poll CMD every 0.1 s, bounded
    local deadline; deadline=$(($(date +%s) + $1)); shift
    until "$@"; do
        (($(date +%s) < deadline)) || return 1
        sleep 0.1
    done
}
corral_ready() {
    kill -0 "$SRV_PID" 2>/dev/null || die "corral exited during start-up; see its log in $RUN_DIR"
    curl -fsS -o /dev/null "http://127.0.0.1:$CORRAL_HTTP_PORT/readyz" 2>/dev/null
}

start_corral() { # start_corral DATA_DIR LOG
    # env execs corral, so $! is corral's pid. A CORRAL_CONFIG file in the caller's environment is
    # dropped, and so are this script's own settings (CORRAL_BIN, CORRAL_*_PORT), which corral
    # would refuse as unknown keys; other CORRAL_* variables pass through on purpose
    # (e.g. CORRAL_MQTT__WORKERS=1).
    env -u CORRAL_CONFIG -u CORRAL_BIN -u CORRAL_MQTT_PORT -u CORRAL_PLAIN_PORT -u CORRAL_HTTP_PORT \
        CORRAL_DATA_DIR="$1" CORRAL_ADMIN_KEY="$ADMIN_KEY" \
        CORRAL_MQTT__TLS_LISTEN="127.0.0.1:$CORRAL_MQTT_PORT" \
        CORRAL_MQTT__PLAIN_ENABLED=true CORRAL_MQTT__PLAIN_LISTEN="127.0.0.1:$CORRAL_PLAIN_PORT" \
        CORRAL_HTTP__LISTEN="127.0.0.1:$CORRAL_HTTP_PORT" CORRAL_HTTPS__ENABLED=false \
        CORRAL_LOG__LEVEL=warn \
        CORRAL_LIMITS__DEVICE_MESSAGES_PER_SEC=0 CORRAL_LIMITS__IP_CONNECTS_PER_SEC=0 \
        "$BIN" serve >>"$2" 2>&1 &
    SRV_PID=$!
    wait_until 60 corral_ready || die "corral did not become ready in 60 s; see $2"
    listening "$CORRAL_MQTT_PORT" || die "corral is not listening on MQTT port $CORRAL_MQTT_PORT; see $2"
}

start_mosquitto() { # start_mosquitto LOG
    "$MOSQ" -c "$MOSQ_CONF" >>"$1" 2>&1 &
    SRV_PID=$!
    wait_until 30 listening "$MOSQ_PORT" || die "mosquitto did not listen in 30 s; see $1"
    kill -0 "$SRV_PID" 2>/dev/null || die "mosquitto exited; see $1"
}

stop_server() {
    [[ -n $SRV_PID ]] || return 0
    kill -TERM "$SRV_PID" 2>/dev/null || true
    wait_until 20 eval "! kill -0 $SRV_PID 2>/dev/null" || { log "server $SRV_PID ignored SIGTERM; killing"; kill -KILL "$SRV_PID" 2>/dev/null || true; }
    wait "$SRV_PID" 2>/dev/null || true
    SRV_PID=""
    # let the other side's TIME_WAIT/closing sockets drain a little before the next start
    sleep 1
}

# ---------------------------------------------------------------- corral devices, once per run
# Devices are created once, in a template data dir; every corral run starts on a fresh copy of it.
corral_seed() {
    local maxc=0 s c
    for s in $SCENARIOS; do c=$(conns_of "$s"); ((c > maxc)) && maxc=$c; done
    TEMPLATE=$TMP/corral-template
    TOKENS=$TMP/tokens.txt
    mkdir -p "$TEMPLATE"
    log "corral: creating $maxc devices in a template data dir"
    start_corral "$TEMPLATE" "$RUN_DIR/corral-seed.log"
    local api=http://127.0.0.1:$CORRAL_HTTP_PORT/api/v1 ws fleet
    ws=$(curl -fsS -H "Authorization: Bearer $ADMIN_KEY" -H 'content-type: application/json' \
        -d '{"name":"bench"}' "$api/workspaces" | jq -r .id)
    fleet=$(curl -fsS -H "Authorization: Bearer $ADMIN_KEY" -H 'content-type: application/json' \
        -d "{\"workspace_id\":\"$ws\",\"name\":\"bench\"}" "$api/fleets" | jq -r .id)
    [[ -n $fleet && $fleet != null ]] || die "could not create a workspace/fleet over REST"
    local t0; t0=$(now)
    "$BIN" simulate --host 127.0.0.1 --port "$CORRAL_MQTT_PORT" --connections 0 --duration 0 \
        --create "$maxc" --fleet "$fleet" --tokens "$TOKENS" \
        --server "http://127.0.0.1:$CORRAL_HTTP_PORT" --api-key "$ADMIN_KEY" \
        >"$RUN_DIR/corral-seed.json" 2>>"$RUN_DIR/corral-seed.log" ||
        die "device creation failed; see $RUN_DIR/corral-seed.log"
    local n; n=$(grep -c . "$TOKENS")
    ((n >= maxc)) || die "wanted $maxc tokens, got $n"
    SEED_SECONDS=$(calc %.1f "$(now) - $t0")
    log "corral: $n devices created in ${SEED_SECONDS} s"
    CORRAL_CA_SAVED=$TMP/corral-ca.pem
    cp "$TEMPLATE/pki/ca.pem" "$CORRAL_CA_SAVED"
    stop_server
}

# ---------------------------------------------------------------- one measured run
# run_case SERVER SCENARIO: appends a result row to $TMP/rows.tsv
run_case() {
    local server=$1 sc=$2 conns rate dur tag
    conns=$(conns_of "$sc") rate=$(rate_of "$sc") dur=$(dur_of "$sc")
    tag=$server-$sc
    local slog=$RUN_DIR/$tag.server.log
    local port ca
    local -a auth
    case $server in
    corral)
        local dd=$TMP/corral-$sc
        rm -rf "$dd" && cp -a "$TEMPLATE" "$dd"
        start_corral "$dd" "$slog"
        port=$CORRAL_MQTT_PORT ca=$dd/pki/ca.pem
        auth=(--tokens "$TOKENS")
        ;;
    mosquitto)
        start_mosquitto "$slog"
        port=$MOSQ_PORT ca=$MOSQ_CA
        auth=(--anonymous)
        ;;
    *) die "unknown server $server" ;;
    esac
    sleep 1
    local rss_idle; rss_idle=$(rss_kib "$SRV_PID")

    log "$tag: $conns connections, rate $rate/s each (0 = unthrottled), ${dur} s, TLS"
    local t_start; t_start=$(now)
    "$BIN" simulate --host 127.0.0.1 --port "$port" --ca "$ca" --connections "$conns" \
        --rate "$rate" --inflight "$INFLIGHT" --duration "$dur" \
        --connect-concurrency "$CONNECT_CONCURRENCY" "${auth[@]}" \
        >"$RUN_DIR/$tag.gen.json" 2>"$RUN_DIR/$tag.gen.log" &
    GEN_PID=$!

    # Ramp: wait until the server holds every connection (or the count has not moved for 3 s,
    # e.g. refused connections), bounded. The generator starts its window ~50 ms after the last
    # CONNACK, so after t_seen (when the last poll that still saw too few connections began):
    # its window ends at or after t_seen + dur. The measured window starts `settle` after the
    # ramp is seen and ends `settle` before t_seen + dur, so it lies inside the generator's even
    # when `ss` is slow (it is, with 10k sockets on a loaded machine).
    local est=0 last=-1 still_since t_seen tb deadline=$(($(date +%s) + RAMP_TIMEOUT))
    t_seen=$t_start still_since=$t_start
    while kill -0 "$GEN_PID" 2>/dev/null && (($(date +%s) < deadline)); do
        tb=$(now)
        est=$(established "$port")
        ((est >= conns)) && break
        t_seen=$tb
        if ((est != last || est == 0)); then
            still_since=$tb
        elif awk "BEGIN {exit !($tb - $still_since >= 3)}"; then
            log "$tag: connection count stuck at $est of $conns for 3 s; measuring anyway"
            break
        fi
        last=$est
        sleep 0.1
    done
    local ramp; ramp=$(calc %.1f "$(now) - $t_start")
    kill -0 "$GEN_PID" 2>/dev/null || log "$tag: generator exited during ramp (see $RUN_DIR/$tag.gen.log)"

    local settle=1
    ((dur < 4)) && settle=0
    local win_end; win_end=$(calc %.3f "$t_seen + $dur - $settle")
    sleep "$settle"
    local s0 g0 h0 w0 s1 g1 h1 w1 rss_loaded=0 gen_rss=0 est_end=0 left tt0 tt1 mt0 mt1
    s0=$(cpu_ticks "$SRV_PID" 2>/dev/null || echo NaN)
    g0=$(cpu_ticks "$GEN_PID" 2>/dev/null || echo NaN)
    h0=$(host_ticks) w0=$(now)
    tt0=$(now)
    thread_ticks "$SRV_PID" >"$TMP/threads0"
    mt0=$(now)
    [[ $server != corral ]] || scrape_metrics "$TMP/metrics0"
    left=$(calc %.3f "$win_end - $(now)")
    if awk "BEGIN {exit !($left < 1)}"; then
        log "$tag: only ${left} s left for the measured window (slow ramp detection); use a longer duration"
        left=$(calc %.3f "($left < 0.2) ? 0.2 : $left")
    fi
    sleep "$left"
    s1=$(cpu_ticks "$SRV_PID" 2>/dev/null || echo NaN)
    g1=$(cpu_ticks "$GEN_PID" 2>/dev/null || echo NaN)
    h1=$(host_ticks) w1=$(now)
    rss_loaded=$(rss_kib "$SRV_PID" 2>/dev/null || echo 0)
    local hwm; hwm=$(hwm_kib "$SRV_PID" 2>/dev/null || echo 0)
    gen_rss=$(rss_kib "$GEN_PID" 2>/dev/null || echo 0)
    tt1=$(now)
    thread_ticks "$SRV_PID" >"$TMP/threads1"
    mt1=$(now)
    [[ $server != corral ]] || scrape_metrics "$TMP/metrics1"
    est_end=$(established "$port") # last: slow with many sockets; anomaly check only

    # The generator stops by itself after its window; bounded wait, then kill.
    local rc=0
    wait_until "$((dur + 30))" eval "! kill -0 $GEN_PID 2>/dev/null" || {
        log "$tag: generator still running ${dur}+30 s after the ramp; killing it"
        kill -TERM "$GEN_PID" 2>/dev/null || true
    }
    wait "$GEN_PID" || rc=$?
    GEN_PID=""
    kill -0 "$SRV_PID" 2>/dev/null || log "$tag: SERVER DIED during the run (see $slog)"
    stop_server

    local js; js=$(tail -n1 "$RUN_DIR/$tag.gen.json" 2>/dev/null || true)
    [[ $js == \{* ]] || js='{}'
    local up req fail msgs
    up=$(jq -r '.connections_up // 0' <<<"$js")
    req=$(jq -r '.connections_requested // 0' <<<"$js")
    fail=$(jq -r '.connect_failures // 0' <<<"$js")
    msgs=$(jq -r '.acked_per_sec // 0' <<<"$js")
    local p50 p99
    p50=$(jq -r '.puback_p50_ms // "NaN"' <<<"$js")
    p99=$(jq -r '.puback_p99_ms // "NaN"' <<<"$js")
    local connect_s; connect_s=$(jq -r '.connect_seconds // "NaN"' <<<"$js")
    ((rc == 0)) || log "$tag: generator exit status $rc ($up/$req connections up, $fail failures)"
    local scpu=NaN gcpu=NaN hbusy steal wall hb0 hs0 ht0 hb1 hs1 ht1 threads
    wall=$(calc %.6f "$w1 - $w0")
    [[ $s0 == NaN || $s1 == NaN ]] || scpu=$(calc %.0f "($s1 - $s0) / $CLK_TCK / $wall * 100")
    [[ $g0 == NaN || $g1 == NaN ]] || gcpu=$(calc %.0f "($g1 - $g0) / $CLK_TCK / $wall * 100")
    read -r hb0 hs0 ht0 <<<"$h0"
    read -r hb1 hs1 ht1 <<<"$h1"
    hbusy=$(calc %.0f "($hb1 - $hb0) / ($ht1 - $ht0) * 100")
    steal=$(calc %.0f "($hs1 - $hs0) / ($ht1 - $ht0) * 100")
    threads=$(thread_top "$TMP/threads0" "$TMP/threads1" "$(calc %.6f "$tt1 - $tt0")")
    if [[ $server == corral ]]; then
        store_stats "$TMP/metrics0" "$TMP/metrics1" "$(calc %.6f "$mt1 - $mt0")" "$sc" >>"$TMP/store.txt"
    fi
    # CPU used by everything except server and generator (of one core): other load on the box
    local other=NaN
    [[ $scpu == NaN || $gcpu == NaN ]] ||
        other=$(calc %.0f "($hb1 - $hb0) / ($ht1 - $ht0) * 100 * $NCPU - $scpu - $gcpu")
    local per_conn=NaN
    ((up > 0)) && per_conn=$(calc %.1f "($rss_loaded - $rss_idle) / $up")
    local srv_errs gen_warns
    # Known, harmless lines are counted apart: mosquitto's warning when run as root, and OpenSSL's
    # "unexpected eof" when a generator connection closes without a TLS close_notify at the end.
    local eof_lines
    eof_lines=$(grep -c 'unexpected eof while reading' "$slog" || true)
    # Log records start with a timestamp (both servers); Corral's start banner, written for people
    # whatever the log level, does not and is not counted. A panic is, wherever it appears.
    srv_errs=$(grep -v -e 'unexpected eof while reading' -e 'should not be run as root' "$slog" |
        grep -c -e '^[0-9]' -e 'panicked' || true)
    gen_warns=$(grep -ciE 'warn|error' "$RUN_DIR/$tag.gen.log" || true)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$sc" "$server" "$up" "$req" "$msgs" "$scpu" "$gcpu" "$hbusy" "$rss_idle" "$rss_loaded" \
        "$per_conn" "$gen_rss" "$ramp" "$est_end" "$srv_errs" "$gen_warns" "$rc" "$eof_lines" "$other" \
        "$steal" "$hwm" "$p50" "$p99" "$connect_s" "$threads" >>"$TMP/rows.tsv"
    log "$tag: $(calc %.0f "$msgs") msg/s, server CPU ${scpu}%, generator CPU ${gcpu}%, host busy ${hbusy}% (other ${other}%, steal ${steal}%), RSS $((rss_idle / 1024))→$((rss_loaded / 1024)) MiB (peak $((hwm / 1024))), ${per_conn} KiB/conn, PUBACK p50/p99 ${p50}/${p99} ms, $up/$req up (all answered in ${connect_s} s)"
}

# ---------------------------------------------------------------- generator check (mqttwrk)
mqttwrk_bin() {
    if [[ -x $MQTTWRK_ROOT/bin/mqttwrk ]]; then echo "$MQTTWRK_ROOT/bin/mqttwrk"; return; fi
    if command -v mqttwrk >/dev/null; then command -v mqttwrk; return; fi
    log "installing mqttwrk $MQTTWRK_VERSION into $MQTTWRK_ROOT (cargo install --locked)"
    cargo install mqttwrk --version "$MQTTWRK_VERSION" --locked --ignore-rust-version \
        --root "$MQTTWRK_ROOT" >"$RUN_DIR/mqttwrk-install.log" 2>&1 ||
        cargo install mqttwrk --version "$MQTTWRK_VERSION" --ignore-rust-version \
            --root "$MQTTWRK_ROOT" >>"$RUN_DIR/mqttwrk-install.log" 2>&1 || return 1
    echo "$MQTTWRK_ROOT/bin/mqttwrk"
}

# check_one NAME TRANSPORT CMD...: run a generator against a fresh mosquitto, sample CPU over
# the whole run (both tools are count- or duration-bounded), append a row to $TMP/check.tsv
check_one() {
    local name=$1 transport=$2; shift 2
    local slog=$RUN_DIR/check-$name-$transport.server.log out=$RUN_DIR/check-$name-$transport.out
    start_mosquitto "$slog"
    sleep 0.5
    local s0 h0 w0 t_lim=$((CHECK_DUR * 3 + 60))
    s0=$(cpu_ticks "$SRV_PID") w0=$(now)
    "$@" >"$out" 2>&1 &
    AUX_PID=$!
    local g_last=0 rc=0
    # sample the generator's CPU until it exits (ticks are lost once it is reaped)
    local deadline=$(($(date +%s) + t_lim))
    while kill -0 "$AUX_PID" 2>/dev/null; do
        g_last=$(cpu_ticks "$AUX_PID" 2>/dev/null || echo "$g_last")
        if (($(date +%s) >= deadline)); then
            log "check $name: still running after ${t_lim} s; killing it"
            kill -TERM "$AUX_PID" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    wait "$AUX_PID" || rc=$?
    AUX_PID=""
    local w1 s1; w1=$(now) s1=$(cpu_ticks "$SRV_PID")
    stop_server
    local wall; wall=$(calc %.2f "$w1 - $w0")
    local scpu gcpu
    scpu=$(calc %.0f "($s1 - $s0) / $CLK_TCK / $wall * 100")
    gcpu=$(calc %.0f "$g_last / $CLK_TCK / $wall * 100")
    local msgs extra
    if [[ $name == mqttwrk ]]; then
        # mqttwrk prints the sum of per-publisher count/elapsed; elapsed starts before the barrier
        msgs=$(awk '/Aggregate PubStats/ {p=1} p && /throughput:/ {gsub(/[^0-9.]/,"",$2); print $2; exit}' "$out")
        local acked
        acked=$(awk '/Aggregate PubStats/ {p=1} p && /outgoing_publish:/ {gsub(/[^0-9]/,"",$2); print $2; exit}' "$out")
        extra="acked ${acked:-?} in ${wall} s wall incl. connect = $(calc %.0f "${acked:-0} / $wall") msg/s"
    else
        local js; js=$(tail -n1 "$out")
        msgs=$(jq -r '.acked_per_sec // 0' <<<"$js" 2>/dev/null || echo 0)
        extra="$(jq -r '"\(.connections_up)/\(.connections_requested) up, acked \(.acked) in \(.seconds|.*10|round/10) s window"' <<<"$js" 2>/dev/null || echo '?')"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$transport" "${msgs:-0}" "$scpu" "$gcpu" "$rc" "$extra" >>"$TMP/check.tsv"
    log "check $name ($transport): ${msgs:-0} msg/s, mosquitto CPU ${scpu}%, generator CPU ${gcpu}% (exit $rc)"
}

generator_check() {
    : >"$TMP/check.tsv"
    local wrk
    if ! wrk=$(mqttwrk_bin); then
        log "mqttwrk could not be installed (see $RUN_DIR/mqttwrk-install.log); skipping the generator check"
        CHECK_NOTE="mqttwrk $MQTTWRK_VERSION could not be installed; see $RUN_DIR/mqttwrk-install.log"
        return 0
    fi
    "$wrk" bench --help >"$RUN_DIR/mqttwrk-help.txt" 2>&1 || true
    # Probe TLS: mqttwrk 0.2 (rustls 0.20/webpki 0.22) cannot verify IP-address SANs, so it
    # connects by name (localhost); if the probe fails, both tools use plain TCP.
    local transport=tls
    start_mosquitto "$RUN_DIR/check-probe.server.log"
    if ! timeout 20 "$wrk" bench -S localhost -P "$MOSQ_PORT" -R "$MOSQ_CA" -p 1 -n 10 \
        --publish-qos 1 -i "$INFLIGHT" >"$RUN_DIR/check-probe.out" 2>&1 ||
        ! grep -q 'outgoing_publish: 10' "$RUN_DIR/check-probe.out"; then
        log "mqttwrk over TLS failed (see $RUN_DIR/check-probe.out); comparing over plain TCP"
        transport=plain
    fi
    stop_server

    local port=$MOSQ_PORT host_wrk=localhost
    local -a ca_sim=(--ca "$MOSQ_CA") ca_wrk=(-R "$MOSQ_CA")
    if [[ $transport == plain ]]; then
        port=$MOSQ_PLAIN_PORT host_wrk=127.0.0.1
        ca_sim=() ca_wrk=()
    fi

    # corral simulate first: its rate sizes mqttwrk's message count (mqttwrk is count-bounded)
    check_one simulate "$transport" "$BIN" simulate --host 127.0.0.1 --port "$port" "${ca_sim[@]}" \
        --connections "$CHECK_CONNS" --inflight "$INFLIGHT" --duration "$CHECK_DUR" --anonymous
    local rate count
    rate=$(awk -F'\t' '$1=="simulate" {print $3}' "$TMP/check.tsv")
    count=$(calc %.0f "$rate * $CHECK_DUR / $CHECK_CONNS")
    ((count >= 100)) || count=100
    check_one mqttwrk "$transport" "$wrk" bench -S "$host_wrk" -P "$port" "${ca_wrk[@]}" \
        -p "$CHECK_CONNS" -s 0 -n "$count" --publish-qos 1 -i "$INFLIGHT" -m "$CHECK_PAYLOAD" -k 60
    CHECK_NOTE="mqttwrk $("$wrk" --version 2>/dev/null | awk '{print $2}'): \`mqttwrk bench -p $CHECK_CONNS -s 0 -n $count --publish-qos 1 -i $INFLIGHT -m $CHECK_PAYLOAD\` ($transport) vs \`corral simulate --anonymous --connections $CHECK_CONNS --inflight $INFLIGHT --duration $CHECK_DUR\` ($transport), each against a fresh mosquitto"
}

# ---------------------------------------------------------------- report
report() {
    local model kernel corral_v git_rev mosq_v
    model=$(lscpu | awk -F: '/^Model name/ && !n++ {gsub(/^ +/, "", $2); print $2}')
    kernel=$(uname -r)
    corral_v=$("$BIN" --version 2>/dev/null | awk '{print $2}')
    git_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')
    git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || git_rev="$git_rev+dirty"
    mosq_v=$({ "$MOSQ" -h 2>&1 || true; } | awk '/version/ && !n++ {print $3}')
    local fs; fs=$(df -PT "$TMP" | awk 'NR == 2 {print $2 " (" $1 ")"}')
    {
        echo "### Ingest: Corral vs mosquitto ($(date -u +%Y-%m-%dT%H:%MZ))"
        echo
        echo "Machine: $model, $(nproc) cores, kernel $kernel, ulimit -n $ULIMIT_N, ${BASELINE_BUSY}% busy before the run, Corral data on $fs. Corral $corral_v (tree $git_rev; binary built $(date -u -r "$BIN" +%Y-%m-%dT%H:%MZ)), Debian mosquitto $mosq_v (persistence off)."
        echo "Load: \`corral simulate\` (rumqttc, MQTT 3.1.1, QoS 1, TLS 1.3, ThingsBoard JSON ~40 B, inflight $INFLIGHT, connect concurrency $CONNECT_CONCURRENCY) on the same host; Corral acknowledges each QoS 1 publish only after it is fsynced, mosquitto keeps nothing."
        echo
        echo "| scenario | server | conns up | msg/s | server CPU % | msg per server CPU-s | generator CPU % | kernel + other CPU % | host busy % | server RSS idle → loaded (MiB) | peak RSS (MiB) | RSS per conn (KiB) | PUBACK p50 / p99 (ms) | ramp (s) | connects answered (s) |"
        echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        local sc server up req msgs scpu gcpu hbusy ri rl pc ramp est errs gw rc desc other hwm p50 p99
        while IFS=$'\t' read -r sc server up req msgs scpu gcpu hbusy ri rl pc _ ramp est errs gw rc _ other _ hwm p50 p99 cs _; do
            case $sc in
            A) desc="A: $CONNS_A conns, unthrottled, ${DUR_A} s" ;;
            B) desc="B: $CONNS_B conns × $RATE_B msg/s, ${DUR_B} s" ;;
            esac
            local eff=NaN
            [[ $scpu != NaN && $scpu != 0 ]] && eff=$(calc %.0f "$msgs / ($scpu / 100)")
            printf '| %s | %s | %s/%s | %s | %s | %s | %s | %s | %s | %s → %s | %s | %s | %s / %s | %s | %s |\n' \
                "$desc" "$server" "$up" "$req" "$(calc %.0f "$msgs")" "$scpu" "$eff" "$gcpu" "$other" "$hbusy" \
                "$(calc %.1f "$ri / 1024")" "$(calc %.1f "$rl / 1024")" "$(calc %.0f "$hwm / 1024")" "$pc" \
                "$(calc %.1f "$p50")" "$(calc %.1f "$p99")" "$ramp" "$(calc %.1f "$cs")"
        done <"$TMP/rows.tsv"
        echo
        for sc in $SCENARIOS; do
            local c m
            c=$(awk -F'\t' -v s="$sc" '$1==s && $2=="corral" {print $5}' "$TMP/rows.tsv")
            m=$(awk -F'\t' -v s="$sc" '$1==s && $2=="mosquitto" {print $5}' "$TMP/rows.tsv")
            if [[ -n $c && -n $m ]] && awk "BEGIN {exit !($m > 0)}"; then
                echo "- Scenario $sc: corral/mosquitto msg/s = **$(calc %.2f "$c / $m")**"
            fi
        done
        [[ " $SCENARIOS " == *" B "* ]] && echo "- Scenario B offers $(calc %.0f "$CONNS_B * $RATE_B") msg/s in total; a server that keeps up shows about that."
        echo "- CPU % is of one core (200 % = both cores of this machine), sampled from /proc/PID/stat over the publishing window minus 1 s at each end; host busy % is the whole machine (steal excluded). Kernel + other = host busy × $NCPU − server − generator: softirq for the loopback traffic, kernel I/O threads (jbd2, kworker) working for fsyncs, and anything else running. Generator and server share the machine: when host busy is near 100 % the figures are bound by the machine, not by the server alone."
        echo "- RSS per conn = (RSS with every connection open − idle RSS before connecting) / connections; with few connections it is dominated by buffers, not per-connection state. Peak RSS is the kernel's high-water mark (VmHWM) at the end of the window, the connect ramp included."
        echo "- PUBACK p50 / p99: from the generator, the time from a QoS 1 publish leaving the client to its PUBACK, over the measured window, within 5 %. Under overload it is mostly time spent waiting in the devices' own queues and in the server's admission, not service time. Ramp is until the server's TCP connection count reached the target; connects answered is the generator's time from its first CONNECT to its last CONNACK or failure (with \`CONNECT_CONCURRENCY\` = the connection count, a reconnect storm)."
        if [[ -n ${SEED_SECONDS:-} ]]; then echo "- Corral's devices were created once over REST (${SEED_SECONDS} s) in a template data dir; each Corral run starts on a fresh copy of it."; fi
        local anomalies="" notes="" thread_lines="" eof steal threads
        while IFS=$'\t' read -r sc server up req msgs scpu gcpu hbusy ri rl pc _ ramp est errs gw rc eof other steal _ _ _ _ threads; do
            thread_lines+="  - $server $sc: ${threads:-?}"$'\n'
            ((steal <= 5)) || anomalies+="  - $server $sc: ${steal}% of the machine's CPU time was stolen by the hypervisor during the window"$'\n'
            ((eof == 0)) || notes+="  - $server $sc: $eof \"unexpected eof while reading\" line(s) from the server's TLS (generator connections closed without close_notify at the end of the run)"$'\n'
            ((up == req)) || anomalies+="  - $server $sc: only $up of $req connections came up (generator exit $rc)"$'\n'
            ((errs == 0)) || anomalies+="  - $server $sc: $errs line(s) in the server log ($RUN_DIR/$server-$sc.server.log)"$'\n'
            ((gw == 0)) || anomalies+="  - $server $sc: $gw warning/error line(s) from the generator ($RUN_DIR/$server-$sc.gen.log)"$'\n'
            ((est >= up)) || anomalies+="  - $server $sc: $est connections established at the end of the window, $up came up"$'\n'
        done <"$TMP/rows.tsv"
        echo "- Server CPU by thread (% of one core, same window):"
        printf '%s' "$thread_lines"
        if [[ -s $TMP/store.txt ]]; then
            echo "- Corral's store over the same window (from its /metrics):"
            cat "$TMP/store.txt"
        fi
        if [[ -n $anomalies ]]; then echo "- Anomalies:"; printf '%s' "$anomalies"; fi
        if [[ -n $notes ]]; then echo "- Known, harmless:"; printf '%s' "$notes"; fi
        if [[ -s $TMP/check.tsv || -n ${CHECK_NOTE:-} ]]; then
            echo
            echo "#### Generator check against mosquitto"
            echo
            echo "${CHECK_NOTE:-}"
            echo
            if [[ -s $TMP/check.tsv ]]; then
                echo "| generator | transport | msg/s | mosquitto CPU % | generator CPU % | exit | notes |"
                echo "|---|---|---:|---:|---:|---:|---|"
                local name tr m sc2 gc2 rc2 ex
                while IFS=$'\t' read -r name tr m sc2 gc2 rc2 ex; do
                    echo "| $name | $tr | $(calc %.0f "$m") | $sc2 | $gc2 | $rc2 | $ex |"
                done <"$TMP/check.tsv"
                echo
                echo "CPU here is averaged over each tool's whole run, connect included."
            fi
        fi
        echo
        echo "Raw output and logs: \`${RUN_DIR#"$ROOT"/}/\`."
    } >"$REPORT"
    cat "$REPORT"
    log "report written to $REPORT"
}

# ---------------------------------------------------------------- main
main() {
    prepare
    mosquitto_setup
    : >"$TMP/rows.tsv"
    if [[ " $SERVERS " == *" corral "* ]]; then corral_seed; fi
    local sc server
    for sc in $SCENARIOS; do
        for server in $SERVERS; do run_case "$server" "$sc"; done
    done
    if [[ $CHECK_GENERATOR == 1 ]]; then generator_check; fi
    report
}

main "$@"
