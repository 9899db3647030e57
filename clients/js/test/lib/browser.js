// Headless Chromium for end-to-end tests: Debian's /usr/bin/chromium (or
// CHROMIUM_BIN) driven by playwright-core, with a fresh temporary profile.

import { chromium } from "playwright-core";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { CLIENT_DIR } from "./server.js";

/**
 * HERALD_CLIENT_FROM_DISK=1 serves /herald.js, /herald.min.js and the demo from this
 * checkout instead of the copies compiled into the binary: for iterating on
 * the client without rebuilding the server. CI leaves it unset.
 */
export const FROM_DISK = process.env.HERALD_CLIENT_FROM_DISK === "1";

export const CHROMIUM_BIN = process.env.CHROMIUM_BIN || "/usr/bin/chromium";

const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** A persistent context on a throwaway profile directory; `close()` removes it. */
export async function launch() {
  const profile = mkdtempSync(path.join(tmpdir(), "herald-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM_BIN,
    headless: true,
    // A document fulfilled by Playwright has no known address space, so
    // Chromium's Local Network Access checks would block its WebSocket to
    // 127.0.0.1; only the from-disk mode needs them off.
    args: FROM_DISK ? [...ARGS, "--disable-features=LocalNetworkAccessChecks"] : ARGS,
    timeout: 30000,
  });
  context.setDefaultTimeout(10000);
  if (FROM_DISK) {
    const files = { "/herald.js": "herald.js", "/herald.min.js": "herald.min.js", "/": "demo/index.html" };
    await context.route(
      (url) => Object.hasOwn(files, url.pathname),
      (route) => {
        const file = files[new URL(route.request().url()).pathname];
        route.fulfill({
          status: 200,
          contentType: file.endsWith(".js") ? "application/javascript; charset=utf-8" : "text/html; charset=utf-8",
          body: readFileSync(path.join(CLIENT_DIR, file), "utf8"),
        });
      },
    );
  }
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** A new page that records uncaught page errors in `page.errors`. */
export async function newPage(context) {
  const page = await context.newPage();
  page.errors = [];
  page.on("pageerror", (error) => page.errors.push(error));
  return page;
}
