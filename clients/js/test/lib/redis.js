// A throwaway redis-server for end-to-end tests: on a free loopback port,
// no persistence, killed with this process. `startRedis()` answers null
// when redis-server is not on PATH (scripts/test.sh installs it), so a
// suite can skip with a message instead of failing.

import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { eventually } from "./wait.js";

export const REDIS_SERVER = process.env.REDIS_SERVER || "redis-server";

/** Whether redis-server can be run here. */
export function haveRedis() {
  const probe = spawnSync(REDIS_SERVER, ["--version"], { stdio: "ignore" });
  return probe.status === 0;
}

/** A port the OS says is free now (closed again at once). */
function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** Resolves true when the server at `port` answers PING with +PONG. */
function pings(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    let reply = "";
    const done = (ok) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.once("error", () => done(false));
    socket.on("connect", () => socket.write("PING\r\n"));
    socket.on("data", (chunk) => {
      reply += chunk.toString();
      if (reply.includes("\r\n")) done(reply.startsWith("+PONG"));
    });
  });
}

/** Starts redis-server; `{url, port, stop()}`, or null without redis-server. */
export async function startRedis() {
  if (!haveRedis()) return null;
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), "herald-redis-"));
  const args = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir];
  const proc = spawn(REDIS_SERVER, args, { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  proc.stdout.on("data", (c) => (output = (output + c).slice(-4000)));
  proc.stderr.on("data", (c) => (output = (output + c).slice(-4000)));
  const kill = () => proc.kill("SIGKILL");
  process.on("exit", kill);
  const exited = new Promise((resolve) => proc.once("exit", resolve));
  try {
    await eventually(() => proc.exitCode === null && pings(port), { timeout: 5000, what: `redis-server on port ${port}:\n${output}` });
  } catch (error) {
    kill();
    throw error;
  }
  return {
    port,
    url: `redis://127.0.0.1:${port}/0`,
    async stop() {
      process.off("exit", kill);
      kill();
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
