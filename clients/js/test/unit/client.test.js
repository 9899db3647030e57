// The client's behaviour against a fake in-process server speaking the
// session frames: transports, fallback, resume, dedupe, gaps, disconnects,
// liveness, bounded queues.

import { test, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Herald } from "../../herald.js";
import { FakeServer } from "./fake-server.js";
import { eventually, nextEvent } from "../lib/wait.js";

let fake;
let clients;

beforeEach(async () => {
  fake = new FakeServer();
  await fake.start();
  clients = [];
});

afterEach(async () => {
  for (const c of clients) c.close();
  await fake.stop();
});

// Fast timings so failures and reconnects happen within a test's budget.
function client(options = {}) {
  const c = new Herald(fake.url, {
    WebSocket,
    minReconnectDelay: 50,
    maxReconnectDelay: 400,
    handshakeTimeout: 1000,
    pingSlack: 500,
    timeout: 3000,
    ...options,
  });
  clients.push(c);
  return c;
}

function collect(c, channel, options) {
  const got = [];
  const sub = c.subscribe(channel, (m) => got.push(m), options);
  return { sub, got };
}

for (const transport of ["websocket", "sse", "stream", "longpoll"]) {
  test(`${transport}: subscribe, receive pushes, publish`, async () => {
    const c = client({ transports: [transport] });
    const transports = [];
    c.on("transport", (t) => transports.push(t));
    const { sub, got } = collect(c, "news");
    const subscribed = await nextEvent(sub, "subscribed");
    assert.equal(subscribed.channel, "news");
    assert.equal(c.state, "connected");
    // sse without EventSource (Node) runs over the NDJSON stream.
    const expected = transport === "sse" ? "stream" : transport;
    assert.equal(c.transport, expected);
    assert.deepEqual(transports, [expected]);
    const a = fake.publish("news", { n: 1 });
    const b = fake.publish("news", { n: 2 });
    await eventually(() => got.length === 2, { what: "two pushes" });
    assert.deepEqual(got, [a, b]);
    const reply = await c.publish("chat:lobby", { text: "hi" });
    assert.equal(reply.channel, "chat:lobby");
    assert.match(reply.id, /^\d+-\d+$/);
    await assert.rejects(c.publish("news", 1), { code: "forbidden" });
    const history = await c.history("news");
    assert.equal(history.messages.length, 2);
  });
}

test("connect sends the token", async () => {
  const c = client({ transports: ["websocket"], token: () => Promise.resolve("secret") });
  await nextEvent(c, "connect");
  assert.deepEqual(fake.commands[0].connect, { token: "secret" });
});

test("falls back to the next transport when one is refused", async () => {
  fake.refuse.add("websocket");
  const c = client();
  const transport = await nextEvent(c, "transport");
  assert.equal(transport, "stream");
  assert.equal(c.state, "connected");
});

test("falls back when a stream is buffered (no first frame in time)", async () => {
  fake.refuse.add("websocket");
  fake.buffer.add("stream");
  const c = client({ handshakeTimeout: 300 });
  const started = Date.now();
  assert.equal(await nextEvent(c, "transport"), "longpoll");
  assert.ok(Date.now() - started >= 300);
});

test("commands wait for the connection, in a bounded queue", async () => {
  fake.refuse.add("websocket");
  const c = client({ transports: ["websocket"], maxQueue: 2, timeout: 5000 });
  const p1 = c.publish("chat:a", 1);
  const p2 = c.publish("chat:a", 2);
  await assert.rejects(c.publish("chat:a", 3), { code: "queue_full" });
  fake.refuse.delete("websocket");
  const [r1, r2] = await Promise.all([p1, p2]);
  assert.ok(r1.id && r2.id);
});

test("a command without a reply times out", async () => {
  fake.refuse.add("websocket");
  const c = client({ transports: ["websocket"] });
  await assert.rejects(c.publish("chat:a", 1, { timeout: 100 }), { code: "timeout" });
  assert.equal(c._queue.length, 0);
});

