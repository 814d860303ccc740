// The client's connection state machine with a scripted WebSocket and fake
// timers: the backoff schedule, the attempt limit and its reset, and when
// it must not reconnect (disconnect(), 4500-4999).
import { afterEach, beforeEach, test, mock } from "node:test";
import assert from "node:assert/strict";
import { RealtimeClient } from "@wsedge/client";
import { FakeWebSocket, flush, record } from "./fake.mjs";

beforeEach(() => {
  FakeWebSocket.reset();
  mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_800_000_000_000 });
  mock.method(Math, "random", () => 0.5); // jitter: 500 ms on every delay
});
afterEach(() => {
  mock.timers.reset();
  mock.restoreAll();
});

function make(options = {}) {
  return new RealtimeClient({ url: "ws://test/ws", token: "t0", WebSocket: FakeWebSocket, ...options });
}

/** Moves the fake clock `ms` forward and lets the resulting promises run. */
async function advance(ms) {
  mock.timers.tick(ms);
  await flush();
}

test("failed attempts back off 1.5, 2.5, 4.5 … s (jitter 0.5 s), capped at 30 s, then give up", async () => {
  const client = make({ maxAttempts: 8 });
  const events = record(client, "reconnecting", "error", "disconnected");
  client.connect();
  await flush();
  const expected = [1500, 2500, 4500, 8500, 16500, 30000, 30000, 30000];
  for (let i = 0; i < expected.length; i++) {
    assert.equal(FakeWebSocket.all.length, i + 1, `attempt ${i} opened a socket`);
    FakeWebSocket.last.fail();
    const r = events.filter((e) => e.type === "reconnecting").at(-1);
    assert.equal(r.payload.attempt, i + 1);
    assert.equal(r.payload.delayMs, expected[i]);
    assert.equal(r.payload.maxAttempts, 8);
    assert.equal(typeof r.payload.timestamp, "string");
    await advance(expected[i] - 1);
    assert.equal(FakeWebSocket.all.length, i + 1, `no new socket 1 ms before the delay of attempt ${i + 1}`);
    await advance(1);
  }
  FakeWebSocket.last.fail();
  assert.equal(events.at(-1).type, "error");
  assert.equal(events.at(-1).payload.kind, "gave_up");
  await advance(120_000);
  assert.equal(FakeWebSocket.all.length, 9, "no attempt after giving up");
  assert.equal(events.filter((e) => e.type === "disconnected").length, 0, "failed attempts are not disconnects");
  assert.equal(client.state, "Disconnected");
  client.connect(); // connect() starts afresh after a give-up
  await flush();
  assert.equal(FakeWebSocket.all.length, 10);
});

test("a successful connect resets the attempt count", async () => {
  const client = make();
  const events = record(client, "reconnecting");
  client.connect();
  await flush();
  FakeWebSocket.last.fail();
  await advance(1500);
  FakeWebSocket.last.fail();
  await advance(2500);
  assert.deepEqual(events.map((e) => e.payload.attempt), [1, 2]);
  FakeWebSocket.last.open();
  assert.equal(client.reconnectAttempt, 0);
  assert.equal(client.connectCount, 1);
  FakeWebSocket.last.serverClose(1001, "server shutting down");
  assert.deepEqual(events.at(-1).payload.attempt, 1, "the count starts again at 1");
  assert.equal(events.at(-1).payload.delayMs, 1500);
  client.disconnect();
});

test("reconnects after 1000 from the server, 1001, 1006, 4000 and 4001", async () => {
  for (const code of [1000, 1001, 1006, 4000, 4001]) {
    FakeWebSocket.reset();
    const client = make();
    const events = record(client, "disconnected", "reconnecting");
    client.connect();
    await flush();
    FakeWebSocket.last.open();
    FakeWebSocket.last.serverClose(code, "bye");
    assert.deepEqual(events[0].payload.code, code);
    assert.equal(events[0].payload.reason, "bye");
    assert.equal(typeof events[0].payload.timestamp, "string");
    assert.equal(events[1]?.type, "reconnecting", `after ${code}`);
    await advance(1500);
    assert.equal(FakeWebSocket.all.length, 2, `a new attempt after ${code}`);
    client.disconnect();
  }
});

test("no reconnect after a 4500-4999 close", async () => {
  for (const code of [4500, 4999]) {
    FakeWebSocket.reset();
    const client = make();
    const events = record(client, "disconnected", "reconnecting", "error");
    client.connect();
    await flush();
    FakeWebSocket.last.open();
    FakeWebSocket.last.serverClose(code, "disconnected by server, do not reconnect");
    assert.deepEqual(
      events.map((e) => e.type),
      ["disconnected", "error"],
    );
    assert.equal(events[1].payload.kind, "terminal_close");
    await advance(120_000);
    assert.equal(FakeWebSocket.all.length, 1, `no new socket after ${code}`);
    assert.equal(client.state, "Disconnected");
  }
});

