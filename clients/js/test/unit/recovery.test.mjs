// Recovery (docs/PROTOCOL.md §11) in the client: the offset bookkeeping on
// its own (StreamOffsets), then the client with a scripted WebSocket: what a
// reconnect and a resubscribe ask for, which messages are duplicates, and
// the `recovered` events; last, what useRealtime's snapshot makes of them.
import { afterEach, beforeEach, describe, mock, test } from "node:test";
import assert from "node:assert/strict";
import { RealtimeClient, StreamOffsets } from "@wsedge/client";
import { RealtimeSession } from "@wsedge/react";
import { FakeWebSocket, flush, record } from "./fake.mjs";

describe("StreamOffsets", () => {
  test("accept: new above the last offset of its stream, a duplicate at or below it; streams apart", () => {
    const o = new StreamOffsets();
    assert.equal(o.accept("@all", 1), true, "nothing seen yet: new");
    assert.equal(o.accept("@all", 1), false);
    assert.equal(o.accept("@all", 3), true, "a gap is not a duplicate");
    assert.equal(o.accept("@all", 2), false, "below the last");
    assert.equal(o.accept("@user", 1), true, "another stream counts apart");
    assert.equal(o.accept("news", 7), true);
    assert.equal(o.accept("news", 7), false);
    assert.deepEqual(o.snapshot(), { "@all": 3, "@user": 1, news: 7 });
    // Not on a stream, or no usable offset: always dispatched, nothing remembered.
    for (const [stream, offset] of [
      [undefined, undefined],
      ["news", undefined],
      ["news", "8"],
      ["news", -1],
      ["news", 1.5],
      [42, 1],
    ]) {
      assert.equal(o.accept(stream, offset), true, `${stream} ${offset}`);
    }
    assert.deepEqual(o.snapshot(), { "@all": 3, "@user": 1, news: 7 });
  });

  test("connected: recovered keeps the offsets; otherwise @all and @user start from it, a new epoch forgets channels", () => {
    const o = new StreamOffsets();
    assert.equal(o.recoveryQuery(), null, "no epoch yet: nothing to ask for");
    o.connected("e1", { "@all": 4, "@user": 2 }, false);
    assert.equal(o.epoch, "e1");
    assert.deepEqual(o.recoveryQuery(), { epoch: "e1", since_all: 4, since_user: 2 });
    o.accept("@all", 5);
    o.subscribed("news", 10, false);
    assert.deepEqual(o.since("news"), { since: 10, epoch: "e1" });
    assert.equal(o.since("other"), null, "never subscribed: nothing to ask for");

    o.connected("e1", { "@all": 9, "@user": 9 }, true);
    assert.deepEqual(o.snapshot(), { "@all": 5, "@user": 2, news: 10 }, "recovered: the replay moves them on");

    o.connected("e1", { "@all": 9, "@user": 8 }, false);
    assert.deepEqual(o.snapshot(), { "@all": 9, "@user": 8, news: 10 }, "same epoch, history lost: channels stay");

    o.connected("e2", { "@all": 0, "@user": 1 }, false);
    assert.equal(o.epoch, "e2");
    assert.deepEqual(o.snapshot(), { "@all": 0, "@user": 1 }, "a new epoch: only what connected says");
    assert.equal(o.accept("@all", 1), true, "offset 1 of the new epoch is new");

    o.connected(undefined, undefined, false); // a server without history: nothing to go by
    assert.equal(o.epoch, "e2");
    assert.deepEqual(o.snapshot(), {});
  });

  test("subscribed, forget and retainChannels", () => {
    const o = new StreamOffsets();
    o.connected("e", { "@all": 1, "@user": 1 }, false);
    o.subscribed("a", 3, false);
    o.subscribed("b", 5, false);
    o.accept("b", 6);
    o.subscribed("b", 9, true);
    assert.equal(o.get("b"), 6, "recovered: the replay moves it on");
    o.subscribed("b", 9, false);
    assert.equal(o.get("b"), 9);
    o.forget("a");
    assert.equal(o.get("a"), undefined);
    o.subscribed("c", 1, false);
    o.retainChannels(new Set(["c"]));
    assert.deepEqual(o.snapshot(), { "@all": 1, "@user": 1, c: 1 });
  });
});

