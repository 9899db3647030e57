// presence, history, rpc, ready() and token refresh with the client in Node
// (ws for WebSocket; NDJSON for "sse"; long-poll) against the real binary,
// with tokens signed with its secret and a real rpc hook endpoint.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Herald } from "../../herald.js";
import { HeraldServer } from "../lib/server.js";
import { config, mintToken, startHook } from "../lib/backend.js";
import { eventually, nextEvent } from "../lib/wait.js";

let server;
let hook;
const clients = [];

before(async () => {
  hook = await startHook();
  server = new HeraldServer({ config: config(hook.url) });
  await server.start();
});

after(async () => {
  for (const c of clients) c.close();
  await server?.stop();
  await hook?.close();
});

function client(options = {}) {
  const c = new Herald(server.url, { WebSocket, minReconnectDelay: 100, maxReconnectDelay: 1000, ...options });
  clients.push(c);
  return c;
}

const TRANSPORTS = ["websocket", "sse", "longpoll"];

for (const transport of TRANSPORTS) {
  test(`${transport}: ready, presence, history with limit, rpc`, async () => {
    const room = `room:m-${transport}`;
    const ann = client({ transports: [transport], token: () => mintToken({ sub: "ann", info: { name: "Ann" } }) });
    const info = await ann.ready({ timeout: 5000 });
    assert.equal(info.user, "ann");
    assert.equal(typeof info.expiresAt, "number");
    await nextEvent(ann.subscribe(room), "subscribed");
    const bob = client({ transports: [transport], token: mintToken({ sub: "bob" }) });
    await nextEvent(bob.subscribe(room), "subscribed");
    const anon = client({ transports: [transport] });
    await nextEvent(anon.subscribe(room), "subscribed");

    const online = await eventually(
      async () => {
        const p = await anon.presence(room);
        return p.connections === 3 && p;
      },
      { what: "three connections in presence" },
    );
    assert.equal(online.channel, room);
    assert.equal(online.anonymous, 1);
    assert.deepEqual(
      online.users.map((u) => [u.user, u.connections, u.info]).sort(),
      [["ann", 1, { name: "Ann" }], ["bob", 1, null]].sort(),
    );
    await assert.rejects(anon.presence(`news-${transport}`), { code: "not_available" });

    const chat = `chat:m-${transport}`;
    const ids = [];
    for (let n = 0; n < 5; n++) ids.push((await ann.publish(chat, { n })).id);
    const all = await bob.history(chat);
    assert.deepEqual(all.messages.map((m) => m.id), ids);
    const page1 = await bob.history(chat, { since: "earliest", limit: 2 });
    assert.deepEqual(page1.messages.map((m) => m.data.n), [0, 1]);
    const page2 = await bob.history(chat, { since: page1.messages.at(-1).id, limit: 2 });
    assert.deepEqual(page2.messages.map((m) => m.data.n), [2, 3]);
    const newest = await bob.history(chat, { limit: 2 });
    assert.deepEqual(newest.messages.map((m) => m.data.n), [3, 4]);

    assert.deepEqual(await ann.rpc("sum", { a: 1, b: 2 }), { method: "sum", params: { a: 1, b: 2 }, user: "ann" });
    assert.deepEqual(await anon.rpc("ping"), { method: "ping", params: null, user: null });
    await assert.rejects(ann.rpc("fail", {}), (e) => e.code === "rpc_error" && /nope/.test(e.message));
    assert.ok(hook.calls.some((c) => c.event === "rpc" && c.user === "ann" && c.method === "sum"));
  });

  test(`${transport}: a 3 s token expires three times during one connection; nothing is lost`, async () => {
    const channel = `news-refresh-${transport}`;
    let minted = 0;
    const c = client({
      transports: [transport],
      token: async () => {
        minted++;
        return mintToken({ sub: "ann", ttl: 3 });
      },
    });
    const disconnects = [];
    c.on("disconnect", (d) => disconnects.push(d));
    const refreshes = [];
    c.on("refresh", (r) => refreshes.push(r));
    const got = [];
    await nextEvent(c.subscribe(channel, (m) => got.push(m.data)), "subscribed");
    const first = await c.ready();
    const sent = [];
    const start = Date.now();
    // Publish through three whole token lifetimes (past the third expiry).
    const until = first.expiresAt * 1000 + 6500;
    while (Date.now() < until) {
      sent.push(sent.length);
      await server.publish(channel, sent.length - 1);
      await new Promise((r) => setTimeout(r, 100));
    }
    await eventually(() => got.length === sent.length, { timeout: 5000, what: `all ${sent.length} messages` });
    assert.deepEqual(got, sent, "every message, once, in order");
    assert.deepEqual(disconnects, [], "no disconnect (4007 would be one)");
    assert.equal(c.clientId, first.client, "the same connection throughout");
    assert.ok(refreshes.length >= 3, `refreshed ${refreshes.length} times in ${Date.now() - start} ms`);
    assert.equal(minted, refreshes.length + 1, "the token function: once for connect, once per refresh");
    assert.ok(c.expiresAt > first.expiresAt + 6, "three lifetimes later the token is a newer one");
  });
}

test("the same short token as a string (no function) ends the session with 4007: what refresh avoids", async () => {
  const c = client({ transports: ["websocket"], token: mintToken({ sub: "ann", ttl: 1 }), maxReconnectDelay: 200 });
  await c.ready();
  const d = await nextEvent(c, "disconnect", { timeout: 5000 });
  assert.equal(d.code, 4007, JSON.stringify(d));
});

test("private channels: no per-subscription token; refresh() with a token granting more opens them", async () => {
  const c = client({ transports: ["websocket"], token: mintToken({ sub: "ann" }) });
  await c.ready();
  const denied = c.subscribe("priv:ann");
  assert.equal((await nextEvent(denied, "error")).code, "forbidden");
  await c.refresh(mintToken({ sub: "ann", channels: ["priv:ann"] }));
  const sub = c.subscribe("priv:ann");
  await nextEvent(sub, "subscribed");
  assert.ok((await c.history("priv:ann")).messages);
});
