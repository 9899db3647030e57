// Pusher-format webhooks (docs/pusher.md, "Webhooks") from the real herald
// binary, received by a Node HTTP server that checks every request with
// the official `pusher` library (`pusher.webhook(request).isValid()`) and
// reads `getEvents()`, driven by unmodified pusher-js clients:
// channel_occupied, member_added/removed (once per user, not per socket),
// channel_vacated, client_event and cache_miss; a reconnect within
// presence_grace sends nothing.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { createRequire } from "node:module";
import { HeraldServer } from "../lib/server.js";
import { eventually } from "../lib/wait.js";

const require = createRequire(import.meta.url);
const PusherClient = require("pusher-js");
const PusherServer = require("pusher");

const APP = { id: "app1", key: "key1", secret: "secret-of-app1" };
/** Longer than presence_grace (1 s) plus a sweep (1 s). */
const QUIET = 2800;
let server;
let backend;
let receiver;
const received = []; // events of valid requests, in order
const refused = []; // requests that did not validate
const times = [];
const clients = [];

before(async () => {
  backend = new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret, host: "127.0.0.1", useTLS: false });
  const forger = new PusherServer({ appId: APP.id, key: APP.key, secret: "not-the-secret", useTLS: false });
  receiver = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const request = { headers: req.headers, rawBody: Buffer.concat(chunks).toString("utf8") };
      const webhook = backend.webhook(request);
      if (!webhook.isValid() || forger.webhook(request).isValid()) {
        refused.push(request);
        res.writeHead(401).end();
        return;
      }
      times.push(webhook.getTime());
      received.push(...webhook.getEvents());
      res.writeHead(200).end();
    });
  });
  await new Promise((resolve) => receiver.listen(0, "127.0.0.1", resolve));
  server = new HeraldServer({
    config: `presence_grace = "1s"

[[pusher.apps]]
id = "${APP.id}"
key = "${APP.key}"
secret = "${APP.secret}"
client_events = true
webhook_url = "http://127.0.0.1:${receiver.address().port}/pusher/webhooks"
`,
  });
  await server.start();
});

after(async () => {
  for (const c of clients) c.disconnect();
  await server?.stop();
  receiver?.close();
});

function connect({ user } = {}) {
  const client = new PusherClient(APP.key, {
    cluster: "local",
    wsHost: "127.0.0.1",
    wsPort: server.port,
    forceTLS: false,
    enabledTransports: ["ws"],
    disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        const member = channelName.startsWith("presence-") ? { user_id: user, user_info: { name: user } } : undefined;
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

/** `name[:user_id]` of the received events of `channel`. */
function of(channel) {
  return received.filter((e) => e.channel === channel).map((e) => (e.user_id ? `${e.name}:${e.user_id}` : e.name));
}

const quiet = () => new Promise((resolve) => setTimeout(resolve, QUIET));

test("presence: occupied, each member added and removed once, vacated; every request valid", async () => {
  const ann = await connected(connect({ user: "ann" }));
  const annAgain = await connected(connect({ user: "ann" }));
  const bob = await connected(connect({ user: "bob" }));
  await subscribed(ann, "presence-lobby");
  await subscribed(annAgain, "presence-lobby");
  await subscribed(bob, "presence-lobby");
  await eventually(() => of("presence-lobby").length >= 3, { what: "occupied and two members", timeout: 10000 });
  assert.deepEqual(of("presence-lobby"), ["channel_occupied", "member_added:ann", "member_added:bob"]);
  bob.disconnect();
  annAgain.disconnect(); // ann still has a socket there
  await eventually(() => of("presence-lobby").length >= 4, { what: "bob removed", timeout: 10000 });
  await quiet();
  assert.deepEqual(of("presence-lobby").slice(3), ["member_removed:bob"], "ann stays a member");
  ann.disconnect();
  await eventually(() => of("presence-lobby").length >= 6, { what: "ann removed, vacated", timeout: 10000 });
  assert.deepEqual(of("presence-lobby").slice(4), ["member_removed:ann", "channel_vacated"]);
  assert.equal(refused.length, 0, "every request validated");
  assert.ok(times.every((t) => Math.abs(Date.now() - t.getTime()) < 60000), "getTime() is recent");
});

test("client events and cache misses", async () => {
  const [a, b] = await Promise.all([connected(connect()), connected(connect())]);
  const [ca] = await Promise.all([subscribed(a, "private-room"), subscribed(b, "private-room")]);
  assert.equal(ca.trigger("client-typing", { who: "a" }), true);
  const misses = [];
  b.bind("pusher:cache_miss", () => misses.push(1));
  b.subscribe("cache-scores");
  await eventually(
    () => received.some((e) => e.name === "client_event") && received.some((e) => e.name === "cache_miss"),
    { what: "a client_event and a cache_miss", timeout: 10000 },
  );
  const typing = received.find((e) => e.name === "client_event");
  assert.deepEqual(typing, {
    name: "client_event",
    channel: "private-room",
    event: "client-typing",
    data: JSON.stringify({ who: "a" }),
    socket_id: a.connection.socket_id,
  });
  assert.deepEqual(received.find((e) => e.name === "cache_miss"), { name: "cache_miss", channel: "cache-scores" });
  assert.ok(misses.length > 0, "the client got its pusher:cache_miss too");
  a.disconnect();
  b.disconnect();
});

test("a reconnect within presence_grace sends nothing", async () => {
  const first = await connected(connect({ user: "cy" }));
  await subscribed(first, "presence-flap");
  await eventually(() => of("presence-flap").length >= 2, { what: "occupied and cy", timeout: 10000 });
  first.disconnect();
  const again = await connected(connect({ user: "cy" }));
  await subscribed(again, "presence-flap");
  await quiet();
  assert.deepEqual(of("presence-flap"), ["channel_occupied", "member_added:cy"]);
  again.disconnect();
});
