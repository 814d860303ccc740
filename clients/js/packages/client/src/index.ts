/**
 * @wsedge/client: the browser and Node client of wsedge (docs/PROTOCOL.md §6).
 * The served `/realtime.js` is this package bundled into one file.
 */

export { RealtimeClient } from "./client.js";
export { backoffDelay, isTerminalCloseCode } from "./backoff.js";
export { ANY, Listeners, type Listener, type RealtimeMessage, type Unsubscribe } from "./listeners.js";
export { jwtExp, refreshDelayMs } from "./token.js";
export { StreamOffsets } from "./offsets.js";
export {
  State,
  type ConnectedPayload,
  type DisconnectedPayload,
  type ErrorPayload,
  type RealtimeClientOptions,
  type ReconnectingPayload,
  type RecoveredPayload,
  type Status,
  type TokenResult,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./types.js";

import { RealtimeClient } from "./client.js";
export default RealtimeClient;
