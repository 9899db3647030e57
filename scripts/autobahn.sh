#!/usr/bin/env bash
# Autobahn|Testsuite against Herald's own WebSocket code: builds the ws_echo
# example (crates/herald-server/examples/ws_echo.rs), starts it on a free
# loopback port, runs `wstest -m fuzzingclient` with cases 1.* to 10.* (12.*
# and 13.* test permessage-deflate, which Herald does not negotiate), and
# fails unless every case ends OK, NON-STRICT or INFORMATIONAL (and its close
# OK or INFORMATIONAL). The invalid-UTF-8 cases 6.4.* must end OK (or
# INFORMATIONAL, where the suite says so): NON-STRICT there means the
# server did not fail fast on a bad fragment but waited for the message's
# end.
#
# Autobahn|Testsuite needs Python 2.7: a virtualenv is made once from pyenv's
# 2.7.18 under ${XDG_CACHE_HOME:-$HOME/.cache}/herald-autobahn, with the
# pinned versions below (the last ones that still run on 2.7). Set
# HERALD_PYTHON27 to use another Python 2.7. The binary is found through
# cargo, so CARGO_TARGET_DIR is honoured; the HTML and JSON report goes to
# <target dir>/autobahn/. The whole run takes well under a minute.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'autobahn.sh: %s\n' "$*" >&2; exit 1; }

# --- Autobahn|Testsuite in a Python 2.7 virtualenv ----------------------------
# Bootstrap: virtualenv itself (Python 2.7's pyenv build has no venv module).
boot_pins=(
  virtualenv==20.15.1 distlib==0.4.4 filelock==3.2.1 platformdirs==2.0.2
  six==1.17.0 importlib_metadata==2.1.3 importlib_resources==3.3.1
  pathlib2==2.3.7.post1 contextlib2==0.6.0.post1 configparser==4.0.2
  singledispatch==3.7.0 typing==3.10.0.0 zipp==1.2.0
)
# The suite and everything it pulls in, as resolved on Python 2.7.18.
pins=(
  autobahntestsuite==25.10.1 autobahn==0.10.9 txaio==2.1.0 Twisted==19.10.0
  attrs==21.4.0 Automat==22.10.0 constantly==15.1.0 hyperlink==21.0.0
  incremental==16.10.1 idna==2.10 zope.interface==4.6.0 PyHamcrest==1.10.1
  cryptography==3.3.2 cffi==1.15.1 pycparser==2.21 pyOpenSSL==19.1.0
  service-identity==18.1.0 pyasn1==0.5.1 pyasn1-modules==0.3.0
  ipaddress==1.0.23 enum34==1.1.10 six==1.16.0 typing==3.10.0.0
  klein==17.10.0 Werkzeug==1.0.1 Jinja2==2.11.3 MarkupSafe==1.1.1
  unittest2==1.1.0 linecache2==1.0.0 traceback2==1.4.0
  ujson==2.0.3 wsaccel==0.6.6
)

python27=${HERALD_PYTHON27:-}
if [[ -z $python27 ]]; then
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}/versions/2.7.18/bin/python" /root/.pyenv/versions/2.7.18/bin/python; do
    if [[ -x $candidate ]]; then python27=$candidate; break; fi
  done
fi
if [[ -z $python27 ]] || ! "$python27" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
  die "Autobahn|Testsuite needs Python 2.7, and none was found (looked for pyenv's 2.7.18 at ${PYENV_ROOT:-$HOME/.pyenv}/versions/2.7.18; install it with 'pyenv install 2.7.18' or set HERALD_PYTHON27)"
fi

cache=${XDG_CACHE_HOME:-$HOME/.cache}/herald-autobahn
venv=$cache/venv
stamp="${boot_pins[*]} ${pins[*]}"
if [[ ! -x $venv/bin/wstest || "$(cat "$venv/.herald-pins" 2>/dev/null)" != "$stamp" ]]; then
  say "installing Autobahn|Testsuite into $venv (once; takes about two minutes)"
  rm -rf "$cache"
  mkdir -p "$cache"
  pip_quiet=(--disable-pip-version-check --no-cache-dir -q)
  PYTHONWARNINGS=ignore "$python27" -m pip install "${pip_quiet[@]}" --target "$cache/boot" "${boot_pins[@]}" \
    || die "could not install virtualenv for Python 2.7 (is PyPI reachable?)"
  PYTHONPATH=$cache/boot PYTHONWARNINGS=ignore "$python27" -m virtualenv -q "$venv" \
    || die "could not create a Python 2.7 virtualenv"
  PYTHONWARNINGS=ignore "$venv/bin/pip" install "${pip_quiet[@]}" "${pins[@]}" \
    || die "could not install autobahntestsuite (is PyPI reachable?)"
  printf '%s' "$stamp" >"$venv/.herald-pins"
