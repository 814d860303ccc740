// @wsedge/client in Node (WebSocket from the `ws` package) against a real
// wsedge binary: the hello, send and echo, ping, a refused token, a server
// restart on the same port, and tokens that expire while connected.
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { RealtimeClient } from "@wsedge/client";
import { eventually, mintToken, nextEvent, randomSecret, startWsedge, stop, WAIT_MS } from "../support/wsedge.mjs";

const secret = randomSecret();
const adminKey = randomSecret();
const started = [];
const clients = [];

async function wsedge(options = {}) {
  const s = await startWsedge({ secret, adminKey, ...options });
  started.push(s);
  return s;
}

function client(options) {
  const c = new RealtimeClient({ WebSocket, ...options });
  clients.push(c);
  return c;
}

after(async () => {
  for (const c of clients) c.disconnect();
  for (const s of started) await stop(s);
});

describe("@wsedge/client over real sockets", () => {
  it("needs a WebSocket implementation in Node 20", () => {
    if (globalThis.WebSocket) return; // Node 22+ has one
    assert.throws(() => new RealtimeClient({ url: "ws://127.0.0.1:1/ws" }), /WebSocket/);
  });

  it("connects: the hello is the connected event; send is echoed; ping gets pong", async () => {
    const s = await wsedge();
    const c = client({ url: s.wsUrl, token: mintToken(secret, "alice") });
    const hello = nextEvent(c, "connected");
    c.connect();
    const { payload, message } = await hello;
    assert.equal(payload.userId, "alice");
    assert.equal(message.synthetic, undefined, "not made up: the server's own message");
    assert.equal(c.state, "Connected");
    const echo = nextEvent(c, "echo");
    assert.equal(c.send("chat", { text: "hi" }), true);
    assert.deepEqual((await echo).payload.originalMessage, { type: "chat", payload: { text: "hi" } });
    const pong = nextEvent(c, "pong");
    c.send("ping");
    assert.equal(typeof (await pong).payload.timestamp, "string");
    c.disconnect();
  });

  it("a refused token is a failed attempt: error and reconnecting, no disconnected", async () => {
    const s = await wsedge();
    const c = client({ url: s.wsUrl, token: "not-a-token", maxAttempts: 1, baseDelayMs: 50, jitterMs: 10 });
    const seen = [];
    c.on("*", (_p, m) => seen.push(m.type));
    const gaveUp = nextEvent(c, "error", WAIT_MS, (p) => p.kind === "gave_up");
    c.connect();
    await gaveUp;
    assert.deepEqual(seen, ["error", "reconnecting", "error", "error"]);
    assert.equal(c.connectCount, 0);
  });

  it("comes back after the server restarts on the same port, with its backoff", async () => {
    const s = await wsedge();
    const c = client({ url: s.wsUrl, token: mintToken(secret, "bob") });
    const first = nextEvent(c, "connected");
    c.connect();
    await first;

    const closed = nextEvent(c, "disconnected");
    const retry1 = nextEvent(c, "reconnecting", WAIT_MS, (p) => p.attempt === 1);
    const retry2 = nextEvent(c, "reconnecting", WAIT_MS, (p) => p.attempt === 2);
    assert.deepEqual(await stop(s), { code: 0, signal: null });
    const down = await closed;
    assert.equal(down.payload.code, 1001, "a graceful shutdown closes with 1001");
    const r1 = await retry1;
    assert.ok(r1.payload.delayMs >= 1000 && r1.payload.delayMs < 2000, `first delay ${r1.payload.delayMs}`);
    // The server stays down through the first retry: the second waits 2-3 s.
    const r2 = await retry2;
    assert.ok(r2.payload.delayMs >= 2000 && r2.payload.delayMs < 3000, `second delay ${r2.payload.delayMs}`);
    assert.ok(r2.at - r1.at >= r1.payload.delayMs - 50, "the first retry waited its delay");

    const again = nextEvent(c, "connected", 10_000);
    const s2 = await wsedge({ bind: `127.0.0.1:${s.port}` });
    const back = await again;
    assert.equal(back.payload.userId, "bob");
    assert.ok(back.at - r2.at >= r2.payload.delayMs - 50, "the second retry waited its delay");
    assert.equal(c.connectCount, 2);
    assert.equal(c.reconnectAttempt, 0);
    c.disconnect();
    await stop(s2);
  });
});

describe("token refresh before exp (server leeway 0, tokens of 3 s)", () => {
  const LIFETIME = 3;

  it("without getToken the server closes with 4001 at exp", async () => {
    const s = await wsedge({ args: ["--jwt-leeway-secs", "0"] });
    const c = client({ url: s.wsUrl, token: mintToken(secret, "short", LIFETIME), maxAttempts: 0 });
    const closed = nextEvent(c, "disconnected", (LIFETIME + 5) * 1000);
    c.connect();
    assert.equal((await closed).payload.code, 4001);
  });

  it("with getToken the connection outlives several tokens, refreshed in-band", async () => {
    const s = await wsedge({ args: ["--jwt-leeway-secs", "0"] });
    let issued = 0;
    const c = client({
      url: s.wsUrl,
      getToken: () => {
        issued++;
        return mintToken(secret, "long-lived", LIFETIME);
      },
      refreshBeforeMs: 1000,
    });
    const events = [];
    c.on("*", (p, m) => events.push({ type: m.type, p, at: Date.now() }));
    const hello = nextEvent(c, "connected");
    c.connect();
    const { at: openedAt } = await hello;
    // Three refreshes take past the third token's exp: at least 2.5 token lifetimes.
    await eventually("three refreshed answers", () => events.filter((e) => e.type === "refreshed").length >= 3, 20_000);
    const echo = nextEvent(c, "echo");
    c.send("still-here");
    await echo;
    const lived = Date.now() - openedAt;
    assert.ok(lived > (LIFETIME + 1) * 1000, `connected for ${lived} ms, past the first token's exp`);
    assert.deepEqual(
      events.filter((e) => e.type === "disconnected" || e.type === "error"),
      [],
      "no close, no error (a refused refresh would be the server's error message)",
    );
    assert.equal(c.connectCount, 1);
    assert.ok(issued >= 4, `getToken called ${issued} times (connect + each refresh)`);
    c.disconnect();
  });
});
