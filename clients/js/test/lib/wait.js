// Bounded waiting for tests: every wait has a deadline and says what it
// waited for when it runs out. No bare sleeps as assertions.

/** Polls `check` until it returns a truthy value (returned), or throws after `timeout` ms. */
export async function eventually(check, { timeout = 5000, interval = 20, what = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? `: ${last.message}` : ""}`);
    }
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}

/** Resolves with the arguments of the next `event` on `emitter` that passes `accept`. */
export function nextEvent(emitter, event, { timeout = 5000, accept = () => true } = {}) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, fn);
      reject(new Error(`timed out after ${timeout} ms waiting for event ${event}`));
    }, timeout);
    const fn = (...args) => {
      if (!accept(...args)) return;
      clearTimeout(timer);
      emitter.off(event, fn);
      resolve(args.length > 1 ? args : args[0]);
    };
    emitter.on(event, fn);
  });
}
