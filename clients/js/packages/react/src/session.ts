/**
 * `RealtimeSession`: what `useRealtime` keeps between renders, without
 * React in it. It owns the `RealtimeClient` of the current token (a new one
 * per token; the old one is closed), the listeners the component added with
 * `on` (they outlive token changes), and the snapshot React renders from
 * (`isConnected`, `isConnecting`, `error`, `connectionCount`, `recovered`).
 */

import {
  Listeners,
  RealtimeClient,
  State,
  type Listener,
  type RecoveredPayload,
  type RealtimeMessage,
  type Unsubscribe,
  type WebSocketConstructor,
} from "@wsedge/client";

export interface UseRealtimeOptions {
  /** Connect as soon as there is a token. Default `true`. */
  autoConnect?: boolean;
  /** Base of the reconnect backoff, in ms: min(base · 2^min(attempt, 6) + random(0..1 s), 30 s). Default 1000. */
  reconnectInterval?: number;
  /** Reconnect attempts in a row before giving up. Default 10. */
  maxReconnectAttempts?: number;
  /** Log events and decisions to the console. Default `false`. */
  debug?: boolean;
  /** The WebSocket endpoint. Default `ws(s)://<the page's host>/ws`. */
  url?: string;
  /** A fresh token for reconnects and for the in-band refresh before `exp`. */
  getToken?: () => string | Promise<string>;
  /** With `getToken`: refresh this long before `exp`. Default 30000 ms. */
  refreshBeforeMs?: number;
  /** WebSocket implementation (tests, Node); default the browser's. */
  WebSocket?: WebSocketConstructor;
}

export interface RealtimeSnapshot {
  isConnected: boolean;
  isConnecting: boolean;
  /** The last error message (cleared by a successful connect), or `null`. */
  error: string | null;
  /** Successful connects since the component mounted. */
  connectionCount: number;
  /**
   * Whether the last reconnect got every message missed on `@all` and
   * `@user` (the client's `recovered` event, docs/PROTOCOL.md §11): `false`
   * means they are lost, reload. `null` before the first reconnect of the
   * current token.
   */
  recovered: boolean | null;
}

export const NO_TOKEN = "No authentication token provided";

export class RealtimeSession {
  #options: UseRealtimeOptions = {};
  #token: string | null = null;
  #client: RealtimeClient | null = null;
  /** Channels the component keeps subscribed to, with their `presence`. */
  #channels = new Map<string, boolean>();
  /** Whether the component wants a connection: `autoConnect`, or `connect()` since the last `disconnect()`. */
  #wanted = false;
  #hookError: string | null = null;
  #connectionCount = 0;
  #recovered: boolean | null = null;
  #snapshot: RealtimeSnapshot = {
    isConnected: false,
    isConnecting: false,
    error: null,
    connectionCount: 0,
    recovered: null,
  };
  readonly #subscribers = new Set<() => void>();
  readonly #listeners = new Listeners((type, e) => console.error(`useRealtime: listener for "${type}" threw`, e));

  /** The options of the latest render; read when a client is made and when `getToken` is called. */
  configure(options: UseRealtimeOptions): void {
    this.#options = options;
  }

  /** The component mounted or got a new token (or url): a fresh client for it. */
  start(token: string | null): void {
    this.#closeClient();
    this.#token = token || null;
    this.#recovered = null; // a new client: its first connect is not a reconnect
    if (!this.#token) {
      this.#hookError = NO_TOKEN;
      this.#publish();
      return;
    }
    this.#hookError = null;
    if (this.#options.autoConnect !== false || this.#wanted) this.connect();
    else this.#publish();
  }

  /** The component unmounts, or its token is about to change: close the socket. */
  stop(): void {
    this.#closeClient();
    this.#publish();
  }

  // ---- the hook's returned functions (stable: arrow properties)

  connect = (): void => {
    this.#wanted = true;
    if (!this.#token) {
      this.#hookError = NO_TOKEN;
      this.#publish();
      return;
    }
    this.#client ??= this.#makeClient(this.#token);
    this.#client.connect();
  };

  disconnect = (): void => {
    this.#wanted = false;
    this.#client?.disconnect();
  };

  send = (type: string, payload?: unknown): boolean => {
    if (this.#client) return this.#client.send(type, payload);
    this.#hookError = "Not connected";
    this.#publish();
    return false;
  };

  on = <P = any>(type: string, callback: Listener<P>): Unsubscribe => this.#listeners.on(type, callback as Listener);

  off = (type?: string, callback?: Listener): void => this.#listeners.off(type, callback);

  /** Keeps `channel` subscribed, across reconnects and token changes. */
  subscribeChannel = (channel: string, options: { presence?: boolean } = {}): void => {
    this.#channels.set(channel, options.presence === true);
    this.#client?.subscribe(channel, options);
  };

  unsubscribeChannel = (channel: string): void => {
    this.#channels.delete(channel);
    this.#client?.unsubscribe(channel);
  };

  // ---- the store React reads (useSyncExternalStore)

  subscribe = (onChange: () => void): (() => void) => {
    this.#subscribers.add(onChange);
    return () => this.#subscribers.delete(onChange);
  };

  getSnapshot = (): RealtimeSnapshot => this.#snapshot;

  // ---- internals

  #makeClient(token: string): RealtimeClient {
    const o = this.#options;
    const client = new RealtimeClient({
      url: o.url,
      token,
      getToken: o.getToken ? () => (this.#options.getToken ?? o.getToken!)() : null,
      maxAttempts: o.maxReconnectAttempts ?? 10,
      baseDelayMs: o.reconnectInterval ?? 1000,
      refreshBeforeMs: o.refreshBeforeMs,
      WebSocket: o.WebSocket,
      debug: o.debug ? (...a: unknown[]) => console.debug("[useRealtime]", ...a) : false,
    });
    // A new client (a new token) takes the hook's channels along.
    for (const [channel, presence] of this.#channels) client.subscribe(channel, { presence });
    client.onStateChange((next) => {
      if (client !== this.#client) return;
      if (next === State.Connected) this.#connectionCount++;
      this.#publish();
    });
    client.on("*", (_payload, message: RealtimeMessage) => {
      if (client !== this.#client) return;
      if (message.type === "error") this.#publish();
      const recovery = message.payload as RecoveredPayload | null;
      if (message.type === "recovered" && message.synthetic && recovery && recovery.channel === undefined) {
        this.#recovered = recovery.recovered === true;
        this.#publish();
      }
      this.#listeners.emit(message);
    });
    return client;
  }

  #closeClient(): void {
    const client = this.#client;
    if (!client) return;
    client.disconnect(); // its `disconnected` event still reaches the listeners
    this.#client = null;
  }

  #publish(): void {
    const c = this.#client;
    const next: RealtimeSnapshot = {
      isConnected: c?.state === State.Connected,
      isConnecting: c?.state === State.Connecting,
      error: this.#hookError ?? c?.lastError ?? null,
      connectionCount: this.#connectionCount,
      recovered: this.#recovered,
    };
    const prev = this.#snapshot;
    if (
      prev.isConnected === next.isConnected &&
      prev.isConnecting === next.isConnecting &&
      prev.error === next.error &&
      prev.connectionCount === next.connectionCount &&
      prev.recovered === next.recovered
    ) {
      return;
    }
    this.#snapshot = next;
    for (const fn of [...this.#subscribers]) fn();
  }
}
