/**
 * What the client reads from a JWT (only `exp`, never trusted for anything
 * but timing) and when it sends the in-band `refresh` before that moment.
 */

/** The `exp` claim (Unix seconds) of a JWT, or `null` when it has none or is not a JWT. */
export function jwtExp(token: string | null | undefined): number | null {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3 || !parts[1]) return null;
  try {
    const claims: unknown = JSON.parse(base64UrlDecode(parts[1]));
    if (claims && typeof claims === "object" && "exp" in claims) {
      const exp = (claims as { exp: unknown }).exp;
      if (typeof exp === "number" && Number.isFinite(exp)) return exp;
    }
  } catch {
    /* not a JWT we can read */
  }
  return null;
}

function base64UrlDecode(s: string): string {
  const b64 = s.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(s.length / 4) * 4, "=");
  const binary = atob(b64);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/**
 * Milliseconds from now until the refresh of a token that expires in
 * `remainingMs`: `marginMs` before it, or halfway when the token has less
 * than two margins left (so short-lived tokens are not refreshed in a loop).
 */
export function refreshDelayMs(remainingMs: number, marginMs: number): number {
  if (remainingMs > 2 * marginMs) return remainingMs - marginMs;
  return Math.max(0, Math.floor(remainingMs / 2));
}
