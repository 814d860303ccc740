// realtime.js: wsedge's browser client, served at GET /realtime.js (docs/PROTOCOL.md §6.3).
// GENERATED from clients/js/packages/client (@wsedge/client) by `npm run build` in clients/js.
// Do not edit: change the TypeScript sources; scripts/js-test fails when this file is stale.


// packages/client/src/backoff.ts
var MAX_EXPONENT = 6;
function backoffDelay(attempt, baseMs = 1e3, capMs = 3e4, rand = Math.random, jitterMs = 1e3) {
  const exp = Math.min(Math.max(0, Math.floor(attempt) || 0), MAX_EXPONENT);
  const jitter = Math.floor(rand() * jitterMs);
  return Math.min(baseMs * 2 ** exp + jitter, capMs);
}
function isTerminalCloseCode(code) {
  return code >= 4500 && code <= 4999;
}

// packages/client/src/listeners.ts
var ANY = "*";
var Listeners = class {
  #byType = /* @__PURE__ */ new Map();
  #onError;
  constructor(onError) {
    this.#onError = onError;
  }
  /** Adds `cb` for `type`; returns its unsubscribe function. */
  on(type, cb) {
    if (typeof cb !== "function") throw new TypeError("on(type, callback): callback must be a function");
    let set = this.#byType.get(type);
    if (!set) this.#byType.set(type, set = /* @__PURE__ */ new Set());
    const entry = { cb };
    set.add(entry);
    const owner = set;
    return once(() => {
      owner.delete(entry);
      if (owner.size === 0 && this.#byType.get(type) === owner) this.#byType.delete(type);
    });
  }
  /**
   * `off(type, cb)` removes that callback (every registration of it) from
   * `type`; `off(type)` removes every callback of `type`; `off()` removes all.
   */
  off(type, cb) {
    if (type === void 0) {
      this.#byType.clear();
      return;
    }
    const set = this.#byType.get(type);
    if (!set) return;
    if (cb === void 0) {
      this.#byType.delete(type);
      return;
    }
    for (const entry of [...set]) if (entry.cb === cb) set.delete(entry);
    if (set.size === 0) this.#byType.delete(type);
  }
  /** How many callbacks `type` has (`"*"` ones not included). */
  count(type) {
    return this.#byType.get(type)?.size ?? 0;
  }
  /**
   * Calls the callbacks of `message.type`, then the `"*"` ones. A callback
   * that throws is reported through `onError` and does not stop the others.
   */
  emit(message) {
    const targets = [];
    for (const key of message.type === ANY ? [ANY] : [message.type, ANY]) {
      const set = this.#byType.get(key);
      if (set) targets.push(...set);
    }
    for (const entry of targets) {
      try {
        entry.cb(message.payload, message);
      } catch (e) {
        this.#onError(message.type, e);
      }
    }
  }
};
function once(fn) {
  let done = false;
  const f = (() => {
    if (done) return;
    done = true;
    fn();
  });
  f.unsubscribe = f;
  return f;
}

// packages/client/src/offsets.ts
var ALL = "@all";
var USER = "@user";
var isOffset = (v) => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
var StreamOffsets = class {
  #epoch = null;
  #last = /* @__PURE__ */ new Map();
  /** The epoch of the remembered offsets, or `null` before the first `connected` that had one. */
  get epoch() {
    return this.#epoch;
  }
  /** The last offset seen on `stream`, or `undefined`. */
  get(stream) {
    return this.#last.get(stream);
  }
  /** Every remembered offset, by stream. */
  snapshot() {
    return Object.fromEntries(this.#last);
  }
  /**
   * Whether a message on `stream` at `offset` is new: `true` (and the offset
   * is remembered) unless it is at or below the last one seen there. A
   * message without a stream or a numeric offset (the server's own answers,
   * presence events) is always new.
   */
  accept(stream, offset) {
    if (typeof stream !== "string" || !isOffset(offset)) return true;
    const last = this.#last.get(stream);
    if (last !== void 0 && offset <= last) return false;
    this.#last.set(stream, offset);
    return true;
  }
  /**
   * The server's `connected`. `recovered`: the missed messages follow, so
   * the offsets stay where they are (the replay moves them on). Otherwise
   * the connection starts after `offsets`: they replace `@all` and `@user`,
   * and a new epoch forgets the channels' offsets too (they belong to the
   * old one).
   */
  connected(epoch, offsets, recovered) {
    if (recovered) return;
    if (typeof epoch === "string" && epoch !== this.#epoch) {
      this.#epoch = epoch;
      this.#last.clear();
    }
    const o = offsets && typeof offsets === "object" ? offsets : {};
    for (const stream of [ALL, USER]) {
      const v = o[stream];
      if (isOffset(v)) this.#last.set(stream, v);
      else this.#last.delete(stream);
    }
  }
  /**
   * The server's `subscribed` for `channel`: unless `recovered`, the
   * channel's messages start after `offset`.
   */
  subscribed(channel, offset, recovered) {
    if (recovered) return;
    if (isOffset(offset)) this.#last.set(channel, offset);
    else this.#last.delete(channel);
  }
  /** Forgets `stream` (an unsubscribed channel: a later subscribe starts afresh). */
  forget(stream) {
    this.#last.delete(stream);
  }
  /** Forgets every channel not in `keep` (a new connection has only the channels it subscribes to). */
  retainChannels(keep) {
    for (const stream of [...this.#last.keys()]) {
      if (stream !== ALL && stream !== USER && !keep.has(stream)) this.#last.delete(stream);
    }
  }
  /** The query of a reconnect that asks to recover, or `null` before any epoch is known. */
  recoveryQuery() {
    if (this.#epoch === null) return null;
    return { epoch: this.#epoch, since_all: this.#last.get(ALL) ?? 0, since_user: this.#last.get(USER) ?? 0 };
  }
  /** What a resubscribe to `channel` asks for, or `null` when nothing of it is remembered. */
  since(channel) {
    const since = this.#last.get(channel);
    if (this.#epoch === null || since === void 0) return null;
    return { since, epoch: this.#epoch };
  }
};

// packages/client/src/token.ts
function jwtExp(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3 || !parts[1]) return null;
  try {
    const claims = JSON.parse(base64UrlDecode(parts[1]));
    if (claims && typeof claims === "object" && "exp" in claims) {
      const exp = claims.exp;
      if (typeof exp === "number" && Number.isFinite(exp)) return exp;
    }
  } catch {
  }
  return null;
}
function base64UrlDecode(s) {
  const b64 = s.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(s.length / 4) * 4, "=");
  const binary = atob(b64);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}
function refreshDelayMs(remainingMs, marginMs) {
  if (remainingMs > 2 * marginMs) return remainingMs - marginMs;
  return Math.max(0, Math.floor(remainingMs / 2));
}

// packages/client/src/types.ts
var State = Object.freeze({
  Disconnected: "Disconnected",
  Connecting: "Connecting",
  Connected: "Connected"
});

// packages/client/src/url.ts
function defaultUrl() {
  const loc = globalThis.location;
  if (!loc) throw new TypeError("RealtimeClient: `url` is required outside a browser");
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc.host}/ws`;
}
function resolveUrl(url) {
  if (/^wss?:\/\//i.test(url)) return url;
  const loc = globalThis.location;
  const u = new URL(url, loc?.href);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  return u.toString();
}
function withToken(url, token) {
  if (!token) return url;
  const hash = url.indexOf("#");
  const base = hash < 0 ? url : url.slice(0, hash);
  const fragment = hash < 0 ? "" : url.slice(hash);
  const sep = base.includes("?") ? "&" : "?";
  return `${base}${sep}token=${encodeURIComponent(token)}${fragment}`;
}
function withQuery(url, params) {
  const entries = params ? Object.entries(params) : [];
  if (entries.length === 0) return url;
  const hash = url.indexOf("#");
  const base = hash < 0 ? url : url.slice(0, hash);
  const fragment = hash < 0 ? "" : url.slice(hash);
  const query = entries.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`).join("&");
  return `${base}${base.includes("?") ? "&" : "?"}${query}${fragment}`;
}

// packages/client/src/client.ts
var OPEN = 1;
var MAX_TIMER_MS = 2 ** 31 - 1;
var REFRESH_FAILED = "Token refresh failed";
var timestamp = () => (/* @__PURE__ */ new Date()).toISOString();
var describe = (e) => e instanceof Error ? e.message : String(e);
var RealtimeClient = class {
  // ---- configuration
  #url;
  #getToken;
  #WebSocket;
  #maxAttempts;
  #baseDelayMs;
  #maxDelayMs;
  #jitterMs;
  #helloTimeoutMs;
  #refreshBeforeMs;
  #log;
  // ---- runtime
  /** The token of the current connection (replaced by `getToken` and by each accepted refresh). */
  #token;
  #ws = null;
  /** Channels to keep subscribed to, with their `presence`. */
  #channels = /* @__PURE__ */ new Map();
  #opened = false;
  #state = State.Disconnected;
  #lastError = null;
  #connectCount = 0;
  #attempt = 0;
  #attemptsMade = 0;
  #manualClose = false;
  #generation = 0;
  #autoPending = false;
  #timers = {
    reconnect: null,
    hello: null,
    refresh: null
  };
  #refreshAt = 0;
  /** The token sent in a `refresh` that the server has not answered yet. */
  #pendingToken = null;
  // ---- recovery (docs/PROTOCOL.md §11)
  /** The epoch and the last offset seen on each stream; outlives connections. */
  #offsets = new StreamOffsets();
  /** The `userId` of the last hello: a reconnect as someone else does not recover. */
  #userId = null;
  /** This connection's URL asked to recover (`epoch`, `since_all`, `since_user`). */
  #askedRecovery = false;
  /** This connection follows an earlier successful one: it raises `recovered`. */
  #isReconnect = false;
  /** The server's `connected` of this connection has not been processed yet. */
  #helloPending = false;
  /** This connection has raised its `recovered` event. */
  #recoveredSent = false;
  /** Channels resubscribed on this reconnect whose answer is awaited → whether `since` was sent. */
  #resubscribing = /* @__PURE__ */ new Map();
  #listeners = new Listeners((type, e) => console.error(`RealtimeClient: listener for "${type}" threw`, e));
  #stateListeners = /* @__PURE__ */ new Set();
  constructor(options = {}) {
    this.#url = resolveUrl(options.url ?? defaultUrl());
    this.#token = options.token ?? null;
    const getToken = options.getToken ?? options.tokenProvider ?? null;
    this.#getToken = typeof getToken === "function" ? getToken : null;
    const impl = options.WebSocket ?? globalThis.WebSocket;
    if (typeof impl !== "function") {
      throw new TypeError(
        "RealtimeClient: no WebSocket implementation; pass `WebSocket` in the options (in Node 20: the `ws` package's class)"
      );
    }
    this.#WebSocket = impl;
    this.#maxAttempts = options.maxAttempts ?? 10;
    this.#baseDelayMs = options.baseDelayMs ?? 1e3;
    this.#maxDelayMs = options.maxDelayMs ?? 3e4;
    this.#jitterMs = options.jitterMs ?? 1e3;
    this.#helloTimeoutMs = options.helloTimeoutMs ?? 1e3;
    this.#refreshBeforeMs = options.refreshBeforeMs ?? 3e4;
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
  get state() {
    return this.#state;
  }
  /** Message of the most recent error (cleared by a successful connect), or `null`. */
  get lastError() {
    return this.#lastError;
  }
  /** Successful connects so far. */
  get connectCount() {
    return this.#connectCount;
  }
  /** Reconnect attempts since the last successful connect. */
  get reconnectAttempt() {
    return this.#attempt;
  }
  /** Whether the socket is open. */
  get connected() {
    return this.#state === State.Connected;
  }
  /** State, last error, connect count and reconnect attempt together. */
  get status() {
    return {
      state: this.#state,
      lastError: this.#lastError,
      connectCount: this.#connectCount,
      reconnectAttempt: this.#attempt
    };
  }
  /** The history's epoch of the remembered offsets (from `connected`), or `null` before one is known. */
  get epoch() {
    return this.#offsets.epoch;
  }
  /** The last offset seen on each stream: `@all`, `@user` and each channel (a copy). */
  get offsets() {
    return this.#offsets.snapshot();
  }
  /** The delay before reconnect attempt `attempt` (0-based), with fresh jitter. */
  nextDelayMs(attempt = this.#attempt) {
    return backoffDelay(attempt, this.#baseDelayMs, this.#maxDelayMs, Math.random, this.#jitterMs);
  }
  // -------------------------------------------------------- listeners
  /**
   * `callback(payload, message)` for every event of `type` (`"*"`: every
   * event, after the type's own callbacks). Returns the unsubscribe function.
   */
  on(type, callback) {
    return this.#listeners.on(type, callback);
  }
  /** `off(type, cb)`: that callback only; `off(type)`: every callback of `type`; `off()`: all. */
  off(type, callback) {
    this.#listeners.off(type, callback);
  }
  /** `callback(next, previous)` on every state change. Returns the unsubscribe function. */
  onStateChange(callback) {
    if (typeof callback !== "function") throw new TypeError("onStateChange(callback): callback must be a function");
    const entry = { cb: callback };
    this.#stateListeners.add(entry);
    return once(() => this.#stateListeners.delete(entry));
  }
  // ---------------------------------------------------------- actions
  /** Connects (a no-op while connecting or connected); cancels a pending backoff or a give-up. */
  connect() {
    this.#autoPending = false;
    this.#manualClose = false;
    if (this.#state !== State.Disconnected) return;
    this.#clearTimer("reconnect");
    this.#attempt = 0;
    void this.#open();
  }
  /** Closes with `1000` and stays closed until the next `connect()`. */
  disconnect() {
    this.#autoPending = false;
    this.#manualClose = true;
    this.#generation++;
    this.#clearTimer("reconnect");
    this.#attempt = 0;
    const ws = this.#ws;
    const wasActive = ws !== null || this.#state !== State.Disconnected;
    const wasOpen = this.#opened;
    if (ws) {
      this.#drop(ws);
      try {
        ws.close(1e3, "Client disconnect");
      } catch {
      }
    }
    this.#setState(State.Disconnected);
    if (wasActive && wasOpen) this.#synthetic("disconnected", { code: 1e3, reason: "Client disconnect" });
  }
  /**
   * Sends `{type, payload}`. `true` when handed to the socket; `false` and an
   * `error` event when not connected or the payload does not serialize.
   */
  send(type, payload) {
    const ws = this.#ws;
    if (!ws || this.#state !== State.Connected || ws.readyState !== OPEN) {
      this.#error("Not connected", "not_connected");
      return false;
    }
    let text;
    try {
      text = JSON.stringify({ type, payload: payload === void 0 ? null : payload });
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
  subscribe(channel, options = {}) {
    const presence = options.presence === true;
    this.#channels.set(channel, presence);
    this.#sendIfOpen({ type: "subscribe", payload: { channel, presence } });
  }
  /** Unsubscribes from `channel`; it is no longer restored on reconnect. */
  unsubscribe(channel) {
    this.#channels.delete(channel);
    this.#offsets.forget(channel);
    this.#resubscribing.delete(channel);
    this.#sendIfOpen({ type: "unsubscribe", payload: { channel } });
  }
  /** The channels this client keeps subscribed to, with their `presence`. */
  get channels() {
    return this.#channels;
  }
  #sendIfOpen(message) {
    const ws = this.#ws;
    if (ws && this.#state === State.Connected && ws.readyState === OPEN) {
      ws.send(JSON.stringify(message));
    }
  }
  // ------------------------------------------------------- connecting
  async #open() {
    const gen = ++this.#generation;
    this.#setState(State.Connecting);
    let token;
    try {
      token = await this.#nextToken();
    } catch (e) {
      if (gen !== this.#generation) return;
      this.#setState(State.Disconnected);
      this.#error(`getToken failed: ${describe(e)}`, "token");
      this.#scheduleReconnect();
      return;
    }
    if (gen !== this.#generation) return;
    const recovery = this.#offsets.recoveryQuery();
    let ws;
    try {
      ws = new this.#WebSocket(withQuery(withToken(this.#url, token), recovery));
    } catch (e) {
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
    ws.onerror = () => ws === this.#ws && this.#opened && this.#error("WebSocket error", "socket");
    ws.onclose = (ev) => ws === this.#ws && this.#onClose(ev?.code ?? 1006, ev?.reason ?? "");
  }
  /** The first connect uses `token` when given; later ones (and a first one without it) ask `getToken`. */
  async #nextToken() {
    const first = this.#attemptsMade++ === 0;
    if (this.#getToken && !(first && this.#token)) this.#token = String(await this.#getToken());
    return this.#token;
  }
  #onOpen() {
    this.#opened = true;
    this.#attempt = 0;
    this.#isReconnect = this.#connectCount > 0;
    this.#connectCount++;
    this.#lastError = null;
    this.#helloPending = true;
    this.#recoveredSent = false;
    this.#resubscribing.clear();
    this.#offsets.retainChannels(this.#channels);
    this.#setState(State.Connected);
    for (const [channel, presence] of this.#channels) {
      const since = this.#isReconnect ? this.#offsets.since(channel) : null;
      if (this.#isReconnect) this.#resubscribing.set(channel, since !== null);
      this.#sendIfOpen({ type: "subscribe", payload: { channel, presence, ...since ?? {} } });
    }
    this.#timers.hello = setTimeout(() => {
      this.#timers.hello = null;
      this.#syntheticHello();
    }, this.#helloTimeoutMs);
    this.#scheduleRefresh(jwtExp(this.#token));
  }
  #onMessage(data) {
    let msg;
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
      this.#clearTimer("hello");
      if (msg.type !== "connected") this.#syntheticHello();
    }
    let then = null;
    if (msg.offset !== void 0) {
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
  #onHello(payload) {
    const p = payload ?? {};
    const userId = typeof p.userId === "string" ? p.userId : null;
    const sameUser = userId === null || this.#userId === null || userId === this.#userId;
    if (userId !== null) this.#userId = userId;
    const recovered = this.#askedRecovery && p.recovered === true && sameUser && !this.#recoveredSent;
    this.#offsets.connected(p.epoch, p.offsets, recovered);
    if (!this.#isReconnect || this.#recoveredSent) return null;
    this.#recoveredSent = true;
    return () => this.#synthetic("recovered", { recovered });
  }
  /** The `connected` event made up by the client; on a reconnect, `recovered: false` follows. */
  #syntheticHello() {
    this.#synthetic("connected", {});
    if (this.#isReconnect && !this.#recoveredSent) {
      this.#recoveredSent = true;
      this.#synthetic("recovered", { recovered: false });
    }
  }
  /** `subscribed`: the channel's offset (unless recovered); a resubscribe's answer raises `recovered`. */
  #onSubscribed(payload) {
    const p = payload ?? {};
    if (typeof p.channel !== "string") return null;
    const channel = p.channel;
    const asked = this.#resubscribing.get(channel);
    this.#resubscribing.delete(channel);
    const recovered = asked === true && p.recovered === true;
    this.#offsets.subscribed(channel, p.offset, recovered);
    return asked === void 0 ? null : () => this.#synthetic("recovered", { recovered, channel });
  }
  /** An `error` that refuses a resubscribe: that channel did not recover. */
  #onSubscribeRefused(payload) {
    const channel = payload?.channel;
    if (typeof channel !== "string" || !this.#resubscribing.has(channel)) return null;
    this.#resubscribing.delete(channel);
    return () => this.#synthetic("recovered", { recovered: false, channel });
  }
  #onClose(code, reason) {
    const wasOpen = this.#opened;
    this.#drop(this.#ws);
    this.#setState(State.Disconnected);
    if (!wasOpen) {
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
    this.#scheduleReconnect();
  }
  #scheduleReconnect() {
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
  #scheduleRefresh(exp) {
    this.#clearTimer("refresh");
    if (!this.#getToken || !(this.#refreshBeforeMs > 0) || exp === null) return;
    this.#refreshAt = Date.now() + refreshDelayMs(exp * 1e3 - Date.now(), this.#refreshBeforeMs);
    this.#armRefresh();
  }
  #armRefresh() {
    const delay = Math.max(0, this.#refreshAt - Date.now());
    this.#timers.refresh = setTimeout(
      () => {
        this.#timers.refresh = null;
        if (Date.now() < this.#refreshAt) this.#armRefresh();
        else void this.#refresh();
      },
      Math.min(delay, MAX_TIMER_MS)
    );
  }
  async #refresh() {
    const ws = this.#ws;
    if (!ws || !this.#getToken) return;
    let token;
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
  #onRefreshAnswer(msg) {
    if (this.#pendingToken === null) return;
    const payload = msg.payload ?? {};
    if (msg.type === "refreshed") {
      const previousExp = jwtExp(this.#token);
      this.#token = this.#pendingToken;
      this.#pendingToken = null;
      const exp = typeof payload.expiresAt === "number" ? payload.expiresAt : jwtExp(this.#token);
      if (exp !== null && (previousExp === null || exp > previousExp)) this.#scheduleRefresh(exp);
      else this.#debug("the refreshed token does not expire later; no further refresh");
    } else if (msg.type === "error" && payload.message === REFRESH_FAILED) {
      this.#pendingToken = null;
      this.#lastError = REFRESH_FAILED;
    }
  }
  // ---------------------------------------------------------- helpers
  /** Forgets `ws`: its late events are ignored; no timer of this connection stays armed. */
  #drop(ws) {
    if (ws) ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    if (ws === this.#ws) this.#ws = null;
    this.#opened = false;
    this.#pendingToken = null;
    this.#clearTimer("hello");
    this.#clearTimer("refresh");
  }
  #clearTimer(which) {
    const timer = this.#timers[which];
    if (timer === null) return;
    clearTimeout(timer);
    this.#timers[which] = null;
  }
  #setState(next) {
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
  #error(message, kind, extra) {
    this.#lastError = message;
    this.#synthetic("error", { message, kind, ...extra });
  }
  /** A client-made event: `timestamp` added, `synthetic: true` on the message. */
  #synthetic(type, payload) {
    const full = { ...payload, timestamp: timestamp() };
    this.#debug(type, full);
    this.#listeners.emit({ type, payload: full, synthetic: true });
  }
  #debug(...args) {
    this.#log?.(...args);
  }
};

// packages/client/src/index.ts
var index_default = RealtimeClient;
export {
  ANY,
  Listeners,
  RealtimeClient,
  State,
  StreamOffsets,
  backoffDelay,
  index_default as default,
  isTerminalCloseCode,
  jwtExp,
  refreshDelayMs
};
