# Shell helpers shared by the bench scripts (sourced, not run).

log() { printf '== %s\n' "$*" >&2; }

apt_install() {
    log "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "$@" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$@" >/dev/null; }
}
