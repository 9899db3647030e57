// herald.js: the JavaScript client for Herald's session protocol
// (docs/session-protocol.md). One ES module, no dependencies; runs in
// browsers and in Node 20+. This file is the source: the CommonJS build
// (dist/herald.cjs) and the minified one Herald serves (herald.min.js) are
// made from it by scripts/build.mjs.
//
// Layout of this file, top to bottom:
//   - ids, backoff, errors, a tiny event emitter (pure, unit-tested);
//   - Subscription: one channel's cursor (where to resume), dedupe floor,
//     gap bookkeeping and listeners;
//   - Herald: the client state machine. It owns at most one connection
//     attempt at a time, chooses the transport (fallback order, probing
//     back up from a fallback), speaks the session frames, resubscribes
//     after every reconnect, keeps the bounded command queue and refreshes
//     the token on the open session before it expires;
//   - transports: thin adapters that only turn a connection into frames and
//     back (WebSocket, SSE, NDJSON stream, long-poll, forever-iframe). They
//     know nothing of subscriptions.

/** Transports tried in order unless `options.transports` says otherwise. */
export const DEFAULT_TRANSPORTS = Object.freeze(["websocket", "sse", "longpoll", "iframe"]);

/** Every transport name the client knows. */
export const TRANSPORT_NAMES = Object.freeze(["websocket", "sse", "stream", "longpoll", "iframe"]);

export const CONNECTING = "connecting";
export const CONNECTED = "connected";
export const DISCONNECTED = "disconnected";

/** Defaults for every option; each is documented in herald.d.ts and README.md. */
export const DEFAULT_OPTIONS = Object.freeze({
  token: undefined,
  transports: DEFAULT_TRANSPORTS,
  handshakeTimeout: 5000,
  timeout: 10000,
  minReconnectDelay: 500,
  maxReconnectDelay: 20000,
  stableAfter: 5000,
  upgradeAfter: 30000,
  pingSlack: 5000,
  pollTimeout: 25,
  maxQueue: 256,
  maxBatch: 64,
  withCredentials: false,
  autoConnect: true,
  manualAck: false,
  refreshAhead: 30000,
  debug: false,
});

/**
 * Every error code the server sends (HTTP error bodies and session replies),
 * from the server's one table of refusals (crates/herald-core/src/refusal.rs);
 * a server test fails when this list and that table disagree. The client's
 * own codes (`timeout`, `queue_full`, `connection_lost`, ...) are not here.
 */
export const ErrorCodes = Object.freeze({
  INVALID_CHANNEL: "invalid_channel",
  INVALID_SINCE: "invalid_since",
  INVALID_JSON: "invalid_json",
  INVALID_REQUEST: "invalid_request",
  INVALID_TIMEOUT: "invalid_timeout",
  INVALID_CALLBACK: "invalid_callback",
  INVALID_TRANSPORT: "invalid_transport",
  INVALID_UPGRADE: "invalid_upgrade",
  INVALID_USER: "invalid_user",
  INVALID_COMMAND: "invalid_command",
  UNAUTHORIZED: "unauthorized",
  INVALID_TOKEN: "invalid_token",
  TOKEN_EXPIRED: "token_expired",
  TOKEN_REQUIRED: "token_required",
  TICKET_USED: "ticket_used",
  FORBIDDEN: "forbidden",
  ORIGIN_NOT_ALLOWED: "origin_not_allowed",
  DENIED: "denied",
  NOT_FOUND: "not_found",
  SESSION_NOT_FOUND: "session_not_found",
  METHOD_NOT_ALLOWED: "method_not_allowed",
  REQUEST_TIMEOUT: "request_timeout",
  PAYLOAD_TOO_LARGE: "payload_too_large",
  URI_TOO_LONG: "uri_too_long",
  UNSUPPORTED_MEDIA_TYPE: "unsupported_media_type",
  LIMIT_EXCEEDED: "limit_exceeded",
  CHANNEL_FULL: "channel_full",
  TOO_MANY_CONNECTIONS_FROM_IP: "too_many_connections_from_ip",
  HEADERS_TOO_LARGE: "headers_too_large",
  INTERNAL_ERROR: "internal_error",
  TOO_MANY_CONNECTIONS: "too_many_connections",
  HOOK_UNAVAILABLE: "hook_unavailable",
  ENGINE_UNAVAILABLE: "engine_unavailable",
  UNAVAILABLE: "unavailable",
  ALREADY_SUBSCRIBED: "already_subscribed",
  NOT_SUBSCRIBED: "not_subscribed",
  NOT_AVAILABLE: "not_available",
  RATE_LIMITED: "rate_limited",
  RPC_ERROR: "rpc_error",
});

// WebSocket close codes after which reconnecting cannot help, when the
// server closed without a `disconnect` frame (see crates/herald-core/src/disconnect.rs).
const FINAL_CLOSE_CODES = new Set([4006, 4400]);

// Connect / subscribe errors worth retrying (with backoff) rather than final.
const RETRYABLE_ERRORS = new Set([ErrorCodes.ENGINE_UNAVAILABLE, ErrorCodes.LIMIT_EXCEEDED]);

// Subscription events the client emits itself; a push key with one of
// these names is not passed through as an event.
const RESERVED_EVENTS = new Set(["message", "subscribed", "gap", "error", "unsubscribed"]);

// Longest NDJSON line we buffer before calling the stream broken.
const MAX_LINE = 4 * 1024 * 1024;

// A forever-iframe whose connection breaks mid-stream gets no load or error
// event in Chromium (the document just stays "loading"), so the iframe
// transport probes the session with an unsolicited pong this often: a dead
// server fails the POST, a restarted one answers 404.
const IFRAME_PROBE_MS = 5000;

// Frames waiting for an upstream POST on HTTP transports; past this the
// connection is dropped (a reconnect rebuilds its state from scratch).
const MAX_UPSTREAM_FRAMES = 4096;

// ---------------------------------------------------------------------------
// Ids, backoff, errors, events

const ID_RE = /^(\d{1,20})-(\d{1,20})$/;

