// A test application backend: HS256 tokens signed with the server's
// hmac_secret (docs/security.md, "Connection tokens") and an rpc hook
// endpoint on 127.0.0.1:0 that answers as test/fixtures/session.json's
// `hook` line says (crates/herald/tests/client_fixtures.rs runs the same).

import http from "node:http";
import { createHmac } from "node:crypto";

export const SECRET = "client-e2e-secret-of-at-least-32-bytes!";

const b64url = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");

/** An HS256 JWT for `sub`, `ttl` seconds long (fractions allowed: exp is rounded down). */
export function mintToken({ sub, ttl = 600, channels, info } = {}) {
  const claims = { exp: Math.floor(Date.now() / 1000 + ttl) };
  if (sub !== undefined) claims.sub = sub;
  if (channels) claims.channels = channels;
  if (info !== undefined) claims.info = info;
  const head = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url(claims)}`;
  return `${head}.${createHmac("sha256", SECRET).update(head).digest("base64url")}`;
}

/** The rpc hook: `{result: {method, params, user}}`, or an error for method "fail". Records every call. */
export async function startHook() {
  const calls = [];
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      const call = JSON.parse(body || "{}");
      calls.push(call);
      const answer =
        call.method === "fail"
          ? { error: { code: "nope", message: "no such method" } }
          : { result: { method: call.method, params: call.params ?? null, user: call.user ?? null } };
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end(JSON.stringify(answer));
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}/herald`,
    calls,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

/** The server config these tests share: tokens with no leeway (an unrefreshed token ends the session at its exp), presence, client publish, the rpc hook. */
export function config(hookUrl) {
  return `[auth]
hmac_secret = "${SECRET}"
leeway = "0s"

[hooks]
url = "${hookUrl}"
events = ["rpc"]
timeout = "2s"

[[namespace]]
prefix = "room:"
presence = true
join_leave = true

[[namespace]]
prefix = "chat:"
client_publish = true
presence = true
join_leave = true

[[namespace]]
prefix = "priv:"
private = true
`;
}
