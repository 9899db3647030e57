# Shell helpers shared by the bench scripts (sourced, not run).

# Where things are: the repository, its target directory and the release
# binaries the scripts run (each can be set from the environment).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
HERALD_BIN=${HERALD_BIN:-$TARGET/release/herald}
BENCH_BIN=${BENCH_BIN:-$TARGET/release/herald-bench}

log() { printf '== %s\n' "$*" >&2; }

apt_install() {
    log "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "$@" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$@" >/dev/null; }
}
