// index.d.ts against test/types.ts: tsc (the pinned devDependency, from
// `npm ci`) must accept the documented uses and the @ts-expect-error misuses.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const tsc = path.join(here, "../node_modules/typescript/bin/tsc");

test("index.d.ts type-checks its documented use", () => {
  assert.ok(existsSync(tsc), `no TypeScript at ${tsc}: run npm ci in clients/node`);
  const run = spawnSync(process.execPath, [tsc, "-p", path.join(here, "tsconfig.json")], { encoding: "utf8", timeout: 60_000 });
  assert.equal(run.status, 0, run.stdout + run.stderr);
});
