// pusher-js's HTTP fallbacks against the real herald binary
// (docs/pusher.md, "The HTTP fallbacks"): unmodified pusher-js (its Node
// build) with enabledTransports ["xhr_streaming"] and then ["xhr_polling"]
// connects, follows public and private channels, gets what the `pusher`
// server library triggers, sends client events, and reconnects after the
// server drops its session; a stream past pusher-js's 256 Ki characters is
// reopened on the same session without a loss; then headless Chromium, whose WebSocket to
// /app/{key} is cut, falls back to xhr_streaming by itself.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { HeraldServer, CLIENT_DIR } from "../lib/server.js";
import { eventually } from "../lib/wait.js";
import { launch, newPage } from "../lib/browser.js";

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

/** A pusher-js client of the app over one HTTP fallback only. */
function connect(transport, { key = APP.key } = {}) {
  const client = new PusherClient(key, {
    cluster: "local",
    httpHost: "127.0.0.1",
    httpPort: server.port,
    wsHost: "127.0.0.1",
    wsPort: server.port,
    forceTLS: false,
    enabledTransports: [transport],
    disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        callback(null, backend.authorizeChannel(socketId, channelName));
      },
    },
  });
  clients.push(client);
  return client;
}

async function connected(client, transport) {
  await eventually(() => client.connection.state === "connected", { timeout: 10000, what: `pusher-js connected over ${transport}` });
  assert.equal(client.connection.connection.transport.name, transport);
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
  channel.bind(event, (data) => got.push(data));
  return got;
}

for (const transport of ["xhr_streaming", "xhr_polling"]) {
  test(`${transport}: public and private channels, triggers and client events`, async () => {
    const [a, b] = await Promise.all([connected(connect(transport), transport), connected(connect(transport), transport)]);
    assert.match(a.connection.socket_id, /^\d+\.\d+$/);
    const news = await subscribed(a, "news");
    const greets = collect(news, "greet");
    await backend.trigger("news", "greet", { n: 1 });
    await backend.triggerBatch([
      { channel: "news", name: "greet", data: { n: 2 } },
      { channel: "news", name: "greet", data: "three" },
    ]);
    await eventually(() => greets.length === 3, { what: `3 greets over ${transport}` });
    assert.deepEqual(greets, [{ n: 1 }, { n: 2 }, "three"]);
    // socket_id leaves the sender out, on this transport too.
    await backend.trigger("news", "greet", { n: 4 }, { socket_id: a.connection.socket_id });
    await backend.trigger("news", "greet", { n: 5 });
    await eventually(() => greets.length === 4, { what: "the fifth greet" });
    assert.deepEqual(greets[3], { n: 5 });

    const [ca, cb] = await Promise.all([subscribed(a, "private-room"), subscribed(b, "private-room")]);
    const atA = collect(ca, "client-typing");
    const atB = collect(cb, "client-typing");
    assert.equal(ca.trigger("client-typing", { who: "a" }), true);
    await eventually(() => atB.length === 1, { what: `b gets a's client event over ${transport}` });
    assert.deepEqual(atB[0], { who: "a" });
    const secret = collect(cb, "secret");
    await backend.trigger("private-room", "secret", { s: 1 });
    await eventually(() => secret.length === 1, { what: "a triggered private event" });
    assert.equal(atA.length, 0, "a does not get its own client event");
    // Both are counted as the channel's subscribers.
    const info = await (await backend.get({ path: "/channels/private-room", params: { info: "subscription_count" } })).json();
    assert.equal(info.subscription_count, 2);
    a.disconnect();
    b.disconnect();
  });

  test(`${transport}: the server drops the session (a restart); pusher-js reconnects and resubscribes`, async () => {
    const client = await connected(connect(transport), transport);
    const news = await subscribed(client, "restart-news");
    const got = collect(news, "after");
    const before = client.connection.socket_id;
    await server.restart();
    await eventually(() => client.connection.state === "connected" && client.connection.socket_id !== before, {
      timeout: 30000,
      what: `a new ${transport} session after the restart`,
    });
    assert.equal(client.connection.connection.transport.name, transport);
    // pusher-js subscribes again; once the server has it, a trigger arrives.
    await eventually(
      async () => {
        const info = await (await backend.get({ path: "/channels/restart-news" })).json();
        return info.occupied;
      },
      { timeout: 10000, what: "the resubscription" },
    );
    await backend.trigger("restart-news", "after", { n: 1 });
    await eventually(() => got.length === 1, { what: "an event after the reconnect" });
    assert.deepEqual(got, [{ n: 1 }]);
    client.disconnect();
  });
}