test("no reconnect after disconnect(), even with a retry pending", async () => {
  const client = make();
  const events = record(client, "disconnected");
  client.connect();
  await flush();
  const ws = FakeWebSocket.last;
  ws.open();
  client.disconnect();
  assert.deepEqual(ws.closedWith, { code: 1000, reason: "Client disconnect" });
  assert.equal(events.length, 1);
  assert.equal(events[0].payload.code, 1000);
  ws.serverClose(1000, "late close event"); // ignored: the socket was let go
  await advance(120_000);
  assert.equal(FakeWebSocket.all.length, 1);

  client.connect();
  await flush();
  FakeWebSocket.last.fail(); // a retry is now pending …
  client.disconnect(); // … and cancelled
  await advance(120_000);
  assert.equal(FakeWebSocket.all.length, 2);
});

test("connected fires once per connection: the server's hello, or a synthetic one after 1 s", async () => {
  const client = make();
  const events = record(client, "connected", "news");
  client.connect();
  await flush();
  FakeWebSocket.last.open();
  assert.equal(client.state, "Connected");
  FakeWebSocket.last.hello("alice");
  FakeWebSocket.last.message({ type: "connected", payload: { userId: "again" } }); // a later one is a plain message
  assert.equal(events[0].payload.userId, "alice");
  assert.equal(events[0].synthetic, false);

  FakeWebSocket.last.serverClose(1001);
  await advance(1500);
  FakeWebSocket.last.open();
  await advance(999);
  assert.equal(events.length, 2);
  await advance(1);
  assert.equal(events.length, 3);
  assert.equal(events[2].synthetic, true);
  assert.equal(typeof events[2].payload.timestamp, "string");

  FakeWebSocket.last.serverClose(1001);
  await advance(1500);
  FakeWebSocket.last.open();
  FakeWebSocket.last.message({ type: "news", payload: 1 }); // something else first: connected is made up at once
  assert.deepEqual(
    events.slice(3).map((e) => [e.type, e.synthetic]),
    [
      ["connected", true],
      ["news", false],
    ],
  );
  client.disconnect();
});

test("send: true when open; false and an error event with a timestamp when not", async () => {
  const client = make();
  const errors = record(client, "error");
  assert.equal(client.send("chat", { a: 1 }), false);
  assert.equal(errors[0].payload.kind, "not_connected");
  assert.equal(typeof errors[0].payload.timestamp, "string");
  assert.equal(client.lastError, "Not connected");
  client.connect();
  await flush();
  FakeWebSocket.last.open();
  assert.equal(client.lastError, null, "a connect clears the last error");
  assert.equal(client.send("chat", { a: 1 }), true);
  assert.equal(client.send("nothing"), true);
  const big = {};
  big.self = big;
  assert.equal(client.send("cyclic", big), false);
  assert.equal(errors.at(-1).payload.kind, "encode");
  assert.deepEqual(FakeWebSocket.last.sent, [
    { type: "chat", payload: { a: 1 } },
    { type: "nothing", payload: null },
  ]);
  client.disconnect();
});

test("the first connect uses token; reconnects ask getToken each time", async () => {
  let n = 0;
  const client = make({ token: "first", getToken: async () => `fresh-${++n}` });
  client.connect();
  await flush();
  assert.equal(FakeWebSocket.last.tokenParam, "first");
  FakeWebSocket.last.open();
  FakeWebSocket.last.serverClose(4001, "token expired");
  await advance(1500);
  assert.equal(FakeWebSocket.last.tokenParam, "fresh-1");
  FakeWebSocket.last.fail();
  await advance(2500);
  assert.equal(FakeWebSocket.last.tokenParam, "fresh-2");
  client.disconnect();

  // Without a token, getToken is asked for the first connect too; a failing getToken is a failed attempt.
  FakeWebSocket.reset();
  const failing = make({ token: null, getToken: () => Promise.reject(new Error("no session")) });
  const events = record(failing, "error", "reconnecting");
  failing.connect();
  await flush();
  assert.equal(FakeWebSocket.all.length, 0);
  assert.deepEqual(
    events.map((e) => [e.type, e.payload.kind ?? e.payload.attempt]),
    [
      ["error", "token"],
      ["reconnecting", 1],
    ],
  );
  failing.disconnect();
});

test("subscriptions go out on open, again after a reconnect, and not after unsubscribe", async () => {
  const client = make();
  client.subscribe("news", { presence: true });
  client.subscribe("room");
  client.connect();
  await flush();
  FakeWebSocket.last.open();
  const subs = (ws) => ws.sent.filter((m) => m.type === "subscribe").map((m) => m.payload);
  assert.deepEqual(subs(FakeWebSocket.last), [
    { channel: "news", presence: true },
    { channel: "room", presence: false },
  ]);
  client.unsubscribe("room");
  assert.deepEqual(FakeWebSocket.last.sent.at(-1), { type: "unsubscribe", payload: { channel: "room" } });
  FakeWebSocket.last.serverClose(4000, "disconnected by server");
  await advance(1500);
  assert.equal(FakeWebSocket.all.length, 2, "reconnected");
  FakeWebSocket.last.open();
  assert.deepEqual(subs(FakeWebSocket.last), [{ channel: "news", presence: true }]);
  assert.deepEqual([...client.channels.keys()], ["news"]);
});
