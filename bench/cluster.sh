#!/usr/bin/env bash
# Three Herald nodes on one Redis (issue #15, "Across nodes"), loopback only.
#
# Subscribers are spread evenly over the nodes (one herald-bench, its
# --sub-url repeated once per node: subscriber i goes to node i % NODES);
# every publish goes through node 1. Scenarios:
#   fanout   FANOUT_N subscribers of one channel, FANOUT_RATE messages/s for
#            FANOUT_SECS (paced); FANOUT_N may be a list ("900 9000") to show
#            that Redis' work per publish does not grow with the subscribers
#   unicast  UNICAST_N subscribers, one channel each, UNICAST_M messages per
#            channel flat out through 16 publishers
# Each scenario gets fresh nodes and an emptied Redis. Reported per run:
# deliveries/s, p50/p99 latency, lost/duplicated/out of order, CPU of each
# node and of redis-server (utime+stime from /proc, from the end of the
# connects, i.e. herald-bench's first warmup/publish progress line, to the
# end of the run), Redis CPU per published message, and what Redis did per
# publish: PUBLISH commands (cmdstat_publish, counted inside the publish
# script too), node connections subscribed to the channel's Redis channel
# (PUBSUB NUMSUB, sampled during the run: every PUBLISH sends one message to
# each), and the socket writes and bytes Redis sent (total_writes_processed,
# total_net_output_bytes: the reply to the publishing node plus one message
# per subscribed node, coalesced when they meet in one event-loop turn).
# Results: bench/results/cluster.md (raw reports in cluster.jsonl).
#
#   bash bench/cluster.sh                                   # full size
#   FANOUT_N=300 FANOUT_SECS=3 UNICAST_N=300 UNICAST_M=5 bash bench/cluster.sh   # smoke
#
# Knobs: NODES (3), FANOUT_N (9000), FANOUT_RATE (5), FANOUT_SECS (20),
# UNICAST_N (3000), UNICAST_M (10), UNICAST_PUBS (16), SCENARIOS ("fanout
# unicast"), PER_PROC (15000 subscribers per load process), RUN_TIMEOUT (180),
# BASE_PORT (7281: nodes on 7281..), REDIS_PORT (7299), HERALD_BIN, BENCH_BIN.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
NODES=${NODES:-3}
FANOUT_N=${FANOUT_N:-9000}
FANOUT_RATE=${FANOUT_RATE:-5}
FANOUT_SECS=${FANOUT_SECS:-20}
UNICAST_N=${UNICAST_N:-3000}
UNICAST_M=${UNICAST_M:-10}
UNICAST_PUBS=${UNICAST_PUBS:-16}
SCENARIOS=${SCENARIOS:-"fanout unicast"}
PER_PROC=${PER_PROC:-15000}
RUN_TIMEOUT=${RUN_TIMEOUT:-180}
BASE_PORT=${BASE_PORT:-7281}
REDIS_PORT=${REDIS_PORT:-7299}
RESULTS="$HERE/results"
JSONL="$RESULTS/cluster.jsonl"
CLK_TCK=$(getconf CLK_TCK)

command -v redis-server >/dev/null && command -v redis-cli >/dev/null || apt_install redis-server
if [ ! -x "$HERALD_BIN" ] || [ ! -x "$BENCH_BIN" ]; then
    log "building herald and herald-bench (release)"
    (cd "$ROOT" && cargo build --release -p herald -p herald-bench)
fi
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d /tmp/herald-cluster.XXXXXX)
mkdir -p "$RESULTS"
: >"$JSONL"
pids=()
node_pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
REDIS_PID=$!
pids+=("$REDIS_PID")
for _ in $(seq 50); do rcli ping >/dev/null 2>&1 && break; sleep 0.1; done
log "redis $(rcli info server | awk -F: '/^redis_version:/ {print $2}' | tr -d '\r') on $REDIS_PORT (pid $REDIS_PID)"

cat >"$work/herald.toml" <<EOF
[limits]
max_connections_per_ip = 1000000
EOF

start_nodes() {
    node_pids=()
    local i
    for i in $(seq 0 $((NODES - 1))); do
        HERALD_LOG=warn "$HERALD_BIN" serve --listen "127.0.0.1:$((BASE_PORT + i))" --config "$work/herald.toml" \
            --engine "redis://127.0.0.1:$REDIS_PORT/0" >"$work/node$i.log" 2>&1 &
        node_pids+=($!)
        pids+=($!)
    done
    for i in $(seq 0 $((NODES - 1))); do
        for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$((BASE_PORT + i))") 2>/dev/null && break; sleep 0.1; done
        kill -0 "${node_pids[$i]}" 2>/dev/null || { log "node $i did not start:"; cat "$work/node$i.log" >&2; exit 1; }
    done
}
stop_nodes() {
    local p
    for p in "${node_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    node_pids=()
}

