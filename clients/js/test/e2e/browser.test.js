// The client and the demo page in real headless Chromium against the real
// herald binary: two tabs chat, each transport forced in turn receives
// backend pushes, and a page survives a server crash and restart.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { HeraldServer, CLIENT_DIR } from "../lib/server.js";
import { launch, newPage, FROM_DISK } from "../lib/browser.js";

let server;
let browser;

before(async () => {
  server = new HeraldServer();
  await server.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

// Every wait below is bounded by Playwright's timeout (set per call or the
// context default of 10 s); none is a bare sleep.

async function openDemo(url, query = "") {
  const page = await newPage(browser.context);
  await page.goto(`${url}/${query}`);
  await page.locator("#state[data-state=connected]").waitFor();
  return page;
}

function messageTexts(page) {
  return page.locator("#messages li.msg .text").allTextContents();
}

test("the binary serves this checkout's herald.js, herald.min.js, herald.d.ts and demo", { skip: FROM_DISK && "HERALD_CLIENT_FROM_DISK=1" }, async () => {
  // They are compiled into the binary: a mismatch means HERALD_BIN is stale.
  for (const [route, file, type] of [
    ["/herald.js", "herald.js", "javascript"],
    ["/herald.min.js", "herald.min.js", "javascript"],
    ["/herald.d.ts", "herald.d.ts", "typescript"],
    ["/", "demo/index.html", "text/html"],
  ]) {
    const res = await fetch(`${server.url}${route}`);
    assert.equal(res.status, 200, route);
    assert.match(res.headers.get("content-type"), new RegExp(type), route);
    const served = await res.text();
    assert.ok(served === readFileSync(path.join(CLIENT_DIR, file), "utf8"), `${route} differs from clients/js/${file}: rebuild the herald binary (cargo build -p herald)`);
  }
});

test("two pages chat through the demo", async () => {
  const a = await openDemo(server.url);
  const b = await openDemo(server.url);
  await a.fill("#name", "alice");
  await a.fill("#text", "hello from a");
  await a.press("#text", "Enter");
  await b.locator("#messages li.msg", { hasText: "hello from a" }).waitFor();
  assert.equal(await b.locator("#messages li.msg", { hasText: "hello from a" }).locator(".who").textContent(), "alice");
  await b.fill("#name", "bob");
  await b.fill("#text", "hi alice");
  await b.click("#submit");
  await a.locator("#messages li.msg", { hasText: "hi alice" }).waitFor();
  // Own messages are marked; nothing is shown twice.
  await a.locator("#messages li.msg.mine", { hasText: "hello from a" }).waitFor();
  const texts = await messageTexts(a);
  assert.equal(texts.filter((t) => t === "hello from a").length, 1);
  assert.equal(texts.filter((t) => t === "hi alice").length, 1);
  // The client picked the first transport that works: WebSocket.
  assert.equal(await a.locator("#transport").textContent(), "websocket");
  assert.deepEqual([...a.errors, ...b.errors], []);
  await a.close();
  await b.close();
});

for (const transport of ["websocket", "sse", "stream", "longpoll", "iframe"]) {
  test(`forced ${transport}: the demo receives backend pushes`, async () => {
    const page = await openDemo(server.url, `?transport=${transport}`);
    assert.equal(await page.locator("#transport").textContent(), transport);
    assert.equal(await page.evaluate(() => window.herald.transport), transport);
    const text = `pushed over ${transport}`;
    const published = await server.publish("chat:lobby", { name: "backend", text });
    await page.locator(`#messages li.msg[data-id="${published.id}"]`, { hasText: text }).waitFor();
    // The page can publish over the same session too.
    await page.fill("#text", `sent over ${transport}`);
    await page.press("#text", "Enter");
    await page.locator("#messages li.msg.mine", { hasText: `sent over ${transport}` }).waitFor();
    assert.deepEqual(page.errors, []);
    await page.close();
  });
}

test("latest_on_subscribe in the browser, every transport: the newest message with latest: true, then live ones", async () => {
  // The demo's chat: namespace, plus state: channels with the option.
  const own = new HeraldServer({
    config:
      '[[namespace]]\nprefix = "chat:"\nclient_publish = true\npresence = true\njoin_leave = true\n\n' +
      '[[namespace]]\nprefix = "state:"\nlatest_on_subscribe = true\n',
  });
  await own.start();
  try {
    for (const transport of ["websocket", "sse", "stream", "longpoll", "iframe"]) {
      const channel = `state:browser-${transport}`;
      await own.publish(channel, { v: 1 });
      const newest = await own.publish(channel, { v: "2 </script>" });
      const page = await openDemo(own.url, `?transport=${transport}`);
      assert.equal(await page.evaluate(() => window.herald.transport), transport);
      await page.evaluate((channel) => {
        window.got = [];
        window.herald.subscribe(channel, (m) => window.got.push(m));
      }, channel);
      await page.waitForFunction(() => window.got.length === 1);
      const live = await own.publish(channel, { v: 3 });
      await page.waitForFunction(() => window.got.length === 2);
      assert.deepEqual(await page.evaluate(() => window.got), [
        { channel, id: newest.id, data: { v: "2 </script>" }, latest: true },
        { channel, id: live.id, data: { v: 3 } },
      ], transport);
      assert.deepEqual(page.errors, [], transport);
      await page.close();
    }
    // A plain EventSource on the channel URL: onmessage gets the value like
    // any message (the payload as published: JSON text here); the "latest"
    // event, just before it, names it and moves no lastEventId.
    const channel = "state:eventsource";
    await own.publish(channel, "old");
    const newest = await own.publish(channel, "current");
    const page = await openDemo(own.url);
    await page.evaluate((channel) => {
      window.seen = [];
      const es = new EventSource(`/sub/${channel}`);
      es.onmessage = (e) => window.seen.push(["message", e.data, e.lastEventId]);
      es.addEventListener("latest", (e) => window.seen.push(["latest", JSON.parse(e.data).id, e.lastEventId]));
      window.es = es;
    }, channel);
    await page.waitForFunction(() => window.seen.length === 2);
    const live = await own.publish(channel, "next");
    await page.waitForFunction(() => window.seen.length === 3);
    assert.deepEqual(await page.evaluate(() => window.seen), [
      ["latest", newest.id, ""],
      ["message", '"current"', newest.id],
      ["message", '"next"', live.id],
    ]);
    await page.evaluate(() => window.es.close());
    assert.deepEqual(page.errors, []);
    await page.close();
  } finally {
    await own.stop();
  }
});

test("falls back past a silent WebSocket and a buffered SSE stream to long-poll", async () => {
  const page = await openDemo(server.url);
  // From now on: WebSocket upgrades are accepted but nothing ever arrives
  // (a proxy that swallows frames), and the SSE response never starts (a
  // buffering proxy). The client must give up on each after handshakeTimeout.
  await page.routeWebSocket(/\/connection\/websocket/, () => {});
  await page.route(/\/connection\/sse/, () => {});
  const outcome = await page.evaluate(async () => {
    const { Herald } = await import("/herald.js");
    const client = new Herald(location.origin, { handshakeTimeout: 1000 });
    window.fallbackClient = client;
    const started = performance.now();
    const sub = client.subscribe("fallback", (m) => (window.fallbackGot = m));
    await new Promise((resolve, reject) => {
      sub.on("subscribed", resolve);
      setTimeout(() => reject(new Error(`not subscribed; state ${client.state}`)), 8000);
    });
    return { transport: client.transport, transports: client.transports, elapsed: performance.now() - started };
  });
  assert.deepEqual(outcome.transports, ["websocket", "sse", "longpoll", "iframe"]);
  assert.equal(outcome.transport, "longpoll");
  assert.ok(outcome.elapsed >= 2000, `gave up on two transports after their handshake timeouts (${outcome.elapsed} ms)`);
  const published = await server.publish("fallback", { over: "longpoll" });
  const got = await page.waitForFunction(() => window.fallbackGot, null, { timeout: 10000 });
  assert.deepEqual(await got.jsonValue(), { channel: "fallback", id: published.id, data: { over: "longpoll" } });
  await page.evaluate(() => window.fallbackClient.close());
  assert.deepEqual(page.errors, []);
  await page.close();
});

for (const transport of ["auto", "sse", "longpoll", "iframe"]) {
  test(`server killed and restarted under an open page (${transport}): reconnects, resumes, reports the gap`, async () => {
    const own = new HeraldServer();
    await own.start();
    try {
      const page = await openDemo(own.url, transport === "auto" ? "" : `?transport=${transport}`);
      const expected = transport === "auto" ? "websocket" : transport;
      assert.equal(await page.locator("#transport").textContent(), expected);
      const before = await own.publish("chat:lobby", { name: "backend", text: "before the crash" });
      await page.locator(`#messages li.msg[data-id="${before.id}"]`).waitFor();
      await own.stop("SIGKILL");
      await page.locator("#state[data-state=connecting]").waitFor();
      await own.restart();
      await page.locator("#state[data-state=connected]").waitFor({ timeout: 15000 });
      // The resubscribe named the last id the page had; the new process no
      // longer has it, so the page was told messages may be missing.
      await page.locator("#messages li.note", { hasText: "may be missing" }).waitFor();
      assert.equal(await page.evaluate(() => window.heraldSub.lastId), before.id);
      const after = await own.publish("chat:lobby", { name: "backend", text: "after the restart" });
      await page.locator(`#messages li.msg[data-id="${after.id}"]`).waitFor();
      const texts = await messageTexts(page);
      assert.deepEqual(texts, ["before the crash", "after the restart"]);
      assert.equal(await page.locator("#transport").textContent(), expected);
      assert.deepEqual(page.errors, []);
      await page.close();
    } finally {
      await own.stop();
    }
  });
}
