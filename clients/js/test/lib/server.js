// Starts the real herald binary for end-to-end tests: on port 0 the first
// time, on the same port after a restart, and reads the "herald listening
// on http://HOST:PORT" line from its stdout (bounded wait).

import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const CLIENT_DIR = path.resolve(here, "../..");
export const HERALD_BIN = process.env.HERALD_BIN
  ? path.resolve(CLIENT_DIR, process.env.HERALD_BIN)
  : path.resolve(CLIENT_DIR, "../../target/debug/herald");

// Servers still running when this process exits (a test that threw before
// its cleanup) are killed with it rather than left behind.
const live = new Set();
process.on("exit", () => {
  for (const proc of live) proc.kill("SIGKILL");
});

export class HeraldServer {
  /** @param {{config?: string}} options  config: TOML text for --config */
  constructor({ config } = {}) {
    this.port = 0;
    this.proc = null;
    this.output = "";
    this.configPath = null;
    if (config) {
      const dir = mkdtempSync(path.join(tmpdir(), "herald-e2e-"));
      this.configPath = path.join(dir, "herald.toml");
      writeFileSync(this.configPath, config);
    }
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start({ timeout = 10000 } = {}) {
    const args = ["serve", "--listen", `127.0.0.1:${this.port}`];
    if (this.configPath) args.push("--config", this.configPath);
    const proc = spawn(HERALD_BIN, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, NO_COLOR: "1" } });
    this.proc = proc;
    live.add(proc);
    const exited = new Promise((resolve) =>
      proc.once("exit", (code, signal) => {
        live.delete(proc);
        resolve({ code, signal });
      }),
    );
    this.exited = exited;
    let resolveUrl;
    const listening = new Promise((resolve) => (resolveUrl = resolve));
    let pending = "";
    const onData = (chunk) => {
      const text = chunk.toString();
      this.output = (this.output + text).slice(-20000);
      pending += text;
      const m = /herald listening on http:\/\/([\d.]+):(\d+)/.exec(pending);
      if (m) resolveUrl(Number(m[2]));
    };
    proc.stdout.on("data", onData);
    proc.stderr.on("data", (c) => (this.output = (this.output + c.toString()).slice(-20000)));
    let timer;
    const result = await Promise.race([
      listening,
      exited.then(({ code, signal }) => {
        throw new Error(`herald exited (code ${code}, signal ${signal}) before listening:\n${this.output}`);
      }),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`herald did not report listening within ${timeout} ms:\n${this.output}`)), timeout);
      }),
    ]).finally(() => clearTimeout(timer));
    this.port = result;
    return this.url;
  }

  /** Stops the server: SIGKILL by default (a crash: history is lost, no goodbye frames). */
  async stop(signal = "SIGKILL", { timeout = 10000 } = {}) {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill(signal);
    let timer;
    await Promise.race([
      this.exited,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`herald did not exit within ${timeout} ms after ${signal}`)), timeout);
      }),
    ]).finally(() => clearTimeout(timer));
  }

  /** Restarts on the same port (retrying briefly if the port is not free yet). */
  async restart({ timeout = 10000 } = {}) {
    await this.stop();
    const deadline = Date.now() + timeout;
    for (;;) {
      try {
        return await this.start({ timeout });
      } catch (error) {
        if (Date.now() > deadline) throw error;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  /** Publishes as the backend: POST /pub/{channel} with a JSON body (loopback needs no key). */
  async publish(channel, data) {
    const res = await fetch(`${this.url}/pub/${encodeURIComponent(channel)}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(data),
    });
    const body = await res.json();
    if (!res.ok) throw new Error(`POST /pub/${channel} answered ${res.status}: ${JSON.stringify(body)}`);
    return body;
  }
}