function compareDecimal(a, b) {
  a = a.replace(/^0+(?=\d)/, "");
  b = b.replace(/^0+(?=\d)/, "");
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Orders two message ids `MS-SEQ` as the pair of integers (MS, SEQ):
 * -1, 0 or 1, or null when either is not an id. Exact for any length
 * (compares digit strings, so no precision is lost past 2^53).
 */
export function compareIds(a, b) {
  const ma = typeof a === "string" && ID_RE.exec(a);
  const mb = typeof b === "string" && ID_RE.exec(b);
  if (!ma || !mb) return null;
  return compareDecimal(ma[1], mb[1]) || compareDecimal(ma[2], mb[2]);
}

/** True when `id` is a message id (not "earliest", not garbage). */
export function isMessageId(id) {
  return typeof id === "string" && ID_RE.test(id);
}

/**
 * The delay a draining server asks a client to wait before it reconnects:
 * `delay_ms` of a `disconnect` frame or event, or the close reason
 * `server shutting down; reconnect in N ms`; `undefined` when it asks none.
 */
export function drainDelay(info) {
  if (!info) return undefined;
  if (Number.isFinite(info.delay_ms) && info.delay_ms >= 0) return info.delay_ms;
  const m = /reconnect in (\d+) ms/.exec(info.reason ?? "");
  return m ? Number(m[1]) : undefined;
}

/**
 * The delay before reconnect attempt number `attempt` (0-based): exponential
 * from `min`, capped at `max`, with "equal jitter" (uniform in [d/2, d]) so a
 * crowd of clients spreads out after a server restart.
 */
export function backoffDelay(attempt, min, max, random = Math.random) {
  const base = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return Math.round(base / 2 + random() * (base / 2));
}

/** An error with a machine-readable `code` (the server's, or the client's own). */
export class HeraldError extends Error {
  constructor(code, message, details) {
    super(message || code);
    this.name = "HeraldError";
    this.code = code;
    if (details !== undefined) this.details = details;
  }
}

function report(error) {
  // A listener threw. Do not let it break the client's state machine.
  if (typeof globalThis.reportError === "function") globalThis.reportError(error);
  else console.error(error);
}

/** A minimal event emitter: `on`, `off`, `once`. Listener errors are reported, not thrown. */
export class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  on(event, fn) {
    if (typeof fn !== "function") throw new TypeError("listener must be a function");
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(fn);
    return this;
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
    return this;
  }

  once(event, fn) {
    const wrapper = (...args) => {
      this.off(event, wrapper);
      fn(...args);
    };
    return this.on(event, wrapper);
  }

  _emit(event, ...args) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (error) {
        report(error);
      }
    }
  }
}

function parseFrame(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function textOf(data) {
  if (typeof data === "string") return data;
  if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) return new TextDecoder().decode(data);
  return String(data);
}

function errorText(error) {
  return error && error.message ? error.message : String(error);
}

function randomHex(bytes) {
  const a = new Uint8Array(bytes);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(a);
  else for (let i = 0; i < a.length; i++) a[i] = Math.floor(Math.random() * 256);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---------------------------------------------------------------------------
// Subscription

/**
 * One channel followed by a client. Created by `client.subscribe`; lives
 * across reconnects until `unsubscribe()`, a final error, or a server
 * `unsubscribed` push with `reconnect: false`.
 */
export class Subscription extends Emitter {
  constructor(client, channel, callback, since) {
    super();
    this.channel = channel;
    /** "subscribing" | "subscribed" | "unsubscribed" | "failed" */
    this.state = "subscribing";
    /** Id of the last message delivered to the callback (the dedupe floor). */
    this.lastId = isMessageId(since) ? since : null;
    /** `position` from the latest subscribe reply. */
    this.position = null;
    this._client = client;
    this._callback = callback;
    // Where to resume: undefined (live only), "earliest", or an id.
    this._cursor = since;
    // A gap was reported and no message has arrived since: a second notice
    // before the next message carries no news and is not repeated.
    this._gapOpen = false;
    // Id of the subscribe command in flight on the current session.
    this._cmdId = null;
    this._sentSince = undefined;
    this._retryTimer = null;
  }

  /** The `since` the next (re)subscribe will send. */
  get since() {
    return this._cursor;
  }

  /** Stops following the channel. Idempotent. */
  unsubscribe() {
    this._client._unsubscribe(this);
  }

  _deliver(message) {
    if (this.lastId !== null) {
      const order = compareIds(message.id, this.lastId);
      if (order !== null && order <= 0) return; // already delivered (replay overlap, resend)
    }
    if (isMessageId(message.id)) {
      this.lastId = message.id;
      this._cursor = message.id;
    }
    this._gapOpen = false;
    // A message to acknowledge (`"ack": true`, from the user's mailbox)
    // gets `ack()`: acknowledged once the callback returned (or its
    // promise resolved), or by the application with `manualAck`.
    const acked = message.ack === true ? this._client._acker(message) : null;
    let result;
    let failed = false;
    try {
      result = this._callback?.(message);
    } catch (error) {
      failed = true;
      report(error);
    }
    this._emit("message", message);
    if (!acked || failed || this._client.options.manualAck) return;
    if (result && typeof result.then === "function") {
      result.then(() => message.ack(), report);
    } else {
      message.ack();
    }
  }

  _gap(source) {
    if (this._gapOpen) return;
    this._gapOpen = true;
    this._emit("gap", { channel: this.channel, source });
  }

  _subscribed(reply, sentSince) {
    this.state = "subscribed";
    this.position = reply.position ?? null;
    if (!reply.replayed && reply.gap) {
      // What followed `since` is lost and nothing retained comes after it,
      // so whatever the channel retains from now on is new to us: resume
      // from the start (a server that echoes the stale `since` as
      // `position` would otherwise report the same gap on every reconnect).
      const newer = isMessageId(this.position) && compareIds(this.position, sentSince) === 1;
      this._cursor = newer ? this.position : "earliest";
    } else if (!reply.replayed) {
      // Nothing replayed: the subscription stands at `position`, or at the
      // start of an empty channel.
      this._cursor = reply.position ?? "earliest";
    } else if (this._cursor === undefined) {
      // Replayed messages are on their way and will move the cursor; until
      // they arrive, resuming from the start loses nothing (dedupe drops
      // what was already delivered).
      this._cursor = "earliest";
    }
    this._emit("subscribed", {
      channel: this.channel,
      position: this.position,
      gap: Boolean(reply.gap),
      replayed: reply.replayed ?? 0,
    });
    if (reply.gap) this._gap("subscribe");
  }
}

// ---------------------------------------------------------------------------
// The client

function normalizeUrl(url) {
  let base = url;
  if (base === undefined || base === null || base === "") {
    if (typeof location === "undefined") throw new TypeError("Herald needs a server URL");
    base = location.origin;
  }
  const parsed = new URL(String(base), typeof location !== "undefined" ? location.href : undefined);
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new TypeError(`Herald URL must be http(s): ${base}`);
  }
  return parsed.origin + parsed.pathname.replace(/\/+$/, "");
}

function hasStreamingFetch(env) {
  return typeof env.fetch === "function" && typeof ReadableStream !== "undefined" && typeof TextDecoder !== "undefined";
}

/** The transports of `wanted` that this environment can run, in order. */
function usableTransports(wanted, env, url) {
  const out = [];
  for (const name of wanted) {
    if (!TRANSPORT_NAMES.includes(name)) throw new TypeError(`unknown transport ${JSON.stringify(name)}`);
    let ok;
    switch (name) {
      case "websocket":
        ok = typeof env.WebSocket === "function";
        break;
      case "sse":
        // Without EventSource (Node) the same downstream runs as NDJSON over fetch.
        ok = typeof env.EventSource === "function" || hasStreamingFetch(env);
        break;
      case "stream":
        ok = hasStreamingFetch(env);
        break;
      case "longpoll":
        ok = typeof env.fetch === "function";
        break;
      case "iframe":
        // parent.NAME(...) from the frame works only for a same-origin page.
        ok =
          typeof document !== "undefined" &&
          typeof location !== "undefined" &&
          typeof env.fetch === "function" &&
          new URL(url).origin === location.origin;
        break;
    }
    if (ok && !out.includes(name)) out.push(name);
  }
  return out;
}

