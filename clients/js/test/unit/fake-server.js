// A small in-process stand-in for Herald's session protocol
// (docs/session-protocol.md), for unit tests only: WebSocket, SSE, NDJSON
// stream and long-poll, with knobs to misbehave (refuse a transport, buffer
// a stream, go silent, drop every connection, send gap / disconnect /
// unsubscribed pushes). End-to-end tests use the real binary instead.
// Replies to connect, refresh, presence and rpc are the real server's, from
// test/fixtures/session.json (checked against the binary by
// crates/herald/tests/client_fixtures.rs); only their values are the fake's.

import http from "node:http";
import { randomBytes } from "node:crypto";
import { WebSocketServer } from "ws";
import { replyBody, errorBody } from "./fixture.js";

export class FakeServer {
  constructor({ ping = 15 } = {}) {
    this.ping = ping;
    this.refuse = new Set(); // transports answered with 503 / a refused upgrade
    this.buffer = new Set(); // transports accepted but never written to (a buffering proxy)
    this.silent = false; // stop sending pings
    this.replayOverlap = false; // replay the `since` message itself too (dedupe must drop it)
    this.forceGap = false; // every subscribe reply says gap: true
    this.ms = Date.now();
    this.seq = 0;
    this.history = new Map(); // channel -> [envelope]
    this.sessions = new Map(); // sid -> Session
    this.commands = []; // every command received, in order
    this.pongs = 0;
    this.opened = []; // transport names, one per session opened
    this.sockets = new Set();
    this.expiresIn = null; // seconds: tokens expire this long after connect / refresh
    this.refuseRefresh = 0; // refuse the next N refreshes (forbidden)
    this.tokens = []; // every token received (connect and refresh), in order
  }

  expiresAt() {
    return this.expiresIn === null ? null : Math.floor(Date.now() / 1000) + this.expiresIn;
  }

