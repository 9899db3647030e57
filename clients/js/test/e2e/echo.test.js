// Laravel Echo's Pusher connector (laravel-echo, with pusher-js's Node
// build as its `Pusher` option) against the real herald binary, the way a
// Laravel app's front end uses it: Echo.channel().listen() with and
// without the App.Events namespace, Echo.private() authorised by an
// `authorizer` that signs with the `pusher` server library (as a Laravel
// backend's /broadcasting/auth would), notifications, Echo.join()'s
// here/joining/leaving, whisper/listenForWhisper (client events), and
// Echo.encryptedPrivate() with the server library's encryption master key.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import Echo from "laravel-echo";
import { HeraldServer } from "../lib/server.js";
import { APP, APP_CONFIG, PusherClient, backendFor } from "../lib/pusher-suite.js";
import { eventually } from "../lib/wait.js";

let server;
let backend;
const echoes = [];

before(async () => {
  server = new HeraldServer({ config: APP_CONFIG });
  await server.start();
  backend = backendFor(server, { encryptionMasterKeyBase64: randomBytes(32).toString("base64") });
});

after(async () => {
  for (const echo of echoes) echo.disconnect();
  await server?.stop();
});

/**
 * An Echo of the app as `user` would have it; `refuse` makes the
 * authoriser answer an error (the app's backend said no).
 */
async function echoFor(user, { refuse = false } = {}) {
  const echo = new Echo({
    broadcaster: "pusher",
    Pusher: PusherClient,
    key: APP.key,
    cluster: "local",
    wsHost: "127.0.0.1",
    wsPort: server.port,
    forceTLS: false,
    enabledTransports: ["ws"],
    disableStats: true,
    // What the Laravel docs show for a custom authoriser; here it signs
    // in process with the server library instead of POSTing to
    // /broadcasting/auth.
    // The answer comes on a later turn, as an HTTP answer would (Echo
    // binds a channel's error callback after subscribing).
    authorizer: (channel) => ({
      authorize: (socketId, callback) =>
        setImmediate(() => {
          if (refuse) return callback(new Error("403 from /broadcasting/auth"), null);
          const member = channel.name.startsWith("presence-") ? { user_id: user, user_info: { id: user, name: `name of ${user}` } } : undefined;
          callback(null, backend.authorizeChannel(socketId, channel.name, member));
        }),
    }),
  });
  echoes.push(echo);
  await eventually(() => echo.connectionStatus() === "connected", { what: `Echo of ${user} connected` });
  return echo;
}

/** Resolves once Echo's channel is subscribed (its `subscribed` callback). */
const ready = (channel) => new Promise((resolve) => channel.subscribed(resolve));

test("Echo.channel().listen(): a leading dot is the raw event name, otherwise App.Events is prepended", async () => {
  const echo = await echoFor("ann");
  const raw = [];
  const namespaced = [];
  const orders = echo.channel("orders").listen(".shipped", (e) => raw.push(e)).listen("OrderShipped", (e) => namespaced.push(e));
  await ready(orders);
  assert.match(echo.socketId(), /^\d+\.\d+$/);
  await backend.trigger("orders", "shipped", { order: 1 });
  // What Laravel broadcasts for App\Events\OrderShipped.
  await backend.trigger("orders", "App\\Events\\OrderShipped", { order: 2 });
  await backend.trigger("orders", "OrderShipped", { order: 3 }); // not Echo's name for it
  await eventually(() => raw.length === 1 && namespaced.length === 1, { what: "both listeners called" });
  assert.deepEqual(raw, [{ order: 1 }]);
  assert.deepEqual(namespaced, [{ order: 2 }]);
  orders.stopListening(".shipped");
  await backend.trigger("orders", "shipped", { order: 4 });
  await backend.trigger("orders", "App\\Events\\OrderShipped", { order: 5 });
  await eventually(() => namespaced.length === 2, { what: "the fifth order" });
  assert.equal(raw.length, 1, "stopListening unbinds");
  echo.leave("orders");
  await eventually(async () => {
    const info = await (await backend.get({ path: "/channels/orders", params: { info: "subscription_count" } })).json();
    return info.occupied === false;
  }, { what: "orders vacated after Echo.leave" });
});

