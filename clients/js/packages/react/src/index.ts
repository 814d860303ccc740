/**
 * @wsedge/react: `useRealtime(token, options)` for wsedge, a drop-in for the
 * original service's hook (docs/PROTOCOL.md §6).
 */

export { useRealtime, type UseRealtimeResult } from "./useRealtime.js";
export { RealtimeSession, NO_TOKEN, type RealtimeSnapshot, type UseRealtimeOptions } from "./session.js";
export type { Listener, RealtimeMessage, RecoveredPayload, Unsubscribe } from "@wsedge/client";
