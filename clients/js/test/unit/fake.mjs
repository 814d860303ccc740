// Test doubles for the unit tests: a scripted WebSocket class (the tests
// play the server's part by hand) and HS256-shaped tokens with a chosen exp.
// The unit tests never open a socket; the SDK tests do (test/sdk/).

/** A WebSocket whose every event is fired by the test. */
export class FakeWebSocket {
  /** Every socket made, oldest first. */
  static all = [];
  static reset() {
    FakeWebSocket.all = [];
  }
  static get last() {
    return FakeWebSocket.all.at(-1);
  }

  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    this.onopen = this.onmessage = this.onerror = this.onclose = null;
    FakeWebSocket.all.push(this);
  }

  send(data) {
    if (this.readyState !== 1) throw new Error("not open");
    this.sent.push(JSON.parse(data));
  }

  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }

  // ---- the server's side

  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  /** The server's `connected` hello; `extra` adds fields (`epoch`, `offsets`, `recovered`). */
  hello(userId = "u1", extra = {}) {
    this.message({ type: "connected", payload: { userId, connectionId: "0-1-1", timestamp: "t", ...extra } });
  }
  message(obj) {
    this.onmessage?.({ data: typeof obj === "string" ? obj : JSON.stringify(obj) });
  }
  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  /** An attempt that never opens (refused, 401): browsers report 1006. */
  fail() {
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code: 1006, reason: "" });
  }
  get tokenParam() {
    return new URL(this.url).searchParams.get("token");
  }
  /** The query of the URL as an object (`token` left out). */
  get query() {
    const q = Object.fromEntries(new URL(this.url).searchParams);
    delete q.token;
    return q;
  }
}

/** A JWT-shaped token (unsigned: the client never checks signatures) for `sub`, expiring at `exp`. */
export function tokenFor(sub, exp) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp })}.sig`;
}

/** Lets pending promise callbacks (getToken, #open) run. */
export const flush = () => new Promise((resolve) => setImmediate(resolve));

/** Collects the events of `types` from `client.on` as `{type, payload, synthetic}`. */
export function record(client, ...types) {
  const seen = [];
  for (const type of types) client.on(type, (payload, msg) => seen.push({ type, payload, synthetic: !!msg.synthetic }));
  return seen;
}
