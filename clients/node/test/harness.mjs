// The real herald binary on a free port, a subscriber over NDJSON and a
// webhook receiver, for the tests. HERALD_BIN names the binary (default
// target/debug/herald under the repository root); the address is read from
// the "herald listening on http://ADDR" line of its stdout, within START_WAIT.

import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import http from "node:http";
import { networkInterfaces, tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const START_WAIT = 10_000;
export const WAIT = 5_000;
export const API_KEY = "backend-libs-test-key";
export const HMAC_SECRET = "backend-libs-hmac-secret-0123456789abcdef";
export const WEBHOOK_SECRET = "backend-libs-webhook-secret";

function heraldBin() {
  const given = process.env.HERALD_BIN;
  return given ? path.resolve(ROOT, given) : path.join(ROOT, "target/debug/herald");
}

/** A herald process with the test configuration. */
export async function startServer(webhookUrl, { apiKey = API_KEY, listen = "127.0.0.1:0" } = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), "herald-node-"));
  const config = path.join(dir, "herald.toml");
  let text = `listen = "${listen}"
presence_grace = "1s"
drain_delay = "0s"
drain_window = "0s"
shutdown_grace = "1s"
`;
  if (apiKey !== null) text += `api_key = "${apiKey}"\n`;
  text += `
[auth]
hmac_secret = "${HMAC_SECRET}"

[[namespace]]
prefix = "room:"
presence = true

[[namespace]]
prefix = "private:"
private = true
`;
  if (webhookUrl) {
    text += `
[webhooks]
url = "${webhookUrl}"
secret = "${WEBHOOK_SECRET}"
timeout = "1s"
max_attempts = 3
`;
  }
  writeFileSync(config, text);
  const proc = spawn(heraldBin(), ["serve", "--config", config], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, HERALD_LOG: "warn" },
  });
  let stderr = "";
  proc.stderr.on("data", (d) => (stderr = (stderr + d).slice(-2000)));
  const url = await new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => fail(`herald did not say where it listens within ${START_WAIT} ms`), START_WAIT);
    function fail(why) {
      clearTimeout(timer);
      proc.kill("SIGKILL");
      reject(new Error(`${why}: ${stderr}`));
    }
    proc.on("error", (e) => fail(`cannot start ${heraldBin()} (cargo build -p herald, or set HERALD_BIN): ${e.message}`));
    proc.on("exit", (code) => fail(`herald exited (${code})`));
    proc.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/^herald listening on (http:\/\/\S+)$/m);
      if (m) {
        clearTimeout(timer);
        proc.removeAllListeners("exit");
        resolve(m[1]);
      }
    });
  });
  const { hostname, port } = new URL(url);
  return {
    url,
    host: hostname,
    port: Number(port),
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        const gone = new Promise((r) => proc.once("exit", r));
        proc.kill("SIGTERM");
        const timer = setTimeout(() => proc.kill("SIGKILL"), 5000);
        await gone;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** This machine's IPv4 address on a non-loopback interface, or null. */
export function outsideAddress() {
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === "IPv4" && !a.internal) return a.address;
  }
  return null;
}

/** A plain client GET (no library): {status, body}. */
export async function get(server, pathAndQuery, headers = {}) {
  const answer = await fetch(server.url + pathAndQuery, { headers, signal: AbortSignal.timeout(WAIT) });
  return { status: answer.status, body: await answer.json() };
}

/** A subscriber on GET /sub/{channel} as NDJSON; next() is the next envelope within WAIT. */
export function stream(server, channel, token) {
  return new Promise((resolve, reject) => {
    const headers = { Accept: "application/x-ndjson" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const req = http.get({ host: server.host, port: server.port, path: `/sub/${channel}`, headers }, (res) => {
      if (res.statusCode !== 200) {
        reject(new Error(`subscribe ${channel}: ${res.statusCode}`));
        res.resume();
        return;
      }
      res.setEncoding("utf8");
      let buf = "";
      const lines = [];
      const waiters = [];
      let ended = false;
      const pump = () => {
        while (waiters.length && (lines.length || ended)) {
          const w = waiters.shift();
          clearTimeout(w.timer);
          if (lines.length) w.resolve(lines.shift());
          else w.reject(new Error("the stream ended"));
        }
      };
      res.on("data", (d) => {
        buf += d;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i).trim();
          buf = buf.slice(i + 1);
          if (line) lines.push(JSON.parse(line));
        }
        pump();
      });
      res.on("end", () => ((ended = true), pump()));
      res.on("error", () => ((ended = true), pump()));
      resolve({
        next() {
          return new Promise((res2, rej2) => {
            const w = { resolve: res2, reject: rej2 };
            w.timer = setTimeout(() => {
              waiters.splice(waiters.indexOf(w), 1);
              rej2(new Error(`no line on ${channel} within ${WAIT} ms`));
            }, WAIT);
            waiters.push(w);
            pump();
          });
        },
        close() {
          req.destroy();
        },
      });
    });
    req.on("error", reject);
    req.setTimeout(WAIT * 4, () => req.destroy());
  });
}

/** A webhook receiver on a free loopback port: keeps each request's headers and raw body, answers 204. */
export async function startReceiver() {
  const requests = [];
  const waiters = [];
  const server = http.createServer((req, res) => {
    if (req.method !== "POST") {
      res.writeHead(501, { "Content-Type": "text/html" }).end("<h1>not implemented</h1>");
      return;
    }
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      requests.push({ headers: req.headers, body: Buffer.concat(chunks) });
      res.writeHead(204).end();
      for (const w of [...waiters]) w();
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const base = `http://127.0.0.1:${server.address().port}`;
  return {
    base,
    url: `${base}/herald/events`,
    /** The first request holding an event for which wanted(event) holds, within WAIT. */
    until(wanted) {
      return new Promise((resolve, reject) => {
        let seen = 0;
        const check = () => {
          for (; seen < requests.length; seen++) {
            const r = requests[seen];
            if (JSON.parse(r.body).events.some(wanted)) {
              done();
              resolve(r);
              return;
            }
          }
        };
        const timer = setTimeout(() => {
          done();
          const names = requests.flatMap((r) => JSON.parse(r.body).events.map((e) => e.event));
          reject(new Error(`no such webhook within ${WAIT} ms; saw ${names}`));
        }, WAIT);
        const done = () => {
          clearTimeout(timer);
          waiters.splice(waiters.indexOf(check), 1);
        };
        waiters.push(check);
        check();
      });
    },
    stop() {
      server.closeAllConnections();
      return new Promise((r) => server.close(r));
    },
  };
}

/** check()'s value once it stops throwing, polling for at most `wait` ms. */
export async function eventually(check, what, wait = WAIT) {
  const deadline = Date.now() + wait;
  for (;;) {
    try {
      return await check();
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`${what}: not within ${wait} ms: ${e.message}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
