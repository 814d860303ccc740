// @wsedge/server against a real wsedge binary on a free loopback port, with
// real WebSocket clients (@wsedge/client over `ws`) on the receiving end.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import WebSocket from "ws";
import { RealtimeClient } from "@wsedge/client";
import * as sdk from "@wsedge/server";
import { WsedgeError, WsedgeServer, WsedgeTimeoutError } from "@wsedge/server";
import { mintToken, nextEvent, randomSecret, startWsedge, stop, WAIT_MS } from "../support/wsedge.mjs";

const secret = randomSecret();
const adminKey = randomSecret();
let server;
let admin;
const clients = new Map();

/** A connected RealtimeClient for `user`, with every received message in `.inbox`. */
async function user(name, options = {}) {
  const c = new RealtimeClient({
    url: server.wsUrl,
    token: mintToken(secret, name),
    WebSocket,
    baseDelayMs: 100,
    jitterMs: 100,
    ...options,
  });
  c.inbox = [];
  c.on("*", (payload, m) => c.inbox.push({ type: m.type, payload, synthetic: !!m.synthetic }));
  const hello = nextEvent(c, "connected");
  c.connect();
  await hello;
  clients.set(name, c);
  return c;
}

/** Waits for the message of `type` whose payload has `marker`; returns the inbox position. */
async function received(c, type, marker) {
  const has = () => c.inbox.findIndex((m) => m.type === type && m.payload?.marker === marker);
  if (has() >= 0) return has();
  await nextEvent(c, type, WAIT_MS, (p) => p?.marker === marker);
  return has();
}

before(async () => {
  server = await startWsedge({ secret, adminKey });
  admin = new WsedgeServer({ url: server.httpUrl, adminKey });
  await user("u1");
  await user("u2");
});

after(async () => {
  for (const c of clients.values()) c.disconnect();
  admin?.close();
  await stop(server);
});

describe("the original helpers over the REST API", () => {
  it("broadcast: everyone, some users, all but some, and userIds [] reaches nobody", async () => {
    const [u1, u2] = [clients.get("u1"), clients.get("u2")];
    assert.equal(await admin.broadcast("news", { marker: "all" }), 2);
    await received(u1, "news", "all");
    await received(u2, "news", "all");

    assert.equal(await admin.broadcast("news", { marker: "only-u1" }, ["u1"]), 1);
    assert.equal(await admin.broadcast("news", { marker: "not-u1" }, null, ["u1"]), 1);
    assert.equal(await admin.broadcast("news", { marker: "nobody" }, []), 0);
    assert.equal(await admin.broadcast("news", { marker: "end" }), 2);
    // Each connection gets messages in order: by "end", anything else would have arrived.
    await received(u1, "news", "end");
    await received(u2, "news", "end");
    const markers = (c) => c.inbox.filter((m) => m.type === "news").map((m) => m.payload.marker);
    assert.deepEqual(markers(u1), ["all", "only-u1", "end"]);
    assert.deepEqual(markers(u2), ["all", "not-u1", "end"]);
  });

  it("sendToUser: true and delivered when connected, false when not", async () => {
    assert.equal(await admin.sendToUser("u2", "personal_update", { marker: "direct" }), true);
    await received(clients.get("u2"), "personal_update", "direct");
    assert.equal(await admin.sendToUser("nobody-here", "personal_update", {}), false);
  });

  it("isUserConnected and getConnectionStats", async () => {
    assert.equal(await admin.isUserConnected("u1"), true);
    assert.equal(await admin.isUserConnected("nobody-here"), false);
    const status = await admin.getUserStatus("u1");
    assert.equal(status.connectionCount, 1);
    const stats = await admin.getConnectionStats();
    assert.equal(stats.totalConnections, 2);
    assert.equal(stats.totalUsers, 2);
    assert.deepEqual([...stats.users].sort(), ["u1", "u2"]);
    const capped = await admin.getConnectionStats({ limit: 1 });
    assert.equal(capped.users.length, 1);
    assert.ok(["u1", "u2"].includes(capped.users[0]), String(capped.users));
    assert.equal(capped.usersTruncated, true);
  });

  it("disconnectUser: 4000 (the client comes back), {reconnect: false} 4500 (it does not), 0 for nobody", async () => {
    const u3 = await user("u3");
    const closed = nextEvent(u3, "disconnected");
    const back = nextEvent(u3, "connected");
    assert.equal(await admin.disconnectUser("u3"), 1);
    assert.equal((await closed).payload.code, 4000);
    await back;
    assert.equal(u3.connectCount, 2);

    const gone = nextEvent(u3, "disconnected");
    const terminal = nextEvent(u3, "error", WAIT_MS, (p) => p.kind === "terminal_close");
    assert.equal(await admin.disconnectUser("u3", { reconnect: false }), 1);
    assert.equal((await gone).payload.code, 4500);
    await terminal;
    assert.equal(await admin.isUserConnected("u3"), false);
    assert.equal(u3.state, "Disconnected");
    assert.equal(u3.reconnectAttempt, 0, "no retry was scheduled");
    assert.equal(await admin.disconnectUser("u3"), 0);
  });

  // Channels arrive with the server's channel support (issue 13). The test asks the server which
  // it is: a subscriber gets `subscribed` from a server with channels and an `echo` from one without.
  it("publish: reaches a channel's subscriber, or a typed 404 error from a server without channels", async () => {
    const sub = await user("subscriber", { token: mintToken(secret, "subscriber", 3600, { channels: ["news"] }) });
    const answer = nextEvent(sub, "*", WAIT_MS, (_p, m) => m.type === "subscribed" || m.type === "echo");
    sub.send("subscribe", { channel: "news" });
    const { message } = await answer;
    if (message.type === "subscribed") {
      const delivered = nextEvent(sub, "update", WAIT_MS, (p) => p?.marker === "published");
      assert.equal(await admin.publish("news", "update", { marker: "published" }), 1);
      assert.equal((await delivered).message.channel, "news");
      assert.equal(await admin.publish("empty-channel", "update", {}), 0);
      return;
    }
    const err = await admin.publish("news", "update", { a: 1 }).then(
      () => assert.fail("publish resolved on a server without channels"),
      (e) => e,
    );
    assert.ok(err instanceof WsedgeError, String(err));
    assert.equal(err.kind, "http");
    assert.equal(err.status, 404);
    assert.match(err.error, /no route/);
    assert.equal(err.method, "POST");
    assert.equal(err.path, "v1/websocket/channels/news/publish");
  });

  it("sendTestNotification reaches everyone", async () => {
    // Listen first: the message may arrive before the call's answer.
    const n = nextEvent(clients.get("u1"), "notification", WAIT_MS, (p) => p.title === "Test Notification");
    assert.equal(await admin.sendTestNotification(), 3); // u1, u2 and the channel subscriber
    assert.equal((await n).payload.title, "Test Notification");
  });
});