  async start() {
    this.server = http.createServer((req, res) => this._http(req, res));
    this.server.on("connection", (s) => {
      this.sockets.add(s);
      s.on("close", () => this.sockets.delete(s));
    });
    this.wss = new WebSocketServer({ noServer: true });
    this.server.on("upgrade", (req, socket, head) => {
      if (req.url !== "/connection/websocket" || this.refuse.has("websocket")) {
        socket.end("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        return;
      }
      this.wss.handleUpgrade(req, socket, head, (ws) => this._ws(ws));
    });
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${this.server.address().port}`;
    return this.url;
  }

  async stop() {
    this.dropAll();
    for (const s of this.sockets) s.destroy();
    this.wss.close();
    await new Promise((resolve) => this.server.close(resolve));
  }

  /** Abruptly ends every session (like a crash). */
  dropAll() {
    for (const s of [...this.sessions.values()]) s.end();
    for (const ws of this.wss?.clients ?? []) ws.terminate();
  }

  /** Sends a frame to every session. */
  broadcast(frame) {
    for (const s of this.sessions.values()) s.send(frame);
  }

  /** Publishes like the backend would; returns the envelope. */
  publish(channel, data) {
    const msg = { channel, id: `${this.ms}-${++this.seq}`, data };
    if (!this.history.has(channel)) this.history.set(channel, []);
    this.history.get(channel).push(msg);
    for (const s of this.sessions.values()) if (s.subs.has(channel)) s.send(msg);
    return msg;
  }

  subscribesFor(channel) {
    return this.commands.filter((c) => c.subscribe?.channel === channel).map((c) => c.subscribe);
  }

  // --- sessions ---

  _session(transport, send, end) {
    const s = new Session(this, transport, send, end);
    this.sessions.set(s.id, s);
    this.opened.push(transport);
    return s;
  }

  _ws(ws) {
    const s = this._session(
      "websocket",
      (f) => ws.readyState === 1 && ws.send(JSON.stringify(f)),
      () => ws.terminate(),
    );
    ws.on("message", (data) => s.receive(String(data)));
    ws.on("close", () => s.closed());
  }

  _http(req, res) {
    const url = new URL(req.url, this.url);
    const path = url.pathname;
    if (req.method === "GET" && (path === "/connection/sse" || path === "/connection/stream")) {
      const name = path.endsWith("sse") ? "sse" : "stream";
      if (this.refuse.has(name)) return this._status(res, 503);
      res.writeHead(200, { "Content-Type": name === "sse" ? "text/event-stream" : "application/x-ndjson" });
      if (this.buffer.has(name)) return; // never a byte: the client must give up
      const write = (f) => res.write(name === "sse" ? `data: ${JSON.stringify(f)}\n\n` : `${JSON.stringify(f)}\n`);
      const s = this._session(name, write, () => res.destroy());
      write({ session: { id: s.id, ping: this.ping } });
      req.on("close", () => s.closed());
      return;
    }
    if (req.method === "POST" && path === "/connection/longpoll") {
      if (this.refuse.has("longpoll")) return this._status(res, 503);
      const s = this._session(
        "longpoll",
        (f) => s.queue.push(f) && s.flush(),
        () => {
          s.flush();
          if (s.waiting) {
            clearTimeout(s.waiting.timer);
            this._json(s.waiting.res, 404, { error: { code: "session_not_found", message: "session ended" } });
            s.waiting = null;
          }
          s.closed();
        },
      );
      s.queue = [];
      s.waiting = null;
      s.flush = () => {
        if (s.waiting && s.queue.length) {
          const w = s.waiting;
          s.waiting = null;
          clearTimeout(w.timer);
          w.res.writeHead(200, { "Content-Type": "application/json" });
          w.res.end(JSON.stringify({ frames: s.queue.splice(0) }));
        }
      };
      return this._json(res, 200, { session: { id: s.id, ping: this.ping } });
    }
    const poll = /^\/connection\/longpoll\/([^/]+)$/.exec(path);
    if (req.method === "GET" && poll) {
      const s = this.sessions.get(poll[1]);
      if (!s) return this._json(res, 404, { error: { code: "session_not_found", message: "no such session" } });
      const timeout = Number(url.searchParams.get("timeout") ?? 30) * 1000;
      s.waiting = {
        res,
        timer: setTimeout(() => {
          if (s.waiting?.res === res) {
            s.waiting = null;
            this._json(res, 200, { frames: [] });
          }
        }, timeout),
      };
      s.flush();
      return;
    }
    const cmd = /^\/connection\/([^/]+)$/.exec(path);
    if (req.method === "POST" && cmd) {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        const s = this.sessions.get(cmd[1]);
        if (!s) return this._json(res, 404, { error: { code: "session_not_found", message: "no such session" } });
        let frames;
        try {
          frames = JSON.parse(body);
        } catch {
          return this._json(res, 400, { error: { code: "invalid_command", message: "not JSON" } });
        }
        if (!Array.isArray(frames)) frames = [frames];
        this._json(res, 202, { accepted: frames.length });
        for (const f of frames) s.command(f);
      });
      return;
    }
    this._status(res, 404);
  }

  _status(res, code) {
    res.writeHead(code);
    res.end();
  }

  _json(res, code, body) {
    res.writeHead(code, { "Content-Type": "application/json" });
    res.end(JSON.stringify(body));
  }
}

class Session {
  constructor(server, transport, send, end) {
    this.server = server;
    this.transport = transport;
    this.id = randomBytes(16).toString("hex");
    this.subs = new Set();
    this._send = send;
    this._end = end;
    this.ended = false;
    this.pinger = setInterval(() => !server.silent && this.send({ ping: {} }), server.ping * 1000);
  }

  send(frame) {
    if (!this.ended) this._send(frame);
  }

  end() {
    if (this.ended) return;
    this._end();
    this.closed();
  }

  closed() {
    this.ended = true;
    clearInterval(this.pinger);
    this.server.sessions.delete(this.id);
  }

  receive(text) {
    let f;
    try {
      f = JSON.parse(text);
    } catch {
      return this.send({ id: null, error: { code: "invalid_command", message: "not JSON" } });
    }
    this.command(f);
  }

  command(f) {
    const srv = this.server;
    if (f.pong) {
      srv.pongs++;
      return;
    }
    srv.commands.push(f);
    const reply = (key, body) => this.send({ id: f.id, [key]: body });
    const error = (code) => this.send({ id: f.id, error: { code, message: code } });
    if (f.connect) {
      if (f.connect.token) srv.tokens.push(f.connect.token);
      const user = f.connect.token ? "ann" : null;
      return reply("connect", replyBody("connect", { client: this.id, ping: srv.ping, version: "fake", user, expires_at: srv.expiresAt() }));
    }
    if (f.refresh) {
      srv.tokens.push(f.refresh.token);
      if (srv.refuseRefresh > 0) {
        srv.refuseRefresh--;
        return this.send({ id: f.id, error: errorBody("refresh") });
      }
      return reply("refresh", replyBody("refresh", { expires_at: srv.expiresAt() }));
    }
    if (f.presence) return reply("presence", replyBody("presence", { channel: f.presence.channel }));
    if (f.rpc) {
      if (f.rpc.method === "fail") return this.send({ id: f.id, error: errorBody("rpc") });
      return reply("rpc", replyBody("rpc", { result: { method: f.rpc.method, params: f.rpc.params, user: null } }));
    }
    if (f.ping) return reply("pong", {});
    if (f.publish) {
      if (!f.publish.channel.startsWith("chat:")) return error("forbidden");
      const msg = srv.publish(f.publish.channel, f.publish.data);
      return reply("publish", { channel: msg.channel, id: msg.id });
    }
    if (f.unsubscribe) {
      if (!this.subs.delete(f.unsubscribe.channel)) return error("not_subscribed");
      return reply("unsubscribe", { channel: f.unsubscribe.channel });
    }
    if (f.history) {
      const all = srv.history.get(f.history.channel) ?? [];
      return reply("history", { channel: f.history.channel, messages: all, gap: false, last_id: all.at(-1)?.id ?? null });
    }
    if (f.subscribe) {
      const { channel, since } = f.subscribe;
      if (channel.includes(" ")) return error("invalid_channel");
      if (this.subs.has(channel)) return error("already_subscribed");
      this.subs.add(channel);
      const all = srv.history.get(channel) ?? [];
      let replay = [];
      if (since === "earliest") replay = all;
      else if (since) {
        const [ms, seq] = since.split("-").map(Number);
        replay = all.filter((m) => {
          const [mms, mseq] = m.id.split("-").map(Number);
          return mms > ms || (mms === ms && (srv.replayOverlap ? mseq >= seq : mseq > seq));
        });
      }
      // Like the real server: an empty channel echoes an id `since` as the position.
      const position = replay.at(-1)?.id ?? all.at(-1)?.id ?? (since && since !== "earliest" ? since : null);
      reply("subscribe", { channel, position, gap: srv.forceGap, replayed: replay.length });
      for (const m of replay) this.send(m);
      return;
    }
    error("invalid_command");
  }
}
