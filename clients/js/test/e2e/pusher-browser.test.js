// Unmodified pusher-js, its web build with encryption
// (dist/web/pusher-with-encryption.js, tweetnacl bundled), in real headless
// Chromium against the real herald binary. The page comes from a small
// "app" server in this test (Herald does not serve pusher-js), on another
// origin that Herald's allowed_origins lets in; that server is also the
// app's auth endpoint, POST /pusher/auth, signing with the `pusher` server
// library (and its encryptionMasterKeyBase64 for encrypted channels), so
// pusher-js's own form-POST authoriser is exercised. Public, private,
// presence, encrypted and cache channels, client events between two pages,
// and reconnection after a dropped WebSocket and after a server crash.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import WebSocket from "ws";
import { HeraldServer, CLIENT_DIR } from "../lib/server.js";
import { launch, newPage } from "../lib/browser.js";
import { APP, APP_CONFIG, backendFor } from "../lib/pusher-suite.js";
import { eventually } from "../lib/wait.js";

const PUSHER_WEB = path.join(CLIENT_DIR, "node_modules/pusher-js/dist/web/pusher-with-encryption.js");
const MASTER_KEY = randomBytes(32).toString("base64");

let server;
let backend;
let browser;
let app;

/** The app's web server: the page, pusher-js, and the auth endpoint. */
function startApp() {
  const script = readFileSync(PUSHER_WEB);
  const page = `<!doctype html><meta charset="utf-8"><title>pusher-js</title><script src="/pusher.js"></script>`;
  const srv = http.createServer((req, res) => {
    if (req.method === "GET" && req.url === "/") {
      res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" }).end(page);
    } else if (req.method === "GET" && req.url === "/pusher.js") {
      res.writeHead(200, { "Content-Type": "application/javascript" }).end(script);
    } else if (req.method === "POST" && req.url === "/pusher/auth") {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        // pusher-js posts socket_id, channel_name and the configured params.
        const form = new URLSearchParams(body);
        const channel = form.get("channel_name");
        const user = form.get("user");
        const member = channel.startsWith("presence-") ? { user_id: user, user_info: { name: `name of ${user}` } } : undefined;
        try {
          const auth = backend.authorizeChannel(form.get("socket_id"), channel, member);
          res.writeHead(200, { "Content-Type": "application/json" }).end(JSON.stringify(auth));
        } catch (error) {
          res.writeHead(403, { "Content-Type": "text/plain" }).end(String(error));
        }
      });
    } else {
      res.writeHead(404).end();
    }
  });
  return new Promise((resolve) =>
    srv.listen(0, "127.0.0.1", () => resolve({ srv, url: `http://127.0.0.1:${srv.address().port}` })),
  );
}

before(async () => {
  app = await startApp();
  server = new HeraldServer({ config: `allowed_origins = ["${app.url}"]\n\n${APP_CONFIG}` });
  await server.start();
  backend = backendFor(server, { encryptionMasterKeyBase64: MASTER_KEY });
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  app?.srv.close();
});

/**
 * A page of the app with a connected pusher-js as `window.pusher`; every
 * event of every channel it follows is recorded in `window.got` as
 * `{channel, event, data}`, and the connection's states in `window.states`.
 * `user` is sent to the auth endpoint (the presence member).
 */
async function openPage(user = "anon") {
  const page = await newPage(browser.context);
  await page.goto(`${app.url}/`);
  await page.evaluate(
    ({ key, port, user }) => {
      window.got = [];
      window.states = [];
      window.errors = [];
      const pusher = new Pusher(key, {
        cluster: "local",
        wsHost: "127.0.0.1",
        wsPort: port,
        forceTLS: false,
        enabledTransports: ["ws"],
        disableStats: true,
        channelAuthorization: { endpoint: "/pusher/auth", params: { user } },
      });
      window.pusher = pusher;
      pusher.connection.bind("state_change", (s) => window.states.push(s.current));
      pusher.connection.bind("error", (e) => window.errors.push(e?.data ?? e?.error?.data ?? null));
      /** Subscribes; resolves once subscription_succeeded, recording every event. */
      window.follow = (name) =>
        new Promise((resolve, reject) => {
          const channel = pusher.subscribe(name);
          channel.bind_global((event, data) => window.got.push({ channel: name, event, data }));
          channel.bind("pusher:subscription_succeeded", () => resolve());
          channel.bind("pusher:subscription_error", (e) => reject(new Error(`subscription_error: ${JSON.stringify(e)}`)));
        });
    },
    { key: APP.key, port: server.port, user },
  );
  await page.waitForFunction(() => window.pusher.connection.state === "connected");
  return page;
}

