// Browser test of the embedded test page (GET /) and browser client
// (GET /realtime.js), driven in headless Chromium (the system /usr/bin/chromium)
// with playwright-core.
//
//   WSEDGE_BIN=target/release/wsedge node --test --test-reporter=tap tests/browser/*.test.mjs
//
// (scripts/browser-test does the installs and the build first.)
//
// Environment:
//   WSEDGE_BIN       the server binary, relative to the repository root or absolute
//                    (default: target/release/wsedge, else target/debug/wsedge)
//   CHROMIUM_BIN     the browser (default: /usr/bin/chromium)
//   WSEDGE_ARTIFACTS screenshot directory (default: <repo>/artifacts/browser)
//
// Every wait is bounded; every server process started here is killed in an
// `after` hook (and, as a last resort, on process exit).

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync, mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { CHROMIUM, CHROMIUM_ARGS } from "./chromium.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "../..");
const ARTIFACTS = path.resolve(process.env.WSEDGE_ARTIFACTS || path.join(ROOT, "artifacts/browser"));

/** Upper bound of every single wait (page state, log entry, server start). */
const WAIT_MS = 15_000;
/** Upper bound of one whole test case. */
const TEST_TIMEOUT_MS = 90_000;

function wsedgeBin() {
  const fromEnv = process.env.WSEDGE_BIN;
  if (fromEnv) return path.resolve(ROOT, fromEnv);
  for (const p of ["target/release/wsedge", "target/debug/wsedge"]) {
    const abs = path.join(ROOT, p);
    if (existsSync(abs)) return abs;
  }
  throw new Error("no wsedge binary: build it (cargo build --release --bin wsedge) or set WSEDGE_BIN");
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- tokens

const b64url = (data) => Buffer.from(data).toString("base64url");

/** An HS256 JWT, as the server expects: `sub`, `exp` (one hour) and extras. */
function mintToken(secret, claims) {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = b64url(JSON.stringify({ iat: now, exp: now + 3600, ...claims }));
  const sig = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${sig}`;
}

// ---------------------------------------------------------------- server

/** Every server started, so that a crash of the test still kills them. */
const live = new Set();
process.on("exit", () => {
  for (const s of live) {
    try {
      s.proc.kill("SIGKILL");
    } catch {
      /* gone */
    }
  }
});

/**
 * Starts the real binary and resolves once it logs `wsedge listening on ADDR`.
 * `secret` null means dev mode (no JWT_SECRET). Rejects if it exits first or
 * does not listen within WAIT_MS.
 */
async function startServer({ bind = "127.0.0.1:0", secret = null, adminKey = null } = {}) {
  const env = { ...process.env, RUST_LOG: "info" };
  // Nothing from the caller's environment may configure this server.
  for (const k of Object.keys(env)) if (k === "JWT_SECRET" || k.startsWith("WSEDGE_")) delete env[k];
  if (secret !== null) env.JWT_SECRET = secret;
  const args = ["--bind", bind, "--shards", "2"];
  if (adminKey !== null) args.push("--admin-key", adminKey);

  const proc = spawn(wsedgeBin(), args, { env, stdio: ["ignore", "pipe", "pipe"] });
  const server = {
    proc,
    stdout: "",
    stderr: "",
    exited: new Promise((resolve) => proc.once("exit", (code, signal) => resolve({ code, signal }))),
  };
  live.add(server);
  server.exited.then(() => live.delete(server));
  const keep = (key) => (chunk) => {
    // Always drained (a full pipe would block the server); only the tail is kept.
    server[key] = (server[key] + chunk).slice(-64 * 1024);
  };
  proc.stdout.setEncoding("utf8").on("data", keep("stdout"));
  proc.stderr.setEncoding("utf8").on("data", keep("stderr"));

  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => finish(new Error(`server did not listen within ${WAIT_MS} ms`)), WAIT_MS);
    const onData = () => {
      const m = /wsedge listening on (\S+)/.exec(server.stderr);
      if (m) finish(null, m[1]);
    };
    const onExit = (code, signal) => finish(new Error(`server exited early (code ${code}, signal ${signal})`));
    function finish(err, value) {
      clearTimeout(timer);
      proc.stderr.off("data", onData);
      proc.off("exit", onExit);
      if (err) {
        proc.kill("SIGKILL");
        err.message += `\n--- server stderr ---\n${server.stderr}`;
        reject(err);
      } else resolve(value);
    }
    proc.stderr.on("data", onData);
    proc.once("exit", onExit);
    onData();
  });
  server.addr = addr;
  server.port = Number(addr.slice(addr.lastIndexOf(":") + 1));
  server.base = `http://${addr}`;
  return server;
}

/** SIGTERM, then SIGKILL if it has not exited within WAIT_MS. Resolves {code, signal}. */
async function stopServer(server) {
  if (!server || server.proc.exitCode !== null || server.proc.signalCode !== null) {
    return server ? server.exited : null;
  }
  server.proc.kill("SIGTERM");
  let timer;
  const res = await Promise.race([server.exited, new Promise((r) => (timer = setTimeout(r, WAIT_MS, null)))]);
  clearTimeout(timer); // a pending timer would keep the test process alive
  if (res) return res;
  server.proc.kill("SIGKILL");
  return server.exited;
}

/** POST JSON to the management API; returns {status, body}. */
async function adminPost(server, credential, route, body) {
  const res = await fetch(server.base + route, {
    method: "POST",
    headers: { Authorization: `Bearer ${credential}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: res.status, body: json ?? text };
}

// ---------------------------------------------------------------- browser

async function launchBrowser() {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found (apt-get install chromium)`);
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 60_000 });
}

/** A new page that records uncaught page errors (checked by the tests). */
async function openPage(context, url) {
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.pageErrors = [];
  page.on("pageerror", (e) => page.pageErrors.push(String(e)));
  await page.goto(url, { waitUntil: "load", timeout: WAIT_MS });
  // The page script is a module importing /realtime.js; it exposes the client.
  await page.waitForFunction(() => window.rt !== undefined, null, { timeout: WAIT_MS });
  return page;
}

/** The log as plain lines "type payload", newest first (for failure messages). */
function logLines(page) {
  return page
    .$$eval("#log li", (lis) =>
      lis.map(
        (li) => `${li.querySelector(".type")?.textContent ?? "?"} ${li.querySelector("code")?.textContent ?? ""}`,
      ),
    )
    .catch((e) => [`<log unavailable: ${e.message}>`]);
}

/** Runs a wait; on timeout, throws with what the page showed instead. */
async function bounded(page, what, fn) {
  try {
    return await fn();
  } catch (e) {
    const state = await page.textContent("#state").catch(() => "?");
    const lines = await logLines(page);
    throw new Error(
      `${what}: ${e.message.split("\n")[0]}\n  #state: ${state}\n  #log (newest first):\n    ${lines.slice(0, 20).join("\n    ")}`,
    );
  }
}

/** Waits until #state shows one of `states`. */
function waitState(page, ...states) {
  return bounded(page, `waiting for #state ${states.join("/")}`, () =>
    page.waitForFunction((want) => want.includes(document.getElementById("state").textContent.trim()), states, {
      timeout: WAIT_MS,
    }),
  );
}

/** Waits until #log holds an entry of `type` whose payload text contains `needle`. */
function waitLog(page, type, needle) {
  return bounded(page, `waiting for a "${type}" log entry containing ${JSON.stringify(needle)}`, () =>
    page.waitForFunction(
      ([type, needle]) =>
        [...document.querySelectorAll("#log li")].some(
          (li) =>
            li.querySelector(".type")?.textContent === type && li.querySelector("code")?.textContent.includes(needle),
        ),
      [type, needle],
      { timeout: WAIT_MS },
    ),
  );
}

/** Layout check: nothing wider than the viewport. */
function overflow(page) {
  return page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    bodyScrollWidth: document.body.scrollWidth,
  }));
}