test("xhr_streaming: past 256 KiB pusher-js reopens its stream on the same session, and loses nothing", async () => {
  const client = await connected(connect("xhr_streaming"), "xhr_streaming");
  const socketId = client.connection.socket_id;
  const socket = client.connection.connection.transport.socket;
  const firstStream = socket.stream;
  const big = await subscribed(client, "big");
  const got = collect(big, "message");
  // 400 events of 2 KB: past pusher-js's 256 Ki characters three times.
  const pad = "x".repeat(2000);
  for (let n = 0; n < 400; n++) await server.publish("pusher:app1:big", { n, pad });
  await eventually(() => got.length === 400, { timeout: 10000, what: `400 events (got ${got.length})` });
  assert.deepEqual(
    got.map((d) => d.n),
    [...Array(400).keys()],
  );
  assert.notEqual(socket.stream, firstStream, "the stream was reopened");
  assert.equal(client.connection.socket_id, socketId, "on the same session");
  assert.equal(client.connection.state, "connected");
  client.disconnect();
});

test("xhr_polling: an unknown app key is refused with 4001, as over the WebSocket", async () => {
  const stranger = connect("xhr_polling", { key: "no-such-key" });
  const errors = [];
  stranger.connection.bind("error", (e) => errors.push(e));
  await eventually(() => errors.some((e) => e.data?.code === 4001 || e.error?.data?.code === 4001), {
    timeout: 10000,
    what: "error 4001",
  });
  assert.notEqual(stranger.connection.state, "connected");
  stranger.disconnect();
});

test("Chromium: with the WebSocket cut, pusher-js falls back to xhr_streaming by itself", async () => {
  const browser = await launch();
  try {
    const page = await newPage(browser.context);
    // Any WebSocket to /app/{key} is closed at once (a proxy without
    // WebSocket support); the HTTP fallbacks go through.
    await page.routeWebSocket(/\/app\//, (ws) => ws.close());
    // The demo page is served by herald: same origin, no CORS needed.
    await page.goto(`${server.url}/`);
    await page.addScriptTag({ content: readFileSync(path.join(CLIENT_DIR, "node_modules/pusher-js/dist/web/pusher.js"), "utf8") });
    await page.evaluate(
      ({ key, port }) => {
        window.got = [];
        const pusher = new window.Pusher(key, {
          cluster: "local",
          wsHost: "127.0.0.1",
          wsPort: port,
          httpHost: "127.0.0.1",
          httpPort: port,
          forceTLS: false,
          disableStats: true,
        });
        window.pusher = pusher;
        pusher.subscribe("browser-news").bind("greet", (d) => window.got.push(d));
      },
      { key: APP.key, port: server.port },
    );
    await page.waitForFunction(() => window.pusher.connection.state === "connected", null, { timeout: 30000 });
    const transport = await page.evaluate(() => window.pusher.connection.connection.transport.name);
    assert.ok(["xhr_streaming", "xhr_polling"].includes(transport), `fell back to an HTTP transport (${transport})`);
    await eventually(
      async () => (await (await backend.get({ path: "/channels/browser-news" })).json()).occupied,
      { timeout: 10000, what: "the browser's subscription" },
    );
    await backend.trigger("browser-news", "greet", { hello: "browser" });
    await page.waitForFunction(() => window.got.length === 1);
    assert.deepEqual(await page.evaluate(() => window.got), [{ hello: "browser" }]);
    await page.evaluate(() => window.pusher.disconnect());
    assert.deepEqual(page.errors, []);
    await page.close();
  } finally {
    await browser.close();
  }
});
