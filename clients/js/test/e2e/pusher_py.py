#!/usr/bin/env python3
"""The official Python server library (PyPI `pusher`, pinned in
scripts/pusher-py.sh) against the real herald binary, with real pusher-js
clients (test/lib/pusher-listener.js, driven over stdio) on the other end:

- trigger (one and several channels, socket_id exclusion) and trigger_batch
  reach pusher-js;
- channels_info (filter_by_prefix, subscription_count, user_count),
  channel_info and users_info answer what the clients subscribed;
- authenticate's signatures (private, presence with custom_data, encrypted
  with encryption_master_key_base64, whose trigger the library encrypts
  and pusher-js decrypts) are accepted; a signature with the wrong secret
  is refused with pusher:error 4009;
- a wrong secret on the API is 401, an unknown app id 404, an oversize
  event refused, and a bystander client is undisturbed by all of it;
- terminate_user_connections, skipped while the server answers 404.

Run by scripts/pusher-py.sh (which makes the virtualenv); by hand:
  HERALD_BIN=target/debug/herald python3 clients/js/test/e2e/pusher_py.py
Ends with one line "pusher-py: N passed, N failed".
"""

import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import pusher
from pusher.errors import PusherBadAuth, PusherBadStatus
from pusher.http import POST, Request

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT_DIR = os.path.normpath(os.path.join(HERE, "..", ".."))
HERALD_BIN = os.path.join(CLIENT_DIR, os.environ.get("HERALD_BIN", "../../target/debug/herald"))
LISTENER = os.path.join(CLIENT_DIR, "test", "lib", "pusher-listener.js")

# The library takes only numeric app ids.
APP_ID, KEY, SECRET = "4242", "py-key", "secret-of-py-app"
MASTER_KEY = base64.b64encode(os.urandom(32)).decode()
CONFIG = f"""[[pusher.apps]]
id = "{APP_ID}"
key = "{KEY}"
secret = "{SECRET}"
client_events = true
"""
WAIT = 5.0  # seconds: the bound of every wait below


class Herald:
    """The binary on a port the OS picks; its output is kept for failures."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="herald-pusher-py-")
        config = os.path.join(self.dir, "herald.toml")
        with open(config, "w") as f:
            f.write(CONFIG)
        self.output = []
        self.port = None
        found = threading.Event()
        self.proc = subprocess.Popen(
            [HERALD_BIN, "serve", "--listen", "127.0.0.1:0", "--config", config],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1"},
            text=True,
        )

        def read():
            for line in self.proc.stdout:
                self.output.append(line)
                if self.port is None and "herald listening on http://" in line:
                    self.port = int(line.rsplit(":", 1)[1].strip().split("/")[0])
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(10):
            self.stop()
            raise RuntimeError("herald did not report listening within 10 s:\n" + "".join(self.output))

    def stop(self):
        self.proc.kill()
        self.proc.wait(10)


class Listener:
    """pusher-js clients in one Node process; every report is kept in order."""

    def __init__(self, port, authorizer):
        self.authorizer = authorizer  # (client, socket_id, channel) -> auth dict
        self.reports = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            ["node", LISTENER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "HERALD_PORT": str(port), "PUSHER_KEY": KEY},
            text=True,
            bufsize=1,
        )
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            report = json.loads(line)
            if report["type"] == "auth":
                try:
                    auth = self.authorizer(report["client"], report["socket_id"], report["channel"])
                    self.send(cmd="auth_reply", id=report["id"], auth=auth)
                except Exception as error:  # the "app" says no
                    self.send(cmd="auth_reply", id=report["id"], error=str(error))
            elif report["type"] == "user_auth":
                # The app's user authentication endpoint: the library signs.
                user = USERS[report["client"]]
                auth = backend.authenticate_user(report["socket_id"], {"id": user})
                self.send(cmd="auth_reply", id=report["id"], auth=auth)
            with self.cond:
                self.reports.append(report)
                self.cond.notify_all()

    def send(self, **command):
        with self.lock:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()

    def wait(self, match, what, timeout=WAIT):
        """The first report for which `match` is true, waiting at most `timeout`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for report in self.reports:
                    if match(report):
                        return report
                left = deadline - time.monotonic()
                if left <= 0:
                    recent = json.dumps(self.reports[-10:], indent=1)
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last reports:\n{recent}")
                self.cond.wait(left)

    def events(self, client, channel, event):
        with self.cond:
            return [
                r["data"]
                for r in self.reports
                if r["type"] == "event" and r["client"] == client and r["channel"] == channel and r["event"] == event
            ]

    def connect(self, client):
        """Connects `client`; answers its socket id."""
        self.send(cmd="connect", client=client)
        report = self.wait(
            lambda r: r["type"] == "state" and r["client"] == client and r["current"] == "connected",
            f"{client} connected",
        )
        return report["socket_id"]

    def subscribe(self, client, channel):
        self.send(cmd="subscribe", client=client, channel=channel)
        self.wait(
            lambda r: r.get("client") == client
            and r.get("channel") == channel
            and r.get("event") == "pusher:subscription_succeeded",
            f"{client} subscribed to {channel}",
        )

    def received(self, client, channel, event, count=1):
        """Waits until `client` has `count` events `event` on `channel`; answers their data."""
        deadline = time.monotonic() + WAIT
        while True:
            got = self.events(client, channel, event)
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{client} has {len(got)} of {count} {event} on {channel}: {got}")
            with self.cond:
                self.cond.wait(0.05)

    def error_codes(self, client):
        with self.cond:
            return [(r["data"] or {}).get("code") for r in self.reports if r["type"] == "error" and r["client"] == client]

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def library(secret=SECRET, app_id=APP_ID):
    return pusher.Pusher(
        app_id=app_id,
        key=KEY,
        secret=secret,
        ssl=False,
        host="127.0.0.1",
        port=herald.port,
        encryption_master_key_base64=MASTER_KEY,
    )


