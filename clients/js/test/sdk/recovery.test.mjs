// Recovery (docs/PROTOCOL.md §11) with @wsedge/client against a real wsedge:
// a connection cut by the management API (close 4000) comes back with
// exactly the messages sent meanwhile, in order, without duplicates, then
// live ones, and `recovered: true`; after a server restart (a new epoch) it
// comes back with `recovered: false` and the new epoch's offsets.
//
// The reconnect is held in getToken until the test has sent what the client
// is to miss: no timing is guessed.
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { RealtimeClient } from "@wsedge/client";
import { WsedgeServer } from "@wsedge/server";
import { eventually, mintToken, nextEvent, randomSecret, startWsedge, stop, WAIT_MS } from "../support/wsedge.mjs";

const secret = randomSecret();
const adminKey = randomSecret();
const started = [];
const clients = [];
const admins = [];

after(async () => {
  for (const c of clients) c.disconnect();
  for (const a of admins) a.close();
  for (const s of started) await stop(s);
});

async function wsedge(options = {}) {
  const s = await startWsedge({ secret, adminKey, ...options });
  started.push(s);
  const admin = new WsedgeServer({ url: s.httpUrl, adminKey });
  admins.push(admin);
  return { s, admin };
}

/** A gate: `wait()` resolves once `open()` is called; `asked` resolves on the first `wait()`. */
function gate() {
  let open;
  let asked;
  const opened = new Promise((r) => (open = r));
  const askedP = new Promise((r) => (asked = r));
  return {
    open,
    asked: askedP,
    wait: () => {
      asked();
      return opened;
    },
  };
}

/**
 * A client for `user`, allowed the channel `news`, subscribed to it and
 * connected. Every reconnect waits in getToken for `client.hold` (a gate)
 * when one is set. `client.got` lists the stream messages and `recovered`
 * events as they were dispatched.
 */
async function connectedClient(url, user) {
  const token = () => mintToken(secret, user, 3600, { channels: ["news"] });
  const c = new RealtimeClient({
    url,
    token: token(),
    getToken: async () => {
      await c.hold?.wait();
      return token();
    },
    WebSocket,
    baseDelayMs: 50,
    jitterMs: 10,
    refreshBeforeMs: 0,
  });
  clients.push(c);
  c.hold = null;
  c.got = [];
  c.on("*", (payload, m) => {
    if (m.type === "recovered") c.got.push(["recovered", payload.channel ?? "", payload.recovered]);
    else if (m.offset !== undefined) c.got.push([m.type, m.channel, m.offset, payload]);
  });
  c.subscribe("news");
  const subscribed = nextEvent(c, "subscribed");
  c.connect();
  await subscribed;
  return c;
}

describe("@wsedge/client recovers what it missed", () => {
  it("a cut connection gets exactly the missed messages, in order, no duplicates, then live ones; recovered: true", async () => {
    const { s, admin } = await wsedge();
    const c = await connectedClient(s.wsUrl, "alice");
    assert.equal(await admin.broadcast("m", "before"), 1);
    assert.equal(await admin.publish("news", "n", "before"), 1);
    await eventually("both live messages", () => c.got.length === 2);
    const epoch = c.epoch;
    assert.equal(typeof epoch, "string");

    // The server cuts the connection with 4000; the client's reconnect waits in getToken.
    c.hold = gate();
    const down = nextEvent(c, "disconnected");
    assert.equal(await admin.disconnectUser("alice", { reconnect: true }), 1);
    assert.equal((await down).payload.code, 4000);
    await c.hold.asked;
    await eventually("alice is gone", async () => !(await admin.isUserConnected("alice")));

    // What she misses: broadcasts, sends (404 now, kept in her history), one
    // that leaves her out, and channel publishes.
    assert.equal(await admin.broadcast("m", "m1"), 0);
    assert.equal(await admin.sendToUser("alice", "d", "d1"), false);
    assert.equal(await admin.broadcast("m", "hidden", null, ["alice"]), 0);
    assert.equal(await admin.broadcast("m", "m2", ["alice"]), 0);
    assert.equal(await admin.publish("news", "n", "n1"), 0);
    assert.equal(await admin.broadcast("m", "m3"), 0);
    assert.equal(await admin.publish("news", "n", "n2"), 0);

    const hello = nextEvent(c, "connected");
    const back = nextEvent(c, "recovered", WAIT_MS, (p) => p.channel === undefined);
    const news = nextEvent(c, "recovered", WAIT_MS, (p) => p.channel === "news");
    c.hold.open();
    assert.equal((await hello).payload.recovered, true);
    assert.equal((await back).payload.recovered, true);
    assert.equal((await news).payload.recovered, true);
    assert.equal(c.epoch, epoch);

    assert.equal(await admin.broadcast("m", "live"), 1);
    assert.equal(await admin.publish("news", "n", "live"), 1);
    await eventually("the live messages", () => c.got.filter((g) => g[3] === "live").length === 2);
    assert.deepEqual(c.got, [
      ["m", "@all", 1, "before"],
      ["n", "news", 1, "before"],
      ["recovered", "", true],
      ["m", "@all", 2, "m1"],
      ["d", "@user", 1, "d1"],
      ["m", "@user", 2, "m2"],
      ["m", "@all", 4, "m3"],
      ["recovered", "news", true],
      ["n", "news", 2, "n1"],
      ["n", "news", 3, "n2"],
      ["m", "@all", 5, "live"],
      ["n", "news", 4, "live"],
    ]);
    assert.deepEqual(c.offsets, { "@all": 5, "@user": 2, news: 4 });
    c.disconnect();
  });

  it("after a server restart (a new epoch): recovered false, and the new epoch's messages get through", async () => {
    const { s, admin } = await wsedge();
    const c = await connectedClient(s.wsUrl, "bob");
    for (let i = 1; i <= 3; i++) {
      assert.equal(await admin.broadcast("m", `old-${i}`), 1);
      assert.equal(await admin.publish("news", "n", `old-${i}`), 1);
    }
    await eventually("the old epoch's messages", () => c.got.length === 6);
    const oldEpoch = c.epoch;

    c.hold = gate();
    const down = nextEvent(c, "disconnected");
    assert.deepEqual(await stop(s), { code: 0, signal: null });
    assert.equal((await down).payload.code, 1001);
    await c.hold.asked;
    const { admin: admin2 } = await wsedge({ bind: `127.0.0.1:${s.port}` });
    void admin;

    const back = nextEvent(c, "recovered", WAIT_MS, (p) => p.channel === undefined);
    const news = nextEvent(c, "recovered", WAIT_MS, (p) => p.channel === "news");
    c.hold.open();
    assert.equal((await back).payload.recovered, false);
    assert.equal((await news).payload.recovered, false);
    assert.notEqual(c.epoch, oldEpoch);

    // Offsets start again at 1: below the old epoch's, and still not duplicates.
    assert.equal(await admin2.broadcast("m", "new-1"), 1);
    assert.equal(await admin2.publish("news", "n", "new-1"), 1);
    await eventually("the new epoch's messages", () => c.got.filter((g) => g[3] === "new-1").length === 2);
    assert.deepEqual(c.got.slice(6), [
      ["recovered", "", false],
      ["recovered", "news", false],
      ["m", "@all", 1, "new-1"],
      ["n", "news", 1, "new-1"],
    ]);
    c.disconnect();
  });
});
