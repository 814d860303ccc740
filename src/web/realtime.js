// realtime.js — browser client for the wsedge WebSocket endpoint.
//
// A plain ES module (no build step, no dependencies); the framework-free
// counterpart of the React `useRealtime` hook. Served by wsedge at
// GET /realtime.js.
//
//   import { RealtimeClient } from "/realtime.js";
//   const rt = new RealtimeClient({ tokenProvider: () => getJwt() });
//   rt.on("notification", (payload, msg) => console.log(payload));
//   rt.connect();
//   rt.send("test", { hello: "world" });
//
// Wire format, both directions: JSON text frames `{"type": string, "payload": any}`.
// The JWT travels as the `token` query parameter because browsers cannot set
// headers on a WebSocket upgrade.
//
// Events (all via `on(type, cb)`, callbacks get `(payload, message)`):
//   <server type>  every server message, e.g. "connected", "echo", "notification"
//   "open"         the socket opened                 payload {connectCount}
//   "disconnected" the socket closed                 payload {code, reason}
//   "error"        any client-side problem           payload {message}
//   "reconnecting" a retry was scheduled             payload {attempt, delayMs}
//   "*"            wildcard: receives all of the above
// Synthetic (client-made) events carry `synthetic: true` on the message object.

/** Connection states, as exposed by `client.state`. */
export const State = Object.freeze({
  Disconnected: "Disconnected",
  Connecting: "Connecting",
  Connected: "Connected",
});

// Exponent cap: 2^6 * base (64 s at the default base) is already past the
// default maxDelayMs, so growing further would only risk overflow.
const MAX_EXPONENT = 6;

/**
 * Reconnect delay for retry number `attempt` (0 for the first retry):
 * `min(base * 2^min(attempt, 6) + random(0..1000 ms), cap)`.
 * The jitter keeps many clients from reconnecting in lockstep after a
 * server restart.
 */
export function backoffDelay(attempt, base = 1000, cap = 30000, rand = Math.random) {
  const exp = Math.min(Math.max(0, Math.floor(attempt) || 0), MAX_EXPONENT);
  const jitter = Math.floor(rand() * 1000);
  return Math.min(base * 2 ** exp + jitter, cap);
}

/** Close codes in this range mean "do not come back" (e.g. auth revoked). */
function isTerminalCloseCode(code) {
  return code >= 4500 && code <= 4999;
}

