/**
 * The reconnect policy shared by every wsedge client (the Rust client, this
 * package, the served `/realtime.js`): exponential backoff with jitter, and
 * which close codes end the reconnecting for good.
 */

/** 2^6 × base (64 s at the default base) is already past the default cap. */
const MAX_EXPONENT = 6;

/**
 * Delay before reconnect attempt `attempt` (0 for the first retry):
 * `min(base · 2^min(attempt, 6) + random(0 .. jitter), cap)`.
 *
 * The jitter spreads the clients of a restarted server over a second
 * instead of one instant. `rand` returns a number in [0, 1).
 */
export function backoffDelay(
  attempt: number,
  baseMs = 1000,
  capMs = 30_000,
  rand: () => number = Math.random,
  jitterMs = 1000,
): number {
  const exp = Math.min(Math.max(0, Math.floor(attempt) || 0), MAX_EXPONENT);
  const jitter = Math.floor(rand() * jitterMs);
  return Math.min(baseMs * 2 ** exp + jitter, capMs);
}

/** A close with a code in 4500–4999 means "do not come back". */
export function isTerminalCloseCode(code: number): boolean {
  return code >= 4500 && code <= 4999;
}
