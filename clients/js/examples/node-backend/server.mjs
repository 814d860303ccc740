// A tiny Node backend next to wsedge, as the original service's backends
// were: it serves the React example page, issues user tokens, and pushes
// messages through @wsedge/server (the helpers that used to be in-process).
//
//   WSEDGE_URL=http://127.0.0.1:3000 WSEDGE_ADMIN_KEY=… JWT_SECRET=… node server.mjs
//
// Environment: WSEDGE_URL and WSEDGE_ADMIN_KEY (read by @wsedge/server),
// JWT_SECRET (the secret wsedge verifies tokens with), PORT (default 8080;
// 0 picks a free one), HOST (default 127.0.0.1), WSEDGE_WS_URL (the
// WebSocket URL the page connects to; default WSEDGE_URL with ws:// and /ws),
// TOKEN_TTL_SECS (default 3600).
//
// Demo only: /api/token issues a token for any user id it is asked for; a
// real backend issues them to its signed-in users.
import { createHmac } from "node:crypto";
import { readFile } from "node:fs/promises";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { broadcast, isUserConnected, sendToUser, WsedgeError } from "@wsedge/server";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PAGE_DIR = path.resolve(HERE, "../react-page");
const SECRET = process.env.JWT_SECRET;
if (!SECRET) throw new Error("JWT_SECRET is required (the secret wsedge verifies user tokens with)");
const WSEDGE_URL = process.env.WSEDGE_URL ?? "http://127.0.0.1:3000";
const WS_URL = process.env.WSEDGE_WS_URL ?? `${WSEDGE_URL.replace(/^http/, "ws").replace(/\/$/, "")}/ws`;
const TTL = Number(process.env.TOKEN_TTL_SECS ?? 3600);

/** An HS256 JWT with `sub` and `exp`, what jsonwebtoken's `jwt.sign` made for the original service. */
function signToken(sub) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const unsigned = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, iat: now, exp: now + TTL })}`;
  return `${unsigned}.${createHmac("sha256", SECRET).update(unsigned).digest("base64url")}`;
}

function json(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
  res.end(text);
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return chunks.length ? JSON.parse(Buffer.concat(chunks).toString("utf8")) : {};
}

async function page(res, file, type, transform = (s) => s) {
  const text = transform(await readFile(path.join(PAGE_DIR, file), "utf8"));
  res.writeHead(200, { "Content-Type": type, "Cache-Control": "no-store" });
  res.end(text);
}

const escapeAttr = (s) => s.replace(/[&"<>]/g, (c) => `&#${c.charCodeAt(0)};`);

async function route(req, res) {
  const url = new URL(req.url, "http://localhost");
  if (req.method === "GET" && url.pathname === "/")
    return page(res, "index.html", "text/html; charset=utf-8", (s) => s.replace("{{WSEDGE_WS_URL}}", escapeAttr(WS_URL)));
  if (req.method === "GET" && url.pathname === "/app.js")
    return page(res, "dist/app.js", "text/javascript; charset=utf-8");
  if (req.method === "GET" && url.pathname === "/api/token")
    return json(res, 200, { token: signToken(url.searchParams.get("user") || "demo-user") });
  if (req.method === "POST" && url.pathname === "/api/test-notification") {
    // Was: broadcast(...) in-process; now the same call through @wsedge/server.
    const payload = { title: "Test Notification", message: "Sent by the example backend", timestamp: new Date().toISOString() };
    return json(res, 200, { sentToConnections: await broadcast("notification", payload) });
  }
  if (req.method === "POST" && url.pathname === "/api/notify") {
    const { userId, type = "notification", payload = null } = await readBody(req);
    if (userId) return json(res, 200, { delivered: await sendToUser(userId, type, payload) });
    return json(res, 200, { sentToConnections: await broadcast(type, payload) });
  }
  if (req.method === "GET" && url.pathname.startsWith("/api/status/")) {
    const userId = decodeURIComponent(url.pathname.slice("/api/status/".length));
    return json(res, 200, { userId, isConnected: await isUserConnected(userId) });
  }
  json(res, 404, { error: "not found" });
}

const server = http.createServer((req, res) => {
  route(req, res).catch((e) => {
    const status = e instanceof WsedgeError ? 502 : 500;
    json(res, status, { error: e.message });
  });
});
server.listen(Number(process.env.PORT ?? 8080), process.env.HOST ?? "127.0.0.1", () => {
  const { address, port } = server.address();
  console.log(`example backend listening on http://${address}:${port} (wsedge at ${WSEDGE_URL}, page connects to ${WS_URL})`);
});
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => server.close(() => process.exit(0)));
