/** The answers of wsedge's management API (docs/PROTOCOL.md §4), as @wsedge/server returns them. */

export interface BroadcastResult {
  message: string;
  /** Connections the message was addressed to when the call was accepted. */
  sentToConnections: number;
  /** `"all"` without `userIds`, else the number of ids sent. */
  targetUsers: "all" | number;
  timestamp: string;
}

export interface UserStatus {
  userId: string;
  isConnected: boolean;
  connectionCount: number;
  timestamp: string;
}

export interface ConnectionStats {
  totalConnections: number;
  totalUsers: number;
  /** Connected user ids, sorted, at most `limit` of them. */
  users: string[];
  usersTruncated: boolean;
  shards: { id: number; connections: number }[];
  messagesIn: number;
  messagesOut: number;
  bytesOut: number;
  uptimeSeconds: number;
  /** Cluster mode only: every live node. */
  nodes?: { id: string; connections: number }[];
  timestamp: string;
  [field: string]: unknown;
}

export interface PublishResult {
  message: string;
  channel: string;
  sentToConnections: number;
  timestamp: string;
}

export interface WsedgeServerOptions {
  /** Base URL of wsedge, e.g. `http://127.0.0.1:3000`. Default: `WSEDGE_URL`, else `http://127.0.0.1:3000`. */
  url?: string;
  /** The admin credential: the `--admin-key`, or a JWT with the admin role. Default: `WSEDGE_ADMIN_KEY`. */
  adminKey?: string;
  /** Time for one whole call (connect, request, answer). Default 10000 ms. */
  timeoutMs?: number;
  /** The HTTP agent; default a keep-alive agent of this client's own. */
  agent?: import("node:http").Agent;
  /** Where the defaults come from; default `process.env`. */
  env?: Record<string, string | undefined>;
}