export class Herald extends Emitter {
  /**
   * @param {string} url  the server's base URL, e.g. "http://127.0.0.1:7070"
   * @param {object} options  see herald.d.ts
   */
  constructor(url, options = {}) {
    super();
    this.url = normalizeUrl(url);
    this.options = { ...DEFAULT_OPTIONS, ...options };
    const g = globalThis;
    this._env = {
      WebSocket: options.WebSocket ?? g.WebSocket,
      EventSource: options.EventSource ?? g.EventSource,
      fetch: options.fetch ?? (typeof g.fetch === "function" ? g.fetch.bind(g) : undefined),
    };
    this._transports = usableTransports(this.options.transports, this._env, this.url);
    if (this._transports.length === 0) {
      throw new HeraldError(
        "no_transport",
        `none of the transports ${JSON.stringify(this.options.transports)} can run here (Node 20 needs options.WebSocket, e.g. the ws package, or fetch)`,
      );
    }
    /** "connecting" | "connected" | "disconnected" */
    this.state = DISCONNECTED;
    /** Name of the transport of the connected session, or null. */
    this.transport = null;
    /** The server's connection id (from the connect reply), or null. */
    this.clientId = null;
    this._subs = new Map(); // channel -> Subscription
    this._pending = new Map(); // command id -> command awaiting its reply
    this._queue = []; // commands waiting for a connection (bounded: maxQueue)
    this._nextId = 1;
    // Mailbox acknowledgements waiting to go out together (one `ack`
    // command per turn of the event loop).
    this._acks = null;
    this._conn = null; // the current connection attempt
    this._running = false; // between connect() and close() / a final disconnect
    this._preferred = 0; // index of the transport that last worked
    this._tried = 0; // transports tried in the current round
    this._round = 0; // failed rounds since the last stable connection
    this._reconnectTimer = null;
    this._onlineHandler = null;
    this._lastTransportEmitted = null;
    // ready() callers waiting for the next connect (or a final stop).
    this._readyWaiters = new Set();
    // The connect reply of the current session (what ready() resolves with).
    this._connectInfo = null;
    /** When the connection's token expires (unix seconds, from connect or refresh), or null. */
    this.expiresAt = null;
    if (this.options.autoConnect) {
      this._running = true;
      this._setState(CONNECTING);
      queueMicrotask(() => this._running && !this._conn && this._open());
    }
  }

  /** Transports this client will try, in order (after dropping those this environment lacks). */
  get transports() {
    return [...this._transports];
  }

  /** Subscriptions by channel. */
  get subscriptions() {
    return new Map(this._subs);
  }

  /** Starts (or restarts after `close()`) connecting. Idempotent. */
  connect() {
    if (this._running) return;
    this._running = true;
    this._tried = 0;
    this._round = 0;
    this._open();
  }

  /** Closes the connection and stops reconnecting. Subscriptions are kept, so `connect()` resumes them. */
  close() {
    if (!this._running && !this._conn) return;
    this._running = false;
    const closed = new HeraldError("closed", "client closed");
    this._failCommands(closed);
    this._settleReady(closed);
    this._teardown();
    for (const sub of this._subs.values()) this._resetSub(sub);
    this._setState(DISCONNECTED);
  }

  /**
   * Follows `channel`. `callback` gets every message `{channel, id, data}`
   * once, in order. `since`: an id to resume after, or "earliest".
   */
  subscribe(channel, callback, { since } = {}) {
    if (typeof channel !== "string" || channel === "") throw new TypeError("channel must be a non-empty string");
    if (this._subs.has(channel)) {
      throw new HeraldError(ErrorCodes.ALREADY_SUBSCRIBED, `already subscribed to ${channel}; unsubscribe first`);
    }
    const sub = new Subscription(this, channel, callback, since);
    this._subs.set(channel, sub);
    if (this._conn?.connected) this._sendSubscribe(sub);
    return sub;
  }

  /** Publishes on a channel whose namespace allows client publishing. Resolves `{channel, id}`. */
  publish(channel, data, options = {}) {
    return this._call("publish", { channel, data }, options);
  }

  /**
   * Acknowledges mailbox messages by id (what `message.ack()` does), for
   * every connection of this user. Resolves `{removed, pending}`.
   */
  ack(ids) {
    const list = (Array.isArray(ids) ? ids : [ids]).filter(isMessageId);
    if (list.length === 0) return Promise.reject(new TypeError("ack needs message ids"));
    return this._call("ack", { ids: list });
  }

  // Gives a mailbox message its `ack()`: idempotent, batched with the
  // others of the same turn, retried after a lost connection (an ack is
  // safe to repeat) and, when it fails otherwise, a few times more.
  _acker(message) {
    let done = null;
    message.ack = () => {
      done ??= this._queueAck(message.id);
      return done;
    };
    return message.ack;
  }

  _queueAck(id) {
    if (!this._acks) {
      const batch = { ids: [], promise: null };
      batch.promise = new Promise((resolve) => setTimeout(resolve, 0)).then(() => {
        if (this._acks === batch) this._acks = null;
        return this._sendAck(batch.ids, 0);
      });
      this._acks = batch;
    }
    this._acks.ids.push(id);
    return this._acks.promise;
  }

  async _sendAck(ids, attempt) {
    for (let i = 0; i < ids.length; i += 1000) {
      const part = ids.slice(i, i + 1000);
      try {
        await this.ack(part);
      } catch (error) {
        if (error.code === "closed" || attempt >= 4) throw error;
        await new Promise((resolve) => setTimeout(resolve, backoffDelay(attempt + 1, this.options.minReconnectDelay, this.options.maxReconnectDelay)));
        return this._sendAck(ids.slice(i), attempt + 1);
      }
    }
    return { acknowledged: ids.length };
  }

  /**
   * Reads a channel's retained history. Resolves `{channel, messages, gap,
   * last_id}`. `since`: an id (what came after it) or "earliest" (the
   * default). `limit` is applied here, not by the server (whose `history`
   * command has no limit): with `since`, the oldest `limit` messages after
   * it (the next page starts after the last one); without, the newest.
   */
  async history(channel, { since, limit, timeout } = {}) {
    if (limit !== undefined && !(Number.isInteger(limit) && limit > 0)) throw new TypeError("limit must be a positive integer");
    const reply = await this._call("history", since === undefined ? { channel } : { channel, since }, { timeout });
    if (limit !== undefined && Array.isArray(reply?.messages) && reply.messages.length > limit) {
      reply.messages = since === undefined ? reply.messages.slice(-limit) : reply.messages.slice(0, limit);
    }
    return reply;
  }