/** Waits (bounded) until the page has an event `event` on `channel`; answers its data. */
async function received(page, channel, event, { count = 1, timeout = 5000 } = {}) {
  const handle = await page.waitForFunction(
    ({ channel, event, count }) => {
      const hits = window.got.filter((g) => g.channel === channel && g.event === event);
      return hits.length >= count && hits.map((g) => g.data);
    },
    { channel, event, count },
    { timeout },
  );
  return handle.jsonValue();
}

/** A bare WebSocket speaking Pusher's protocol, subscribed to `channel`
 *  with the server library's signature; `frames` is every frame after. */
async function rawSubscriber(channel) {
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}/app/${APP.key}?protocol=7`);
  const frames = [];
  ws.on("message", (text) => frames.push(JSON.parse(text)));
  await eventually(() => frames.some((f) => f.event === "pusher:connection_established"), { what: "connection_established" });
  const { socket_id: socketId } = JSON.parse(frames[0].data);
  const { auth } = backend.authorizeChannel(socketId, channel);
  ws.send(JSON.stringify({ event: "pusher:subscribe", data: { channel, auth } }));
  await eventually(() => frames.some((f) => f.event === "pusher_internal:subscription_succeeded"), { what: "the raw subscription" });
  return { ws, frames };
}

const events = (page, channel, event) =>
  page.evaluate(({ channel, event }) => window.got.filter((g) => g.channel === channel && g.event === event).map((g) => g.data), { channel, event });

test("public and cache channels in the browser: triggers arrive, the cache replays the last one", async () => {
  const page = await openPage();
  await page.evaluate(() => window.follow("b-news"));
  await backend.trigger("b-news", "greet", { n: 1 });
  await backend.triggerBatch([{ channel: "b-news", name: "greet", data: { n: 2 } }]);
  assert.deepEqual(await received(page, "b-news", "greet", { count: 2 }), [{ n: 1 }, { n: 2 }]);

  // The cache channel: a miss first, then the last event for a late subscriber.
  await page.evaluate(() => window.follow("cache-b-scores"));
  await received(page, "cache-b-scores", "pusher:cache_miss");
  await backend.trigger("cache-b-scores", "score", { n: 1 });
  await backend.trigger("cache-b-scores", "score", { n: 2 });
  await received(page, "cache-b-scores", "score", { count: 2 });
  const late = await openPage();
  await late.evaluate(() => window.follow("cache-b-scores"));
  assert.deepEqual(await received(late, "cache-b-scores", "score"), [{ n: 2 }]);
  assert.deepEqual(await events(late, "cache-b-scores", "pusher:cache_miss"), []);
  assert.deepEqual(page.errors, []);
  await page.close();
  await late.close();
});

test("private channel in the browser: pusher-js's auth POST, then client events between two pages", async () => {
  const [a, b] = await Promise.all([openPage("a"), openPage("b")]);
  await Promise.all([a.evaluate(() => window.follow("private-b-room")), b.evaluate(() => window.follow("private-b-room"))]);
  const sent = await a.evaluate(() => window.pusher.channel("private-b-room").trigger("client-typing", { who: "a" }));
  assert.equal(sent, true);
  assert.deepEqual(await received(b, "private-b-room", "client-typing"), [{ who: "a" }]);
  await backend.trigger("private-b-room", "secret", { s: 1 });
  await received(a, "private-b-room", "secret");
  assert.deepEqual(await events(a, "private-b-room", "client-typing"), [], "the sender does not get its own client event");
  await a.close();
  await b.close();
});

test("presence channel in the browser: members, member_added, member_removed when a page closes", async () => {
  const ann = await openPage("ann");
  await ann.evaluate(() => window.follow("presence-b-lobby"));
  const me = await ann.evaluate(() => {
    const members = window.pusher.channel("presence-b-lobby").members;
    return { count: members.count, me: members.me };
  });
  assert.deepEqual(me, { count: 1, me: { id: "ann", info: { name: "name of ann" } } });
  const bob = await openPage("bob");
  await bob.evaluate(() => window.follow("presence-b-lobby"));
  const seen = await bob.evaluate(() => {
    const ids = [];
    window.pusher.channel("presence-b-lobby").members.each((m) => ids.push(m.id));
    return ids.sort();
  });
  assert.deepEqual(seen, ["ann", "bob"]);
  assert.deepEqual(await received(ann, "presence-b-lobby", "pusher:member_added"), [{ id: "bob", info: { name: "name of bob" } }]);
  await bob.close();
  const [gone] = await received(ann, "presence-b-lobby", "pusher:member_removed");
  assert.equal(gone.id, "bob");
  assert.equal(await ann.evaluate(() => window.pusher.channel("presence-b-lobby").members.count), 1);
  await ann.close();
});

test("encrypted channel in the browser: the server library encrypts, pusher-js decrypts, Herald relays ciphertext", async () => {
  const page = await openPage();
  await page.evaluate(() => window.follow("private-encrypted-b-vault"));
  // A bare Pusher-protocol WebSocket on the same channel sees what Herald
  // relays: the server library's {nonce, ciphertext}, never the secret.
  const raw = await rawSubscriber("private-encrypted-b-vault");
  await backend.trigger("private-encrypted-b-vault", "note", { secret: "the eagle lands at noon" });
  assert.deepEqual(await received(page, "private-encrypted-b-vault", "note"), [{ secret: "the eagle lands at noon" }]);
  const frame = await eventually(() => raw.frames.find((f) => f.event === "note"), { what: "the relayed frame" });
  const sealed = JSON.parse(frame.data);
  assert.deepEqual(Object.keys(sealed).sort(), ["ciphertext", "nonce"]);
  assert.ok(!JSON.stringify(raw.frames).includes("eagle"), "Herald never sees the plaintext");
  assert.deepEqual(page.errors, []);
  raw.ws.close();
  await page.close();
});

test("reconnect in the browser: after a dropped WebSocket and after a server crash, pusher-js resubscribes and receives", async () => {
  const page = await openPage("rita");
  await page.evaluate(() => Promise.all([window.follow("b-feed"), window.follow("private-b-feed")]));
  const first = await page.evaluate(() => window.pusher.connection.socket_id);

  // The WebSocket drops under pusher-js (as a network failure would).
  await page.evaluate(() => window.pusher.connection.connection.transport.socket.close());
  const second = await page.waitForFunction(
    (old) => window.pusher.connection.state === "connected" && window.pusher.connection.socket_id !== old && window.pusher.connection.socket_id,
    first,
    { timeout: 10000 },
  );
  const secondId = await second.jsonValue();
  await eventually(
    async () => (await (await backend.get({ path: "/channels/private-b-feed", params: { info: "subscription_count" } })).json()).subscription_count === 1,
    { what: "the page resubscribed to private-b-feed", timeout: 10000 },
  );
  await backend.trigger(["b-feed", "private-b-feed"], "tick", { n: 1 });
  await received(page, "b-feed", "tick");
  await received(page, "private-b-feed", "tick");

  // The server crashes and comes back on the same port.
  await server.restart();
  await page.waitForFunction(
    (old) => window.pusher.connection.state === "connected" && window.pusher.connection.socket_id !== old,
    secondId,
    { timeout: 15000 },
  );
  await eventually(
    async () => (await (await backend.get({ path: "/channels/private-b-feed", params: { info: "subscription_count" } })).json()).subscription_count === 1,
    { what: "the page resubscribed after the restart", timeout: 10000 },
  );
  await backend.trigger(["b-feed", "private-b-feed"], "tick", { n: 2 });
  assert.deepEqual(await received(page, "b-feed", "tick", { count: 2 }), [{ n: 1 }, { n: 2 }]);
  assert.deepEqual(await received(page, "private-b-feed", "tick", { count: 2 }), [{ n: 1 }, { n: 2 }]);
  const states = await page.evaluate(() => window.states);
  assert.ok(states.filter((s) => s === "connected").length >= 3, `states: ${states}`);
  await page.close();
});
