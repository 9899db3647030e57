#!/usr/bin/env bash
# The JavaScript client's whole test suite, in one command:
#   1. installs the dev dependencies (playwright-core, ws, pusher-js, pusher,
#      laravel-echo) if node_modules is missing;
#   2. the build (scripts/build.mjs: dist/herald.cjs for require, and a check
#      that the committed herald.min.js is the build of herald.js) and the
#      types (tsc --noEmit over herald.d.ts and the typed examples, resolved
#      through package.json's exports);
#   3. unit tests: node --test test/unit/ (a fake in-process server answering
#      with the real server's frames from test/fixtures/session.json, and both
#      package entries);
#   4. end-to-end tests: the real herald binary (HERALD_BIN, default
#      ../../target/debug/herald relative to clients/js), driven from Node 20
#      with `ws` and from headless Chromium (/usr/bin/chromium, or CHROMIUM_BIN);
#      the Pusher suite runs again on two nodes of a redis-server it starts
#      (skipped, saying so, when redis-server is not on PATH).
# Ends with one line "js: N passed, N failed".
set -euo pipefail
# A HERALD_BIN given by the caller is relative to the caller's directory.
if [ -n "${HERALD_BIN:-}" ] && [ -e "$HERALD_BIN" ]; then
  HERALD_BIN="$(cd "$(dirname "$HERALD_BIN")" && pwd)/$(basename "$HERALD_BIN")"
fi
cd "$(dirname "$0")/.."

if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund || npm install --no-audit --no-fund
fi

export HERALD_BIN="${HERALD_BIN:-../../target/debug/herald}"
CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"
if [ ! -x "$HERALD_BIN" ]; then
  echo "run.sh: no herald binary at $HERALD_BIN (run: cargo build -p herald, or set HERALD_BIN)" >&2
  exit 1
fi
if [ ! -x "$CHROMIUM_BIN" ]; then
  echo "run.sh: no Chromium at $CHROMIUM_BIN (run: apt-get install -y chromium, or set CHROMIUM_BIN)" >&2
  exit 1
fi

tap="$(mktemp -d)"
trap 'rm -rf "$tap"' EXIT
status=0

# Each test has its own bounded waits; --test-timeout is the backstop.
run() {
  local name="$1"
  shift
  echo "== $name"
  node --test --test-timeout=120000 \
    --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="$tap/$name.tap" \
    "$@" || status=1
}

echo "== build"
node scripts/build.mjs --check || status=1
echo "== types"
if npx --no-install tsc --noEmit -p tsconfig.json; then
  echo "types: tsc --noEmit clean"
else
  status=1
fi

run unit test/unit/
run e2e test/e2e/

count() { cat "$tap"/*.tap 2>/dev/null | awk -v k="$1" '$1 == "#" && $2 == k { n += $3 } END { print n + 0 }'; }
passed=$(count pass)
failed=$(count fail)
if [ "$status" -ne 0 ] && [ "${failed:-0}" -eq 0 ]; then failed=1; fi
echo "js: ${passed:-0} passed, ${failed:-0} failed"
exit "$status"