# Presence identities by client name, and clients whose auth is forged.
MEMBERS = {}
# Signed-in users (pusher:signin) by client name.
USERS = {}
FORGED = set()


def authorize(client, socket_id, channel):
    """The app's auth endpoint: the Python library's `authenticate`."""
    signer = library(secret="not-the-secret") if client in FORGED else backend
    member = MEMBERS.get(client) if channel.startswith("presence-") else None
    auth = signer.authenticate(channel=channel, socket_id=socket_id, custom_data=member)
    if isinstance(auth.get("shared_secret"), bytes):  # base64 as bytes in this library
        auth["shared_secret"] = auth["shared_secret"].decode()
    return auth


herald = None
backend = None
listener = None


def setUpModule():
    global herald, backend, listener
    herald = Herald()
    backend = library()
    listener = Listener(herald.port, authorize)


def tearDownModule():
    if listener:
        listener.close()
    if herald:
        herald.stop()


class Bystander:
    """A client on its own channel that must keep receiving, on the same socket."""

    def __init__(self, name):
        self.name = name
        self.socket_id = listener.connect(name)
        self.channel = f"calm-{name}"
        listener.subscribe(name, self.channel)
        self.n = 0

    def check(self):
        self.n += 1
        backend.trigger(self.channel, "tick", {"n": self.n})
        got = listener.received(self.name, self.channel, "tick", self.n)
        assert got[-1] == {"n": self.n}, got
        with listener.cond:
            states = [r["current"] for r in listener.reports if r["type"] == "state" and r["client"] == self.name]
        # One connection all along (pusher-js reports its first "connecting"
        # before the listener can bind).
        assert states == ["connected"], f"the bystander's connection changed: {states}"


