#!/usr/bin/env python3
"""Tiny GRIP origin behind Pushpin, for bench/compare.sh.

Pushpin forwards every new subscriber to this origin once; the origin only
says which channel to hold the connection on, then Pushpin serves the
messages published through its HTTP control API (port 5561) by itself.

  GET /sub/{channel}          -> Grip-Hold: stream + Grip-Channel: {channel}
                                 (HTTP streaming; text/event-stream when asked)
  POST /sub/{channel}         -> WebSocket-over-HTTP (route option over_http):
    with an OPEN event          answers OPEN and a `c:{"type":"subscribe",...}`
                                 control message; CLOSE is echoed; anything
                                 else gets an empty event list.

Usage: pushpin_origin.py PORT   (binds 127.0.0.1 only)
"""

import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHANNEL = re.compile(r"^/sub/([A-Za-z0-9_\-.:]+)")
WS_EVENTS = "application/websocket-events"


def parse_events(body):
    """Parse a WebSocket-over-HTTP event stream into (type, content) pairs."""
    events = []
    i = 0
    while i < len(body):
        eol = body.find(b"\r\n", i)
        if eol < 0:
            break
        head = body[i:eol].decode("ascii", "replace").split(" ")
        i = eol + 2
        content = b""
        if len(head) > 1:
            n = int(head[1], 16)
            content = body[i : i + n]
            i += n + 2
        events.append((head[0], content))
    return events


def event(kind, content=b""):
    if not content:
        return kind.encode() + b"\r\n"
    return b"%s %x\r\n%s\r\n" % (kind.encode(), len(content), content)


class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: one line per subscriber is noise
        pass

    def channel(self):
        m = CHANNEL.match(self.path)
        return m.group(1) if m else None

    def reply(self, status, headers, body=b""):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        ch = self.channel()
        if ch is None:
            self.reply(404, [("Content-Type", "text/plain")], b"not found\n")
            return
        sse = "text/event-stream" in self.headers.get("Accept", "")
        ctype = "text/event-stream" if sse else "text/plain"
        self.reply(
            200,
            [("Content-Type", ctype), ("Grip-Hold", "stream"), ("Grip-Channel", ch)],
        )

    def do_POST(self):
        ch = self.channel()
        length = int(self.headers.get("Content-Length", "0") or "0")
        body = self.rfile.read(length) if length else b""
        if ch is None or WS_EVENTS not in self.headers.get("Content-Type", ""):
            self.reply(404, [("Content-Type", "text/plain")], b"not found\n")
            return
        out = b""
        for kind, _content in parse_events(body):
            if kind == "OPEN":
                sub = json.dumps({"type": "subscribe", "channel": ch}).encode()
                out += event("OPEN") + event("TEXT", b"c:" + sub)
            elif kind == "CLOSE":
                out += event("CLOSE", _content)
        self.reply(
            200,
            [("Content-Type", WS_EVENTS), ("Sec-WebSocket-Extensions", "grip")],
            out,
        )


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096  # a connect burst must not overflow listen()


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 7998
    Server(("127.0.0.1", port), Origin).serve_forever()


if __name__ == "__main__":
    main()
