// Acknowledged user mailboxes with the real client in real headless
// Chromium against the real herald binary: a page that acknowledges
// empties the mailbox for every tab; a page that crashes (reloads) before
// acknowledging gets the message again, with its id, on the next load; a
// message acknowledged never comes back.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { HeraldServer } from "../lib/server.js";
import { launch, newPage } from "../lib/browser.js";
import { eventually } from "../lib/wait.js";

const KEY = "mailbox-e2e-key";
const CONFIG = `api_key = "${KEY}"

[auth]
hmac_secret = "mailbox-e2e-secret-of-at-least-32-bytes"

[[namespace]]
prefix = "user:"
ack = true
`;

let server;
let browser;

before(async () => {
  server = new HeraldServer({ config: CONFIG });
  await server.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

async function backend(method, path, body) {
  const res = await fetch(`${server.url}${path}`, {
    method,
    headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json();
  if (!res.ok) throw new Error(`${method} ${path} answered ${res.status}: ${JSON.stringify(json)}`);
  return json;
}

const tokenFor = async (user) => (await backend("POST", "/api/tokens", { user, ttl: 600 })).token;
const sendTo = (user, data) => backend("POST", `/api/users/${user}/publish`, { data });
const pending = async (user) => (await backend("GET", `/api/users/${user}/mailbox`)).pending;

/**
 * A page on the server's origin whose client follows `user:{user}` and
 * records every message in `window.got`. `manualAck`: it never
 * acknowledges on its own (a page that dies first).
 */
async function openPage(user, token, { manualAck = false } = {}) {
  const page = await newPage(browser.context);
  await page.goto(`${server.url}/health`);
  await page.evaluate(
    async ({ user, token, manualAck }) => {
      const { Herald } = await import("/herald.js");
      window.got = [];
      const client = new Herald(location.origin, { token, manualAck });
      window.client = client;
      const sub = client.subscribe(`user:${user}`, (m) => {
        window.got.push({ id: m.id, data: m.data, ack: typeof m.ack });
      });
      await new Promise((resolve, reject) => {
        sub.on("subscribed", resolve);
        setTimeout(() => reject(new Error(`not subscribed; state ${client.state}`)), 8000);
      });
    },
    { user, token, manualAck },
  );
  return page;
}

const received = (page) => page.evaluate(() => window.got);

test("a page that acknowledges empties the mailbox for every tab", async () => {
  const user = `ann-${Date.now()}`;
  const token = await tokenFor(user);
  const a = await openPage(user, token);
  const b = await openPage(user, token, { manualAck: true });
  const sent = await sendTo(user, { text: "to both tabs" });
  assert.equal(sent.ack, true);
  for (const page of [a, b]) {
    await eventually(async () => (await received(page)).length === 1, { what: "the message in each tab" });
    assert.deepEqual(await received(page), [{ id: sent.id, data: { text: "to both tabs" }, ack: "function" }]);
  }
  // Tab a acknowledged when its callback returned: gone for b too.
  await eventually(async () => (await pending(user)) === 0, { what: "the mailbox to empty" });
  // A third tab gets nothing old: its first message is a new one.
  const c = await openPage(user, token);
  const next = await sendTo(user, { text: "later" });
  await eventually(async () => (await received(c)).length === 1, { what: "the new message" });
  assert.deepEqual((await received(c)).map((m) => m.id), [next.id]);
  for (const page of [a, b, c]) {
    assert.deepEqual(page.errors, []);
    await page.close();
  }
});

test("a page that crashes before acknowledging gets the message again on reload", async () => {
  const user = `bob-${Date.now()}`;
  const token = await tokenFor(user);
  const crashing = await openPage(user, token, { manualAck: true });
  const sent = await sendTo(user, { text: "do not lose me" });
  await eventually(async () => (await received(crashing)).length === 1, { what: "the message before the crash" });
  assert.equal(await pending(user), 1, "not acknowledged");
  // The page dies (reload) without acknowledging.
  await crashing.reload();
  await crashing.close();

  // Offline meanwhile: one more, which waits in the mailbox too.
  const meanwhile = await sendTo(user, { text: "while away" });
  const back = await openPage(user, token, { manualAck: true });
  await eventually(async () => (await received(back)).length === 2, { what: "both messages after the reload" });
  assert.deepEqual(
    (await received(back)).map((m) => [m.id, m.data.text]),
    [
      [sent.id, "do not lose me"],
      [meanwhile.id, "while away"],
    ],
    "again, in order, with the original ids",
  );
  // Now it acknowledges them by hand.
  const acked = await back.evaluate((ids) => window.client.ack(ids), [sent.id, meanwhile.id]);
  assert.deepEqual(acked, { removed: 2, pending: 0 });
  await back.close();

  // Acknowledged: the next load gets nothing old.
  const again = await openPage(user, token);
  const fresh = await sendTo(user, { text: "fresh" });
  await eventually(async () => (await received(again)).length === 1, { what: "the fresh message" });
  assert.deepEqual((await received(again)).map((m) => m.id), [fresh.id]);
  await eventually(async () => (await pending(user)) === 0, { what: "the fresh one acknowledged on return" });
  assert.deepEqual(again.errors, []);
  await again.close();
});
