#!/usr/bin/env bash
# Herald vs Nchan vs Pushpin: the same scenarios against each server, one
# after another, on loopback only; one table with Herald's ratio to each peer,
# also written as markdown to bench/results/latest.md (raw JSON lines in
# bench/results/latest.jsonl).
#
#   bash bench/compare.sh                      # defaults: a few minutes
#   IDLE_N=50000 FANOUT_N=30000 bash bench/compare.sh
#   SERVERS="herald nchan" TRANSPORT=sse bash bench/compare.sh
#   SERVERS="herald herald-pusher sockudo" bash bench/compare.sh
#                                              # the Pusher protocol: Herald's dialect vs Sockudo
#   BASELINE_BIN=/path/to/old/herald SERVERS="herald baseline" bash bench/compare.sh
#                                              # a change, before and after
#   SERVERS="floor herald nchan" SCENARIOS="fanout flat" bash bench/compare.sh
#                                              # fan-out against the floor (bench/floor)
#
# Knobs (environment):
#   SERVERS         servers to run, in order          (herald nchan pushpin)
#                   "baseline" is Herald again, from BASELINE_BIN;
#                   "herald-pusher" is Herald's Pusher dialect and "sockudo"
#                   Sockudo (SOCKUDO_BIN), both driven as pusher-js drives
#                   them: /app/{key}, pusher:subscribe, pusher:ping answered,
#                   triggers through the signed POST /apps/{id}/events;
#                   "floor" is bench/floor (herald-floor): one write per
#                   subscriber per message and nothing else (WebSocket only).
#                   With it in SERVERS, the fan-out cases get a row of each
#                   server's deliveries per CPU-second as a ratio to the floor's
#   TRANSPORT       ws, sse, ndjson, iframe or long-poll, for every scenario (ws)
#   IDLE_N          idle connections held              (10000)
#   IDLE_SECS       how long they are held             (5)
#   FANOUT_N        fan-out subscribers (paced)        (10000)
#   FANOUT_RATE     messages per second (paced)        (5)
#   FANOUT_SECS     seconds of paced publishing        (20)
#   FLAT_N          fan-out subscribers (flat out)     (2000)
#   FLAT_M          messages (flat out)                (200)
#   UNICAST_N       subscribers, one channel each      (5000)
#   UNICAST_M       messages per channel (flat out)    (10)
#   PUB_CONC        publisher connections (unicast)    (4)
#   SCENARIOS       subset of: idle fanout flat unicast (all)
#   RUN_TIMEOUT     hard stop per bench run, seconds   (180)
#   PER_PROC        subscribers per load process       (15000)
#   CONNECT_CONC    connects in flight per load process (256)
#   CONNECT_RETRIES retries of a failed connect, counted (3)
#   HERALD_BIN      herald binary   (target/release/herald, built if missing)
#   BENCH_BIN       herald-bench    (target/release/herald-bench, built if missing)
#   BASELINE_BIN    a herald binary from before a change, run as "baseline"
#   FLOOR_BIN       herald-floor    (target/release/herald-floor, built if missing and "floor" is in SERVERS)
#   SOCKUDO_BIN     sockudo (cargo install sockudo --locked; needs protobuf-compiler)
#   SOCKUDO_TOML    more lines for Sockudo's config, e.g. '[websocket]\nmax_messages = 100'
#
# Scenario by scenario, every server runs it back to back (a fresh server
# each time), so a before/after pair sees the same machine state.
#
# One process may hold at most 20,000 open files here, so the load is spread
# over ceil(N / PER_PROC) herald-bench processes (--procs) and many loopback
# source addresses; each server is one process (Herald) or a few (Nginx master
# + 2 workers; Pushpin's runner, condure, zurl, proxy and handler), and its
# memory and CPU are summed over its whole process tree.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
FLOOR_BIN=${FLOOR_BIN:-$TARGET/release/herald-floor}

