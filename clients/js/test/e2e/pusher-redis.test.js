// The Pusher suite (test/lib/pusher-suite.js) against two herald nodes on
// one Redis: each test's first client follows node A, its second client
// node B, and the backend triggers through node B, so every event, client
// event, member change and cached event crosses the engine. Skipped, with
// a message, where redis-server is not on PATH (scripts/test.sh installs
// it).

import { describe } from "node:test";
import { HeraldServer } from "../lib/server.js";
import { APP_CONFIG, pusherSuite } from "../lib/pusher-suite.js";
import { haveRedis, startRedis } from "../lib/redis.js";

const skip = haveRedis() ? false : "redis-server is not on PATH (apt-get install redis-server)";

describe("pusher on the redis engine", { skip }, () => {
  pusherSuite("redis", async () => {
    const redis = await startRedis();
    // Its own key prefix, so a Redis shared with another run cannot mix in.
    const prefix = `herald-pusher-e2e-${process.pid}`;
    const config = `engine = "${redis.url}"\n\n${APP_CONFIG}\n[redis]\nprefix = "${prefix}"\n`;
    const a = new HeraldServer({ config });
    const b = new HeraldServer({ config });
    try {
      await Promise.all([a.start(), b.start()]);
    } catch (error) {
      await Promise.all([a.stop(), b.stop()]);
      await redis.stop();
      throw error;
    }
    return {
      client: a,
      peer: b,
      api: b,
      async stop() {
        await Promise.all([a.stop(), b.stop()]);
        await redis.stop();
      },
    };
  });
});