/** No horizontal overflow: the page and every element in it fit `width`. */
async function assertFitsWidth(page, width) {
  const o = await overflow(page);
  const msg = `horizontal overflow at ${width} px: ${JSON.stringify(o)}`;
  assert.equal(o.innerWidth, width, msg); // a phone widens the layout viewport to fit wide content
  assert.ok(o.scrollWidth <= o.innerWidth, msg);
  assert.ok(o.bodyScrollWidth <= o.innerWidth, msg);
  const wide = await page.$$eval("main *", (els) =>
    els
      .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 0.5)
      .map((el) => `${el.tagName.toLowerCase()}${el.id ? "#" + el.id : ""}${el.className ? "." + el.className : ""}`),
  );
  assert.deepEqual(wide, [], `elements past the right edge at ${width} px`);
}

function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  return page.screenshot({ path: path.join(ARTIFACTS, name), fullPage: true, timeout: WAIT_MS });
}

const unique = (label) => `${label}-${randomBytes(4).toString("hex")}`;

// ================================================================ tests

describe("test page with a configured secret", { timeout: TEST_TIMEOUT_MS * 4 }, () => {
  const secret = randomBytes(32).toString("hex");
  const adminKey = randomBytes(16).toString("hex");
  const userId = "browser-user";
  const userToken = mintToken(secret, { sub: userId, channels: ["news", "room:*"] });
  const adminToken = mintToken(secret, { sub: "browser-admin", role: "admin" });

  let browser;
  let context;
  let page;
  let server;
  let restarted;

  before(async () => {
    server = await startServer({ secret, adminKey });
    browser = await launchBrowser();
    context = await browser.newContext({ viewport: { width: 1024, height: 900 } });
  });

  after(async () => {
    // Failure artifacts first, while the page still exists.
    if (page && !page.isClosed()) await screenshot(page, "page-last.png").catch(() => {});
    await browser?.close().catch(() => {});
    await stopServer(server).catch(() => {});
    await stopServer(restarted).catch(() => {});
  });

  it("serves the page and /realtime.js", async () => {
    const res = await fetch(server.base + "/realtime.js", { signal: AbortSignal.timeout(WAIT_MS) });
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /javascript/);
    page = await openPage(context, server.base + "/");
    assert.equal(await page.title(), "wsedge — realtime test");
    assert.equal((await page.textContent("#state")).trim(), "Disconnected");
    // Not dev mode: nothing pre-filled.
    assert.equal(await page.inputValue("#token"), "");
  });

  it("connects with a token and shows Connected", async () => {
    await page.fill("#token", userToken);
    await page.click("#connect");
    await waitState(page, "Connected");
    await waitLog(page, "connected", `"userId":"${userId}"`);
    assert.equal(await page.isDisabled("#connect"), true, "Connect is disabled while connected");
    assert.match(await page.textContent("#state-info"), /connects: 1/);
  });

  it("shows a broadcast sent through the REST API", async () => {
    const marker = unique("rest-broadcast");
    const res = await adminPost(server, adminKey, "/v1/websocket/broadcast", {
      type: "notification",
      payload: { title: marker },
    });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.sentToConnections, 1);
    await waitLog(page, "notification", marker);
  });

  it("sends a message and shows the echo", async () => {
    const marker = unique("hello");
    await page.fill("#msg-type", "chat");
    await page.fill("#msg-payload", JSON.stringify({ text: marker }));
    await page.click("#send");
    await waitLog(page, "→ chat", marker); // the page's own "sent" line
    await waitLog(page, "echo", marker);
    const echo = await page.$$eval("#log li", (lis) =>
      lis.map((li) => li.querySelector("code").textContent).find((t) => t.includes("originalMessage")),
    );
    const payload = JSON.parse(echo);
    assert.deepEqual(payload.originalMessage, { type: "chat", payload: { text: marker } });
  });

  it("admin section: broadcast and send-to-user arrive in the log", async () => {
    const marker = unique("admin-ui");
    await page.fill("#admin-token", adminToken);
    await page.fill("#bc-type", "announcement");
    await page.fill("#bc-payload", JSON.stringify({ title: marker }));
    await page.click("#broadcast");
    await waitLog(page, "announcement", marker);
    await bounded(page, "waiting for the admin result", () =>
      page.waitForFunction(() => /^HTTP 200/.test(document.getElementById("admin-result").textContent), null, {
        timeout: WAIT_MS,
      }),
    );
    assert.equal(await page.getAttribute("#admin-result", "data-ok"), "true");
    assert.match(await page.textContent("#admin-result"), /"sentToConnections": 1/);

    const direct = unique("direct");
    await page.fill("#bc-type", "personal_update");
    await page.fill("#bc-payload", JSON.stringify({ note: direct }));
    await page.fill("#send-user", userId);
    await page.click("#send-to-user");
    await waitLog(page, "personal_update", direct);

    // A wrong admin token is refused and shown as such.
    await page.fill("#admin-token", "not-a-token");
    await page.click("#broadcast");
    await bounded(page, "waiting for the 401 result", () =>
      page.waitForFunction(() => /^HTTP 401/.test(document.getElementById("admin-result").textContent), null, {
        timeout: WAIT_MS,
      }),
    );
    assert.equal(await page.getAttribute("#admin-result", "data-ok"), "false");

    await assertFitsWidth(page, 1024);
    await screenshot(page, "page.png");
  });

  it("channels section: subscribe, a publish arrives with its channel, refusals, unsubscribe", async () => {
    await page.fill("#channel", "news");
    await page.click("#subscribe");
    await waitLog(page, "subscribed", '"channel":"news"');
    assert.equal((await page.textContent("#channel-list")).trim(), "news");

    const marker = unique("channel");
    await page.fill("#admin-token", adminToken);
    await page.fill("#bc-type", "headline");
    await page.fill("#bc-payload", JSON.stringify({ title: marker }));
    await page.click("#publish");
    await waitLog(page, "headline #news", marker);
    await bounded(page, "waiting for the publish result", () =>
      page.waitForFunction(() => /^HTTP 200/.test(document.getElementById("admin-result").textContent), null, {
        timeout: WAIT_MS,
      }),
    );
    assert.match(await page.textContent("#admin-result"), /"sentToConnections": 1/);

    // A channel the token's claim does not allow: an error naming it.
    await page.fill("#channel", "secret");
    await page.click("#subscribe");
    await waitLog(page, "error", "not allowed to subscribe to secret");
    await page.click("#unsubscribe");

    await page.fill("#channel", "news");
    await page.click("#unsubscribe");
    await waitLog(page, "unsubscribed", '"channel":"news"');
    assert.equal((await page.textContent("#channel-list")).trim(), "");
    const res = await adminPost(server, adminKey, "/v1/websocket/channels/news/publish", { type: "t", payload: 1 });
    assert.equal(res.body.sentToConnections, 0);
    await assertFitsWidth(page, 1024);
    await screenshot(page, "page-channels.png");
  });

  it("reconnects after the server restarts on the same port", async () => {
    const port = server.port;
    const exit = await stopServer(server);
    assert.deepEqual(exit, { code: 0, signal: null }, `SIGTERM should exit 0\n${server.stderr}`);
    await waitState(page, "Disconnected", "Connecting");
    // A graceful shutdown closes with 1001 ("going away").
    await waitLog(page, "disconnected", '"code":1001');
    await waitLog(page, "reconnecting", '"attempt":1');

    restarted = await startServer({ bind: `127.0.0.1:${port}`, secret, adminKey });
    assert.equal(restarted.port, port);
    // First retry after 1–2 s, later ones back off further; WAIT_MS covers a few.
    await waitState(page, "Connected");
    await bounded(page, "waiting for connects: 2", () =>
      page.waitForFunction(() => window.rt.connectCount === 2, null, { timeout: WAIT_MS }),
    );
    // A restarted server has a new epoch: the client says that what it missed is gone.
    await waitLog(page, "recovered", '"recovered":false');
    assert.match(await page.textContent("#state-info"), /connects: 2, recovered: false/);

    const marker = unique("after-restart");
    const res = await adminPost(restarted, adminKey, "/v1/websocket/broadcast", {
      type: "notification",
      payload: { title: marker },
    });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.sentToConnections, 1);
    await waitLog(page, "notification", marker);
    await screenshot(page, "page-reconnected.png");
  });

  it("disconnects on request and stays disconnected", async () => {
    await page.click("#disconnect");
    await waitState(page, "Disconnected");
    await sleep(2500); // longer than a first retry would take
    assert.equal((await page.textContent("#state")).trim(), "Disconnected");
    assert.equal(await page.isEnabled("#connect"), true);
    assert.deepEqual(page.pageErrors, [], "uncaught errors in the page");
  });
});