SERVERS=${SERVERS:-"herald nchan pushpin"}
TRANSPORT=${TRANSPORT:-ws}
IDLE_N=${IDLE_N:-10000}
IDLE_SECS=${IDLE_SECS:-5}
FANOUT_N=${FANOUT_N:-10000}
FANOUT_RATE=${FANOUT_RATE:-5}
FANOUT_SECS=${FANOUT_SECS:-20}
FLAT_N=${FLAT_N:-2000}
FLAT_M=${FLAT_M:-200}
UNICAST_N=${UNICAST_N:-5000}
UNICAST_M=${UNICAST_M:-10}
PUB_CONC=${PUB_CONC:-4}
SCENARIOS=${SCENARIOS:-"idle fanout flat unicast"}
RUN_TIMEOUT=${RUN_TIMEOUT:-180}
PER_PROC=${PER_PROC:-15000}
CONNECT_CONC=${CONNECT_CONC:-256}
CONNECT_RETRIES=${CONNECT_RETRIES:-3}

HERALD_PORT=7070
FLOOR_PORT=7072
NCHAN_PORT=8081
PUSHPIN_PORT=7999
PUSHPIN_PUB_PORT=5561
SOCKUDO_PORT=6001
SOCKUDO_BIN=${SOCKUDO_BIN:-$(command -v sockudo || echo "$HOME/.cargo/bin/sockudo")}
ORIGIN_PORT=7998

RESULTS="$HERE/results"
JSONL="$RESULTS/latest.jsonl"
WORK=$(mktemp -d /tmp/herald-compare.XXXXXX)
mkdir -p "$RESULTS"
: >"$JSONL"


# Open files: raise the soft limit to the hard one for us and the servers.
ulimit -n "$(ulimit -Hn)"
log "open files limit: $(ulimit -n)"

