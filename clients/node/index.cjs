"use strict";
/**
 * herald-push: the backend side of a Herald push server, for Node >= 20,
 * with no dependency (global fetch, node:crypto).
 *
 * Layout: the `Herald` class (one method per backend endpoint of
 * docs/openapi.json, one request path, `HeraldError`), `signToken` (HS256
 * connection tokens signed locally), `verifyWebhook` / `parseWebhook`
 * (docs/webhooks.md). This file is the CommonJS build; index.mjs re-exports
 * it for `import`. Types: index.d.ts. Docs: docs/backend-libraries.md.
 */

const crypto = require("node:crypto");

const SIGNATURE_HEADER = "x-herald-signature";
// The server refuses an auth.hmac_secret shorter than this at start.
const MIN_SECRET = 32;
// How far a webhook's top-level time_ms may be from now by default: retries
// are re-signed with a fresh time, so this covers clock differences only.
const DEFAULT_TOLERANCE_MS = 5 * 60 * 1000;

/** A refusal from the server: any 4xx or 5xx answer. */
class HeraldError extends Error {
  constructor(status, code, message, retryAfter) {
    super(`${status} ${code ?? "http_error"}: ${message}`);
    this.name = "HeraldError";
    /** The HTTP status. */
    this.status = status;
    /** The server's error code (docs/protocol.md, "Errors"), or null when the body was not Herald's. */
    this.code = code;
    /** The server's message (or the start of a body that was not Herald's). */
    this.serverMessage = message;
    /** Retry-After in seconds, when the server sent one. */
    this.retryAfter = retryAfter;
  }
}

/** A webhook request to refuse (answer 401): bad signature, not Herald's body, stale. */
class WebhookError extends Error {
  constructor(message) {
    super(message);
    this.name = "WebhookError";
  }
}

// The channel alphabet's ':', '@' and '=' may stay as they are in a path.
function segment(s) {
  return encodeURIComponent(String(s)).replace(/%3A/gi, ":").replace(/%40/g, "@").replace(/%3D/gi, "=");
}

class Herald {
  /**
   * @param {string} url where the backend endpoints are (api_listen when set, else listen)
   * @param {{apiKey?: string, publicUrl?: string, timeout?: number}} [options]
   *   publicUrl: the public listener, for createTicket (default url); timeout in ms (default 10000)
   */
  constructor(url, options = {}) {
    this.url = String(url).replace(/\/+$/, "");
    this.publicUrl = String(options.publicUrl ?? url).replace(/\/+$/, "");
    this.apiKey = options.apiKey;
    this.timeout = options.timeout ?? 10000;
  }

  // --- publishing ---------------------------------------------------------

  /** Publish a JSON value to one channel (POST /api/publish). */
  publish(channel, data, options = {}) {
    const body = { channel, data };
    if (options.idempotencyKey !== undefined) body.idempotency_key = options.idempotencyKey;
    return this.#call("POST", "/api/publish", { json: body });
  }

  /** Publish one JSON value to up to 100 channels; every name is checked first. */
  async publishMany(channels, data, options = {}) {
    const body = { channels: [...channels], data };
    if (options.idempotencyKey !== undefined) body.idempotency_key = options.idempotencyKey;
    const answer = await this.#call("POST", "/api/publish", { json: body });
    return answer.results;
  }

  /**
   * Publish a body as it is (POST /pub/{channel}): a string as text/plain,
   * bytes as application/octet-stream, unless contentType says otherwise.
   */
  publishRaw(channel, body, options = {}) {
    const text = typeof body === "string";
    const headers = {
      "Content-Type": options.contentType ?? (text ? "text/plain; charset=utf-8" : "application/octet-stream"),
    };
    if (options.idempotencyKey !== undefined) headers["Idempotency-Key"] = options.idempotencyKey;
    return this.#call("POST", `/pub/${segment(channel)}`, { raw: text ? body : new Uint8Array(body), headers });
  }

  // --- channels -----------------------------------------------------------

  /** A channel's subscribers (every node), retained messages and last id. */
  channel(channel) {
    return this.#call("GET", `/pub/${segment(channel)}`);
  }

  /** Drop a channel's history and close its subscribers (4002). */
  deleteChannel(channel) {
    return this.#call("DELETE", `/pub/${segment(channel)}`);
  }

  /** The retained messages after `since` (default: all), oldest first. */
  history(channel, options = {}) {
    const query = options.since === undefined ? "" : `?since=${encodeURIComponent(options.since)}`;
    return this.#call("GET", `/api/history/${segment(channel)}${query}`);
  }

  /** Who follows a channel, by user (`enabled` is false outside a presence namespace). */
  presence(channel) {
    return this.#call("GET", `/api/presence/${segment(channel)}`);
  }

  // --- users --------------------------------------------------------------

  /** Send to `user:{user}`, queued while the user is away; `ack: true` keeps it in the mailbox. */
  publishToUser(user, data, options = {}) {
    const body = { data };
    if (options.ack !== undefined) body.ack = options.ack;
    return this.#call("POST", `/api/users/${segment(user)}/publish`, { json: body });
  }

