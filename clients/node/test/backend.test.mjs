// herald-push against the real herald binary: every method, its answers and
// its refusals, tokens and tickets used by real subscribers, and a real
// webhook delivered by the server and checked with the library.
// Run: node --test clients/node/test/ (HERALD_BIN names the binary).

import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { after, before, describe, test } from "node:test";

import * as esm from "../index.mjs";
import { Herald, HeraldError, WebhookError, SIGNATURE_HEADER, parseWebhook, signToken, verifyWebhook } from "../index.mjs";
import { API_KEY, HMAC_SECRET, WEBHOOK_SECRET, eventually, get, outsideAddress, startReceiver, startServer, stream } from "./harness.mjs";

const claims = (token) => JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString("utf8"));

async function refused(status, code, promise) {
  await assert.rejects(promise, (e) => {
    assert.ok(e instanceof HeraldError, `not a HeraldError: ${e}`);
    assert.deepEqual([e.status, e.code], [status, code], e.message);
    assert.ok(e.serverMessage);
    return true;
  });
}

describe("herald-push against the real server", () => {
  let receiver, server, herald;
  before(async () => {
    receiver = await startReceiver();
    server = await startServer(receiver.url);
    herald = new Herald(server.url, { apiKey: API_KEY, timeout: 5000 });
  });
  after(async () => {
    await server?.stop();
    await receiver?.stop();
  });

  test("require and import give the same library", () => {
    const cjs = createRequire(import.meta.url)("../index.cjs");
    assert.deepEqual(Object.keys(cjs).sort(), Object.keys(esm).sort());
    assert.equal(cjs.Herald, esm.Herald);
  });

  // --- publishing -----------------------------------------------------------

  test("publish reaches a subscriber, channel info and history", async () => {
    const s = await stream(server, "js-news");
    let first;
    try {
      // The subscription may land a moment after the stream's first byte:
      // publish until one subscriber got it (that is the first line it sees).
      first = await eventually(async () => {
        const a = await herald.publish("js-news", { text: "hello" });
        assert.equal(a.subscribers, 1);
        return a;
      }, "a subscriber");
      assert.deepEqual(await s.next(), { channel: "js-news", id: first.id, data: { text: "hello" } });
    } finally {
      s.close();
    }
    const info = await herald.channel("js-news");
    assert.equal(info.last_id, first.id);
    assert.ok(info.messages >= 1);
    const history = await herald.history("js-news");
    assert.deepEqual(history.messages.at(-1).data, { text: "hello" });
    assert.equal(history.gap, false);
    const second = await herald.publish("js-news", [1, 2]);
    const later = await herald.history("js-news", { since: first.id });
    assert.deepEqual(later.messages.map((m) => m.id), [second.id]);
  });

  test("publishMany", async () => {
    const results = await herald.publishMany(["js-a", "js-b"], { n: 1 });
    assert.deepEqual(results.map((r) => r.channel), ["js-a", "js-b"]);
    assert.notEqual(results[0].id, results[1].id);
    assert.deepEqual((await herald.history("js-b")).messages.at(-1).data, { n: 1 });
  });

  test("publishMany checks every name before publishing", async () => {
    await refused(400, "invalid_channel", herald.publishMany(["js-ok", "bad name"], 1));
    assert.equal((await herald.channel("js-ok")).messages, 0);
  });

  test("idempotency keys", async () => {
    const first = await herald.publish("js-idem", "x", { idempotencyKey: "order-1" });
    const again = await herald.publish("js-idem", "x", { idempotencyKey: "order-1" });
    assert.equal(again.id, first.id);
    assert.equal(again.duplicate, true);
    assert.equal("duplicate" in first, false);
    const raw = await herald.publishRaw("js-idem", "y", { idempotencyKey: "order-2" });
    const rawAgain = await herald.publishRaw("js-idem", "y", { idempotencyKey: "order-2" });
    assert.deepEqual([rawAgain.id, rawAgain.duplicate], [raw.id, true]);
    await refused(400, "invalid_request", herald.publish("js-idem", 1, { idempotencyKey: "" }));
  });

  test("publishRaw: text, bytes and JSON", async () => {
    await herald.publishRaw("js-raw", "plain text");
    await herald.publishRaw("js-raw", new Uint8Array([0xff, 0x00, 0x62]));
    await herald.publishRaw("js-raw", '{"a": 1}', { contentType: "application/json" });
    const m = (await herald.history("js-raw")).messages;
    assert.equal(m[0].data, "plain text");
    assert.equal(m[1].encoding, "base64");
    assert.deepEqual([...Buffer.from(m[1].data, "base64")], [0xff, 0x00, 0x62]);
    assert.deepEqual(m[2].data, { a: 1 });
    await refused(400, "invalid_json", herald.publishRaw("js-raw", "{", { contentType: "application/json" }));
  });

  test("deleteChannel", async () => {
    await herald.publish("js-gone", 1);
    const d = await herald.deleteChannel("js-gone");
    assert.deepEqual([d.channel, d.deleted], ["js-gone", true]);
    assert.equal((await herald.channel("js-gone")).messages, 0);
  });

  // --- refusals -------------------------------------------------------------

  test("a bad channel is 400", async () => {
    await refused(400, "invalid_channel", herald.publish("bad channel", "x"));
    await refused(400, "invalid_channel", herald.publishRaw("bad channel", "x"));
    await refused(400, "invalid_channel", herald.channel("a/b"));
    await refused(400, "invalid_channel", herald.presence("a b"));
    await refused(400, "invalid_channel", herald.history("a b"));
    await refused(400, "invalid_since", herald.history("js-news", { since: "nope" }));
  });

  test("a bad or missing key is 401", async () => {
    for (const apiKey of ["wrong-key", undefined]) {
      const other = new Herald(server.url, { apiKey });
      await refused(401, "unauthorized", other.publish("js-x", 1));
      await refused(401, "unauthorized", other.createToken({ user: "alice" }));
      await refused(401, "unauthorized", other.presence("room:x"));
    }
  });

  test("a payload over max_payload is 413", async () => {
    const big = "x".repeat(70_000); // the default max_payload is 65,536 bytes
    await refused(413, "payload_too_large", herald.publishRaw("js-big", big));
    await refused(413, "payload_too_large", herald.publish("js-big", big));
  });

  test("a keyless server answers loopback only (403 from elsewhere)", async (t) => {
    const outside = outsideAddress();
    if (!outside) return t.skip("this machine has no non-loopback address");
    const keyless = await startServer(null, { apiKey: null, listen: "0.0.0.0:0" });
    try {
      const local = new Herald(`http://127.0.0.1:${keyless.port}`);
      assert.equal((await local.publish("js-keyless", 1)).channel, "js-keyless");
      const remote = new Herald(`http://${outside}:${keyless.port}`);
      await refused(403, "forbidden", remote.publish("js-keyless", 1));
      await refused(403, "forbidden", remote.createToken({ user: "alice" }));
    } finally {
      await keyless.stop();
    }
  });

  test("an error body that is not Herald's", async () => {
    const other = new Herald(receiver.base, { apiKey: API_KEY });
    await assert.rejects(other.channel("x"), (e) => {
      assert.ok(e instanceof HeraldError);
      assert.deepEqual([e.status, e.code], [501, null]);
      assert.match(e.serverMessage, /not implemented/);
      return true;
    });
  });

  // --- users ----------------------------------------------------------------

  test("user queue, mailbox and invalid users", async () => {
    const queued = await herald.publishToUser("js-dora", { note: 1 });
    assert.deepEqual([queued.channel, queued.queued, queued.ack], ["user:js-dora", true, false]);
    const acked = await herald.publishToUser("js-dora", { note: 2 }, { ack: true });
    assert.equal(acked.ack, true);
    const box = await herald.mailbox("js-dora");
    assert.deepEqual([box.pending, box.oldest_id, box.gap], [1, acked.id, false]);
    const s = await stream(server, "user:js-dora", signToken(HMAC_SECRET, { user: "js-dora" }));
    try {
      assert.deepEqual([(await s.next()).data, (await s.next()).data], [{ note: 1 }, { note: 2 }]);
    } finally {
      s.close();
    }
    await refused(400, "invalid_user", herald.publishToUser("bad user", 1));
    await refused(400, "invalid_user", herald.mailbox("bad user"));
    await refused(400, "invalid_user", herald.disconnectUser("bad user"));
  });

  test("disconnectUser closes the user's connection with 4006", async () => {
    const { token } = await herald.createToken({ user: "js-erin" });
    const s = await stream(server, "user:js-erin", token);
    try {
      await eventually(async () => {
        const a = await herald.publishToUser("js-erin", "ping");
        assert.deepEqual([a.subscribers, a.queued], [1, false]);
      }, "erin's stream follows");
      assert.equal((await s.next()).data, "ping");
      assert.deepEqual(await herald.disconnectUser("js-erin"), { user: "js-erin", disconnected: true });
      const last = await s.next();
      assert.equal(last.disconnect?.code, 4006, JSON.stringify(last));
    } finally {
      s.close();
    }
  });

  test("presence", async () => {
    const s = await stream(server, "room:js-1", signToken(HMAC_SECRET, { user: "js-bob", info: { name: "Bob" } }));
    try {
      const p = await eventually(async () => {
        const p = await herald.presence("room:js-1");
        assert.deepEqual(p.users, [{ user: "js-bob", connections: 1, info: { name: "Bob" } }]);
        return p;
      }, "bob in presence");
      assert.deepEqual([p.enabled, p.connections, p.anonymous], [true, 1, 0]);
    } finally {
      s.close();
    }
    await eventually(async () => {
      const p = await herald.presence("room:js-1");
      assert.deepEqual([p.users, p.connections], [[], 0]);
    }, "bob gone from presence");
    assert.equal((await herald.presence("js-news")).enabled, false);
  });

  // --- tokens and tickets ---------------------------------------------------

  test("createToken grants a private channel", async () => {
    const answer = await herald.createToken({ user: "js-carol", channels: ["private:js-*"], ttl: 60, info: { n: 1 } });
    const c = claims(answer.token);
    assert.deepEqual([c.sub, c.channels, c.info, c.exp], ["js-carol", ["private:js-*"], { n: 1 }, answer.expires_at]);
    const auth = { Authorization: `Bearer ${answer.token}` };
    assert.equal((await get(server, "/sub/private:js-x?since=earliest&timeout=0", auth)).status, 200);
    const other = await get(server, "/sub/private:other?since=earliest&timeout=0", auth);
    assert.deepEqual([other.status, other.body.error.code], [403, "forbidden"]);
    await refused(400, "invalid_request", herald.createToken({ user: "js-carol", ttl: 1e6 }));
    await refused(400, "invalid_user", herald.createToken({ user: "bad user" }));
  });

  test("signToken locally", async () => {
    const url = "/sub/private:js-y?since=earliest&timeout=0";
    const good = signToken(HMAC_SECRET, { user: "js-dan", channels: ["private:js-*"], ttl: 60 });
    assert.equal((await get(server, url, { Authorization: `Bearer ${good}` })).status, 200);
    const wrong = signToken("another-secret-of-at-least-32-bytes!", { user: "js-dan", channels: ["private:js-*"] });
    const w = await get(server, url, { Authorization: `Bearer ${wrong}` });
    assert.deepEqual([w.status, w.body.error.code], [401, "invalid_token"]);
    const old = signToken(HMAC_SECRET, { user: "js-dan", channels: ["private:js-*"], ttl: 60, now: 1_000_000_000 });
    const o = await get(server, url, { Authorization: `Bearer ${old}` });
    assert.deepEqual([o.status, o.body.error.code], [401, "token_expired"]);
    assert.throws(() => signToken("short", { user: "js-dan" }), RangeError);
  });

  test("a ticket is single-use", async () => {
    const ticket = await herald.createTicket(signToken(HMAC_SECRET, { user: "js-fay", channels: ["private:js-*"] }));
    assert.ok(ticket.expires_at > 0);
    const url = `/sub/private:js-t?since=earliest&timeout=0&ticket=${encodeURIComponent(ticket.ticket)}`;
    assert.equal((await get(server, url)).status, 200);
    const again = await get(server, url);
    assert.deepEqual([again.status, again.body.error.code], [401, "ticket_used"]);
    await refused(401, "invalid_token", herald.createTicket("not-a-token"));
    await refused(401, "invalid_token", herald.createTicket(ticket.ticket));
  });

  // --- webhooks -------------------------------------------------------------

  test("a webhook from the server verifies", async () => {
    const s = await stream(server, "room:js-hook", signToken(HMAC_SECRET, { user: "js-gus" }));
    let request;
    try {
      request = await receiver.until((e) => e.event === "channel.occupied" && e.channel === "room:js-hook");
    } finally {
      s.close();
    }
    const { headers, body } = request;
    const signature = headers[SIGNATURE_HEADER];
    assert.match(signature, /^sha256=[0-9a-f]{64}$/);
    assert.equal(verifyWebhook(WEBHOOK_SECRET, body, signature), true);
    assert.equal(verifyWebhook(Buffer.from(WEBHOOK_SECRET), body.toString("utf8"), signature), true);
    const batch = parseWebhook(WEBHOOK_SECRET, body, signature);
    assert.ok(batch.events.some((e) => e.event === "channel.occupied"));
    // Anything else is refused.
    assert.equal(verifyWebhook("another secret", body, signature), false);
    assert.equal(verifyWebhook(WEBHOOK_SECRET, Buffer.concat([body, Buffer.from(" ")]), signature), false);
    assert.equal(verifyWebhook(WEBHOOK_SECRET, body, undefined), false);
    assert.equal(verifyWebhook(WEBHOOK_SECRET, body, signature.slice("sha256=".length)), false);
    assert.equal(verifyWebhook(WEBHOOK_SECRET, body, signature.toUpperCase()), false);
    assert.throws(() => parseWebhook("another secret", body, signature), WebhookError);
    assert.throws(() => parseWebhook(WEBHOOK_SECRET, body, signature, { nowMs: batch.time_ms + 600_000 }), WebhookError);
    assert.deepEqual(parseWebhook(WEBHOOK_SECRET, body, signature, { toleranceMs: null }), batch);
  });
});