describe("RealtimeClient recovery", () => {
  beforeEach(() => {
    FakeWebSocket.reset();
    mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_800_000_000_000 });
    mock.method(Math, "random", () => 0); // every first retry after 1000 ms
  });
  afterEach(() => {
    mock.timers.reset();
    mock.restoreAll();
  });

  const make = (options = {}) =>
    new RealtimeClient({ url: "ws://test/ws?x=1", token: "t0", WebSocket: FakeWebSocket, ...options });

  async function advance(ms) {
    mock.timers.tick(ms);
    await flush();
  }

  /** Connects, opens and says hello with `extra`; returns the socket. */
  async function connectWith(client, extra, userId = "u1") {
    client.connect();
    await flush();
    const ws = FakeWebSocket.last;
    ws.open();
    ws.hello(userId, extra);
    return ws;
  }

  /** The server cuts the connection (4000) and the client comes back after its backoff; returns the new socket, open. */
  async function cutAndReturn(ws) {
    ws.serverClose(4000, "disconnected by server");
    await advance(1000);
    const next = FakeWebSocket.last;
    assert.notEqual(next, ws, "a new attempt");
    next.open();
    return next;
  }

  const api = (type, channel, offset, payload = null) => ({ type, channel, offset, payload });

  test("the first connect asks for nothing; a message at or below the last offset of its stream is dropped", async () => {
    const client = make();
    const seen = record(client, "m", "join", "echo", "recovered");
    const ws = await connectWith(client, { epoch: "e1", offsets: { "@all": 5, "@user": 0 } });
    assert.deepEqual(ws.query, { x: "1" }, "no epoch or since on the first connect");
    assert.equal(client.epoch, "e1");
    assert.deepEqual(client.offsets, { "@all": 5, "@user": 0 });
    ws.message(api("m", "@all", 5, "old")); // sent before the connection: not for it
    ws.message(api("m", "@all", 6, "a6"));
    ws.message(api("m", "@all", 6, "dup"));
    ws.message(api("m", "@user", 1, "u1"));
    ws.message(api("m", "@user", 1, "dup"));
    ws.message({ type: "join", channel: "news", payload: { userId: "u2" } }); // presence: no offset
    ws.message({ type: "join", channel: "news", payload: { userId: "u2" } });
    ws.message({ type: "echo", payload: {} });
    assert.deepEqual(
      seen.map((e) => [e.type, e.payload]),
      [
        ["m", "a6"],
        ["m", "u1"],
        ["join", { userId: "u2" }],
        ["join", { userId: "u2" }],
        ["echo", {}],
      ],
    );
    assert.deepEqual(client.offsets, { "@all": 6, "@user": 1 });
    client.disconnect();
  });

  test("a reconnect asks for what it missed; recovered: the offsets stay, recovered follows connected, then the replay", async () => {
    const client = make();
    const events = [];
    client.on("*", (p, m) => events.push([m.type, m.type === "connected" ? p.recovered : p]));
    const first = await connectWith(client, { epoch: "e1", offsets: { "@all": 2, "@user": 0 } });
    first.message(api("m", "@all", 3, "a3"));
    first.message(api("m", "@user", 1, "u1"));
    events.length = 0;

    const ws = await cutAndReturn(first);
    assert.deepEqual(ws.query, { x: "1", epoch: "e1", since_all: "3", since_user: "1" });
    ws.hello("u1", { epoch: "e1", offsets: { "@all": 5, "@user": 2 }, recovered: true });
    // The replay, merged in send order, one of them a duplicate the server should not send but might.
    ws.message(api("m", "@all", 4, "a4"));
    ws.message(api("m", "@user", 2, "u2"));
    ws.message(api("m", "@all", 4, "a4 again"));
    ws.message(api("m", "@all", 5, "a5"));
    ws.message(api("m", "@all", 6, "live"));
    assert.deepEqual(events.map(([type]) => type).slice(0, 2), ["disconnected", "reconnecting"]);
    const recovered = events[3][1];
    assert.equal(typeof recovered.timestamp, "string");
    assert.deepEqual(events.slice(2), [
      ["connected", true],
      ["recovered", { recovered: true, timestamp: recovered.timestamp }],
      ["m", "a4"],
      ["m", "u2"],
      ["m", "a5"],
      ["m", "live"],
    ]);
    assert.deepEqual(client.offsets, { "@all": 6, "@user": 2 });
    client.disconnect();
  });

  test("not recovered (a new epoch): offsets start again from connected, lower offsets get through, recovered false", async () => {
    const client = make();
    const seen = record(client, "m", "recovered");
    const first = await connectWith(client, { epoch: "e1", offsets: { "@all": 40, "@user": 7 } });
    first.message(api("m", "@all", 41, "old epoch"));
    const ws = await cutAndReturn(first);
    assert.deepEqual(ws.query, { x: "1", epoch: "e1", since_all: "41", since_user: "7" });
    ws.hello("u1", { epoch: "e2", offsets: { "@all": 0, "@user": 0 }, recovered: false });
    ws.message(api("m", "@all", 1, "new epoch"));
    ws.message(api("m", "@all", 1, "dup"));
    assert.deepEqual(
      seen.map((e) => [e.type, e.payload.recovered ?? e.payload]),
      [
        ["m", "old epoch"],
        ["recovered", false],
        ["m", "new epoch"],
      ],
    );
    assert.equal(client.epoch, "e2");
    // The next reconnect asks in the new epoch.
    const third = await cutAndReturn(ws);
    assert.deepEqual(third.query, { x: "1", epoch: "e2", since_all: "1", since_user: "0" });
    client.disconnect();
  });

  test("a replay after a hello that did not recover (same epoch, history gone) is not dispatched", async () => {
    const client = make();
    const seen = record(client, "m");
    const first = await connectWith(client, { epoch: "e1", offsets: { "@all": 1, "@user": 0 } });
    const ws = await cutAndReturn(first);
    ws.hello("u1", { epoch: "e1", offsets: { "@all": 9, "@user": 0 }, recovered: false });
    ws.message(api("m", "@all", 9, "stale"));
    ws.message(api("m", "@all", 10, "live"));
    assert.deepEqual(seen.map((e) => e.payload), ["live"]);
    client.disconnect();
  });

  test("resubscribes carry since and epoch; each answer raises recovered with its channel; unsubscribe forgets", async () => {
    const client = make();
    client.subscribe("news", { presence: true });
    client.subscribe("room");
    client.subscribe("late");
    const seen = record(client, "n", "recovered", "subscribed");
    const first = await connectWith(client, { epoch: "e1", offsets: { "@all": 0, "@user": 0 } });
    const subs = (ws) => ws.sent.filter((m) => m.type === "subscribe").map((m) => m.payload);
    assert.deepEqual(subs(first), [
      { channel: "news", presence: true },
      { channel: "room", presence: false },
      { channel: "late", presence: false },
    ]);
    first.message({ type: "subscribed", payload: { channel: "news", offset: 3, epoch: "e1", timestamp: "t" } });
    first.message({ type: "subscribed", payload: { channel: "room", offset: 0, epoch: "e1", timestamp: "t" } });
    // "late" gets no answer before the cut: nothing of it is known.
    first.message(api("n", "news", 3, "n3 dup"));
    first.message(api("n", "news", 4, "n4"));
    first.message(api("n", "room", 1, "r1"));
    assert.deepEqual(seen.filter((e) => e.type === "recovered"), [], "no recovered on the first connect");
    seen.length = 0;

    const ws = await cutAndReturn(first);
    assert.deepEqual(subs(ws), [
      { channel: "news", presence: true, since: 4, epoch: "e1" },
      { channel: "room", presence: false, since: 1, epoch: "e1" },
      { channel: "late", presence: false },
    ]);
    ws.hello("u1", { epoch: "e1", offsets: { "@all": 0, "@user": 0 }, recovered: true });
    ws.message({ type: "subscribed", payload: { channel: "news", offset: 6, epoch: "e1", recovered: true } });
    ws.message(api("n", "news", 5, "n5"));
    ws.message(api("n", "news", 6, "n6"));
    ws.message({ type: "subscribed", payload: { channel: "room", offset: 4, epoch: "e1", recovered: false } });
    ws.message(api("n", "room", 4, "r4 before the subscription")); // at the offset subscribed gave: not new
    ws.message({
      type: "error",
      payload: { message: "not allowed to subscribe to late", channel: "late", timestamp: "t" },
    });
    ws.message(api("n", "room", 5, "r5"));
    const r = (e) => (e.type === "recovered" ? ["recovered", e.payload.channel ?? "-", e.payload.recovered] : [e.type, e.payload.channel ?? e.payload]);
    assert.deepEqual(seen.map(r), [
      ["recovered", "-", true],
      ["subscribed", "news"],
      ["recovered", "news", true],
      ["n", "n5"],
      ["n", "n6"],
      ["subscribed", "room"],
      ["recovered", "room", false],
      ["recovered", "late", false],
      ["n", "r5"],
    ]);

    client.unsubscribe("news");
    assert.equal(client.offsets.news, undefined, "forgotten");
    client.subscribe("news");
    assert.deepEqual(ws.sent.at(-1), { type: "subscribe", payload: { channel: "news", presence: false } });
    client.disconnect();
  });

  test("a channel subscribed by the management API is forgotten at the next connection", async () => {
    const client = make();
    const first = await connectWith(client, { epoch: "e1", offsets: { "@all": 0, "@user": 0 } });
    first.message({ type: "subscribed", payload: { channel: "staff", offset: 2, epoch: "e1" } });
    first.message(api("n", "staff", 3));
    assert.equal(client.offsets.staff, 3);
    const ws = await cutAndReturn(first);
    assert.equal(client.offsets.staff, undefined);
    assert.deepEqual(ws.sent, [], "nothing resubscribed");
    client.disconnect();
  });

  test("a reconnect without a hello: recovered false after the synthetic connected; a late hello does not recover", async () => {
    const client = make();
    const seen = record(client, "connected", "recovered", "m");
    const first = await connectWith(client, { epoch: "e1", offsets: { "@all": 3, "@user": 0 } });
    const ws = await cutAndReturn(first);
    await advance(1000); // the hello timeout
    ws.hello("u1", { epoch: "e1", offsets: { "@all": 5, "@user": 0 }, recovered: true });
    ws.message(api("m", "@all", 4, "replayed after we said false"));
    ws.message(api("m", "@all", 6, "live"));
    assert.deepEqual(
      seen.slice(1).map((e) => [e.type, e.synthetic, e.payload.recovered ?? e.payload]),
      [
        ["connected", true, { timestamp: seen[1].payload.timestamp }],
        ["recovered", true, false],
        ["connected", false, true], // the late hello is a plain message
        ["m", false, "live"],
      ],
    );
    client.disconnect();
  });

  test("connect() after disconnect() recovers too; a hello for another user does not", async () => {
    const client = make({ getToken: () => "t" });
    const seen = record(client, "recovered", "m");
    await connectWith(client, { epoch: "e1", offsets: { "@all": 3, "@user": 2 } });
    client.disconnect();
    const again = await connectWith(client, { epoch: "e1", offsets: { "@all": 4, "@user": 2 }, recovered: true });
    assert.deepEqual(again.query, { x: "1", epoch: "e1", since_all: "3", since_user: "2" });
    again.message(api("m", "@all", 4, "missed while disconnected"));

    const other = await cutAndReturn(again);
    other.hello("someone-else", { epoch: "e1", offsets: { "@all": 4, "@user": 9 }, recovered: true });
    other.message(api("m", "@user", 3, "another user's history"));
    other.message(api("m", "@user", 10, "theirs, live"));
    assert.deepEqual(
      seen.map((e) => [e.type, e.payload.recovered ?? e.payload]),
      [
        ["recovered", true],
        ["m", "missed while disconnected"],
        ["recovered", false],
        ["m", "theirs, live"],
      ],
    );
    client.disconnect();
  });

  test("useRealtime's snapshot: recovered is null until a reconnect, then its result; a new token resets it", async () => {
    const s = new RealtimeSession();
    s.configure({ url: "ws://test/ws", WebSocket: FakeWebSocket });
    const heard = [];
    s.on("recovered", (p) => heard.push(p.channel ?? p.recovered));
    s.subscribeChannel("news");
    s.start("tok-a");
    await flush();
    let ws = FakeWebSocket.last;
    ws.open();
    ws.hello("u1", { epoch: "e1", offsets: { "@all": 0, "@user": 0 } });
    ws.message({ type: "subscribed", payload: { channel: "news", offset: 0, epoch: "e1" } });
    assert.equal(s.getSnapshot().recovered, null);

    ws = await cutAndReturn(ws);
    ws.hello("u1", { epoch: "e1", offsets: { "@all": 0, "@user": 0 }, recovered: true });
    assert.equal(s.getSnapshot().recovered, true);
    ws.message({ type: "subscribed", payload: { channel: "news", offset: 0, epoch: "e1", recovered: false } });
    assert.equal(s.getSnapshot().recovered, true, "a channel's answer does not change it");

    ws = await cutAndReturn(ws);
    ws.hello("u1", { epoch: "e2", offsets: { "@all": 0, "@user": 0 }, recovered: false });
    assert.equal(s.getSnapshot().recovered, false);
    assert.deepEqual(heard, [true, "news", false]);

    s.stop();
    s.start("tok-b");
    assert.equal(s.getSnapshot().recovered, null, "a new token: a new first connection");
    s.stop();
  });
});