# --- installs ---------------------------------------------------------------
need_nchan() { command -v nginx >/dev/null && [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || apt_install nginx libnginx-mod-nchan; }
need_pushpin() { { command -v pushpin >/dev/null && command -v zurl >/dev/null; } || apt_install pushpin; }

if [ ! -x "$HERALD_BIN" ] || [ ! -x "$BENCH_BIN" ]; then
    log "building herald and herald-bench (release)"
    (cd "$ROOT" && cargo build --release -p herald -p herald-bench)
fi
if [[ " $SERVERS " == *" floor "* ]] && [ ! -x "$FLOOR_BIN" ]; then
    log "building herald-floor (release)"
    (cd "$ROOT" && cargo build --release -p herald-floor)
fi

# --- server control ---------------------------------------------------------
SERVER_PIDS=()
cleanup() {
    local pid
    for pid in "${SERVER_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    # Pushpin's runner and nginx's master stop their children on SIGTERM:
    # give them up to 10 s before forcing.
    local i
    for ((i = 0; i < 100; i++)); do
        local alive=0
        for pid in "${SERVER_PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${SERVER_PIDS[@]}"; do
        kill -9 "$pid" 2>/dev/null || true
    done
    SERVER_PIDS=()
}
trap cleanup EXIT

wait_port() { # port, seconds
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    log "port $1 did not open"
    return 1
}

# Each start_* sets MAIN_PID (the PID handed to --server-pid), SUB_WS,
# SUB_HTTP, PUB_URL and PUB_BODY, and SERVER_ARGS (extra herald-bench
# arguments, e.g. the Pusher protocol's; empty for the others).
start_herald() {
    SERVER_ARGS=()
    HERALD_LOG=warn "$HERALD_BIN" serve --listen "127.0.0.1:$HERALD_PORT" ${HERALD_CONFIG:+--config "$HERALD_CONFIG"} >"$WORK/herald.log" 2>&1 &
    MAIN_PID=$!
    SERVER_PIDS+=("$MAIN_PID")
    wait_port "$HERALD_PORT" 20
    SUB_WS="ws://127.0.0.1:$HERALD_PORT/sub/{channel}"
    SUB_HTTP="http://127.0.0.1:$HERALD_PORT/sub/{channel}"
    PUB_URL="http://127.0.0.1:$HERALD_PORT/pub/{channel}"
    PUB_BODY='{payload}'
}

# The floor (bench/floor): WebSocket channel URLs and POST /pub/{channel}
# only. Its counters (frames written, writes skipped on a full send buffer)
# go to its log when it is stopped; compare.sh prints them after the run.
start_floor() {
    SERVER_ARGS=()
    [ "$TRANSPORT" = ws ] || { log "floor speaks WebSocket only (TRANSPORT=$TRANSPORT)"; return 1; }
    "$FLOOR_BIN" --listen "127.0.0.1:$FLOOR_PORT" >"$WORK/floor.log" 2>&1 &
    MAIN_PID=$!
    SERVER_PIDS+=("$MAIN_PID")
    wait_port "$FLOOR_PORT" 20
    SUB_WS="ws://127.0.0.1:$FLOOR_PORT/sub/{channel}"
    SUB_HTTP=$SUB_WS
    PUB_URL="http://127.0.0.1:$FLOOR_PORT/pub/{channel}"
    PUB_BODY='{payload}'
}

# Herald from before a change (BASELINE_BIN), for before/after tables.
start_baseline() {
    [ -x "${BASELINE_BIN:-}" ] || { log "BASELINE_BIN is not an executable"; return 1; }
    HERALD_BIN="$BASELINE_BIN" start_herald
}

# The Pusher protocol as pusher-js speaks it (one app: id bench, key
# bench-key): subscribe, wait for subscription_succeeded, answer pings;
# events triggered through the signed HTTP API.
PUSHER_APP_ID=bench
PUSHER_KEY=bench-key
PUSHER_SECRET=bench-secret-0123
pusher_args() { # port
    SUB_WS="ws://127.0.0.1:$1/app/$PUSHER_KEY?protocol=7&client=js&version=8.4.0"
    SUB_HTTP=$SUB_WS
    PUB_URL="http://127.0.0.1:$1/apps/$PUSHER_APP_ID/events"
    PUB_BODY='{"name":"tick","channels":["{channel}"],"data":"{payload_str}"}'
    SERVER_ARGS=(--transport session-ws
        --session-subscribe '{"event":"pusher:subscribe","data":{"channel":"{channel}"}}'
        --session-ack 'pusher_internal:subscription_succeeded'
        --session-ping '"event":"pusher:ping"'
        --session-pong '{"event":"pusher:pong","data":{}}'
        --pusher-app "$PUSHER_KEY:$PUSHER_SECRET")
}

start_herald_pusher() {
    printf '[[pusher.apps]]\nid = "%s"\nkey = "%s"\nsecret = "%s"\n' \
        "$PUSHER_APP_ID" "$PUSHER_KEY" "$PUSHER_SECRET" >"$WORK/herald-pusher.toml"
    HERALD_CONFIG="$WORK/herald-pusher.toml" start_herald
    pusher_args "$HERALD_PORT"
}

# Sockudo with its memory drivers, one app from the environment, and delta
# compression, metrics and rate limits off (a fair baseline: Herald has
# none of them on either).
start_sockudo() {
    [ -x "$SOCKUDO_BIN" ] || { log "no sockudo at $SOCKUDO_BIN (cargo install sockudo --locked)"; return 1; }
    local p="$WORK/sockudo"
    mkdir -p "$p"
    printf 'host = "127.0.0.1"\nport = %s\n[delta_compression]\nenabled = false\n[metrics]\nenabled = false\n[rate_limiter]\nenabled = false\n' \
        "$SOCKUDO_PORT" >"$p/sockudo.toml"
    printf '%b\n' "${SOCKUDO_TOML:-}" >>"$p/sockudo.toml"
    (cd "$p" && SOCKUDO_DEFAULT_APP_ID=$PUSHER_APP_ID SOCKUDO_DEFAULT_APP_KEY=$PUSHER_KEY \
        SOCKUDO_DEFAULT_APP_SECRET=$PUSHER_SECRET SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=1000000 \
        SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=10000000 \
        SOCKUDO_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SECOND=10000000 \
        SOCKUDO_DEFAULT_APP_MAX_READ_REQUESTS_PER_SECOND=10000000 \
        SOCKUDO_MAX_CONNECTIONS=1000000 METRICS_ENABLED=false RATE_LIMITER_ENABLED=false \
        exec "$SOCKUDO_BIN" --config "$p/sockudo.toml") >"$p/out.log" 2>&1 &
    MAIN_PID=$!
    SERVER_PIDS+=("$MAIN_PID")
    wait_port "$SOCKUDO_PORT" 30
    pusher_args "$SOCKUDO_PORT"
}

start_nchan() {
    SERVER_ARGS=()
    need_nchan
    local p="$WORK/nchan"
    mkdir -p "$p"
    sed -e "s#@PREFIX@#$p#g" -e "s#@PORT@#$NCHAN_PORT#g" "$HERE/nchan.conf" >"$p/nginx.conf"
    nginx -p "$p" -c "$p/nginx.conf" >"$p/out.log" 2>&1 &
    MAIN_PID=$!
    SERVER_PIDS+=("$MAIN_PID")
    wait_port "$NCHAN_PORT" 20
    SUB_WS="ws://127.0.0.1:$NCHAN_PORT/sub/{channel}"
    SUB_HTTP="http://127.0.0.1:$NCHAN_PORT/sub/{channel}"
    PUB_URL="http://127.0.0.1:$NCHAN_PORT/pub/{channel}"
    PUB_BODY='{payload}'
}

start_pushpin() {
    SERVER_ARGS=()
    need_pushpin
    local p="$WORK/pushpin"
    mkdir -p "$p/run" "$p/log"
    python3 "$HERE/pushpin_origin.py" "$ORIGIN_PORT" >"$p/origin.log" 2>&1 &
    SERVER_PIDS+=("$!")
    echo "* 127.0.0.1:$ORIGIN_PORT,over_http" >"$p/routes"
    # Debian's config with our own run/log dirs and routes; zurl (the origin
    # client) run by Pushpin's runner with its sockets in our run dir; the
    # delivery rate limit (message_rate=2500/s by default) lifted so the
    # comparison measures the server, not a throttle; warnings-only logging.
    sed -e "s#^rundir=.*#rundir=$p/run#" \
        -e "s#^logdir=.*#logdir=$p/log#" \
        -e "s#^routesfile=.*#routesfile=$p/routes#" \
        -e "s#^services=.*#services=condure,zurl,pushpin-proxy,pushpin-handler#" \
        -e "s#^log_level=.*#log_level=1#" \
        -e "s#^message_rate=.*#message_rate=10000000#" \
        -e "s#^message_hwm=.*#message_hwm=10000000#" \
        -e "s#^push_in_http_port=.*#push_in_http_port=$PUSHPIN_PUB_PORT#" \
        -e 's#^\[proxy\]$#[proxy]\nzurl_out_specs=ipc://{rundir}/{ipc_prefix}zurl-in\nzurl_out_stream_specs=ipc://{rundir}/{ipc_prefix}zurl-in-stream\nzurl_in_specs=ipc://{rundir}/{ipc_prefix}zurl-out#' \
        /etc/pushpin/pushpin.conf >"$p/pushpin.conf"
    pushpin --config "$p/pushpin.conf" --port "127.0.0.1:$PUSHPIN_PORT" >"$p/out.log" 2>&1 &
    MAIN_PID=$!
    SERVER_PIDS+=("$MAIN_PID")
    wait_port "$ORIGIN_PORT" 20
    wait_port "$PUSHPIN_PORT" 30
    wait_port "$PUSHPIN_PUB_PORT" 30
    SUB_WS="ws://127.0.0.1:$PUSHPIN_PORT/sub/{channel}"
    SUB_HTTP="http://127.0.0.1:$PUSHPIN_PORT/sub/{channel}"
    PUB_URL="http://127.0.0.1:$PUSHPIN_PUB_PORT/publish/"
    # One item, one payload per transport format.
    PUB_BODY='{"items":[{"channel":"{channel}","formats":{"ws-message":{"content":"{payload_str}"},"http-stream":{"content":"data: {payload_str}\n\n"}}}]}'
}

# --- one bench run ----------------------------------------------------------
bench() { # server case n [herald-bench args...]
    local server=$1 case=$2 n=$3
    shift 3
    local procs=$(((n + PER_PROC - 1) / PER_PROC))
    local sub=$SUB_WS
    [ "$TRANSPORT" = ws ] || sub=$SUB_HTTP
    log "$server / $case: $n subscribers over $TRANSPORT ($procs load process(es))"
    local out="$WORK/$server-$case"
    if "$BENCH_BIN" --transport "$TRANSPORT" --sub-url "$sub" --pub-url "$PUB_URL" \
        --pub-body "$PUB_BODY" -n "$n" --procs "$procs" --server-pid "$MAIN_PID" \
        --label "$server" --timeout "$RUN_TIMEOUT" --output both \
        --connect-concurrency "$CONNECT_CONC" --connect-retries "$CONNECT_RETRIES" \
        "${SERVER_ARGS[@]}" "$@" \
        >"$out.out" 2>"$out.err"; then
        sed '$d' "$out.out" >&2
        printf '{"case":"%s","server":"%s","report":%s}\n' "$case" "$server" "$(tail -n 1 "$out.out")" >>"$JSONL"
    else
        log "$server / $case failed:"
        tail -n 5 "$out.err" >&2 || true
        printf '{"case":"%s","server":"%s","report":null}\n' "$case" "$server" >>"$JSONL"
    fi
}

# Each scenario gets a freshly started server, so one scenario's leftovers
# (closing connections, buffers, channel state) cannot skew the next.
run_one() { # server scenario
    local server=$1 s=$2
    log "starting $server"
    "start_${server//-/_}"
    case $s in
    idle) bench "$server" idle "$IDLE_N" --scenario idle --duration "$IDLE_SECS" ;;
    fanout) bench "$server" fanout-paced "$FANOUT_N" --scenario fanout \
        -m $((FANOUT_RATE * FANOUT_SECS)) --rate "$FANOUT_RATE" ;;
    flat) bench "$server" fanout-flat "$FLAT_N" --scenario fanout -m "$FLAT_M" ;;
    unicast) bench "$server" unicast "$UNICAST_N" --scenario unicast -m "$UNICAST_M" \
        --pub-concurrency "$PUB_CONC" ;;
    *) log "unknown scenario $s" ;;
    esac
    cleanup
    if [ "$server" = floor ]; then tail -n 1 "$WORK/floor.log" >&2 || true; fi
    sleep 1
}

