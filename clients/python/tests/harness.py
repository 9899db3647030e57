"""The real herald binary on a free port, and a webhook receiver, for the tests.

``HERALD_BIN`` names the binary (default ``target/debug/herald`` under the
repository root). The server is started with ``listen = "127.0.0.1:0"``
and its address read from the ``herald listening on http://ADDR`` line of
its stdout, waiting at most ``START_WAIT`` seconds.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import queue
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

ROOT = Path(__file__).resolve().parents[3]
START_WAIT = 10.0
WAIT = 5.0

API_KEY = "backend-libs-test-key"
HMAC_SECRET = "backend-libs-hmac-secret-0123456789abcdef"
WEBHOOK_SECRET = "backend-libs-webhook-secret"

T = TypeVar("T")


def herald_bin() -> str:
    given = os.environ.get("HERALD_BIN")
    path = Path(given) if given else ROOT / "target" / "debug" / "herald"
    if not path.is_absolute():
        path = ROOT / path
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"no herald binary at {path} (cargo build -p herald, or set HERALD_BIN)")
    return str(path)


class Server:
    """A herald process with the test configuration; ``stop()`` ends it."""

    def __init__(
        self,
        webhook_url: Optional[str] = None,
        *,
        api_key: Optional[str] = API_KEY,
        listen: str = "127.0.0.1:0",
    ) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="herald-py-")
        config = Path(self._dir.name) / "herald.toml"
        text = f"""listen = "{listen}"
presence_grace = "1s"
drain_delay = "0s"
drain_window = "0s"
shutdown_grace = "1s"
"""
        if api_key is not None:
            text += f'api_key = "{api_key}"\n'
        text += f"""
[auth]
hmac_secret = "{HMAC_SECRET}"

[[namespace]]
prefix = "room:"
presence = true

[[namespace]]
prefix = "private:"
private = true
"""
        if webhook_url is not None:
            text += f"""
[webhooks]
url = "{webhook_url}"
secret = "{WEBHOOK_SECRET}"
timeout = "1s"
max_attempts = 3
"""
        config.write_text(text)
        self._log = open(Path(self._dir.name) / "stderr.log", "wb")
        self.proc = subprocess.Popen(
            [herald_bin(), "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, "HERALD_LOG": "warn"},
        )
        lines: "queue.Queue[Optional[str]]" = queue.Queue()

        def read() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                lines.put(raw.decode("utf-8", "replace").strip())
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + START_WAIT
        self.url = ""
        while not self.url:
            left = deadline - time.monotonic()
            try:
                line = lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                line = None
            if line is None:
                self.proc.kill()
                self.proc.wait(timeout=5)
                said = self.stderr()
                self.stop()
                raise RuntimeError(f"herald did not say where it listens within {START_WAIT}s: {said}")
            if line.startswith("herald listening on "):
                self.url = line[len("herald listening on ") :]
        host_port = self.url.split("//", 1)[1]
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)

    def stderr(self) -> str:
        self._log.flush()
        return (Path(self._dir.name) / "stderr.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()
        self._dir.cleanup()

    def get(self, path: str, headers: Optional[Dict[str, str]] = None) -> Tuple[int, Any]:
        """A plain client request (no library), answering (status, JSON)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=WAIT)
        try:
            conn.request("GET", path, headers=headers or {})
            answer = conn.getresponse()
            return answer.status, json.loads(answer.read() or b"null")
        finally:
            conn.close()


def outside_address() -> Optional[str]:
    """This machine's address on a non-loopback interface, if it has one
    (a UDP socket's connect only picks the route: nothing is sent)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 9))
        address = str(probe.getsockname()[0])
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address


class Stream:
    """A subscriber on ``GET /sub/{channel}`` as NDJSON: one envelope a line."""

    def __init__(self, server: Server, channel: str, token: Optional[str] = None) -> None:
        self.conn = http.client.HTTPConnection(server.host, server.port, timeout=WAIT)
        headers = {"Accept": "application/x-ndjson"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.conn.request("GET", f"/sub/{channel}", headers=headers)
        self.answer = self.conn.getresponse()
        if self.answer.status != 200:
            raise AssertionError(f"subscribe {channel}: {self.answer.status} {self.answer.read()!r}")

    def next(self) -> Any:
        """The next non-empty line as JSON (empty lines are heartbeats);
        at most WAIT seconds (the socket's timeout)."""
        while True:
            line = self.answer.readline()
            if not line:
                raise AssertionError("the stream ended")
            if line.strip():
                return json.loads(line)

    def close(self) -> None:
        self.conn.close()


class Receiver:
    """A webhook receiver on a free loopback port: keeps every request's
    headers and raw body, answers 204."""

    def __init__(self) -> None:
        self.requests: "queue.Queue[Tuple[Dict[str, str], bytes]]" = queue.Queue()
        received = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.put(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/herald/events"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def until(self, wanted: Callable[[Dict[str, Any]], bool]) -> Tuple[Dict[str, str], bytes]:
        """The first request (headers, raw body) holding an event for which
        ``wanted`` is true, within WAIT seconds."""
        deadline = time.monotonic() + WAIT
        seen: List[str] = []
        while True:
            left = deadline - time.monotonic()
            try:
                headers, body = self.requests.get(timeout=max(left, 0.01))
            except queue.Empty:
                raise AssertionError(f"no such webhook within {WAIT}s; saw {seen}") from None
            events = json.loads(body)["events"]
            seen.extend(e["event"] for e in events)
            if any(wanted(e) for e in events):
                return headers, body

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def eventually(check: Callable[[], T], what: str, wait: float = WAIT) -> T:
    """``check()``'s value once it stops raising AssertionError, polling for
    at most ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return check()
        except AssertionError as last:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {wait}s: {last}") from None
            time.sleep(0.05)
