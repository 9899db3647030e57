#!/usr/bin/env python3
"""Holds many half-open HTTP connections to a server on loopback.

Each connection is made from one of many loopback source addresses
(127.A.B.C), sends the first part of a request head and nothing more, then
waits. The tool keeps its end open until --hold seconds have passed (it
never reconnects), watching for the server to close each connection.

Used by crates/herald/tests/flood.rs. Loopback only: the target must be a
127.0.0.0/8 address. Prints one JSON line when every connection is made or
has failed ({"event": "connected", ...}), then one when it stops
({"event": "done", ...}) with how long the server took to close each one,
counted from when the connection was made.
"""

import argparse
import errno
import json
import resource
import selectors
import socket
import sys
import time

PARTIAL = b"GET /sub/flood HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: halfopen\r\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True, help="host:port on loopback")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--source", type=int, required=True, help="second octet of the 127.X.*.* source range")
    ap.add_argument("--hold", type=float, required=True, help="seconds to hold, at most 300")
    args = ap.parse_args()
    host, port = args.target.rsplit(":", 1)
    port = int(port)
    if not host.startswith("127."):
        sys.exit("halfopen: the target must be a loopback address")
    hold = min(args.hold, 300.0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    sel = selectors.DefaultSelector()
    closed_after = []
    opened = {}  # fd -> (socket, connected_at or None)
    failed = 0
    start = time.monotonic()
    for i in range(args.count):
        src = "127.%d.%d.%d" % (args.source, 1 + (i // 200) // 250, 1 + (i // 200) % 250)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((src, 0))
        except OSError:
            s.close()
            failed += 1
            continue
        s.setblocking(False)
        rc = s.connect_ex((host, port))
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            failed += 1
            continue
        opened[s.fileno()] = [s, None]
        sel.register(s, selectors.EVENT_WRITE)

    deadline = start + hold
    pending_connect = len(opened)
    reported = False
    while time.monotonic() < deadline:
        if not reported and pending_connect == 0:
            print(json.dumps({"event": "connected", "open": len(opened), "failed": failed,
                              "secs": round(time.monotonic() - start, 2)}), flush=True)
            reported = True
        for key, mask in sel.select(timeout=0.2):
            s = key.fileobj
            entry = opened.get(s.fileno())
            if entry is None:
                continue
            if entry[1] is None:
                pending_connect -= 1
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err in (errno.ECONNRESET, errno.EPIPE):
                    # Connected, then closed by the server before we looked
                    # (a server at its open-file budget closes newcomers at
                    # once): made, and closed by the server at once.
                    entry[1] = time.monotonic()
                    closed_after.append(0.0)
                    sel.unregister(s)
                    entry.append("closed")
                    continue
                if err:
                    sel.unregister(s)
                    del opened[s.fileno()]
                    s.close()
                    failed += 1
                    continue
                try:
                    s.send(PARTIAL)
                except OSError:
                    pass
                entry[1] = time.monotonic()
                sel.modify(s, selectors.EVENT_READ)
                continue
            # Readable: the server answered (408) and closed, or just
            # closed. Either way it let go; our end stays open until the end.
            try:
                s.recv(4096)
            except OSError:
                pass
            closed_after.append(time.monotonic() - entry[1])
            sel.unregister(s)
            entry.append("closed")
    still_open = sum(1 for e in opened.values() if len(e) == 2)
    closed_after.sort()

    def pct(p):
        if not closed_after:
            return None
        return round(closed_after[min(len(closed_after) - 1, int(p * len(closed_after)))], 2)

    print(json.dumps({"event": "done", "made": len(opened), "failed": failed,
                      "closed_by_server": len(closed_after), "still_open": still_open,
                      "closed_after_p50": pct(0.5), "closed_after_p99": pct(0.99),
                      "closed_after_max": round(closed_after[-1], 2) if closed_after else None}),
          flush=True)
    for e in opened.values():
        e[0].close()


if __name__ == "__main__":
    main()
