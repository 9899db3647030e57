// One behavioural suite for Herald's Pusher dialect (docs/pusher.md), run
// with unmodified pusher-js (its Node build) and the `pusher` server
// library against real herald binaries: by e2e/pusher.test.js on one node
// of the memory engine, and by e2e/pusher-redis.test.js on two nodes of
// one Redis, where the clients follow one node and the backend triggers
// through the other. Private and presence channels are authorised by a
// customHandler that signs with the server library's authorizeChannel, so
// request signing and channel signatures are the real libraries' too.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { eventually } from "./wait.js";

const require = createRequire(import.meta.url);
export const PusherClient = require("pusher-js");
export const PusherServer = require("pusher");

export const APP = { id: "app1", key: "key1", secret: "secret-of-app1" };

/** The `[[pusher.apps]]` entry of APP, with client events on. */
export const APP_CONFIG = `[[pusher.apps]]
id = "${APP.id}"
key = "${APP.key}"
secret = "${APP.secret}"
client_events = true
`;

/** The server library pointed at `node` (a started HeraldServer). */
export function backendFor(node, { appId = APP.id, secret = APP.secret, ...more } = {}) {
  return new PusherServer({
    appId,
    key: APP.key,
    secret,
    host: "127.0.0.1",
    port: String(node.port),
    useTLS: false,
    ...more,
  });
}

/** Resolves with the channel once subscribed; rejects on subscription_error. */
export function subscribed(client, name) {
  const channel = client.subscribe(name);
  return new Promise((resolve, reject) => {
    channel.bind("pusher:subscription_succeeded", () => resolve(channel));
    channel.bind("pusher:subscription_error", (e) => reject(new Error(`subscription_error: ${JSON.stringify(e)}`)));
  });
}

/** Everything `event` brings on `channel`, as `{data, meta}`, in order. */
export function collect(channel, event) {
  const got = [];
  channel.bind(event, (data, meta) => got.push({ data, meta }));
  return got;
}

/** The `pusher:error` codes a client's connection has reported. */
export function errorCodes(client) {
  const codes = [];
  client.connection.bind("error", (e) => codes.push(e?.data?.code ?? e?.error?.data?.code));
  return codes;
}

export async function connected(client) {
  await eventually(() => client.connection.state === "connected", { what: "pusher-js connected" });
  return client;
}

/**
 * The suite. `setup()` starts the servers and answers `{client, peer, api,
 * stop}`: `client` is the node the first client of each test follows,
 * `peer` the node a second client follows, `api` the node the backend
 * triggers through (all three one node on the memory engine).
 */
