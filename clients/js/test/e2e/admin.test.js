// The admin page (/admin) in real headless Chromium against the real herald
// binary started with an API key: it loads without console errors, its
// counts follow clients connecting and leaving, its publish form reaches a
// subscriber, its inspector shows history and subscribers, and "disconnect
// user" closes the user's connection. Clients are Node WebSockets (`ws`).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { HeraldServer } from "../lib/server.js";
import { launch } from "../lib/browser.js";
import { eventually } from "../lib/wait.js";

const KEY = "admin-e2e-key";
let server;
let browser;
let page;
const consoleErrors = [];
const pageErrors = [];

before(async () => {
  server = new HeraldServer({ config: `api_key = "${KEY}"\n` });
  await server.start();
  browser = await launch();
  page = await browser.context.newPage();
  page.on("console", (msg) => {
    if (msg.type() === "error") consoleErrors.push(msg.text());
  });
  page.on("pageerror", (error) => pageErrors.push(error.message));
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** A WebSocket on the channel URL, open (bounded wait). */
async function subscribe(channel, headers = {}) {
  const url = `${server.url.replace("http", "ws")}/sub/${encodeURIComponent(channel)}`;
  const ws = new WebSocket(url, { headers });
  ws.received = [];
  ws.on("message", (data) => ws.received.push(JSON.parse(data.toString())));
  ws.closed = new Promise((resolve) => ws.once("close", (code, reason) => resolve({ code, reason: reason.toString() })));
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`WebSocket to ${channel} did not open`)), 5000);
    ws.once("open", () => (clearTimeout(timer), resolve()));
    ws.once("error", (e) => (clearTimeout(timer), reject(e)));
  });
  return ws;
}

async function number(selector) {
  return Number(await page.locator(selector).textContent());
}

// The page polls /api/stats every 2 s: waits allow a few rounds.
const POLLED = { timeout: 10000, interval: 100 };

test("the page is served on the backend side with its security headers", async () => {
  const res = await fetch(`${server.url}/admin`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type"), /text\/html/);
  assert.match(res.headers.get("content-security-policy"), /frame-ancestors 'none'/);
  // The page is public; its data is not.
  assert.equal((await fetch(`${server.url}/api/stats`)).status, 401);
});

test("the page loads, takes the key and shows live counts", async () => {
  await page.goto(`${server.url}/admin`);
  await page.fill("#key", KEY);
  await page.click("#connect");
  await page.locator("#status", { hasText: "connected" }).waitFor();
  const before = await number("#t-websocket");
  const totalBefore = await number("#conn-total");

  const a = await subscribe("admin-e2e-count");
  const b = await subscribe("admin-e2e-count");
  await eventually(async () => (await number("#t-websocket")) === before + 2, { ...POLLED, what: "websocket count +2" });
  assert.ok((await number("#conn-total")) >= totalBefore + 2);
  await page.locator("#top-channels tr", { hasText: "admin-e2e-count" }).locator("td.n", { hasText: /^2$/ }).waitFor();

  a.close();
  b.close();
  await eventually(async () => (await number("#t-websocket")) === before, { ...POLLED, what: "websocket count back" });
  // The key stays in this tab only: a reload carries on without asking.
  assert.equal(await page.evaluate(() => sessionStorage.getItem("herald_admin_key")), KEY);
  assert.deepEqual(pageErrors, []);
  assert.deepEqual(consoleErrors, []);
});

test("the publish form delivers to a subscriber, the inspector shows it", async () => {
  const ws = await subscribe("admin-e2e-pub");
  const publishedBefore = await number("#published");
  await page.fill("#pub-channel", "admin-e2e-pub");
  await page.fill("#pub-data", '{"text": "from the admin page"}');
  await page.click("#publish");
  await page.locator("#pub-result", { hasText: "published" }).waitFor();
  await eventually(() => ws.received.find((m) => m.data?.text === "from the admin page"), { what: "the message at the subscriber" });
  const msg = ws.received.find((m) => m.data?.text === "from the admin page");
  assert.equal(msg.channel, "admin-e2e-pub");
  assert.match(await page.locator("#pub-result").textContent(), /to 1 subscribers/);
  await eventually(async () => (await number("#published")) > publishedBefore, { ...POLLED, what: "published counter" });

  // Text, not JSON.
  await page.uncheck("#pub-json");
  await page.fill("#pub-data", "plain <b>text</b>");
  await page.click("#publish");
  await eventually(() => ws.received.find((m) => m.data === "plain <b>text</b>"), { what: "the text message" });

  await page.fill("#inspect-channel", "admin-e2e-pub");
  await page.click("#inspect");
  await page.locator("#i-history", { hasText: "from the admin page" }).waitFor();
  assert.match(await page.locator("#i-history").textContent(), /plain <b>text<\/b>/);
  assert.equal(await page.locator("#i-history b").count(), 0, "payloads are shown as text, not HTML");
  assert.equal(await number("#i-subscribers"), 1);
  assert.equal(await number("#i-messages"), 2);
  assert.match(await page.locator("#i-presence").textContent(), /connections|off/);
  ws.close();
  assert.deepEqual(pageErrors, []);
  assert.deepEqual(consoleErrors, []);
});

test("disconnect user closes the user's connections with 4006", async () => {
  const res = await fetch(`${server.url}/api/tokens`, {
    method: "POST",
    headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ user: "admin-e2e-user" }),
  });
  assert.equal(res.status, 201);
  const { token } = await res.json();
  const ws = await subscribe("admin-e2e-dis", { Authorization: `Bearer ${token}` });
  await page.fill("#dis-user", "admin-e2e-user");
  await page.click("#disconnect");
  await page.locator("#dis-result", { hasText: "disconnected user admin-e2e-user" }).waitFor();
  let timer;
  const closed = await Promise.race([
    ws.closed,
    new Promise((_, reject) => (timer = setTimeout(() => reject(new Error("not disconnected")), 5000))),
  ]).finally(() => clearTimeout(timer));
  assert.equal(closed.code, 4006);
  assert.deepEqual(pageErrors, []);
  assert.deepEqual(consoleErrors, []);
});

test("the mailbox view shows what a user has not acknowledged", async () => {
  const post = (path, body) =>
    fetch(`${server.url}${path}`, {
      method: "POST",
      headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  for (const n of [1, 2]) {
    const res = await post("/api/users/admin-e2e-mb/publish", { data: { n }, ack: true });
    assert.equal(res.status, 201);
  }
  const first = await (await fetch(`${server.url}/api/users/admin-e2e-mb/mailbox`, { headers: { Authorization: `Bearer ${KEY}` } })).json();
  await page.fill("#mb-user", "admin-e2e-mb");
  await page.click("#mailbox");
  await page.locator("#mb-result", { hasText: `admin-e2e-mb: 2 pending, oldest ${first.oldest_id}` }).waitFor();
  assert.deepEqual(pageErrors, []);
  assert.deepEqual(consoleErrors, []);
});

test("a wrong key is refused and stops the polling", async () => {
  const other = await browser.context.newPage();
  await other.goto(`${server.url}/admin`);
  await other.fill("#key", "not-the-key");
  await other.click("#connect");
  await other.locator("#status", { hasText: "key refused" }).waitFor();
  await other.close();
});
