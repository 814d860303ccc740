'use strict';
// seed-node peer: wsedge's API on the stack the service started from —
// node:http for the REST routes, the `ws` package for WebSockets and
// `jsonwebtoken` for HS256 tokens, all on one event loop.
//
// It exists only as a yardstick for scripts/compare; it is not part of
// wsedge and is not meant for production.
//
// Environment: JWT_SECRET (required), PORT (default 3100), HOST (default
// 127.0.0.1), PERMESSAGE_DEFLATE (1: offer-answering permessage-deflate
// with ws's `perMessageDeflate`, threshold 256 bytes like wsedge's
// --compression-min-bytes and ws's defaults otherwise; ws then compresses
// each message once per connection, and honours a client's
// server_no_context_takeover; unset or 0: no compression, as before).

const http = require('node:http');
const { WebSocketServer, WebSocket } = require('ws');
const jwt = require('jsonwebtoken');

const SECRET = process.env.JWT_SECRET;
const PORT = Number.parseInt(process.env.PORT || '3100', 10);
const HOST = process.env.HOST || '127.0.0.1';
const DEFLATE = !['', '0', 'false', 'no'].includes((process.env.PERMESSAGE_DEFLATE || '').toLowerCase());
if (!SECRET) {
  console.error('seed-node peer: JWT_SECRET is required');
  process.exit(2);
}

const now = () => new Date().toISOString();

// ---------------------------------------------------------------------------
// Who is connected.

class Registry {
  constructor() {
    this.sockets = new Map(); // connection id -> { ws, user, since }
    this.byUser = new Map(); // user id -> Set of connection ids
    this.lastId = 0;
    this.handedOut = 0;
    this.startedAt = Date.now();
  }

  add(ws, user) {
    const id = `conn-${++this.lastId}`;
    this.sockets.set(id, { ws, user, since: new Date() });
    let ids = this.byUser.get(user);
    if (!ids) this.byUser.set(user, (ids = new Set()));
    ids.add(id);
    return id;
  }

  remove(id) {
    const entry = this.sockets.get(id);
    if (!entry) return;
    this.sockets.delete(id);
    const ids = this.byUser.get(entry.user);
    if (ids) {
      ids.delete(id);
      if (ids.size === 0) this.byUser.delete(entry.user);
    }
  }

  *connectionsOf(user) {
    const ids = this.byUser.get(user);
    if (!ids) return;
    for (const id of ids) {
      const entry = this.sockets.get(id);
      if (entry) yield entry;
    }
  }

  // Sends one serialized message to every open socket (of `only` users when
  // given) except those of `except` users; returns how many got it.
  fanOut(text, only, except) {
    const skip = new Set(except || []);
    let sent = 0;
    const deliver = (entry) => {
      if (skip.has(entry.user) || entry.ws.readyState !== WebSocket.OPEN) return;
      entry.ws.send(text);
      sent++;
    };
    if (only) {
      for (const user of new Set(only)) for (const entry of this.connectionsOf(user)) deliver(entry);
    } else {
      for (const entry of this.sockets.values()) deliver(entry);
    }
    this.handedOut += sent;
    return sent;
  }
}

const registry = new Registry();

// ---------------------------------------------------------------------------
// Tokens.

function verify(token) {
  try {
    return jwt.verify(token, SECRET, { algorithms: ['HS256'] });
  } catch {
    return null;
  }
}

function bearerOf(req) {
  const value = req.headers.authorization;
  if (typeof value !== 'string') return null;
  const m = /^bearer\s+(\S+)\s*$/i.exec(value);
  return m ? m[1] : null;
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function requireAdmin(req) {
  const token = bearerOf(req);
  if (!token) throw new HttpError(401, 'Authorization: Bearer <admin token> required');
  const claims = verify(token);
  if (!claims) throw new HttpError(401, 'invalid or expired token');
  if (claims.role !== 'admin') throw new HttpError(403, 'admin role required');
}

// ---------------------------------------------------------------------------
// REST routes.

function reply(res, status, body) {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, {
    'content-type': typeof body === 'string' ? 'text/plain; charset=utf-8' : 'application/json',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const parts = [];
    req.on('data', (chunk) => parts.push(chunk));
    req.on('end', () => resolve(Buffer.concat(parts)));
    req.on('error', reject);
  });
}

async function outgoing(req) {
  const raw = await readBody(req);
  let msg;
  try {
    msg = JSON.parse(raw.toString('utf8'));
  } catch (e) {
    throw new HttpError(400, `body is not valid JSON: ${e.message}`);
  }
  if (!msg || typeof msg !== 'object' || Array.isArray(msg)) throw new HttpError(400, 'body must be a JSON object');
  if (typeof msg.type !== 'string' || msg.type === '') throw new HttpError(400, 'type must be a non-empty string');
  for (const field of ['userIds', 'excludeUserIds']) {
    const list = msg[field];
    if (list != null && !(Array.isArray(list) && list.every((u) => typeof u === 'string'))) {
      throw new HttpError(400, `${field} must be an array of strings`);
    }
  }
  return msg;
}

const envelope = (msg) => JSON.stringify({ type: msg.type, payload: msg.payload === undefined ? null : msg.payload });