ticks() { # pid: utime + stime in clock ticks
    awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat"
}
info_field() { # section field
    rcli info "$1" | tr -d '\r' | awk -F: -v f="$2" '$1 == f {print $2}'
}
cmd_calls() { # command: calls from INFO commandstats (0 if never called)
    local v
    v=$(rcli info commandstats | tr -d '\r' | sed -n "s/^cmdstat_$1:calls=\([0-9]*\),.*/\1/p")
    echo "${v:-0}"
}
snapshot() { # one JSON object of counters
    local nodes="" p
    for p in "${node_pids[@]}"; do nodes+="${nodes:+,}$(ticks "$p")"; done
    printf '{"redis_ticks":%s,"node_ticks":[%s],"publish":%s,"evalsha":%s,"commands":%s,"writes":%s,"net_out":%s}\n' \
        "$(ticks "$REDIS_PID")" "$nodes" "$(cmd_calls publish)" "$(cmd_calls evalsha)" \
        "$(info_field stats total_commands_processed)" "$(info_field stats total_writes_processed)" \
        "$(info_field stats total_net_output_bytes)"
}

# Samples, every 0.5 s, the bench channels' Redis channels and how many
# connections follow them; keeps the largest total.
numsub_sampler() { # prefix out
    local best_ch=0 best_sub=0 chans total
    while :; do
        mapfile -t chans < <(rcli --raw pubsub channels "*$1-*" 2>/dev/null)
        if [ "${#chans[@]}" -gt 0 ]; then
            total=$(rcli --raw pubsub numsub "${chans[@]}" | awk 'NR % 2 == 0 {s += $1} END {print s + 0}')
            if [ "$total" -gt "$best_sub" ]; then best_sub=$total best_ch=${#chans[@]}; fi
            echo "$best_ch $best_sub" >"$2"
        fi
        sleep 0.5
    done
}

run_case() { # case n [herald-bench args...]
    local case=$1 n=$2
    shift 2
    local procs=$(((n + PER_PROC - 1) / PER_PROC)) prefix="cl$RANDOM$RANDOM" subs=() i
    for i in $(seq 0 $((NODES - 1))); do subs+=(--sub-url "ws://127.0.0.1:$((BASE_PORT + i))/sub/{channel}"); done
    rcli flushall >/dev/null
    start_nodes
    log "$case: $n subscribers over $NODES nodes, publishing through node 1"
    local out="$work/$case-$n"
    echo "0 0" >"$out.numsub"
    numsub_sampler "$prefix" "$out.numsub" &
    local sampler=$!
    local server_args=()
    for p in "${node_pids[@]}"; do server_args+=(--server-pid "$p"); done
    # The first warmup/publish progress line marks the end of the connects:
    # the counters are read there and at the end.
    "$BENCH_BIN" "${subs[@]}" --pub-url "http://127.0.0.1:$BASE_PORT/pub/{channel}" \
        -n "$n" --procs "$procs" --channel-prefix "$prefix" "${server_args[@]}" \
        --label "$case" --timeout "$RUN_TIMEOUT" --output json --progress-every 0.2 \
        --connect-retries 3 "$@" \
        2> >(while IFS= read -r line; do
            if [ ! -s "$out.before" ] && [[ $line == *" warmup "* || $line == *" publish "* ]]; then
                snapshot >"$out.before"
            fi
            printf '%s\n' "$line" >>"$out.err"
        done) >"$out.json" || { log "$case failed:"; tail -n 5 "$out.err" >&2; }
    snapshot >"$out.after"
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    [ -s "$out.before" ] || cp "$out.after" "$out.before"
    read -r nchan nsub <"$out.numsub"
    python3 - "$case" "$n" "$nchan" "$nsub" "$CLK_TCK" "$out.json" "$out.before" "$out.after" >>"$JSONL" <<'PY'
import json, sys
case, n, nchan, nsub, tck = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
lines = [l for l in open(sys.argv[6]).read().splitlines() if l.strip()]
rep = json.loads(lines[-1]) if lines else None
b, a = json.loads(open(sys.argv[7]).read()), json.loads(open(sys.argv[8]).read())
d = {k: a[k] - b[k] for k in ("redis_ticks", "publish", "evalsha", "commands", "writes", "net_out")}
print(json.dumps({
    "case": case, "n": n, "report": rep,
    "redis_cpu_secs": d["redis_ticks"] / tck,
    "node_cpu_secs": [(x - y) / tck for x, y in zip(a["node_ticks"], b["node_ticks"])],
    "redis": d, "channels_followed": nchan, "node_subscriptions": nsub,
}))
PY
    stop_nodes
}

for s in $SCENARIOS; do
    case $s in
    fanout) for n in $FANOUT_N; do
        run_case fanout-paced "$n" --scenario fanout -m $((FANOUT_RATE * FANOUT_SECS)) --rate "$FANOUT_RATE"
    done ;;
    unicast) run_case unicast "$UNICAST_N" --scenario unicast -m "$UNICAST_M" --pub-concurrency "$UNICAST_PUBS" ;;
    *) log "unknown scenario $s" ;;
    esac