describe("errors, timeouts, keep-alive, configuration", () => {
  it("a wrong admin key is 401 unauthorized; a user token is 403 forbidden", async () => {
    const wrong = new WsedgeServer({ url: server.httpUrl, adminKey: "wrong" });
    const e401 = await wrong.broadcast("x").catch((e) => e);
    assert.ok(e401 instanceof WsedgeError);
    assert.deepEqual([e401.kind, e401.status, e401.error], ["http", 401, "unauthorized"]);
    const asUser = new WsedgeServer({ url: server.httpUrl, adminKey: mintToken(secret, "u1") });
    const e403 = await asUser.isUserConnected("u1").catch((e) => e);
    assert.deepEqual([e403.status, e403.error], [403, "forbidden"]);
    // An admin JWT is a credential too.
    const jwtAdmin = new WsedgeServer({ url: server.httpUrl, adminKey: mintToken(secret, "ops", 600, { role: "admin" }) });
    assert.equal(await jwtAdmin.isUserConnected("u1"), true);
    for (const c of [wrong, asUser, jwtAdmin]) c.close();
  });

  it("a bad request is a 400 with the server's text", async () => {
    const e = await admin.broadcast("").catch((err) => err);
    assert.deepEqual([e.status, e.error], [400, "type must be a non-empty string"]);
  });

  it("no answer in time is a WsedgeTimeoutError; a closed port is a network error", async () => {
    const sockets = new Set();
    const silent = net.createServer((s) => sockets.add(s)); // accepts, never answers
    await new Promise((r) => silent.listen(0, "127.0.0.1", r));
    const slow = new WsedgeServer({ url: `http://127.0.0.1:${silent.address().port}`, adminKey, timeoutMs: 300 });
    const started = Date.now();
    const e = await slow.getConnectionStats().catch((err) => err);
    const took = Date.now() - started;
    assert.ok(e instanceof WsedgeTimeoutError, String(e));
    assert.deepEqual([e.kind, e.status, e.timeoutMs], ["timeout", 0, 300]);
    assert.ok(took >= 290 && took < 5000, `timed out after ${took} ms`);
    slow.close();
    for (const s of sockets) s.destroy();
    const port = silent.address().port;
    await new Promise((r) => silent.close(r));

    const refused = new WsedgeServer({ url: `http://127.0.0.1:${port}`, adminKey });
    const n = await refused.isUserConnected("u1").catch((err) => err);
    assert.ok(n instanceof WsedgeError);
    assert.equal(n.kind, "network");
    assert.equal(n.status, 0);
    refused.close();
  });

  it("calls share one keep-alive connection", async () => {
    const c = new WsedgeServer({ url: server.httpUrl, adminKey });
    let opened = 0;
    const create = c.agent.createConnection.bind(c.agent);
    c.agent.createConnection = (...a) => {
      opened++;
      return create(...a);
    };
    for (let i = 0; i < 5; i++) assert.equal(await c.isUserConnected("u1"), true);
    await c.broadcast("noop", null, []);
    await c.sendToUser("nobody-here", "x");
    assert.equal(opened, 1, "one TCP connection for seven calls");
    c.close();
  });

  it("the module-level helpers read WSEDGE_URL and WSEDGE_ADMIN_KEY; configure() replaces them", async () => {
    process.env.WSEDGE_URL = server.httpUrl;
    process.env.WSEDGE_ADMIN_KEY = adminKey;
    try {
      assert.equal(await sdk.isUserConnected("u1"), true);
      assert.equal(await sdk.sendToUser("u1", "env", { marker: "env" }), true);
      await received(clients.get("u1"), "env", "env");
      sdk.configure({ url: server.httpUrl, adminKey: "wrong" });
      const e = await sdk.getConnectionStats().catch((err) => err);
      assert.equal(e.status, 401);
    } finally {
      sdk.configure({ env: { WSEDGE_URL: server.httpUrl, WSEDGE_ADMIN_KEY: adminKey } }).close();
      delete process.env.WSEDGE_URL;
      delete process.env.WSEDGE_ADMIN_KEY;
    }
    assert.throws(() => new WsedgeServer({ env: {} }), /WSEDGE_ADMIN_KEY/);
    assert.throws(() => new WsedgeServer({ url: "ftp://x", adminKey: "k" }), /http/);
  });
});
