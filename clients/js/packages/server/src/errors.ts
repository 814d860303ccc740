/**
 * The errors of @wsedge/server: every failed call rejects with a
 * `WsedgeError` that says what happened (`kind`), the HTTP status and the
 * server's `error` text when there was an answer, and the route.
 */

/** `http`: the server answered with an error status; `timeout`: no full answer in time; `network`: no answer (refused, reset, DNS); `invalid_response`: an answer that is not the JSON expected. */
export type WsedgeErrorKind = "http" | "timeout" | "network" | "invalid_response";

export interface WsedgeErrorDetails {
  kind: WsedgeErrorKind;
  method: string;
  path: string;
  /** HTTP status; 0 when no answer came. */
  status?: number;
  /** The server's `error` field, e.g. `"unauthorized"`, `"User u1 is not connected"`. */
  error?: string | null;
  /** The answer's body (parsed JSON when it was JSON). */
  body?: unknown;
  cause?: unknown;
}

export class WsedgeError extends Error {
  readonly kind: WsedgeErrorKind;
  /** HTTP status; 0 when no answer came (timeout, network). */
  readonly status: number;
  /** The server's `error` text, when it sent one. */
  readonly error: string | null;
  readonly method: string;
  readonly path: string;
  readonly body: unknown;

  constructor(message: string, details: WsedgeErrorDetails) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "WsedgeError";
    this.kind = details.kind;
    this.status = details.status ?? 0;
    this.error = details.error ?? null;
    this.method = details.method;
    this.path = details.path;
    this.body = details.body;
  }
}

/** No complete answer within the call's timeout (`kind: "timeout"`, `status: 0`). */
export class WsedgeTimeoutError extends WsedgeError {
  readonly timeoutMs: number;

  constructor(method: string, path: string, timeoutMs: number) {
    super(`${method} ${path}: no answer within ${timeoutMs} ms`, { kind: "timeout", method, path });
    this.name = "WsedgeTimeoutError";
    this.timeoutMs = timeoutMs;
  }
}
