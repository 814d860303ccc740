/**
 * `useRealtime(token, options)`: the React hook, a drop-in for the original
 * ws + jsonwebtoken service's hook. The work is done by `RealtimeSession`;
 * this file ties its lifetime to the component's.
 */

import { useEffect, useMemo, useRef, useSyncExternalStore } from "react";
import type { Listener, Unsubscribe } from "@wsedge/client";
import { RealtimeSession, type RealtimeSnapshot, type UseRealtimeOptions } from "./session.js";

export interface UseRealtimeResult extends RealtimeSnapshot {
  /** Connects (when there is a token); also after `disconnect()` or a give-up. */
  connect(): void;
  /** Closes with `1000`; no reconnect until `connect()`. */
  disconnect(): void;
  /** Sends `{type, payload}`: `true` when handed to the socket, else `false` and `error` set. */
  send(type: string, payload?: unknown): boolean;
  /** `callback(payload, message)` for each event of `type` (`"*"`: all); returns the unsubscribe function. */
  on<P = any>(type: string, callback: Listener<P>): Unsubscribe;
  /** `off(type, cb)`: that callback; `off(type)`: every callback of `type`. */
  off(type?: string, callback?: Listener): void;
  /** Subscribes to a channel, kept across reconnects and token changes (docs/PROTOCOL.md §10). */
  subscribe(channel: string, options?: { presence?: boolean }): void;
  unsubscribe(channel: string): void;
}

/**
 * Connects to wsedge with `token` while the component is mounted.
 *
 * No token: `error` is set and nothing connects. A new token (or `url`)
 * closes the connection and opens one with it. Unmounting closes it. Lost
 * connections come back with exponential backoff, except after
 * `disconnect()` or a close with a code in 4500–4999. A reconnect asks for
 * the messages missed meanwhile: `recovered` (and the `recovered` event)
 * tells whether they came or the component should reload its data.
 */
export function useRealtime(token: string | null | undefined, options: UseRealtimeOptions = {}): UseRealtimeResult {
  const ref = useRef<RealtimeSession | null>(null);
  if (ref.current === null) ref.current = new RealtimeSession();
  const session = ref.current;
  session.configure(options);

  const url = options.url;
  useEffect(() => {
    session.start(token ?? null);
    return () => session.stop();
  }, [session, token, url]);

  const snapshot = useSyncExternalStore(session.subscribe, session.getSnapshot, session.getSnapshot);
  return useMemo(
    () => ({
      ...snapshot,
      connect: session.connect,
      disconnect: session.disconnect,
      send: session.send,
      on: session.on,
      off: session.off,
      subscribe: session.subscribeChannel,
      unsubscribe: session.unsubscribeChannel,
    }),
    [snapshot, session],
  );
}
