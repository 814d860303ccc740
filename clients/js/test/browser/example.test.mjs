// The React example (examples/react-page, bundled with React from npm,
// served by examples/node-backend) in headless Chromium (/usr/bin/chromium)
// against a real wsedge: connect, a broadcast and a user send arrive, the
// server restarts and the hook comes back with its backoff (recovered:
// false, a new epoch), a token change reconnects, unmounting closes the
// socket, 4500 stops the reconnecting, and after a 4000 close the hook gets
// what was broadcast meanwhile (recovered: true).
// What the page shows is checked in the DOM; what the server sees through
// @wsedge/server. Screenshots go to artifacts/browser/ (WSEDGE_ARTIFACTS).
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
// The flags and binary of the repository's other browser test: no calls home, no sandbox, small /dev/shm.
import { CHROMIUM, CHROMIUM_ARGS } from "../../../../tests/browser/chromium.mjs";
import { WsedgeServer } from "@wsedge/server";
import { eventually, JS_ROOT, randomSecret, REPO_ROOT, startProcess, startWsedge, stop, WAIT_MS } from "../support/wsedge.mjs";

const ARTIFACTS = path.resolve(process.env.WSEDGE_ARTIFACTS || path.join(REPO_ROOT, "artifacts/browser"));
const secret = randomSecret();
const adminKey = randomSecret();
let wsedge;
let backend;
let browser;
let page;
let admin;
const pageErrors = [];

/** The message list, newest first: {type, synthetic, at, payload}. */
function entries() {
  return page.$$eval("#messages li", (lis) =>
    lis.map((li) => ({
      type: li.dataset.type,
      synthetic: li.dataset.synthetic === "true",
      at: Number(li.dataset.at),
      payload: JSON.parse(li.querySelector("code").textContent),
    })),
  );
}

/** Waits for an entry of `type` whose payload passes `test`; returns it. */
async function entry(type, test = () => true, ms = WAIT_MS) {
  try {
    return await eventually(`a "${type}" entry`, async () => (await entries()).find((e) => e.type === type && test(e.payload)), ms);
  } catch (e) {
    const seen = (await entries()).slice(0, 15).map((x) => `${x.type} ${JSON.stringify(x.payload)}`);
    throw new Error(`${e.message}\n  state: ${await text("#state")}\n  newest entries:\n    ${seen.join("\n    ")}`);
  }
}

const text = (sel) => page.textContent(sel).then((t) => t.trim(), () => "?");

async function waitText(sel, want) {
  await eventually(`${sel} = ${want}`, async () => (await text(sel)) === want);
}

async function screenshot(name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  return page.screenshot({ path: path.join(ARTIFACTS, name), fullPage: true, timeout: WAIT_MS });
}

async function startBackend() {
  const env = {
    ...process.env,
    PORT: "0",
    HOST: "127.0.0.1",
    JWT_SECRET: secret,
    WSEDGE_URL: wsedge.httpUrl,
    WSEDGE_ADMIN_KEY: adminKey,
  };
  const script = path.join(JS_ROOT, "examples/node-backend/server.mjs");
  return startProcess(process.execPath, [script], { env, ready: /listening on (http:\/\/\S+)/, name: "example backend" });
}

before(async () => {
  wsedge = await startWsedge({ secret, adminKey });
  backend = await startBackend();
  admin = new WsedgeServer({ url: wsedge.httpUrl, adminKey });
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 60_000 });
  const context = await browser.newContext({ viewport: { width: 900, height: 1000 } });
  page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on("pageerror", (e) => pageErrors.push(String(e)));
});

after(
  async () => {
    // Each step runs even when one before it fails: nothing may outlive the test.
    if (page && !page.isClosed()) await screenshot("react-example-last.png").catch(() => {});
    await browser?.close().catch(() => {});
    admin?.close();
    await stop(backend).catch(() => {});
    await stop(wsedge).catch(() => {});
  },
  { timeout: 60_000 },
);