  /**
   * Who is on a channel whose namespace keeps presence. Resolves
   * `{channel, connections, anonymous, users: [{user, connections, info}]}`.
   */
  presence(channel, { timeout } = {}) {
    return this._call("presence", { channel }, { timeout });
  }

  /**
   * Calls the backend through Herald's `rpc` hook (docs/security.md,
   * "Backend hooks"). Resolves the backend's `result`; a backend error
   * rejects with its code (`rpc_error` and the like). Not retried after a
   * lost connection (the call may or may not have run): `connection_lost`.
   */
  async rpc(method, data, { timeout } = {}) {
    if (typeof method !== "string" || method === "") throw new TypeError("method must be a non-empty string");
    const body = data === undefined ? { method } : { method, params: data };
    const reply = await this._call("rpc", body, { timeout });
    return reply?.result;
  }

  /**
   * Resolves (with the `connect` event's info) once the client is
   * connected: at once when it is. Rejects when the client stops for good
   * (a final error, `close()`), or after `timeout` ms when one is given.
   */
  ready({ timeout } = {}) {
    if (this.state === CONNECTED && this._connectInfo) return Promise.resolve(this._connectInfo);
    if (!this._running) return Promise.reject(new HeraldError("closed", "client is closed; call connect()"));
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject, timer: null };
      if (timeout !== undefined) {
        waiter.timer = setTimeout(() => {
          this._readyWaiters.delete(waiter);
          reject(new HeraldError("timeout", `not connected within ${timeout} ms`));
        }, timeout);
      }
      this._readyWaiters.add(waiter);
    });
  }

  _settleReady(error, info) {
    const waiters = [...this._readyWaiters];
    this._readyWaiters.clear();
    for (const w of waiters) {
      clearTimeout(w.timer);
      if (error) w.reject(error);
      else w.resolve(info);
    }
  }

  /**
   * Sends a new token now, on the open connection (`refresh`), without
   * reconnecting: e.g. after the backend granted more channels. Calls the
   * `token` option (a function) for it, or sends `token` when given.
   * Resolves `{expires_at}`. The client also does this by itself before
   * the token expires (see the `refreshAhead` option).
   */
  async refresh(token) {
    const attempt = this._conn;
    if (!attempt?.connected) throw new HeraldError("not_connected", "refresh needs an open connection");
    return this._refresh(attempt, token);
  }

  async _refresh(attempt, given) {
    let token = given;
    if (token === undefined) {
      if (typeof this.options.token !== "function") {
        throw new HeraldError("token", "refresh needs a token, or a `token` option that is a function");
      }
      token = await this.options.token();
    }
    if (this._conn !== attempt || !attempt.connected) throw new HeraldError("connection_lost", "connection lost before the refresh");
    if (typeof token !== "string" || token === "") throw new HeraldError("token", "the token function gave no token");
    const reply = await this._direct(attempt, "refresh", { token });
    if (this._conn === attempt) {
      this.expiresAt = reply?.expires_at ?? null;
      this._scheduleRefresh(attempt);
      this._emit("refresh", { expiresAt: this.expiresAt });
    }
    return reply;
  }

  // Sends a command on this session only (never queued for the next one:
  // a new session starts with `connect` and its own fresh token).
  _direct(attempt, name, body) {
    return new Promise((resolve, reject) => {
      const id = this._nextId++;
      const ms = this.options.timeout;
      const cmd = { id, name, replyKey: name, frame: { id, [name]: body }, resolve, reject, timer: null };
      cmd.timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new HeraldError("timeout", `${name} got no reply within ${ms} ms`));
      }, ms);
      this._pending.set(id, cmd);
      attempt.transport.send([cmd.frame]);
    });
  }

  // Token refresh ahead of expiry: with a `token` function and a session
  // that expires, the function is called again a little before `exp`
  // (`refreshAhead` ms, at most a third of the time left, jittered so a
  // crowd of clients with tokens minted together spreads out) and the new
  // token goes up as `refresh` on the same session, whatever the transport.
  // A failed refresh is retried while time is left; if none is, the server
  // closes with 4007 and the reconnect asks the function for a new token.
  _scheduleRefresh(attempt, retry = 0) {
    clearTimeout(attempt.refreshTimer);
    attempt.refreshTimer = null;
    if (typeof this.options.token !== "function" || !Number.isFinite(this.expiresAt)) return;
    const left = this.expiresAt * 1000 - Date.now();
    if (left <= 0) return;
    let delay;
    if (retry > 0) {
      delay = Math.min(left / 2, backoffDelay(retry - 1, this.options.minReconnectDelay, this.options.maxReconnectDelay));
    } else {
      const ahead = Math.min(this.options.refreshAhead, left / 3);
      delay = left - ahead - Math.random() * (ahead / 2);
    }
    attempt.refreshTimer = setTimeout(() => {
      if (this._conn !== attempt || !attempt.connected) return;
      this._refresh(attempt).catch((error) => {
        if (this._conn !== attempt) return;
        this._log("token refresh failed:", error);
        this._emit("refresherror", error instanceof HeraldError ? error : new HeraldError("token", errorText(error)));
        this._scheduleRefresh(attempt, retry + 1);
      });
    }, Math.max(0, delay));
  }

  // --- connection attempts -------------------------------------------------

  _log(...args) {
    if (this.options.debug) console.debug("[herald]", ...args);
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", state);
  }

  _open() {
    this._clearReconnect();
    if (!this._running) return;
    const n = this._transports.length;
    const index = (this._preferred + this._tried) % n;
    const name = this._transports[index];
    this._setState(CONNECTING);
    const attempt = {
      name,
      index,
      transport: null,
      connected: false,
      connectId: null,
      ping: 0,
      connectedAt: 0,
      liveTimer: null,
      refreshTimer: null,
      handshakeTimer: null,
      upgradeTimer: null,
      upgradeDelay: 0,
      probe: null, // a handshake on a better transport, in flight
      disconnect: null, // the server's disconnect frame, if any
    };
    this._conn = attempt;
    const current = () => this._conn === attempt;
    const handlers = {
      open: (info) => current() && this._onTransportOpen(attempt, info),
      frame: (frame) => current() && this._onFrame(attempt, frame),
      alive: () => current() && this._touch(attempt),
      rejected: (frames, error) => current() && this._onRejected(frames, error),
      close: (why) => current() && this._onTransportClose(attempt, why),
    };
    // Restarted by a transport that had to wait before it could begin.
    handlers.begin = () => {
      if (!current()) return;
      clearTimeout(attempt.handshakeTimer);
      attempt.handshakeTimer = setTimeout(
        () => handlers.close({ reason: `no handshake within ${this.options.handshakeTimeout} ms` }),
        this.options.handshakeTimeout,
      );
    };
    handlers.begin();
    this._log("connecting with", name);
    try {
      attempt.transport = makeTransport(name, this, handlers);
    } catch (error) {
      queueMicrotask(() => handlers.close({ reason: `${name}: ${errorText(error)}` }));
    }
  }

  async _connectBody() {
    const token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
    return token ? { token } : {};
  }

  async _onTransportOpen(attempt, info) {
    if (info && info.ping) attempt.ping = info.ping;
    this._touch(attempt);
    let body;
    try {
      body = await this._connectBody();
    } catch (error) {
      if (this._conn === attempt) this._stop(new HeraldError("token", `token function failed: ${errorText(error)}`));
      return;
    }
    if (this._conn !== attempt) return;
    attempt.connectId = this._nextId++;
    attempt.transport.send([{ id: attempt.connectId, connect: body }]);
  }

  _onConnected(attempt, reply) {
    clearTimeout(attempt.handshakeTimer);
    attempt.connected = true;
    attempt.connectedAt = Date.now();
    if (reply && reply.ping) attempt.ping = reply.ping;
    this._preferred = attempt.index;
    this._tried = 0;
    this.clientId = reply?.client ?? null;
    this.transport = attempt.transport.name;
    this.expiresAt = reply?.expires_at ?? null;
    this._scheduleRefresh(attempt);
    this._log("connected over", this.transport, reply);
    this._touch(attempt);
    if (attempt.index > 0) this._scheduleUpgrade(attempt, this.options.upgradeAfter);
    // Resubscribe and flush the queue before telling listeners, so that a
    // listener that subscribes or publishes adds to this, not races it.
    const frames = [];
    for (const sub of this._subs.values()) frames.push(this._subscribeFrame(sub));
    for (const cmd of this._queue) {
      this._pending.set(cmd.id, cmd);
      frames.push(cmd.frame);
    }
    this._queue = [];
    if (frames.length) attempt.transport.send(frames);
    if (this._lastTransportEmitted !== this.transport) {
      this._lastTransportEmitted = this.transport;
      this._emit("transport", this.transport);
    }
    if (this._conn !== attempt) return; // a listener closed or reconnected
    this._setState(CONNECTED);
    if (this._conn !== attempt) return;
    const info = {
      client: this.clientId,
      user: reply?.user ?? null,
      version: reply?.version ?? null,
      ping: attempt.ping,
      transport: this.transport,
      expiresAt: this.expiresAt,
    };
    this._connectInfo = info;
    this._emit("connect", info);
    if (this._conn === attempt) this._settleReady(null, info);
  }

  // Any frame (or heartbeat) from the server: the connection is alive.
  _touch(attempt) {
    clearTimeout(attempt.liveTimer);
    if (!attempt.ping) return;
    const limit = 2 * attempt.ping * 1000 + this.options.pingSlack;
    attempt.liveTimer = setTimeout(() => {
      if (this._conn === attempt) this._onTransportClose(attempt, { reason: `nothing received for ${limit} ms` });
    }, limit);
  }

  _onTransportClose(attempt, why) {
    if (this._conn !== attempt) return;
    this._teardown();
    const info = attempt.disconnect ?? {
      code: why?.code ?? null,
      reason: why?.reason ?? "connection closed",
      reconnect: !FINAL_CLOSE_CODES.has(why?.code),
      delay: drainDelay(why),
    };
    this._log(attempt.name, "closed:", info, "connected:", attempt.connected);
    if (attempt.connected || attempt.disconnect) {
      this._emit("disconnect", info);
      if (!this._running || this._conn) return; // a listener called close() or connect()
    }
    if (!info.reconnect) {
      this._stop(new HeraldError("disconnected", info.reason, info));
      return;
    }
    if (why?.upgrade) {
      // A better transport answered a probe: move to it now; the new session
      // resumes every subscription, so nothing is lost.
      this._tried = 0;
      this._scheduleReconnect(0);
      return;
    }
    if (attempt.connected || attempt.disconnect) {
      // Lost a working connection (or the server asked us to come back):
      // retry the same transport after a backoff. A connection that did not
      // stay up long keeps growing the backoff, so a flapping route cannot
      // turn into a tight loop.
      if (attempt.connected && Date.now() - attempt.connectedAt >= this.options.stableAfter) this._round = 0;
      this._tried = 0;
      // A draining server says when to come back (its clients spread over
      // its drain window); otherwise the backoff decides.
      const backoff = backoffDelay(this._round++, this.options.minReconnectDelay, this.options.maxReconnectDelay);
      this._scheduleReconnect(info.delay ?? backoff);
      return;
    }
    // Could not connect with this transport: fall back to the next one at
    // once; after a whole round of failures, back off.
    this._tried++;
    if (this._tried < this._transports.length) {
      this._scheduleReconnect(0);
    } else {
      // Every transport failed, so the server (or the network) was down:
      // that says nothing against the first choice, so start there again.
      this._tried = 0;
      this._preferred = 0;
      this._scheduleReconnect(backoffDelay(this._round++, this.options.minReconnectDelay, this.options.maxReconnectDelay));
    }
  }

  // Connected over a fallback: now and then, check whether a transport
  // earlier in the list completes a handshake (the network may have changed,
  // or the fallback was only reached because the server came back midway
  // through a round). Probes back off from upgradeAfter to 16× it.
  _scheduleUpgrade(attempt, delay) {
    if (!this.options.upgradeAfter) return;
    clearTimeout(attempt.upgradeTimer);
    attempt.upgradeDelay = delay;
    attempt.upgradeTimer = setTimeout(() => this._probe(attempt, 0), delay);
  }

  _probe(attempt, index) {
    if (this._conn !== attempt || !attempt.connected) return;
    if (index >= attempt.index) {
      this._scheduleUpgrade(attempt, Math.min(attempt.upgradeDelay * 2, this.options.upgradeAfter * 16));
      return;
    }
    const name = this._transports[index];
    const id = this._nextId++;
    let probe = null;
    let done = false;
    const finish = (ok) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      attempt.probe = null;
      try {
        probe?.close();
      } catch {
        // already closed
      }
      if (this._conn !== attempt) return;
      if (!ok) {
        this._probe(attempt, index + 1);
        return;
      }
      this._log("upgrading from", attempt.name, "to", name);
      this._preferred = index;
      this._onTransportClose(attempt, { reason: `switching to ${name}`, upgrade: true });
    };
    const timer = setTimeout(() => finish(false), this.options.handshakeTimeout);
    const h = {
      open: () =>
        this._connectBody().then(
          (body) => !done && probe.send([{ id, connect: body }]),
          () => finish(false),
        ),
      frame: (frame) => frame && frame.id === id && finish(!frame.error),
      alive() {},
      rejected() {},
      begin() {},
      close: () => finish(false),
    };
    try {
      probe = makeTransport(name, this, h);
      attempt.probe = probe;
    } catch {
      finish(false);
    }
  }

  _scheduleReconnect(delay) {
    this._clearReconnect();
    this._setState(CONNECTING);
    this._log("reconnecting in", delay, "ms");
    this._reconnectTimer = setTimeout(() => this._open(), delay);
    if (delay > 0 && typeof window !== "undefined" && typeof window.addEventListener === "function") {
      // Back online: no point waiting out the backoff.
      this._onlineHandler = () => this._running && !this._conn && this._open();
      window.addEventListener("online", this._onlineHandler);
    }
  }

  _clearReconnect() {
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    if (this._onlineHandler) {
      window.removeEventListener("online", this._onlineHandler);
      this._onlineHandler = null;
    }
  }

  // Ends the current attempt (if any) and forgets what the session held.
  _teardown() {
    this._clearReconnect();
    const attempt = this._conn;
    this._conn = null;
    this.transport = null;
    this.clientId = null;
    this.expiresAt = null;
    this._connectInfo = null;
    if (!attempt) return;
    clearTimeout(attempt.handshakeTimer);
    clearTimeout(attempt.liveTimer);
    clearTimeout(attempt.refreshTimer);
    clearTimeout(attempt.upgradeTimer);
    try {
      attempt.probe?.close();
      attempt.transport?.close();
    } catch (error) {
      this._log("closing transport:", error);
    }
    for (const sub of this._subs.values()) this._resetSub(sub);
    // Commands sent on the lost session: a read is safe to repeat, a
    // publish may or may not have happened, so its caller decides.
    const requeue = [];
    for (const cmd of this._pending.values()) {
      if (cmd.name === "history" || cmd.name === "presence" || cmd.name === "ack") requeue.push(cmd);
      else if (cmd.name === "unsubscribe") this._settle(cmd, null, {});
      else this._settle(cmd, new HeraldError("connection_lost", "connection lost before the reply; the command may or may not have been applied"));
    }
    this._pending.clear();
    this._queue = [...requeue, ...this._queue];
  }

  _resetSub(sub) {
    clearTimeout(sub._retryTimer);
    sub._retryTimer = null;
    sub._cmdId = null;
    if (sub.state === "subscribed") sub.state = "subscribing";
  }

  // Final stop: no reconnect until connect() is called again.
  _stop(error) {
    this._running = false;
    this._failCommands(error);
    this._settleReady(error);
    this._teardown();
    this._setState(DISCONNECTED);
    this._emit("error", error);
  }

  _failCommands(error) {
    for (const cmd of [...this._pending.values(), ...this._queue]) this._settle(cmd, error);
    this._pending.clear();
    this._queue = [];
  }

  // --- frames ---------------------------------------------------------------

  _onFrame(attempt, frame) {
    this._touch(attempt);
    if (Array.isArray(frame)) {
      for (const f of frame) if (this._conn === attempt) this._onFrame(attempt, f);
      return;
    }
    if (!frame || typeof frame !== "object") return;
    if ("channel" in frame) this._onPush(frame);
    else if ("id" in frame) this._onReply(attempt, frame);
    else if ("ping" in frame) attempt.transport.send([{ pong: {} }]);
    else if ("disconnect" in frame) this._onDisconnect(attempt, frame.disconnect);
    // `session` frames are the transports' business; anything else is ignored.
  }

  _onPush(frame) {
    const sub = this._subs.get(frame.channel);
    if (!sub) return;
    if (frame.gap === true) {
      sub._gap("push");
    } else if (frame.unsubscribed) {
      this._onUnsubscribedPush(sub, frame.unsubscribed);
    } else if ("id" in frame && "data" in frame) {
      // The envelope as the server sent it, `latest: true` included (the
      // newest message a `latest_on_subscribe` channel opens with).
      sub._deliver(frame);
    } else {
      // Other channel pushes ({"channel", "join": {...}} and the like) are
      // passed on as subscription events named by their key.
      for (const key of Object.keys(frame)) {
        if (key !== "channel" && !RESERVED_EVENTS.has(key)) sub._emit(key, frame[key], frame);
      }
    }
  }

  _onUnsubscribedPush(sub, info) {
    const details = { channel: sub.channel, code: info.code ?? null, reason: info.reason ?? "", reconnect: Boolean(info.reconnect) };
    this._resetSub(sub);
    if (details.reconnect) {
      sub.state = "subscribing";
      sub._emit("unsubscribed", details);
      this._retrySubscribe(sub);
    } else {
      sub.state = "unsubscribed";
      if (this._subs.get(sub.channel) === sub) this._subs.delete(sub.channel);
      sub._emit("unsubscribed", details);
    }
  }

  _onDisconnect(attempt, info) {
    attempt.disconnect = {
      code: info?.code ?? null,
      reason: info?.reason ?? "disconnected by the server",
      reconnect: info?.reconnect !== false,
      delay: drainDelay(info),
    };
    this._onTransportClose(attempt, attempt.disconnect);
  }

  _onReply(attempt, frame) {
    if (frame.id !== null && frame.id === attempt.connectId) {
      if (frame.error) {
        const error = new HeraldError(frame.error.code, frame.error.message, frame.error);
        if (RETRYABLE_ERRORS.has(error.code)) {
          attempt.disconnect = { code: null, reason: `connect refused: ${error.code}`, reconnect: true };
          this._onTransportClose(attempt, attempt.disconnect);
        } else {
          this._stop(error);
        }
      } else {
        this._onConnected(attempt, frame.connect);
      }
      return;
    }
    const cmd = this._pending.get(frame.id);
    if (!cmd) {
      if (frame.error) this._log("error for no pending command:", frame.error);
      return;
    }
    this._pending.delete(frame.id);
    if (frame.error) this._settle(cmd, new HeraldError(frame.error.code, frame.error.message, frame.error));
    else this._settle(cmd, null, frame[cmd.replyKey]);
  }

  // An HTTP transport's POST was refused as a whole (not 404): fail its commands.
  _onRejected(frames, error) {
    for (const frame of frames) {
      const cmd = frame && this._pending.get(frame.id);
      if (!cmd) continue;
      this._pending.delete(frame.id);
      this._settle(cmd, error);
    }
  }

  // --- commands -------------------------------------------------------------

  _settle(cmd, error, value) {
    clearTimeout(cmd.timer);
    if (error) cmd.reject(error);
    else cmd.resolve(value);
  }

  _liveCommands() {
    let n = this._queue.length;
    for (const cmd of this._pending.values()) if (cmd.name !== "subscribe") n++;
    return n;
  }

  _call(name, body, { timeout } = {}) {
    return new Promise((resolve, reject) => {
      if (!this._running) {
        reject(new HeraldError("closed", "client is closed; call connect()"));
        return;
      }
      if (this._liveCommands() >= this.options.maxQueue) {
        reject(new HeraldError("queue_full", `more than ${this.options.maxQueue} commands waiting`));
        return;
      }
      const id = this._nextId++;
      const cmd = { id, name, replyKey: name === "ping" ? "pong" : name, frame: { id, [name]: body }, resolve, reject, timer: null };
      const ms = timeout ?? this.options.timeout;
      cmd.timer = setTimeout(() => {
        this._pending.delete(id);
        const i = this._queue.indexOf(cmd);
        if (i >= 0) this._queue.splice(i, 1);
        reject(new HeraldError("timeout", `${name} got no reply within ${ms} ms`));
      }, ms);
      if (this._conn?.connected) {
        this._pending.set(id, cmd);
        this._conn.transport.send([cmd.frame]);
      } else {
        this._queue.push(cmd);
      }
    });
  }

  _subscribeFrame(sub) {
    const id = this._nextId++;
    sub._cmdId = id;
    sub.state = "subscribing";
    const body = { channel: sub.channel };
    if (sub._cursor !== undefined && sub._cursor !== null) body.since = sub._cursor;
    sub._sentSince = body.since;
    this._pending.set(id, {
      id,
      name: "subscribe",
      replyKey: "subscribe",
      timer: null,
      resolve: (reply) => this._onSubscribeReply(sub, id, reply),
      reject: (error) => this._onSubscribeError(sub, id, error),
    });
    return { id, subscribe: body };
  }

  _sendSubscribe(sub) {
    const frame = this._subscribeFrame(sub);
    this._conn.transport.send([frame]);
  }

  _onSubscribeReply(sub, id, reply) {
    if (this._subs.get(sub.channel) !== sub || sub._cmdId !== id) return;
    sub._cmdId = null;
    sub._subscribed(reply ?? {}, sub._sentSince);
  }

  _onSubscribeError(sub, id, error) {
    if (this._subs.get(sub.channel) !== sub || sub._cmdId !== id) return;
    sub._cmdId = null;
    if (error.code === "connection_lost" || error.code === "closed") return; // resubscribed on the next session
    if (RETRYABLE_ERRORS.has(error.code)) {
      sub._emit("error", error);
      this._retrySubscribe(sub);
      return;
    }
    sub.state = "failed";
    this._subs.delete(sub.channel);
    sub._emit("error", error);
  }

  _retrySubscribe(sub) {
    clearTimeout(sub._retryTimer);
    const attempt = this._conn;
    sub._retryTimer = setTimeout(() => {
      sub._retryTimer = null;
      if (this._conn === attempt && attempt?.connected && this._subs.get(sub.channel) === sub) this._sendSubscribe(sub);
    }, backoffDelay(1, this.options.minReconnectDelay, this.options.maxReconnectDelay));
  }

  _unsubscribe(sub) {
    if (this._subs.get(sub.channel) !== sub) return;
    this._subs.delete(sub.channel);
    clearTimeout(sub._retryTimer);
    sub.state = "unsubscribed";
    sub._cmdId = null;
    if (this._conn?.connected) {
      const id = this._nextId++;
      const noop = () => {};
      this._pending.set(id, { id, name: "unsubscribe", replyKey: "unsubscribe", timer: null, resolve: noop, reject: noop });
      this._conn.transport.send([{ id, unsubscribe: { channel: sub.channel } }]);
    }
  }
}

