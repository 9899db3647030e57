import { test } from "node:test";
import assert from "node:assert/strict";
import { compareIds, isMessageId, backoffDelay, drainDelay, Emitter, Herald, HeraldError } from "../../herald.js";

test("ids compare as two integers, not as text", () => {
  assert.equal(compareIds("1700000000000-9", "1700000000000-10"), -1);
  assert.equal(compareIds("1700000000000-10", "1700000000000-9"), 1);
  assert.equal(compareIds("999-5", "1000-1"), -1);
  assert.equal(compareIds("1000-1", "1000-1"), 0);
  assert.equal(compareIds("01000-01", "1000-1"), 0);
  // beyond 2^53: still exact
  assert.equal(compareIds("1-18446744073709551615", "1-18446744073709551614"), 1);
});

test("non-ids do not compare", () => {
  assert.equal(compareIds("earliest", "1-1"), null);
  assert.equal(compareIds("1-1", undefined), null);
  assert.equal(compareIds("1-", "1-1"), null);
  assert.equal(isMessageId("12-3"), true);
  assert.equal(isMessageId("earliest"), false);
  assert.equal(isMessageId("12-3-4"), false);
});

test("backoff grows exponentially, is jittered and capped", () => {
  assert.equal(backoffDelay(0, 500, 20000, () => 0), 250);
  assert.equal(backoffDelay(0, 500, 20000, () => 1), 500);
  assert.equal(backoffDelay(3, 500, 20000, () => 1), 4000);
  assert.equal(backoffDelay(50, 500, 20000, () => 1), 20000);
  assert.equal(backoffDelay(50, 500, 20000, () => 0), 10000);
  for (let i = 0; i < 100; i++) {
    const d = backoffDelay(2, 500, 20000);
    assert.ok(d >= 1000 && d <= 2000, `${d}`);
  }
});

test("a throwing listener does not stop the others", () => {
  const e = new Emitter();
  const seen = [];
  const original = console.error;
  console.error = () => {};
  try {
    e.on("x", () => {
      throw new Error("boom");
    });
    e.on("x", (v) => seen.push(v));
    e._emit("x", 1);
  } finally {
    console.error = original;
  }
  assert.deepEqual(seen, [1]);
});

test("a client with no usable transport says so", () => {
  assert.throws(
    () => new Herald("http://127.0.0.1:1", { transports: ["iframe"], autoConnect: false }),
    (e) => e instanceof HeraldError && e.code === "no_transport",
  );
  assert.throws(() => new Herald("http://127.0.0.1:1", { transports: ["carrier-pigeon"] }), TypeError);
  assert.throws(() => new Herald("ftp://x", {}), TypeError);
});

test("transports this environment lacks are skipped", () => {
  const c = new Herald("http://127.0.0.1:1/", { autoConnect: false, WebSocket: undefined });
  // Node 20 has no global WebSocket or EventSource: sse runs as NDJSON, iframe needs a page.
  if (typeof globalThis.WebSocket !== "function") assert.deepEqual(c.transports, ["sse", "longpoll"]);
  assert.equal(c.url, "http://127.0.0.1:1");
});

test("drainDelay reads a draining server's delay from a frame or a close reason", () => {
  assert.equal(drainDelay({ code: 1001, delay_ms: 1234 }), 1234);
  assert.equal(drainDelay({ code: 1001, reason: "server shutting down; reconnect in 77 ms" }), 77);
  assert.equal(drainDelay({ code: 1001, reason: "server shutting down" }), undefined);
  assert.equal(drainDelay({ code: 1001, delay_ms: -5 }), undefined);
  assert.equal(drainDelay(null), undefined);
});
