// Type declarations for herald.js, the JavaScript client of Herald's
// session protocol (docs/session-protocol.md).

/** Transport names, in the default fallback order (plus "stream", the NDJSON variant of "sse"). */
export type TransportName = "websocket" | "sse" | "stream" | "longpoll" | "iframe";

export type ConnectionState = "connecting" | "connected" | "disconnected";

export type SubscriptionState = "subscribing" | "subscribed" | "unsubscribed" | "failed";

/** A message id, `MS-SEQ`: two decimal integers, ordered as the pair. */
export type MessageId = string;

/** Where a subscription starts: after a message id, or at the oldest retained message. */
export type Since = MessageId | "earliest";

/** The core envelope, as pushed by the server. */
export interface Message<T = unknown> {
  channel: string;
  id: MessageId;
  data: T;
  /** "base64" when `data` is a base64 string of binary bytes. */
  encoding?: "base64";
  /**
   * Present on a message from the user's mailbox, which waits until a
   * client of the user acknowledges it: the client calls it when the
   * subscription's callback returns (or its promise resolves), or the
   * application does with `manualAck`. Idempotent; resolves once the
   * server removed it.
   */
  ack?: () => Promise<{ acknowledged: number }>;
  /**
   * `true` on the channel's newest retained message that a subscription
   * without `since` opens with, in a namespace with `latest_on_subscribe`:
   * the current state, published before the subscription was made. Absent
   * on every other message (live ones, replays after a resume).
   */
  latest?: true;
}

export interface HeraldOptions {
  /**
   * Sent in `connect`. A function is called on every (re)connect and, when
   * the session's token expires, again before it does: the new token goes
   * up as `refresh` on the open connection (every transport), with no
   * reconnect. It must be for the same user.
   */
  token?: string | (() => string | Promise<string>);
  /** How long before the token's `exp` to refresh it, ms (at most a third of the time left; jittered by up to half of it more). Default 30000. */
  refreshAhead?: number;
  /** Transports to try, in order. Default ["websocket", "sse", "longpoll", "iframe"]. Those the environment lacks are skipped. */
  transports?: TransportName[];
  /** How long a transport may take to deliver the `connect` reply (its first frame) before the next one is tried, ms. Default 5000. */
  handshakeTimeout?: number;
  /** Default time limit for `publish` / `history`, from the call (including time spent queued), ms. Default 10000. */
  timeout?: number;
  /** First reconnect delay, ms (jittered to [d/2, d], doubled per failed attempt). Default 500. */
  minReconnectDelay?: number;
  /** Cap on the reconnect delay, ms. Default 20000. */
  maxReconnectDelay?: number;
  /** A connection that stayed up this long resets the backoff, ms. Default 5000. */
  stableAfter?: number;
  /** Connected over a fallback, probe the transports before it after this long (then back off to 16×), and move up when one answers, ms. 0 disables. Default 30000. */
  upgradeAfter?: number;
  /** Extra silence tolerated beyond 2 × the server's ping interval before the connection counts as dead, ms. Default 5000. */
  pingSlack?: number;
  /** Long-poll `timeout` query parameter, seconds. Default 25. */
  pollTimeout?: number;
  /** Most `publish` / `history` commands queued or awaiting a reply; more are rejected with `queue_full`. Default 256. */
  maxQueue?: number;
  /** Most commands per upstream POST on HTTP transports. Default 64. */
  maxBatch?: number;
  /** Send cookies cross-origin (EventSource withCredentials, fetch credentials: "include"). Default false. */
  withCredentials?: boolean;
  /** Start connecting at construction. Default true; otherwise call `connect()`. */
  autoConnect?: boolean;
  /** Mailbox messages are acknowledged only by `message.ack()`, not when the callback returns. Default false. */
  manualAck?: boolean;
  /** Log to console.debug. Default false. */
  debug?: boolean;
  /** A WebSocket constructor, e.g. `(await import("ws")).WebSocket` in Node 20. Default: globalThis.WebSocket. */
  WebSocket?: unknown;
  /** An EventSource constructor. Default: globalThis.EventSource; without one, "sse" runs as the NDJSON stream. */
  EventSource?: unknown;
  /** A fetch function. Default: globalThis.fetch. */
  fetch?: typeof fetch;
}

/** Error with a machine-readable code: the server's (`forbidden`, `invalid_channel`, ...) or the client's own (`timeout`, `queue_full`, `connection_lost`, `closed`, `disconnected`, `no_transport`, `already_subscribed`). */
export class HeraldError extends Error {
  constructor(code: string, message?: string, details?: unknown);
  code: string;
  details?: unknown;
}

