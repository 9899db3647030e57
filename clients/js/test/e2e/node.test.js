// The client in Node 20+ (WebSocket from the `ws` package, no EventSource)
// against the real herald binary.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Herald } from "../../herald.js";
import { HeraldServer } from "../lib/server.js";
import { eventually, nextEvent } from "../lib/wait.js";

let server;
const clients = [];

before(async () => {
  server = new HeraldServer();
  await server.start();
});

after(async () => {
  for (const c of clients) c.close();
  await server?.stop();
});

// A ws WebSocket that records what the client sends and counts server pings.
function recordingWebSocket() {
  const record = { sent: [], pings: 0 };
  class Recording extends WebSocket {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (e) => String(e.data).startsWith('{"ping"') && record.pings++);
    }
    send(data) {
      record.sent.push(JSON.parse(data));
      super.send(data);
    }
  }
  return { WebSocket: Recording, record };
}

function client(url, options = {}) {
  const c = new Herald(url, { WebSocket, minReconnectDelay: 100, maxReconnectDelay: 1000, ...options });
  clients.push(c);
  return c;
}

for (const transport of ["websocket", "stream", "longpoll"]) {
  test(`${transport}: backend pushes arrive, client publishes on chat:`, async () => {
    const c = client(server.url, { transports: [transport] });
    const got = [];
    const channel = `e2e-${transport}`;
    const sub = c.subscribe(channel, (m) => got.push(m));
    await nextEvent(sub, "subscribed");
    assert.equal(c.transport, transport);
    const a = await server.publish(channel, { n: 1 });
    const b = await server.publish(channel, { n: 2 });
    await eventually(() => got.length === 2, { what: `2 messages over ${transport}` });
    assert.deepEqual(got, [
      { channel, id: a.id, data: { n: 1 } },
      { channel, id: b.id, data: { n: 2 } },
    ]);
    const chat = [];
    const lobby = c.subscribe(`chat:${transport}`, (m) => chat.push(m));
    await nextEvent(lobby, "subscribed");
    const reply = await c.publish(`chat:${transport}`, { text: "hi" });
    await eventually(() => chat.length === 1, { what: "own chat message" });
    assert.equal(chat[0].id, reply.id);
    await assert.rejects(c.publish(channel, "nope"), { code: "forbidden" });
    const history = await c.history(channel, { since: "earliest" });
    assert.deepEqual(history.messages.map((m) => m.id), [a.id, b.id]);
    c.close();
  });
}

test("sse in Node (no EventSource) runs as the NDJSON stream", async () => {
  const c = client(server.url, { transports: ["sse"] });
  await nextEvent(c, "connect");
  assert.equal(c.transport, "stream");
  c.close();
});

test("resubscribing from a retained id replays what was missed, once", async () => {
  const channel = "e2e-resume";
  const first = await server.publish(channel, 1);
  await server.publish(channel, 2);
  await server.publish(channel, 3);
  const c = client(server.url, { transports: ["websocket"] });
  const got = [];
  const sub = c.subscribe(channel, (m) => got.push(m.data), { since: first.id });
  const reply = await nextEvent(sub, "subscribed");
  assert.equal(reply.replayed, 2);
  assert.equal(reply.gap, false);
  await eventually(() => got.length === 2);
  assert.deepEqual(got, [2, 3]);
  c.close();
});

for (const transport of ["websocket", "stream", "longpoll"]) {
  test(`${transport}: latest_on_subscribe opens with the newest message (latest: true), once`, async () => {
    const own = new HeraldServer({ config: '[[namespace]]\nprefix = "state:"\nlatest_on_subscribe = true\n' });
    await own.start();
    try {
      const channel = `state:${transport}`;
      await own.publish(channel, { v: 1 });
      const newest = await own.publish(channel, { v: 2 });
      const c = client(own.url, { transports: [transport] });
      const got = [];
      const sub = c.subscribe(channel, (m) => got.push(m));
      const reply = await nextEvent(sub, "subscribed");
      assert.equal(reply.position, newest.id);
      await eventually(() => got.length === 1, { what: "the latest message" });
      assert.deepEqual(got[0], { channel, id: newest.id, data: { v: 2 }, latest: true });
      assert.equal(got[0].latest, true);
      const live = await own.publish(channel, { v: 3 });
      await eventually(() => got.length === 2, { what: "the live message" });
      assert.deepEqual(got[1], { channel, id: live.id, data: { v: 3 } });
      // Reconnected, the subscription resumes from its last id: what it
      // missed comes unmarked, and the latest one is not sent again.
      c.close();
      const missed = await own.publish(channel, { v: 4 });
      c.connect();
      await eventually(() => got.length === 3, { what: "the message missed while away" });
      assert.deepEqual(got[2], { channel, id: missed.id, data: { v: 4 } });
      assert.equal(got.filter((m) => m.latest === true).length, 1);
      // Without the option (this server's other channels): nothing first.
      const plainChannel = `plain-${transport}`;
      await own.publish(plainChannel, "old");
      const plain = [];
      const other = c.subscribe(plainChannel, (m) => plain.push(m));
      await nextEvent(other, "subscribed");
      const fresh = await own.publish(plainChannel, "new");
      await eventually(() => plain.length === 1, { what: "the live message without the option" });
      assert.deepEqual(plain, [{ channel: plainChannel, id: fresh.id, data: "new" }]);
      c.close();
    } finally {
      await own.stop();
    }
  });
}

