// presence, history's limit, rpc, ready() and token refresh ahead of expiry,
// against the fake server answering with the real server's frames
// (test/fixtures/session.json, checked against the binary by
// crates/herald/tests/client_fixtures.rs).

import { test, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Herald } from "../../herald.js";
import { FakeServer } from "./fake-server.js";
import { replyBody } from "./fixture.js";
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

for (const transport of ["websocket", "stream", "longpoll"]) {
  test(`${transport}: presence and rpc resolve the server's replies`, async () => {
    const c = client({ transports: [transport] });
    const online = await c.presence("room:a");
    assert.deepEqual(online, replyBody("presence", { channel: "room:a" }));
    assert.deepEqual(online.users.map((u) => u.user), ["ann"]);
    assert.deepEqual(await c.rpc("sum", { a: 1 }), { method: "sum", params: { a: 1 }, user: null });
    await assert.rejects(c.rpc("fail"), { code: "rpc_error" });
    assert.deepEqual(fake.commands.at(-1), { id: fake.commands.at(-1).id, rpc: { method: "fail" } });
  });
}

test("history's limit: the oldest after since, the newest without", async () => {
  const c = client({ transports: ["websocket"] });
  const sent = [];
  for (let n = 0; n < 5; n++) sent.push(fake.publish("news", n).id);
  const first = await c.history("news", { since: "earliest", limit: 2 });
  assert.deepEqual(first.messages.map((m) => m.id), sent.slice(0, 2));
  const newest = await c.history("news", { limit: 2 });
  assert.deepEqual(newest.messages.map((m) => m.id), sent.slice(3));
  assert.equal((await c.history("news")).messages.length, 5);
  await assert.rejects(c.history("news", { limit: 0 }), TypeError);
  const sentHistory = fake.commands.filter((f) => f.history).map((f) => f.history);
  assert.ok(sentHistory.every((h) => !("limit" in h)), "limit is the client's, never sent");
});

test("ready() resolves once connected, at once after, and rejects on close", async () => {
  const c = client({ transports: ["websocket"], token: "t" });
  const info = await c.ready({ timeout: 3000 });
  assert.equal(info.transport, "websocket");
  assert.equal(info.user, "ann");
  assert.equal(info.client, c.clientId);
  assert.equal(await c.ready(), info);
  c.close();
  await assert.rejects(c.ready(), { code: "closed" });
  const d = client({ transports: ["websocket"], autoConnect: false });
  await assert.rejects(d.ready(), { code: "closed" });
  d.connect();
  const waiting = d.ready();
  d.close();
  await assert.rejects(waiting, { code: "closed" });
});

for (const transport of ["websocket", "stream", "longpoll"]) {
  test(`${transport}: a token is refreshed before it expires, on the same session, three times`, async () => {
    fake.expiresIn = 2;
    let n = 0;
    const c = client({ transports: [transport], token: async () => `token-${++n}` });
    const refreshes = [];
    c.on("refresh", (r) => refreshes.push(r));
    const disconnects = [];
    c.on("disconnect", (d) => disconnects.push(d));
    await c.ready();
    const connectedExp = c.expiresAt;
    assert.ok(connectedExp > Date.now() / 1000, "expiresAt from the connect reply");
    await eventually(() => refreshes.length >= 3, { timeout: 9000, what: "three refreshes" });
    assert.deepEqual(disconnects, []);
    assert.deepEqual(fake.opened, [transport]);
    const sentRefresh = fake.commands.filter((f) => f.refresh).map((f) => f.refresh.token);
    assert.deepEqual(sentRefresh.slice(0, 3), ["token-2", "token-3", "token-4"]);
    assert.ok(c.expiresAt >= connectedExp);
  });
}

test("a refused refresh is reported and retried while the token has time left", async () => {
  fake.expiresIn = 3;
  fake.refuseRefresh = 1;
  const c = client({ transports: ["websocket"], token: async () => "t", minReconnectDelay: 100 });
  const failed = nextEvent(c, "refresherror", { timeout: 5000 });
  await c.ready();
  assert.equal((await failed).code, "forbidden");
  await nextEvent(c, "refresh", { timeout: 5000 });
  assert.deepEqual(fake.opened, ["websocket"]);
});

test("refresh() sends a given token now; without a token function it needs one", async () => {
  const c = client({ transports: ["longpoll"], token: "fixed" });
  await c.ready();
  await assert.rejects(c.refresh(), { code: "token" });
  fake.expiresIn = 60;
  const r = await c.refresh("granted-more");
  assert.equal(typeof r.expires_at, "number");
  assert.equal(c.expiresAt, r.expires_at);
  assert.equal(fake.tokens.at(-1), "granted-more");
  c.close();
  await assert.rejects(c.refresh("x"), { code: "not_connected" });
});