describe("test page on a phone screen (390x844)", { timeout: TEST_TIMEOUT_MS }, () => {
  const secret = randomBytes(32).toString("hex");
  const adminKey = randomBytes(16).toString("hex");
  let browser;
  let server;

  before(async () => {
    server = await startServer({ secret, adminKey });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await stopServer(server).catch(() => {});
  });

  it("is laid out for the width, without horizontal overflow", async () => {
    const context = await browser.newContext({
      viewport: { width: 390, height: 844 },
      deviceScaleFactor: 2,
      isMobile: true, // honours <meta name="viewport">, as a phone does
      hasTouch: true,
    });
    const page = await openPage(context, server.base + "/");
    try {
      // Without a working viewport meta tag a phone lays out 980 px and zooms out.
      assert.equal(await page.evaluate(() => window.innerWidth), 390);

      await page.fill("#token", mintToken(secret, { sub: "phone-user-with-a-rather-long-identifier" }));
      await page.click("#connect");
      await waitState(page, "Connected");
      // Long unbreakable content must wrap inside the log, not widen the page.
      const long = unique("x".repeat(300));
      const res = await adminPost(server, adminKey, "/v1/websocket/broadcast", {
        type: "notification_with_a_long_type_name_that_does_not_break",
        payload: { title: long, url: `https://example.com/${"a/".repeat(80)}` },
      });
      assert.equal(res.status, 200);
      await waitLog(page, "notification_with_a_long_type_name_that_does_not_break", long);
      await assertFitsWidth(page, 390);

      // The admin form is usable by touch on the small screen.
      await page.fill("#admin-token", mintToken(secret, { sub: "a", role: "admin" }));
      await page.tap("#broadcast");
      await waitLog(page, "notification", "Hello");
      await assertFitsWidth(page, 390);
      // Readable: body text at least 14 px.
      const fontPx = await page.evaluate(() => parseFloat(getComputedStyle(document.body).fontSize));
      assert.ok(fontPx >= 14, `body font ${fontPx}px`);
      assert.deepEqual(page.pageErrors, [], "uncaught errors in the page");
    } finally {
      // Also on failure: the screenshot then shows what went wrong.
      await screenshot(page, "page-phone.png").catch(() => {});
      await context.close().catch(() => {});
    }
  });
});

