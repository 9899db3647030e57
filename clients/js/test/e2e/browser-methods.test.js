// presence, history, rpc, ready() and token refresh in real headless
// Chromium (the client as the binary serves it, /herald.js and
// /herald.min.js) over every browser transport, against the real binary
// with a real rpc hook; and the demo behind a path prefix, showing who is online.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { HeraldServer } from "../lib/server.js";
import { launch, newPage } from "../lib/browser.js";
import { config, mintToken, startHook } from "../lib/backend.js";
import { startPrefixProxy } from "../lib/prefix-proxy.js";

let server;
let hook;
let browser;

before(async () => {
  hook = await startHook();
  server = new HeraldServer({ config: config(hook.url) });
  await server.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await hook?.close();
});

const TRANSPORTS = ["websocket", "sse", "longpoll", "iframe"];

async function openPage() {
  const page = await newPage(browser.context);
  await page.exposeFunction("mint", (ttl) => mintToken({ sub: "ann", ttl, info: { name: "Ann" } }));
  await page.goto(`${server.url}/health`);
  return page;
}

for (const file of ["/herald.js", "/herald.min.js"]) {
  test(`${file} in Chromium, every transport: ready, presence, history with limit, rpc`, async () => {
    const page = await openPage();
    const results = await page.evaluate(
      async ({ file, transports }) => {
        const { Herald } = await import(file);
        const out = {};
        for (const transport of transports) {
          const room = `room:b-${transport}-${file.length}`;
          const c = new Herald(location.origin, { transports: [transport], token: () => window.mint(600) });
          const info = await c.ready({ timeout: 8000 });
          await new Promise((resolve, reject) => {
            const sub = c.subscribe(room);
            sub.on("subscribed", resolve);
            sub.on("error", reject);
          });
          const presence = await c.presence(room);
          const chat = `chat:b-${transport}-${file.length}`;
          for (let n = 0; n < 4; n++) await c.publish(chat, { n });
          const page = await c.history(chat, { since: "earliest", limit: 3 });
          const newest = await c.history(chat, { limit: 1 });
          const rpc = await c.rpc("sum", { a: 2 });
          const failed = await c.rpc("fail").then(
            () => null,
            (e) => e.code,
          );
          out[transport] = {
            transport: c.transport,
            user: info.user,
            presence,
            page: page.messages.map((m) => m.data.n),
            newest: newest.messages.map((m) => m.data.n),
            rpc,
            failed,
          };
          c.close();
        }
        return out;
      },
      { file, transports: TRANSPORTS },
    );
    for (const transport of TRANSPORTS) {
      const r = results[transport];
      assert.equal(r.transport, transport);
      assert.equal(r.user, "ann");
      assert.deepEqual(r.presence.users, [{ user: "ann", connections: 1, info: { name: "Ann" } }], transport);
      assert.deepEqual(r.page, [0, 1, 2]);
      assert.deepEqual(r.newest, [3]);
      assert.deepEqual(r.rpc, { method: "sum", params: { a: 2 }, user: "ann" });
      assert.equal(r.failed, "rpc_error");
    }
    assert.deepEqual(page.errors, []);
    await page.close();
  });
}

test("Chromium, every transport at once: a 3 s token expires three times during one connection, nothing lost", async () => {
  const page = await openPage();
  await page.evaluate(async (transports) => {
    const { Herald } = await import("/herald.js");
    window.runs = {};
    await Promise.all(
      transports.map(async (transport) => {
        const run = { got: [], refreshes: 0, disconnects: [], minted: 0 };
        window.runs[transport] = run;
        const c = new Herald(location.origin, {
          transports: [transport],
          token: () => {
            run.minted++;
            return window.mint(3);
          },
        });
        c.on("refresh", () => run.refreshes++);
        c.on("disconnect", (d) => run.disconnects.push(d));
        await new Promise((resolve) => c.subscribe(`news-b-${transport}`, (m) => run.got.push(m.data)).on("subscribed", resolve));
        const info = await c.ready();
        run.client = info.client;
        run.expiresAt = info.expiresAt;
        run.c = c;
      }),
    );
    for (const t of transports) window.runs[t].ready = true;
  }, TRANSPORTS);
  const firstExp = Math.max(...(await page.evaluate(() => Object.values(window.runs).map((r) => r.expiresAt))));
  const sent = [];
  while (Date.now() < firstExp * 1000 + 6500) {
    const n = sent.length;
    sent.push(n);
    await Promise.all(TRANSPORTS.map((t) => server.publish(`news-b-${t}`, n)));
    await new Promise((r) => setTimeout(r, 150));
  }
  const deadline = Date.now() + 5000;
  let runs;
  for (;;) {
    runs = await page.evaluate(() =>
      Object.fromEntries(
        Object.entries(window.runs).map(([t, r]) => [t, { ...r, c: undefined, now: r.c.clientId, exp: r.c.expiresAt }]),
      ),
    );
    if (Object.values(runs).every((r) => r.got.length === sent.length) || Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  for (const t of TRANSPORTS) {
    const r = runs[t];
    assert.deepEqual(r.got, sent, `${t}: every message once, in order`);
    assert.deepEqual(r.disconnects, [], `${t}: no disconnect`);
    assert.equal(r.now, r.client, `${t}: the same connection`);
    assert.ok(r.refreshes >= 3, `${t}: ${r.refreshes} refreshes`);
    assert.ok(r.exp > r.expiresAt + 6, `${t}: a token three lifetimes newer`);
  }
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("the demo behind a path prefix connects and shows who is online", async () => {
  const proxy = await startPrefixProxy(server.url, "/push");
  try {
    const a = await newPage(browser.context);
    await a.goto(proxy.url);
    await a.locator("#state[data-state=connected]").waitFor();
    assert.equal(await a.evaluate(() => window.herald.url), proxy.url.replace(/\/$/, ""));
    await a.locator("#online", { hasText: "1 online" }).waitFor();
    const b = await newPage(browser.context);
    await b.goto(proxy.url);
    await b.locator("#state[data-state=connected]").waitFor();
    await a.locator("#online", { hasText: "2 online" }).waitFor();
    await b.locator("#online", { hasText: "2 online" }).waitFor();
    await a.locator("#who", { hasText: "2 anonymous" }).waitFor();
    // An HTTP transport through the prefix too (its POSTs and polls).
    const c = await newPage(browser.context);
    await c.goto(`${proxy.url}?transport=longpoll`);
    await c.locator("#state[data-state=connected]").waitFor();
    assert.equal(await c.locator("#transport").textContent(), "longpoll");
    await a.locator("#online", { hasText: "3 online" }).waitFor();
    await a.fill("#text", "behind a prefix");
    await a.press("#text", "Enter");
    await b.locator("#messages li.msg", { hasText: "behind a prefix" }).waitFor();
    await c.locator("#messages li.msg", { hasText: "behind a prefix" }).waitFor();
    // A page that leaves is gone from the others' count (its WebSocket closed).
    await b.close();
    await a.locator("#online", { hasText: "2 online" }).waitFor();
    assert.deepEqual([...a.errors, ...c.errors], []);
    await c.close();
    assert.deepEqual(a.errors, []);
    await a.close();
  } finally {
    await proxy.close();
  }
});
