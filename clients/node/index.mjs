// The ES module face of index.cjs (one implementation, two ways to load it).
import herald from "./index.cjs";

export const { Herald, HeraldError, WebhookError, signToken, verifyWebhook, parseWebhook, SIGNATURE_HEADER } = herald;