// [method, path pattern, handler(req, params, url)]; every /v1 route needs an admin token.
const routes = [
  ['POST', /^\/v1\/websocket\/broadcast$/, async (req) => {
    const msg = await outgoing(req);
    const only = msg.userIds == null ? null : msg.userIds;
    const sent = registry.fanOut(envelope(msg), only, msg.excludeUserIds);
    return {
      message: 'Message broadcasted successfully',
      sentToConnections: sent,
      targetUsers: only ? only.length : 'all',
      timestamp: now(),
    };
  }],
  ['POST', /^\/v1\/websocket\/send\/([^/]+)$/, async (req, [user]) => {
    const msg = await outgoing(req);
    const sent = registry.fanOut(envelope(msg), [user], null);
    if (sent === 0) throw new HttpError(404, `User ${user} is not connected`);
    return { message: `Message sent to user ${user}`, sentToConnections: sent, timestamp: now() };
  }],
  ['GET', /^\/v1\/websocket\/stats$/, async (req, params, url) => {
    const raw = url.searchParams.get('limit');
    const limit = raw === null ? 1000 : Number(raw);
    if (!Number.isInteger(limit) || limit < 0) throw new HttpError(400, `limit must be a non-negative integer, got "${raw}"`);
    const users = limit === 0 ? [] : [...registry.byUser.keys()].sort().slice(0, limit);
    return {
      totalConnections: registry.sockets.size,
      totalUsers: registry.byUser.size,
      users,
      usersTruncated: registry.byUser.size > users.length,
      messagesOut: registry.handedOut,
      uptimeSeconds: Math.floor((Date.now() - registry.startedAt) / 1000),
    };
  }],
  ['GET', /^\/v1\/websocket\/user\/([^/]+)\/status$/, async (req, [user]) => {
    const entries = [...registry.connectionsOf(user)];
    const since = entries.reduce((min, e) => (min === null || e.since < min ? e.since : min), null);
    return {
      userId: user,
      isConnected: entries.length > 0,
      connectionCount: entries.length,
      connectedSince: since && since.toISOString(),
    };
  }],
  ['DELETE', /^\/v1\/websocket\/user\/([^/]+)\/disconnect$/, async (req, [user]) => {
    const entries = [...registry.connectionsOf(user)];
    if (entries.length === 0) throw new HttpError(404, `User ${user} has no active connections`);
    for (const e of entries) e.ws.close(1000, 'Disconnected by an administrator');
    return {
      message: `All connections for user ${user} have been disconnected`,
      disconnectedConnections: entries.length,
    };
  }],
];

function decodeSegment(segment) {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new HttpError(400, `bad percent-encoding in ${segment}`);
  }
}

async function onRequest(req, res) {
  const url = new URL(req.url, 'http://peer');
  try {
    if (url.pathname === '/healthz') return reply(res, 200, 'ok');
    let pathMatched = false;
    for (const [method, pattern, handler] of routes) {
      const m = pattern.exec(url.pathname);
      if (!m) continue;
      pathMatched = true;
      if (req.method !== method) continue;
      requireAdmin(req);
      const params = m.slice(1).map(decodeSegment);
      return reply(res, 200, await handler(req, params, url));
    }
    if (pathMatched) throw new HttpError(405, `method ${req.method} not allowed`);
    if (url.pathname === '/ws') throw new HttpError(426, 'this endpoint only speaks WebSocket');
    throw new HttpError(404, `no route for ${url.pathname}`);
  } catch (e) {
    const status = e instanceof HttpError ? e.status : 500;
    if (status === 500) console.error('seed-node peer:', e);
    // A request refused before its body was read: drop the body.
    req.resume();
    reply(res, status, { error: e.message });
  }
}

// ---------------------------------------------------------------------------
// WebSockets.

const wss = new WebSocketServer({
  noServer: true,
  perMessageDeflate: DEFLATE ? { threshold: 256 } : false,
});

function refuseUpgrade(socket, status, text) {
  const body = JSON.stringify({ error: text });
  socket.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\n` +
      'Content-Type: application/json\r\n' +
      `Content-Length: ${Buffer.byteLength(body)}\r\n` +
      'Connection: close\r\n\r\n' +
      body,
  );
}

function onUpgrade(req, socket, head) {
  socket.on('error', () => socket.destroy());
  const url = new URL(req.url, 'http://peer');
  if (url.pathname !== '/ws') return refuseUpgrade(socket, 404, `no route for ${url.pathname}`);
  const token = url.searchParams.get('token') || bearerOf(req);
  if (!token) return refuseUpgrade(socket, 401, 'token required');
  const claims = verify(token);
  const sub = claims && (typeof claims.sub === 'string' || typeof claims.sub === 'number') ? String(claims.sub) : '';
  if (!sub) return refuseUpgrade(socket, 401, 'invalid token');
  wss.handleUpgrade(req, socket, head, (ws) => onOpen(ws, sub));
}

function onOpen(ws, user) {
  const id = registry.add(ws, user);
  ws.send(JSON.stringify({
    type: 'connected',
    payload: { userId: user, connectionId: id, message: 'Successfully connected to WebSocket', timestamp: now() },
  }));
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    let msg;
    try {
      msg = JSON.parse(data.toString('utf8'));
    } catch {
      ws.send(JSON.stringify({ type: 'error', payload: { message: 'Invalid message format', timestamp: now() } }));
      return;
    }
    if (msg && msg.type === 'ping') {
      ws.send(JSON.stringify({ type: 'pong', payload: { timestamp: now() } }));
    } else {
      ws.send(JSON.stringify({ type: 'echo', payload: { originalMessage: msg, timestamp: now() } }));
    }
  });
  ws.on('close', () => registry.remove(id));
  ws.on('error', () => registry.remove(id));
}

// ---------------------------------------------------------------------------

const server = http.createServer((req, res) => {
  onRequest(req, res);
});
server.on('upgrade', onUpgrade);
server.listen(PORT, HOST, () => {
  console.error(`seed-node peer: listening on ${HOST}:${PORT} (node ${process.version}, permessage-deflate ${DEFLATE ? "on" : "off"})`);
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
