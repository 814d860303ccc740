// Listeners through the public client API: on / off(type, cb) / off(type) /
// "*", unsubscribe functions, and callbacks that throw.
import { afterEach, beforeEach, test } from "node:test";
import assert from "node:assert/strict";
import { RealtimeClient } from "@wsedge/client";
import { FakeWebSocket, flush } from "./fake.mjs";

let client;
let ws;

beforeEach(async () => {
  FakeWebSocket.reset();
  client = new RealtimeClient({ url: "ws://test/ws", token: "t", WebSocket: FakeWebSocket });
  client.connect();
  await flush();
  ws = FakeWebSocket.last;
  ws.open();
  ws.hello();
});
afterEach(() => client.disconnect());

test("callbacks get (payload, message), the type's own first, then '*'", () => {
  const calls = [];
  client.on("*", (p, m) => calls.push(["*", m.type, p]));
  client.on("news", (p, m) => calls.push(["news", m.type, p, m.synthetic]));
  ws.message({ type: "news", payload: { n: 1 } });
  ws.message({ type: "other", payload: 2 });
  assert.deepEqual(calls, [
    ["news", "news", { n: 1 }, undefined],
    ["*", "news", { n: 1 }],
    ["*", "other", 2],
  ]);
});

test("off(type, cb) removes only that callback", () => {
  const got = [];
  const a = (p) => got.push(`a${p}`);
  const b = (p) => got.push(`b${p}`);
  client.on("news", a);
  client.on("news", b);
  client.on("other", a);
  client.off("news", a);
  ws.message({ type: "news", payload: 1 });
  ws.message({ type: "other", payload: 2 });
  assert.deepEqual(got, ["b1", "a2"]);
  client.off("news", () => {}); // a function never added: nothing changes
  ws.message({ type: "news", payload: 3 });
  assert.deepEqual(got, ["b1", "a2", "b3"]);
});

test("off(type) removes every callback of the type, off() every callback", () => {
  const got = [];
  client.on("news", () => got.push("n1"));
  client.on("news", () => got.push("n2"));
  client.on("other", () => got.push("o"));
  client.off("news");
  ws.message({ type: "news", payload: null });
  ws.message({ type: "other", payload: null });
  assert.deepEqual(got, ["o"]);
  client.off();
  ws.message({ type: "other", payload: null });
  assert.deepEqual(got, ["o"]);
});

test("on returns an unsubscribe function; the same function added twice is two subscriptions", () => {
  const got = [];
  const cb = (p) => got.push(p);
  const first = client.on("news", cb);
  const second = client.on("news", cb);
  ws.message({ type: "news", payload: 1 });
  first();
  first(); // a second call does nothing (does not remove the other registration)
  ws.message({ type: "news", payload: 2 });
  second.unsubscribe();
  ws.message({ type: "news", payload: 3 });
  assert.deepEqual(got, [1, 1, 2]);
});

test("a callback that throws does not stop the others", (t) => {
  const errors = t.mock.method(console, "error", () => {});
  const got = [];
  client.on("news", () => {
    throw new Error("boom");
  });
  client.on("news", (p) => got.push(p));
  client.on("*", (p) => got.push(`*${p}`));
  ws.message({ type: "news", payload: 7 });
  assert.deepEqual(got, [7, "*7"]);
  assert.equal(errors.mock.callCount(), 1);
});

test("a callback may unsubscribe itself while the event is delivered", () => {
  const got = [];
  const off = client.on("news", (p) => {
    got.push(`once${p}`);
    off();
  });
  client.on("news", (p) => got.push(`always${p}`));
  ws.message({ type: "news", payload: 1 });
  ws.message({ type: "news", payload: 2 });
  assert.deepEqual(got, ["once1", "always1", "always2"]);
});