// ---------------------------------------------------------------------------
// Transports. Each calls, asynchronously: h.open({ping}) once it can carry
// commands, h.frame(frame) per frame, h.alive() on a heartbeat that is not a
// frame, h.rejected(frames, error) when an upstream POST is refused, and
// h.close({code, reason}) once when it ends (never after its own close());
// h.begin() restarts the handshake clock for a transport that had to wait.

function makeTransport(name, client, h) {
  switch (name) {
    case "websocket":
      return new WebSocketTransport(client, h);
    case "sse":
      return typeof client._env.EventSource === "function" ? new SseTransport(client, h) : new NdjsonTransport(client, h);
    case "stream":
      return new NdjsonTransport(client, h);
    case "longpoll":
      return new LongPollTransport(client, h);
    case "iframe":
      return new IframeTransport(client, h);
  }
  throw new HeraldError("no_transport", `unknown transport ${name}`);
}

class WebSocketTransport {
  constructor(client, h) {
    this.name = "websocket";
    this.h = h;
    this.closed = false;
    const url = client.url.replace(/^http/, "ws") + "/connection/websocket";
    const ws = new client._env.WebSocket(url);
    this.ws = ws;
    ws.onopen = () => !this.closed && h.open({});
    ws.onmessage = (event) => {
      if (this.closed) return;
      const frame = parseFrame(textOf(event.data));
      if (frame !== undefined) h.frame(frame);
    };
    ws.onerror = () => {}; // onclose follows with the code
    ws.onclose = (event) => this._finish({ code: event.code, reason: event.reason || `websocket closed (${event.code})` });
  }