describe("test page in dev mode (no JWT_SECRET)", { timeout: TEST_TIMEOUT_MS }, () => {
  let browser;
  let server;

  before(async () => {
    server = await startServer(); // no secret, no admin key: dev mode
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await stopServer(server).catch(() => {});
  });

  it("pre-fills the token and connects", async () => {
    // The banner goes to stdout right after the listening line.
    const deadline = Date.now() + WAIT_MS;
    while (!/admin token:\s+\S+/.test(server.stdout) && Date.now() < deadline) await sleep(50);
    const userToken = /user token:\s+(\S+)/.exec(server.stdout)?.[1];
    const adminToken = /admin token:\s+(\S+)/.exec(server.stdout)?.[1];
    assert.ok(userToken && adminToken, `dev banner with tokens on stdout:\n${server.stdout}\n${server.stderr}`);
    assert.match(server.stderr, /DEV MODE/);

    const context = await browser.newContext({ viewport: { width: 1024, height: 900 } });
    const page = await openPage(context, server.base + "/");
    try {
      assert.equal(await page.inputValue("#token"), userToken, "#token is pre-filled with the dev user token");
      await page.click("#connect");
      await waitState(page, "Connected");
      await waitLog(page, "connected", "Successfully connected");

      // The printed admin token works from the page's admin section.
      const marker = unique("dev-admin");
      await page.fill("#admin-token", adminToken);
      await page.fill("#bc-payload", JSON.stringify({ title: marker }));
      await page.click("#broadcast");
      await waitLog(page, "notification", marker);
      assert.deepEqual(page.pageErrors, [], "uncaught errors in the page");
    } finally {
      await screenshot(page, "page-dev.png").catch(() => {});
      await context.close().catch(() => {});
    }
  });
});
