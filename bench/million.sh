#!/usr/bin/env bash
# The opt-in million-connection run (see bench/million.md). Run by hand only:
#
#   sudo bash bench/million.sh --yes                 # 1,000,000 connections
#   TOTAL=200000 HOLD_SECS=30 bash bench/million.sh --yes
#
# Several Herald nodes share one Redis engine; each node gets its own group of
# herald-bench processes (spread over their own loopback source addresses);
# every group publishes through the *next* node so messages cross Redis. All
# groups hold their connections for HOLD_SECS while a probe group measures
# fan-out latency across nodes; then everything stops. Every step is bounded:
# each herald-bench run has --timeout, and the script's own deadline kills
# whatever is left.
set -euo pipefail

if [ "${1:-}" != "--yes" ] || [ -n "${CI:-}" ]; then
    echo "bench/million.sh is a by-hand run (heavy: ~20 GiB of RAM); pass --yes, and never in CI" >&2
    exit 2
fi

HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"

TOTAL=${TOTAL:-1000000}            # subscriber connections over all nodes
HOLD_SECS=${HOLD_SECS:-300}        # how long each group holds after connecting (covers probe + pulses)
TOTAL_RATE=${TOTAL_RATE:-4000}     # new connections per second over all load processes
                                   # (each subscribe also asks Redis; faster overloads it)
PROBE_N=${PROBE_N:-500}           # fan-out probe subscribers while the million is held
PROBE_RATE=${PROBE_RATE:-10}       # probe messages per second
PULSES=${PULSES:-3}                # messages published to every held connection
PULSE_EVERY=${PULSE_EVERY:-15}     # seconds between them (a pulse reaches all before the next)
REDIS_PORT=${REDIS_PORT:-6379}
BASE_PORT=${BASE_PORT:-7100}
DEADLINE=${DEADLINE:-1800}         # hard stop for the whole script, seconds

ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
# What one process may hold, keeping room for its own files.
PER_PROCESS=$((NOFILE - 1000))
PER_NODE=${PER_NODE:-$PER_PROCESS}
NODES=${NODES:-$(((TOTAL + PER_NODE - 1) / PER_NODE))}
PER_NODE=$(((TOTAL + NODES - 1) / NODES))
LOAD_PER_PROC=${LOAD_PER_PROC:-$((PER_PROCESS < 15000 ? PER_PROCESS : 15000))}
PROCS_PER_NODE=$(((PER_NODE + LOAD_PER_PROC - 1) / LOAD_PER_PROC))
CONNECT_RATE=$(((TOTAL_RATE + NODES * PROCS_PER_NODE - 1) / (NODES * PROCS_PER_NODE)))
PER_PROC=$(((PER_NODE + PROCS_PER_NODE - 1) / PROCS_PER_NODE))
echo "== $TOTAL connections: $NODES herald nodes x $PER_NODE, $PROCS_PER_NODE load processes per node (open files limit $NOFILE)"

# --- kernel settings (raised only, never lowered) ---------------------------
raise() { # key value...
    local key=$1
    shift
    local want="$*" have
    have=$(sysctl -n "$key" 2>/dev/null | tr -s '\t ' ' ') || return 0
    if [ "${have%% *}" -lt "${want%% *}" ] 2>/dev/null || [ "$key" = net.ipv4.ip_local_port_range ]; then
        sysctl -q -w "$key=$want" 2>/dev/null && echo "   sysctl $key = $want (was $have)" ||
            echo "   could not set $key (have $have, want $want): run as root outside a sandbox" >&2
    fi
}
echo "== kernel settings"
raise fs.file-max 4000000
raise fs.nr_open 2000000
raise net.ipv4.ip_local_port_range "1024 65535"
raise net.core.somaxconn 65535
raise net.ipv4.tcp_max_syn_backlog 65535
raise net.core.netdev_max_backlog 65535
# Pages (4 KiB): pressure from 4 GiB, limit 8 GiB of TCP buffers overall.
raise net.ipv4.tcp_mem "1048576 1572864 2097152"
# Small default socket buffers: a held connection carries almost nothing.
# (Put back as they were when the script ends.)
OLD_RMEM=$(sysctl -n net.ipv4.tcp_rmem 2>/dev/null | tr -s '\t ' ' ' || true)
OLD_WMEM=$(sysctl -n net.ipv4.tcp_wmem 2>/dev/null | tr -s '\t ' ' ' || true)
sysctl -q -w net.ipv4.tcp_rmem="4096 4096 6291456" 2>/dev/null || true
sysctl -q -w net.ipv4.tcp_wmem="4096 4096 4194304" 2>/dev/null || true
raise net.netfilter.nf_conntrack_max 2500000