  send(frames) {
    if (this.closed || this.ws.readyState !== 1) return;
    for (const frame of frames) this.ws.send(JSON.stringify(frame));
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    const ws = this.ws;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => {};
    try {
      if (ws.readyState === 0 && typeof ws.terminate === "function") ws.terminate(); // ws package: no close() while connecting
      else ws.close(1000);
    } catch {
      // already closing
    }
  }

  _finish(why) {
    if (this.closed) return;
    this.closed = true;
    this.h.close(why);
  }
}

// Commands for HTTP transports: POST /connection/{sid}, one POST in flight
// at a time so the server sees commands in the order they were sent; what
// queues up meanwhile goes as one array.
class Upstream {
  constructor(client, sid, onFatal, onRejected) {
    this.fetch = client._env.fetch;
    this.url = `${client.url}/connection/${encodeURIComponent(sid)}`;
    this.credentials = client.options.withCredentials ? "include" : "same-origin";
    this.maxBatch = client.options.maxBatch;
    this.queue = [];
    this.busy = false;
    this.closed = false;
    this.abort = new AbortController();
    this.onFatal = onFatal;
    this.onRejected = onRejected;
  }

  send(frames) {
    if (this.closed) return;
    if (this.queue.length + frames.length > MAX_UPSTREAM_FRAMES) {
      this.onFatal({ reason: "upstream queue full" });
      return;
    }
    this.queue.push(...frames);
    this._pump();
  }

