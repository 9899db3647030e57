#!/usr/bin/env bash
# Server memory per message kept in history (memory engine), loopback only:
# starts Herald, publishes MESSAGES bodies of SIZE bytes to each of CHANNELS
# channels through POST /pub/{channel} on one keep-alive connection, and
# prints the RSS growth per retained message (history keeps at most 50 per
# channel with the default config).
#
#   bash bench/history-memory.sh                  # 200 channels x 100 messages of 60 B
#   CHANNELS=20000 MESSAGES=1 bash bench/history-memory.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
HERALD_BIN=${HERALD_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/herald}
CHANNELS=${CHANNELS:-200}
MESSAGES=${MESSAGES:-100}
SIZE=${SIZE:-60}
PORT=${PORT:-7091}
[ -x "$HERALD_BIN" ] || (cd "$ROOT" && cargo build --release -p herald)

"$HERALD_BIN" serve --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
before=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
timeout 600 python3 - "$PORT" "$CHANNELS" "$MESSAGES" "$SIZE" <<'PY'
import http.client, sys
port, channels, messages, size = map(int, sys.argv[1:])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
for ch in range(channels):
    for _ in range(messages):
        c.request("POST", f"/pub/histmem-{ch}", body=b"x" * size,
                  headers={"Content-Type": "text/plain"})
        r = c.getresponse(); r.read()
        assert r.status == 201, r.status
PY
after=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
kept=$(( CHANNELS * (MESSAGES < 50 ? MESSAGES : 50) ))
echo "channels=$CHANNELS messages/channel=$MESSAGES size=${SIZE}B kept=$kept"
echo "RSS before ${before} KiB, after ${after} KiB: $(( (after - before) * 1024 / kept )) B per retained message (channel overhead included)"
