#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need
# (Debian's redis-server, nginx, chromium and prometheus for promtool, the JS client's npm packages), then
# runs the Rust unit and integration tests (against the memory engine and
# against a real Redis), the JavaScript client's unit and browser tests (and
# the Pusher suites with pusher-js, Laravel Echo and the `pusher` server
# library, one of them on two nodes of a Redis), Pusher's Python server
# library against pusher-js (scripts/pusher-py.sh, in a pinned virtualenv),
# the Python and Node backend libraries (scripts/backend-libs.sh), and
# Herald's WebSocket framing against Autobahn|Testsuite (scripts/autobahn.sh,
# which installs the suite in a Python 2.7 virtualenv on first use), and the
# deployment files (scripts/deploy-check.sh: hadolint, systemd-analyze, the
# Kubernetes manifests; nginx itself runs in crates/herald/tests/nginx.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# Where cargo puts binaries: honours CARGO_TARGET_DIR like cargo does.
target_dir="${CARGO_TARGET_DIR:-$root/target}"

say() { printf '\n==> %s\n' "$*"; }

# Every suite's output also goes to one log; at the end (pass or fail) one
# line totals them: cargo's "test result" lines, the JS runner's and
# Autobahn's, deploy-check's, openapi's, pusher-py's and backend-libs' "N passed, N failed" lines.
tally_log=$(mktemp)
redis_pid=""
redis_dir=""
finish() {
  local status=$?
  if [[ -n "$redis_pid" ]]; then kill "$redis_pid" 2>/dev/null || true; fi
  if [[ -n "$redis_dir" ]]; then rm -rf "$redis_dir"; fi
  awk -v status="$status" '
    /^test result: / { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
    /^(js|backend-libs|autobahn|deploy|openapi|pusher-py): [0-9]+ passed, [0-9]+ failed$/ { p += $2; f += $4 }
    END { if (status != 0 && f == 0) f = 1; printf "%d passed, %d failed\n", p, f }
  ' "$tally_log"
  rm -f "$tally_log"
  exit "$status"
}
trap finish EXIT
counted() { "$@" 2>&1 | tee -a "$tally_log"; }

# --- what the tests need -----------------------------------------------------
need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# nginx lives in /usr/sbin, which a non-root PATH may lack.
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need_apt+=(nginx)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# promtool (checks a real /metrics scrape) comes with Debian's prometheus.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
if ((${#need_apt[@]})); then
  say "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [[ -f clients/js/package.json ]]; then
  say "installing the JS client's test packages"
  (cd clients/js && { npm ci --no-audit --no-fund --loglevel=error || npm install --no-audit --no-fund --loglevel=error; })
fi

# --- Rust: lint, build once, unit + integration tests (memory engine) --------
say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
say "build"
cargo build --workspace --all-targets
say "tests (memory engine)"
counted cargo test --workspace

# --- the same integration suite against a real Redis -------------------------
redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis_dir=$(mktemp -d)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$redis_dir" --daemonize no >"$redis_dir/log" 2>&1 &
redis_pid=$!
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
say "integration tests (redis engine at 127.0.0.1:$redis_port)"
HERALD_TEST_ENGINE="redis://127.0.0.1:$redis_port/0" counted cargo test -p herald --tests

# --- JavaScript client: unit tests and real-browser end-to-end tests ----------
if [[ -x clients/js/test/run.sh ]]; then
  say "JavaScript client tests"
  HERALD_BIN="$target_dir/debug/herald" counted clients/js/test/run.sh
fi

# --- the backend libraries (Python and Node) against the binary (seconds) -----
say "backend libraries, Python and Node (scripts/backend-libs.sh)"
HERALD_BIN="$target_dir/debug/herald" counted scripts/backend-libs.sh

# --- Pusher's Python server library against pusher-js (a few seconds) -------
say "Pusher's Python server library (scripts/pusher-py.sh)"
HERALD_BIN="$target_dir/debug/herald" counted scripts/pusher-py.sh

# --- docs/openapi.json: valid, served, and held by the live server (under a minute) ---
say "OpenAPI description and schemathesis (scripts/openapi.sh)"
counted scripts/openapi.sh

# --- Herald's WebSocket framing against Autobahn|Testsuite (about a minute) ---
say "Autobahn|Testsuite (ws_echo)"
counted scripts/autobahn.sh

# --- deployment files: Dockerfile, systemd unit, Kubernetes manifests ---------
say "deployment files"
HERALD_BIN="$target_dir/debug/herald" counted scripts/deploy-check.sh

say "all tests passed"
