// @wsedge/react's RealtimeSession (what useRealtime keeps between renders),
// driven as the hook drives it, with a scripted WebSocket: no token, token
// changes, unmount, listeners across clients, the snapshot React renders.
import { afterEach, beforeEach, test, mock } from "node:test";
import assert from "node:assert/strict";
import { NO_TOKEN, RealtimeSession } from "@wsedge/react";
import { FakeWebSocket, flush } from "./fake.mjs";

beforeEach(() => {
  FakeWebSocket.reset();
  mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_800_000_000_000 });
  mock.method(Math, "random", () => 0);
});
afterEach(() => {
  mock.timers.reset();
  mock.restoreAll();
});

function session(options = {}) {
  const s = new RealtimeSession();
  s.configure({ url: "ws://test/ws", WebSocket: FakeWebSocket, ...options });
  const renders = [];
  s.subscribe(() => renders.push(s.getSnapshot()));
  return { s, renders };
}

test("no token: error set, no socket", async () => {
  const { s } = session();
  s.start(null);
  await flush();
  assert.equal(FakeWebSocket.all.length, 0);
  assert.deepEqual(s.getSnapshot(), {
    isConnected: false,
    isConnecting: false,
    error: NO_TOKEN,
    connectionCount: 0,
    recovered: null,
  });
  s.connect();
  await flush();
  assert.equal(FakeWebSocket.all.length, 0, "connect() without a token does nothing either");
  assert.equal(s.send("x", 1), false);
});

test("a token connects; the snapshot follows the states and counts connects", async () => {
  const { s } = session();
  s.start("tok-a");
  assert.equal(s.getSnapshot().isConnecting, true);
  await flush();
  assert.equal(FakeWebSocket.last.tokenParam, "tok-a");
  FakeWebSocket.last.open();
  assert.deepEqual(s.getSnapshot(), {
    isConnected: true,
    isConnecting: false,
    error: null,
    connectionCount: 1,
    recovered: null,
  });
  FakeWebSocket.last.serverClose(1001, "server shutting down");
  assert.equal(s.getSnapshot().isConnected, false);
  mock.timers.tick(1000);
  await flush();
  FakeWebSocket.last.open();
  assert.equal(s.getSnapshot().connectionCount, 2);
  s.stop();
});

test("a new token closes the old socket and opens one with the new token; listeners stay", async () => {
  const { s } = session();
  const seen = [];
  s.on("news", (p) => seen.push(p));
  const events = [];
  s.on("*", (p, m) => events.push(m.type));
  s.start("tok-a");
  await flush();
  const first = FakeWebSocket.last;
  first.open();
  first.message({ type: "news", payload: "a" });

  s.stop(); // the effect's cleanup …
  s.start("tok-b"); // … and the effect with the new token
  assert.deepEqual(first.closedWith, { code: 1000, reason: "Client disconnect" });
  await flush();
  const second = FakeWebSocket.last;
  assert.equal(second.tokenParam, "tok-b");
  second.open();
  second.message({ type: "news", payload: "b" });
  first.message({ type: "news", payload: "stale" }); // the old socket is ignored
  assert.deepEqual(seen, ["a", "b"]);
  assert.ok(events.includes("disconnected"), "the old connection's end reaches the listeners");
  assert.equal(s.getSnapshot().connectionCount, 2);
  s.stop();
});

test("stop (unmount) closes the socket and nothing reconnects", async () => {
  const { s } = session();
  s.start("tok");
  await flush();
  const ws = FakeWebSocket.last;
  ws.open();
  s.stop();
  assert.deepEqual(ws.closedWith, { code: 1000, reason: "Client disconnect" });
  mock.timers.tick(120_000);
  await flush();
  assert.equal(FakeWebSocket.all.length, 1);
  assert.equal(s.getSnapshot().isConnected, false);
});

test("autoConnect false: nothing until connect(); a new token then reconnects", async () => {
  const { s } = session({ autoConnect: false });
  s.start("tok-a");
  await flush();
  assert.equal(FakeWebSocket.all.length, 0);
  s.connect();
  await flush();
  assert.equal(FakeWebSocket.all.length, 1);
  FakeWebSocket.last.open();
  s.stop();
  s.start("tok-b");
  await flush();
  assert.equal(FakeWebSocket.all.length, 2);
  assert.equal(FakeWebSocket.last.tokenParam, "tok-b");
  s.disconnect();
  s.stop();
  s.start("tok-c");
  await flush();
  assert.equal(FakeWebSocket.all.length, 2, "after disconnect() a new token does not connect by itself");
});

test("4500 stops the reconnecting and sets error; the options map onto the client", async () => {
  const { s } = session({ reconnectInterval: 200, maxReconnectAttempts: 1 });
  s.start("tok");
  await flush();
  FakeWebSocket.last.open();
  FakeWebSocket.last.serverClose(4000, "disconnected by server");
  mock.timers.tick(199);
  await flush();
  assert.equal(FakeWebSocket.all.length, 1);
  mock.timers.tick(1);
  await flush();
  assert.equal(FakeWebSocket.all.length, 2, "reconnectInterval is the backoff base");
  FakeWebSocket.last.open();
  FakeWebSocket.last.serverClose(4500, "disconnected by server, do not reconnect");
  mock.timers.tick(120_000);
  await flush();
  assert.equal(FakeWebSocket.all.length, 2);
  assert.match(s.getSnapshot().error, /4500/);
  s.stop();
});
