/**
 * One JSON exchange with the management API over a keep-alive agent: the
 * admin credential, the body, the timeout of the whole exchange, and the
 * mapping of every failure to a `WsedgeError`.
 */

import http from "node:http";
import https from "node:https";
import { WsedgeError, WsedgeTimeoutError } from "./errors.js";

export interface Exchange {
  method: "GET" | "POST" | "DELETE";
  path: string;
  body?: unknown;
}

export interface Answer {
  status: number;
  body: Record<string, unknown>;
}

export interface Transport {
  base: URL;
  credential: string;
  timeoutMs: number;
  agent: http.Agent;
}

/**
 * Sends the request and resolves with any answer (2xx or not) whose body is
 * a JSON object; rejects with a `WsedgeError` for timeouts, network errors
 * and bodies that are not JSON objects. A GET that meets a reset on a reused
 * keep-alive socket (the server closed it while idle) is sent once more.
 */
export async function exchange(t: Transport, x: Exchange): Promise<Answer> {
  try {
    return await once(t, x);
  } catch (e) {
    if (x.method === "GET" && e instanceof ReusedSocketReset) return once(t, x);
    throw e instanceof ReusedSocketReset ? e.error : e;
  }
}

class ReusedSocketReset extends Error {
  constructor(readonly error: WsedgeError) {
    super(error.message);
  }
}

function once(t: Transport, x: Exchange): Promise<Answer> {
  const url = new URL(x.path, t.base);
  const data = x.body === undefined ? "" : JSON.stringify(x.body);
  const headers: Record<string, string | number> = {
    Authorization: `Bearer ${t.credential}`,
    Accept: "application/json",
  };
  if (x.method !== "GET") headers["Content-Length"] = Buffer.byteLength(data);
  if (data) headers["Content-Type"] = "application/json";
  const request = url.protocol === "https:" ? https.request : http.request;

  return new Promise<Answer>((resolve, reject) => {
    const req = request(url, { method: x.method, headers, agent: t.agent });
    const timer = setTimeout(() => req.destroy(new WsedgeTimeoutError(x.method, x.path, t.timeoutMs)), t.timeoutMs);
    req.on("error", (e) => {
      clearTimeout(timer);
      if (e instanceof WsedgeError) return reject(e);
      const err = new WsedgeError(`${x.method} ${x.path}: ${e.message}`, { ...where(x), kind: "network", cause: e });
      const reset = (e as NodeJS.ErrnoException).code === "ECONNRESET";
      reject(reset && req.reusedSocket ? new ReusedSocketReset(err) : err);
    });
    req.on("response", (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("error", () => {}); // the request's error handler reports it
      res.on("end", () => {
        clearTimeout(timer);
        const text = Buffer.concat(chunks).toString("utf8");
        const status = res.statusCode ?? 0;
        try {
          resolve({ status, body: parseObject(text) });
        } catch {
          const error = `${x.method} ${x.path}: HTTP ${status} with a body that is not a JSON object`;
          reject(new WsedgeError(error, { ...where(x), kind: "invalid_response", status, body: text }));
        }
      });
    });
    req.end(data);
  });
}

function parseObject(text: string): Record<string, unknown> {
  const v: unknown = JSON.parse(text);
  if (!v || typeof v !== "object" || Array.isArray(v)) throw new TypeError("not an object");
  return v as Record<string, unknown>;
}

function where(x: Exchange) {
  return { method: x.method, path: x.path };
}

/** The error for an answer with an error status. */
export function httpError(x: Exchange, a: Answer): WsedgeError {
  const error = typeof a.body.error === "string" ? a.body.error : null;
  return new WsedgeError(`${x.method} ${x.path}: HTTP ${a.status}${error ? ` ${error}` : ""}`, {
    ...where(x),
    kind: "http",
    status: a.status,
    error,
    body: a.body,
  });
}