# --- binaries and redis -----------------------------------------------------
if [ ! -x "$HERALD_BIN" ] || [ ! -x "$BENCH_BIN" ]; then
    (cd "$ROOT" && cargo build --release -p herald -p herald-bench)
fi
command -v redis-server >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
}

WORK=$(mktemp -d /tmp/herald-million.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 2
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    [ -n "${OLD_RMEM:-}" ] && sysctl -q -w net.ipv4.tcp_rmem="$OLD_RMEM" 2>/dev/null
    [ -n "${OLD_WMEM:-}" ] && sysctl -q -w net.ipv4.tcp_wmem="$OLD_WMEM" 2>/dev/null
    return 0
}
trap cleanup EXIT
trap 'exit 143' TERM INT
# The script's own deadline: a watchdog that stops this script, whose EXIT
# trap then ends every process it started (each also has its own --timeout).
# (The sleep gets no copy of stdout/stderr: killing the subshell at exit
# leaves it behind, and it must not keep a caller's pipe open.)
(sleep "$DEADLINE" >/dev/null 2>&1 && echo "== deadline reached, stopping" >&2 && kill -TERM $$) 2>/dev/null &
PIDS+=("$!")
# A memory guard: should the machine run short, stop the load (and say so)
# rather than let the kernel's OOM killer pick processes.
MIN_FREE_MIB=${MIN_FREE_MIB:-1500}
(
    while sleep 2; do
        avail=$(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo)
        low=$(cat "$WORK/mem.low" 2>/dev/null || echo 999999999)
        [ "$avail" -lt "$low" ] && echo "$avail" >"$WORK/mem.low"
        if [ "$avail" -lt "$MIN_FREE_MIB" ]; then
            echo "== memory guard: only $avail MiB available, stopping the load" >&2
            pkill -f "herald-bench --scenario idle" || true
            exit 0
        fi
    done
) &
PIDS+=("$!")