for s in $SCENARIOS; do
    for server in $SERVERS; do
        run_one "$server" "$s"
    done
done

# --- the table --------------------------------------------------------------
python3 - "$JSONL" "$RESULTS/latest.md" "$TRANSPORT" <<'PY'
import json, sys, datetime

jsonl, md_path, transport = sys.argv[1:4]
rows = [json.loads(l) for l in open(jsonl) if l.strip()]
servers = []
for r in rows:
    if r["server"] not in servers:
        servers.append(r["server"])
cases = []
for r in rows:
    if r["case"] not in cases:
        cases.append(r["case"])
by = {(r["case"], r["server"]): r["report"] for r in rows}

# (label, getter, better) where better is "higher" or "lower".
def lat(k):
    return lambda r: r["latency"][k] / 1000.0 if r["latency"]["count"] else None

METRICS = {
    "idle": [
        ("connections open", lambda r: r["connections_open"], "higher"),
        ("connect errors", lambda r: r["connect_errors"], "lower"),
        ("connect attempts retried", lambda r: r["connect_retries"], "lower"),
        ("connects/s", lambda r: r["connect_rate"], "higher"),
        ("server RSS per conn (B)", lambda r: r["server_rss_per_conn_bytes"], "lower"),
        ("server RSS with conns (MiB)", lambda r: r["server_rss_connected_kib"] / 1024, "lower"),
        ("cut short by --timeout", lambda r: "yes" if r["hard_stopped"] else "no", None),
    ],
}
DELIVERY = [
    ("connections open", lambda r: r["connections_open"], "higher"),
    ("connect attempts retried", lambda r: r["connect_retries"], "lower"),
    ("dropped during run", lambda r: r["dropped"], "lower"),
    ("delivered / expected", lambda r: f'{r["unique"]}/{r["expected"]}', None),
    ("lost", lambda r: r["lost"], "lower"),
    ("dup / out-of-order", lambda r: f'{r["duplicated"]} / {r["out_of_order"]}', None),
    ("deliveries/s", lambda r: r["deliveries_per_sec"], "higher"),
    ("latency p50 (ms)", lat("p50_us"), "lower"),
    ("latency p99 (ms)", lat("p99_us"), "lower"),
    ("latency p99.9 (ms)", lat("p999_us"), "lower"),
    ("latency max (ms)", lat("max_us"), "lower"),
    ("server CPU (s)", lambda r: r["server_cpu_secs"], "lower"),
    ("deliveries per server CPU-s", lambda r: r["deliveries_per_server_cpu_sec"], "higher"),
    ("cut short by --timeout", lambda r: "yes" if r["hard_stopped"] else "no", None),
]

