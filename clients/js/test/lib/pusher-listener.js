// Unmodified pusher-js (its Node build), driven over stdio by a test in
// another language (test/e2e/pusher_py.py): one JSON object per line each
// way. It never signs anything itself: a private or presence subscription
// asks the driver for the channel's authorisation ({"type": "auth"}), so
// the signature is the driver's server library's.
//
// Commands (stdin):
//   {"cmd": "connect", "client": "a"}
//   {"cmd": "subscribe", "client": "a", "channel": "c"}
//   {"cmd": "auth_reply", "id": 1, "auth": {...}}  or  {"cmd": "auth_reply", "id": 1, "error": "why"}
//   {"cmd": "trigger", "client": "a", "channel": "c", "event": "client-x", "data": {...}}
//   {"cmd": "signin", "client": "a"}   (user authentication: asks {"type": "user_auth"})
//   {"cmd": "disconnect", "client": "a"}
// Reports (stdout):
//   {"type": "state", "client", "previous", "current", "socket_id"}
//   {"type": "auth", "id", "client", "socket_id", "channel"}
//   {"type": "user_auth", "id", "client", "socket_id"}         (answered with auth_reply)
//   {"type": "signed_in", "client"}                           (its #server-to-user- channel subscribed)
//   {"type": "user_event", "client", "event", "data"}
//   {"type": "event", "client", "channel", "event", "data"}   (every event of a followed channel)
//   {"type": "members", "client", "channel", "ids"}           (a presence subscription's members)
//   {"type": "error", "client", "data"}                       (pusher:error and other connection errors)
// Environment: HERALD_PORT (the node's port), PUSHER_KEY.

import { createRequire } from "node:module";
import readline from "node:readline";

const require = createRequire(import.meta.url);
const PusherClient = require("pusher-js");

const port = Number(process.env.HERALD_PORT);
const key = process.env.PUSHER_KEY;
const clients = new Map();
const pending = new Map();
let nextAuth = 1;

const out = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);

function connect(name) {
  const client = new PusherClient(key, {
    cluster: "local",
    wsHost: "127.0.0.1",
    wsPort: port,
    forceTLS: false,
    enabledTransports: ["ws"],
    disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        const id = nextAuth++;
        pending.set(id, callback);
        out({ type: "auth", id, client: name, socket_id: socketId, channel: channelName });
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) => {
        const id = nextAuth++;
        pending.set(id, callback);
        out({ type: "user_auth", id, client: name, socket_id: socketId });
      },
    },
  });
  client.user.bind_global((event, data) => out({ type: "user_event", client: name, event, data: data ?? null }));
  client.connection.bind("state_change", ({ previous, current }) =>
    out({ type: "state", client: name, previous, current, socket_id: client.connection.socket_id ?? null }),
  );
  client.connection.bind("error", (e) => out({ type: "error", client: name, data: e?.data ?? e?.error?.data ?? null }));
  clients.set(name, client);
}

function subscribe(name, channelName) {
  const channel = clients.get(name).subscribe(channelName);
  channel.bind_global((event, data) => {
    if (event === "pusher:subscription_succeeded" && channelName.startsWith("presence-")) {
      const ids = [];
      channel.members.each((m) => ids.push(m.id));
      out({ type: "members", client: name, channel: channelName, ids: ids.sort() });
      data = null; // the Members object; reported above
    }
    out({ type: "event", client: name, channel: channelName, event, data: data ?? null });
  });
}

const commands = {
  connect: ({ client }) => connect(client),
  subscribe: ({ client, channel }) => subscribe(client, channel),
  auth_reply: ({ id, auth, error }) => {
    const callback = pending.get(id);
    pending.delete(id);
    if (error) callback(new Error(error), null);
    else callback(null, auth);
  },
  trigger: ({ client, channel, event, data }) => clients.get(client).channel(channel).trigger(event, data),
  signin: ({ client }) => {
    const pusher = clients.get(client);
    pusher.signin();
    // Signed in once pusher-js has subscribed the user channel (bounded).
    const started = Date.now();
    const timer = setInterval(() => {
      if (pusher.user.serverToUserChannel?.subscribed) {
        clearInterval(timer);
        out({ type: "signed_in", client });
      } else if (Date.now() - started > 10000) clearInterval(timer);
    }, 20);
  },
  disconnect: ({ client }) => {
    clients.get(client)?.disconnect();
    clients.delete(client);
  },
};

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (!line.trim()) return;
  let command;
  try {
    command = JSON.parse(line);
    commands[command.cmd](command);
  } catch (error) {
    out({ type: "listener_error", line, message: String(error) });
  }
});
// The driver closing stdin (or dying) ends everything.
lines.on("close", () => {
  for (const client of clients.values()) client.disconnect();
  process.exit(0);
});
