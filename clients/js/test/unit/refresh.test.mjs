// In-band token refresh with fake timers: when the `refresh` message goes
// out relative to the token's `exp`, what a `refreshed` answer plans next,
// and when no refresh is planned at all.
import { afterEach, beforeEach, test, mock } from "node:test";
import assert from "node:assert/strict";
import { RealtimeClient, jwtExp, refreshDelayMs } from "@wsedge/client";
import { FakeWebSocket, flush, record, tokenFor } from "./fake.mjs";

const T0 = 1_800_000_000_000; // fake clock start, ms
const NOW_S = T0 / 1000;

beforeEach(() => {
  FakeWebSocket.reset();
  mock.timers.enable({ apis: ["setTimeout", "Date"], now: T0 });
});
afterEach(() => mock.timers.reset());

async function advance(ms) {
  mock.timers.tick(ms);
  await flush();
}

const refreshes = (ws) => ws.sent.filter((m) => m.type === "refresh");

/** A connected client whose first token expires `lifetimeS` from now; getToken hands out tokens of the same lifetime. */
async function connected(lifetimeS, options = {}) {
  const issued = [];
  const client = new RealtimeClient({
    url: "ws://test/ws",
    token: tokenFor("u1", NOW_S + lifetimeS),
    getToken: async () => {
      const t = tokenFor("u1", Math.floor(Date.now() / 1000) + lifetimeS);
      issued.push(t);
      return t;
    },
    WebSocket: FakeWebSocket,
    ...options,
  });
  client.connect();
  await flush();
  const ws = FakeWebSocket.last;
  ws.open();
  ws.hello();
  return { client, ws, issued };
}

test("jwtExp reads exp; refreshDelayMs is a margin before it, or halfway for short tokens", () => {
  assert.equal(jwtExp(tokenFor("u", 1234)), 1234);
  assert.equal(jwtExp("not-a-jwt"), null);
  assert.equal(jwtExp("a.b.c"), null);
  assert.equal(jwtExp(null), null);
  assert.equal(refreshDelayMs(3_600_000, 30_000), 3_570_000);
  assert.equal(refreshDelayMs(60_001, 30_000), 30_001);
  assert.equal(refreshDelayMs(60_000, 30_000), 30_000);
  assert.equal(refreshDelayMs(40_000, 30_000), 20_000);
  assert.equal(refreshDelayMs(-5_000, 30_000), 0);
});

test("refresh goes out 30 s before exp; refreshed plans the next one from expiresAt", async () => {
  const { client, ws, issued } = await connected(120);
  await advance(89_999);
  assert.equal(refreshes(ws).length, 0, "not before exp - 30 s");
  await advance(1);
  assert.deepEqual(refreshes(ws), [{ type: "refresh", payload: { token: issued[0] } }]);
  const refreshed = record(client, "refreshed");
  ws.message({ type: "refreshed", payload: { expiresAt: jwtExp(issued[0]) } });
  assert.equal(refreshed.length, 1, "listeners still get refreshed");
  // The new token expires at 90 + 120 = 210 s: the next refresh at 180 s.
  await advance(89_999);
  assert.equal(refreshes(ws).length, 1);
  await advance(1);
  assert.equal(refreshes(ws).length, 2);
  assert.equal(refreshes(ws)[1].payload.token, issued[1]);
  client.disconnect();
});

test("a token shorter than two margins is refreshed halfway", async () => {
  const { client, ws } = await connected(40);
  await advance(19_999);
  assert.equal(refreshes(ws).length, 0);
  await advance(1);
  assert.equal(refreshes(ws).length, 1);
  client.disconnect();
});

test("refreshBeforeMs sets the margin", async () => {
  const { client, ws } = await connected(10, { refreshBeforeMs: 2_000 });
  await advance(7_999);
  assert.equal(refreshes(ws).length, 0);
  await advance(1);
  assert.equal(refreshes(ws).length, 1);
  client.disconnect();
});

test("a refused refresh plans no other; a reconnect (after 4001) asks getToken again", async () => {
  const { client, ws, issued } = await connected(120);
  await advance(90_000);
  ws.message({ type: "error", payload: { message: "Token refresh failed", timestamp: "t" } });
  assert.equal(client.lastError, "Token refresh failed");
  await advance(600_000);
  assert.equal(refreshes(ws).length, 1);
  ws.serverClose(4001, "token expired");
  await advance(2_000);
  assert.equal(FakeWebSocket.all.length, 2);
  assert.equal(FakeWebSocket.last.tokenParam, issued[1]);
  client.disconnect();
});

test("no further refresh when the refreshed token does not expire later", async () => {
  const fixed = tokenFor("u1", NOW_S + 120);
  const { client, ws } = await connected(120, { token: fixed, getToken: () => fixed });
  await advance(90_000);
  assert.equal(refreshes(ws).length, 1);
  ws.message({ type: "refreshed", payload: { expiresAt: NOW_S + 120 } });
  await advance(600_000);
  assert.equal(refreshes(ws).length, 1, "the same token is not sent again and again");
  client.disconnect();
});

test("no refresh without getToken, with refreshBeforeMs 0, or with a token without exp", async () => {
  for (const options of [{ getToken: null }, { refreshBeforeMs: 0 }, { token: "opaque", getToken: () => "opaque" }]) {
    FakeWebSocket.reset();
    const { client, ws } = await connected(120, options);
    await advance(3_600_000);
    assert.equal(refreshes(ws).length, 0, JSON.stringify(Object.keys(options)));
    client.disconnect();
  }
});

test("a lost connection cancels its planned refresh; the next connection plans its own", async (t) => {
  t.mock.method(Math, "random", () => 0); // reconnect after exactly 1 s
  const { client, ws } = await connected(120);
  await advance(10_000);
  ws.serverClose(1006);
  await advance(1_000); // the reconnect at 11 s gets a token expiring at 131 s: refresh at 101 s
  const ws2 = FakeWebSocket.last;
  assert.notEqual(ws2, ws);
  ws2.open();
  ws2.hello();
  await advance(79_000); // 90 s: the lost connection's refresh time
  assert.equal(refreshes(ws2).length, 0, "the old plan was cancelled");
  await advance(10_999);
  assert.equal(refreshes(ws2).length, 0);
  await advance(1);
  assert.equal(refreshes(ws2).length, 1);
  assert.equal(refreshes(ws).length, 0);
  client.disconnect();
});