/** Default endpoint: same host as the page, `wss:` when the page is https. */
function defaultUrl() {
  if (typeof location === "undefined") {
    throw new TypeError("RealtimeClient: `url` is required outside a browser");
  }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

/** Accepts absolute ws(s):// URLs, and http(s) or page-relative ones ("/ws"). */
function resolveUrl(url) {
  if (/^wss?:\/\//i.test(url)) return url;
  const base = typeof location === "undefined" ? undefined : location.href;
  const u = new URL(url, base);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  return u.toString();
}

/** Returns `fn` with `fn.unsubscribe === fn`, so both call styles work. */
function makeUnsubscribe(fn) {
  let done = false;
  const unsubscribe = () => {
    if (done) return;
    done = true;
    fn();
  };
  unsubscribe.unsubscribe = unsubscribe;
  return unsubscribe;
}

export class RealtimeClient {
  // --- configuration
  #url;
  #token;
  #tokenProvider;
  #maxAttempts;
  #baseDelayMs;
  #maxDelayMs;
  #WebSocket;

  // --- runtime
  #ws = null;
  #state = State.Disconnected;
  #lastError = null;
  #connectCount = 0;
  #attempt = 0; // retries scheduled since the last successful open
  #timer = null; // pending reconnect
  #manualClose = false; // set by disconnect(): no reconnects until connect()
  #generation = 0; // bumped to cancel an in-flight (async) open
  #autoPending = false;

  /** @type {Map<string, Set<{cb: Function}>>} */
  #listeners = new Map();
  /** @type {Set<{cb: Function}>} */
  #stateListeners = new Set();

  /**
   * @param {object} [options]
   * @param {string} [options.url] endpoint; default `ws(s)://<page host>/ws`
   * @param {string} [options.token] JWT sent as `?token=`
   * @param {() => (string|Promise<string>)} [options.tokenProvider] called on
   *   every (re)connect; wins over `token`, so refreshed tokens are picked up
   * @param {boolean} [options.autoConnect=false] connect right after construction
   *   (deferred to a microtask so listeners can be attached first)
   * @param {number} [options.maxAttempts=10] reconnect attempts before giving up
   * @param {number} [options.baseDelayMs=1000]
   * @param {number} [options.maxDelayMs=30000]
   * @param {typeof WebSocket} [options.WebSocket] implementation override (tests)
   */
  constructor({
    url,
    token = null,
    tokenProvider = null,
    autoConnect = false,
    maxAttempts = 10,
    baseDelayMs = 1000,
    maxDelayMs = 30000,
    WebSocket: WebSocketImpl = globalThis.WebSocket,
  } = {}) {
    this.#url = resolveUrl(url ?? defaultUrl());
    this.#token = token;
    this.#tokenProvider = typeof tokenProvider === "function" ? tokenProvider : null;
    this.#maxAttempts = maxAttempts;
    this.#baseDelayMs = baseDelayMs;
    this.#maxDelayMs = maxDelayMs;
    this.#WebSocket = WebSocketImpl;

    if (autoConnect) {
      this.#autoPending = true;
      queueMicrotask(() => {
        if (this.#autoPending) this.connect();
      });
    }
  }

  // ------------------------------------------------------------------ getters

  /** "Disconnected" | "Connecting" | "Connected" */
  get state() {
    return this.#state;
  }

  /** Message of the most recent error, or null. */
  get lastError() {
    return this.#lastError;
  }

  /** Number of successful opens so far. */
  get connectCount() {
    return this.#connectCount;
  }

  /** Retries scheduled since the last successful open (0 when healthy). */
  get reconnectAttempt() {
    return this.#attempt;
  }

  /** True when connected and the socket is writable. */
  get connected() {
    return this.#state === State.Connected;
  }

  /** Delay before retry number `attempt` (0-based), with fresh jitter. */
  nextDelayMs(attempt = this.#attempt) {
    return backoffDelay(attempt, this.#baseDelayMs, this.#maxDelayMs);
  }

  // ---------------------------------------------------------------- listeners

  /**
   * Subscribe to a message / event type ("*" for everything).
   * `cb(payload, message)`. Returns an unsubscribe function (which also has
   * an `.unsubscribe()` property).
   */
  on(type, cb) {
    if (typeof cb !== "function") throw new TypeError("RealtimeClient.on: callback must be a function");
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, (set = new Set()));
    // Wrap so that registering the same function twice yields two
    // independent subscriptions.
    const entry = { cb };
    set.add(entry);
    return makeUnsubscribe(() => {
      set.delete(entry);
      if (set.size === 0 && this.#listeners.get(type) === set) this.#listeners.delete(type);
    });
  }

  /** Remove every callback of `type` (of all types when called without one). */
  off(type) {
    if (type === undefined) this.#listeners.clear();
    else this.#listeners.delete(type);
  }

  /** `cb(newState, previousState)` on every state change. Returns unsubscribe. */
  onStateChange(cb) {
    if (typeof cb !== "function") throw new TypeError("RealtimeClient.onStateChange: callback must be a function");
    const entry = { cb };
    this.#stateListeners.add(entry);
    return makeUnsubscribe(() => this.#stateListeners.delete(entry));
  }

  // ------------------------------------------------------------------ actions

  /** Open the socket (no-op while connecting or connected). */
  connect() {
    this.#autoPending = false;
    this.#manualClose = false;
    if (this.#state !== State.Disconnected) return;
    // A user-initiated connect skips any pending backoff and starts afresh.
    this.#clearTimer();
    this.#attempt = 0;
    this.#open();
  }

  /** Close with code 1000 and stay closed until the next `connect()`. */
  disconnect() {
    this.#autoPending = false;
    this.#manualClose = true;
    this.#generation++; // abandon an in-flight tokenProvider call
    this.#clearTimer();
    this.#attempt = 0;

    const ws = this.#ws;
    const wasActive = ws !== null || this.#state !== State.Disconnected;
    if (ws) {
      // Detach first: the close event arrives later and must not trigger a
      // reconnect or a second "disconnected" event.
      this.#detach(ws);
      this.#ws = null;
      try {
        ws.close(1000, "Client disconnect");
      } catch {
        /* already closing */
      }
    }
    this.#setState(State.Disconnected);
    if (wasActive) this.#emit("disconnected", { code: 1000, reason: "Client disconnect" }, true);
  }

  /**
   * Send `{type, payload}`. Returns true when handed to the socket; false
   * (plus an "error" event) when not connected or not serializable.
   */
  send(type, payload) {
    const ws = this.#ws;
    if (!ws || this.#state !== State.Connected || ws.readyState !== 1 /* OPEN */) {
      this.#error("Not connected");
      return false;
    }
    let text;
    try {
      text = JSON.stringify({ type, payload: payload === undefined ? null : payload });
    } catch (e) {
      this.#error(`Cannot serialize message: ${e?.message ?? e}`);
      return false;
    }
    try {
      ws.send(text);
    } catch (e) {
      this.#error(`Send failed: ${e?.message ?? e}`);
      return false;
    }
    return true;
  }

  // ----------------------------------------------------------------- internal

  async #open() {
    const gen = ++this.#generation;
    this.#setState(State.Connecting);

    let token;
    try {
      token = this.#tokenProvider ? await this.#tokenProvider() : this.#token;
    } catch (e) {
      if (gen !== this.#generation) return;
      this.#setState(State.Disconnected);
      this.#error(`tokenProvider failed: ${e?.message ?? e}`);
      this.#scheduleReconnect();
      return;
    }
    // disconnect() (or another open) happened while we awaited the token.
    if (gen !== this.#generation) return;

    let url = this.#url;
    if (token) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(String(token));

    let ws;
    try {
      ws = new this.#WebSocket(url);
    } catch (e) {
      // A malformed URL will not fix itself: report and stay down.
      this.#setState(State.Disconnected);
      this.#error(`Cannot open WebSocket: ${e?.message ?? e}`);
      return;
    }
    this.#ws = ws;

    ws.onopen = () => {
      if (ws !== this.#ws) return;
      this.#attempt = 0;
      this.#connectCount++;
      this.#lastError = null;
      this.#setState(State.Connected);
      this.#emit("open", { connectCount: this.#connectCount }, true);
    };

    ws.onmessage = (ev) => {
      if (ws !== this.#ws) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        this.#error("Invalid JSON from server", { data: String(ev.data).slice(0, 200) });
        return;
      }
      if (!msg || typeof msg !== "object" || typeof msg.type !== "string") {
        this.#error("Message without a string `type`", { data: String(ev.data).slice(0, 200) });
        return;
      }
      this.#emit(msg.type, msg.payload, false, msg);
    };

    // Browsers give no detail here on purpose; the close event that always
    // follows carries the code.
    ws.onerror = () => {
      if (ws !== this.#ws) return;
      this.#error("WebSocket error");
    };

    ws.onclose = (ev) => {
      if (ws !== this.#ws) return;
      this.#detach(ws);
      this.#ws = null;
      const code = ev?.code ?? 1006;
      const reason = ev?.reason ?? "";
      this.#setState(State.Disconnected);
      this.#emit("disconnected", { code, reason }, true);

      if (this.#manualClose) return;
      if (isTerminalCloseCode(code)) {
        this.#error(`Server closed with ${code}${reason ? ` (${reason})` : ""}; not reconnecting`);
        return;
      }
      // Everything else — 1000 from the server, 1001 going away, 1006
      // abnormal (incl. a rejected upgrade), 4000-4499 — is worth a retry.
      this.#scheduleReconnect();
    };
  }

  #scheduleReconnect() {
    if (this.#manualClose || this.#timer !== null) return;
    if (this.#attempt >= this.#maxAttempts) {
      this.#error(`Giving up after ${this.#maxAttempts} reconnect attempts`);
      return;
    }
    const attempt = this.#attempt;
    const delayMs = this.nextDelayMs(attempt);
    this.#attempt = attempt + 1;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      if (!this.#manualClose && this.#state === State.Disconnected) this.#open();
    }, delayMs);
    this.#emit("reconnecting", { attempt: attempt + 1, maxAttempts: this.#maxAttempts, delayMs }, true);
  }

  #clearTimer() {
    if (this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
  }

  #detach(ws) {
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
  }

  #setState(next) {
    const prev = this.#state;
    if (prev === next) return;
    this.#state = next;
    for (const entry of [...this.#stateListeners]) {
      try {
        entry.cb(next, prev);
      } catch (e) {
        console.error("RealtimeClient: state listener threw", e);
      }
    }
  }

  #error(message, extra) {
    this.#lastError = message;
    this.#emit("error", extra ? { message, ...extra } : { message }, true);
  }

  /** Deliver to `type` listeners, then to "*" listeners. */
  #emit(type, payload, synthetic, message = { type, payload }) {
    if (synthetic) message = { type, payload, synthetic: true };
    const targets = [];
    for (const key of type === "*" ? ["*"] : [type, "*"]) {
      const set = this.#listeners.get(key);
      if (set) targets.push(...set); // copy: callbacks may unsubscribe
    }
    for (const entry of targets) {
      try {
        entry.cb(payload, message);
      } catch (e) {
        // A faulty listener must not break the socket handlers or its peers.
        console.error(`RealtimeClient: listener for "${type}" threw`, e);
      }
    }
  }
}

export default RealtimeClient;
