// Compiled by `npm run typecheck` (tsc --noEmit), never run: the
// declarations in index.d.ts accept what the docs show and refuse misuse.
import { Herald, HeraldError, parseWebhook, signToken, verifyWebhook, type Published, type WebhookBatch } from "herald-push";

async function usage(): Promise<void> {
  const herald = new Herald("http://127.0.0.1:7070", { apiKey: "k", timeout: 5000 });
  const one: Published = await herald.publish("news", { text: "hi" }, { idempotencyKey: "k1" });
  const many: Published[] = await herald.publishMany(["a", "b"], 1);
  await herald.publishRaw("news", new Uint8Array([1]), { contentType: "application/octet-stream" });
  const last: string | null = (await herald.channel("news")).last_id;
  const history = await herald.history("news", { since: one.id });
  const users: string[] = (await herald.presence("room:1")).users.map((u) => u.user);
  const queued: boolean = (await herald.publishToUser("42", { x: 1 }, { ack: true })).queued;
  const pending: number = (await herald.mailbox("42")).pending;
  await herald.disconnectUser("42");
  const token: string = (await herald.createToken({ user: "42", channels: ["team:*"], ttl: 60 })).token;
  const ticket: string = (await herald.createTicket(token)).ticket;
  const local: string = signToken("s".repeat(32), { user: "42", info: { name: "Ann" } });
  const ok: boolean = verifyWebhook("secret", Uint8Array.from([123, 125]), "sha256=00");
  const batch: WebhookBatch = parseWebhook("secret", "{}", null, { toleranceMs: null });
  try {
    await herald.deleteChannel("news");
  } catch (e) {
    if (e instanceof HeraldError) {
      const code: string | null = e.code;
      const status: number = e.status;
      void [code, status];
    }
  }
  void [many, last, history, users, queued, pending, ticket, local, ok, batch];
  // @ts-expect-error: a channel name is a string
  await herald.publish(42, 1);
  // @ts-expect-error: createToken takes an object
  await herald.createToken("42");
}
void usage;