fi

# --- the echo server -----------------------------------------------------------
# A debug build: it passes all 301 cases in about 20 s (the Python client
# sets the pace; group 9's 16 MiB messages take a few seconds), and builds
# much faster than release.
say "building the ws_echo example"
echo_bin=$(cargo build -p herald-server --example ws_echo --message-format=json-render-diagnostics \
  | "$venv/bin/python" -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "ws_echo" and msg.get("executable"):
        print(msg["executable"])
')
[[ -x $echo_bin ]] || die "cargo did not report the ws_echo binary"
# <target>/debug/examples/ws_echo -> <target>/autobahn
report_dir=$(dirname "$(dirname "$(dirname "$echo_bin")")")/autobahn
rm -rf "$report_dir"
mkdir -p "$report_dir"

echo_pid=
cleanup() { if [[ -n $echo_pid ]]; then kill "$echo_pid" 2>/dev/null || true; fi; }
trap cleanup EXIT
"$echo_bin" 127.0.0.1:0 >"$report_dir/ws_echo.log" 2>&1 &
echo_pid=$!
url=
for _ in $(seq 100); do
  url=$(grep -o 'ws://[0-9.:]*' "$report_dir/ws_echo.log" || true)
  [[ -n $url ]] && break
  kill -0 "$echo_pid" 2>/dev/null || break
  sleep 0.1
done
[[ -n $url ]] || { cat "$report_dir/ws_echo.log" >&2; die "ws_echo did not start"; }

# --- the suite -------------------------------------------------------------------
cat >"$report_dir/fuzzingclient.json" <<EOF
{
  "outdir": "$report_dir/reports",
  "servers": [{"agent": "herald-ws_echo", "url": "$url"}],
  "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "8.*", "9.*", "10.*"],
  "exclude-cases": ["12.*", "13.*"],
  "exclude-agent-cases": {}
}
EOF
say "Autobahn|Testsuite fuzzingclient, cases 1.* to 10.*, against ws_echo at $url"
started=$SECONDS
# Bounded: a hung case must not hang CI (a whole run takes about 20 s).
if ! (cd "$report_dir" && timeout 600 "$venv/bin/wstest" -m fuzzingclient -s fuzzingclient.json >wstest.log 2>&1); then
  tail -20 "$report_dir/wstest.log" >&2
  die "wstest failed or timed out (log: $report_dir/wstest.log)"
fi
elapsed=$((SECONDS - started))

"$venv/bin/python" - "$report_dir/reports/index.json" "$elapsed" <<'EOF'
import json, sys
from collections import defaultdict

report = json.load(open(sys.argv[1]))
cases = report["herald-ws_echo"]
passing = ("OK", "NON-STRICT", "INFORMATIONAL")
# 6.4.*: invalid UTF-8 split over fragments; failing fast is OK, failing at
# the message's end is NON-STRICT, which Herald must not settle for.
fail_fast = ("OK", "INFORMATIONAL")
counts = defaultdict(lambda: defaultdict(int))
failed = []
for case, result in cases.items():
    group = int(case.split(".")[0])
    behavior, close = result["behavior"], result["behaviorClose"]
    wanted = fail_fast if case.startswith("6.4.") else passing
    ok = behavior in wanted and close in ("OK", "INFORMATIONAL")
    counts[group][behavior if ok else "FAILED"] += 1
    if not ok:
        failed.append((case, behavior, close))

key = lambda case: [int(p) for p in case.split(".")]
print("group  cases     OK  NON-STRICT  INFORMATIONAL  FAILED")
for group in range(1, 11):
    c = counts.get(group)
    if not c:
        print("%5d  %5d  (no cases in the suite)" % (group, 0))
        continue
    print("%5d  %5d  %5d  %10d  %13d  %6d" % (
        group, sum(c.values()), c["OK"], c["NON-STRICT"], c["INFORMATIONAL"], c["FAILED"]))
print("%d cases in %s s" % (len(cases), sys.argv[2]))
print("autobahn: %d passed, %d failed" % (len(cases) - len(failed), len(failed)))
if failed:
    for case, behavior, close in sorted(failed, key=lambda f: key(f[0])):
        print("FAILED %s: behavior %s, close %s" % (case, behavior, close))
    print("report: %s" % sys.argv[1].replace("index.json", "index.html"))
    sys.exit(1)
EOF
