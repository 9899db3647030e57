// Pusher user authentication, user events and terminate_connections, and
// Herald's resume helper (/pusher-resume.js), with unmodified pusher-js (its
// Node build) and the `pusher` server library against the real binary
// (docs/pusher.md).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { HeraldServer, CLIENT_DIR } from "../lib/server.js";
import { eventually } from "../lib/wait.js";

const require = createRequire(import.meta.url);
const PusherClient = require("pusher-js");
const PusherServer = require("pusher");

const APP = { id: "app2", key: "key2", secret: "secret-of-app2" };
let server;
let backend;
let Resume;
const clients = [];

before(async () => {
  server = new HeraldServer({
    config: `[[pusher.apps]]
id = "${APP.id}"
key = "${APP.key}"
secret = "${APP.secret}"

[[namespace]]
prefix = "pusher:${APP.id}:"
history_size = 100

[[namespace]]
prefix = "pusher:${APP.id}:tiny-"
history_size = 2
`,
  });
  await server.start();
  backend = new PusherServer({
    appId: APP.id,
    key: APP.key,
    secret: APP.secret,
    host: "127.0.0.1",
    port: String(server.port),
    useTLS: false,
  });
  // The helper as Herald serves it (the same text as the file).
  const served = await (await fetch(`${server.url}/pusher-resume.js`)).text();
  assert.equal(served, readFileSync(path.join(CLIENT_DIR, "pusher-resume.js"), "utf8"));
  const module = { exports: {} };
  new Function("module", "exports", served)(module, module.exports);
  Resume = module.exports;
});

after(async () => {
  for (const c of clients) c.disconnect();
  await server?.stop();
});

/** A TCP proxy in front of Herald that the test can cut, as a network
 *  drop would: open sockets are destroyed and new ones refused until it
 *  is mended. */