test("reconnects after a drop and resumes from the last received id, once each", async () => {
  const c = client({ transports: ["websocket"] });
  const { sub, got } = collect(c, "news");
  await nextEvent(sub, "subscribed");
  fake.publish("news", "a");
  const b = fake.publish("news", "b");
  await eventually(() => got.length === 2);
  fake.refuse.add("websocket");
  const states = [];
  c.on("state", (s) => states.push(s));
  fake.dropAll();
  await eventually(() => c.state === "connecting", { what: "connecting" });
  fake.publish("news", "c"); // published while the client is away
  fake.publish("news", "d");
  fake.replayOverlap = true; // the server repeats "b": it must not reach the callback twice
  fake.refuse.delete("websocket");
  await eventually(() => got.length === 4, { what: "resumed messages" });
  assert.deepEqual(got.map((m) => m.data), ["a", "b", "c", "d"]);
  const subs = fake.subscribesFor("news");
  assert.equal(subs.at(-1).since, b.id);
  assert.deepEqual(states.slice(0, 1), ["connecting"]);
  assert.equal(states.at(-1), "connected");
  fake.publish("news", "e");
  await eventually(() => got.length === 5);
  assert.equal(got.length, 5);
});

test("resumes from the subscribe position when nothing was received, earliest when it was null", async () => {
  fake.publish("old", "before");
  const c = client({ transports: ["websocket"] });
  const a = c.subscribe("old", () => {});
  const b = c.subscribe("empty", () => {});
  await Promise.all([nextEvent(a, "subscribed"), nextEvent(b, "subscribed")]);
  assert.equal(a.position, fake.history.get("old")[0].id);
  assert.equal(b.position, null);
  fake.dropAll();
  await eventually(() => fake.subscribesFor("empty").length === 2 && fake.subscribesFor("old").length === 2);
  assert.equal(fake.subscribesFor("old")[1].since, a.position);
  assert.equal(fake.subscribesFor("empty")[1].since, "earliest");
});

test("the first subscribe sends the caller's since", async () => {
  const first = fake.publish("news", 1);
  fake.publish("news", 2);
  const c = client({ transports: ["websocket"] });
  const { sub, got } = collect(c, "news", { since: first.id });
  const reply = await nextEvent(sub, "subscribed");
  assert.equal(reply.replayed, 1);
  await eventually(() => got.length === 1);
  assert.equal(got[0].data, 2);
  assert.equal(fake.subscribesFor("news")[0].since, first.id);
});

test("gaps are reported, once before the next message", async () => {
  fake.forceGap = true;
  const c = client({ transports: ["websocket"] });
  const { sub, got } = collect(c, "news", { since: "1-1" });
  const gaps = [];
  sub.on("gap", (g) => gaps.push(g));
  const reply = await nextEvent(sub, "subscribed");
  assert.equal(reply.gap, true);
  fake.broadcast({ channel: "news", gap: true }); // same gap again: not repeated
  fake.publish("news", "x");
  await eventually(() => got.length === 1);
  fake.broadcast({ channel: "news", gap: true });
  await eventually(() => gaps.length === 2);
  assert.deepEqual(
    gaps.map((g) => g.source),
    ["subscribe", "push"],
  );
});

test("a disconnect with reconnect:false stops the client", async () => {
  const c = client({ transports: ["websocket"] });
  await nextEvent(c, "connect");
  const errored = nextEvent(c, "error");
  const disconnected = nextEvent(c, "state", { accept: (s) => s === "disconnected" });
  fake.broadcast({ disconnect: { code: 4006, reason: "disconnected by the server", reconnect: false } });
  const [error] = [await errored, await disconnected];
  assert.equal(error.code, "disconnected");
  assert.equal(error.details.code, 4006);
  const opened = fake.opened.length;
  await assert.rejects(c.publish("chat:a", 1), { code: "closed" });
  // Stays stopped: no new session appears within several backoff periods.
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(fake.opened.length, opened);
  assert.equal(c.state, "disconnected");
});

test("a disconnect with reconnect:true reconnects on the same transport", async () => {
  const c = client({ transports: ["websocket", "stream"] });
  await nextEvent(c, "connect");
  const info = nextEvent(c, "disconnect");
  fake.broadcast({ disconnect: { code: 1001, reason: "server shutting down", reconnect: true } });
  assert.equal((await info).code, 1001);
  await nextEvent(c, "connect");
  assert.equal(c.transport, "websocket");
});

test("a draining server's delay_ms is how long the client waits before it reconnects", async () => {
  // The backoff alone would come back within 400 ms here.
  const c = client({ transports: ["websocket"] });
  await nextEvent(c, "connect");
  const info = nextEvent(c, "disconnect");
  const told = Date.now();
  fake.broadcast({ disconnect: { code: 1001, reason: "server shutting down", reconnect: true, delay_ms: 900 } });
  assert.equal((await info).delay, 900);
  await nextEvent(c, "connect", { timeout: 3000 });
  const waited = Date.now() - told;
  assert.ok(waited >= 850, `reconnected after ${waited} ms, before the 900 ms the server asked for`);
});