describe("React example page with useRealtime", { timeout: 120_000 }, () => {
  it("connects with the token its backend issued", async () => {
    await page.goto(`${backend.match[1]}/?user=alice`, { waitUntil: "load", timeout: WAIT_MS });
    await waitText("#state", "connected");
    await waitText("#user-id", "alice");
    assert.equal(await text("#connection-count"), "1");
    assert.equal(await text("#recovered"), "—", "no reconnect yet");
    assert.equal(await page.$("#error"), null, "no error banner");
    assert.equal(await admin.isUserConnected("alice"), true);
    const hello = await entry("connected");
    assert.equal(hello.synthetic, false);
  });

  it("shows a broadcast, a user send, an echo and the test notification", async () => {
    assert.equal(await admin.broadcast("news", { marker: "broadcast-1" }), 1);
    await entry("news", (p) => p.marker === "broadcast-1");
    assert.equal(await admin.sendToUser("alice", "personal_update", { marker: "direct-1" }), true);
    await entry("personal_update", (p) => p.marker === "direct-1");

    await page.fill("#msg-type", "chat");
    await page.fill("#msg-payload", JSON.stringify({ marker: "typed" }));
    await page.click("#send");
    await entry("echo", (p) => p.originalMessage?.payload?.marker === "typed");

    await page.click("#test-notification"); // the backend calls broadcast() of @wsedge/server
    await entry("notification", (p) => p.title === "Test Notification");
    await waitText("#test-notification-result", "sent to 1 connection(s)");
    await screenshot("react-example.png");
  });

  it("comes back after wsedge restarts on the same port, with the backoff", async () => {
    const port = wsedge.port;
    assert.deepEqual(await stop(wsedge), { code: 0, signal: null });
    await entry("disconnected", (p) => p.code === 1001);
    // Wait until the first retry has failed, then bring the server back.
    const r1 = await entry("reconnecting", (p) => p.attempt === 1);
    const r2 = await entry("reconnecting", (p) => p.attempt === 2);
    assert.ok(r1.payload.delayMs >= 1000 && r1.payload.delayMs < 2000, `first delay ${r1.payload.delayMs}`);
    assert.ok(r2.payload.delayMs >= 2000 && r2.payload.delayMs < 3000, `second delay ${r2.payload.delayMs}`);
    assert.ok(r2.at - r1.at >= r1.payload.delayMs - 100, `the first retry waited (${r2.at - r1.at} ms)`);
    assert.notEqual(await text("#state"), "connected");
    wsedge = await startWsedge({ secret, adminKey, bind: `127.0.0.1:${port}` });
    await waitText("#state", "connected");
    await waitText("#connection-count", "2");
    const back = (await entries()).find((e) => e.type === "connected");
    assert.ok(back.at - r2.at >= r2.payload.delayMs - 100, `the second retry waited (${back.at - r2.at} ms)`);
    // A restarted server has a new epoch: what was missed is gone, and the hook says so.
    await waitText("#recovered", "false");
    assert.equal(back.payload.recovered, false);
    await entry("recovered", (p) => p.recovered === false && p.channel === undefined);
    assert.equal(await admin.broadcast("news", { marker: "after-restart" }), 1);
    await entry("news", (p) => p.marker === "after-restart");
    await screenshot("react-example-reconnected.png");
  });

  it("a new token (another user) closes the connection and opens one with it", async () => {
    await page.fill("#user", "bob");
    await page.click("#switch-user");
    await waitText("#user-id", "bob");
    await waitText("#connection-count", "3");
    await eventually("alice gone, bob connected", async () =>
      !(await admin.isUserConnected("alice")) && (await admin.isUserConnected("bob")),
    );
    await entry("disconnected", (p) => p.code === 1000);
    assert.equal((await admin.getConnectionStats()).totalConnections, 1);
  });

  it("unmounting the component closes the socket; mounting connects again", async () => {
    await page.click("#toggle-mount");
    await waitText("#mounted", "unmounted");
    await eventually("bob disconnected", async () => !(await admin.isUserConnected("bob")));
    assert.equal((await admin.getConnectionStats()).totalConnections, 0);
    await page.click("#toggle-mount");
    await waitText("#state", "connected");
    assert.equal(await admin.isUserConnected("bob"), true);
  });

  it("a 4500 close stops the reconnecting", async () => {
    assert.equal(await admin.disconnectUser("bob", { reconnect: false }), 1);
    const closed = await entry("disconnected", (p) => p.code === 4500);
    await waitText("#state", "disconnected");
    await eventually("the error banner", async () => /4500/.test(await text("#error")));
    // The first retry would come within 2 s (1 s + up to 1 s of jitter): watch for 3 s.
    const watchUntil = Date.now() + 3000;
    while (Date.now() < watchUntil) {
      assert.equal(await admin.isUserConnected("bob"), false, "bob reconnected after 4500");
      await new Promise((r) => setTimeout(r, 250));
    }
    const later = (await entries()).filter((e) => e.at >= closed.at && (e.type === "reconnecting" || e.type === "connected"));
    assert.deepEqual(later, [], "no retry was scheduled");
    assert.equal(await text("#state"), "disconnected");
    await screenshot("react-example-4500.png");

    await page.click("#connect"); // connect() still works
    await waitText("#state", "connected");
    assert.deepEqual(pageErrors, [], "uncaught errors in the page");
  });

  it("after a 4000 close the reconnect gets what was broadcast meanwhile: recovered true", async () => {
    // The reconnect's getToken (the page's /api/token) is held until the broadcast is sent.
    let asked = false;
    let release;
    const released = new Promise((r) => (release = r));
    await page.route("**/api/token*", async (route) => {
      asked = true;
      await released;
      await route.continue();
    });
    try {
      assert.equal(await admin.disconnectUser("bob"), 1);
      const closed = await entry("disconnected", (p) => p.code === 4000);
      await eventually("the reconnect asks for a token", () => asked);
      await eventually("bob gone", async () => !(await admin.isUserConnected("bob")));
      assert.equal(await admin.broadcast("news", { marker: "while-away" }), 0, "nobody got it live");
      release();
      await waitText("#state", "connected");
      await waitText("#recovered", "true");
      await entry("news", (p) => p.marker === "while-away");
      const list = await entries(); // newest first
      const isMissed = (e) => e.type === "news" && e.payload.marker === "while-away";
      const recovered = list.findIndex((e) => e.type === "recovered" && e.at >= closed.at);
      assert.ok(recovered >= 0, "a recovered event after the close");
      assert.deepEqual([list[recovered].payload.recovered, list[recovered].payload.channel], [true, undefined]);
      assert.ok(recovered > list.findIndex(isMissed), "recovered comes before the missed message");
      assert.equal(list.filter(isMissed).length, 1, "the missed message arrives once");
      await screenshot("react-example-recovered.png");
    } finally {
      release();
      await page.unroute("**/api/token*");
    }
    assert.deepEqual(pageErrors, [], "uncaught errors in the page");
  });
});