export interface DisconnectInfo {
  code: number | string | null;
  reason: string;
  reconnect: boolean;
  /** A draining server's delay before reconnecting (ms), when it gave one. */
  delay?: number;
}

export interface ConnectInfo {
  client: string | null;
  /** The user the token names, or null (anonymous). */
  user: string | null;
  /** When the token expires (unix seconds), or null. */
  expiresAt: number | null;
  version: string | null;
  /** The server's ping interval, seconds. */
  ping: number;
  transport: TransportName;
}

export interface SubscribedInfo {
  channel: string;
  position: MessageId | null;
  gap: boolean;
  replayed: number;
}

export interface GapInfo {
  channel: string;
  /** "subscribe": the subscribe reply said gap; "push": a gap notice arrived. */
  source: "subscribe" | "push";
}

export interface UnsubscribedInfo {
  channel: string;
  code: number | null;
  reason: string;
  /** true: the client resubscribes by itself; false: the subscription has ended. */
  reconnect: boolean;
}

export interface PublishReply {
  channel: string;
  id: MessageId;
}

export interface HistoryReply<T = unknown> {
  channel: string;
  messages: Message<T>[];
  gap: boolean;
  last_id: MessageId | null;
}

export interface PresenceUser {
  user: string;
  /** How many of this user's connections are on the channel. */
  connections: number;
  /** The `info` claim of the user's token. */
  info: unknown;
}

export interface PresenceReply {
  channel: string;
  /** Every connection on the channel, anonymous ones included. */
  connections: number;
  /** Connections without a user. */
  anonymous: number;
  users: PresenceUser[];
}

export interface RefreshReply {
  /** When the new token expires (unix seconds), or null. */
  expires_at: number | null;
}

export interface HistoryOptions {
  /** An id (what came after it) or "earliest" (the default). */
  since?: Since;
  /** At most this many messages, applied by the client: with `since` the oldest after it, without the newest. */
  limit?: number;
  timeout?: number;
}

export class Emitter<Events extends Record<string, unknown[]>> {
  on<E extends keyof Events>(event: E, listener: (...args: Events[E]) => void): this;
  off<E extends keyof Events>(event: E, listener: (...args: Events[E]) => void): this;
  once<E extends keyof Events>(event: E, listener: (...args: Events[E]) => void): this;
}

export interface SubscriptionEvents {
  message: [Message];
  subscribed: [SubscribedInfo];
  gap: [GapInfo];
  error: [HeraldError];
  unsubscribed: [UnsubscribedInfo];
  [event: string]: unknown[];
}

export class Subscription<T = unknown> extends Emitter<SubscriptionEvents> {
  readonly channel: string;
  readonly state: SubscriptionState;
  /** Id of the last message delivered (messages not newer than it are dropped). */
  readonly lastId: MessageId | null;
  /** `position` from the latest subscribe reply. */
  readonly position: MessageId | null;
  /** The `since` the next (re)subscribe will send. */
  readonly since: Since | undefined;
  unsubscribe(): void;
}

export interface HeraldEvents {
  state: [ConnectionState];
  transport: [TransportName];
  connect: [ConnectInfo];
  disconnect: [DisconnectInfo];
  error: [HeraldError];
  /** The token was refreshed on the open connection. */
  refresh: [{ expiresAt: number | null }];
  /** A refresh failed; it is retried while the token has time left. */
  refresherror: [HeraldError];
  [event: string]: unknown[];
}