async function cuttableProxy() {
  const pairs = new Set();
  let cut = false;
  const proxy = net.createServer((down) => {
    if (cut) return down.destroy();
    const up = net.connect(server.port, "127.0.0.1");
    const pair = [down, up];
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      down.destroy();
      up.destroy();
    };
    down.on("error", end).on("close", end);
    up.on("error", end).on("close", end);
    down.pipe(up);
    up.pipe(down);
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  return {
    port: proxy.address().port,
    cut() {
      cut = true;
      for (const [down, up] of pairs) {
        down.destroy();
        up.destroy();
      }
      pairs.clear();
    },
    mend() {
      cut = false;
    },
    close: () => new Promise((resolve) => proxy.close(resolve)),
  };
}

/** A pusher-js client; `user` signs in as that user through the server
 *  library's authenticateUser (the app's own endpoint, in process). */
function connect({ user, forgeUser = false, port, transport = "ws" } = {}) {
  const client = new PusherClient(APP.key, {
    cluster: "local",
    wsHost: "127.0.0.1",
    wsPort: port ?? server.port,
    httpHost: "127.0.0.1",
    httpPort: port ?? server.port,
    forceTLS: false,
    enabledTransports: [transport],
    disableStats: true,
    userAuthentication: {
      customHandler: ({ socketId }, callback) => {
        const signed = backend.authenticateUser(socketId, { id: user, user_info: { name: user } });
        if (forgeUser) signed.auth = `${APP.key}:${"0".repeat(64)}`;
        callback(null, signed);
      },
    },
  });
  clients.push(client);
  return client;
}

async function connected(client) {
  await eventually(() => client.connection.state === "connected", { what: "pusher-js connected" });
  return client;
}

function subscribed(client, name) {
  const channel = client.subscribe(name);
  return new Promise((resolve, reject) => {
    channel.bind("pusher:subscription_succeeded", () => resolve(channel));
    channel.bind("pusher:subscription_error", (e) => reject(new Error(`subscription_error: ${JSON.stringify(e)}`)));
  });
}

/** Waits until pusher-js has seen its connection go and come back. */
async function reconnected(client, states) {
  await eventually(() => states.includes("connecting") || states.includes("unavailable"), {
    what: "the drop seen",
  });
  await eventually(() => client.connection.state === "connected", { what: "reconnected", timeout: 15000 });
}

function states(client) {
  const seen = [];
  client.connection.bind("state_change", ({ current }) => seen.push(current));
  return seen;
}

test("signin: sendToUser reaches every connection of the user, and only them", async () => {
  const [a1, a2, b] = [connect({ user: "ann" }), connect({ user: "ann" }), connect({ user: "bob" })];
  const got = { a1: [], a2: [], b: [] };
  for (const [name, client] of Object.entries({ a1, a2, b })) {
    client.signin();
    client.user.bind("note", (data) => got[name].push(data));
    await connected(client);
  }
  // pusher-js subscribes #server-to-user-{id} after signin_success.
  for (const client of [a1, a2, b]) {
    await eventually(() => client.user.serverToUserChannel?.subscribed, { what: "the user channel subscribed" });
  }
  await backend.sendToUser("ann", "note", { n: 1 });
  await eventually(() => got.a1.length === 1 && got.a2.length === 1, { what: "both of ann's connections" });
  assert.deepEqual(got.a1[0], { n: 1 });
  await backend.sendToUser("bob", "note", { n: 2 });
  await eventually(() => got.b.length === 1, { what: "bob's note" });
  assert.equal(got.a1.length, 1, "ann does not get bob's");
  for (const c of [a1, a2, b]) c.disconnect();
});

test("signin with a forged signature is refused (4009); the connection stays", async () => {
  const client = connect({ user: "eve", forgeUser: true });
  const errors = [];
  client.connection.bind("error", (e) => errors.push(e));
  client.signin();
  await connected(client);
  await eventually(() => errors.some((e) => e.data?.code === 4009), { what: "pusher:error 4009" });
  assert.equal(client.connection.state, "connected");
  client.disconnect();
});

test("terminate_connections closes the user's connections and not the others", async () => {
  const [ann, bob] = [connect({ user: "ann2" }), connect({ user: "bob2" })];
  for (const c of [ann, bob]) {
    c.signin();
    await connected(c);
    await eventually(() => c.user.serverToUserChannel?.subscribed, { what: "signed in" });
  }
  const errors = [];
  ann.connection.bind("error", (e) => errors.push(e));
  await backend.terminateUserConnections("ann2");
  await eventually(() => ann.connection.state !== "connected", { what: "ann's connection closed" });
  await eventually(() => errors.some((e) => e.data?.code === 4009), { what: "pusher:error 4009 to ann" });
  // 4000-4099: pusher-js does not reconnect.
  await new Promise((r) => setTimeout(r, 1500));
  assert.notEqual(ann.connection.state, "connected");
  assert.equal(bob.connection.state, "connected");
  const notes = [];
  bob.user.bind("note", (d) => notes.push(d));
  await backend.sendToUser("bob2", "note", "still here");
  await eventually(() => notes.length === 1, { what: "bob still served" });
  bob.disconnect();
});

for (const transport of ["ws", "xhr_streaming", "xhr_polling"]) {
  test(`resume helper over ${transport}: events published while the connection was down arrive once, in order`, async () => {
    const link = await cuttableProxy();
    const client = connect({ port: link.port, transport });
    Resume.attach(client);
    await connected(client);
    const feed = await subscribed(client, `feed-${transport}`);
    const got = [];
    feed.bind("tick", (d) => got.push(d.n));
    for (let n = 1; n <= 3; n++) await backend.trigger(`feed-${transport}`, "tick", { n });
    await eventually(() => got.length === 3, { what: "3 live ticks" });
    const seen = states(client);
    // Cut: what is published now reaches no socket of this client (the
    // server may still write to the dead one); the link is mended before
    // pusher-js's first retry (after a second).
    link.cut();
    for (let n = 4; n <= 8; n++) await backend.trigger(`feed-${transport}`, "tick", { n });
    link.mend();
    await reconnected(client, seen);
    await eventually(() => got.length === 8, { what: "the missed ticks after reconnecting" });
    await backend.trigger(`feed-${transport}`, "tick", { n: 9 });
    await eventually(() => got.length === 9, { what: "a live tick after the resume" });
    assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    client.disconnect();
    await link.close();
  });
}

test("resume helper: a point history no longer holds gets herald:gap; without the helper nothing is replayed", async () => {
  const link = await cuttableProxy();
  const helped = connect({ port: link.port });
  const gaps = [];
  Resume.attach(helped, { onGap: (channel) => gaps.push(channel) });
  const plain = connect({ port: link.port });
  await Promise.all([connected(helped), connected(plain)]);
  const [h, p] = await Promise.all([subscribed(helped, "tiny-feed"), subscribed(plain, "tiny-feed")]);
  const atH = [];
  const atP = [];
  const gapEvents = [];
  h.bind("tick", (d) => atH.push(d.n));
  p.bind("tick", (d) => atP.push(d.n));
  h.bind("herald:gap", () => gapEvents.push(1));
  await backend.trigger("tiny-feed", "tick", { n: 1 });
  await eventually(() => atH.length === 1 && atP.length === 1, { what: "the first tick" });
  const [seenH, seenP] = [states(helped), states(plain)];
  link.cut();
  // History keeps 2: after 5 more, the helper's point (1) is gone.
  for (let n = 2; n <= 6; n++) await backend.trigger("tiny-feed", "tick", { n });
  link.mend();
  await Promise.all([reconnected(helped, seenH), reconnected(plain, seenP)]);
  await eventually(() => gapEvents.length === 1 && gaps.length === 1, { what: "herald:gap" });
  assert.deepEqual(gaps, ["tiny-feed"]);
  await eventually(() => atH.length === 3, { what: "what history still holds" });
  assert.deepEqual(atH, [1, 5, 6]);
  await backend.trigger("tiny-feed", "tick", { n: 7 });
  await eventually(() => atP.length === 2 && atH.length === 4, { what: "a live tick for both" });
  assert.deepEqual(atP, [1, 7], "plain pusher-js gets no replay, as with Pusher");
  helped.disconnect();
  plain.disconnect();
  await link.close();
});
