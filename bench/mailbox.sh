#!/usr/bin/env bash
# Acknowledged user mailboxes (issue #14), loopback only.
#
# 1. Throughput: USERS users, each one session WebSocket (herald-bench
#    session-ws, a token per user from the shared HMAC secret) subscribed to
#    its personal channel; the backend sends MESSAGES messages with "ack" to
#    each user (POST /api/users/{id}/publish, 16 publishers); every client
#    acknowledges each message as it arrives (one `ack` command each). A
#    poller reads herald_mailbox_messages_acknowledged_total from every node
#    every 50 ms: acknowledged messages per second = all of them / (time the
#    last was acknowledged - time the first was). NODES=1 runs the memory
#    engine; NODES=3 three nodes on one Redis, users spread over them (one
#    herald-bench per node), every publish through the first node.
# 2. Memory: PENDING_USERS offline users get PENDING messages each (60 B of
#    JSON) with "ack"; prints the node's RSS growth per pending message (and,
#    on Redis, Redis' used_memory growth).
#
#   bash bench/mailbox.sh                       # one node, 10,000 users x 10
#   NODES=3 bash bench/mailbox.sh               # three nodes on one Redis
#   ACK=0 bash bench/mailbox.sh                 # the same publishes without ack (baseline)
#   ENGINE=redis bash bench/mailbox.sh          # one node on Redis
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
NODES=${NODES:-1}
USERS=${USERS:-10000}
MESSAGES=${MESSAGES:-10}
PENDING_USERS=${PENDING_USERS:-10000}
PENDING=${PENDING:-10}
ACK=${ACK:-1}
BASE_PORT=${BASE_PORT:-7181}
REDIS_PORT=${REDIS_PORT:-7199}
SECRET="mailbox-bench-secret-of-at-least-32-bytes"
[ -x "$HERALD_BIN" ] && [ -x "$BENCH_BIN" ] || (cd "$ROOT" && cargo build --release -p herald -p herald-bench)

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/herald.toml" <<EOF
[auth]
hmac_secret = "$SECRET"

[limits]
max_connections_per_ip = 100000

[[namespace]]
prefix = "user:"
ack = true
mailbox_size = 1000
history_size = 100
EOF

engine=()
if [ "$NODES" -gt 1 ] || [ "${ENGINE:-}" = redis ]; then
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  engine=(--engine "redis://127.0.0.1:$REDIS_PORT/0")
fi

node_pids=()
start_nodes() {
  node_pids=()
  for i in $(seq 0 $((NODES - 1))); do
    "$HERALD_BIN" serve --listen "127.0.0.1:$((BASE_PORT + i))" --config "$work/herald.toml" "${engine[@]}" >"$work/node$i.log" 2>&1 &
    node_pids+=($!)
    pids+=($!)
  done
  for i in $(seq 0 $((NODES - 1))); do
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$((BASE_PORT + i))") 2>/dev/null && break; sleep 0.1; done
    if ! kill -0 "${node_pids[$i]}" 2>/dev/null; then
      echo "node $i did not start:" >&2
      cat "$work/node$i.log" >&2
      exit 1
    fi
  done
}
stop_nodes() {
  for p in "${node_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}

# --- 1. throughput -----------------------------------------------------------
start_nodes
share=$((USERS / NODES))
total=$((share * NODES * MESSAGES))
python3 - "$BASE_PORT" "$NODES" "$total" >"$work/acks.txt" <<'PY' &
import sys, time, urllib.request
port, nodes, total = map(int, sys.argv[1:])
def acked():
    n = 0
    for i in range(nodes):
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port + i}/metrics", timeout=5).read().decode()
        except OSError:
            return -1
        for line in text.splitlines():
            if line.startswith("herald_mailbox_messages_acknowledged_total "):
                n += int(float(line.split()[1]))
    return n
first = None
deadline = time.time() + 900
while time.time() < deadline:
    n = acked()
    now = time.time()
    if n < 0:
        time.sleep(0.05)
        continue
    if n > 0 and first is None:
        first = now
    if n >= total:
        print(f"{n} {now - first:.3f}")
        break
    time.sleep(0.05)
