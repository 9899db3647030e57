// The Pusher suite (test/lib/pusher-suite.js: unmodified pusher-js and the
// `pusher` server library) against one herald node on the memory engine.

import { HeraldServer } from "../lib/server.js";
import { APP_CONFIG, pusherSuite } from "../lib/pusher-suite.js";

pusherSuite("memory", async () => {
  const node = new HeraldServer({ config: APP_CONFIG });
  await node.start();
  return { client: node, peer: node, api: node, stop: () => node.stop() };
});