class Triggers(unittest.TestCase):
    def test_trigger_reaches_pusher_js(self):
        sid = listener.connect("t1")
        listener.subscribe("t1", "py-news")
        listener.subscribe("t1", "py-sport")
        self.assertEqual(backend.trigger("py-news", "greet", {"n": 1}), {})
        backend.trigger(["py-news", "py-sport"], "greet", {"n": 2})
        backend.trigger("py-news", "greet", "a string")
        backend.trigger("py-news", "greet", {"n": 3}, socket_id=sid)  # not to t1
        backend.trigger("py-news", "greet", {"n": 4})
        self.assertEqual(listener.received("t1", "py-news", "greet", 4), [{"n": 1}, {"n": 2}, "a string", {"n": 4}])
        self.assertEqual(listener.received("t1", "py-sport", "greet"), [{"n": 2}])

    def test_trigger_batch(self):
        listener.connect("t2")
        listener.subscribe("t2", "py-batch")
        answer = backend.trigger_batch(
            [
                {"channel": "py-batch", "name": "one", "data": {"n": 1}},
                {"channel": "py-batch", "name": "two", "data": {"n": 2}},
                {"channel": "py-batch", "name": "one", "data": {"n": 3}},
            ]
        )
        self.assertEqual(answer, {})
        self.assertEqual(listener.received("t2", "py-batch", "one", 2), [{"n": 1}, {"n": 3}])
        self.assertEqual(listener.received("t2", "py-batch", "two"), [{"n": 2}])


class Queries(unittest.TestCase):
    def test_channels_channel_and_users(self):
        MEMBERS["q-ann"] = {"user_id": "ann", "user_info": {"name": "Ann"}}
        MEMBERS["q-bob"] = {"user_id": "bob", "user_info": {"name": "Bob"}}
        for client in ("q-ann", "q-bob"):
            listener.connect(client)
            listener.subscribe(client, "presence-py-room")
        listener.subscribe("q-ann", "py-q-one")
        listener.subscribe("q-ann", "py-q-two")
        listener.subscribe("q-bob", "py-q-two")

        listed = backend.channels_info(prefix_filter="py-q-", attributes=["subscription_count"])
        self.assertEqual(
            listed,
            {"channels": {"py-q-one": {"subscription_count": 1}, "py-q-two": {"subscription_count": 2}}},
        )
        self.assertEqual(set(backend.channels_info()["channels"]) >= {"py-q-one", "py-q-two", "presence-py-room"}, True)
        present = backend.channels_info(prefix_filter="presence-py-", attributes=["user_count"])
        self.assertEqual(present, {"channels": {"presence-py-room": {"user_count": 2}}})
        one = backend.channel_info("presence-py-room", attributes=["user_count", "subscription_count"])
        self.assertEqual(one, {"occupied": True, "user_count": 2, "subscription_count": 2})
        self.assertEqual(backend.channel_info("py-q-nobody"), {"occupied": False})
        users = backend.users_info("presence-py-room")
        self.assertEqual(sorted(u["id"] for u in users["users"]), ["ann", "bob"])

        # The members pusher-js saw are the custom_data the library signed.
        seen = listener.wait(
            lambda r: r["type"] == "members" and r["client"] == "q-bob" and r["channel"] == "presence-py-room",
            "q-bob's members",
        )
        self.assertEqual(seen["ids"], ["ann", "bob"])
        added = listener.received("q-ann", "presence-py-room", "pusher:member_added")
        self.assertEqual(added, [{"id": "bob", "info": {"name": "Bob"}}])

        listener.send(cmd="disconnect", client="q-bob")
        removed = listener.received("q-ann", "presence-py-room", "pusher:member_removed")
        self.assertEqual(removed[0]["id"], "bob")
        users = backend.users_info("presence-py-room")
        self.assertEqual([u["id"] for u in users["users"]], ["ann"])