  /** How many acknowledged messages wait for `user`, and the oldest. */
  mailbox(user) {
    return this.#call("GET", `/api/users/${segment(user)}/mailbox`);
  }

  /** Close every connection of `user` on every node (4006). */
  disconnectUser(user) {
    return this.#call("POST", `/api/users/${segment(user)}/disconnect`);
  }

  // --- tokens and tickets -------------------------------------------------

  /** Have the server sign a connection token (POST /api/tokens). */
  createToken(options = {}) {
    const body = {};
    for (const k of ["user", "channels", "ttl", "info"]) {
      if (options[k] !== undefined && options[k] !== null) body[k] = options[k];
    }
    return this.#call("POST", "/api/tokens", { json: body });
  }

  /** Trade a connection token for a single-use ticket (POST /auth/ticket, public listener). */
  createTicket(token) {
    return this.#call("POST", "/auth/ticket", { base: this.publicUrl, bearer: token, raw: "" });
  }

  // --- the one request path -----------------------------------------------

  async #call(method, path, { json, raw, headers = {}, base, bearer } = {}) {
    const sent = { Accept: "application/json", ...headers };
    let body = raw;
    if (json !== undefined) {
      body = JSON.stringify(json);
      sent["Content-Type"] = "application/json";
    }
    const key = bearer ?? this.apiKey;
    if (key !== undefined && key !== null) sent.Authorization = `Bearer ${key}`;
    const answer = await fetch((base ?? this.url) + path, {
      method,
      headers: sent,
      body,
      signal: AbortSignal.timeout(this.timeout),
    });
    const text = await answer.text();
    if (!answer.ok) throw refusal(answer, text);
    return JSON.parse(text);
  }
}

function refusal(answer, text) {
  const retry = answer.headers.get("retry-after");
  const retryAfter = retry !== null && /^\d+$/.test(retry) ? Number(retry) : null;
  try {
    const { code, message } = JSON.parse(text).error;
    if (typeof code === "string") return new HeraldError(answer.status, code, String(message), retryAfter);
  } catch {
    // not Herald's body: below
  }
  return new HeraldError(answer.status, null, text.slice(0, 200), retryAfter);
}

// --- tokens signed here ------------------------------------------------------

function b64url(buf) {
  return Buffer.from(buf).toString("base64url");
}

/**
 * An HS256 connection token, signed with the server's auth.hmac_secret.
 * Claims: sub, exp (now + ttl), iat, and channels, info, nbf when given.
 */
function signToken(secret, options = {}) {
  const key = typeof secret === "string" ? Buffer.from(secret, "utf8") : Buffer.from(secret);
  if (key.length < MIN_SECRET) throw new RangeError(`hmac_secret must be at least ${MIN_SECRET} bytes`);
  const now = options.now ?? Math.floor(Date.now() / 1000);
  const claims = { exp: now + (options.ttl ?? 3600), iat: now };
  if (options.user !== undefined) claims.sub = options.user;
  if (options.channels && options.channels.length) claims.channels = [...options.channels];
  if (options.info !== undefined) claims.info = options.info;
  if (options.notBefore !== undefined) claims.nbf = options.notBefore;
  const input = `${b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64url(JSON.stringify(claims))}`;
  return `${input}.${b64url(crypto.createHmac("sha256", key).update(input).digest())}`;
}

// --- webhooks ----------------------------------------------------------------

/** Whether `signature` (X-Herald-Signature's value) signs the raw `body` under `secret`. */
function verifyWebhook(secret, body, signature) {
  const want = Buffer.from("sha256=" + crypto.createHmac("sha256", secret).update(body).digest("hex"));
  const got = Buffer.from(signature ?? "");
  return want.length === got.length && crypto.timingSafeEqual(want, got);
}

/** Verify, then parse `{time_ms, events}`; throws WebhookError when it must be refused. */
function parseWebhook(secret, body, signature, options = {}) {
  if (!verifyWebhook(secret, body, signature)) throw new WebhookError("X-Herald-Signature does not sign this body");
  let batch;
  try {
    batch = JSON.parse(Buffer.isBuffer(body) || body instanceof Uint8Array ? Buffer.from(body).toString("utf8") : body);
  } catch (e) {
    throw new WebhookError(`not a Herald webhook body: ${e.message}`);
  }
  if (!batch || typeof batch.time_ms !== "number" || !Array.isArray(batch.events)) {
    throw new WebhookError("not a Herald webhook body: no time_ms or events");
  }
  const tolerance = options.toleranceMs === undefined ? DEFAULT_TOLERANCE_MS : options.toleranceMs;
  if (tolerance !== null) {
    const now = options.nowMs ?? Date.now();
    if (Math.abs(now - batch.time_ms) > tolerance) {
      throw new WebhookError(`time_ms ${batch.time_ms} is more than ${tolerance} ms from now`);
    }
  }
  return batch;
}

module.exports = { Herald, HeraldError, WebhookError, signToken, verifyWebhook, parseWebhook, SIGNATURE_HEADER };