test("answers pings with pong, and treats silence as a dead connection", async () => {
  fake.ping = 0.2;
  const c = client({ transports: ["websocket"], pingSlack: 200 });
  await nextEvent(c, "connect");
  await eventually(() => fake.pongs >= 2, { what: "pongs" });
  fake.silent = true;
  const lost = await nextEvent(c, "disconnect", { timeout: 3000 });
  assert.match(lost.reason, /nothing received/);
  fake.silent = false;
  await nextEvent(c, "connect");
});

test("longpoll answers pings too", async () => {
  fake.ping = 0.2;
  const c = client({ transports: ["longpoll"] });
  await nextEvent(c, "connect");
  await eventually(() => fake.pongs >= 2, { what: "pongs over POST" });
});

test("unsubscribe stops delivery and tells the server", async () => {
  const c = client({ transports: ["websocket"] });
  const { sub, got } = collect(c, "news");
  await nextEvent(sub, "subscribed");
  sub.unsubscribe();
  await eventually(() => fake.commands.some((f) => f.unsubscribe?.channel === "news"));
  fake.publish("news", 1);
  const { sub: otherSub, got: other } = collect(c, "other");
  await nextEvent(otherSub, "subscribed");
  fake.publish("other", 2);
  await eventually(() => other.length === 1);
  assert.equal(got.length, 0);
  assert.equal(sub.state, "unsubscribed");
  // The channel can be followed again.
  const again = c.subscribe("news", () => {});
  await nextEvent(again, "subscribed");
});

test("a refused subscription emits error and is dropped", async () => {
  const c = client({ transports: ["websocket"] });
  const sub = c.subscribe("bad channel", () => {});
  const error = await nextEvent(sub, "error");
  assert.equal(error.code, "invalid_channel");
  assert.equal(sub.state, "failed");
  assert.equal(c.subscriptions.size, 0);
  assert.throws(() => (c.subscribe("x", () => {}), c.subscribe("x", () => {})), { code: "already_subscribed" });
});

test("an unsubscribed push with reconnect:true resubscribes from the cursor", async () => {
  const c = client({ transports: ["websocket"] });
  const { sub, got } = collect(c, "news");
  await nextEvent(sub, "subscribed");
  const m = fake.publish("news", 1);
  await eventually(() => got.length === 1);
  for (const s of fake.sessions.values()) s.subs.delete("news");
  fake.broadcast({ channel: "news", unsubscribed: { code: 4001, reason: "slow", reconnect: true } });
  const info = await nextEvent(sub, "unsubscribed");
  assert.equal(info.reconnect, true);
  await nextEvent(sub, "subscribed");
  assert.equal(fake.subscribesFor("news").at(-1).since, m.id);
});

test("an unsubscribed push with reconnect:false ends the subscription", async () => {
  const c = client({ transports: ["websocket"] });
  const sub = c.subscribe("news", () => {});
  await nextEvent(sub, "subscribed");
  fake.broadcast({ channel: "news", unsubscribed: { code: 4002, reason: "channel deleted", reconnect: false } });
  const info = await nextEvent(sub, "unsubscribed");
  assert.equal(info.code, 4002);
  assert.equal(sub.state, "unsubscribed");
  assert.equal(c.subscriptions.has("news"), false);
});

test("a publish in flight when the connection drops is rejected, not repeated", async () => {
  const c = client({ transports: ["websocket"] });
  await nextEvent(c, "connect");
  // Swallow the next command so its reply never comes, then drop.
  for (const s of fake.sessions.values()) s.command = () => {};
  const p = c.publish("chat:a", 1);
  await eventually(() => c._pending.size === 1);
  fake.dropAll();
  await assert.rejects(p, { code: "connection_lost" });
});

