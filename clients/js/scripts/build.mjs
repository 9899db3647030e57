// Builds the published and served forms of herald.js, the one source:
//   dist/herald.cjs     CommonJS, for `require("@heraldpush/client")`
//   dist/herald.d.cts   the declarations for it (herald.d.ts, unchanged)
//   herald.min.js       the minified ES module Herald serves at /herald.min.js
//                       (committed: crates/herald-server embeds it)
// With esbuild pinned in devDependencies the output is the same byte for byte
// on every machine, so `--check` (run by test/run.sh) fails when the
// committed herald.min.js was not rebuilt after herald.js changed.
//
//   node scripts/build.mjs           write all three
//   node scripts/build.mjs --check   write dist/, compare herald.min.js

import { build } from "esbuild";
import { mkdirSync, readFileSync, writeFileSync, copyFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const at = (p) => path.join(root, p);
const { version } = JSON.parse(readFileSync(at("package.json"), "utf8"));
const banner = `// @heraldpush/client ${version}: built from herald.js by scripts/build.mjs; do not edit.`;

async function bundle(options) {
  const out = await build({
    entryPoints: [at("herald.js")],
    bundle: false,
    write: false,
    platform: "neutral",
    target: "es2020",
    legalComments: "none",
    banner: { js: banner },
    logLevel: "error",
    ...options,
  });
  return out.outputFiles[0].text;
}

export async function buildAll() {
  return {
    cjs: await bundle({ format: "cjs" }),
    min: await bundle({ format: "esm", minify: true }),
  };
}

const check = process.argv.includes("--check");
const { cjs, min } = await buildAll();
mkdirSync(at("dist"), { recursive: true });
writeFileSync(at("dist/herald.cjs"), cjs);
copyFileSync(at("herald.d.ts"), at("dist/herald.d.cts"));
if (check) {
  let committed = "";
  try {
    committed = readFileSync(at("herald.min.js"), "utf8");
  } catch {
    // missing: reported below
  }
  if (committed !== min) {
    console.error("herald.min.js is not the build of herald.js: run `npm run build` in clients/js and commit herald.min.js");
    process.exit(1);
  }
  console.log("build: dist/ written, herald.min.js up to date");
} else {
  writeFileSync(at("herald.min.js"), min);
  console.log("build: dist/herald.cjs, dist/herald.d.cts, herald.min.js");
}