else:
    print(f"{acked()} timeout")
PY
poller=$!
prefix="mbx$RANDOM"
bench_pids=()
for i in $(seq 0 $((NODES - 1))); do
  "$BENCH_BIN" --scenario unicast --transport session-ws \
    --sub-url "ws://127.0.0.1:$((BASE_PORT + i))/connection/websocket" \
    --session-connect '{"id":100000000,"connect":{"token":"{token}"}}' \
    --session-subscribe '{"id":{id},"subscribe":{"channel":"user:{channel}"}}' \
    --session-ack-each "$([ "$ACK" = 1 ] && echo '{"id":{id},"ack":{"ids":["{msgid}"]}}')" \
    --hmac-secret "$SECRET" \
    --pub-url "http://127.0.0.1:$BASE_PORT/api/users/{channel}/publish" \
    --pub-body "{\"data\":{payload},\"ack\":$([ "$ACK" = 1 ] && echo true || echo false)}" --pub-concurrency $((16 / NODES)) \
    -n "$share" -m "$MESSAGES" --channel-prefix "$prefix-$i" --settle 3 \
    --server-pid "${node_pids[$i]}" --label "herald node $i" --output json --progress-every 0 \
    >"$work/bench$i.json" 2>"$work/bench$i.err" &
  bench_pids+=($!)
done
for p in "${bench_pids[@]}"; do wait "$p"; done
if [ "$ACK" = 1 ]; then wait "$poller"; else kill "$poller" 2>/dev/null || true; echo "0 timeout" >"$work/acks.txt"; fi
for i in $(seq 0 $((NODES - 1))); do
  python3 - "$work/bench$i.json" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(f"  {r['label']}: {r['connections_open']} users, {r['published']} published, {r['unique']} received once "
      f"(lost {r['lost']}, duplicated {r['duplicated']}, out of order {r['out_of_order']}), "
      f"{r['deliveries_per_sec']:.0f} deliveries/s, p99 {r['latency']['p99_us'] / 1000:.1f} ms")
PY
done
read -r acked secs <"$work/acks.txt"
echo "nodes=$NODES users=$((share * NODES)) messages/user=$MESSAGES: $acked of $total acknowledged in $secs s" \
  "= $(python3 -c "s='$secs'; print('-' if s == 'timeout' or float(s) == 0 else f'{$acked / float(s):.0f}')") acknowledged messages/s"
stop_nodes
if [ -n "${engine[*]}" ]; then redis-cli -p "$REDIS_PORT" flushall >/dev/null; fi

# --- 2. memory per pending message -------------------------------------------
start_nodes
pid=${node_pids[0]}
before=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
redis_before=0
if [ -n "${engine[*]}" ]; then redis_before=$(redis-cli -p "$REDIS_PORT" info memory | awk -F: '/^used_memory:/ {print $2+0}'); fi
timeout 900 python3 - "$BASE_PORT" "$PENDING_USERS" "$PENDING" <<'PY'
import http.client, json, sys
port, users, messages = map(int, sys.argv[1:])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
body = json.dumps({"data": {"text": "x" * 48}, "ack": True}).encode()
for u in range(users):
    for _ in range(messages):
        c.request("POST", f"/api/users/pending-{u}/publish", body=body,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        assert r.status == 201, r.status
c.request("GET", f"/api/users/pending-0/mailbox"); r = c.getresponse()
assert json.loads(r.read())["pending"] == messages
PY
after=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
pending=$((PENDING_USERS * PENDING))
echo "pending: $PENDING_USERS offline users x $PENDING messages = $pending; node RSS ${before} -> ${after} KiB:" \
  "$(( (after - before) * 1024 / pending )) B per pending message (history of 100 per user included)"
if [ -n "${engine[*]}" ]; then
  redis_after=$(redis-cli -p "$REDIS_PORT" info memory | awk -F: '/^used_memory:/ {print $2+0}')
  echo "redis used_memory grew $(( (redis_after - redis_before) / pending )) B per pending message (mailbox + history + index)"
fi
