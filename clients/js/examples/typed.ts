// A typed use of every method, checked by `tsc --noEmit` (npm run
// check:types) through the package's `import` entry; never run.
import Herald, { HeraldError, type Message, type PresenceReply, type HistoryReply } from "@heraldpush/client";

interface Chat {
  text: string;
}

export async function example(getToken: () => Promise<string>): Promise<void> {
  const client = new Herald("https://push.example.com", { token: getToken, refreshAhead: 60_000 });
  const info = await client.ready({ timeout: 10_000 });
  const user: string | null = info.user;
  const expires: number | null = info.expiresAt;

  const sub = client.subscribe<Chat>("chat:lobby", (m: Message<Chat>) => console.log(m.data.text, user, expires));
  sub.on("gap", (g) => console.log(g.channel, g.source));

  const online: PresenceReply = await client.presence("chat:lobby");
  for (const u of online.users) console.log(u.user, u.connections, u.info);

  const page: HistoryReply<Chat> = await client.history<Chat>("chat:lobby", { since: "earliest", limit: 50 });
  console.log(page.messages.map((m) => m.data.text), page.last_id);

  const sum = await client.rpc<{ total: number }>("sum", { a: 1, b: 2 });
  console.log(sum.total.toFixed(0));

  client.on("refresh", ({ expiresAt }) => console.log("token now expires at", expiresAt));
  client.on("refresherror", (e: HeraldError) => console.log(e.code));
  const refreshed = await client.refresh();
  console.log(refreshed.expires_at);
  client.close();
}