done

python3 - "$JSONL" "$RESULTS/cluster.md" "$NODES" <<'PY'
import json, sys, datetime
jsonl, md, nodes = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [json.loads(l) for l in open(jsonl) if l.strip()]

def fmt(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.{digits}f}"
    return f"{v:,}"

def per(x, pubs):
    return x / pubs if pubs else None

metrics = [
    ("subscribers (per node)", lambda r, p: f'{r["n"]:,} ({", ".join(str(r["n"] // nodes + (i < r["n"] % nodes)) for i in range(nodes))})'),
    ("connections open", lambda r, p: p["connections_open"]),
    ("published", lambda r, p: p["published"]),
    ("delivered / expected", lambda r, p: f'{p["unique"]:,}/{p["expected"]:,}'),
    ("lost / dup / out-of-order", lambda r, p: f'{p["lost"]} / {p["duplicated"]} / {p["out_of_order"]}'),
    ("deliveries/s", lambda r, p: p["deliveries_per_sec"]),
    ("latency p50 (ms)", lambda r, p: p["latency"]["p50_us"] / 1000 if p["latency"]["count"] else None),
    ("latency p99 (ms)", lambda r, p: p["latency"]["p99_us"] / 1000 if p["latency"]["count"] else None),
    ("latency max (ms)", lambda r, p: p["latency"]["max_us"] / 1000 if p["latency"]["count"] else None),
    ("herald CPU per node (s)", lambda r, p: " / ".join(f"{c:.2f}" for c in r["node_cpu_secs"])),
    ("deliveries per herald CPU-s (all nodes)", lambda r, p: per(p["unique"], sum(r["node_cpu_secs"])) if sum(r["node_cpu_secs"]) else None),
    ("redis CPU (s)", lambda r, p: r["redis_cpu_secs"]),
    ("redis CPU per published message (us)", lambda r, p: per(r["redis_cpu_secs"] * 1e6, p["published"])),
    ("redis PUBLISH per publish", lambda r, p: per(r["redis"]["publish"], p["published"])),
    ("node subscriptions per followed channel (= Redis messages per PUBLISH)",
     lambda r, p: per(r["node_subscriptions"], r["channels_followed"])),
    ("redis socket writes per publish", lambda r, p: per(r["redis"]["writes"], p["published"])),
    ("redis bytes out per publish", lambda r, p: per(r["redis"]["net_out"], p["published"])),
    ("redis commands per publish", lambda r, p: per(r["redis"]["commands"], p["published"])),
]
head = ["metric"] + [f'{r["case"]} ({r["n"]:,})' for r in rows]
lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
for label, get in metrics:
    cells = [label]
    for r in rows:
        p = r["report"]
        try:
            cells.append(fmt(get(r, p)) if p else "-")
        except (KeyError, TypeError, ZeroDivisionError):
            cells.append("-")
    lines.append("| " + " | ".join(cells) + " |")
text = "\n".join([
    f"# {nodes} Herald nodes on one Redis ({datetime.datetime.now().strftime('%Y-%m-%d %H:%M')})",
    "",
    "Produced by `bash bench/cluster.sh` (sizes in its header; raw in `cluster.jsonl`). Subscribers spread "
    f"evenly over {nodes} nodes, every publish through node 1, loopback, one 2-core machine with the load "
    "generator. CPU (nodes, Redis) and Redis counters run from the end of the connects to the end of the run. "
    "Each PUBLISH sends one message to every connection subscribed to the Redis channel, so \"node "
    "subscriptions per followed channel\" is Redis messages per publish (one per node that holds a "
    "subscriber); socket writes and bytes out per publish count what Redis actually sent (the reply to "
    "node 1 included).",
    "",
] + lines) + "\n"
open(md, "w").write(text)
print(text)
PY
