// The server's own frames for the unit tests: test/fixtures/session.json,
// which crates/herald/tests/client_fixtures.rs replays against the real
// binary (so a reply shape the server changes fails there until the fixture
// follows, and the fake server here then sends the new shape too).

import { readFileSync } from "node:fs";

export const fixture = JSON.parse(readFileSync(new URL("../fixtures/session.json", import.meta.url), "utf8"));

let seq = 0;

// Fills a fixture frame: a value named in `values` (by its key) wins, then
// each placeholder gets a plausible value.
function fill(v, values, key) {
  if (key !== undefined && Object.hasOwn(values, key)) return values[key];
  if (typeof v === "string") {
    if (v === "$string") return `fixture-${key}`;
    if (v === "$number") return 0;
    if (v === "$id") return `${Date.now()}-${++seq}`;
    if (v === "$any") return null;
    return v.replaceAll("{run}", values.run ?? "fixture");
  }
  if (Array.isArray(v)) return v.map((x) => fill(x, values, undefined));
  if (v && typeof v === "object") {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, fill(x, values, k)]));
  }
  return v;
}

function steps() {
  return fixture.conversations.flatMap((c) => c.steps);
}

/** The body of the fixture's first successful reply to command `name`, filled with `values`. */
export function replyBody(name, values = {}) {
  const step = steps().find((s) => name in s.send && s.expect[name === "ping" ? "pong" : name]);
  if (!step) throw new Error(`no ${name} reply in test/fixtures/session.json`);
  return fill(step.expect[name], values, undefined);
}

/** The fixture's error reply to command `name` (the first), as `{code, message}`. */
export function errorBody(name, values = {}) {
  const step = steps().find((s) => name in s.send && s.expect.error);
  if (!step) throw new Error(`no ${name} error in test/fixtures/session.json`);
  return fill(step.expect.error, values, undefined);
}