def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.2f}"
    return f"{v:,}"

peers = [s for s in servers if s != "herald"]

# With the floor in the run, the fan-out cases get each server's deliveries
# per server CPU-second divided by the floor's in the same run.
FLOOR_CASES = ("fanout-paced", "fanout-flat")
def per_cpu(rep):
    return rep["deliveries_per_server_cpu_sec"] if rep else None
def floor_ratio(case, s):
    f, v = per_cpu(by.get((case, "floor"))), per_cpu(by.get((case, s)))
    if isinstance(f, (int, float)) and isinstance(v, (int, float)) and f:
        return f"{v / f:.2f}"
    return None
head = ["case", "metric"] + servers + [f"herald/{p}" for p in peers]
lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
for case in cases:
    metrics = METRICS.get(case, DELIVERY)
    for label, get, better in metrics:
        vals = {}
        for s in servers:
            rep = by.get((case, s))
            try:
                vals[s] = get(rep) if rep else None
            except (KeyError, TypeError, ZeroDivisionError):
                vals[s] = None
        ratios = []
        for p in peers:
            h, o = vals.get("herald"), vals.get(p)
            if better and isinstance(h, (int, float)) and isinstance(o, (int, float)) and o:
                ratios.append(f"{h / o:.2f}x")
            else:
                ratios.append("-")
        cells = [case, label + (f" ({better} is better)" if better else "")]
        cells += [fmt(vals[s]) for s in servers] + ratios
        lines.append("| " + " | ".join(cells) + " |")
        if label == "deliveries per server CPU-s" and "floor" in servers and case in FLOOR_CASES:
            cells = [case, "deliveries per server CPU-s / floor's (higher is better)"]
            cells += [fmt(floor_ratio(case, s)) for s in servers] + ["-" for _ in peers]
            lines.append("| " + " | ".join(cells) + " |")

notes = [
    f"# Herald vs peers ({datetime.datetime.now().strftime('%Y-%m-%d %H:%M')})",
    "",
    f"Transport: `{transport}`. Produced by `bash bench/compare.sh` (sizes in the script header; "
    "raw reports in `latest.jsonl`). Ratios are Herald's figure divided by the peer's; "
    "read them with the direction in the metric column. Server memory and CPU are "
    "summed over each server's process tree (Herald: 1 process; Nchan: nginx master + 2 "
    "workers; Pushpin: runner, condure, zurl, proxy, handler), RSS per connection is "
    "(RSS with connections - RSS before) / connections. Everything ran on one 2-core "
    "machine, load generator included, so absolute figures are pessimistic and "
    "ratios are what to read."
    + (" `floor` is bench/floor: one write per subscriber per message and nothing else; "
       "\"/ floor's\" rows divide each server's deliveries per server CPU-second by the floor's."
       if "floor" in servers else ""),
    "",
]
text = "\n".join(notes + lines) + "\n"
open(md_path, "w").write(text)
print(text)
PY
rm -rf "$WORK"
