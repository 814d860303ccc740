/**
 * @wsedge/server: a Node backend's side of wsedge. The original service's
 * in-process helpers become calls to the management API:
 *
 *   import { broadcast, sendToUser, isUserConnected } from "@wsedge/server";
 *   await broadcast("notification", { title: "Deploy at 5pm" });
 *
 * The module-level functions use one shared `WsedgeServer` configured from
 * `WSEDGE_URL` and `WSEDGE_ADMIN_KEY` (or `configure(options)`); create your
 * own `new WsedgeServer(options)` for anything else.
 */

import { WsedgeServer } from "./client.js";
import type { WsedgeServerOptions } from "./types.js";

export { WsedgeServer } from "./client.js";
export { WsedgeError, WsedgeTimeoutError, type WsedgeErrorKind } from "./errors.js";
export type { BroadcastResult, ConnectionStats, PublishResult, UserStatus, WsedgeServerOptions } from "./types.js";

let shared: WsedgeServer | null = null;

/** Replaces the shared client used by the module-level functions. */
export function configure(options: WsedgeServerOptions = {}): WsedgeServer {
  shared?.close();
  shared = new WsedgeServer(options);
  return shared;
}

/** The shared client (made from the environment on first use). */
export function defaultServer(): WsedgeServer {
  return (shared ??= new WsedgeServer());
}

export const broadcast: WsedgeServer["broadcast"] = (...a) => defaultServer().broadcast(...a);
export const sendToUser: WsedgeServer["sendToUser"] = (...a) => defaultServer().sendToUser(...a);
export const isUserConnected: WsedgeServer["isUserConnected"] = (...a) => defaultServer().isUserConnected(...a);
export const getConnectionStats: WsedgeServer["getConnectionStats"] = (...a) => defaultServer().getConnectionStats(...a);
export const disconnectUser: WsedgeServer["disconnectUser"] = (...a) => defaultServer().disconnectUser(...a);
export const publish: WsedgeServer["publish"] = (...a) => defaultServer().publish(...a);

export default WsedgeServer;