wait_port() {
    local i
    for ((i = 0; i < 300; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 did not open" >&2
    return 1
}

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --maxclients 10000 >"$WORK/redis.log" 2>&1 &
PIDS+=("$!")
wait_port "$REDIS_PORT"

# The nodes share two cores with ~100 load processes: give Redis answers and
# the pub/sub keepalive more time than the production defaults (2 s / 5 s),
# or a starved node drops its pub/sub link and all its subscribers (4005).
# Also a longer heartbeat: at the 15 s default a million connections mean
# ~67k pings and as many pongs per second, which on two shared cores
# crowds out everything else.
cat >"$WORK/herald.toml" <<TOML
heartbeat = "${HEARTBEAT:-120s}"
[redis]
timeout = "${REDIS_TIMEOUT:-15s}"
ping_interval = "${REDIS_PING:-15s}"
[limits]
max_connections = 1000000
max_connections_per_ip = 1000000
TOML
NODE_PIDS=()
for ((i = 0; i < NODES; i++)); do
    HERALD_LOG=warn "$HERALD_BIN" serve --engine "redis://127.0.0.1:$REDIS_PORT/0" --config "$WORK/herald.toml" \
        --listen "127.0.0.1:$((BASE_PORT + i))" >"$WORK/herald-$i.log" 2>&1 &
    PIDS+=("$!")
    NODE_PIDS+=("$!")
done
for ((i = 0; i < NODES; i++)); do wait_port $((BASE_PORT + i)); done
echo "== $NODES herald nodes up on ports $BASE_PORT..$((BASE_PORT + NODES - 1))"

# Connect time for a group at CONNECT_RATE per process, plus margin.
CONNECT_SECS=$((PER_PROC / CONNECT_RATE + 30))
GROUP_TIMEOUT=$((4 * CONNECT_SECS + HOLD_SECS + 300))

echo "== opening $TOTAL connections"
BENCH_PIDS=()
for ((i = 0; i < NODES; i++)); do
    # Group i uses source addresses 127.(10+i/200).(i%200).1..16: each has
    # its own ephemeral port space.
    src="127.$((10 + i / 200)).$((i % 200)).1"
    "$BENCH_BIN" --scenario idle --transport ws \
        --sub-url "ws://127.0.0.1:$((BASE_PORT + i))/sub/{channel}" \
        -n "$PER_NODE" --channels 1 --channel-prefix million -m "$PULSES" --procs "$PROCS_PER_NODE" \
        --source-base "$src" --source-addrs 16 \
        --connect-rate "$CONNECT_RATE" --connect-concurrency 32 --connect-timeout 30 --connect-retries 5 \
        --warmup 30 --duration "$HOLD_SECS" --timeout "$GROUP_TIMEOUT" \
        --server-pid "${NODE_PIDS[$i]}" --label "node-$i" --output json --progress-every 10 \
        >"$WORK/group-$i.json" 2>"$WORK/group-$i.err" &
    PIDS+=("$!")
    BENCH_PIDS+=("$!")
done

# Wait until every connection is up (both ends counted), at most
# 4 x CONNECT_SECS; then, while everyone holds, a probe fan-out that
# subscribes on node 0 and publishes on the last node, so every message
# crosses Redis.
established=0
for ((t = 0; t < 4 * CONNECT_SECS; t += 5)); do
    sleep 5
    # sockstat is instant; `ss` over two million sockets is not.
    established=$(awk '/^TCP:/ {print $3}' /proc/net/sockstat)
    echo "   $established TCP sockets in use (both ends), after ${t}s" >&2
    [ "$established" -ge $((2 * TOTAL)) ] && break
done
echo "== TCP sockets in use on the machine: $established (both ends)"
"$BENCH_BIN" --scenario fanout --transport ws \
    --sub-url "ws://127.0.0.1:$BASE_PORT/sub/{channel}" \
    --pub-url "http://127.0.0.1:$((BASE_PORT + NODES - 1))/pub/{channel}" \
    -n "$PROBE_N" -m $((PROBE_RATE * 20)) --rate "$PROBE_RATE" \
    --source-base 127.9.0.1 --source-addrs 4 --timeout 180 --label probe --connect-retries 3 --connect-timeout 30 \
    --server-pid "${NODE_PIDS[0]}" --output both --progress-every 5 >"$WORK/probe.out" 2>"$WORK/probe.err" || true
sed '$d' "$WORK/probe.out" || true

# Every held connection follows the channel "million-0": publish PULSES
# messages to it through the last node; each must reach every connection on
# every node (through Redis). The groups count what their connections got.
echo "== pulses: $PULSES messages to all held connections, one every ${PULSE_EVERY}s"
"$BENCH_BIN" --scenario fanout --transport ws \
    --sub-url "ws://127.0.0.1:$BASE_PORT/sub/{channel}" \
    --pub-url "http://127.0.0.1:$((BASE_PORT + NODES - 1))/pub/{channel}" \
    -n 1 --channels 1 --channel-prefix million -m "$PULSES" \
    --rate "$(python3 -c "print(1 / $PULSE_EVERY)")" --settle 30 \
    --source-base 127.9.1.1 --source-addrs 1 --timeout $((PULSES * PULSE_EVERY + 120)) --label pulse \
    --output json >"$WORK/pulse.json" 2>"$WORK/pulse.err" || true
echo "== memory available after the pulses: $(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo) MiB"

for p in "${BENCH_PIDS[@]}"; do wait "$p" || true; done

python3 - "$WORK" "$NODES" "$PULSES" <<'PY'
import json, sys, glob
work, nodes, pulses = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
opened = errors = target = dropped = unique = received = 0
rss_before = rss_conn = 0
rate = 0.0
for f in sorted(glob.glob(f"{work}/group-*.json")):
    try:
        r = json.loads(open(f).read().strip().splitlines()[-1])
    except Exception:
        print(f"{f}: no report")
        continue
    target += r["connections_target"]; opened += r["connections_open"]
    errors += r["connect_errors"]; dropped += r["dropped"]
    rss_before += r["server_rss_before_kib"]; rss_conn += r["server_rss_connected_kib"]
    rate += r["connect_rate"]
    unique += r.get("unique", 0); received += r.get("received", 0)
print(f"connections open {opened:,} / {target:,}, connect errors {errors:,}, dropped while held {dropped:,}")
print(f"sum of groups' connect rates {rate:,.0f}/s")
print(f"pulses delivered to held connections: {unique:,} unique of {pulses * opened:,} expected "
      f"({pulses} x {opened:,}); {received - unique:,} duplicates")
if opened:
    print(f"herald RSS over {nodes} nodes: {rss_before/1024:,.0f} MiB -> {rss_conn/1024:,.0f} MiB, "
          f"{(rss_conn - rss_before) * 1024 / opened:,.0f} B per connection")
PY
echo "== lowest memory available during the run: $(cat "$WORK/mem.low" 2>/dev/null || echo '?') MiB (of $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) MiB)"
echo "== logs and raw reports in $WORK"
