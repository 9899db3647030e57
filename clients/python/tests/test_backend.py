"""herald_push against the real herald binary: every method, its answers and
its refusals, tokens and tickets used by real subscribers, and a real
webhook delivered by the server and checked with the library.

Run: ``PYTHONPATH=clients/python/src python3 -m unittest discover -s clients/python/tests``
(HERALD_BIN names the binary; see harness.py).
"""

from __future__ import annotations

import base64
import json
import unittest
import urllib.parse
from typing import Any, Dict, cast

from harness import (
    API_KEY,
    HMAC_SECRET,
    WEBHOOK_SECRET,
    Receiver,
    Server,
    Stream,
    eventually,
    outside_address,
)

from herald_push import (
    SIGNATURE_HEADER,
    Herald,
    HeraldError,
    WebhookError,
    parse_webhook,
    sign_token,
    verify_webhook,
)


def claims(token: str) -> Dict[str, Any]:
    part = token.split(".")[1]
    return cast(Dict[str, Any], json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


class BackendTest(unittest.TestCase):
    receiver: Receiver
    server: Server
    herald: Herald

    @classmethod
    def setUpClass(cls) -> None:
        cls.receiver = Receiver()
        cls.server = Server(cls.receiver.url)
        cls.herald = Herald(cls.server.url, API_KEY, timeout=5)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()
        cls.receiver.stop()

    def refused(self, status: int, code: str, call: Any, *args: Any, **kwargs: Any) -> HeraldError:
        with self.assertRaises(HeraldError) as caught:
            call(*args, **kwargs)
        error = caught.exception
        self.assertEqual((error.status, error.code), (status, code), str(error))
        self.assertTrue(error.message)
        return error

    # --- publishing -------------------------------------------------------

    def test_publish_reaches_a_subscriber_and_history(self) -> None:
        stream = Stream(self.server, "py-news")
        try:
            first = eventually(
                lambda: self._published_to_one("py-news", {"text": "hello"}), "a subscriber"
            )
            self.assertEqual(stream.next(), {"channel": "py-news", "id": first["id"], "data": {"text": "hello"}})
        finally:
            stream.close()
        info = self.herald.channel("py-news")
        self.assertEqual(info["last_id"], first["id"])
        self.assertGreaterEqual(info["messages"], 1)
        history = self.herald.history("py-news")
        self.assertEqual(history["messages"][-1]["data"], {"text": "hello"})
        self.assertFalse(history["gap"])
        second = self.herald.publish("py-news", [1, 2])
        after = self.herald.history("py-news", since=first["id"])
        self.assertEqual([m["id"] for m in after["messages"]], [second["id"]])

    def _published_to_one(self, channel: str, data: Any) -> Any:
        # The stream's subscription may land a moment after its first
        # byte; publish until one subscriber got it (each try is a message,
        # so the subscriber's first line is the one that counted).
        answer = self.herald.publish(channel, data)
        assert answer["subscribers"] == 1, answer
        return answer

    def test_publish_many(self) -> None:
        results = self.herald.publish_many(["py-a", "py-b"], {"n": 1})
        self.assertEqual([r["channel"] for r in results], ["py-a", "py-b"])
        self.assertNotEqual(results[0]["id"], results[1]["id"])
        self.assertEqual(self.herald.history("py-b")["messages"][-1]["data"], {"n": 1})

    def test_publish_many_checks_every_name_first(self) -> None:
        self.refused(400, "invalid_channel", self.herald.publish_many, ["py-ok", "bad name"], 1)
        self.assertEqual(self.herald.channel("py-ok")["messages"], 0)

    def test_idempotency_key(self) -> None:
        first = self.herald.publish("py-idem", "x", idempotency_key="order-1")
        again = self.herald.publish("py-idem", "x", idempotency_key="order-1")
        self.assertEqual(again["id"], first["id"])
        self.assertIs(again.get("duplicate"), True)
        self.assertNotIn("duplicate", first)
        raw = self.herald.publish_raw("py-idem", "y", idempotency_key="order-2")
        raw_again = self.herald.publish_raw("py-idem", "y", idempotency_key="order-2")
        self.assertEqual((raw_again["id"], raw_again.get("duplicate")), (raw["id"], True))
        self.refused(400, "invalid_request", self.herald.publish, "py-idem", 1, idempotency_key="")

    def test_publish_raw_text_bytes_and_json(self) -> None:
        self.herald.publish_raw("py-raw", "plain text")
        self.herald.publish_raw("py-raw", b"\xff\x00binary")
        self.herald.publish_raw("py-raw", '{"a": 1}', content_type="application/json")
        messages = self.herald.history("py-raw")["messages"]
        self.assertEqual(messages[0]["data"], "plain text")
        self.assertEqual(messages[1].get("encoding"), "base64")
        self.assertEqual(base64.b64decode(messages[1]["data"]), b"\xff\x00binary")
        self.assertEqual(messages[2]["data"], {"a": 1})
        self.refused(400, "invalid_json", self.herald.publish_raw, "py-raw", "{", content_type="application/json")

    def test_delete_channel(self) -> None:
        self.herald.publish("py-gone", 1)
        deleted = self.herald.delete_channel("py-gone")
        self.assertEqual((deleted["channel"], deleted["deleted"]), ("py-gone", True))
        self.assertEqual(self.herald.channel("py-gone")["messages"], 0)

    # --- refusals ---------------------------------------------------------

    def test_bad_channel_is_400(self) -> None:
        for call in (self.herald.publish, self.herald.publish_raw):
            self.refused(400, "invalid_channel", call, "bad channel", "x")
        self.refused(400, "invalid_channel", self.herald.channel, "a/b")
        self.refused(400, "invalid_channel", self.herald.presence, "a b")
        self.refused(400, "invalid_channel", self.herald.history, "a b")
        self.refused(400, "invalid_since", self.herald.history, "py-news", since="nope")

    def test_bad_or_missing_key_is_401(self) -> None:
        for key in ("wrong-key", None):
            other = Herald(self.server.url, key)
            self.refused(401, "unauthorized", other.publish, "py-x", 1)
            self.refused(401, "unauthorized", other.create_token, "alice")
            self.refused(401, "unauthorized", other.presence, "room:x")

    def test_payload_too_large_is_413(self) -> None:
        big = "x" * 70_000  # over the default max_payload, 65,536 bytes
        self.refused(413, "payload_too_large", self.herald.publish_raw, "py-big", big)
        self.refused(413, "payload_too_large", self.herald.publish, "py-big", big)

    def test_keyless_server_answers_loopback_only(self) -> None:
        # No api_key: a direct loopback request is let in, one from another
        # address is 403 forbidden (security.md, "API keys").
        outside = outside_address()
        if outside is None:
            self.skipTest("this machine has no non-loopback address")
        keyless = Server(api_key=None, listen="0.0.0.0:0")
        try:
            local = Herald(f"http://127.0.0.1:{keyless.port}")
            self.assertEqual(local.publish("py-keyless", 1)["channel"], "py-keyless")
            remote = Herald(f"http://{outside}:{keyless.port}")
            self.refused(403, "forbidden", remote.publish, "py-keyless", 1)
            self.refused(403, "forbidden", remote.create_token, "alice")
        finally:
            keyless.stop()

    def test_not_herald_error_body(self) -> None:
        # A server that is not Herald (here: the webhook receiver, which
        # answers 501 to GET with an HTML page) still raises HeraldError.
        other = Herald(self.receiver.url.rsplit("/", 2)[0], API_KEY)
        error = self.refused(501, None, other.channel, "x")  # type: ignore[arg-type]
        self.assertIn("501", str(error))

    # --- users ------------------------------------------------------------

    def test_user_queue_mailbox_and_invalid_user(self) -> None:
        queued = self.herald.publish_to_user("py-dora", {"note": 1})
        self.assertEqual((queued["channel"], queued["queued"], queued["ack"]), ("user:py-dora", True, False))
        acked = self.herald.publish_to_user("py-dora", {"note": 2}, ack=True)
        self.assertTrue(acked["ack"])
        box = self.herald.mailbox("py-dora")
        self.assertEqual((box["pending"], box["oldest_id"], box["gap"]), (1, acked["id"], False))
        token = sign_token(HMAC_SECRET, "py-dora")
        stream = Stream(self.server, "user:py-dora", token)
        try:
            got = [stream.next(), stream.next()]
        finally:
            stream.close()
        self.assertEqual([m["data"] for m in got], [{"note": 1}, {"note": 2}])
        self.refused(400, "invalid_user", self.herald.publish_to_user, "bad user", 1)
        self.refused(400, "invalid_user", self.herald.mailbox, "bad user")
        self.refused(400, "invalid_user", self.herald.disconnect_user, "bad user")

    def test_disconnect_user_closes_its_connection(self) -> None:
        token = self.herald.create_token("py-erin")["token"]
        stream = Stream(self.server, "user:py-erin", token)
        try:
            eventually(lambda: self._delivered_to("py-erin"), "erin's stream follows")
            self.assertEqual(stream.next()["data"], "ping")
            answer = self.herald.disconnect_user("py-erin")
            self.assertEqual(answer, {"user": "py-erin", "disconnected": True})
            last = stream.next()
            self.assertEqual(last["disconnect"]["code"], 4006, last)
        finally:
            stream.close()

    def _delivered_to(self, user: str) -> None:
        answer = self.herald.publish_to_user(user, "ping")
        assert answer["subscribers"] == 1 and not answer["queued"], answer

    def test_presence(self) -> None:
        token = sign_token(HMAC_SECRET, "py-bob", info={"name": "Bob"})
        stream = Stream(self.server, "room:py-1", token)
        try:
            def present() -> Any:
                p = self.herald.presence("room:py-1")
                assert p["users"] == [{"user": "py-bob", "connections": 1, "info": {"name": "Bob"}}], p
                return p

            p = eventually(present, "bob in presence")
            self.assertEqual((p["enabled"], p["connections"], p["anonymous"]), (True, 1, 0))
        finally:
            stream.close()
        eventually(lambda: self._absent("room:py-1"), "bob gone from presence")
        self.assertFalse(self.herald.presence("py-news")["enabled"])

    def _absent(self, channel: str) -> None:
        p = self.herald.presence(channel)
        assert p["users"] == [] and p["connections"] == 0, p

    # --- tokens and tickets -----------------------------------------------

    def test_create_token_grants_a_private_channel(self) -> None:
        answer = self.herald.create_token("py-carol", channels=["private:py-*"], ttl=60, info={"n": 1})
        got = claims(answer["token"])
        self.assertEqual((got["sub"], got["channels"], got["info"]), ("py-carol", ["private:py-*"], {"n": 1}))
        self.assertEqual(got["exp"], answer["expires_at"])
        auth = {"Authorization": f"Bearer {answer['token']}"}
        self.assertEqual(self.server.get("/sub/private:py-x?since=earliest&timeout=0", auth)[0], 200)
        status, body = self.server.get("/sub/private:other?since=earliest&timeout=0", auth)
        self.assertEqual((status, body["error"]["code"]), (403, "forbidden"))
        self.refused(400, "invalid_request", self.herald.create_token, "py-carol", ttl=10**6)
        self.refused(400, "invalid_user", self.herald.create_token, "bad user")

    def test_sign_token_locally(self) -> None:
        token = sign_token(HMAC_SECRET, "py-dan", channels=["private:py-*"], ttl=60)
        self.assertEqual(self.server.get("/sub/private:py-y?since=earliest&timeout=0", {"Authorization": f"Bearer {token}"})[0], 200)
        wrong = sign_token("another-secret-of-at-least-32-bytes!", "py-dan", channels=["private:py-*"])
        status, body = self.server.get("/sub/private:py-y?since=earliest&timeout=0", {"Authorization": f"Bearer {wrong}"})
        self.assertEqual((status, body["error"]["code"]), (401, "invalid_token"))
        old = sign_token(HMAC_SECRET, "py-dan", channels=["private:py-*"], ttl=60, now=1_000_000_000)
        status, body = self.server.get("/sub/private:py-y?since=earliest&timeout=0", {"Authorization": f"Bearer {old}"})
        self.assertEqual((status, body["error"]["code"]), (401, "token_expired"))
        with self.assertRaises(ValueError):
            sign_token("short", "py-dan")

    def test_ticket_is_single_use(self) -> None:
        token = sign_token(HMAC_SECRET, "py-fay", channels=["private:py-*"])
        ticket = self.herald.create_ticket(token)
        self.assertGreater(ticket["expires_at"], 0)
        url = "/sub/private:py-t?since=earliest&timeout=0&ticket=" + urllib.parse.quote(ticket["ticket"])
        self.assertEqual(self.server.get(url)[0], 200)
        status, body = self.server.get(url)
        self.assertEqual((status, body["error"]["code"]), (401, "ticket_used"))
        self.refused(401, "invalid_token", self.herald.create_ticket, "not-a-token")
        self.refused(401, "invalid_token", self.herald.create_ticket, ticket["ticket"])

    # --- webhooks ---------------------------------------------------------

    def test_webhook_from_the_server_verifies(self) -> None:
        token = sign_token(HMAC_SECRET, "py-gus")
        stream = Stream(self.server, "room:py-hook", token)
        try:
            headers, body = self.receiver.until(
                lambda e: e["event"] == "channel.occupied" and e.get("channel") == "room:py-hook"
            )
        finally:
            stream.close()
        signature = headers[SIGNATURE_HEADER.lower()]
        self.assertRegex(signature, r"^sha256=[0-9a-f]{64}$")
        self.assertTrue(verify_webhook(WEBHOOK_SECRET, body, signature))
        self.assertTrue(verify_webhook(WEBHOOK_SECRET.encode(), body, signature))
        batch = parse_webhook(WEBHOOK_SECRET, body, signature)
        self.assertTrue(any(e["event"] == "channel.occupied" for e in batch["events"]))
        # Anything else is refused: another secret, a changed body, no or a
        # mangled header, a stale request.
        self.assertFalse(verify_webhook("another secret", body, signature))
        self.assertFalse(verify_webhook(WEBHOOK_SECRET, body + b" ", signature))
        self.assertFalse(verify_webhook(WEBHOOK_SECRET, body, None))
        self.assertFalse(verify_webhook(WEBHOOK_SECRET, body, signature[len("sha256="):]))
        self.assertFalse(verify_webhook(WEBHOOK_SECRET, body, signature.upper()))
        with self.assertRaises(WebhookError):
            parse_webhook("another secret", body, signature)
        with self.assertRaises(WebhookError):
            parse_webhook(WEBHOOK_SECRET, body, signature, now_ms=batch["time_ms"] + 10 * 60 * 1000)
        self.assertEqual(parse_webhook(WEBHOOK_SECRET, body, signature, tolerance_ms=None), batch)


if __name__ == "__main__":
    unittest.main()
