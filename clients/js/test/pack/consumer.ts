// A consumer of the three packed packages, type-checked by pack.test.mjs
// with `tsc --noEmit` in a scratch project. Every @ts-expect-error line must
// be an error: if a package's types were missing or `any`, they would not be,
// and tsc would fail on the unused directive.
import WebSocket from "ws";
import {
  backoffDelay,
  RealtimeClient,
  State,
  type DisconnectedPayload,
  type RealtimeClientOptions,
  type RecoveredPayload,
  type Unsubscribe,
  type WebSocketConstructor,
} from "@wsedge/client";
import { useRealtime, type UseRealtimeOptions, type UseRealtimeResult } from "@wsedge/react";
import {
  broadcast,
  WsedgeError,
  WsedgeServer,
  WsedgeTimeoutError,
  type ConnectionStats,
} from "@wsedge/server";

// ---- @wsedge/client
const options: RealtimeClientOptions = {
  url: "ws://127.0.0.1:3000/ws",
  getToken: async () => "jwt",
  WebSocket: WebSocket as unknown as WebSocketConstructor,
};
const client = new RealtimeClient(options);
const off: Unsubscribe = client.on<DisconnectedPayload>("disconnected", (p) => {
  const code: number = p.code;
  const reason: string = p.reason;
  void [code, reason];
});
off.unsubscribe();
client.off("disconnected");
const sent: boolean = client.send("chat", { text: "hi" });
const state: State = client.state;
const delay: number = backoffDelay(2);
// Recovery: the `recovered` event, the epoch and the offsets.
client.on<RecoveredPayload>("recovered", (p) => {
  const recovered: boolean = p.recovered;
  const channel: string | undefined = p.channel;
  void [recovered, channel];
});
const epoch: string | null = client.epoch;
const lastAll: number | undefined = client.offsets["@all"];
// @ts-expect-error: the epoch is the client's to keep
client.epoch = "e";
// @ts-expect-error: send needs a type
client.send();
// @ts-expect-error: not an option
new RealtimeClient({ reconnect: true });
// @ts-expect-error: state is one of three strings
const bad: State = "Open";

// ---- @wsedge/react
const hookOptions: UseRealtimeOptions = { autoConnect: false, reconnectInterval: 1000, maxReconnectAttempts: 10, debug: true };
function Component(): UseRealtimeResult {
  const rt = useRealtime("jwt", hookOptions);
  const connected: boolean = rt.isConnected && !rt.isConnecting;
  const count: number = rt.connectionCount;
  const error: string | null = rt.error;
  const recovered: boolean | null = rt.recovered;
  // @ts-expect-error: null until the first reconnect
  const alwaysKnown: boolean = rt.recovered;
  const unsubscribe: () => void = rt.on("notification", (payload: { title: string }) => payload.title);
  unsubscribe();
  rt.off("notification");
  // @ts-expect-error: the token is a string (or null/undefined)
  useRealtime(42);
  // @ts-expect-error: autoConnect is a boolean
  useRealtime("jwt", { autoConnect: "yes" });
  void [connected, count, error, recovered, alwaysKnown];
  return rt;
}

// ---- @wsedge/server
async function backend(): Promise<void> {
  const server = new WsedgeServer({ url: "http://127.0.0.1:3000", adminKey: "key", timeoutMs: 5000 });
  const n: number = await server.broadcast("notification", { title: "hi" }, ["u1"], ["u2"]);
  const delivered: boolean = await server.sendToUser("u1", "personal_update", {});
  const online: boolean = await server.isUserConnected("u1");
  const stats: ConnectionStats = await server.getConnectionStats({ limit: 10 });
  const closed: number = await server.disconnectUser("u1", { reconnect: false });
  const published: number = await server.publish("news", "update", {});
  const total: number = await broadcast("x", null);
  try {
    await server.sendToUser("u1", "x");
  } catch (e) {
    if (e instanceof WsedgeTimeoutError) console.log(e.timeoutMs);
    else if (e instanceof WsedgeError) console.log(e.status, e.error, e.kind);
  }
  // @ts-expect-error: sendToUser resolves with a boolean
  const wrong: string = await server.sendToUser("u1", "x");
  // @ts-expect-error: user ids are strings
  await server.isUserConnected(1);
  void [n, delivered, online, stats.totalConnections, closed, published, total, wrong];
}

void [sent, state, delay, epoch, lastAll, bad, Component, backend];
