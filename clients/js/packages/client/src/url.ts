/** Where the client connects: the endpoint URL and the token in its query. */

/** `ws(s)://<page host>/ws` in a browser; outside one a `url` is required. */
export function defaultUrl(): string {
  const loc = (globalThis as { location?: { protocol: string; host: string } }).location;
  if (!loc) throw new TypeError("RealtimeClient: `url` is required outside a browser");
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc.host}/ws`;
}

/** Accepts `ws(s)://` URLs as they are, and `http(s)://` or page-relative ones (`"/ws"`). */
export function resolveUrl(url: string): string {
  if (/^wss?:\/\//i.test(url)) return url;
  const loc = (globalThis as { location?: { href: string } }).location;
  const u = new URL(url, loc?.href);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  return u.toString();
}

/** `url` with `token=<percent-encoded token>` added to its query (before any fragment). */
export function withToken(url: string, token: string | null | undefined): string {
  if (!token) return url;
  const hash = url.indexOf("#");
  const base = hash < 0 ? url : url.slice(0, hash);
  const fragment = hash < 0 ? "" : url.slice(hash);
  const sep = base.includes("?") ? "&" : "?";
  return `${base}${sep}token=${encodeURIComponent(token)}${fragment}`;
}

/** `url` with `name=value` pairs added to its query (before any fragment), percent-encoded. */
export function withQuery(url: string, params: Record<string, string | number> | null): string {
  const entries = params ? Object.entries(params) : [];
  if (entries.length === 0) return url;
  const hash = url.indexOf("#");
  const base = hash < 0 ? url : url.slice(0, hash);
  const fragment = hash < 0 ? "" : url.slice(hash);
  const query = entries.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`).join("&");
  return `${base}${base.includes("?") ? "&" : "?"}${query}${fragment}`;
}
