/**
 * `RealtimeClient`: one logical connection to wsedge's `GET /ws`, the
 * counterpart of the Rust client (`wsedge::client`). It owns the socket, the
 * reconnect state machine (Disconnected → Connecting → Connected →
 * Disconnected → backoff → Connecting …), the `connected` event made once
 * per connection, the in-band token refresh before `exp`, and recovery
 * (docs/PROTOCOL.md §11): it remembers the epoch and the last offset of each
 * stream, drops duplicates, asks for what it missed when it reconnects and
 * resubscribes, and tells with a `recovered` event whether it got it.
 */

import { backoffDelay, isTerminalCloseCode } from "./backoff.js";
import { Listeners, once, type Listener, type RealtimeMessage, type Unsubscribe } from "./listeners.js";
import { StreamOffsets } from "./offsets.js";
import { jwtExp, refreshDelayMs } from "./token.js";
import {
  State,
  type RealtimeClientOptions,
  type Status,
  type TokenResult,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./types.js";
import { defaultUrl, resolveUrl, withQuery, withToken } from "./url.js";

/** `WebSocket.OPEN`. */
const OPEN = 1;
/** The longest delay `setTimeout` takes (about 24.8 days). */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** The server's answer to a refused `refresh`. */
const REFRESH_FAILED = "Token refresh failed";

type Timer = ReturnType<typeof setTimeout>;
type StateListener = (next: State, previous: State) => void;

const timestamp = () => new Date().toISOString();
const describe = (e: unknown) => (e instanceof Error ? e.message : String(e));

export class RealtimeClient {
  // ---- configuration
  readonly #url: string;
  readonly #getToken: (() => TokenResult) | null;
  readonly #WebSocket: WebSocketConstructor;
  readonly #maxAttempts: number;
  readonly #baseDelayMs: number;
  readonly #maxDelayMs: number;
  readonly #jitterMs: number;
  readonly #helloTimeoutMs: number;
  readonly #refreshBeforeMs: number;
  readonly #log: ((...args: unknown[]) => void) | null;

  // ---- runtime
  /** The token of the current connection (replaced by `getToken` and by each accepted refresh). */
  #token: string | null;
  #ws: WebSocketLike | null = null;
  /** Channels to keep subscribed to, with their `presence`. */
  #channels = new Map<string, boolean>();
  #opened = false;
  #state: State = State.Disconnected;
  #lastError: string | null = null;
  #connectCount = 0;
  #attempt = 0;
  #attemptsMade = 0;
  #manualClose = false;
  #generation = 0;
  #autoPending = false;
  readonly #timers: Record<"reconnect" | "hello" | "refresh", Timer | null> = {
    reconnect: null,
    hello: null,
    refresh: null,
  };
  #refreshAt = 0;
  /** The token sent in a `refresh` that the server has not answered yet. */
  #pendingToken: string | null = null;
  // ---- recovery (docs/PROTOCOL.md §11)
  /** The epoch and the last offset seen on each stream; outlives connections. */
  readonly #offsets = new StreamOffsets();
  /** The `userId` of the last hello: a reconnect as someone else does not recover. */
  #userId: string | null = null;
  /** This connection's URL asked to recover (`epoch`, `since_all`, `since_user`). */
  #askedRecovery = false;
  /** This connection follows an earlier successful one: it raises `recovered`. */
  #isReconnect = false;
  /** The server's `connected` of this connection has not been processed yet. */
  #helloPending = false;
  /** This connection has raised its `recovered` event. */
  #recoveredSent = false;
  /** Channels resubscribed on this reconnect whose answer is awaited → whether `since` was sent. */
  readonly #resubscribing = new Map<string, boolean>();
  readonly #listeners = new Listeners((type, e) => console.error(`RealtimeClient: listener for "${type}" threw`, e));
  readonly #stateListeners = new Set<{ cb: StateListener }>();

  constructor(options: RealtimeClientOptions = {}) {
    this.#url = resolveUrl(options.url ?? defaultUrl());
    this.#token = options.token ?? null;
    const getToken = options.getToken ?? options.tokenProvider ?? null;
    this.#getToken = typeof getToken === "function" ? getToken : null;
    const impl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (typeof impl !== "function") {
      throw new TypeError(
        "RealtimeClient: no WebSocket implementation; pass `WebSocket` in the options (in Node 20: the `ws` package's class)",
      );
    }
    this.#WebSocket = impl;
    this.#maxAttempts = options.maxAttempts ?? 10;
    this.#baseDelayMs = options.baseDelayMs ?? 1000;
    this.#maxDelayMs = options.maxDelayMs ?? 30_000;
    this.#jitterMs = options.jitterMs ?? 1000;
    this.#helloTimeoutMs = options.helloTimeoutMs ?? 1000;
    this.#refreshBeforeMs = options.refreshBeforeMs ?? 30_000;
    const debug = options.debug;
    this.#log = typeof debug === "function" ? debug : debug ? (...a) => console.debug("[wsedge]", ...a) : null;
    if (options.autoConnect) {
      this.#autoPending = true;
      queueMicrotask(() => {
        if (this.#autoPending) this.connect();
      });
    }
  }

  // ------------------------------------------------------------ state

  /** `"Disconnected"`, `"Connecting"` or `"Connected"`. */
  get state(): State {
    return this.#state;
  }
  /** Message of the most recent error (cleared by a successful connect), or `null`. */
  get lastError(): string | null {
    return this.#lastError;
  }
  /** Successful connects so far. */
  get connectCount(): number {
    return this.#connectCount;
  }
  /** Reconnect attempts since the last successful connect. */
  get reconnectAttempt(): number {
    return this.#attempt;
  }
  /** Whether the socket is open. */
  get connected(): boolean {
    return this.#state === State.Connected;
  }
  /** State, last error, connect count and reconnect attempt together. */
  get status(): Status {
    return {
      state: this.#state,
      lastError: this.#lastError,
      connectCount: this.#connectCount,
      reconnectAttempt: this.#attempt,
    };
  }
  /** The history's epoch of the remembered offsets (from `connected`), or `null` before one is known. */
  get epoch(): string | null {
    return this.#offsets.epoch;
  }
  /** The last offset seen on each stream: `@all`, `@user` and each channel (a copy). */
  get offsets(): Record<string, number> {
    return this.#offsets.snapshot();
  }
  /** The delay before reconnect attempt `attempt` (0-based), with fresh jitter. */
  nextDelayMs(attempt: number = this.#attempt): number {
    return backoffDelay(attempt, this.#baseDelayMs, this.#maxDelayMs, Math.random, this.#jitterMs);
  }

  // -------------------------------------------------------- listeners

  /**
   * `callback(payload, message)` for every event of `type` (`"*"`: every
   * event, after the type's own callbacks). Returns the unsubscribe function.
   */
  on<P = any>(type: string, callback: Listener<P>): Unsubscribe {
    return this.#listeners.on(type, callback as Listener);
  }

  /** `off(type, cb)`: that callback only; `off(type)`: every callback of `type`; `off()`: all. */
  off(type?: string, callback?: Listener): void {
    this.#listeners.off(type, callback);
  }

  /** `callback(next, previous)` on every state change. Returns the unsubscribe function. */
  onStateChange(callback: StateListener): Unsubscribe {
    if (typeof callback !== "function") throw new TypeError("onStateChange(callback): callback must be a function");
    const entry = { cb: callback };
    this.#stateListeners.add(entry);
    return once(() => this.#stateListeners.delete(entry));
  }

  // ---------------------------------------------------------- actions

  /** Connects (a no-op while connecting or connected); cancels a pending backoff or a give-up. */
  connect(): void {
    this.#autoPending = false;
    this.#manualClose = false;
    if (this.#state !== State.Disconnected) return;
    this.#clearTimer("reconnect");
    this.#attempt = 0;
    void this.#open();
  }

  /** Closes with `1000` and stays closed until the next `connect()`. */
  disconnect(): void {
    this.#autoPending = false;
    this.#manualClose = true;
    this.#generation++; // abandons a getToken() in flight
    this.#clearTimer("reconnect");
    this.#attempt = 0;
    const ws = this.#ws;
    const wasActive = ws !== null || this.#state !== State.Disconnected;
    const wasOpen = this.#opened;
    if (ws) {
      this.#drop(ws);
      try {
        ws.close(1000, "Client disconnect");
      } catch {
        /* already closing */
      }
    }
    this.#setState(State.Disconnected);
    if (wasActive && wasOpen) this.#synthetic("disconnected", { code: 1000, reason: "Client disconnect" });
  }

  /**
   * Sends `{type, payload}`. `true` when handed to the socket; `false` and an
   * `error` event when not connected or the payload does not serialize.
   */
  send(type: string, payload?: unknown): boolean {
    const ws = this.#ws;
    if (!ws || this.#state !== State.Connected || ws.readyState !== OPEN) {
      this.#error("Not connected", "not_connected");
      return false;
    }
    let text: string;
    try {
      text = JSON.stringify({ type, payload: payload === undefined ? null : payload });
    } catch (e) {
      this.#error(`Cannot serialize the message: ${describe(e)}`, "encode");
      return false;
    }
    try {
      ws.send(text);
    } catch (e) {
      this.#error(`Send failed: ${describe(e)}`, "socket");
      return false;
    }
    return true;
  }

  /**
   * Subscribes to `channel` (with `presence`, also to its `join`/`leave`
   * events): now when connected, and again after every reconnect until
   * {@link unsubscribe}. The server answers `subscribed`, or an `error` whose
   * payload names the `channel`. The channel's messages arrive as messages
   * with a top-level `channel` field. A resubscribe after a reconnect asks
   * for the messages missed since the last offset seen (`since`, `epoch`)
   * and is followed by a `recovered` event `{recovered, channel}`.
   */
  subscribe(channel: string, options: { presence?: boolean } = {}): void {
    const presence = options.presence === true;
    this.#channels.set(channel, presence);
    this.#sendIfOpen({ type: "subscribe", payload: { channel, presence } });
  }

  /** Unsubscribes from `channel`; it is no longer restored on reconnect. */
  unsubscribe(channel: string): void {
    this.#channels.delete(channel);
    this.#offsets.forget(channel); // a later subscribe starts afresh
    this.#resubscribing.delete(channel);
    this.#sendIfOpen({ type: "unsubscribe", payload: { channel } });
  }

  /** The channels this client keeps subscribed to, with their `presence`. */
  get channels(): ReadonlyMap<string, boolean> {
    return this.#channels;
  }

  #sendIfOpen(message: object): void {
    const ws = this.#ws;
    if (ws && this.#state === State.Connected && ws.readyState === OPEN) {
      ws.send(JSON.stringify(message));
    }
  }

  // ------------------------------------------------------- connecting

  async #open(): Promise<void> {
    const gen = ++this.#generation;
    this.#setState(State.Connecting);
    let token: string | null;
    try {
      token = await this.#nextToken();
    } catch (e) {
      if (gen !== this.#generation) return;
      this.#setState(State.Disconnected);
      this.#error(`getToken failed: ${describe(e)}`, "token");
      this.#scheduleReconnect();
      return;
    }
    if (gen !== this.#generation) return; // disconnect() while waiting for the token
    // After a connection that told the epoch: ask for what was missed since.
    const recovery = this.#offsets.recoveryQuery();
    let ws: WebSocketLike;
    try {
      ws = new this.#WebSocket(withQuery(withToken(this.#url, token), recovery));
    } catch (e) {
      // A malformed URL does not fix itself: report and stay down.
      this.#setState(State.Disconnected);
      this.#error(`Cannot open a WebSocket: ${describe(e)}`, "socket");
      return;
    }
    this.#debug("connecting to", this.#url);
    this.#ws = ws;
    this.#opened = false;
    this.#askedRecovery = recovery !== null;
    ws.onopen = () => ws === this.#ws && this.#onOpen();
    ws.onmessage = (ev) => ws === this.#ws && this.#onMessage(ev.data);
    // Browsers tell nothing here on purpose; the close event that follows has the code.
    ws.onerror = () => ws === this.#ws && this.#opened && this.#error("WebSocket error", "socket");
    ws.onclose = (ev) => ws === this.#ws && this.#onClose(ev?.code ?? 1006, ev?.reason ?? "");
  }

  /** The first connect uses `token` when given; later ones (and a first one without it) ask `getToken`. */
  async #nextToken(): Promise<string | null> {
    const first = this.#attemptsMade++ === 0;
    if (this.#getToken && !(first && this.#token)) this.#token = String(await this.#getToken());
    return this.#token;
  }

  #onOpen(): void {
    this.#opened = true;
    this.#attempt = 0;
    this.#isReconnect = this.#connectCount > 0;
    this.#connectCount++;
    this.#lastError = null;
    this.#helloPending = true;
    this.#recoveredSent = false;
    this.#resubscribing.clear();
    // Server-side subscriptions (the management API's) ended with the last connection.
    this.#offsets.retainChannels(this.#channels);
    this.#setState(State.Connected);
    // A reconnect restores the subscriptions without the application's help,
    // each from the last offset seen on it (in the epoch it was seen in).
    for (const [channel, presence] of this.#channels) {
      const since = this.#isReconnect ? this.#offsets.since(channel) : null;
      if (this.#isReconnect) this.#resubscribing.set(channel, since !== null);
      this.#sendIfOpen({ type: "subscribe", payload: { channel, presence, ...(since ?? {}) } });
    }
    this.#timers.hello = setTimeout(() => {
      this.#timers.hello = null;
      this.#syntheticHello();
    }, this.#helloTimeoutMs);
    this.#scheduleRefresh(jwtExp(this.#token));
  }

  #onMessage(data: unknown): void {
    let msg: RealtimeMessage;
    try {
      msg = JSON.parse(String(data));
    } catch {
      this.#error("Invalid JSON from the server", "invalid_message", { data: String(data).slice(0, 200) });
      return;
    }
    if (!msg || typeof msg !== "object" || typeof msg.type !== "string") {
      this.#error("A message without a string `type`", "invalid_message", { data: String(data).slice(0, 200) });
      return;
    }
    if (this.#timers.hello !== null) {
      // The server's hello *is* the connected event; anything else first means it will not come.
      this.#clearTimer("hello");
      if (msg.type !== "connected") this.#syntheticHello();
    }
    // Recovery bookkeeping; `then` raises `recovered` after the message's own listeners.
    let then: (() => void) | null = null;
    if (msg.offset !== undefined) {
      // An API message: on a stream, at an offset. At or below the last one seen there: a duplicate.
      if (!this.#offsets.accept(msg.channel, msg.offset)) {
        this.#debug("duplicate dropped:", msg.type, msg.channel, msg.offset);
        return;
      }
    } else if (msg.type === "connected" && this.#helloPending) {
      this.#helloPending = false;
      then = this.#onHello(msg.payload);
    } else if (msg.type === "subscribed") {
      then = this.#onSubscribed(msg.payload);
    } else if (msg.type === "error") {
      then = this.#onSubscribeRefused(msg.payload);
    }
    this.#onRefreshAnswer(msg);
    this.#debug("message", msg.type);
    const ws = this.#ws;
    this.#listeners.emit(msg);
    if (then && ws === this.#ws) then();
  }

  // --------------------------------------------------------- recovery

  /**
   * The server's `connected`: the offsets continue (recovered: the missed
   * messages follow) or start again from its `offsets` (and its epoch).
   * A reconnect raises `recovered` after it.
   */
  #onHello(payload: unknown): (() => void) | null {
    const p = (payload ?? {}) as { userId?: unknown; epoch?: unknown; offsets?: unknown; recovered?: unknown };
    const userId = typeof p.userId === "string" ? p.userId : null;
    const sameUser = userId === null || this.#userId === null || userId === this.#userId;
    if (userId !== null) this.#userId = userId;
    // A late hello after a `recovered: false` (hello timeout) is not a recovery either.
    const recovered = this.#askedRecovery && p.recovered === true && sameUser && !this.#recoveredSent;
    this.#offsets.connected(p.epoch, p.offsets, recovered);
    if (!this.#isReconnect || this.#recoveredSent) return null;
    this.#recoveredSent = true;
    return () => this.#synthetic("recovered", { recovered });
  }

  /** The `connected` event made up by the client; on a reconnect, `recovered: false` follows. */
  #syntheticHello(): void {
    this.#synthetic("connected", {});
    if (this.#isReconnect && !this.#recoveredSent) {
      this.#recoveredSent = true;
      this.#synthetic("recovered", { recovered: false });
    }
  }

  /** `subscribed`: the channel's offset (unless recovered); a resubscribe's answer raises `recovered`. */
  #onSubscribed(payload: unknown): (() => void) | null {
    const p = (payload ?? {}) as { channel?: unknown; offset?: unknown; recovered?: unknown };
    if (typeof p.channel !== "string") return null;
    const channel = p.channel;
    const asked = this.#resubscribing.get(channel);
    this.#resubscribing.delete(channel);
    const recovered = asked === true && p.recovered === true;
    this.#offsets.subscribed(channel, p.offset, recovered);
    return asked === undefined ? null : () => this.#synthetic("recovered", { recovered, channel });
  }

  /** An `error` that refuses a resubscribe: that channel did not recover. */
  #onSubscribeRefused(payload: unknown): (() => void) | null {
    const channel = (payload as { channel?: unknown } | null)?.channel;
    if (typeof channel !== "string" || !this.#resubscribing.has(channel)) return null;
    this.#resubscribing.delete(channel);
    return () => this.#synthetic("recovered", { recovered: false, channel });
  }

  #onClose(code: number, reason: string): void {
    const wasOpen = this.#opened;
    this.#drop(this.#ws);
    this.#setState(State.Disconnected);
    if (!wasOpen) {
      // A failed attempt (refused, 401, network): an error and a retry, no `disconnected`.
      this.#error(`Connection failed (close ${code}${reason ? `: ${reason}` : ""})`, "connect_failed");
      this.#scheduleReconnect();
      return;
    }
    this.#synthetic("disconnected", { code, reason });
    if (this.#manualClose) return;
    if (isTerminalCloseCode(code)) {
      this.#error(`Server closed with ${code}${reason ? ` (${reason})` : ""}; not reconnecting`, "terminal_close");
      return;
    }
    // 1000 from the server, 1001, 1006, 4000, 4001 (a new token is asked for): all worth a retry.
    this.#scheduleReconnect();
  }

  #scheduleReconnect(): void {
    if (this.#manualClose || this.#timers.reconnect !== null) return;
    if (this.#attempt >= this.#maxAttempts) {
      this.#error(`Giving up after ${this.#maxAttempts} reconnect attempts`, "gave_up");
      return;
    }
    const attempt = this.#attempt;
    const delayMs = this.nextDelayMs(attempt);
    this.#attempt = attempt + 1;
    this.#timers.reconnect = setTimeout(() => {
      this.#timers.reconnect = null;
      if (!this.#manualClose && this.#state === State.Disconnected) void this.#open();
    }, delayMs);
    this.#synthetic("reconnecting", { attempt: attempt + 1, maxAttempts: this.#maxAttempts, delayMs });
  }

  // ---------------------------------------------------------- refresh

  /** Plans the `refresh` of a token expiring at `exp` (Unix seconds). */
  #scheduleRefresh(exp: number | null): void {
    this.#clearTimer("refresh");
    if (!this.#getToken || !(this.#refreshBeforeMs > 0) || exp === null) return;
    this.#refreshAt = Date.now() + refreshDelayMs(exp * 1000 - Date.now(), this.#refreshBeforeMs);
    this.#armRefresh();
  }

  #armRefresh(): void {
    const delay = Math.max(0, this.#refreshAt - Date.now());
    this.#timers.refresh = setTimeout(
      () => {
        this.#timers.refresh = null;
        if (Date.now() < this.#refreshAt) this.#armRefresh(); // a delay past setTimeout's range
        else void this.#refresh();
      },
      Math.min(delay, MAX_TIMER_MS),
    );
  }

  async #refresh(): Promise<void> {
    const ws = this.#ws;
    if (!ws || !this.#getToken) return;
    let token: string;
    try {
      token = String(await this.#getToken());
    } catch (e) {
      if (ws === this.#ws) this.#error(`getToken failed for the refresh: ${describe(e)}`, "token");
      return;
    }
    if (ws !== this.#ws || this.#state !== State.Connected) return;
    this.#pendingToken = token;
    this.#debug("refreshing the token");
    try {
      ws.send(JSON.stringify({ type: "refresh", payload: { token } }));
    } catch (e) {
      this.#pendingToken = null;
      this.#error(`Send failed: ${describe(e)}`, "socket");
    }
  }

  /** `refreshed` → the new token is current, plan the next refresh; a refused refresh is recorded. */
  #onRefreshAnswer(msg: RealtimeMessage): void {
    if (this.#pendingToken === null) return;
    const payload = (msg.payload ?? {}) as { expiresAt?: unknown; message?: unknown };
    if (msg.type === "refreshed") {
      const previousExp = jwtExp(this.#token);
      this.#token = this.#pendingToken;
      this.#pendingToken = null;
      const exp = typeof payload.expiresAt === "number" ? payload.expiresAt : jwtExp(this.#token);
      // A token that does not live longer than the last one would only be refreshed again and again.
      if (exp !== null && (previousExp === null || exp > previousExp)) this.#scheduleRefresh(exp);
      else this.#debug("the refreshed token does not expire later; no further refresh");
    } else if (msg.type === "error" && payload.message === REFRESH_FAILED) {
      // The connection lives until the old token's expiry; then 4001 and a reconnect with getToken().
      this.#pendingToken = null;
      this.#lastError = REFRESH_FAILED;
    }
  }

  // ---------------------------------------------------------- helpers

  /** Forgets `ws`: its late events are ignored; no timer of this connection stays armed. */
  #drop(ws: WebSocketLike | null): void {
    if (ws) ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    if (ws === this.#ws) this.#ws = null;
    this.#opened = false;
    this.#pendingToken = null;
    this.#clearTimer("hello");
    this.#clearTimer("refresh");
  }

  #clearTimer(which: "reconnect" | "hello" | "refresh"): void {
    const timer = this.#timers[which];
    if (timer === null) return;
    clearTimeout(timer);
    this.#timers[which] = null;
  }

  #setState(next: State): void {
    const previous = this.#state;
    if (previous === next) return;
    this.#state = next;
    this.#debug("state", previous, "→", next);
    for (const entry of [...this.#stateListeners]) {
      try {
        entry.cb(next, previous);
      } catch (e) {
        console.error("RealtimeClient: state listener threw", e);
      }
    }
  }

  #error(message: string, kind: string, extra?: Record<string, unknown>): void {
    this.#lastError = message;
    this.#synthetic("error", { message, kind, ...extra });
  }

  /** A client-made event: `timestamp` added, `synthetic: true` on the message. */
  #synthetic(type: string, payload: Record<string, unknown>): void {
    const full = { ...payload, timestamp: timestamp() };
    this.#debug(type, full);
    this.#listeners.emit({ type, payload: full, synthetic: true });
  }

  #debug(...args: unknown[]): void {
    this.#log?.(...args);
  }
}
