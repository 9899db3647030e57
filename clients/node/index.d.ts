// Types for herald-push (index.cjs / index.mjs). The answers' shapes follow
// docs/openapi.json's components.schemas; the server may add fields.

export interface Published {
  channel: string;
  id: string;
  subscribers: number;
  /** Present on a repeat of an idempotency key: nothing was stored. */
  duplicate?: true;
}
export interface ChannelInfo {
  channel: string;
  subscribers: number;
  messages: number;
  last_id: string | null;
}
export interface ChannelDeleted {
  channel: string;
  deleted: true;
  subscribers: number;
}
export interface Envelope {
  channel: string;
  id: string;
  data: unknown;
  /** "base64" for a binary payload. */
  encoding?: "base64";
}
export interface History {
  channel: string;
  messages: Envelope[];
  last_id: string | null;
  gap: boolean;
}
export interface PresenceUser {
  user: string;
  connections: number;
  info: unknown;
}
export interface Presence {
  channel: string;
  enabled: boolean;
  connections: number;
  anonymous: number;
  users: PresenceUser[];
}
export interface UserPublished {
  user: string;
  channel: string;
  id: string;
  subscribers: number;
  queued: boolean;
  ack: boolean;
}
export interface Mailbox {
  user: string;
  pending: number;
  oldest_id: string | null;
  oldest_age_ms: number | null;
  gap: boolean;
}
export interface UserDisconnected {
  user: string;
  disconnected: true;
}
export interface Token {
  token: string;
  /** Unix seconds. */
  expires_at: number;
}
export interface Ticket {
  ticket: string;
  /** Unix seconds. */
  expires_at: number;
}
export interface WebhookEvent {
  id: string;
  event: "user.online" | "user.offline" | "channel.occupied" | "channel.vacated" | "user.mailbox_dropped" | (string & {});
  time_ms: number;
  user?: string;
  channel?: string;
  ids?: string[];
  reason?: string;
  [field: string]: unknown;
}
export interface WebhookBatch {
  time_ms: number;
  events: WebhookEvent[];
}

export interface HeraldOptions {
  /** Sent as `Authorization: Bearer`. */
  apiKey?: string;
  /** The public listener, for createTicket; default: the url. */
  publicUrl?: string;
  /** Per request, in milliseconds; default 10000. */
  timeout?: number;
}
export interface IdempotencyOptions {
  idempotencyKey?: string;
}
export interface RawOptions extends IdempotencyOptions {
  contentType?: string;
}
export interface TokenRequest {
  user?: string;
  /** Private channels or patterns ("team:*") granted. */
  channels?: string[];
  /** Seconds (server default 3600, at most max_token_ttl). */
  ttl?: number;
  /** Shown in presence and join/leave notices. */
  info?: unknown;
}
export interface SignTokenOptions extends TokenRequest {
  /** Unix seconds replacing the clock. */
  now?: number;
  /** `nbf`, Unix seconds. */
  notBefore?: number;
}
export interface ParseWebhookOptions {
  /** How far time_ms may be from now; default 300000; null: not checked. */
  toleranceMs?: number | null;
  nowMs?: number;
}

export declare class HeraldError extends Error {
  readonly name: "HeraldError";
  readonly status: number;
  /** The server's error code, or null when the body was not Herald's. */
  readonly code: string | null;
  readonly serverMessage: string;
  readonly retryAfter: number | null;
  constructor(status: number, code: string | null, message: string, retryAfter: number | null);
}
export declare class WebhookError extends Error {
  readonly name: "WebhookError";
}

export declare class Herald {
  readonly url: string;
  readonly publicUrl: string;
  constructor(url: string, options?: HeraldOptions);
  publish(channel: string, data: unknown, options?: IdempotencyOptions): Promise<Published>;
  publishMany(channels: readonly string[], data: unknown, options?: IdempotencyOptions): Promise<Published[]>;
  publishRaw(channel: string, body: string | Uint8Array, options?: RawOptions): Promise<Published>;
  channel(channel: string): Promise<ChannelInfo>;
  deleteChannel(channel: string): Promise<ChannelDeleted>;
  history(channel: string, options?: { since?: string }): Promise<History>;
  presence(channel: string): Promise<Presence>;
  publishToUser(user: string, data: unknown, options?: { ack?: boolean }): Promise<UserPublished>;
  mailbox(user: string): Promise<Mailbox>;
  disconnectUser(user: string): Promise<UserDisconnected>;
  createToken(request?: TokenRequest): Promise<Token>;
  createTicket(token: string): Promise<Ticket>;
}

export declare const SIGNATURE_HEADER: "x-herald-signature";
export declare function signToken(secret: string | Uint8Array, options?: SignTokenOptions): string;
export declare function verifyWebhook(secret: string | Uint8Array, body: string | Uint8Array, signature: string | null | undefined): boolean;
export declare function parseWebhook(secret: string | Uint8Array, body: string | Uint8Array, signature: string | null | undefined, options?: ParseWebhookOptions): WebhookBatch;
