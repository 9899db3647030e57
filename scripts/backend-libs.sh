#!/usr/bin/env bash
# The backend libraries, Python (clients/python) and Node (clients/node),
# each against the real herald binary (docs/backend-libraries.md).
#
# Python: the package is installed, from a copy of clients/python, into a
# virtualenv under ${XDG_CACHE_HOME:-$HOME/.cache}/herald-backend-py (made
# once, with the build backend and mypy pinned below: the library itself
# needs only the standard library), and its unittest suite runs with that
# virtualenv's Python, so what is tested is what `pip install` gives,
# `mypy --strict` included. Node: `npm ci` in
# clients/node (TypeScript, pinned, to check index.d.ts), then node --test.
# The binary is HERALD_BIN, or found in CARGO_TARGET_DIR (or target/), built
# if missing. Takes a few seconds; ends with one line
# "backend-libs: N passed, N failed".
set -euo pipefail
# A HERALD_BIN given by the caller is relative to the caller's directory.
if [[ -n ${HERALD_BIN:-} && -e $HERALD_BIN ]]; then
  HERALD_BIN="$(cd "$(dirname "$HERALD_BIN")" && pwd)/$(basename "$HERALD_BIN")"
fi
cd "$(dirname "$0")/.."
root=$(pwd)
target_dir="${CARGO_TARGET_DIR:-$root/target}"

say() { printf '\n==> %s\n' "$*"; }

passed=0
failed=0
status=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [[ -z ${HERALD_BIN:-} ]]; then
  HERALD_BIN="$target_dir/debug/herald"
  [[ -x $HERALD_BIN ]] || cargo build -p herald
fi
export HERALD_BIN

# --- Python --------------------------------------------------------------------
# setuptools builds the package (pip install, no build isolation); mypy and
# what it pulls in check its types (clients/python/tests/test_types.py).
pins=(setuptools==84.2.1 mypy==2.4.1 mypy_extensions==1.2.0 pathspec==1.1.1 typing_extensions==4.16.0
  librt==0.17.0 ast_serialize==0.13.1)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/herald-backend-py
venv=$cache/venv
if [[ ! -x $venv/bin/python || "$(cat "$venv/.herald-pins" 2>/dev/null)" != "${pins[*]}" ]]; then
  say "making $venv with ${pins[*]} (once)"
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --disable-pip-version-check -q "${pins[@]}"
  echo "${pins[*]}" >"$venv/.herald-pins"
fi
say "installing clients/python (herald-push) into $venv"
cp -r clients/python "$work/python"
rm -rf "$work/python/build" "$work/python/src/"*.egg-info
"$venv/bin/pip" install --disable-pip-version-check -q --no-deps --no-build-isolation --force-reinstall "$work/python"

say "herald-push (Python) against $HERALD_BIN"
# Run from the tests' own directory with the installed package (not src/).
# Bounded: every wait in the tests is (5 s, 10 s to start); this is the backstop.
py_out="$work/python.out"
(cd clients/python/tests && timeout 120 "$venv/bin/python" -c '
import sys, unittest
import herald_push
assert "site-packages" in herald_push.__file__, herald_push.__file__
result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(unittest.defaultTestLoader.discover("."))
bad = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
print(f"python: {max(0, result.testsRun - bad - len(result.skipped))} passed, {bad} failed")
sys.exit(1 if bad or not result.testsRun else 0)
') 2>&1 | tee "$py_out" || status=1
p="" f=""
read -r p f < <(awk '/^python: [0-9]+ passed, [0-9]+ failed$/ { print $2, $4 }' "$py_out") || true
if [[ -z $p ]]; then p=0 f=1; fi
passed=$((passed + p)) failed=$((failed + f))

# --- Node ----------------------------------------------------------------------
say "installing clients/node's test packages (npm ci)"
(cd clients/node && { npm ci --no-audit --no-fund --loglevel=error || npm install --no-audit --no-fund --loglevel=error; })
say "herald-push (Node) against $HERALD_BIN"
(cd clients/node && timeout 120 node --test --test-timeout=60000 \
  --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$work/node.tap" \
  test/backend.test.mjs test/types.test.mjs) || status=1
p=$(awk '$1 == "#" && $2 == "pass" { n += $3 } END { print n + 0 }' "$work/node.tap" 2>/dev/null || echo 0)
f=$(awk '$1 == "#" && $2 == "fail" { n += $3 } END { print n + 0 }' "$work/node.tap" 2>/dev/null || echo 0)
if [[ $status -ne 0 && $f -eq 0 && $failed -eq 0 ]]; then f=1; fi
passed=$((passed + p)) failed=$((failed + f))

echo "backend-libs: $passed passed, $failed failed"
exit "$status"
