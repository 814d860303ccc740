/**
 * `WsedgeServer`: the original service's in-process helpers (`broadcast`,
 * `sendToUser`, `isUserConnected`, …) as calls to wsedge's management API,
 * over one keep-alive agent, with typed errors and timeouts.
 */

import http from "node:http";
import https from "node:https";
import { WsedgeError } from "./errors.js";
import { exchange, httpError, type Answer, type Exchange, type Transport } from "./http.js";
import type { BroadcastResult, ConnectionStats, PublishResult, UserStatus, WsedgeServerOptions } from "./types.js";

const DEFAULT_URL = "http://127.0.0.1:3000";
/** Idle keep-alive sockets are dropped well before the server's own idle timeout (60 s by default). */
const FREE_SOCKET_TIMEOUT_MS = 30_000;

const seg = (s: string) => encodeURIComponent(s);

export class WsedgeServer {
  readonly #t: Transport;
  readonly #ownAgent: boolean;

  constructor(options: WsedgeServerOptions = {}) {
    const env = options.env ?? process.env;
    const url = options.url ?? env.WSEDGE_URL ?? DEFAULT_URL;
    const credential = options.adminKey ?? env.WSEDGE_ADMIN_KEY;
    if (!credential) {
      throw new TypeError("WsedgeServer: no admin credential; pass `adminKey` or set WSEDGE_ADMIN_KEY");
    }
    const base = new URL(url.endsWith("/") ? url : `${url}/`);
    if (base.protocol !== "http:" && base.protocol !== "https:") {
      throw new TypeError(`WsedgeServer: the url must be http:// or https://, got ${url}`);
    }
    const Agent = base.protocol === "https:" ? https.Agent : http.Agent;
    this.#ownAgent = !options.agent;
    const agent = options.agent ?? new Agent({ keepAlive: true, timeout: FREE_SOCKET_TIMEOUT_MS });
    this.#t = { base, credential, timeoutMs: options.timeoutMs ?? 10_000, agent };
  }

  /** The keep-alive agent the calls go through. */
  get agent(): http.Agent {
    return this.#t.agent;
  }

  /**
   * Sends `{type, payload}` to everyone, or to `userIds` only (`[]`: nobody),
   * never to `excludeUserIds`. Resolves with the number of connections addressed.
   */
  async broadcast(type: string, payload?: unknown, userIds?: string[] | null, excludeUserIds?: string[] | null) {
    const body: Record<string, unknown> = { type, payload: payload ?? null };
    if (userIds != null) body.userIds = userIds;
    if (excludeUserIds != null) body.excludeUserIds = excludeUserIds;
    const r = await this.#ok<BroadcastResult>({ method: "POST", path: "v1/websocket/broadcast", body });
    return r.sentToConnections;
  }

  /** Sends `{type, payload}` to every connection of `userId`: `true`, or `false` when the user is not connected. */
  async sendToUser(userId: string, type: string, payload?: unknown): Promise<boolean> {
    const x: Exchange = { method: "POST", path: `v1/websocket/send/${seg(userId)}`, body: { type, payload: payload ?? null } };
    const a = await exchange(this.#t, x);
    if (a.status === 404) return false;
    if (a.status !== 200) throw httpError(x, a);
    return true;
  }

  /** Whether `userId` has at least one open connection (on any node in cluster mode). */
  async isUserConnected(userId: string): Promise<boolean> {
    return (await this.getUserStatus(userId)).isConnected;
  }

  /** `{userId, isConnected, connectionCount}`. */
  getUserStatus(userId: string): Promise<UserStatus> {
    return this.#ok<UserStatus>({ method: "GET", path: `v1/websocket/user/${seg(userId)}/status` });
  }

  /** Connection counts, users (at most `limit`, default 1000), per-shard counts, traffic. */
  getConnectionStats(options: { limit?: number } = {}): Promise<ConnectionStats> {
    const q = options.limit === undefined ? "" : `?limit=${options.limit}`;
    return this.#ok<ConnectionStats>({ method: "GET", path: `v1/websocket/stats${q}` });
  }

  /**
   * Closes every connection of `userId`: with `4000` (clients reconnect), or
   * `4500` with `{reconnect: false}` (they do not). Resolves with the number
   * of connections closed (0 when the user had none).
   */
  async disconnectUser(userId: string, options: { reconnect?: boolean } = {}): Promise<number> {
    const q = options.reconnect === false ? "?reconnect=false" : "";
    const x: Exchange = { method: "DELETE", path: `v1/websocket/user/${seg(userId)}/disconnect${q}` };
    const a = await exchange(this.#t, x);
    if (a.status === 404) return 0;
    if (a.status !== 200) throw httpError(x, a);
    return numberField(x, a, "disconnectedConnections");
  }

  /** Publishes `{type, payload}` to the subscribers of `channel`; resolves with the number of connections addressed. */
  async publish(channel: string, type: string, payload?: unknown): Promise<number> {
    const path = `v1/websocket/channels/${seg(channel)}/publish`;
    const r = await this.#ok<PublishResult>({ method: "POST", path, body: { type, payload: payload ?? null } });
    return r.sentToConnections;
  }

  /** Broadcasts the server's fixed test notification; resolves with the number of connections addressed. */
  async sendTestNotification(): Promise<number> {
    const r = await this.#ok<{ sentToConnections: number }>({ method: "POST", path: "v1/websocket/test/notification" });
    return r.sentToConnections;
  }

  /** Closes the idle keep-alive sockets of this client's own agent. */
  close(): void {
    if (this.#ownAgent) this.#t.agent.destroy();
  }

  /** The answer's body when the status is 200; a `WsedgeError` otherwise. */
  async #ok<T>(x: Exchange): Promise<T> {
    const a = await exchange(this.#t, x);
    if (a.status !== 200) throw httpError(x, a);
    return a.body as T;
  }
}

function numberField(x: Exchange, a: Answer, field: string): number {
  const v = a.body[field];
  if (typeof v === "number") return v;
  throw new WsedgeError(`${x.method} ${x.path}: the answer has no number \`${field}\``, {
    kind: "invalid_response",
    method: x.method,
    path: x.path,
    status: a.status,
    body: a.body,
  });
}
