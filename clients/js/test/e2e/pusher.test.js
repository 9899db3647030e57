// Unmodified pusher-js (its Node build) and the `pusher` server library
// against the real herald binary (docs/pusher.md): the client connects to
// /app/{key}, private and presence channels are authorised by a
// customHandler that signs with the server library's authorizeChannel,
// and events are published with the server library's trigger and
// triggerBatch (so request signing is the real library's too).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { HeraldServer } from "../lib/server.js";
import { eventually } from "../lib/wait.js";

const require = createRequire(import.meta.url);
const PusherClient = require("pusher-js");
const PusherServer = require("pusher");

const APP = { id: "app1", key: "key1", secret: "secret-of-app1" };
let server;
let backend;
const clients = [];

before(async () => {
  server = new HeraldServer({
    config: `[[pusher.apps]]
id = "${APP.id}"
key = "${APP.key}"
secret = "${APP.secret}"
client_events = true
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
});

after(async () => {
  for (const c of clients) c.disconnect();
  await server?.stop();
});

/** A pusher-js client of the app; `user` makes it a presence member;
 *  `forge` signs with a made-up signature. */
function connect({ key = APP.key, user, forge = false } = {}) {
  const client = new PusherClient(key, {
    cluster: "local",
    wsHost: "127.0.0.1",
    wsPort: server.port,
    forceTLS: false,
    enabledTransports: ["ws"],
    disableStats: true,
    channelAuthorization: {
      // The app's own auth endpoint, in process: the server library signs.
      customHandler: ({ socketId, channelName }, callback) => {
        const member = channelName.startsWith("presence-")
          ? { user_id: user, user_info: { name: `name of ${user}` } }
          : undefined;
        if (forge) return callback(null, { auth: `${APP.key}:${"0".repeat(64)}` });
        callback(null, backend.authorizeChannel(socketId, channelName, member));
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

function collect(channel, event) {
  const got = [];
  channel.bind(event, (data, meta) => got.push({ data, meta }));
  return got;
}

test("public channel: trigger, triggerBatch and a Herald publish reach pusher-js", async () => {
  const client = await connected(connect());
  assert.match(client.connection.socket_id, /^\d+\.\d+$/);
  const news = await subscribed(client, "news");
  const greets = collect(news, "greet");
  const plain = collect(news, "message");
  await backend.trigger("news", "greet", { n: 1 });
  await backend.triggerBatch([
    { channel: "news", name: "greet", data: { n: 2 } },
    { channel: "news", name: "greet", data: "three" },
  ]);
  await server.publish("pusher:app1:news", { from: "herald" });
  await eventually(() => greets.length === 3 && plain.length === 1, { what: "3 greets and a Herald message" });
  assert.deepEqual(
    greets.map((g) => g.data),
    [{ n: 1 }, { n: 2 }, "three"],
  );
  assert.deepEqual(plain[0].data, { from: "herald" });
  // socket_id leaves the sender out.
  await backend.trigger("news", "greet", { n: 4 }, { socket_id: client.connection.socket_id });
  await backend.trigger("news", "greet", { n: 5 });
  await eventually(() => greets.length === 4, { what: "the fifth greet" });
  assert.deepEqual(greets[3].data, { n: 5 });
  client.disconnect();
});

test("private channel: authorised by the app's signature; client events reach the others", async () => {
  const [a, b] = await Promise.all([connected(connect()), connected(connect())]);
  const [ca, cb] = await Promise.all([subscribed(a, "private-room"), subscribed(b, "private-room")]);
  const atA = collect(ca, "client-typing");
  const atB = collect(cb, "client-typing");
  assert.equal(ca.trigger("client-typing", { who: "a" }), true);
  await eventually(() => atB.length === 1, { what: "b gets a's client event" });
  assert.deepEqual(atB[0].data, { who: "a" });
  const secret = collect(cb, "secret");
  await backend.trigger("private-room", "secret", { s: 1 });
  await eventually(() => secret.length === 1, { what: "a triggered private event" });
  assert.equal(atA.length, 0, "a does not get its own client event");
  a.disconnect();
  b.disconnect();
});

test("presence channel: members, member_added and member_removed; the channel API", async () => {
  const ann = await connected(connect({ user: "ann" }));
  const room = await subscribed(ann, "presence-lobby");
  assert.equal(room.members.count, 1);
  assert.equal(room.members.me.id, "ann");
  assert.deepEqual(room.members.me.info, { name: "name of ann" });
  const added = [];
  const removed = [];
  room.bind("pusher:member_added", (m) => added.push(m));
  room.bind("pusher:member_removed", (m) => removed.push(m));
  const bob = await connected(connect({ user: "bob" }));
  const bobRoom = await subscribed(bob, "presence-lobby");
  assert.equal(bobRoom.members.count, 2);
  await eventually(() => added.length === 1, { what: "member_added for bob" });
  assert.deepEqual(added[0], { id: "bob", info: { name: "name of bob" } });
  assert.equal(room.members.count, 2);

  const users = await (await backend.get({ path: "/channels/presence-lobby/users" })).json();
  assert.deepEqual(users.users.map((u) => u.id).sort(), ["ann", "bob"]);
  const list = await (
    await backend.get({ path: "/channels", params: { filter_by_prefix: "presence-", info: "user_count" } })
  ).json();
  assert.equal(list.channels["presence-lobby"].user_count, 2);
  const one = await (await backend.get({ path: "/channels/presence-lobby", params: { info: "subscription_count" } })).json();
  assert.equal(one.occupied, true);
  assert.equal(one.subscription_count, 2);

  bob.disconnect();
  await eventually(() => removed.length === 1, { what: "member_removed for bob" });
  assert.equal(removed[0].id, "bob");
  assert.equal(room.members.count, 1);
  ann.disconnect();
});

test("cache channel: the last event on subscribe, else pusher:cache_miss", async () => {
  const first = await connected(connect());
  const misses = [];
  first.bind("pusher:cache_miss", (e) => misses.push(e));
  const channel = first.subscribe("cache-scores");
  channel.bind("pusher:cache_miss", () => misses.push("channel"));
  await eventually(() => misses.length > 0, { what: "a cache miss" });
  await backend.trigger("cache-scores", "score", { n: 1 });
  await backend.trigger("cache-scores", "score", { n: 2 });
  const later = await connected(connect());
  const scores = [];
  const cached = later.subscribe("cache-scores");
  cached.bind("score", (d) => scores.push(d));
  await eventually(() => scores.length === 1, { what: "the cached score" });
  assert.deepEqual(scores, [{ n: 2 }]);
  first.disconnect();
  later.disconnect();
});

test("a bad channel signature is refused with pusher:error 4009", async () => {
  const client = await connected(connect({ forge: true }));
  const errors = [];
  client.connection.bind("error", (e) => errors.push(e));
  client.subscribe("private-vault");
  await eventually(() => errors.some((e) => e.data?.code === 4009), { what: "pusher:error 4009" });
  assert.equal(client.connection.state, "connected", "the connection stays");
  client.disconnect();
});

test("a wrong secret on the HTTP API is 401; an unknown app key is refused with 4001", async () => {
  const forger = new PusherServer({
    appId: APP.id,
    key: APP.key,
    secret: "not-the-secret",
    host: "127.0.0.1",
    port: String(server.port),
    useTLS: false,
  });
  await assert.rejects(forger.trigger("news", "x", {}), (e) => e.status === 401);
  const stranger = connect({ key: "no-such-key" });
  const errors = [];
  stranger.connection.bind("error", (e) => errors.push(e));
  await eventually(() => errors.some((e) => e.data?.code === 4001 || e.error?.data?.code === 4001), {
    what: "error 4001",
  });
  assert.notEqual(stranger.connection.state, "connected");
  stranger.disconnect();
});