test("a channel deleted by the backend ends the subscription (unsubscribed, reconnect:false)", async () => {
  const c = client(server.url, { transports: ["websocket"] });
  const sub = c.subscribe("e2e-deleted", () => {});
  await nextEvent(sub, "subscribed");
  const ended = nextEvent(sub, "unsubscribed");
  const res = await fetch(`${server.url}/pub/e2e-deleted`, { method: "DELETE" });
  assert.ok(res.ok, `DELETE /pub/e2e-deleted answered ${res.status}`);
  const info = await ended;
  assert.equal(info.code, 4002);
  assert.equal(info.reconnect, false);
  assert.equal(sub.state, "unsubscribed");
  assert.equal(c.subscriptions.has("e2e-deleted"), false);
  assert.equal(c.state, "connected", "only the subscription ends, not the session");
  c.close();
});

test("answers pings: a 1 s heartbeat server keeps the session past two intervals", async () => {
  const fast = new HeraldServer({ config: 'heartbeat = "1s"\n' });
  await fast.start();
  const { WebSocket: Recording, record } = recordingWebSocket();
  const pongs = () => record.sent.filter((f) => f.pong && f.id === undefined).length;
  try {
    const c = client(fast.url, { transports: ["websocket"], WebSocket: Recording });
    const info = await nextEvent(c, "connect");
    assert.equal(info.ping, 1);
    let disconnects = 0;
    c.on("disconnect", () => disconnects++);
    await eventually(() => pongs() >= 4, { timeout: 8000, what: "four pongs" });
    assert.ok(record.pings >= 4);
    assert.equal(disconnects, 0, "the server closed a session that answered its pings");
    assert.equal(c.clientId, info.client);
    c.close();
  } finally {
    await fast.stop();
  }
});

test("server killed and restarted on the same port: reconnect, resume, gap reported", async () => {
  const own = new HeraldServer();
  await own.start();
  try {
    const { WebSocket: Recording, record } = recordingWebSocket();
    const c = client(own.url, { transports: ["websocket", "stream", "longpoll"], WebSocket: Recording });
    const got = [];
    const sub = c.subscribe("e2e-restart", (m) => got.push(m));
    await nextEvent(sub, "subscribed");
    const before = await own.publish("e2e-restart", "before");
    await eventually(() => got.length === 1);
    const gap = nextEvent(sub, "gap", { timeout: 15000 });
    const lost = nextEvent(c, "disconnect", { timeout: 5000 });
    await own.stop("SIGKILL");
    await lost;
    await eventually(() => c.state === "connecting", { what: "connecting after the kill" });
    await own.restart();
    await nextEvent(sub, "subscribed", { timeout: 15000 });
    const resubscribe = record.sent.filter((f) => f.subscribe?.channel === "e2e-restart").at(-1);
    assert.equal(resubscribe.subscribe.since, before.id, "resumes from the last received id");
    assert.equal((await gap).channel, "e2e-restart");
    assert.equal(c.transport, "websocket");
    await own.publish("e2e-restart", "after");
    await eventually(() => got.length === 2, { what: "the message published after the restart" });
    assert.deepEqual(got.map((m) => m.data), ["before", "after"]);
    c.close();
  } finally {
    await own.stop();
  }
});

for (const transport of ["websocket", "stream", "longpoll"]) {
  test(`${transport}: graceful shutdown sends disconnect with reconnect:true, and the client comes back`, async () => {
    const own = new HeraldServer();
    await own.start();
    try {
      const c = client(own.url, { transports: [transport] });
      await nextEvent(c, "connect");
      const info = nextEvent(c, "disconnect", { timeout: 10000 });
      await own.stop("SIGTERM");
      const d = await info;
      assert.equal(d.code, 1001);
      assert.equal(d.reconnect, true);
      await own.restart();
      await nextEvent(c, "connect", { timeout: 15000 });
      assert.equal(c.transport, transport);
      c.close();
    } finally {
      await own.stop();
    }
  });
}