  async _pump() {
    if (this.busy || this.closed || this.queue.length === 0) return;
    this.busy = true;
    const batch = this.queue.splice(0, this.maxBatch);
    try {
      const res = await this.fetch(this.url, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(batch.length === 1 ? batch[0] : batch),
        credentials: this.credentials,
        cache: "no-store",
        signal: this.abort.signal,
      });
      const text = await res.text().catch(() => "");
      if (this.closed) return;
      if (res.status === 404) {
        this.onFatal({ reason: ErrorCodes.SESSION_NOT_FOUND });
        return;
      }
      if (!res.ok) {
        const body = parseFrame(text);
        const error = body?.error ?? body;
        this.onRejected(
          batch,
          new HeraldError(error?.code ?? `http_${res.status}`, error?.message ?? `POST /connection/{sid} answered ${res.status}`),
        );
      }
    } catch (error) {
      if (!this.closed) this.onFatal({ reason: `POST failed: ${errorText(error)}` });
      return;
    }
    this.busy = false;
    this._pump();
  }

  close() {
    this.closed = true;
    this.queue = [];
    this.abort.abort();
  }
}

// Shared by the HTTP transports: the first frame is {"session": {...}};
// after it, commands go up through an Upstream.
class HttpSession {
  constructor(client, h, name) {
    this.name = name;
    this.client = client;
    this.h = h;
    this.sid = null;
    this.upstream = null;
    this.closed = false;
  }