export class Herald extends Emitter<HeraldEvents> {
  constructor(url: string, options?: HeraldOptions);
  /** The base URL, without a trailing slash. */
  readonly url: string;
  readonly state: ConnectionState;
  /** The transport of the connected session, or null while not connected. */
  readonly transport: TransportName | null;
  /** The server's id for this connection, or null. */
  readonly clientId: string | null;
  /** Transports this client tries, in order. */
  readonly transports: TransportName[];
  readonly subscriptions: Map<string, Subscription>;
  /** When the connection's token expires (unix seconds), or null. */
  readonly expiresAt: number | null;
  /** Resolves once connected (at once when connected); rejects when the client stops for good, or after `timeout` ms. */
  ready(options?: { timeout?: number }): Promise<ConnectInfo>;
  subscribe<T = unknown>(channel: string, callback?: (message: Message<T>) => void, options?: { since?: Since }): Subscription<T>;
  publish(channel: string, data: unknown, options?: { timeout?: number }): Promise<PublishReply>;
  history<T = unknown>(channel: string, options?: HistoryOptions): Promise<HistoryReply<T>>;
  /** Who is on a channel whose namespace keeps presence (`not_available` elsewhere). */
  presence(channel: string, options?: { timeout?: number }): Promise<PresenceReply>;
  /** Calls the backend's `rpc` hook; resolves its `result`. */
  rpc<R = unknown>(method: string, data?: unknown, options?: { timeout?: number }): Promise<R>;
  /** Sends a new token on the open connection now (the `token` function's, or the one given). */
  refresh(token?: string): Promise<RefreshReply>;
  /** Acknowledges mailbox messages by id, for every connection of this user. */
  ack(ids: MessageId | MessageId[]): Promise<{ removed: number; pending: number }>;
  /** Starts connecting again after close() or a final disconnect. */
  connect(): void;
  /** Closes and stops reconnecting; subscriptions are kept for a later connect(). */
  close(): void;
}

/** Every error code the server sends (HTTP error bodies and session replies); checked against the server's table of refusals. */
export const ErrorCodes: Readonly<{
  INVALID_CHANNEL: "invalid_channel";
  INVALID_SINCE: "invalid_since";
  INVALID_JSON: "invalid_json";
  INVALID_REQUEST: "invalid_request";
  INVALID_TIMEOUT: "invalid_timeout";
  INVALID_CALLBACK: "invalid_callback";
  INVALID_TRANSPORT: "invalid_transport";
  INVALID_UPGRADE: "invalid_upgrade";
  INVALID_USER: "invalid_user";
  INVALID_COMMAND: "invalid_command";
  UNAUTHORIZED: "unauthorized";
  INVALID_TOKEN: "invalid_token";
  TOKEN_EXPIRED: "token_expired";
  TOKEN_REQUIRED: "token_required";
  TICKET_USED: "ticket_used";
  FORBIDDEN: "forbidden";
  ORIGIN_NOT_ALLOWED: "origin_not_allowed";
  DENIED: "denied";
  NOT_FOUND: "not_found";
  SESSION_NOT_FOUND: "session_not_found";
  METHOD_NOT_ALLOWED: "method_not_allowed";
  REQUEST_TIMEOUT: "request_timeout";
  PAYLOAD_TOO_LARGE: "payload_too_large";
  URI_TOO_LONG: "uri_too_long";
  UNSUPPORTED_MEDIA_TYPE: "unsupported_media_type";
  LIMIT_EXCEEDED: "limit_exceeded";
  CHANNEL_FULL: "channel_full";
  TOO_MANY_CONNECTIONS_FROM_IP: "too_many_connections_from_ip";
  HEADERS_TOO_LARGE: "headers_too_large";
  INTERNAL_ERROR: "internal_error";
  TOO_MANY_CONNECTIONS: "too_many_connections";
  HOOK_UNAVAILABLE: "hook_unavailable";
  ENGINE_UNAVAILABLE: "engine_unavailable";
  UNAVAILABLE: "unavailable";
  ALREADY_SUBSCRIBED: "already_subscribed";
  NOT_SUBSCRIBED: "not_subscribed";
  NOT_AVAILABLE: "not_available";
  RATE_LIMITED: "rate_limited";
  RPC_ERROR: "rpc_error";
}>;
/** One of the server's error codes. */
export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];
export const DEFAULT_TRANSPORTS: readonly TransportName[];
export const TRANSPORT_NAMES: readonly TransportName[];
export const DEFAULT_OPTIONS: Readonly<Required<Omit<HeraldOptions, "WebSocket" | "EventSource" | "fetch" | "token">>> & { token: undefined };
export const CONNECTING: "connecting";
export const CONNECTED: "connected";
export const DISCONNECTED: "disconnected";
/** -1, 0 or 1 ordering two ids as integer pairs; null when either is not an id. */
export function compareIds(a: string, b: string): -1 | 0 | 1 | null;
export function isMessageId(id: unknown): id is MessageId;
/** The delay (ms) a draining server asks before reconnecting: `delay_ms`, or the close reason's `reconnect in N ms`. */
export function drainDelay(info: { delay_ms?: number; reason?: string } | null | undefined): number | undefined;
/** Reconnect delay for attempt number `attempt` (0-based), ms. */
export function backoffDelay(attempt: number, min: number, max: number, random?: () => number): number;
export default Herald;