test("close() stops, and connect() resumes the subscriptions", async () => {
  const c = client({ transports: ["stream"] });
  const { sub, got } = collect(c, "news");
  await nextEvent(sub, "subscribed");
  const m = fake.publish("news", 1);
  await eventually(() => got.length === 1);
  c.close();
  assert.equal(c.state, "disconnected");
  assert.equal(c.transport, null);
  await assert.rejects(c.publish("chat:a", 1), { code: "closed" });
  await eventually(() => fake.sessions.size === 0, { what: "server saw the stream close" });
  c.connect();
  await nextEvent(sub, "subscribed");
  assert.equal(fake.subscribesFor("news").at(-1).since, m.id);
});

test("after a round of failures it backs off, then connects when the server returns", async () => {
  for (const t of ["websocket", "stream", "longpoll"]) fake.refuse.add(t);
  const c = client({ minReconnectDelay: 100, maxReconnectDelay: 200 });
  await eventually(() => c._round >= 2, { what: "two failed rounds" });
  assert.equal(c.state, "connecting");
  fake.refuse.clear();
  await nextEvent(c, "connect", { timeout: 3000 });
  assert.equal(c.transport, "websocket");
});

test("a listener that subscribes on connect does not double-subscribe", async () => {
  const c = client({ transports: ["websocket"] });
  c.subscribe("a", () => {});
  let b;
  c.once("connect", () => (b = c.subscribe("b", () => {})));
  await eventually(() => b?.state === "subscribed", { what: "b subscribed" });
  assert.equal(c.subscriptions.get("a").state, "subscribed");
  assert.equal(fake.subscribesFor("a").length, 1);
  assert.equal(fake.subscribesFor("b").length, 1);
});

test("close() rejects a publish awaiting its reply with closed", async () => {
  const c = client({ transports: ["websocket"] });
  await nextEvent(c, "connect");
  for (const s of fake.sessions.values()) s.command = () => {};
  const p = c.publish("chat:a", 1);
  c.close();
  await assert.rejects(p, { code: "closed" });
});

test("after a gap with nothing replayed it resumes from earliest, not the stale since", async () => {
  fake.forceGap = true;
  const c = client({ transports: ["websocket"] });
  const sub = c.subscribe("news", () => {}, { since: "1-1" });
  const reply = await nextEvent(sub, "subscribed");
  assert.equal(reply.position, "1-1");
  fake.forceGap = false;
  fake.dropAll();
  await nextEvent(sub, "subscribed");
  assert.deepEqual(
    fake.subscribesFor("news").map((s) => s.since),
    ["1-1", "earliest"],
  );
});

test("connected over a fallback, it moves back up when a better transport answers a probe", async () => {
  fake.refuse.add("websocket");
  const c = client({ upgradeAfter: 200 });
  const { sub, got } = collect(c, "news");
  await nextEvent(sub, "subscribed");
  assert.equal(c.transport, "stream");
  const a = fake.publish("news", "a");
  await eventually(() => got.length === 1);
  await eventually(() => c._conn?.upgradeTimer, { what: "probe scheduled" });
  fake.refuse.delete("websocket");
  await nextEvent(c, "transport", { timeout: 3000 });
  assert.equal(c.transport, "websocket");
  await eventually(() => sub.state === "subscribed");
  assert.equal(fake.subscribesFor("news").at(-1).since, a.id);
  fake.publish("news", "b");
  await eventually(() => got.length === 2);
  assert.deepEqual(got.map((m) => m.data), ["a", "b"]);
});

test("probes back off while the better transport keeps failing", async () => {
  fake.refuse.add("websocket");
  const c = client({ upgradeAfter: 100 });
  await nextEvent(c, "connect");
  await eventually(() => c._conn?.upgradeDelay >= 400, { what: "probe delay doubled twice" });
  assert.equal(c.transport, "stream");
  assert.ok(c._conn.upgradeDelay <= 1600);
});

test("close() from a disconnect listener stays closed", async () => {
  const c = client({ transports: ["websocket"] });
  await nextEvent(c, "connect");
  c.once("disconnect", () => c.close());
  fake.dropAll();
  await eventually(() => c.state === "disconnected", { what: "disconnected" });
  assert.equal(c._reconnectTimer, null);
});

test("other channel pushes are passed on as subscription events", async () => {
  const c = client({ transports: ["websocket"] });
  const sub = c.subscribe("room", () => {});
  await nextEvent(sub, "subscribed");
  const joined = nextEvent(sub, "join");
  fake.broadcast({ channel: "room", join: { client: "abc", user: "u1" } });
  const [info, frame] = await joined;
  assert.deepEqual(info, { client: "abc", user: "u1" });
  assert.equal(frame.channel, "room");
});
