/**
 * The public types of the client: options, states, event payloads, and the
 * small part of the WebSocket API it needs (so that Node users can inject
 * `ws` and no DOM typings are required).
 */

/** Connection states, as in the Rust client. */
export const State = Object.freeze({
  Disconnected: "Disconnected",
  Connecting: "Connecting",
  Connected: "Connected",
} as const);
export type State = (typeof State)[keyof typeof State];

/** What the client uses of a WebSocket (the browser's, or `ws` in Node). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
}

/** A WebSocket class: `new WebSocket(url)`. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** A token, or a promise of one. */
export type TokenResult = string | Promise<string>;

export interface RealtimeClientOptions {
  /** Endpoint: `ws(s)://…`, `http(s)://…` or page-relative (`"/ws"`). Default `ws(s)://<page host>/ws`. */
  url?: string;
  /** JWT for the first connect (sent as `?token=`); later connects use `getToken` when given. */
  token?: string | null;
  /**
   * Called for every (re)connect (the first one too when there is no
   * `token`) and for the in-band refresh before the current token's `exp`.
   */
  getToken?: (() => TokenResult) | null;
  /** Former name of `getToken`. */
  tokenProvider?: (() => TokenResult) | null;
  /** Connect right after construction (in a microtask, so listeners can be added first). Default `false`. */
  autoConnect?: boolean;
  /** Reconnect attempts in a row before giving up. Default 10; 0 never reconnects. */
  maxAttempts?: number;
  /** Backoff base. Default 1000 ms. */
  baseDelayMs?: number;
  /** Backoff cap, jitter included. Default 30000 ms. */
  maxDelayMs?: number;
  /** Upper bound of the random jitter added to each delay. Default 1000 ms. */
  jitterMs?: number;
  /** The `connected` event fires without the server's hello after this long. Default 1000 ms. */
  helloTimeoutMs?: number;
  /** With `getToken`: send `refresh` this long before `exp` (halfway for shorter tokens). Default 30000 ms; 0 disables. */
  refreshBeforeMs?: number;
  /** WebSocket implementation; default `globalThis.WebSocket` (pass `ws`'s class in Node 20). */
  WebSocket?: WebSocketConstructor;
  /** Log every event and decision: `true` for `console.debug`, or your own function. */
  debug?: boolean | ((...args: unknown[]) => void);
}

/** Payload of the client's own `disconnected` event. */
export interface DisconnectedPayload {
  code: number;
  reason: string;
  timestamp: string;
}

/** Payload of the client's own `error` events (the server's `error` messages carry `{message, timestamp}` too). */
export interface ErrorPayload {
  message: string;
  /** What went wrong: `not_connected`, `socket`, `connect_failed`, `invalid_message`, `encode`, `token`, `refresh`, `terminal_close`, `gave_up`, `listener`. */
  kind?: string;
  timestamp: string;
  [field: string]: unknown;
}

/** Payload of the `reconnecting` event. */
export interface ReconnectingPayload {
  /** Counts from 1. */
  attempt: number;
  maxAttempts: number;
  delayMs: number;
  timestamp: string;
}

/** Payload of `connected`: the server's hello, or `{timestamp}` alone when it did not come (synthetic). */
export interface ConnectedPayload {
  userId?: string;
  connectionId?: string;
  message?: string;
  timestamp: string;
  /** The history's epoch (docs/PROTOCOL.md §11). */
  epoch?: string;
  /** The last offset of `@all` and of the user's `@user` stream when the connection opened. */
  offsets?: { "@all": number; "@user": number };
  /** On a connection that asked to recover: whether the missed messages follow. */
  recovered?: boolean;
  [field: string]: unknown;
}

/**
 * Payload of the client's `recovered` event. After each reconnect's
 * `connected`: `{recovered, timestamp}`, `true` when every message missed on
 * `@all` and `@user` follows (before any live one), `false` when they are
 * lost (another epoch: the server restarted, or history too short) and the
 * application should reload its state. After each resubscribe's
 * `subscribed` (or its refusal): the same with the `channel`.
 */
export interface RecoveredPayload {
  recovered: boolean;
  /** Present for a channel's resubscribe; absent for the connection's `@all` and `@user`. */
  channel?: string;
  timestamp: string;
}

/** A snapshot of the client's state. */
export interface Status {
  state: State;
  lastError: string | null;
  connectCount: number;
  reconnectAttempt: number;
}