class Authentication(unittest.TestCase):
    def test_private_signature_accepted_and_client_events(self):
        for client in ("p-a", "p-b"):
            listener.connect(client)
            listener.subscribe(client, "private-py-room")
        backend.trigger("private-py-room", "secret", {"s": 1})
        self.assertEqual(listener.received("p-b", "private-py-room", "secret"), [{"s": 1}])
        listener.send(cmd="trigger", client="p-a", channel="private-py-room", event="client-hi", data={"from": "a"})
        self.assertEqual(listener.received("p-b", "private-py-room", "client-hi"), [{"from": "a"}])

    def test_encrypted_channel(self):
        listener.connect("e-a")
        listener.subscribe("e-a", "private-encrypted-py-vault")
        backend.trigger("private-encrypted-py-vault", "sealed", {"pin": "0000"})
        self.assertEqual(listener.received("e-a", "private-encrypted-py-vault", "sealed"), [{"pin": "0000"}])

    def test_signature_with_the_wrong_secret_is_refused(self):
        calm = Bystander("f-calm")
        FORGED.add("f-bad")
        listener.connect("f-bad")
        listener.send(cmd="subscribe", client="f-bad", channel="private-py-vault")
        listener.wait(
            lambda r: r["type"] == "error" and r["client"] == "f-bad" and (r["data"] or {}).get("code") == 4009,
            "pusher:error 4009",
        )
        self.assertEqual(listener.events("f-bad", "private-py-vault", "pusher:subscription_succeeded"), [])
        self.assertEqual(backend.channel_info("private-py-vault"), {"occupied": False})
        calm.check()


class Refusals(unittest.TestCase):
    def test_wrong_secret_unknown_app_and_oversize(self):
        calm = Bystander("r-calm")
        with self.assertRaises(PusherBadAuth) as caught:
            library(secret="not-the-secret").trigger("py-news", "x", {})
        self.assertIn("signature", str(caught.exception))
        with self.assertRaises(PusherBadStatus) as caught:
            library(app_id="999").trigger("py-news", "x", {})
        self.assertTrue(str(caught.exception).startswith("404:"), str(caught.exception))
        # The library refuses over 10 KB (batch) or 30 KB (trigger) itself;
        # a request built by hand past the app's max_event_size (10 KiB) is 413.
        with self.assertRaises(ValueError):
            backend.trigger("py-news", "big", "x" * 40000)
        body = {"name": "big", "channels": ["py-news"], "data": "x" * 11000}
        with self.assertRaises(PusherBadStatus) as caught:
            backend._pusher_client.http.send_request(Request(backend._pusher_client, POST, f"/apps/{APP_ID}/events", body))
        self.assertTrue(str(caught.exception).startswith("413:"), str(caught.exception))
        calm.check()


class Terminate(unittest.TestCase):
    def test_terminate_user_connections(self):
        calm = Bystander("x-calm")
        for client in ("x-gone", "x-stays"):
            USERS[client] = client.replace("x-", "user-")
            listener.connect(client)
            listener.send(cmd="signin", client=client)
            listener.wait(lambda r, c=client: r["type"] == "signed_in" and r["client"] == c, f"{client} signed in")
        # send_to_user reaches the signed-in user only.
        backend.send_to_user("user-stays", "note", {"n": 1})
        listener.wait(
            lambda r: r["type"] == "user_event" and r["client"] == "x-stays" and r["event"] == "note",
            "the user event",
        )
        # pusher 3.3.4 posts to /users/{id}/terminate_connections, without
        # the /apps/{id} prefix of Pusher's documented endpoint; Herald
        # serves both.
        backend.terminate_user_connections("user-gone")
        listener.wait(
            lambda r: r["type"] == "state" and r["client"] == "x-gone" and r["previous"] == "connected",
            "the terminated client's connection to end",
        )
        self.assertIn(4009, listener.error_codes("x-gone"))
        self.assertNotIn(4009, listener.error_codes("x-stays"))
        calm.check()


def main():
    if not os.access(HERALD_BIN, os.X_OK):
        print(f"pusher_py.py: no herald binary at {HERALD_BIN} (set HERALD_BIN)", file=sys.stderr)
        print("pusher-py: 0 passed, 1 failed")
        return 1
    started = time.monotonic()
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = max(0, result.testsRun - failed - len(result.skipped))
    if failed and herald:
        print("herald's output:\n" + "".join(herald.output[-50:]))
    for test, reason in result.skipped:
        print(f"pusher-py: skipped {test.id()}: {reason}")
    print(f"pusher-py: took {time.monotonic() - started:.1f} s")
    if passed + failed == 0:
        failed = 1  # a run that tested nothing is not a pass
    print(f"pusher-py: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
