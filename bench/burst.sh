#!/usr/bin/env bash
# Burst memory (issue #15): N channel-URL WebSockets opened all at once
# (--connect-concurrency 10000), Herald's RSS per connection two seconds
# after the last one opened (herald-bench --scenario idle --warmup 2), then
# its RSS over the idle baseline five seconds after they all closed.
# A fresh server (release build, memory engine) for every N.
#
#   bash bench/burst.sh                  # N = 5000 and 19000
#   NS="5000" HERALD_BIN=/tmp/old bash bench/burst.sh
#
# Loopback only; one load process per 10,000 connections (a process may
# hold at most 20,000 open files here).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
NS=${NS:-"5000 19000"}
PORT=${PORT:-7181}

ulimit -n "$(ulimit -Hn)"
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

printf '| connections opened at once | B per conn at +2 s | idle RSS | RSS 5 s after close | over idle |\n'
printf '|---|---|---|---|---|\n'
for n in $NS; do
    HERALD_LOG=warn "$HERALD_BIN" serve --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
        sleep 0.1
    done
    sleep 1
    idle=$(rss_kib "$pid")
    procs=$(((n + 9999) / 10000))
    report=$("$BENCH_BIN" --transport ws --sub-url "ws://127.0.0.1:$PORT/sub/{channel}" \
        --pub-url "http://127.0.0.1:$PORT/pub/{channel}" -n "$n" --procs "$procs" \
        --server-pid "$pid" --scenario idle --warmup 2 --duration 0.1 \
        --connect-concurrency 10000 --timeout 120 --output json 2>/dev/null | tail -n 1)
    sleep 5
    after=$(rss_kib "$pid")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    python3 - "$n" "$idle" "$after" "$report" <<'EOF'
import json, sys
n, idle, after, report = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
if report["connections_open"] != n:
    sys.exit(f"only {report['connections_open']} of {n} connections opened")
print(f"| {n:,} | {report['server_rss_per_conn_bytes']:,.0f} | {idle / 1024:.1f} MiB "
      f"| {after / 1024:.1f} MiB | +{(after - idle) / 1024:.1f} MiB |")
EOF
    sleep 1
done