test("Echo.private(): signed by the server library; events, notifications and whispers", async () => {
  const [ann, bob] = await Promise.all([echoFor("ann"), echoFor("bob")]);
  const got = [];
  const notes = [];
  const annUser = ann.private("App.Models.User.1").listen(".balance", (e) => got.push(e)).notification((n) => notes.push(n));
  const whispers = [];
  const annChat = ann.private("chat.7").listenForWhisper("typing", (e) => whispers.push(e));
  const bobChat = bob.private("chat.7");
  await Promise.all([ready(annUser), ready(annChat), ready(bobChat)]);
  await backend.trigger("private-App.Models.User.1", "balance", { cents: 100 });
  await backend.trigger("private-App.Models.User.1", "Illuminate\\Notifications\\Events\\BroadcastNotificationCreated", {
    id: "n1",
    type: "App\\Notifications\\Paid",
    amount: 5,
  });
  bobChat.whisper("typing", { who: "bob" });
  await eventually(() => got.length === 1 && notes.length === 1 && whispers.length === 1, { what: "event, notification and whisper" });
  assert.deepEqual(got, [{ cents: 100 }]);
  assert.equal(notes[0].id, "n1");
  assert.deepEqual(whispers, [{ who: "bob" }]);
});

test("Echo.private() with a backend that refuses: the channel's error callback, no subscription", async () => {
  const mallory = await echoFor("mallory", { refuse: true });
  const errors = [];
  const channel = mallory.private("App.Models.User.666").error((e) => errors.push(e));
  await eventually(() => errors.length === 1, { what: "the error callback" });
  assert.equal(errors[0].type, "AuthError");
  assert.equal(channel.subscription.subscribed, false);
  const info = await (await backend.get({ path: "/channels/private-App.Models.User.666" })).json();
  assert.equal(info.occupied, false, "nothing was subscribed");
  assert.equal(mallory.connectionStatus(), "connected");
});

test("Echo.join(): here, joining, leaving and whispers on a presence channel", async () => {
  const ann = await echoFor("ann");
  const here = [];
  const joined = [];
  const left = [];
  const whispers = [];
  const room = ann
    .join("room.1")
    .here((members) => here.push(members))
    .joining((m) => joined.push(m))
    .leaving((m) => left.push(m))
    .listenForWhisper("wave", (e) => whispers.push(e));
  await eventually(() => here.length === 1, { what: "here() for ann" });
  assert.deepEqual(here[0], [{ id: "ann", name: "name of ann" }]);

  const bob = await echoFor("bob");
  const bobHere = [];
  const bobRoom = bob.join("room.1").here((members) => bobHere.push(members));
  await eventually(() => bobHere.length === 1 && joined.length === 1, { what: "here() for bob and joining() for ann" });
  assert.deepEqual(
    bobHere[0].map((m) => m.id).sort(),
    ["ann", "bob"],
  );
  assert.deepEqual(joined, [{ id: "bob", name: "name of bob" }]);
  bobRoom.whisper("wave", { from: "bob" });
  await eventually(() => whispers.length === 1, { what: "bob's whisper" });
  assert.deepEqual(whispers, [{ from: "bob" }]);
  const users = await (await backend.get({ path: "/channels/presence-room.1/users" })).json();
  assert.deepEqual(users.users.map((u) => u.id).sort(), ["ann", "bob"]);

  bob.leave("room.1");
  await eventually(() => left.length === 1, { what: "leaving() for bob" });
  assert.deepEqual(left, [{ id: "bob", name: "name of bob" }]);
  assert.equal(room.subscription.members.count, 1);
});

test("Echo.encryptedPrivate(): the server library encrypts, Echo's pusher-js decrypts", async () => {
  const ann = await echoFor("ann");
  const got = [];
  const vault = ann.encryptedPrivate("vault.1").listen(".sealed", (e) => got.push(e));
  await ready(vault);
  await backend.trigger("private-encrypted-vault.1", "sealed", { pin: "1234" });
  await eventually(() => got.length === 1, { what: "the decrypted event" });
  assert.deepEqual(got, [{ pin: "1234" }]);
});
