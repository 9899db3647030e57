#!/usr/bin/env python3
"""The load tool's own cost per HTTP client (--http-client own, hyper,
hyper-inline): herald-bench's RSS and CPU (utime + stime from os.wait4),
against one herald already listening on 127.0.0.1:$PORT (loopback only).

  target/release/herald serve --listen 127.0.0.1:7090 &
  REPS=2 python3 bench/http-client.py [idle-sse idle-lp fan-sse fan-lp pub]

Memory per held subscriber: max RSS of an idle run of 10,000 minus one of
1,000, over 9,000. CPU per delivery: the CPU of a long paced fan-out minus
that of a short one, over the extra deliveries (connect costs cancel).
"pub" is flat-out publishing (4 lanes, 4 WebSocket subscribers): the CPU
per publish and the publish rate the tool reaches."""
import json, os, subprocess, sys, time

T = os.environ.get("T", "target/release")
PORT = int(os.environ.get("PORT", "7090"))
KINDS = os.environ.get("KINDS", "own hyper hyper-inline").split()
REPS = int(os.environ.get("REPS", "1"))
WHICH = sys.argv[1:] or ["idle-sse", "idle-lp", "fan-sse", "fan-lp", "pub"]

def bench(args):
    cmd = [f"{T}/herald-bench", "--output", "json", "--progress-every", "0",
           "--source-base", "127.0.0.2", "--source-addrs", "8"] + args
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    if status != 0:
        print("FAILED", cmd, err.decode()[-2000:], file=sys.stderr)
        sys.exit(1)
    rep = json.loads(out.decode().strip().splitlines()[-1])
    return rep, ru.ru_maxrss, ru.ru_utime + ru.ru_stime

def url(path):
    return f"http://127.0.0.1:{PORT}{path}"

def common(transport, kind):
    sub = url("/sub/{channel}")
    return ["--transport", transport, "--sub-url", sub, "--pub-url", url("/pub/{channel}"),
            "--http-client", kind]

def check(rep):
    assert rep["connect_errors"] == 0, rep
    assert rep["lost"] == 0 and rep["duplicated"] == 0, rep

results = []
def record(name, kind, **kv):
    row = {"case": name, "client": kind, **kv}
    results.append(row)
    print(json.dumps(row), flush=True)

for rep_i in range(REPS):
    for kind in KINDS:
        for tr, label in (("sse", "idle-sse"), ("long-poll", "idle-lp")):
            if label not in WHICH:
                continue
            rss = {}
            for n in (1000, 10000):
                rep, maxrss, cpu = bench(["--scenario", "idle", "-n", str(n), "--duration", "3"]
                                         + common(tr, kind))
                check(rep)
                rss[n] = maxrss
            record(label, kind, rss_1k_kib=rss[1000], rss_10k_kib=rss[10000],
                   bytes_per_conn=round((rss[10000] - rss[1000]) * 1024 / 9000))
        for tr, label, n, rate, m_lo, m_hi in (("sse", "fan-sse", 5000, 10, 20, 120),
                                               ("long-poll", "fan-lp", 2000, 5, 10, 50)):
            if label not in WHICH:
                continue
            got = {}
            for m in (m_lo, m_hi):
                rep, maxrss, cpu = bench(["--scenario", "fanout", "-n", str(n), "-m", str(m),
                                          "--rate", str(rate), "--settle", "2"] + common(tr, kind))
                check(rep)
                got[m] = (rep, cpu)
            (r_lo, c_lo), (r_hi, c_hi) = got[m_lo], got[m_hi]
            d = r_hi["unique"] - r_lo["unique"]
            record(label, kind, n=n, rate=rate, cpu_lo=round(c_lo, 2), cpu_hi=round(c_hi, 2),
                   deliveries=d, us_per_delivery=round((c_hi - c_lo) * 1e6 / d, 2),
                   p50_us=r_hi["latency"]["p50_us"], p99_us=r_hi["latency"]["p99_us"])
        if "pub" in WHICH:
            got = {}
            for m in (5000, 25000):
                rep, maxrss, cpu = bench(["--scenario", "fanout", "-n", "4", "-m", str(m),
                                          "--transport", "ws",
                                          "--sub-url", f"ws://127.0.0.1:{PORT}/sub/{{channel}}",
                                          "--pub-url", url("/pub/{channel}"),
                                          "--http-client", kind, "--settle", "2"])
                check(rep)
                got[m] = (rep, cpu)
            d = got[25000][0]["published"] - got[5000][0]["published"]
            record("pub", kind, publishes=d,
                   us_per_publish=round((got[25000][1] - got[5000][1]) * 1e6 / d, 2),
                   publish_rate_hi=round(got[25000][0]["publish_rate"]))
json.dump(results, open(os.environ.get("OUT", "http-client.json"), "w"), indent=1)
