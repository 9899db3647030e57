#!/usr/bin/env bash
# The official Python Pusher server library (PyPI `pusher`) against the real
# herald binary, with real pusher-js clients receiving what it triggers:
# clients/js/test/e2e/pusher_py.py (triggers, batches, channel queries,
# authenticate's signatures, refusals, terminate_user_connections).
#
# The library goes once into a virtualenv under
# ${XDG_CACHE_HOME:-$HOME/.cache}/herald-pusher-py, with the versions pinned
# below (the library and everything it pulls in); pusher-js comes from
# clients/js/node_modules (npm ci if it is missing). The binary is HERALD_BIN,
# or found in CARGO_TARGET_DIR (or target/), built if missing. Takes a few
# seconds; ends with one line "pusher-py: N passed, N failed".
set -euo pipefail
# A HERALD_BIN given by the caller is relative to the caller's directory.
if [[ -n ${HERALD_BIN:-} && -e $HERALD_BIN ]]; then
  HERALD_BIN="$(cd "$(dirname "$HERALD_BIN")" && pwd)/$(basename "$HERALD_BIN")"
fi
cd "$(dirname "$0")/.."
root=$(pwd)
target_dir="${CARGO_TARGET_DIR:-$root/target}"

say() { printf '\n==> %s\n' "$*"; }

pins=(pusher==3.3.4 requests==2.34.2 urllib3==2.8.0 certifi==2026.10.19.post1 charset-normalizer==3.5.3
  idna==3.20 PyNaCl==1.6.2 cffi==2.1.1 pycparser==3.12 cryptography==50.0.2 pyOpenSSL==26.4.0
  ndg-httpsclient==0.5.1 pyasn1==0.6.5 six==1.17.0 typing_extensions==4.16.0)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/herald-pusher-py
venv=$cache/venv
if [[ ! -x $venv/bin/python || "$(cat "$venv/.herald-pins" 2>/dev/null)" != "${pins[*]}" ]]; then
  say "installing ${pins[0]} into $venv (once)"
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --disable-pip-version-check -q "${pins[@]}"
  echo "${pins[*]}" >"$venv/.herald-pins"
fi
if [[ ! -d clients/js/node_modules/pusher-js ]]; then
  say "installing the JS client's test packages (pusher-js)"
  (cd clients/js && { npm ci --no-audit --no-fund --loglevel=error || npm install --no-audit --no-fund --loglevel=error; })
fi
if [[ -z ${HERALD_BIN:-} ]]; then
  HERALD_BIN="$target_dir/debug/herald"
  [[ -x $HERALD_BIN ]] || cargo build -p herald
fi
export HERALD_BIN

say "pusher (Python) against $HERALD_BIN"
# Bounded: each wait in the script is (5 s); this is the backstop.
timeout 120 "$venv/bin/python" clients/js/test/e2e/pusher_py.py
