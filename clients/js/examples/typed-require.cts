// The same package through its `require` entry (CommonJS), checked by tsc.
import herald = require("@heraldpush/client");

export function example(): Promise<herald.ConnectInfo> {
  const client = new herald.Herald("http://127.0.0.1:7070", { transports: ["longpoll"] });
  return client.ready();
}