export function pusherSuite(label, setup) {
  let nodes;
  let backend;
  const clients = [];

  before(async () => {
    nodes = await setup();
    backend = backendFor(nodes.api);
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    await nodes?.stop();
  });

  /** A pusher-js client of the app on `node`; `user` makes it a presence
   *  member; `forge` signs with a made-up signature. */
  function connect({ node = nodes.client, key = APP.key, user, forge = false } = {}) {
    const client = new PusherClient(key, {
      cluster: "local",
      wsHost: "127.0.0.1",
      wsPort: node.port,
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
      // Sign-in (pusher:signin) as `user`, signed by the server library.
      userAuthentication: {
        customHandler: ({ socketId }, callback) => callback(null, backend.authenticateUser(socketId, { id: user })),
      },
    });
    clients.push(client);
    return client;
  }

  /**
   * A client on its own public channel that must keep getting what the
   * backend triggers while other clients misbehave: `check()` asserts it
   * is still connected, with the same socket, and receives a new event.
   */
  async function bystander() {
    const client = await connected(connect({ node: nodes.peer }));
    const socketId = client.connection.socket_id;
    const name = `bystander-${Math.random().toString(36).slice(2, 8)}`;
    const got = collect(await subscribed(client, name), "tick");
    let n = 0;
    return {
      client,
      async check() {
        n += 1;
        await backend.trigger(name, "tick", { n });
        await eventually(() => got.length === n, { what: `the bystander's tick ${n}` });
        assert.deepEqual(got[n - 1].data, { n });
        assert.equal(client.connection.state, "connected");
        assert.equal(client.connection.socket_id, socketId, "the bystander kept its connection");
      },
    };
  }

  test(`${label}: public channel: trigger, triggerBatch and a Herald publish reach pusher-js`, async () => {
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
    await nodes.api.publish(`pusher:${APP.id}:news`, { from: "herald" });
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

  test(`${label}: private channel: authorised by the app's signature; client events reach the others`, async () => {
    const [a, b] = await Promise.all([connected(connect()), connected(connect({ node: nodes.peer }))]);
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

  test(`${label}: presence channel: members, member_added and member_removed; the channel API`, async () => {
    const ann = await connected(connect({ user: "ann" }));
    const room = await subscribed(ann, "presence-lobby");
    assert.equal(room.members.count, 1);
    assert.equal(room.members.me.id, "ann");
    assert.deepEqual(room.members.me.info, { name: "name of ann" });
    const added = [];
    const removed = [];
    room.bind("pusher:member_added", (m) => added.push(m));
    room.bind("pusher:member_removed", (m) => removed.push(m));
    const bob = await connected(connect({ node: nodes.peer, user: "bob" }));
    const bobRoom = await subscribed(bob, "presence-lobby");
    assert.equal(bobRoom.members.count, 2);
    await eventually(() => added.length === 1, { what: "member_added for bob" });
    assert.deepEqual(added[0], { id: "bob", info: { name: "name of bob" } });
    assert.equal(room.members.count, 2);
    // A client event on a presence channel names its sender's user_id.
    const waves = collect(bobRoom, "client-wave");
    room.trigger("client-wave", { hi: "bob" });
    await eventually(() => waves.length === 1, { what: "ann's wave at bob" });
    assert.deepEqual(waves[0].data, { hi: "bob" });
    assert.equal(waves[0].meta?.user_id, "ann");

    // The per-channel answers are cluster-wide, but another node's
    // subscriber count is the one it last wrote (about a second old on
    // Redis), so they are awaited.
    const get = async (api, path, params) => (await api.get({ path, params })).json();
    await eventually(
      async () => {
        const users = await get(backend, "/channels/presence-lobby/users");
        assert.deepEqual(users.users.map((u) => u.id).sort(), ["ann", "bob"]);
        return true;
      },
      { what: "users ann and bob" },
    );
    await eventually(
      async () => {
        const list = await get(backend, "/channels", { filter_by_prefix: "presence-", info: "user_count" });
        assert.equal(list.channels["presence-lobby"]?.user_count, 2);
        return true;
      },
      { what: "user_count 2 in the channel list" },
    );
    await eventually(
      async () => {
        const one = await get(backend, "/channels/presence-lobby", { info: "subscription_count,user_count" });
        assert.deepEqual(one, { occupied: true, subscription_count: 2, user_count: 2 });
        return true;
      },
      { what: "the channel's counts" },
    );

    // A channel followed only on the client's node is listed by the API's.
    const lone = await subscribed(ann, "listed-lone");
    await eventually(
      async () => {
        const list = await get(backend, "/channels", { filter_by_prefix: "listed-", info: "subscription_count" });
        assert.deepEqual(list.channels, { "listed-lone": { subscription_count: 1 } });
        return true;
      },
      { what: "listed-lone in the API node's channel list" },
    );
    ann.unsubscribe(lone.name);
    await eventually(
      async () => Object.keys((await get(backend, "/channels", { filter_by_prefix: "listed-" })).channels).length === 0,
      { what: "listed-lone gone from the list" },
    );

    bob.disconnect();
    await eventually(() => removed.length === 1, { what: "member_removed for bob" });
    assert.equal(removed[0].id, "bob");
    assert.equal(room.members.count, 1);
    ann.disconnect();
  });

  test(`${label}: cache channel: the last event on subscribe, else pusher:cache_miss`, async () => {
    const first = await connected(connect());
    const misses = [];
    first.bind("pusher:cache_miss", (e) => misses.push(e));
    const channel = first.subscribe("cache-scores");
    channel.bind("pusher:cache_miss", () => misses.push("channel"));
    await eventually(() => misses.length > 0, { what: "a cache miss" });
    await backend.trigger("cache-scores", "score", { n: 1 });
    await backend.trigger("cache-scores", "score", { n: 2 });
    const later = await connected(connect({ node: nodes.peer }));
    const scores = [];
    const cached = later.subscribe("cache-scores");
    cached.bind("score", (d) => scores.push(d));
    await eventually(() => scores.length === 1, { what: "the cached score" });
    assert.deepEqual(scores, [{ n: 2 }]);
    first.disconnect();
    later.disconnect();
  });

  test(`${label}: a bad channel signature is refused with pusher:error 4009; others undisturbed`, async () => {
    const other = await bystander();
    const client = await connected(connect({ forge: true }));
    const codes = errorCodes(client);
    client.subscribe("private-vault");
    await eventually(() => codes.includes(4009), { what: "pusher:error 4009" });
    assert.equal(client.connection.state, "connected", "the connection stays");
    await other.check();
    client.disconnect();
    other.client.disconnect();
  });

  test(`${label}: a wrong secret is 401 and an unknown app id 404 on the HTTP API; an unknown key is refused with 4001`, async () => {
    const other = await bystander();
    const forger = backendFor(nodes.api, { secret: "not-the-secret" });
    await assert.rejects(forger.trigger("news", "x", {}), (e) => e.status === 401 && /signature/i.test(e.body));
    const stranger = backendFor(nodes.api, { appId: "no-such-app" });
    await assert.rejects(stranger.trigger("news", "x", {}), (e) => e.status === 404 && /no-such-app/.test(e.body));
    const nobody = connect({ key: "no-such-key" });
    const codes = errorCodes(nobody);
    await eventually(() => codes.includes(4001), { what: "error 4001" });
    assert.notEqual(nobody.connection.state, "connected");
    nobody.disconnect();
    await other.check();
    other.client.disconnect();
  });

  test(`${label}: an event over max_event_size (Pusher's 10 KiB) is 413 from the API and pusher:error 4300 as a client event`, async () => {
    const other = await bystander();
    const big = "x".repeat(11 * 1024);
    await assert.rejects(backend.trigger("news", "big", { big }), (e) => e.status === 413 && /larger than 10240 bytes/.test(e.body));
    await assert.rejects(
      backend.triggerBatch([{ channel: "news", name: "big", data: { big } }]),
      (e) => e.status === 413,
    );
    // Just under the limit is accepted.
    await backend.trigger("news", "fits", { fits: "x".repeat(9 * 1024) });
    const [a, b] = await Promise.all([connected(connect()), connected(connect({ node: nodes.peer }))]);
    const [ca, cb] = await Promise.all([subscribed(a, "private-big"), subscribed(b, "private-big")]);
    const atB = collect(cb, "client-big");
    const codes = errorCodes(a);
    ca.trigger("client-big", { big });
    await eventually(() => codes.includes(4300), { what: "pusher:error 4300 for the oversize client event" });
    ca.trigger("client-big", { small: true });
    await eventually(() => atB.length === 1, { what: "the small client event after the big one" });
    assert.deepEqual(atB[0].data, { small: true }, "the oversize event never arrived");
    assert.equal(a.connection.state, "connected", "the sender keeps its connection");
    await other.check();
    for (const c of [a, b, other.client]) c.disconnect();
  });

  test(`${label}: a client event on a public channel is refused with 4009 and reaches nobody`, async () => {
    const other = await bystander();
    const [a, b] = await Promise.all([connected(connect()), connected(connect({ node: nodes.peer }))]);
    const [ca, cb] = await Promise.all([subscribed(a, "square"), subscribed(b, "square")]);
    const atB = collect(cb, "client-shout");
    const said = collect(cb, "said");
    const codes = errorCodes(a);
    const messages = [];
    a.connection.bind("error", (e) => messages.push(e?.data?.message));
    ca.trigger("client-shout", { loud: true });
    await eventually(() => codes.includes(4009), { what: "pusher:error 4009 for a public client event" });
    assert.ok(messages.some((m) => /private and presence/.test(m)), `the message says why: ${messages}`);
    // A triggered event after it arrives alone: the client event went nowhere.
    await backend.trigger("square", "said", { ok: 1 });
    await eventually(() => said.length === 1, { what: "the event after the refused one" });
    assert.equal(atB.length, 0);
    assert.equal(a.connection.state, "connected");
    await other.check();
    for (const c of [a, b, other.client]) c.disconnect();
  });

  test(`${label}: terminateUserConnections closes that user's connections, and only those`, async () => {
    const other = await bystander();
    // Signed in on the client's node; terminated through the API's node.
    const gone = await connected(connect({ user: "gone-user" }));
    gone.signin();
    await eventually(() => gone.user.serverToUserChannel?.subscribed, { what: "gone-user signed in" });
    const states = [];
    const errors = [];
    gone.connection.bind("state_change", ({ current }) => states.push(current));
    gone.connection.bind("error", (e) => errors.push(e?.data?.code));
    await backend.terminateUserConnections("gone-user");
    await eventually(() => states.length > 0, { what: "the terminated connection to end" });
    assert.ok(errors.includes(4009), `pusher:error 4009, got ${errors}`);
    await other.check();
    gone.disconnect();
    other.client.disconnect();
  });
}
