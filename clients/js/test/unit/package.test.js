// The package as npm would publish it: both entries of package.json's
// `exports` (import and require) give the same API, and the minified file
// Herald serves is the build of herald.js (test/run.sh runs the build
// first; scripts/build.mjs --check fails when herald.min.js is stale).

import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import * as source from "../../herald.js";

const require = createRequire(import.meta.url);
const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8"));
const names = Object.keys(source).sort();

test("package.json names a free scoped package, its repository and license", () => {
  assert.equal(pkg.name, "@heraldpush/client");
  assert.match(pkg.version, /^\d+\.\d+\.\d+(-[\w.]+)?$/);
  assert.ok(pkg.repository?.url && pkg.repository.directory === "clients/js");
  assert.equal(pkg.license, "MIT");
  const changelog = readFileSync(new URL("../../CHANGELOG.md", import.meta.url), "utf8");
  assert.ok(changelog.includes(`## ${pkg.version}`), `CHANGELOG.md has an entry for ${pkg.version}`);
});

test("import of the package name is the ES module", async () => {
  const esm = await import("@heraldpush/client");
  assert.deepEqual(Object.keys(esm).sort(), names);
  assert.equal(esm.Herald, source.Herald);
});

test("require of the package name is the CommonJS build, with the same API", () => {
  const cjs = require("@heraldpush/client");
  assert.deepEqual(Object.keys(cjs).filter((k) => k !== "__esModule").sort(), names);
  assert.equal(cjs.default, cjs.Herald);
  const c = new cjs.Herald("http://127.0.0.1:9", { autoConnect: false, transports: ["longpoll"] });
  assert.equal(typeof c.presence, "function");
  assert.equal(typeof c.rpc, "function");
  assert.equal(typeof c.ready, "function");
  assert.equal(cjs.compareIds("1-2", "1-10"), -1);
  // A CommonJS project's require resolves through the `require` condition.
  assert.match(require.resolve("@heraldpush/client"), /dist[\\/]herald\.cjs$/);
});

test("herald.min.js is the build of herald.js, and the same module", async () => {
  execFileSync(process.execPath, [new URL("../../scripts/build.mjs", import.meta.url).pathname, "--check"], { stdio: "pipe" });
  const min = await import("../../herald.min.js");
  assert.deepEqual(Object.keys(min).sort(), names);
  assert.equal(min.backoffDelay(3, 100, 10000, () => 1), source.backoffDelay(3, 100, 10000, () => 1));
  assert.ok(readFileSync(new URL("../../herald.min.js", import.meta.url), "utf8").length < readFileSync(new URL("../../herald.js", import.meta.url)).length / 1.5);
});