  _frame(frame) {
    if (this.closed) return;
    if (this.sid === null && frame && typeof frame.session?.id === "string") {
      this.sid = frame.session.id;
      this.upstream = new Upstream(
        this.client,
        this.sid,
        (why) => this._finish(why),
        (frames, error) => this.h.rejected(frames, error),
      );
      this.h.open({ ping: frame.session.ping });
      return;
    }
    this.h.frame(frame); // e.g. a disconnect before the session frame
  }

  send(frames) {
    this.upstream?.send(frames);
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.upstream?.close();
    this._closeDownstream();
  }

  _finish(why) {
    if (this.closed) return;
    this.close();
    this.h.close(why);
  }

  _fetchInit(extra = {}) {
    return { credentials: this.client.options.withCredentials ? "include" : "same-origin", cache: "no-store", ...extra };
  }
}

class SseTransport extends HttpSession {
  constructor(client, h) {
    super(client, h, "sse");
    const es = new client._env.EventSource(`${client.url}/connection/sse`, {
      withCredentials: Boolean(client.options.withCredentials),
    });
    this.es = es;
    es.onmessage = (event) => {
      const frame = parseFrame(event.data);
      if (frame !== undefined) this._frame(frame);
    };
    // EventSource would reconnect by itself into a new, empty session; the
    // client resubscribes instead, so any error ends this transport.
    es.onerror = () => this._finish({ reason: "event stream closed" });
  }

  _closeDownstream() {
    this.es.onmessage = this.es.onerror = null;
    this.es.close();
  }
}

class NdjsonTransport extends HttpSession {
  constructor(client, h) {
    super(client, h, "stream");
    this.abort = new AbortController();
    this._run();
  }

  async _run() {
    try {
      const res = await this.client._env.fetch(
        `${this.client.url}/connection/stream`,
        this._fetchInit({ signal: this.abort.signal, headers: { Accept: "application/x-ndjson" } }),
      );
      if (!res.ok || !res.body) throw new Error(`GET /connection/stream answered ${res.status}`);
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (this.closed) return;
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, nl).trim();
          buffer = buffer.slice(nl + 1);
          if (this.closed) return;
          if (line === "") {
            this.h.alive(); // heartbeat
            continue;
          }
          const frame = parseFrame(line);
          if (frame !== undefined) this._frame(frame);
        }
        if (buffer.length > MAX_LINE) throw new Error("NDJSON line too long");
      }
      this._finish({ reason: "stream ended" });
    } catch (error) {
      this._finish({ reason: `stream: ${errorText(error)}` });
    }
  }

  _closeDownstream() {
    this.abort.abort();
  }
}

class LongPollTransport extends HttpSession {
  constructor(client, h) {
    super(client, h, "longpoll");
    this.abort = new AbortController();
    this._run();
  }

  async _run() {
    const { url, options } = this.client;
    const fetch = this.client._env.fetch;
    try {
      const res = await fetch(`${url}/connection/longpoll`, this._fetchInit({ method: "POST", signal: this.abort.signal }));
      if (!res.ok) throw new Error(`POST /connection/longpoll answered ${res.status}`);
      const first = await res.json();
      if (this.closed) return;
      this._frame(first);
      if (this.sid === null) throw new Error("POST /connection/longpoll did not answer a session");
      const pollUrl = `${url}/connection/longpoll/${encodeURIComponent(this.sid)}?timeout=${options.pollTimeout}`;
      while (!this.closed) {
        // One poll in flight, bounded: a poll that outlives its timeout by
        // more than the slack is a dead connection.
        this.abort = new AbortController();
        const timer = setTimeout(() => this.abort.abort(), options.pollTimeout * 1000 + options.pingSlack + 5000);
        let poll;
        try {
          const r = await fetch(pollUrl, this._fetchInit({ signal: this.abort.signal }));
          if (r.status === 404) {
            this._finish({ reason: ErrorCodes.SESSION_NOT_FOUND });
            return;
          }
          if (!r.ok) throw new Error(`GET /connection/longpoll answered ${r.status}`);
          poll = await r.json();
        } finally {
          clearTimeout(timer);
        }
        if (this.closed) return;
        this.h.alive();
        for (const frame of poll?.frames ?? []) {
          if (this.closed) return;
          this._frame(frame);
        }
      }
    } catch (error) {
      this._finish({ reason: `longpoll: ${errorText(error)}` });
    }
  }

  _closeDownstream() {
    this.abort.abort();
  }
}

class IframeTransport extends HttpSession {
  constructor(client, h) {
    super(client, h, "iframe");
    this.callback = `__herald_${randomHex(8)}`;
    this.iframe = null;
    this.probe = null;
    // A frame that never finishes loading, added before the page's load
    // event, would hold that event back for good: start after it.
    if (document.readyState === "complete") {
      this._start();
    } else {
      this.onPageLoad = () => {
        this.onPageLoad = null;
        if (this.closed) return;
        h.begin();
        this._start();
      };
      window.addEventListener("load", this.onPageLoad);
    }
  }

  _frame(frame) {
    super._frame(frame);
    if (this.upstream && !this.probe && !this.closed) {
      this.probe = setInterval(() => {
        const up = this.upstream;
        if (up && !up.busy && up.queue.length === 0) up.send([{ pong: {} }]);
      }, IFRAME_PROBE_MS);
    }
  }

  _start() {
    const client = this.client;
    window[this.callback] = (frame) => this._frame(frame);
    const iframe = document.createElement("iframe");
    iframe.style.display = "none";
    iframe.setAttribute("aria-hidden", "true");
    iframe.title = "herald transport";
    // A streamed document "loads" only when the server ends it.
    iframe.onload = () => this._finish({ reason: "iframe stream ended" });
    iframe.src = `${client.url}/connection/iframe?callback=${this.callback}`;
    this.iframe = iframe;
    (document.body || document.documentElement).appendChild(iframe);
  }

  _closeDownstream() {
    clearInterval(this.probe);
    if (this.onPageLoad) window.removeEventListener("load", this.onPageLoad);
    if (!this.iframe) return;
    const name = this.callback;
    this.iframe.onload = null;
    this.iframe.remove();
    // A script already queued in the frame may still call us: leave a no-op.
    window[name] = () => {};
    setTimeout(() => delete window[name], 5000);
  }
}

export default Herald;
